"""`resnet-deploy build-engine`: an FP32, FP16 or calibrated INT8 artifact for ONNX Runtime, TensorRT or OpenVINO.

The precision is made and proven in ONNX first (`resnet_deploy.precision`), then compiled by the target:
ONNX Runtime (`onnxruntime_target`), TensorRT (`tensorrt_target`) or OpenVINO (`openvino_target`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from resnet_deploy.commands._options import (
    ArchOption,
    CheckpointOption,
    DepthOption,
    DeviceOption,
    JsonOption,
    NumClassesOption,
    OutputOption,
    resolve_arch,
)
from resnet_deploy.commands._output import emit_json, info, stderr, stdout, warn
from resnet_deploy.errors import BackendUnavailable, UsageError

TARGETS = ("auto", "onnxruntime", "tensorrt", "openvino")
CALIB_METHODS = ("entropy", "minmax", "percentile", "auto")
DEVICES = ("cpu", "cuda")
CHECK_IMAGES = 128  # real images an FP16 model is checked on (from --calib-data)
ARTIFACT_CHECK_IMAGES = 64  # real images an ONNX Runtime artifact is checked on against its precision model

def build_engine(
    onnx: Annotated[Path | None, typer.Option(
        "--onnx", help="FP32 ONNX model made by `resnet-deploy export` (its metadata carries the model card).")] = None,
    depth: DepthOption = None,
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset when exporting first (default 20).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16-typed model (float32 I/O); with --int8: FP16 "
                                                      "for what is not quantized.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Calibrated INT8 (explicit Q/DQ) model; needs --calib-data.")]
        = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="OpenVINO only: BF16 inference precision of the FP32 model.")]
        = False,
    calib_data: Annotated[Path | None, typer.Option(
        "--calib-data", help="Folder of images to calibrate INT8 on (class subfolders optional, labels not needed); "
                             "also the check images of --fp16.")] = None,
    calib_samples: Annotated[int, typer.Option(
        "--calib-samples", help="Calibration images, drawn evenly across class folders.")] = 512,
    calib_method: Annotated[str, typer.Option(
        "--calib-method", help="percentile (99.999th of |x|), entropy (KL divergence), minmax, or auto (each, "
                               "scored on held-out images by top-1 agreement with FP32; the best is kept).")]
        = "percentile",
    calib_seed: Annotated[int, typer.Option("--calib-seed", help="Seed of the calibration image draw.")] = 0,
    random_calibration: Annotated[bool, typer.Option(
        "--random-calibration", help="Calibrate INT8 on random images: for latency work only, never for "
                                     "accuracy.")] = False,
    min_agreement: Annotated[float | None, typer.Option(
        "--min-agreement", help="Top-1 agreement with FP32 (percent, on real images) the model must reach "
                                "[default: 99 for FP16, 95 for INT8].", show_default=False)] = None,
    target: Annotated[str, typer.Option(
        "--target", help="auto (TensorRT if usable, else OpenVINO if installed, else ONNX Runtime), onnxruntime, "
                         "tensorrt or openvino.")] = "auto",
    device: DeviceOption = "cpu",
    output: OutputOption = None,
    min_batch: Annotated[int | None, typer.Option(
        "--min-batch", help="TensorRT: smallest batch of the optimization profile [default: 1].",
        show_default=False)] = None,
    opt_batch: Annotated[int | None, typer.Option(
        "--opt-batch", help="TensorRT: batch the kernels are tuned for [default: 8].", show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="TensorRT: largest batch [default: 32].", show_default=False)] = None,
    workspace: Annotated[str | None, typer.Option(
        "--workspace", help="TensorRT: workspace memory-pool limit, e.g. 4G [default: TensorRT's].",
        show_default=False)] = None,
    opt_level: Annotated[int | None, typer.Option(
        "--opt-level", help="TensorRT: builder optimization level 0-5 [default: 3].", show_default=False)] = None,
    timing_cache: Annotated[Path | None, typer.Option(
        "--timing-cache", help="TensorRT: timing cache file, loaded if present and saved after the build.",
        show_default=False)] = None,
    version_compatible: Annotated[bool, typer.Option(
        "--version-compatible", help="TensorRT: later TensorRT versions may load the engine.")] = False,
    hardware_compatibility: Annotated[str | None, typer.Option(
        "--hardware-compatibility", help="TensorRT: none, ampere+ or same-cc [default: none].",
        show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Build a deployable artifact: FP16 or calibrated INT8 made and checked in ONNX, then compiled for the target."""
    trt_flags = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch, "workspace_bytes": workspace,
                 "opt_level": opt_level, "timing_cache": timing_cache,
                 "version_compatible": version_compatible or None, "hardware_compatibility": hardware_compatibility}
    trt_given = {k: v for k, v in trt_flags.items() if v is not None}
    _check_flags(onnx, (depth, arch, checkpoint, num_classes, opset), fp16=fp16, int8=int8, bf16=bf16,
                 calib_data=calib_data, calib_samples=calib_samples, calib_method=calib_method,
                 random_calibration=random_calibration, target=target, device=device)
    chosen, reason = resolve_target(target)
    info(f"target: {chosen} ({reason})")
    if bf16 and chosen != "openvino":
        raise UsageError(f"--bf16 is an OpenVINO inference precision; the target is {chosen} (use --target openvino)")
    if int8 and fp16 and chosen == "openvino":
        raise UsageError("--int8 --fp16 makes an FP16 remainder for TensorRT; OpenVINO picks the precision of the "
                         "layers it does not quantize itself (its inference precision): use --int8 alone")
    if trt_given and chosen != "tensorrt":
        flags = ", ".join("--" + k.replace("_bytes", "").replace("_", "-") for k in trt_given)
        if target != "auto":
            raise UsageError(f"{flags}: TensorRT options, but the target is {chosen}")
        warn(f"{flags} ignored: TensorRT options, but the target is {chosen}")
    if chosen == "onnxruntime" and device == "cuda":
        _require_cuda_provider()
    trt_options = _tensorrt_options(trt_given) if chosen == "tensorrt" else None

    source, exported = _source_onnx(onnx, depth, arch, checkpoint, num_classes, opset, output)
    from resnet_deploy.precision import read_source

    src = read_source(source)
    tag = "int8-fp16" if int8 and fp16 else "int8" if int8 else "fp16" if fp16 else "bf16" if bf16 else "fp32"
    target_output = Path(output) if output is not None else default_output(source, tag, chosen, device)
    _check_output(target_output, chosen, source)
    if calib_data is not None and not (int8 or fp16):
        warn("--calib-data ignored: it calibrates --int8 (and checks --fp16)")

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-build-") as tmp:
        if chosen == "onnxruntime":
            precision_path = Path(tmp) / f"{_stem(source)}.{tag}.onnx"
            cache_base = target_output
        else:
            precision_path = target_output.with_name(f"{_stem(source)}.{tag}.onnx")
            cache_base = precision_path
        precision_result = None
        if int8 or fp16:
            if precision_path.resolve() == source.resolve():
                raise UsageError(f"{source}: the {tag} model would overwrite its FP32 source; rename the source")
            precision_result = _make_precision(src, precision_path, cache_base, int8=int8, fp16=fp16,
                                               calib_data=calib_data, calib_samples=calib_samples,
                                               calib_method=calib_method, calib_seed=calib_seed,
                                               random_calibration=random_calibration, min_agreement=min_agreement)
            _report_precision(precision_result)
        else:
            precision_path = source
        info(f"building the {chosen} artifact → {target_output}")
        artifact = _build_target(chosen, precision_path, target_output, card=src.card, int8=int8, fp16=fp16,
                                 bf16=bf16, device=device, trt_options=trt_options, calib_data=calib_data)

    document = {
        "target": chosen,
        "target_reason": reason,
        "source_onnx": {"path": str(source), "sha256": src.sha256, "exported": exported},
        "precision": "int8" if int8 else "fp16" if fp16 else "bf16" if bf16 else "fp32",
        "fp16_remainder": bool(int8 and fp16),
        "precision_onnx": str(precision_path) if precision_result is not None and chosen != "onnxruntime" else None,
        "precision_check": precision_result.to_dict() if precision_result is not None else None,
        "artifact": _as_dict(artifact),
        "output": str(target_output),
    }
    if json_output:
        emit_json(document)
        return
    _print_summary(document, precision_result)


