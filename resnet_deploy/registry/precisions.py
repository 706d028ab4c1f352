"""The precisions resnet-deploy makes, gates and times, one `Precision` declaration each.

Adding a precision: its maker in resnet_deploy/precision/ (FP32 ONNX in, checked ONNX out), one entry
below, and its name in the `precisions` of each `Backend` that computes it (backends.py). Gates (gates.py),
build-engine's flags, bench's --precisions and the ONNX metadata read these entries.
"""

from __future__ import annotations

from resnet_deploy.registry.spec import Precision

# Gates: (largest allowed top-1 drop in points, smallest top-1 agreement in %). bf16 keeps fewer mantissa bits
# than fp16 but the same exponent range; for a classifier the prediction flips it causes are of the same order,
# so it shares fp16's gate. INT8's gate is mainly the top-1 drop (gates.py explains the floor of 95).
PRECISIONS: tuple[Precision, ...] = (
    Precision(name="fp32", display="FP32", flag=None, gate=(0.1, 99.9), build_margin=0.05, metadata="fp32"),
    Precision(name="fp16", display="FP16", flag="--fp16", gate=(0.3, 99.5), build_margin=0.2, metadata="fp16",
              maker="resnet_deploy.precision:convert_fp16",
              help="FP16-typed model (float32 I/O); with --int8: FP16 for what is not quantized."),
    Precision(name="bf16", display="BF16", flag="--bf16", gate=(0.3, 99.5), build_margin=0.2, metadata=None,
              help="OpenVINO only: BF16 inference precision of the FP32 model."),
    Precision(name="int8", display="INT8", flag="--int8", gate=(1.0, 95.0), build_margin=0.5, metadata="int8",
              maker="resnet_deploy.precision:quantize_int8", remainders=("fp16",), calibrated=True,
              help="Calibrated INT8 (explicit Q/DQ) model; needs --calib-data."),
)
