"""The training run: data, model, optimizer and schedule set up from a `TrainConfig`, the loop, checkpoints.

A run folder (`--out`) holds `run.json` (options and the resolved schedule), `last.pt` (the exact
training state, written atomically every `save_every` iterations and at the end), `metrics.jsonl`
(one line per evaluation), model cards `best.safetensors` and `last.safetensors`, `curves.png`
(Fig. 6 style) and, with `--analyze-responses`, `responses.json` (Fig. 7). Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.atomic import write_text
from resnet_deploy.card import ModelCard, Preprocessing, save_card, stamp_lineage
from resnet_deploy.data import eval_transform
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.models import CIFAR, IMAGENET, create_model, get_entry
from trainer import distributed
from trainer.checkpoint import (
    ResumeState,
    cpu_state_dict,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from trainer.config import AMP_MODES, LOADERS, TrainConfig
from trainer.data import (
    TENSOR_LOADER_LIMIT_BYTES,
    BatchPlan,
    TensorBatches,
    TrainData,
    WorkerBatches,
    channel_stats,
    decode_images,
    default_cache_dir,
    open_train_data,
    synthetic_train_data,
    tensor_bytes,
    tensor_eval_batches,
    train_transform,
    worker_eval_batches,
)
from trainer.evaluate import Batches, EvalResult, autocast, evaluate
from trainer.plots import RESPONSES_FILE, plot_curves
from trainer.progress import Reporter
from trainer.recipes import Recipe, Schedule, StepFactor, get_recipe, resolve_schedule
from trainer.runlog import METRICS_FILE, MetricsLog

# Options that define a run; on --resume they come from the checkpoint, not the command line.
RUN_DEFINING = ("arch", "recipe", "epochs", "iters", "batch_size", "lr", "weight_decay", "warmup_iters",
                "val_split", "image_size", "seed", "loader")
LIGHTING_STD = 0.1  # AlexNet's PCA colour noise


@dataclass
class TrainResult:
    out: Path
    iters: int
    total_iters: int
    completed: bool
    train_loss: float
    train_error: float
    test_loss: float
    test_top1: float
    test_top5: float
    eval_split: str
    images_per_s: float
    train_seconds: float
    world_size: int
    global_batch: int
    checkpoint: Path | None  # last.safetensors
    best_checkpoint: Path | None
    last_pt: Path | None
    metrics_file: Path | None
    plot: Path | None
    responses_file: Path | None = None
    test: dict[str, Any] | None = None  # the test split's numbers when `eval_split` is a held-out part
    best_top1: float | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rank_weight_digests: list[str] = field(default_factory=list)
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["ranks_agree"] = len(set(self.rank_weight_digests)) <= 1
        data.pop("is_main")
        return data


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Run (or continue) one training run; under torchrun every rank calls this."""
    _check_options(config)
    ctx = distributed.setup(config.device)
    try:
        return _Run(config, ctx, reporter if (reporter is not None and ctx.is_main) else Reporter()).run()
    finally:
        distributed.cleanup(ctx)


def _check_options(config: TrainConfig) -> None:
    if config.amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, not {config.amp!r}")
    if config.loader not in LOADERS:
        raise UsageError(f"--loader must be one of {', '.join(LOADERS)}, not {config.loader!r}")
    if config.max_iters is not None and config.max_iters <= 0:
        raise UsageError(f"--max-iters must be positive, got {config.max_iters}")
    if config.workers is not None and config.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {config.workers}")
    if config.image_size is not None and config.image_size < 8:
        raise UsageError(f"--image-size must be at least 8, got {config.image_size}")
    if config.arch and not config.resume and config.resume_from is None:
        try:
            get_entry(config.arch)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None


