"""The set-up step of a run: resume state, the run folder (created, writable, locked), data, schedule,
batches, model and optimizer. `prepare()` returns them as one `Prepared`; the loop only trains."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_deploy.card import ModelCard, Preprocessing
from resnet_deploy.data import eval_transform
from resnet_deploy.errors import UsageError
from resnet_deploy.models import CIFAR, IMAGENET, create_model, get_entry
from resnet_deploy.paths import inside
from trainer import distributed
from trainer.checkpoint import ResumeState, load_training_state
from trainer.config import TrainConfig
from trainer.data import (
    TENSOR_LOADER_LIMIT_BYTES,
    BatchPlan,
    DecodedImages,
    TrainData,
    channel_stats,
    decode_images,
    default_cache_dir,
    find_bad_images,
    open_train_data,
    synthetic_train_data,
    tensor_bytes,
)
from trainer.evaluate import Batches
from trainer.loaders import (
    TensorBatches,
    WorkerBatches,
    tensor_eval_batches,
    train_transform,
    worker_eval_batches,
)
from trainer.progress import Reporter
from trainer.recipes import Recipe, Schedule, StepFactor, get_recipe, resolve_schedule
from trainer.runlock import RunLock

# Options that define a run; on --resume they come from the checkpoint, not the command line.
RUN_DEFINING = ("arch", "recipe", "epochs", "iters", "batch_size", "lr", "weight_decay", "warmup_iters",
                "val_split", "image_size", "seed", "loader")
LIGHTING_STD = 0.1  # AlexNet's PCA colour noise


@dataclass
class Prepared:
    """Everything the loop needs, resolved once."""

    out: Path
    lock: RunLock | None
    resume: ResumeState | None
    recipe: Recipe
    data: TrainData
    loader: str
    schedule: Schedule
    plan: BatchPlan
    preprocessing: Preprocessing
    batches: Any  # TensorBatches or WorkerBatches
    eval_batches: Batches
    test_batches: Batches | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    base_card: ModelCard
    notes: list[str] = field(default_factory=list)


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
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare(config: TrainConfig, ctx: distributed.DistContext, reporter: Reporter) -> Prepared:
    """Set a run up; the run folder's lock is held on return (released here if set-up fails)."""
    setup = _Setup(config, ctx, reporter)
    try:
        return setup.build()
    except BaseException:
        if setup.lock is not None:
            setup.lock.release()
        raise


