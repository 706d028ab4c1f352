"""A Q/DQ INT8 model made by `finetune-int8`: compiled for the target as it is (its scales are trained; a
calibration would replace them), and on a CPU target held to its own Q/DQ arithmetic on this CPU."""

from __future__ import annotations

from types import SimpleNamespace

from resnet_deploy.builder.report import BuildReport
from resnet_deploy.builder.request import BuildListener, BuildRequest, check_for_target
from resnet_deploy.builder.sources import check_output, default_output
from resnet_deploy.builder.stages import compile_artifact, compile_checked, rebuild_command
from resnet_deploy.errors import UsageError
from resnet_deploy.targets.base import resolve_target


def build_finetuned_int8(request: BuildRequest, say: BuildListener) -> BuildReport | None:
    """Compile a Q/DQ ONNX from `finetune-int8` (its `resnet_deploy.quantization` carries a `qat` record) for the
    target as it is: a calibration would replace the trained scales. None for any other source."""
    from resnet_deploy.precision.qat_export import qat_source

    if request.onnx is None or not request.onnx.is_file():
        return None
    record = qat_source(request.onnx)
    if record is None:
        return None
    source = request.onnx
    if request.precision != "int8" or request.fp16_remainder:
        raise UsageError(f"{source}: an INT8 Q/DQ model from finetune-int8; build it with --int8 alone (its scales "
                         "are trained; nothing is recalibrated)")
    if any(v is not None for v in (request.arch, request.checkpoint, request.num_classes, request.opset)):
        raise UsageError("give --onnx PATH or the export flags (--depth/--arch/--checkpoint/--num-classes/--opset), "
                         "not both")
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
    from resnet_deploy.foreign.graph import load_onnx
    from resnet_deploy.precision.isa import runs_exactly_on, this_cpu

    target, reason = resolve_target(request.target, request.device)
    say.info(f"target: {target.name} ({reason})")
    for message in check_for_target(request, target.name):
        say.warn(message)
    options = target.parse_options(request.options)
    output = request.output if request.output is not None else default_output(source, "int8", target, request.device)
    check_output(output, target, source)
    props = {p.key: p.value for p in load_onnx(source).metadata_props}
    card = ModelCard.from_json(props[CARD_METADATA_KEY])
    bits, cpu_class = record.get("weight_bits", 8), this_cpu().cpu_class
    say.info(f"INT8 from finetune-int8 ({record['qat'].get('iterations')} iterations, {bits}-bit weights for "
             f"{record.get('cpu_target')}): its trained scales are kept, nothing is calibrated")
    if target.spec.verified_on_cpu and not runs_exactly_on(int(bits), cpu_class):
        say.warn(f"{source}: {bits}-bit weights saturate the integer kernels of this CPU ({cpu_class}); fine-tune "
                 "with --cpu native or --cpu portable for 7-bit weights")
    say.info(f"building the {target.name} artifact → {output}")
    if not (target.spec.verified_on_cpu and request.device in target.spec.judged_for):
        built, here = compile_artifact(target, source, output, precision="int8", card=card, device=request.device,
                                       options=options), None
    else:
        # Its accuracy against the FP32 teacher was judged when it was fine-tuned; here the artifact is held to the
        # model's own Q/DQ arithmetic on this CPU (saturation), and gets the CPU record and self-check.
        src = SimpleNamespace(path=source, card=card, random_weights=False,
                              input_shape=[None, 3, card.preprocessing.input_size, card.preprocessing.input_size])
        check_set = None
        if request.calib_data is not None:
            from resnet_deploy.onnx_check import arithmetic_session, run_logits
            from resnet_deploy.precision.common import CheckSet
            from resnet_deploy.verify import CHECK_IMAGES, labelled_images

            images, labels = labelled_images(request.calib_data, card, request.check_images or CHECK_IMAGES,
                                             request.calib_seed)
            arithmetic = run_logits(arithmetic_session(source), images)
            check_set = CheckSet(images, labels, arithmetic, arithmetic, "images (reference: its Q/DQ arithmetic)")
        built, here = compile_checked(target, source, output, request=request, src=src, result=None,
                                      cpu_target=record.get("cpu_target") or cpu_class,
                                      rebuild=rebuild_command(request, source, target), say=say, check_set=check_set,
                                      options=options)
    for message in built.warnings:
        say.warn(message)
    return BuildReport(target=target.name, target_reason=reason, source=source, source_sha256=sha256_file(source),
                       exported=False, precision="int8", artifact=built, output=output, here=here)
