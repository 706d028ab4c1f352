"""The build's stages after the source: the precision ONNX (`make_precision`), the target's compile
(`compile_artifact`), and for CPU-verified targets the compile judged on this CPU before it is moved into place
(`compile_checked`). bench and the demo call these directly when they cache the intermediate models."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_deploy.artifacts import manifest_path
from resnet_deploy.builder.request import CHECK_IMAGES, BuildListener, BuildRequest, precision_flags
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest

if TYPE_CHECKING:
    import numpy as np

    from resnet_deploy.card import ModelCard
    from resnet_deploy.precision import PrecisionResult


def cpu_target_for(request: BuildRequest, target: Target, say: BuildListener) -> str | None:
    """The CPU class an INT8 CPU artifact is built for (`--cpu`; native: this machine's); None for other builds."""
    from resnet_deploy.precision.isa import resolve_cpu_target, this_cpu, weight_bits_for

    if not target.spec.verified_on_cpu:
        if request.cpu != "native":
            say.warn(f"--cpu {request.cpu} ignored: it chooses INT8 weights for CPU targets, the target is "
                     f"{target.name} (GPU integer kernels accumulate in 32 bits: 8-bit weights)")
        return None
    cpu_target = resolve_cpu_target(request.cpu)
    if request.spec.calibrated:
        here = this_cpu()
        bits = weight_bits_for(cpu_target)
        whose = "this machine's" if request.cpu == "native" else "asked for"
        say.info(f"CPU: {here.describe()}; INT8 for {cpu_target} ({whose}): {bits}-bit weights")
    return cpu_target


def rebuild_command(request: BuildRequest, source: Path, target: Target) -> str:
    """The build-engine command that makes this artifact again (the self-check's error adds `--cpu CLASS`)."""
    parts = ["resnet-deploy build-engine", f"--onnx {source}"]
    if target.spec.source == "card":  # it builds from the card (or the architecture)
        parts[1] = f"--checkpoint {request.checkpoint}" if request.checkpoint is not None else f"--arch {request.arch}"
    parts += precision_flags(request)
    if request.calib_data is not None:
        parts.append(f"--calib-data {request.calib_data}")
    parts.append(f"--target {target.name}")
    if request.output is not None:
        parts.append(f"-o {request.output}")
    return " ".join(parts)


def compile_checked(target: Target, model: Path, output: Path, *, request: BuildRequest, src: Any,
                    result: PrecisionResult | None, cpu_target: str | None, rebuild: str, say: BuildListener,
                    check_set: Any = None, options: Any = None) -> tuple[BuildResult, Any]:
    """Compile a CPU artifact in a staging folder beside `output`, judge it on this CPU against FP32 on the
    held-out images (one gate: `verify.judge_here`), record the CPU and the self-check in its manifest, and only
    then move it into place; a refused artifact leaves nothing behind."""
    import os
    import shutil

    from resnet_deploy.verify import check_set_for, judge_here

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        staged = staging / output.name
        built = compile_artifact(target, model, staged, precision=request.precision, card=src.card,
                                 device=request.device, options=options)
        check_set = check_set if check_set is not None else check_set_for(result, request, src, say)
        here = judge_here(staged, built.manifest, model=model, src=src, precision=request.precision,
                          check_set=check_set, cpu_target=cpu_target, min_agreement=request.min_agreement,
                          rebuild=rebuild, shown_as=output, progress=say.progress)
        built.manifest.write(staged)
        files = sorted(staging.iterdir(), key=lambda f: (f.name == manifest_path(staged).name, f.name == staged.name))
        for file in files:  # the artifact's companions (.bin) first, the manifest last
            os.replace(file, output.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    built.path, built.manifest_path = output, manifest_path(output)
    if isinstance(built.details, dict):
        for key in ("path", "manifest_path", "bin_path"):
            if isinstance(built.details.get(key), str):
                built.details[key] = str(output.parent / Path(built.details[key]).name)
    return built, here


def compile_artifact(target: Target | str, model: Path, output: Path, *, precision: str, card: ModelCard,
                     device: str = "cpu", check_images: np.ndarray | None = None,
                     options: Any = None) -> BuildResult:
    """The target step alone: compile an ONNX model that already carries `precision`; `options` are the
    target's own (`Target.parse_options`: TensorRT's batch profile, ...)."""
    if isinstance(target, str):
        from resnet_deploy.targets.base import get_target

        target = get_target(target)
    return target.build(TargetRequest(model=model, output=output, precision=precision, card=card, device=device,
                                      check_images=check_images, options=options))


def make_precision(src: Any, path: Path, request: BuildRequest, say: BuildListener, *,
                   cache_base: Path | None = None, cpu_target: str | None = None,
                   shown_as: Path | None = None) -> PrecisionResult:
    """The ONNX of the request's precision made from the FP32 source `src` (from `precision.read_source`) by the
    precision's declared maker, at `path`. A calibrated maker (INT8: `quantize_int8`) takes the calibration
    options; any other (FP16: `convert_fp16`) takes `(source, output, check_images=, min_agreement=, seed=)`.
    INT8 weights take 7 bits when `cpu_target` is a CPU class whose integer kernels saturate (`isa.py`);
    `shown_as` is what errors call the output (the user's artifact, when `path` is a temporary file)."""
    from resnet_deploy import registry
    from resnet_deploy.precision.isa import weight_bits_for

    spec = request.spec
    assert spec.maker is not None, f"{spec.name} is not made in ONNX"
    maker = registry.load(spec.maker)
    if spec.calibrated:
        what = "random images" if request.random_calibration else str(request.calib_data)
        say.info(f"{spec.display}: calibrating {src.path.name} on {what} ({request.calib_method}, "
                 f"{request.calib_samples} images, seed {request.calib_seed})")
        result = maker(src.path, path, calib_data=request.calib_data, samples=request.calib_samples,
                               method=request.calib_method, fp16_remainder=request.fp16_remainder,
                               seed=request.calib_seed,
                               random_calibration=request.random_calibration, cache_base=cache_base,
                               min_agreement=request.min_agreement,
                               max_fallback_layers=request.max_fallback_layers, progress=say.progress,
                               weight_bits=weight_bits_for(cpu_target) if cpu_target is not None else 8,
                               cpu_target=cpu_target, shown_as=shown_as,
                               **({"check_samples": request.check_images} if request.check_images else {}))
    else:
        images = None
        if request.calib_data is not None:
            from resnet_deploy.samples import folder_images

            images = folder_images(request.calib_data, src.card.preprocessing,
                                   request.check_images or CHECK_IMAGES, request.calib_seed)[0]
        else:
            say.warn(f"{spec.display} is checked on random inputs only (no gate); pass --calib-data DIR to check "
                     "it on real images")
        say.info(f"{spec.display}: converting {src.path.name}")
        result = maker(src.path, path, check_images=images, min_agreement=request.min_agreement,
                       seed=request.calib_seed)
    if result.calibration is not None and len(result.calibration.scores) > 1:
        for method, score in result.calibration.scores.items():
            say.info(f"  {method}: top-1 agreement {score['agreement']:.2f}%, max |Δ logit| "
                     f"{score['max_abs_logit_diff']:.4g}")
        say.info(f"  kept {result.calibration.method}")
    for message in result.warnings:
        say.warn(message)
    return result

