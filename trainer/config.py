"""The options of one training run (what `resnet-deploy train` and `python -m trainer` take)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

AMP_MODES = ("off", "bf16", "fp16")
LOADERS = ("auto", "tensor", "workers")


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

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
