"""FP16 and calibrated INT8 (Q/DQ) ONNX models, verified against their FP32 source on ONNX Runtime.

Precision is decided in ONNX (see DESIGN.md): TensorRT 11 builds only strongly typed networks, so
FP16 arrives as an FP16-typed graph and INT8 as explicit QuantizeLinear/DequantizeLinear nodes.

FP16 (`convert_fp16`): onnxconverter-common's `convert_float_to_float16` with float32 input and
output kept (Casts inside). Before converting, the FP32 model runs on the check images with every
intermediate tensor exposed; any node producing or consuming a tensor that comes within a factor two
of FP16's range (65504), or holding a weight beyond the converter's clip value, stays FP32. Random
weights (latency work) are converted whole: their activations are meaningless and often huge.

INT8 (`quantize_int8`): ONNX Runtime's `quant_pre_process` then `quantize_static` in QDQ format,
with the options TensorRT needs (the same ones NVIDIA's ModelOpt passes to ORT): per-channel
symmetric int8 weights on the output-channel axis kept as float weights behind a Q/DQ pair,
per-tensor symmetric int8 activations (zero point 0), float biases (TensorRT's DequantizeLinear
takes no int32 input). Activation ranges come from `calibration.py`. `fp16_remainder` converts
what stays unquantized to FP16 (Q/DQ scales become FP16, which needs opset 19).

Both write the model atomically and only after it passed its check; the metadata of the source
(model card, preprocessing) is kept, and `resnet_deploy.precision`, the calibration and the check
are added.
"""

from resnet_deploy.onnx_check import compare_models
from resnet_deploy.precision.common import (
    ARTIFACT_KEY,
    FP16_MIN_AGREEMENT,
    INT8_MIN_AGREEMENT,
    PRECISION_KEY,
    CalibrationReport,
    PrecisionResult,
    drop_unused_opsets,
    read_source,
    set_metadata,
)
from resnet_deploy.precision.fp16 import convert_fp16
from resnet_deploy.precision.int8 import quantize_int8

__all__ = [
    "ARTIFACT_KEY",
    "FP16_MIN_AGREEMENT",
    "INT8_MIN_AGREEMENT",
    "PRECISION_KEY",
    "CalibrationReport",
    "PrecisionResult",
    "compare_models",
    "convert_fp16",
    "drop_unused_opsets",
    "quantize_int8",
    "read_source",
    "set_metadata",
]
