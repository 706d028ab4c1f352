"""`build-engine --target openvino`: an ONNX model saved as OpenVINO IR (.xml + .bin) with a manifest beside it.

Precision lives in the ONNX model, as for TensorRT: `--int8` gives a Q/DQ ONNX and OpenVINO runs its
convolutions in int8; `--fp16` gives an FP16 IR. What OpenVINO adds is the *inference precision* of
the floating-point layers, a compile-time hint that the IR cannot carry natively, so it is stored in
the IR's rt_info (`resnet_deploy/inference_precision`, read back by `OpenVINOEngine`) and in the
manifest. Defaults per precision:

| precision | inference precision hint | weights in the .bin |
| --- | --- | --- |
| fp32 | f32 (a CPU with bf16 would otherwise silently run bf16) | fp32 |
| bf16 | bf16 | fp32 (bf16 rounding happens at compile time, once) |
| fp16 | f16 (a CPU without native f16 falls back to bf16 or f32) | fp16 |
| int8 | none: the device default for the few float layers left | int8 weights, fp32 scales |

`ov.save_model` compresses float weights to fp16 by default; that is turned off except for fp16,
so an fp32 IR computes exactly what the ONNX model does and INT8 scales are not rounded.

The IR is written into a temporary folder beside the output and moved into place (.bin first,
then .xml, then the manifest, which records both files' hashes), so an interrupted build never
leaves a half-written IR under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy import registry
from resnet_deploy.artifacts import Manifest, manifest_versions, onnx_stem
from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import ModelCard
from resnet_deploy.errors import BackendUnavailable, CheckFailed, UsageError
from resnet_deploy.samples import batches_of, random_images
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest, mixed_precision_of, precision_check_of

INSTALL_HINT = "OpenVINO is not installed (pip install 'resnet-deploy[openvino]')"
PRECISIONS = registry.backend("openvino").precisions  # the declaration's (registry/backends.py)
DEFAULT_HINTS: dict[str, str | None] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}
CHECK_IMAGES = 4  # random images compared against ONNX Runtime on the source model


@dataclass
class OpenVINOBuildResult:
    path: Path  # the .xml
    bin_path: Path
    manifest_path: Path
    precision: str  # what was asked for: fp32, fp16, bf16, int8
    inference_precision: str | None  # the hint stored in the IR: f32, bf16, f16 or None (device default)
    runtime_precision: str  # what this machine's OpenVINO really runs: fp32, bf16, fp16, int8
    compressed_to_fp16: bool
    source_sha256: str
    max_abs_logit_diff: float  # IR on OpenVINO vs source ONNX on ONNX Runtime, random images
    agreement: float  # top-1 agreement on the same images, percent
    seconds: float
    notes: list[str] = field(default_factory=list)  # things the user should know (printed as warnings)
    manifest: Manifest | None = field(default=None, repr=False)  # what was written beside the IR


def openvino_usable() -> tuple[bool, str]:
    """Whether OpenVINO is installed and sees a CPU, with a one-line reason either way."""
    try:
        import openvino as ov
    except ImportError:
        return False, INSTALL_HINT
    from engines.openvino_engine import shared_core

    try:
        core = shared_core()  # never a Core of its own: see shared_core
        devices = core.available_devices
    except Exception as exc:  # a broken install raises RuntimeError from the plugin loader
        return False, f"OpenVINO {ov.get_version()} cannot start ({exc})"
    if "CPU" not in devices:
        return False, f"OpenVINO sees no CPU device (devices: {', '.join(devices) or 'none'})"
    name = core.get_property("CPU", "FULL_DEVICE_NAME")
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return True, f"OpenVINO {ov.get_version().split('-')[0]} on {name} ({', '.join(capabilities)})"


def default_ir_path(onnx_path: str | Path, precision: str) -> Path:
    """model.onnx → model.xml (fp32) / model.bf16.xml; model.int8.onnx → model.int8.xml."""
    source = Path(onnx_path)
    stem = onnx_stem(source)
    if precision != "fp32" and not stem.endswith(f".{precision}"):
        stem = f"{stem}.{precision}"
    return source.with_name(f"{stem}.xml")


def _save_ir(ov: Any, model: Any, staged_xml: Path, compress: bool, output: Path) -> None:
    """`ov.save_model`, whose failures to write (a full disk, a folder gone) come as a RuntimeError with a C++
    trace: one line naming the output instead, the exit of any other write failure (2)."""
    try:
        ov.save_model(model, str(staged_xml), compress_to_fp16=compress)
    except RuntimeError as exc:
        free = shutil.disk_usage(staged_xml.parent).free if staged_xml.parent.is_dir() else 0
        reason = "no space left on the device" if free < 1 << 20 else str(exc).strip().splitlines()[-1][:200]
        raise UsageError(f"cannot write {output}: {reason}; nothing was written") from None


def build_openvino_ir(
    onnx_path: str | Path,
    output: str | Path,
    *,
    precision: str = "fp32",
    inference_precision: str | None = None,
    card: ModelCard | dict[str, Any] | None = None,
) -> OpenVINOBuildResult:
    """Convert `onnx_path` to IR at `output` (.xml; the .bin goes beside it) and write its manifest."""
    started = time.perf_counter()
    source, output = Path(onnx_path), Path(output)
    ov = _import_openvino()
    from engines.onnxruntime_engine import graph_precision
    from engines.openvino_engine import RT_INFO_INFERENCE_PRECISION, OpenVINOEngine, hint_type_name, ov_message

    if precision not in PRECISIONS:
        raise UsageError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    if output.suffix.lower() not in registry.backend("openvino").suffixes:
        raise UsageError(f"{output}: an OpenVINO IR is named .xml (its weights go beside it as .bin)")
    hint = hint_type_name(inference_precision) if inference_precision is not None else DEFAULT_HINTS[precision]
    card_dict = _card_dict(card, source)
    source_precision = graph_precision(source)
    if precision == "int8" and source_precision != "int8":
        raise UsageError(f"{source}: --int8 needs a quantized (Q/DQ) ONNX model, this one is {source_precision}; "
                         "build-engine --int8 quantizes it first")
    if precision in ("fp32", "bf16") and source_precision != "fp32":
        raise UsageError(f"{source}: --{precision} needs the FP32 ONNX model, this one is {source_precision}")

    try:
        model = ov.convert_model(str(source))
    except Exception as exc:  # OpenVINO's ONNX frontend raises its own exception types
        raise UsageError(f"{source}: OpenVINO cannot convert this ONNX model ({ov_message(exc)})") from None
    model.set_rt_info(precision, ["resnet_deploy", "precision"])
    if hint is not None:
        model.set_rt_info(hint, list(RT_INFO_INFERENCE_PRECISION))
    compress = precision == "fp16"

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        staged_xml = staging / output.name
        _save_ir(ov, model, staged_xml, compress, output)
        runtime, describe, max_diff, agreement = _check_against_source(staged_xml, source, OpenVINOEngine)
        if precision == "int8" and runtime != "int8":
            raise CheckFailed(f"{source}: OpenVINO runs this model as {runtime}, not int8 (its Q/DQ nodes were not "
                              "fused into quantized convolutions); use ONNX Runtime for this INT8 model")
        bin_path = output.with_suffix(".bin")
        os.replace(staged_xml.with_suffix(".bin"), bin_path)
        os.replace(staged_xml, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    notes = _notes(precision, hint, runtime)
    seconds = time.perf_counter() - started
    xml_sha256 = sha256_file(output)
    manifest = Manifest(
        backend="openvino", artifact=output.name, sha256=xml_sha256, precision=precision,
        source_onnx={"path": str(source), "sha256": sha256_file(source), "precision": source_precision},
        card=card_dict, precision_check=precision_check_of(source), mixed_precision=mixed_precision_of(source),
        build_seconds=round(seconds, 3),
        artifact_check={"images": CHECK_IMAGES, "max_abs_logit_diff": max_diff, "agreement": agreement,
                        "reference": "source ONNX on ONNX Runtime (CPU), random images"},
        versions=manifest_versions(), notes=notes,
        target={"openvino_version": ov.get_version(), "inference_precision_hint": hint,
                "runtime_precision": runtime, "compressed_to_fp16": compress,
                "built_on": {"device": describe.get("ov_device"), "device_name": describe.get("device_name"),
                             "inference_precision": describe.get("inference_precision")},
                "xml_sha256": xml_sha256, "bin_sha256": sha256_file(bin_path)},
    )
    manifest_file = manifest.write(output)
    return OpenVINOBuildResult(
        path=output, bin_path=bin_path, manifest_path=manifest_file, precision=precision,
        inference_precision=hint, runtime_precision=runtime, compressed_to_fp16=compress,
        source_sha256=manifest.source_onnx["sha256"], max_abs_logit_diff=max_diff, agreement=agreement,
        seconds=seconds, notes=notes, manifest=manifest,
    )


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    return openvino


def _card_dict(card: ModelCard | dict[str, Any] | None, source: Path) -> dict[str, Any]:
    if card is None:
        from resnet_deploy.artifacts import artifact_card

        card = artifact_card(source)
    return card.to_dict() if isinstance(card, ModelCard) else ModelCard.from_dict(card).to_dict()


def _check_against_source(xml: Path, source: Path, engine_cls: Any) -> tuple[str, dict, float, float]:
    """Compile the staged IR as a user would (its stored hint) and compare it with the source on ONNX Runtime.

    Returns (runtime precision, engine description, max |Δ logit|, top-1 agreement in percent)."""
    from resnet_deploy.compare import compare_logits
    from resnet_deploy.onnx_check import session

    sess = session(source, providers=["CPUExecutionProvider"])
    port = sess.get_inputs()[0]
    step = port.shape[0] if isinstance(port.shape[0], int) and port.shape[0] > 0 else CHECK_IMAGES
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in port.shape[1:]]
    images = random_images((max(step, CHECK_IMAGES), *dims))
    batches = batches_of(images, step, static=True)  # a static batch's last one is filled; its extra rows dropped
    reference = np.concatenate([sess.run(None, {port.name: b})[0] for b in batches])[:len(images)].astype(np.float32)
    with engine_cls(xml) as engine:
        runtime, describe = engine.precision, engine.describe()
        logits = np.concatenate([engine.infer(b) for b in batches])[:len(images)]
    comparison = compare_logits(reference, logits)
    return runtime, describe, comparison.max_abs_logit_diff, comparison.agreement


def _notes(precision: str, hint: str | None, runtime: str) -> list[str]:
    notes = []
    wanted = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint or "")
    if precision != "int8" and wanted is not None and runtime != wanted:
        notes.append(f"this CPU runs the IR in {runtime}, not {wanted} (no native {wanted}); the IR keeps the "
                     f"{hint} hint, so a CPU that has it will use it")
    if precision == "int8" and hint is None:
        notes.append("the float layers left in the INT8 model use the device's default inference precision")
    return notes


class OpenVINOTarget(Target):
    """OpenVINO IR (.xml + .bin) for the CPU, with the inference precision stored in the IR."""

    name = "openvino"

    def usable(self, device: str | None = None) -> tuple[bool, str]:
        if device is not None and device.startswith("cuda"):
            return False, "OpenVINO runs on CPUs (and Intel GPUs), not CUDA; use --device cpu"
        return openvino_usable()

    def build(self, request: TargetRequest) -> BuildResult:
        result = build_openvino_ir(request.model, request.output, precision=request.precision, card=request.card)
        row = (f"runs as {result.runtime_precision}; top-1 agreement {result.agreement:.1f}% with the source "
               f"ONNX on ONNX Runtime, max |Δ logit| {result.max_abs_logit_diff:.4g} (random inputs)")
        assert result.manifest is not None
        details = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items() if k != "manifest"}
        details["manifest"] = result.manifest.to_dict()
        return BuildResult(self.name, result.path, result.manifest_path, result.manifest,
                           summary=[("artifact check", row)], warnings=list(result.notes), details=details)