# --- flags and target ---------------------------------------------------------------------------------


def _check_flags(onnx: Path | None, export_flags: tuple[Any, ...], *, fp16: bool, int8: bool, bf16: bool,
                 calib_data: Path | None, calib_samples: int, calib_method: str, random_calibration: bool,
                 target: str, device: str) -> None:
    """Every usage error that needs no work done, before any work is done."""
    if onnx is not None and any(flag is not None for flag in export_flags):
        raise UsageError("give --onnx PATH or the export flags (--depth/--arch/--checkpoint/--num-classes/--opset), "
                         "not both")
    if onnx is None and all(flag is None for flag in export_flags[:3]):
        raise UsageError("name a model: --onnx PATH (from `resnet-deploy export`), or --depth/--arch/--checkpoint "
                         "to export one first")
    if onnx is not None and not onnx.is_file():
        raise UsageError(f"{onnx}: no such ONNX file")
    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if device not in DEVICES:
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}")
    if calib_samples < 1:
        raise UsageError(f"--calib-samples must be positive, got {calib_samples}")
    if bf16 and (fp16 or int8):
        raise UsageError("--bf16 is the OpenVINO inference precision of the FP32 model; it does not combine with "
                         "--fp16 or --int8")
    if int8 and calib_data is None and not random_calibration:
        raise UsageError("--int8 needs calibration images: pass --calib-data DIR (any folder of images, e.g. a few "
                         "hundred from the training set), or --random-calibration for latency work only")
    if random_calibration and calib_data is not None:
        raise UsageError("give --calib-data or --random-calibration, not both")
    if random_calibration and not int8:
        raise UsageError("--random-calibration calibrates --int8; add --int8")
    if calib_data is not None and not calib_data.is_dir():
        raise UsageError(f"{calib_data}: no such calibration folder")


