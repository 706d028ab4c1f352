"""`resnet-deploy train` (under torchrun: `torchrun --nproc_per_node N -m resnet_deploy train ...`).

The command only turns options into a `trainer.TrainConfig`; the trainer does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resnet_deploy.commands._options import ArchOption, DepthOption, DeviceOption, JsonOption, resolve_arch
from resnet_deploy.commands._output import emit_json, quiet, stderr, stdout, training_bar

PANEL_SCHEDULE = "Recipe and schedule"
PANEL_SPEED = "Speed and devices"
PANEL_RUN = "Run folder, resume, logs"


def train(  # noqa: PLR0913 - a training command has many knobs
    depth: DepthOption = None,
    arch: ArchOption = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="DIR with train/ and val/ or test/ (ImageFolder), or CIFAR-10/100 python batches.")] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help="cifar or imagenet (default: the architecture family's).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    epochs: Annotated[float | None, typer.Option(
        "--epochs", help="Schedule length in epochs (milestones keep their fractions).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    iters: Annotated[int | None, typer.Option(
        "--iters", help="Schedule length in iterations (default: the recipe's, e.g. 64000 for CIFAR).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    max_iters: Annotated[int | None, typer.Option(
        "--max-iters", help="Stop at this iteration of the schedule (continue later with --resume).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Per-process batch (default: the recipe's batch split across processes). "
        "A different global batch scales lr linearly and iterations inversely.",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Base learning rate (default: the recipe's, scaled with the batch).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        "--weight-decay", help="Default 1e-4.", rich_help_panel=PANEL_SCHEDULE)] = None,
    warmup_iters: Annotated[int | None, typer.Option(
        "--warmup-iters", help="Iterations at lr/10 first (default: 400 for ResNet-110/1202, else 0).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    val_split: Annotated[int, typer.Option(
        "--val-split", help="Hold out this many training images for validation (the paper's 45k/5k: 5000).",
        rich_help_panel=PANEL_SCHEDULE)] = 0,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="Training crop size (default: 32 CIFAR, 224 ImageNet).",
        rich_help_panel=PANEL_SCHEDULE)] = None,
    amp: Annotated[str, typer.Option(
        "--amp", help="Mixed precision: off, bf16 or fp16 (with a grad scaler).", rich_help_panel=PANEL_SPEED)] = "off",
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="NHWC memory format (default: on for CUDA).",
        rich_help_panel=PANEL_SPEED)] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model (CUDA).", rich_help_panel=PANEL_SPEED)] = False,
    device: DeviceOption = "auto",
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Data loader processes (default: min(8, CPUs)); decode threads for the tensor loader.",
        rich_help_panel=PANEL_SPEED)] = None,
    loader: Annotated[str, typer.Option(
        "--loader", help="auto, tensor (decode once, augment on the device) or workers.",
        rich_help_panel=PANEL_SPEED)] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Where decoded images are cached (default: ~/.cache/resnet-deploy/decoded, "
        "or $RESNET_DEPLOY_CACHE/decoded).", rich_help_panel=PANEL_SPEED)] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Decode images without reading or writing the cache.", rich_help_panel=PANEL_SPEED)] = False,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", help="Random images instead of --data, resident on the device: training throughput only.",
        rich_help_panel=PANEL_SPEED)] = False,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="Deterministic kernels, for a bitwise-exact resume on a GPU (slower).",
        rich_help_panel=PANEL_SPEED)] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds weights, data order and augmentation.",
                                      rich_help_panel=PANEL_RUN)] = 0,
    out: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Run folder (default: runs/ARCH).", rich_help_panel=PANEL_RUN)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --output from its last.pt, exactly.", rich_help_panel=PANEL_RUN)] = False,
    resume_from: Annotated[Path | None, typer.Option(
        "--resume-from", help="Continue from this last.pt (implies --resume).", rich_help_panel=PANEL_RUN)] = None,
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every", help="Evaluate every N iterations (default: 1000 CIFAR / one epoch ImageNet, at most "
        "a tenth of the run).", rich_help_panel=PANEL_RUN)] = None,
    save_every: Annotated[int | None, typer.Option(
        "--save-every", help="Write last.pt every N iterations (default: at each evaluation).",
        rich_help_panel=PANEL_RUN)] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip unreadable images (counted and reported) instead of failing.",
        rich_help_panel=PANEL_RUN)] = False,
    analyze_responses: Annotated[bool, typer.Option(
        "--analyze-responses", help="Record the std of each layer's response at the end (paper Fig. 7).",
        rich_help_panel=PANEL_RUN)] = False,
    json_output: JsonOption = False,
) -> None:
    """Train a ResNet with the paper's recipe.

    Writes model cards ready for `export`.
    """
    from trainer import TrainConfig
    from trainer import train as run_training
    from trainer.progress import Reporter, RichReporter

    resuming = resume or resume_from is not None
    config = TrainConfig(
        arch=resolve_arch(depth, arch, required=not resuming) or "",
        data=data, recipe=recipe, epochs=epochs, iters=iters, max_iters=max_iters, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_iters=warmup_iters, val_split=val_split, image_size=image_size, amp=amp,
        channels_last=channels_last, compile=compile_model, device=device, workers=workers, loader=loader,
        cache_dir=cache_dir, no_cache=no_cache, seed=seed, out=out, resume=resuming, resume_from=resume_from,
        eval_every=eval_every, save_every=save_every, analyze_responses=analyze_responses,
        deterministic=deterministic, synthetic=synthetic, skip_bad=skip_bad,
    )
    result = run_training(config, Reporter() if quiet() else RichReporter(stderr, make_progress=training_bar))
    if not result.is_main:
        return  # only rank 0 reports
    if json_output:
        emit_json(result.to_dict())
        return
    _print_summary(result)


def _print_summary(result: Any) -> None:
    status = "finished" if result.completed else \
        f"stopped at {result.iters} of {result.total_iters} (--resume continues)"
    stdout.print(f"{result.iters} iterations, {status}", markup=False)
    stdout.print(
        f"{result.eval_split} top-1 {result.test_top1:.2f} % (error {100 - result.test_top1:.2f} %), "
        f"top-5 {result.test_top5:.2f} %, train loss {result.train_loss:.4f}", markup=False)
    if result.test:
        stdout.print(f"{result.test['split']} top-1 {result.test['top1']:.2f} %, top-5 {result.test['top5']:.2f} %",
                     markup=False)
    stdout.print(f"{result.images_per_s:,.0f} images/s (global batch {result.global_batch}, "
                 f"{result.world_size} process{'es' if result.world_size > 1 else ''})", markup=False)
    if result.skipped_images:
        stdout.print(f"skipped {result.skipped_images} unreadable image(s) (--skip-bad)", markup=False)
    stdout.print(f"model card: {result.checkpoint} (best: {result.best_checkpoint})", markup=False)
    stdout.print(f"checkpoint: {result.last_pt}; metrics: {result.metrics_file}; curves: {result.plot}", markup=False)
