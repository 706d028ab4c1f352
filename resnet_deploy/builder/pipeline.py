"""`build(BuildRequest)`: export if needed → precision (made and checked in ONNX) → the target's compile."""

from __future__ import annotations

import tempfile
from pathlib import Path

from resnet_deploy.artifacts import manifest_path, onnx_stem
from resnet_deploy.builder.finetuned import build_finetuned_int8
from resnet_deploy.builder.report import BuildReport
from resnet_deploy.builder.request import BuildListener, BuildRequest, check_for_target, check_request
from resnet_deploy.builder.sources import (
    adopt_foreign,
    card_source,
    check_output,
    default_output,
    export_source,
    foreign_card,
    refuse_foreign_file,
)
from resnet_deploy.builder.stages import (
    compile_artifact,
    compile_checked,
    cpu_target_for,
    make_precision,
    rebuild_command,
)
from resnet_deploy.errors import UsageError
from resnet_deploy.targets.base import resolve_target


def build(request: BuildRequest, listener: BuildListener | None = None) -> BuildReport:
    """Build the artifact `request` asks for; raises UsageError/BackendUnavailable/CheckFailed (writing nothing)."""
    say = listener or BuildListener()
    prebuilt = build_finetuned_int8(request, say)  # a finetune-int8 model: its trained scales, no calibration
    if prebuilt is not None:
        return prebuilt
    check_request(request)
    target, reason = resolve_target(request.target, request.device)
    say.info(f"target: {target.name} ({reason})")
    for message in check_for_target(request, target.name):
        say.warn(message)
    options = target.parse_options(request.options)  # the target-only options (TensorRT's profile, ...), checked
    foreign = foreign_card(request, say)  # a card-less ONNX: its card from the flags, or the flags it lacks

    source, exported = export_source(request, say)
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.precision import read_source

    output = request.output if request.output is not None else default_output(source, request.tag, target,
                                                                                request.device)
    check_output(output, target, source)
    if request.calib_data is not None and not request.made_in_onnx:
        say.warn("--calib-data ignored: it calibrates --int8 (and checks --fp16)")

    cpu_target = cpu_target_for(request, target, say)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-build-") as tmp:
        # ONNX Runtime ships the precision model itself (optimized): it is a temporary file there.
        keep = target.spec.keeps_precision_onnx
        folder = output.parent if keep else Path(tmp)
        original, clean = source, None
        if foreign is not None:
            source, clean = adopt_foreign(source, foreign, folder / f"{onnx_stem(source)}.clean.onnx", say)
        src = read_source(source)
        precision_path = folder / f"{onnx_stem(original)}.{request.tag}.onnx"
        result = None
        if request.made_in_onnx:
            if precision_path.resolve() == source.resolve():
                raise UsageError(f"{source}: the {request.tag} model would overwrite its FP32 source; rename the "
                                 "source")
            if keep and manifest_path(precision_path).is_file():  # e.g. an ONNX Runtime artifact of that name
                raise UsageError(f"{precision_path}: the {target.name} build keeps its {request.tag} ONNX model "
                                 "there, but that file is a built artifact (it has a manifest); move it, or give "
                                 "the ONNX Runtime artifact its default name (<name>.<precision>.cpu.onnx)")
            if keep:
                refuse_foreign_file(precision_path, {src.sha256, sha256_file(original)}, f"the {target.name} build "
                                    f"keeps its {request.tag} ONNX model (made from {original.name}) there")
            result = make_precision(src, precision_path, request, say, cache_base=precision_path if keep else output,
                                    cpu_target=cpu_target, shown_as=output if not keep else None)
        model = precision_path if result is not None else source
        if target.spec.source == "card":  # it compiles the PyTorch model; the FP32 ONNX stays the reference
            model = card_source(request, Path(tmp))
        say.info(f"building the {target.name} artifact → {output}")
        if target.spec.verified_on_cpu and request.device in target.spec.judged_for:
            built, here = compile_checked(target, model, output, request=request, src=src, result=result,
                                          cpu_target=cpu_target, rebuild=rebuild_command(request, original, target),
                                          say=say, options=options)
        else:
            built, here = compile_artifact(target, model, output, precision=request.precision, card=src.card,
                                           device=request.device, options=options), None
        for message in built.warnings:
            say.warn(message)
    return BuildReport(target=target.name, target_reason=reason, source=original, source_sha256=sha256_file(original),
                       exported=exported, precision=request.precision, fp16_remainder=request.fp16_remainder,
                       precision_onnx=model if result is not None and keep else None, precision_result=result,
                       artifact=built, output=output, clean=clean,
                       cleaned_onnx=source if clean is not None and keep else None, here=here)