def _configure_backends(device: torch.device, deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: adaptive_avg_pool2d's CUDA backward is flagged, though with a divisible input (every
        # ResNet's global pool) it takes the non-atomic, deterministic kernel.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Run:
    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, reporter: Reporter) -> None:
        self.config = config
        self.ctx = ctx
        self.reporter = reporter
        self.notes: list[str] = []

    # --- set-up ------------------------------------------------------------------------------------

    def _resolve_resume(self) -> ResumeState | None:
        cfg = self.config
        if not (cfg.resume or cfg.resume_from):
            return None
        path = cfg.resume_from or ((cfg.out or Path("runs") / cfg.arch) / "last.pt")
        state = load_training_state(Path(path))
        saved = state.data["config"]
        for key in RUN_DEFINING:
            mine, theirs = getattr(cfg, key), saved.get(key)
            if key == "arch" and not mine:
                continue
            if mine is not None and mine != theirs and not (key == "seed" and mine == 0):
                self.notes.append(f"--resume: ignoring {key}={mine}; the run continues with its own {key}={theirs}")
            setattr(cfg, key, theirs)
        if cfg.out is None:
            cfg.out = Path(path).parent
        if cfg.data is None and saved.get("data"):
            cfg.data = Path(saved["data"])
        cfg.synthetic = bool(saved.get("synthetic", False))
        return state

    def _out_dir(self, resuming: bool) -> Path:
        out = Path(self.config.out or Path("runs") / self.config.arch)
        if not resuming and (out / "last.pt").exists():
            raise UsageError(f"{out} already holds a run (last.pt); pass --resume to continue it, "
                             "or --out NEW_FOLDER for a new run")
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        return out

    def _recipe(self) -> Recipe:
        entry = get_entry(self.config.arch)
        return get_recipe(self.config.recipe or entry.family.name, entry.depth)

    def _loader_kind(self, recipe: Recipe, data: TrainData, size: int) -> str:
        kind = self.config.loader
        if self.config.synthetic:
            return "tensor"  # random pixels already in memory
        if kind == "auto":
            kind = "tensor" if recipe.augmentation == "crop-flip" else "workers"
        if kind == "tensor":
            if recipe.augmentation != "crop-flip":
                raise UsageError(f"--loader tensor holds fixed-size images; the {recipe.name} recipe's scale "
                                 "augmentation needs --loader workers")
            needed = tensor_bytes(len(data.train) + len(data.test), size)
            if needed > TENSOR_LOADER_LIMIT_BYTES:
                raise UsageError(f"--loader tensor would hold {needed / 2**30:.1f} GiB of decoded images; "
                                 "use --loader workers")
        return kind

    def _decode(self, dataset: Any, size: int, what: str) -> Any:
        cfg = self.config
        cache_dir = None if cfg.no_cache else (cfg.cache_dir or default_cache_dir())
        threads = cfg.workers or os.cpu_count() or 1
        if dataset.arrays is None and self.ctx.is_main:
            self.reporter.start_task(f"decode {what} images", total=len(dataset))
            try:
                decoded = decode_images(dataset, size, cache_dir=cache_dir, threads=threads,
                                        progress=self.reporter.advance_task)
            finally:
                self.reporter.end_task()
            if decoded.from_cache:
                self.reporter.message(f"{what}: {len(dataset)} decoded images from the cache {decoded.cache_file}")
        # Other ranks read what rank 0 decoded and cached.
        distributed.barrier(self.ctx)
        if dataset.arrays is not None or not self.ctx.is_main:
            decoded = decode_images(dataset, size, cache_dir=cache_dir, threads=threads)
        return decoded

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> TrainResult:  # noqa: PLR0915 - one readable sequence
        cfg, ctx = self.config, self.ctx
        resume = self._resolve_resume()
        if not cfg.arch:
            raise UsageError("name a model: --depth N or --arch NAME")
        if cfg.data is None and not cfg.synthetic:
            raise UsageError("--data DIR is required (DIR/train and DIR/val or DIR/test, or CIFAR python batches)")
        entry = get_entry(cfg.arch)
        if cfg.compile and ctx.device.type != "cuda":
            raise UsageError("--compile is for CUDA training; drop it on the CPU")
        channels_last = cfg.channels_last if cfg.channels_last is not None else ctx.device.type == "cuda"
        _configure_backends(ctx.device, cfg.deterministic)
        out = self._out_dir(resume is not None)

        recipe = self._recipe()
        size = cfg.image_size or recipe.input_size
        if cfg.synthetic:
            count = max(1024, 4 * (cfg.batch_size or recipe.batch_size) * ctx.world_size)
            data = synthetic_train_data(entry.family.num_classes, size, count, seed=cfg.seed)
            self.notes.append(f"synthetic data: {count} random {size}x{size} images resident on the device, for "
                              "measuring training throughput only")
        else:
            data = open_train_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
        padding = max(1, round(recipe.crop_padding * size / recipe.input_size)) if recipe.crop_padding else 0
        loader = self._loader_kind(recipe, data, size)
        scale_range: tuple[int, ...] | None = None
        workers = cfg.workers if cfg.workers is not None else min(8, os.cpu_count() or 1)
        self.reporter.message(data.describe())

        schedule = resolve_schedule(
            recipe, num_train=len(data.train_rows), world_size=ctx.world_size, batch_size=cfg.batch_size,
            lr=cfg.lr, weight_decay=cfg.weight_decay, iters=cfg.iters, epochs=cfg.epochs,
            warmup_iters=cfg.warmup_iters, eval_every=cfg.eval_every, save_every=cfg.save_every,
        )
        if resume is not None:
            saved = Schedule.from_dict(resume.data["schedule"])
            if saved.global_batch != schedule.global_batch:
                per_process = saved.global_batch // ctx.world_size
                raise UsageError(f"--resume: the run used a global batch of {saved.global_batch}, this launch "
                                 f"gives {schedule.global_batch}; use --batch-size {per_process}")
            saved.eval_every, saved.save_every = schedule.eval_every, schedule.save_every
            saved.per_process_batch, saved.world_size = schedule.per_process_batch, schedule.world_size
            schedule = saved
        for note in self.notes + schedule.notes:
            self.reporter.message(f"note: {note}")

        # Data on the device (tensor loader) or in workers.
        train_rows = data.train_rows
        plan = BatchPlan(len(train_rows), schedule.per_process_batch, ctx.world_size, ctx.rank, cfg.seed)
        eval_batch = max(64, 2 * schedule.per_process_batch)
        if loader == "tensor":
            train_all = self._decode(data.train, size, "training")
            test_all = self._decode(data.test, size, data.test_split)
            rows_t = torch.tensor(train_rows, dtype=torch.int64)
            train_images, train_labels = train_all.images[rows_t], train_all.labels[rows_t]
            if resume is not None:
                preprocessing = ModelCard.from_json(resume.data["card"]).preprocessing
            else:
                mean, std = channel_stats(train_images)
                preprocessing = Preprocessing(size, None, mean, std, "bilinear")
            mean, std = preprocessing.mean, preprocessing.std
            batches: Any = TensorBatches(train_images, train_labels, plan, device=ctx.device, mean=mean, std=std,
                                         padding=padding, channels_last=channels_last, seed=cfg.seed)
            eval_kw = dict(batch_size=eval_batch, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
                           mean=mean, std=std, channels_last=channels_last)
            if data.holdout_rows:
                hold = torch.tensor(data.holdout_rows, dtype=torch.int64)
                eval_batches = tensor_eval_batches(train_all.images[hold], train_all.labels[hold], **eval_kw)
                test_batches: Batches | None = tensor_eval_batches(test_all.images, test_all.labels, **eval_kw)
            else:
                eval_batches = tensor_eval_batches(test_all.images, test_all.labels, **eval_kw)
                test_batches = None
            del train_all, test_all
        else:
            family = IMAGENET if recipe.name == "imagenet" else CIFAR  # the recipe's data, not the model's
            resize = None if recipe.augmentation == "crop-flip" else round(size * 256 / 224)
            preprocessing = Preprocessing(size, resize, family.mean, family.std, family.interpolation)
            if resume is not None:
                preprocessing = ModelCard.from_json(resume.data["card"]).preprocessing
            scale_range = None
            if recipe.scale_range:  # [256, 480] at 224; proportionally for another --image-size
                scale_range = tuple(round(v * size / recipe.input_size) for v in recipe.scale_range)
            transform = train_transform(recipe.augmentation, size, padding, scale_range, resize)
            lighting = LIGHTING_STD if recipe.augmentation == "scale-crop-flip-colour" else 0.0
            batches = WorkerBatches(data.train, train_rows, plan, transform, device=ctx.device,
                                    mean=preprocessing.mean, std=preprocessing.std, workers=workers,
                                    channels_last=channels_last, lighting_std=lighting, seed=cfg.seed)
            evaluation = eval_transform(preprocessing)
            eval_kw2 = dict(batch_size=eval_batch, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
                            workers=workers, channels_last=channels_last)
            if data.holdout_rows:
                eval_batches = worker_eval_batches(data.train, data.holdout_rows, evaluation, **eval_kw2)
                test_batches = worker_eval_batches(data.test, list(range(len(data.test))), evaluation, **eval_kw2)
            else:
                eval_batches = worker_eval_batches(data.test, list(range(len(data.test))), evaluation, **eval_kw2)
                test_batches = None

        # Model, optimizer, schedule, mixed precision.
        _seed_everything(cfg.seed)
        model = create_model(cfg.arch, num_classes=len(data.class_names)).to(ctx.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                                    weight_decay=schedule.weight_decay)
        warm_factor = schedule.warmup_lr / schedule.lr if schedule.lr else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, StepFactor(schedule.milestones, schedule.lr_decay, schedule.warmup_iters, warm_factor))
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")

        recipe_record = {
            "recipe": recipe.name, "paper_recipe": recipe.to_dict(), "schedule": schedule.to_dict(),
            "image_size": size, "crop_padding": padding, "scale_range": scale_range,
            "augmentation": recipe.augmentation, "seed": cfg.seed,
            "amp": cfg.amp, "loader": loader, "val_split": cfg.val_split, "world_size": ctx.world_size,
            "global_batch": schedule.global_batch,
        }
        base_card = ModelCard(arch=cfg.arch, num_classes=len(data.class_names), class_names=list(data.class_names),
                              preprocessing=preprocessing, dataset="synthetic" if cfg.synthetic else str(cfg.data),
                              recipe=recipe_record)

        start, best_top1, best_iteration, train_seconds = 0, -1.0, 0, 0.0
        metrics = MetricsLog(out / METRICS_FILE) if ctx.is_main else None
        if resume is not None:
            saved_card = ModelCard.from_json(resume.data["card"])
            if saved_card.class_names != list(data.class_names):
                raise UsageError(f"--resume: the run was trained on classes {saved_card.class_names[:5]}..., "
                                 f"--data {cfg.data} has {data.class_names[:5]}...")
            model.load_state_dict(resume.data["model"])
            optimizer.load_state_dict(resume.data["optimizer"])
            scheduler.load_state_dict(resume.data["scheduler"])
            if resume.data.get("scaler"):
                scaler.load_state_dict(resume.data["scaler"])
            set_rng_state(resume.data["rng"])
            start = resume.iteration
            best = resume.data.get("best") or {}
            best_top1, best_iteration = float(best.get("top1", -1.0)), int(best.get("iteration", 0))
            train_seconds = float(resume.data.get("train_seconds", 0.0))
            if metrics is not None:
                metrics.keep_until(start)
            self.reporter.message(f"resuming {resume.path} at iteration {start} of {schedule.total_iters}")

        stop = min(schedule.total_iters, cfg.max_iters or schedule.total_iters)
        if start >= stop:
            raise UsageError(f"nothing to do: the checkpoint is at iteration {start} and the run stops at {stop} "
                             "(raise --max-iters, or drop it to finish the schedule)")

        train_model: nn.Module = model
        if ctx.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)

        if ctx.is_main:
            write_text(out / "run.json", json.dumps({
                "config": cfg.to_dict(), "schedule": schedule.to_dict(), "recipe": recipe.to_dict(),
                "preprocessing": preprocessing.to_dict(), "data": data.describe(), "loader": loader,
                "device": str(ctx.device), "world_size": ctx.world_size,
            }, indent=2, sort_keys=True) + "\n")

        def card_with(metrics_now: dict[str, Any]) -> ModelCard:
            card = dataclasses.replace(base_card, metrics=dict(metrics_now))
            return stamp_lineage(card, trained_by="resnet_deploy.trainer", run=str(out))

        def save_state(iteration: int, card: ModelCard) -> None:
            if not ctx.is_main:
                return
            save_training_state(out / "last.pt", {
                "card": card.to_json(),
                "model": cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "position": {"iteration": iteration, "epoch": iteration // plan.iters_per_epoch,
                             "step_in_epoch": iteration % plan.iters_per_epoch},
                "schedule": schedule.to_dict(),
                "config": cfg.to_dict(),
                "best": {"top1": best_top1, "iteration": best_iteration},
                "train_seconds": train_seconds,
                # Training loss/accuracy sums since the last evaluation, so the next log line is the same.
                "train_window": [*window.tolist(), float(window_images)],
            })

        # The loop.
        log_every = 1 if ctx.device.type == "cpu" else 25
        # Running sums stay on the device (no per-iteration sync); image counts are host integers.
        window = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, correct (since last eval)
        log_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)  # loss sum (since last log)
        window_images = log_images = 0
        if resume is not None and resume.data.get("train_window"):
            loss_sum, correct, images = resume.data["train_window"]
            window += torch.tensor([loss_sum, correct], dtype=torch.float64, device=ctx.device)
            window_images = int(images)
        # Images/s leaves out the log windows that start in the first iterations (compilation, cuDNN autotuning).
        warm_iters = min(10, max(0, stop - start - 1))
        steady_images, steady_seconds, all_images, session_seconds = 0, 0.0, 0, 0.0
        last_eval: EvalResult | None = None
        train_loss = train_error = float("nan")
        last_card = card_with({})
        self.reporter.start_training(total=schedule.total_iters, completed=start)
        mark = time.perf_counter()
        iteration = window_start = start
        try:
            while iteration < stop:
                x, y = batches.get(iteration)
                with autocast(ctx.device, amp_dtype):
                    logits = train_model(x)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                with torch.no_grad():
                    batch = int(y.shape[0])
                    batch_loss = loss.detach().double() * batch
                    window += torch.stack([batch_loss, (logits.argmax(1) == y).sum().double()])
                    log_loss += batch_loss
                    window_images += batch
                    log_images += batch
                iteration += 1
                due_eval = iteration % schedule.eval_every == 0 or iteration == stop
                due_save = iteration % schedule.save_every == 0 or iteration == stop
                if iteration % log_every == 0 or due_eval or due_save:
                    loss_sum, images = log_loss.item(), log_images  # .item() synchronizes with the device
                    now = time.perf_counter()
                    seconds = now - mark
                    train_seconds += seconds
                    step_ips = images * ctx.world_size / seconds if seconds > 0 else 0.0
                    all_images += images * ctx.world_size
                    session_seconds += seconds
                    if window_start - start >= warm_iters:
                        steady_images += images * ctx.world_size
                        steady_seconds += seconds
                    if not math.isfinite(loss_sum):
                        raise CheckFailed(f"training diverged: the loss is not finite at iteration {iteration}; "
                                          "lower --lr, add --warmup-iters, or use --amp bf16 instead of fp16")
                    self.reporter.training_step(iteration, loss=loss_sum / max(images, 1),
                                                lr=schedule.lr_at(iteration - 1), images_per_s=step_ips)
                    log_loss.zero_()
                    log_images = 0
                    mark, window_start = now, iteration
                if due_eval:
                    distributed.broadcast_buffers(ctx, model)
                    counted = torch.cat([window, torch.tensor([float(window_images)], dtype=torch.float64,
                                                              device=ctx.device)])
                    totals = distributed.all_reduce_sum(ctx, counted).tolist()  # loss sum, correct, images
                    if iteration % schedule.eval_every == 0 or iteration == schedule.total_iters:
                        # Not at a --max-iters cut: a resumed run then logs what the uninterrupted one does.
                        window.zero_()
                        window_images = 0
                    train_loss = totals[0] / max(totals[2], 1)
                    train_error = 100 - 100 * totals[1] / max(totals[2], 1)
                    last_eval, _ = evaluate(model, eval_batches, ctx, autocast_dtype=amp_dtype)
                    record = {
                        "iteration": iteration, "epoch": round(iteration / plan.iters_per_epoch, 3),
                        "lr": schedule.lr_at(iteration - 1), "train_loss": train_loss, "train_error": train_error,
                        "test_loss": last_eval.loss, "test_top1": last_eval.top1, "test_top5": last_eval.top5,
                        "test_error": 100 - last_eval.top1, "eval_split": data.eval_split,
                        "eval_images": last_eval.images, "images_per_s": steady_images / steady_seconds
                        if steady_seconds else step_ips, "train_seconds": round(train_seconds, 2),
                        "arch": cfg.arch, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    }
                    last_card = card_with(_card_metrics(record))
                    if metrics is not None:
                        metrics.append(record)
                    self.reporter.evaluation(record)
                    if last_eval.top1 > best_top1:
                        best_top1, best_iteration = last_eval.top1, iteration
                        if ctx.is_main:
                            save_card(out / "best.safetensors", model, last_card)
                if due_save:
                    save_state(iteration, last_card)
                if due_eval or due_save:
                    mark = time.perf_counter()  # evaluation and saving are not training time
        finally:
            self.reporter.end_training()
            batches.close()

        # The end: final numbers, cards, figures.
        assert last_eval is not None
        distributed.broadcast_buffers(ctx, model)
        final = {**_card_metrics_from(last_eval, data.eval_split, iteration, train_loss, train_error),
                 "best_top1": best_top1, "best_iteration": best_iteration}
        test_numbers = None
        if test_batches is not None:
            test_eval, _ = evaluate(model, test_batches, ctx, autocast_dtype=amp_dtype)
            test_numbers = {"split": data.test_split, "images": test_eval.images, "top1": test_eval.top1,
                            "top5": test_eval.top5, "loss": test_eval.loss}
            final.update({f"{data.test_split}_top1": test_eval.top1, f"{data.test_split}_top5": test_eval.top5})
        responses_file = None
        if cfg.analyze_responses:
            _, layers = evaluate(model, test_batches or eval_batches, ctx, autocast_dtype=amp_dtype, responses=True)
            if ctx.is_main and layers is not None:
                responses_file = out / RESPONSES_FILE
                write_text(responses_file, json.dumps({"arch": cfg.arch, "iteration": iteration,
                                                       "layers": layers}, indent=2) + "\n")
        digests = distributed.gather_strings(ctx, distributed.weights_digest(model))
        ips = steady_images / steady_seconds if steady_seconds else all_images / max(session_seconds, 1e-9)
        final["images_per_s"] = round(ips, 1)
        result = TrainResult(
            out=out, iters=iteration, total_iters=schedule.total_iters, completed=iteration >= schedule.total_iters,
            train_loss=train_loss, train_error=train_error, test_loss=last_eval.loss, test_top1=last_eval.top1,
            test_top5=last_eval.top5, eval_split=data.eval_split, images_per_s=ips,
            train_seconds=round(train_seconds, 2), world_size=ctx.world_size, global_batch=schedule.global_batch,
            checkpoint=None, best_checkpoint=None, last_pt=None, metrics_file=None, plot=None,
            responses_file=responses_file, test=test_numbers, best_top1=best_top1, schedule=schedule.to_dict(),
            notes=self.notes + schedule.notes, rank_weight_digests=digests, is_main=ctx.is_main,
        )
        if ctx.is_main:
            card = card_with(final)
            save_state(iteration, card)
            result.checkpoint = save_card(out / "last.safetensors", model, card)
            result.best_checkpoint = out / "best.safetensors"
            result.last_pt = out / "last.pt"
            result.metrics_file = out / METRICS_FILE
            try:
                result.plot = plot_curves([out], out / "curves.png", title=f"{cfg.arch} on {data.root.name}")
            except (ImportError, RuntimeError, ValueError) as exc:
                self.reporter.message(f"warning: could not draw curves.png ({exc})")
        return result


def _card_metrics(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "iterations": record["iteration"], "eval_split": record["eval_split"], "top1": record["test_top1"],
        "top5": record["test_top5"], "loss": record["test_loss"], "train_loss": record["train_loss"],
        "train_error": record["train_error"],
    }


def _card_metrics_from(result: EvalResult, split: str, iteration: int, train_loss: float,
                       train_error: float) -> dict[str, Any]:
    return {"iterations": iteration, "eval_split": split, "top1": result.top1, "top5": result.top5,
            "loss": result.loss, "train_loss": train_loss, "train_error": train_error}