def resolve_target(target: str) -> tuple[str, str]:
    """(target, why): `auto` prefers TensorRT, then OpenVINO, then ONNX Runtime; an explicit one must be usable."""
    if target == "onnxruntime":
        return "onnxruntime", "asked for"
    if target == "tensorrt":
        usable, why = _tensorrt_usable()
        if not usable:
            raise BackendUnavailable(f"TensorRT is not available ({why})")
        return "tensorrt", "asked for"
    if target == "openvino":
        usable, why = _openvino_usable()
        if not usable:
            raise BackendUnavailable(why)
        return "openvino", "asked for"
    trt_ok, trt_why = _tensorrt_usable()
    if trt_ok:
        return "tensorrt", "auto: TensorRT and a CUDA GPU are usable"
    ov_ok, ov_why = _openvino_usable()
    if ov_ok:
        return "openvino", f"auto: TensorRT is not usable ({trt_why}); {ov_why}"
    return "onnxruntime", f"auto: TensorRT is not usable ({trt_why}); OpenVINO is not usable ({ov_why})"


def _tensorrt_usable() -> tuple[bool, str]:
    try:
        from resnet_deploy.targets.tensorrt import tensorrt_usable
    except ImportError as exc:
        return False, f"the TensorRT target is not installed ({exc})"
    return tensorrt_usable()


def _openvino_usable() -> tuple[bool, str]:
    try:
        from resnet_deploy.targets.openvino import openvino_usable
    except ImportError as exc:
        return False, f"the OpenVINO target is not available ({exc})"
    return openvino_usable()


def _require_cuda_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu and CUDA, or use "
                                 "--device cpu")


def _tensorrt_options(given: dict[str, Any]) -> Any:
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, parse_byte_size

    if "workspace_bytes" in given:
        given = {**given, "workspace_bytes": parse_byte_size(given["workspace_bytes"])}
    return TensorRTBuildOptions(**given).validated()


# --- files ----------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    return path.name[: -len(".onnx")] if path.name.lower().endswith(".onnx") else path.stem


