"""The options of one training run (what `resnet-deploy train` takes), checked before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resnet_deploy.errors import UsageError

AMP_MODES = ("off", "bf16", "fp16")
LOADERS = ("auto", "tensor", "workers")
MIN_IMAGE_SIZE = 8


@dataclass
class TrainConfig:
    arch: str
    data: Path | None
    recipe: str | None = None  # None: the architecture family's recipe
    epochs: float | None = None
    iters: int | None = None
    max_iters: int | None = None
    batch_size: int | None = None  # per process
    lr: float | None = None
    weight_decay: float | None = None
    warmup_iters: int | None = None
    val_split: int = 0
    image_size: int | None = None
    amp: str = "off"
    channels_last: bool | None = None  # None: on for CUDA, off on the CPU
    compile: bool = False
    device: str = "auto"
    workers: int | None = None
    loader: str = "auto"
    cache_dir: Path | None = None
    no_cache: bool = False
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    resume_from: Path | None = None
    eval_every: int | None = None
    save_every: int | None = None
    analyze_responses: bool = False
    deterministic: bool = False
    synthetic: bool = False  # random images instead of --data: throughput measurements
    skip_bad: bool = False  # skip (and count) unreadable images instead of failing

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def check(self) -> None:
        """Refuse choices and numbers that cannot make a run: NaN, infinities, zero or negative counts."""
        if self.amp not in AMP_MODES:
            raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}")
        if self.loader not in LOADERS:
            raise UsageError(f"--loader must be one of {', '.join(LOADERS)}, not {self.loader!r}")
        positive = {"--epochs": self.epochs, "--iters": self.iters, "--max-iters": self.max_iters,
                    "--batch-size": self.batch_size, "--lr": self.lr, "--eval-every": self.eval_every,
                    "--save-every": self.save_every}
        at_least_zero = {"--weight-decay": self.weight_decay, "--warmup-iters": self.warmup_iters,
                         "--val-split": self.val_split, "--workers": self.workers, "--seed": self.seed}
        for flag, value in (*positive.items(), *at_least_zero.items()):
            if value is None:
                continue
            if not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
            if flag in positive and value <= 0:
                raise UsageError(f"{flag} must be positive, got {value}")
            if value < 0:
                raise UsageError(f"{flag} must be 0 or more, got {value}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise UsageError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {self.image_size}")