class _Setup:
    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, reporter: Reporter) -> None:
        self.config, self.ctx, self.reporter = config, ctx, reporter
        self.notes: list[str] = []
        self.lock: RunLock | None = None
        self.scale_range: tuple[int, ...] | None = None  # the worker loader's scale augmentation

    def build(self) -> Prepared:
        cfg, ctx = self.config, self.ctx
        resume = self._resolve_resume()
        if not cfg.arch:
            raise UsageError("name a model: --depth N or --arch NAME")
        if cfg.data is None and not cfg.synthetic:
            raise UsageError("--data DIR is required (DIR/train and DIR/val or DIR/test, or CIFAR python batches)")
        if cfg.compile and ctx.device.type != "cuda":
            raise UsageError("--compile is for CUDA training; drop it on the CPU")
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else ctx.device.type == "cuda"
        _configure_backends(ctx.device, cfg.deterministic)
        out = self._out_dir(resume is not None)

        recipe = get_recipe(cfg.recipe or get_entry(cfg.arch).family.name, get_entry(cfg.arch).depth)
        self.size = cfg.image_size or recipe.input_size
        data = self._open_data(recipe)
        self.padding = max(1, round(recipe.crop_padding * self.size / recipe.input_size)) \
            if recipe.crop_padding else 0
        loader = self._loader_kind(recipe, data)
        self.reporter.message(data.describe())
        decoded, data = self._decode_or_scan(loader, data)

        schedule = self._schedule(recipe, data, resume)
        plan = BatchPlan(len(data.train_rows), schedule.per_process_batch, ctx.world_size, ctx.rank, cfg.seed)
        eval_batch = max(64, 2 * schedule.per_process_batch)
        if decoded is not None:
            preprocessing, batches, eval_batches, test_batches = self._tensor_batches(
                data, decoded, plan, eval_batch, resume)
        else:
            preprocessing, batches, eval_batches, test_batches = self._worker_batches(
                recipe, data, plan, eval_batch, resume)
        return self._model(out, resume, recipe, data, loader, schedule, plan, preprocessing, batches,
                           eval_batches, test_batches)

    # --- resume, run folder, data ------------------------------------------------------------------

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
        cfg.skip_bad = cfg.skip_bad or bool(saved.get("skip_bad", False))  # the same images as before
        return state

    def _out_dir(self, resuming: bool) -> Path:
        """Create the run folder, prove it takes writes and lock it before any work (rank 0 only)."""
        out = Path(self.config.out or Path("runs") / self.config.arch)
        data = self.config.data
        if data is not None and not self.config.synthetic and inside(out, data):
            # refused before anything is created: the data set would read the run folder as a class of its own
            raise UsageError(f"--out {out} is inside the data set {data}; the run folder would become part of the "
                             "data: choose a folder outside it")
        if self.ctx.is_main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create the run folder {out}: {exc.strerror or exc}") from None
            self.lock = RunLock(out).acquire()
        if not resuming and (out / "last.pt").exists():
            raise UsageError(f"{out} already holds a run (last.pt); pass --resume to continue it, "
                             "or --output NEW_FOLDER for a new run")
        return out

    def _open_data(self, recipe: Recipe) -> TrainData:
        cfg = self.config
        if not cfg.synthetic:
            assert cfg.data is not None
            return open_train_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
        count = max(1024, 4 * (cfg.batch_size or recipe.batch_size) * self.ctx.world_size)
        self.notes.append(f"synthetic data: {count} random {self.size}x{self.size} images resident on the device, "
                          "for measuring training throughput only")
        return synthetic_train_data(get_entry(cfg.arch).family.num_classes, self.size, count, seed=cfg.seed)

    def _loader_kind(self, recipe: Recipe, data: TrainData) -> str:
        kind = self.config.loader
        if self.config.synthetic:
            return "tensor"  # random pixels already in memory
        if kind == "auto":
            kind = "tensor" if recipe.augmentation == "crop-flip" else "workers"
        if kind == "tensor":
            if recipe.augmentation != "crop-flip":
                raise UsageError(f"--loader tensor holds fixed-size images; the {recipe.name} recipe's scale "
                                 "augmentation needs --loader workers")
            needed = tensor_bytes(len(data.train) + len(data.test), self.size)
            if needed > TENSOR_LOADER_LIMIT_BYTES:
                raise UsageError(f"--loader tensor would hold {needed / 2**30:.1f} GiB of decoded images; "
                                 "use --loader workers")
        return kind

    def _decode_or_scan(self, loader: str, data: TrainData) -> tuple[tuple[DecodedImages, DecodedImages] | None,
                                                                       TrainData]:
        """Tensor loader: decode both splits now. With --skip-bad, drop unreadable images before the data
        order is fixed (the worker loader scans for them first)."""
        decoded = None
        if loader == "tensor":
            decoded = (self._decode(data.train, "training"), self._decode(data.test, data.test_split))
            bad_train, bad_test = decoded[0].bad, decoded[1].bad
        elif self.config.skip_bad:
            threads = self.config.workers or os.cpu_count() or 1
            bad_train = find_bad_images(data.train, [*data.train_rows, *data.holdout_rows], threads=threads)
            bad_test = find_bad_images(data.test, data.test_indices, threads=threads)
        else:
            return None, data
        if bad_train or bad_test:
            skipped = [*bad_train.values(), *bad_test.values()]
            data = data.without(set(bad_train), set(bad_test), skipped)
            path, reason = skipped[0]
            self.reporter.message(f"warning: skipped {len(skipped)} unreadable image(s) (--skip-bad), "
                                  f"e.g. {path}: {reason}")
        return decoded, data

    def _decode(self, dataset: Any, what: str) -> DecodedImages:
        cfg = self.config
        cache_dir = None if cfg.no_cache else (cfg.cache_dir or default_cache_dir())
        threads = cfg.workers or os.cpu_count() or 1
        if dataset.arrays is None and self.ctx.is_main:
            self.reporter.start_task(f"decode {what} images", total=len(dataset))
            try:
                decoded = decode_images(dataset, self.size, cache_dir=cache_dir, threads=threads,
                                        progress=self.reporter.advance_task, skip_bad=cfg.skip_bad)
            finally:
                self.reporter.end_task()
            if decoded.from_cache:
                self.reporter.message(f"{what}: {len(dataset)} decoded images from the cache {decoded.cache_file}")
        # Other ranks read what rank 0 decoded and cached.
        distributed.barrier(self.ctx)
        if dataset.arrays is not None or not self.ctx.is_main:
            decoded = decode_images(dataset, self.size, cache_dir=cache_dir, threads=threads, skip_bad=cfg.skip_bad)
        return decoded

    # --- schedule, batches, model ------------------------------------------------------------------

    def _schedule(self, recipe: Recipe, data: TrainData, resume: ResumeState | None) -> Schedule:
        cfg, ctx = self.config, self.ctx
        schedule = resolve_schedule(
            recipe, num_train=len(data.train_rows), world_size=ctx.world_size, batch_size=cfg.batch_size,
            lr=cfg.lr, weight_decay=cfg.weight_decay, iters=cfg.iters, epochs=cfg.epochs,
            warmup_iters=cfg.warmup_iters, eval_every=cfg.eval_every, save_every=cfg.save_every,
            max_iters=cfg.max_iters, start=resume.iteration if resume is not None else 0,
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
        return schedule

    def _tensor_batches(self, data: TrainData, decoded: tuple[DecodedImages, DecodedImages], plan: BatchPlan,
                        eval_batch: int, resume: ResumeState | None) -> tuple[Preprocessing, Any, Batches,
                                                                             Batches | None]:
        cfg, ctx = self.config, self.ctx
        train_all, test_all = decoded
        rows_t = torch.tensor(data.train_rows, dtype=torch.int64)
        train_images, train_labels = train_all.images[rows_t], train_all.labels[rows_t]
        if resume is not None:
            preprocessing = ModelCard.from_json(resume.data["card"]).preprocessing
        else:
            mean, std = channel_stats(train_images)
            preprocessing = Preprocessing(self.size, None, mean, std, "bilinear")
        mean, std = preprocessing.mean, preprocessing.std
        batches = TensorBatches(train_images, train_labels, plan, device=ctx.device, mean=mean, std=std,
                                padding=self.padding, channels_last=self.channels_last, seed=cfg.seed)
        eval_kw = dict(batch_size=eval_batch, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
                       mean=mean, std=std, channels_last=self.channels_last)
        test_rows = torch.tensor(data.test_indices, dtype=torch.int64)
        test = tensor_eval_batches(test_all.images[test_rows], test_all.labels[test_rows], **eval_kw)
        if not data.holdout_rows:
            return preprocessing, batches, test, None
        hold = torch.tensor(data.holdout_rows, dtype=torch.int64)
        return preprocessing, batches, tensor_eval_batches(train_all.images[hold], train_all.labels[hold],
                                                           **eval_kw), test

    def _worker_batches(self, recipe: Recipe, data: TrainData, plan: BatchPlan, eval_batch: int,
                        resume: ResumeState | None) -> tuple[Preprocessing, Any, Batches, Batches | None]:
        cfg, ctx, size = self.config, self.ctx, self.size
        workers = cfg.workers if cfg.workers is not None else min(8, os.cpu_count() or 1)
        family = IMAGENET if recipe.name == "imagenet" else CIFAR  # the recipe's data, not the model's
        resize = None if recipe.augmentation == "crop-flip" else round(size * 256 / 224)
        preprocessing = Preprocessing(size, resize, family.mean, family.std, family.interpolation)
        if resume is not None:
            preprocessing = ModelCard.from_json(resume.data["card"]).preprocessing
        if recipe.scale_range:  # [256, 480] at 224; proportionally for another --image-size
            self.scale_range = tuple(round(v * size / recipe.input_size) for v in recipe.scale_range)
        transform = train_transform(recipe.augmentation, size, self.padding, self.scale_range, resize)
        lighting = LIGHTING_STD if recipe.augmentation == "scale-crop-flip-colour" else 0.0
        batches = WorkerBatches(data.train, data.train_rows, plan, transform, device=ctx.device,
                                mean=preprocessing.mean, std=preprocessing.std, workers=workers,
                                channels_last=self.channels_last, lighting_std=lighting, seed=cfg.seed)
        evaluation = eval_transform(preprocessing)
        eval_kw = dict(batch_size=eval_batch, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
                       workers=workers, channels_last=self.channels_last)
        test = worker_eval_batches(data.test, data.test_indices, evaluation, **eval_kw)
        if not data.holdout_rows:
            return preprocessing, batches, test, None
        return preprocessing, batches, worker_eval_batches(data.train, data.holdout_rows, evaluation,
                                                           **eval_kw), test

    def _model(self, out: Path, resume: ResumeState | None, recipe: Recipe, data: TrainData, loader: str,
               schedule: Schedule, plan: BatchPlan, preprocessing: Preprocessing, batches: Any,
               eval_batches: Batches, test_batches: Batches | None) -> Prepared:
        cfg, ctx = self.config, self.ctx
        _seed_everything(cfg.seed)
        model = create_model(cfg.arch, num_classes=len(data.class_names)).to(ctx.device)
        if self.channels_last:
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
            "image_size": self.size, "crop_padding": self.padding, "scale_range": self.scale_range,
            "augmentation": recipe.augmentation, "seed": cfg.seed,
            "amp": cfg.amp, "loader": loader, "val_split": cfg.val_split, "world_size": ctx.world_size,
            "global_batch": schedule.global_batch,
        }
        base_card = ModelCard(arch=cfg.arch, num_classes=len(data.class_names), class_names=list(data.class_names),
                              preprocessing=preprocessing, dataset="synthetic" if cfg.synthetic else str(cfg.data),
                              recipe=recipe_record)
        return Prepared(out, self.lock, resume, recipe, data, loader, schedule, plan, preprocessing, batches,
                        eval_batches, test_batches, model, optimizer, scheduler, scaler, amp_dtype, base_card,
                        self.notes + schedule.notes)