def default_output(source: Path, tag: str, target: str, device: str) -> Path:
    """resnet50.onnx → resnet50.int8.cpu.onnx (ONNX Runtime), resnet50.int8.plan, resnet50.int8.xml."""
    suffix = {"onnxruntime": f".{device}.onnx", "tensorrt": ".plan", "openvino": ".xml"}[target]
    return source.with_name(f"{_stem(source)}.{tag}{suffix}")


def _check_output(path: Path, target: str, source: Path) -> None:
    wanted = {"onnxruntime": (".onnx",), "tensorrt": (".plan", ".engine"), "openvino": (".xml",)}[target]
    if path.suffix.lower() not in wanted:
        raise UsageError(f"--output {path}: a {target} artifact is named {' or '.join(wanted)}")
    if path.resolve() == source.resolve():
        raise UsageError(f"--output {path} is the source model; choose another name")
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give a file name")


def _source_onnx(onnx: Path | None, depth: int | None, arch: str | None, checkpoint: Path | None,
                 num_classes: int | None, opset: int | None, output: Path | None) -> tuple[Path, bool]:
    """The FP32 ONNX to start from: --onnx, or a fresh export of the named model (card in its metadata)."""
    if onnx is not None:
        return onnx, False
    from resnet_deploy.checkpoints import load_model, random_model
    from resnet_deploy.export import default_output_path, export_onnx

    name = resolve_arch(depth, arch, required=checkpoint is None)
    if checkpoint is None:
        assert name is not None
        loaded = random_model(name, num_classes=num_classes)
        warn(f"no --checkpoint: exporting {name} with RANDOM weights (fine for latency work, useless for accuracy)")
    else:
        loaded = load_model(checkpoint, arch=name, num_classes=num_classes)
    folder = Path(output).parent if output is not None else Path(".")
    target = folder / default_output_path(loaded.card.arch).name
    info(f"exporting {loaded.card.arch} → {target}")
    result = export_onnx(loaded, target, opset=opset)
    return Path(result.path), True


# --- the precision step -------------------------------------------------------------------------------------


def _make_precision(src: Any, path: Path, cache_base: Path, *, int8: bool, fp16: bool, calib_data: Path | None,
                    calib_samples: int, calib_method: str, calib_seed: int, random_calibration: bool,
                    min_agreement: float | None) -> Any:
    from resnet_deploy.precision import convert_fp16, quantize_int8

    if int8:
        what = "random images" if random_calibration else str(calib_data)
        info(f"INT8: calibrating {src.path.name} on {what} ({calib_method}, {calib_samples} images, seed {calib_seed})")
        with _progress() as progress:
            return quantize_int8(src.path, path, calib_data=calib_data, samples=calib_samples, method=calib_method,
                                 fp16_remainder=fp16, seed=calib_seed, random_calibration=random_calibration,
                                 cache_base=cache_base, min_agreement=min_agreement, progress=progress)
    images = None
    if calib_data is not None:
        images = real_images(calib_data, src.card, CHECK_IMAGES, calib_seed)
    else:
        warn("FP16 is checked on random inputs only (no gate); pass --calib-data DIR to check it on real images")
    info(f"FP16: converting {src.path.name}")
    return convert_fp16(src.path, path, check_images=images, min_agreement=min_agreement, seed=calib_seed)


def real_images(folder: Path, card: Any, count: int, seed: int) -> Any:
    """`count` images from `folder` (evenly across class subfolders) through the card's eval transform."""
    import numpy as np

    from resnet_deploy.data import BadImageError, eval_transform, open_image_folder_unlabelled, stratified_indices
    from resnet_deploy.precision.calibration import calibration_folder

    dataset = open_image_folder_unlabelled(calibration_folder(folder))
    transform = eval_transform(card.preprocessing)
    arrays = []
    for index in stratified_indices(dataset.labels, count, seed):
        try:
            arrays.append(transform(dataset.load(index)).numpy())
        except BadImageError as exc:
            raise UsageError(f"{exc.path}: cannot read this image; fix or remove it") from None
    return np.stack(arrays).astype(np.float32)


