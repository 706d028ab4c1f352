"""The paper's training recipes and the schedule a run actually follows.

He et al. 2016, Sec. 4.2 (CIFAR-10): batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided
by 10 at 32k and 48k iterations, stop at 64k; 4-pixel padding, random 32x32 crop, horizontal flip.
ResNet-110 warms up at lr 0.01 for about 400 iterations. Sec. 3.4 (ImageNet): batch 256, lr 0.1
divided by 10 on plateaus (torchvision's step schedule, every 30 of 90 epochs, is the practical
default), scale augmentation (shorter side in [256, 480]), random 224 crop, flip, colour
augmentation; evaluation resize 256 / centre crop 224.

A run's schedule starts from the recipe and is adjusted, and every adjustment is written down in
`Schedule.notes` so the trainer can say so:
* a different global batch scales the learning rate linearly and the iteration counts inversely
  (Goyal et al. 2017's linear scaling rule);
* `--iters N` / `--epochs N` compress or stretch the whole schedule, milestones included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from resnet_deploy.errors import UsageError

RECIPES = ("cifar", "imagenet")


@dataclass(frozen=True)
class Recipe:
    """A published recipe, in the units the paper states it in."""

    name: str
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    total_iters: int | None  # CIFAR counts iterations ...
    milestone_iters: tuple[int, ...]
    total_epochs: int | None  # ... ImageNet counts epochs.
    milestone_epochs: tuple[int, ...]
    lr_decay: float
    input_size: int
    augmentation: str  # "crop-flip" or "scale-crop-flip-colour"
    crop_padding: int = 0
    scale_range: tuple[int, int] | None = None
    warmup_iters: int = 0
    warmup_lr: float = 0.0
    eval_every_iters: int | None = None  # None: once per epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cifar_recipe(arch_depth: int) -> Recipe:
    # The paper warms ResNet-110 (and trains ResNet-1202 the same way) at 0.01 until training error
    # drops below 80 %, "about 400 iterations".
    warmup = arch_depth >= 110
    return Recipe(
        name="cifar",
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        total_iters=64_000,
        milestone_iters=(32_000, 48_000),
        total_epochs=None,
        milestone_epochs=(),
        lr_decay=0.1,
        input_size=32,
        augmentation="crop-flip",
        crop_padding=4,
        warmup_iters=400 if warmup else 0,
        warmup_lr=0.01 if warmup else 0.0,
        eval_every_iters=1000,
    )


def imagenet_recipe(arch_depth: int) -> Recipe:
    del arch_depth  # the same recipe for every depth
    return Recipe(
        name="imagenet",
        batch_size=256,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        total_iters=None,
        milestone_iters=(),
        total_epochs=90,
        milestone_epochs=(30, 60),
        lr_decay=0.1,
        input_size=224,
        augmentation="scale-crop-flip-colour",
        scale_range=(256, 480),
        eval_every_iters=None,
    )


def get_recipe(name: str, arch_depth: int) -> Recipe:
    if name == "cifar":
        return cifar_recipe(arch_depth)
    if name == "imagenet":
        return imagenet_recipe(arch_depth)
    raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")


@dataclass
class Schedule:
    """What a run follows: learning rate per iteration, batch, length, and why it differs from the recipe."""

    recipe: str
    global_batch: int
    per_process_batch: int
    world_size: int
    lr: float
    momentum: float
    weight_decay: float
    total_iters: int
    milestones: tuple[int, ...]
    lr_decay: float
    warmup_iters: int
    warmup_lr: float
    iters_per_epoch: int
    eval_every: int
    save_every: int
    notes: list[str] = field(default_factory=list)

    def lr_at(self, iteration: int) -> float:
        """The learning rate used for the update of iteration `iteration` (0-based)."""
        return self.lr * lr_factor(iteration, self.milestones, self.lr_decay, self.warmup_iters,
                                   self.warmup_lr / self.lr if self.lr else 0.0)

    @property
    def epochs(self) -> float:
        return self.total_iters / self.iters_per_epoch

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        values = dict(data)
        values["milestones"] = tuple(int(m) for m in values["milestones"])
        values["notes"] = list(values.get("notes") or [])
        return cls(**values)


def lr_factor(iteration: int, milestones: tuple[int, ...], decay: float, warmup_iters: int,
              warmup_factor: float) -> float:
    """Multiplier on the base learning rate: constant warm-up, then a step decay at each milestone."""
    if iteration < warmup_iters:
        return warmup_factor
    return decay ** sum(1 for m in milestones if iteration >= m)


@dataclass
class StepFactor:
    """`LambdaLR`'s lambda as a callable object, so the scheduler's state_dict saves (and restores) it."""

    milestones: tuple[int, ...]
    decay: float
    warmup_iters: int
    warmup_factor: float

    def __call__(self, iteration: int) -> float:
        return lr_factor(iteration, tuple(self.milestones), self.decay, self.warmup_iters, self.warmup_factor)


def _fmt_iters(values: tuple[int, ...] | list[int]) -> str:
    return "/".join(str(v) for v in values) if values else "none"


def resolve_schedule(  # noqa: PLR0913 - each option of the command is an input here
    recipe: Recipe,
    *,
    num_train: int,
    world_size: int = 1,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    iters: int | None = None,
    epochs: float | None = None,
    warmup_iters: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    max_iters: int | None = None,
    start: int = 0,
) -> Schedule:
    """The recipe adjusted to this run's batch, length and data size; `notes` says what changed and why.

    `max_iters` and `start` (a resumed run's iteration) say how much of the schedule this launch runs: the
    default evaluation interval is a tenth of that, so a short cut of a long schedule still draws a curve.

    `batch_size` is per process; by default the recipe's batch is split across the processes so that
    the global batch (per-process batch × processes) is the recipe's.
    """
    if iters is not None and epochs is not None:
        raise UsageError("give --iters or --epochs, not both")
    for name, value in (("--batch-size", batch_size), ("--iters", iters), ("--eval-every", eval_every),
                        ("--save-every", save_every)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value}")
    if epochs is not None and epochs <= 0:
        raise UsageError(f"--epochs must be positive, got {epochs}")
    notes: list[str] = []

    if batch_size is None:
        if recipe.batch_size % world_size:
            raise UsageError(
                f"the {recipe.name} recipe's batch {recipe.batch_size} does not split across {world_size} "
                "processes; pass --batch-size (per process)"
            )
        batch_size = recipe.batch_size // world_size
    global_batch = batch_size * world_size
    if global_batch > num_train:
        raise UsageError(f"the global batch {global_batch} is larger than the {num_train} training images")
    iters_per_epoch = num_train // global_batch  # the last partial batch of each epoch is dropped
    scale = global_batch / recipe.batch_size

    if lr is None:
        lr = recipe.lr * scale
    warmup_lr = recipe.warmup_lr * (lr / recipe.lr)

    # The recipe's own length at this batch: iteration counts scale inversely with the batch.
    if recipe.total_iters is not None:
        base_total = recipe.total_iters / scale
        base_milestones = [m / scale for m in recipe.milestone_iters]
    else:
        assert recipe.total_epochs is not None
        base_total = recipe.total_epochs * iters_per_epoch
        base_milestones = [e * iters_per_epoch for e in recipe.milestone_epochs]
    base_warmup = recipe.warmup_iters / scale

    if scale != 1:
        what = f"lr {recipe.lr:g} → {lr:g}" + (" (scaled linearly)" if lr == recipe.lr * scale else " (--lr)")
        if recipe.total_iters is not None:
            what += (f", iterations {recipe.total_iters} → {round(base_total)}, milestones "
                     f"{_fmt_iters(recipe.milestone_iters)} → {_fmt_iters([round(m) for m in base_milestones])}"
                     " (scaled inversely)")
        if recipe.warmup_iters:
            what += f", warm-up {recipe.warmup_iters} → {round(base_warmup)} iterations at lr {warmup_lr:g}"
        notes.append(
            f"global batch {global_batch} ({world_size} process{'es' if world_size > 1 else ''} × {batch_size}) "
            f"is {scale:g}× the {recipe.name} recipe's {recipe.batch_size}: {what}"
        )

    total = base_total
    if epochs is not None:
        total = epochs * iters_per_epoch
    elif iters is not None:
        total = iters
    total = max(1, round(total))
    stretch = total / base_total
    milestones = tuple(sorted({round(m * stretch) for m in base_milestones if 0 < round(m * stretch) < total}))
    if abs(stretch - 1) > 1e-9:
        notes.append(
            f"schedule of {total} iterations ({total / iters_per_epoch:.1f} epochs) instead of the recipe's "
            f"{round(base_total)}: lr milestones at {_fmt_iters(milestones)} (same fractions of the run)"
        )

    warm = round(base_warmup) if warmup_iters is None else warmup_iters
    if warm and warm > total // 4 and warmup_iters is None:
        notes.append(f"warm-up shortened from {warm} to {total // 4} iterations (a quarter of this short run)")
        warm = total // 4
    if warm and not warmup_lr:
        warmup_lr = lr / 10  # --warmup-iters on a recipe without its own warm-up: the paper's 0.01 vs 0.1

    default_eval = recipe.eval_every_iters if recipe.eval_every_iters else iters_per_epoch
    if eval_every is None:
        stop = min(total, max_iters or total)
        run = max(1, stop - start)  # the iterations this launch does (a --max-iters cut, a resumed rest)
        whole = max(1, min(round(default_eval / scale) if recipe.eval_every_iters else default_eval,
                           total // 10 or 1))
        # The schedule's interval, unless it gives this launch fewer than 5 points: then ten.
        eval_every = whole if run // whole >= 5 else max(1, run // 10)
        if eval_every < whole:
            notes.append(f"evaluating every {eval_every} iterations: this run does {run} of the schedule's "
                         f"{total} (--max-iters), and its curve needs points")
    return Schedule(
        recipe=recipe.name,
        global_batch=global_batch,
        per_process_batch=batch_size,
        world_size=world_size,
        lr=float(lr),
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay if weight_decay is None else float(weight_decay),
        total_iters=total,
        milestones=milestones,
        lr_decay=recipe.lr_decay,
        warmup_iters=int(warm),
        warmup_lr=float(warmup_lr) if warm else 0.0,
        iters_per_epoch=iters_per_epoch,
        eval_every=int(eval_every),
        save_every=int(save_every or eval_every),
        notes=notes,
    )
