"""A fine-tuned `QatResNet` as a Q/DQ INT8 ONNX, and the check that the file computes what the module computes.

The export runs torch's TorchScript exporter (`dynamo=False`): torch 2.14's dynamo exporter has no
translation for `fake_quantize_per_*_affine`, the TorchScript one writes each as QuantizeLinear →
DequantizeLinear (int8, zero point 0; per-channel on axis 0 for weights, float weights kept in front
of the pair as `AddQDQPairToWeight` does). Zero points the exporter leaves as Constant nodes become
initializers, the form the ONNX Runtime target's uint8 rewrite and OpenVINO read.

`qat_source(path)` is what `build-engine` asks: does this ONNX already carry trained INT8 scales?
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_deploy.atomic import atomic_path
from resnet_deploy.card import ModelCard
from resnet_deploy.compare import LogitComparison, compare_logits
from resnet_deploy.errors import CheckFailed, first_line
from resnet_deploy.metadata_keys import FP16_REMAINDER_KEY, PRECISION_KEY, QUANTIZATION_KEY, VERIFICATION_KEY
from resnet_deploy.onnx_check import arithmetic_session
from resnet_deploy.precision.qat import QatResNet

QAT_FORMAT = "resnet_deploy.qat/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPORT_OPSET = 20  # the FP32 export's default (export.DEFAULT_OPSET); QuantizeLinear per-axis needs >= 13
# The module and ONNX Runtime divide by the same float32 scales and round half to even; only the float
# summation order inside Conv/Gemm differs. A value that lands within that rounding of a .5 boundary can take
# the other integer, so the check allows a few quantization steps of the logits and no top-1 flip (but a tie:
# quantized logits tie, and a tie within that tolerance may break either way).
MAX_LOGIT_STEPS = 4.0


@dataclass
class QdqCheck:
    """The exported ONNX (ONNX Runtime, graph optimizations off) against the fake-quant module."""

    images: int
    agreement: float  # top-1, percent
    disagreements: int  # top-1 flips that are not ties within the tolerance (quantized logits do tie)
    max_abs_logit_diff: float
    logit_step: float  # the logits' quantization step (their Q/DQ scale)
    tolerance: float  # MAX_LOGIT_STEPS logit steps
    exact_fraction: float  # share of logits that are bit-identical
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_qdq(model: QatResNet, output: Path, *, card: ModelCard, props: dict[str, str],
               quantization: dict[str, Any], verification: dict[str, Any] | None = None) -> Path:
    """Write `model` as a Q/DQ ONNX (dynamic batch) with `props` (the card's) and the INT8 records, atomically."""
    import onnx

    module = copy.deepcopy(model).float().cpu().eval()
    module.freeze_for_export()
    size = card.preprocessing.input_size
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-qat-") as tmp:
        staged = Path(tmp) / "qat.onnx"
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, (torch.zeros(2, 3, size, size),), str(staged), dynamo=False,
                                  opset_version=EXPORT_OPSET, do_constant_folding=True, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            except Exception as exc:  # the exporter raises many types; the user needs one line
                first = first_line(exc)
                raise CheckFailed(f"torch.onnx.export of the fine-tuned model failed: {first}") from None
        proto = onnx.load(str(staged))
    constants_to_initializers(proto)
    all_props = {**props, PRECISION_KEY: "int8", FP16_REMAINDER_KEY: "false",
                 QUANTIZATION_KEY: json.dumps(quantization)}
    if verification is not None:
        all_props[VERIFICATION_KEY] = json.dumps(verification)
    del proto.metadata_props[:]
    for key, value in all_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    from resnet_deploy import __version__

    proto.producer_name, proto.producer_version = "resnet-deploy", __version__
    proto.doc_string = f"{card.arch} INT8 (Q/DQ) fine-tuned by resnet-deploy finetune-int8"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"the exported Q/DQ graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    with atomic_path(output) as final:
        onnx.save(proto, str(final))
    return output


def constants_to_initializers(proto: Any) -> int:
    """Make every Constant node, and every Identity of an initializer, an initializer of its own.

    The exporter leaves per-tensor zero points as Constant nodes and shares equal initializers through
    Identity nodes; ONNX Runtime's post-training models give each Q/DQ pair initializers of its own, the
    form the ONNX Runtime target's uint8 rewrite (and OpenVINO's Q/DQ matching) reads."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    kept, moved = [], 0
    for node in proto.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
        elif node.op_type == "Identity" and node.input[0] in initializers:
            tensor = numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]), node.output[0])
        else:
            kept.append(node)
            continue
        proto.graph.initializer.append(tensor)
        initializers[tensor.name] = tensor
        moved += 1
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {o.name for o in proto.graph.output}
    unused = [init for init in proto.graph.initializer if init.name not in used]
    for init in unused:
        proto.graph.initializer.remove(init)
    return moved


@torch.no_grad()
def module_logits(model: QatResNet, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The fake-quant module's logits in float32 on the CPU (no autocast)."""
    module = copy.deepcopy(model).float().cpu().eval()
    module.set_mode("quant")
    out = [module(torch.from_numpy(images[i:i + batch])).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32)


def check_qdq(path: Path, model: QatResNet, images: np.ndarray) -> QdqCheck:
    """Run the file with graph optimizations off and the module on the same `images`; judge the match."""
    from resnet_deploy.onnx_check import run_logits

    reference = module_logits(model, images)
    onnx_logits = run_logits(arithmetic_session(path), images, batch=64)
    step = float(model.logits_q.scale.detach().abs())
    tolerance = MAX_LOGIT_STEPS * step + 1e-6
    comparison: LogitComparison = compare_logits(reference, onnx_logits, tolerance=tolerance)
    exact = float(np.mean(reference == onnx_logits)) if len(images) else 1.0
    passed = bool(comparison.finite and comparison.disagreements == 0 and comparison.max_abs_logit_diff <= tolerance)
    return QdqCheck(len(images), comparison.agreement, comparison.disagreements, comparison.max_abs_logit_diff, step,
                    tolerance, exact, passed)


def qat_source(path: Path) -> dict[str, Any] | None:
    """The `resnet_deploy.quantization` record of an INT8 Q/DQ ONNX made by fine-tuning (None for anything else)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: the normal path names the problem
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(PRECISION_KEY) != "int8" or QUANTIZATION_KEY not in props:
        return None
    try:
        record = json.loads(props[QUANTIZATION_KEY])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("qat"), dict) else None
