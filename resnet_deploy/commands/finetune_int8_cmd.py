"""`resnet-deploy finetune-int8`: quantization-aware fine-tuning with the FP32 card as teacher → a verified
Q/DQ INT8 ONNX that `build-engine --int8` compiles without calibrating again (`trainer.qat` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resnet_deploy.commands._options import DeviceOption, JsonOption
from resnet_deploy.commands._output import emit_json, quiet, stderr, stdout, training_bar

PANEL_TRAIN = "Fine-tuning"
PANEL_CHECK = "Calibration and checks"


def finetune_int8(  # noqa: PLR0913 - a training command has many knobs
    card: Annotated[Path, typer.Argument(help="The FP32 model card (.safetensors) to start from; it is the teacher.")],
    data: Annotated[Path, typer.Option(
        "--data", help="DIR with train/ and val/ or test/ (ImageFolder) with the card's classes.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The Q/DQ INT8 ONNX to write (e.g. model.qat.onnx); "
                                         "the resumable state goes beside it as <name>.finetune.pt.")],
    cpu: Annotated[str, typer.Option(
        "--cpu", help="CPU class the INT8 weights are for: native (this machine), portable, avx2 (7-bit weights), "
        "vnni, amx, other (8-bit).")] = "native",
    iters: Annotated[int, typer.Option("--iters", help="Schedule length in iterations (cosine learning rate).",
                                       rich_help_panel=PANEL_TRAIN)] = 1000,
    max_iters: Annotated[int | None, typer.Option(
        "--max-iters", help="Stop at this iteration (the state is saved; --resume continues).",
        rich_help_panel=PANEL_TRAIN)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved beside --output, exactly.",
                                         rich_help_panel=PANEL_TRAIN)] = False,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (SGD, Nesterov momentum 0.9).",
                                      rich_help_panel=PANEL_TRAIN)] = 0.001,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-process batch.",
                                            rich_help_panel=PANEL_TRAIN)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature T (loss T²·KL).",
                                               rich_help_panel=PANEL_TRAIN)] = 1.0,
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight of the cross-entropy on the labels "
                                             "(0: the teacher alone; agreement is the goal).",
                                             rich_help_panel=PANEL_TRAIN)] = 0.0,
    ema_decay: Annotated[float, typer.Option(
        "--ema-decay", help="Export the moving average of the weights with this decay per iteration (0: the last "
        "iteration's weights).", rich_help_panel=PANEL_TRAIN)] = 0.99,
    amp: Annotated[str, typer.Option(
        "--amp", help="auto (bf16 on GPUs and CPUs with native bf16), off or bf16.",
        rich_help_panel=PANEL_TRAIN)] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Data order, augmentation and calibration images.",
                                      rich_help_panel=PANEL_TRAIN)] = 0,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Training images the scales start from.",
                                               rich_help_panel=PANEL_CHECK)] = 512,
    check_images: Annotated[int, typer.Option(
        "--check-images", help="Held-out images the ONNX and the INT8-vs-FP32 agreement are checked on.",
        rich_help_panel=PANEL_CHECK)] = 1000,
    min_agreement: Annotated[float | None, typer.Option(
        "--min-agreement", help="Top-1 agreement with FP32 to require, percent (default: the INT8 build gate).",
        rich_help_panel=PANEL_CHECK)] = None,
    quantize_logits: Annotated[bool, typer.Option(
        "--quantize-logits/--float-logits", help="Quantize the logits as post-training INT8 does, or leave the last "
        "Gemm's output float (default: its int8 grid flips near-ties; same ops, same speed).",
        rich_help_panel=PANEL_CHECK)] = False,
    device: DeviceOption = "auto",
    workers: Annotated[int | None, typer.Option("--workers", help="Decode threads / loader processes.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Fine-tune INT8 with the FP32 model as teacher.

    Writes a verified Q/DQ ONNX; quantizers sit where `build-engine --int8` puts them, and
    `build-engine --onnx OUT --int8` compiles it for ONNX Runtime or OpenVINO without calibrating again.
    """
    from trainer.progress import Reporter, RichReporter
    from trainer.qat import FinetuneConfig, finetune_int8

    config = FinetuneConfig(
        card=card, data=data, output=output, cpu=cpu, iters=iters, max_iters=max_iters, resume=resume, lr=lr,
        batch_size=batch_size, temperature=temperature, ce_weight=ce_weight, calib_samples=calib_samples,
        check_images=check_images, min_agreement=min_agreement, seed=seed, device=device, amp=amp, workers=workers,
        quantize_logits=quantize_logits, ema_decay=ema_decay)
    result = finetune_int8(config, Reporter() if quiet() else RichReporter(stderr, make_progress=training_bar))
    if not result.is_main:
        return
    if json_output:
        emit_json(result.to_dict())
        return
    _print_summary(result)


def _print_summary(result: Any) -> None:
    def line(text: str) -> None:
        stdout.print(text, markup=False, soft_wrap=True)

    line(f"{result.iterations} of {result.total_iters} iterations, {result.weight_bits}-bit weights for CPU class "
         f"{result.cpu_target}, {result.train_seconds:.0f} s ({result.images_per_s:,.0f} images/s)")
    if not result.completed:
        line(f"stopped; state {result.state} (--resume continues)")
        return
    check, vs = result.qdq_check, result.vs_fp32
    line(f"Q/DQ ONNX vs fake-quant model: top-1 agreement {check['agreement']:.2f}%, max |Δ logit| "
         f"{check['max_abs_logit_diff']:.3g} ({check['max_abs_logit_diff'] / max(check['logit_step'], 1e-12):.1f} "
         f"logit steps) on {check['images']} images")
    line(f"INT8 vs FP32: top-1 agreement {vs['agreement']:.2f}%, max |Δ logit| {vs['max_abs_logit_diff']:.3g} on "
         f"{vs['images']} held-out images; top-1 {result.int8_top1:.2f}% (FP32 {result.fp32_top1:.2f}%)")
    line(f"gate: {result.gate}")
    line(f"wrote {result.output} (build it with: resnet-deploy build-engine --onnx {result.output} --int8 "
         "--target onnxruntime|openvino)")