class _progress:
    """A rich progress bar on stderr; the library reports `(phase, done, total)`."""

    def __enter__(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=stderr, transient=False)
        self._tasks: dict[str, Any] = {}
        self._bar.start()
        return self.update

    def update(self, phase: str, done: int, total: int) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._bar.add_task(phase, total=max(total, 1))
        self._bar.update(task, completed=done, total=max(total, 1))

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _report_precision(result: Any) -> None:
    if result.calibration is not None and len(result.calibration.scores) > 1:
        for method, score in result.calibration.scores.items():
            info(f"  {method}: top-1 agreement {score['agreement']:.2f}%, max |Δ logit| "
                 f"{score['max_abs_logit_diff']:.4g}")
        info(f"  kept {result.calibration.method}")
    for message in result.warnings:
        warn(message)


# --- the target step --------------------------------------------------------------------------------------


def _build_target(target: str, model: Path, output: Path, *, card: Any, int8: bool, fp16: bool, bf16: bool,
                  device: str, trt_options: Any, calib_data: Path | None) -> Any:
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if target == "onnxruntime":
        from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

        images = None
        if calib_data is not None:
            images = real_images(calib_data, card, ARTIFACT_CHECK_IMAGES, 1)
        result = build_onnxruntime_artifact(model, output, device=device, check_images=images)
        for note in result.notes:
            warn(note)
        return result
    if target == "tensorrt":
        from resnet_deploy.targets.tensorrt import build_tensorrt_engine

        result = build_tensorrt_engine(model, output, precision=precision, options=trt_options, card=card)
        for message in result.warnings:
            warn(message)
        return result
    from resnet_deploy.targets.openvino import build_openvino_ir

    result = build_openvino_ir(model, output, precision="bf16" if bf16 else precision, card=card)
    for note in result.notes:
        warn(note)
    return result


def _as_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    data = dataclasses.asdict(result)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def _print_summary(document: dict[str, Any], precision: Any) -> None:
    from rich.table import Table

    artifact = document["artifact"]
    table = Table(title=f"build-engine → {document['output']}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    remainder = " (FP16 remainder)" if document["fp16_remainder"] else ""
    table.add_row("target", f"{document['target']} ({document['target_reason']})")
    table.add_row("source", document["source_onnx"]["path"])
    table.add_row("precision", document["precision"] + remainder)
    if precision is not None:
        gate = f", gate {precision.gate:g}%" if precision.gate is not None else ", informational"
        table.add_row("vs FP32", f"top-1 agreement {precision.agreement:.2f}%, max |Δ logit| "
                                 f"{precision.max_abs_logit_diff:.4g} on {precision.check_images} "
                                 f"{precision.check_data}{gate}")
        if precision.calibration is not None:
            calib = precision.calibration
            caches = ", ".join(f"{m}: {s['cache']['status']}" for m, s in calib.scores.items())
            method = calib.method if calib.requested == calib.method else f"{calib.requested} → {calib.method}"
            where = "random images" if calib.random else f"images from {calib.data}"
            table.add_row("calibration", f"{method}, {calib.samples} {where}, seed {calib.seed}; cache {caches}")
        if document["precision_onnx"]:
            table.add_row("precision ONNX", document["precision_onnx"])
    check = artifact.get("check")
    if isinstance(check, dict) and "agreement" in check:  # ONNX Runtime
        table.add_row("artifact check", f"top-1 agreement {check['agreement']:.2f}% with the precision model, "
                                        f"max |Δ logit| {check['max_abs_logit_diff']:.4g} ({check['data']})")
    elif "runtime_precision" in artifact:  # OpenVINO
        table.add_row("artifact check", f"runs as {artifact['runtime_precision']}; top-1 agreement "
                                        f"{artifact['agreement']:.1f}% with the source ONNX on ONNX Runtime, "
                                        f"max |Δ logit| {artifact['max_abs_logit_diff']:.4g} (random inputs)")
    elif "layer_precisions" in artifact:  # TensorRT
        layers = ", ".join(f"{k} {v}" for k, v in sorted(artifact["layer_precisions"].items()))
        table.add_row("engine layers", f"{layers} (TensorRT {artifact.get('tensorrt_version')}, "
                                       f"{artifact.get('gpu_name')})")
    manifest = artifact.get("manifest_path")
    table.add_row("artifact", document["output"])
    if manifest:
        table.add_row("manifest", str(manifest))
    stdout.print(table)
