"""The ONNX Runtime target of `build-engine`: a precision ONNX saved after ONNX Runtime's offline optimization.

The artifact is what ONNX Runtime would build in memory at load time, computed once and saved
(`SessionOptions.optimized_model_filepath`) at the *basic* level: constant folding, redundant-node
removal and semantics-preserving fusions, in standard ONNX operators. The extended level would save
ORT contrib operators (QLinearAdd, QGemm) and the all level a CPU-specific NCHWc layout that ORT
itself warns "should only be used in the same environment"; sessions still apply those at load.

INT8 for the CPU. The precision ONNX has int8 activations with zero point 0, the form TensorRT
takes. On x86, ORT's QLinearConv wants uint8 activations; ORT converts int8 Q/DQ pairs to uint8
itself (its QDQS8ToU8 transformer) but skips every Q whose output feeds several nodes, after its
own common-subexpression elimination has merged the per-consumer copies, and those convolutions
then run in float (a ResNet-50 barely gains over FP32). So before optimizing for the CPU, every
activation Q/DQ pair is rewritten from int8 with zero point 0 to uint8 with zero point 128 (the
same scale): quantize gives round(x/s) + 128 clamped to [0, 255] instead of round(x/s) clamped to
[-128, 127], and dequantize subtracts the 128 again, so every value is exactly what it was. That
holds for the Q/DQ arithmetic; the fused integer kernels ORT then picks requantize differently from
the Q/DQ reference, so the artifact's logits differ slightly from the precision model's; on a CPU without
VNNI the u8×s8 kernels also saturate unless the weights are 7-bit (`precision/isa.py`). The build judges
the artifact on this CPU against FP32 on held-out images (`resnet_deploy/verify.py`); the load check
here only proves it loads, keeps its card and computes finite logits.

Metadata (model card, precision, calibration) is copied from the precision model and an artifact
marker added, so the artifact is never mistaken for a portable source of other targets. The saved
model is loaded in a fresh session as `OnnxRuntimeEngine` would load it and checked against the
precision model; then the JSON manifest `<artifact>.json` is written beside it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy import registry
from resnet_deploy.artifacts import (
    ARTIFACT_KEY,
    CALIBRATION_KEY,
    CARD_KEY,
    FP16_REMAINDER_KEY,
    MIXED_PRECISION_KEY,
    ONNXRUNTIME_KEY,
    PRECISION_KEY,
    QUANTIZATION_KEY,
    SOURCE_ONNX_SHA256_KEY,
    VERIFICATION_KEY,
    Manifest,
    manifest_versions,
)
from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.card import ModelCard
from resnet_deploy.errors import BackendUnavailable, CheckFailed, UsageError
from resnet_deploy.gates import RANDOM_WEIGHTS_REASON
from resnet_deploy.precision import set_metadata
from resnet_deploy.samples import images_or_random
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest

OPTIMIZATION_LEVEL = "basic"
DEVICES = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass
class OnnxRuntimeBuildResult:
    path: Path
    manifest_path: Path
    precision: str
    fp16_remainder: bool
    device: str
    providers: list[str]
    optimization_level: str
    s8_to_u8_pairs: int  # activation Q/DQ pairs rewritten for the CPU's integer kernels
    check: dict[str, Any]
    sha256: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("manifest")
        data["path"], data["manifest_path"] = str(self.path), str(self.manifest_path)
        return data


def build_onnxruntime_artifact(
    model_onnx: str | Path,
    output: str | Path,
    *,
    device: str = "cpu",
    check_images: np.ndarray | None = None,
) -> OnnxRuntimeBuildResult:
    """Optimize the precision ONNX `model_onnx` for ONNX Runtime on `device`; write `output` and its manifest."""
    import onnx
    import onnxruntime as ort

    from engines.onnxruntime_engine import graph_precision
    from resnet_deploy.onnx_check import compare_models, session

    started = time.perf_counter()
    source, output = Path(model_onnx), Path(output)
    if device not in DEVICES:
        raise UsageError(f"ONNX Runtime device must be one of {', '.join(DEVICES)}, got {device!r}")
    providers = DEVICES[device]
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise BackendUnavailable(f"ONNX Runtime has no {', '.join(missing)} here (available: "
                                 f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu with CUDA")
    if output.suffix.lower() not in registry.backend("onnxruntime").suffixes:
        raise UsageError(f"{output}: an ONNX Runtime artifact is an .onnx file")
    if output.resolve() == source.resolve():
        raise UsageError(f"{output}: the artifact would overwrite its source; choose another --output")
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    if ARTIFACT_KEY in props:
        raise UsageError(f"{source}: already an ONNX Runtime artifact ({props[ARTIFACT_KEY]})")
    if CARD_KEY not in props:
        raise UsageError(f"{source}: the ONNX model carries no resnet-deploy model card in its metadata; "
                         "export it with `resnet-deploy export`")
    card = ModelCard.from_json(props[CARD_KEY])
    precision = props.get(PRECISION_KEY) or graph_precision(source)
    fp16_remainder = props.get(FP16_REMAINDER_KEY) == "true"
    notes: list[str] = []
    rewritten = 0
    if precision == "int8" and device == "cpu":
        rewritten = int8_activations_to_uint8(model)
    if device == "cpu" and (precision == "fp16" or fp16_remainder):
        notes.append("ONNX Runtime's CPU provider has no FP16 convolution kernels: it casts to FP32 and computes in "
                     "FP32 (the saved graph shows the Casts). FP16 pays off with --target tensorrt or openvino")
    props[ARTIFACT_KEY] = f"onnxruntime-{device}"
    props[ONNXRUNTIME_KEY] = json.dumps({
        "optimization_level": OPTIMIZATION_LEVEL, "providers": providers, "s8_to_u8_pairs": rewritten,
        "onnxruntime": ort.__version__, "source_sha256": sha256_file(source),
    })

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-ort-") as tmp_name:
        prepared = Path(tmp_name) / "prepared.onnx"
        onnx.save(model, str(prepared))
        with atomic_path(output) as tmp:
            # not ".ort": ORT writes the ONNX format
            session(prepared, level="basic", providers=providers, optimized_path=tmp, shown_as=source)
            optimized = onnx.load(str(tmp))
            set_metadata(optimized, props)  # ORT keeps metadata_props today; set them anyway, in our order
            onnx.save(optimized, str(tmp))
            check = _check(tmp, source, check_images, card, providers, session, compare_models)
            if not check["passed"]:  # agreement is judged by the build's gate on this CPU (verify.py), not here
                raise CheckFailed(f"{output}: the optimized model does not load as {source.name} did (inf/NaN "
                                  f"logits or no model card: {check}); nothing was written")

    seconds = time.perf_counter() - started
    manifest = Manifest(
        backend="onnxruntime", artifact=output.name, sha256=sha256_file(output), precision=precision,
        source_onnx={"path": str(source), "sha256": sha256_file(source), "precision": precision},
        card=card.to_dict(), artifact_check=check, precision_check=_json_prop(props, VERIFICATION_KEY),
        mixed_precision=_json_prop(props, MIXED_PRECISION_KEY),
        fp16_remainder=fp16_remainder, build_seconds=round(seconds, 3), versions=manifest_versions(), notes=notes,
        target={"device": device, "providers": providers, "optimization_level": OPTIMIZATION_LEVEL,
                "s8_to_u8_pairs": rewritten, "calibration": _json_prop(props, CALIBRATION_KEY),
                "quantization": _json_prop(props, QUANTIZATION_KEY),
                "fp32_source_sha256": props.get(SOURCE_ONNX_SHA256_KEY) or sha256_file(source)},
    )
    manifest_file = manifest.write(output)
    return OnnxRuntimeBuildResult(
        path=output, manifest_path=manifest_file, precision=precision, fp16_remainder=fp16_remainder,
        device=device, providers=providers, optimization_level=OPTIMIZATION_LEVEL, s8_to_u8_pairs=rewritten,
        check=check, sha256=manifest.sha256, seconds=seconds, notes=notes, manifest=manifest,
    )


def int8_activations_to_uint8(model: Any) -> int:
    """Rewrite activation Q/DQ pairs from int8 (zero point 0) to uint8 (zero point 128), in place; exact.

    Only zero points used solely as the zero point of activation Q/DQ nodes (not of weights) are
    changed; returns how many zero-point tensors were rewritten.
    """
    import onnx
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    weight_zero_points, activation_zero_points, other_uses = set(), set(), set()
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and index == 2:
                # A Q/DQ whose data input is an initializer quantizes a weight.
                (weight_zero_points if node.input[0] in initializers else activation_zero_points).add(name)
            else:
                other_uses.add(name)
    rewritten = set()
    for name in sorted(activation_zero_points - weight_zero_points - other_uses):
        value = numpy_helper.to_array(initializers[name])
        if value.dtype != np.int8 or value.size != 1 or int(value.reshape(-1)[0]) != 0:
            continue
        initializers[name].CopyFrom(numpy_helper.from_array(np.full(value.shape, 128, dtype=np.uint8), name))
        rewritten.add(name)
    # Quantized tensors now hold uint8: fix any type recorded for them by an earlier shape inference.
    quantized = {node.output[0] for node in model.graph.node
                 if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in rewritten}
    for info in [*model.graph.value_info, *model.graph.output]:
        if info.name in quantized and info.type.tensor_type.elem_type == onnx.TensorProto.INT8:
            info.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return len(rewritten)


def _check(artifact: Path, source: Path, images: np.ndarray | None, card: ModelCard, providers: list[str],
           session: Any, compare_models: Any) -> dict[str, Any]:
    """Load the artifact as the engine would (fresh session, all optimizations) and compare with its source."""
    size = card.preprocessing.input_size
    images, data = images_or_random(images, (3, size, size), count=16)
    fresh = session(artifact, level="all", providers=providers)
    props = fresh.get_modelmeta().custom_metadata_map
    comparison = compare_models(session(source, providers=providers), fresh, images)
    # Whether it loads and computes finite logits with its card; how well it agrees with FP32 is the build's gate
    # on held-out images (resnet_deploy/verify.py), with the threshold the user sees and sets.
    passed = comparison.finite and CARD_KEY in props
    informational = RANDOM_WEIGHTS_REASON if card.lineage.get("random_weights") else None
    return {"reference": source.name, "data": data, "loads": True, "card_in_metadata": CARD_KEY in props,
            "passed": bool(passed), "informational": informational, **comparison.to_dict()}


def _json_prop(props: dict[str, str], key: str) -> Any:
    text = props.get(key)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class OnnxRuntimeTarget(Target):
    """The precision ONNX optimized offline for one ONNX Runtime execution provider (`.{device}.onnx`)."""

    name = "onnxruntime"

    def default_suffix(self, device: str = "cpu") -> str:
        return f".{device}.onnx"

    def usable(self, device: str | None = None) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        if device is not None and device.startswith("cuda") and \
                "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, ("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu and CUDA, or use "
                           "--device cpu")
        return True, ""

    def build(self, request: TargetRequest) -> BuildResult:
        result = build_onnxruntime_artifact(request.model, request.output, device=request.device,
                                            check_images=request.check_images)
        check = result.check
        row = (f"top-1 agreement {check['agreement']:.2f}% with the precision model, max |Δ logit| "
               f"{check['max_abs_logit_diff']:.4g} ({check['data']})")
        assert result.manifest is not None
        return BuildResult(self.name, result.path, result.manifest_path, result.manifest,
                           summary=[("artifact check", row)], warnings=list(result.notes), details=result.to_dict())
