"""What one finetune-int8 run is asked (`FinetuneConfig`, with its checks and defaults) and what it reports
(`FinetuneResult`): shared by the loop (`trainer.qat`) and its end (`trainer.qat_finish`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_deploy.errors import UsageError

STATE_FORMAT = "resnet_deploy.finetune_int8/2"  # /2: per-channel weight clip factors
DEFAULT_ITERS = 1000
DEFAULT_BATCH = 128
DEFAULT_LR = 0.001
DEFAULT_TEMPERATURE = 1.0
DEFAULT_CE_WEIGHT = 0.0  # labels pull the student off the teacher's mistakes: agreement is the goal
DEFAULT_CALIB_SAMPLES = 512
DEFAULT_EMA_DECAY = 0.99  # the exported weights: an average over ~100 iterations, not the last step's
DEFAULT_CHECK_IMAGES = 1000
MOMENTUM = 0.9
AMP_MODES = ("auto", "off", "bf16")
# Options that define a run: on --resume they must match the saved ones (the state continues that run).
RUN_DEFINING = ("iters", "batch_size", "lr", "temperature", "ce_weight", "seed", "weight_bits",
                "quantize_logits", "ema_decay")


@dataclass
class FinetuneConfig:
    card: Path
    data: Path
    output: Path
    cpu: str = "native"
    iters: int = DEFAULT_ITERS
    max_iters: int | None = None
    resume: bool = False
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH  # per process
    temperature: float = DEFAULT_TEMPERATURE
    ce_weight: float = DEFAULT_CE_WEIGHT
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = "percentile"
    check_images: int = DEFAULT_CHECK_IMAGES
    min_agreement: float | None = None
    save_every: int | None = None  # default: a tenth of the run
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    workers: int | None = None
    quantize_logits: bool = False  # the Gemm's output: float by default (its int8 grid alone flips near-ties)
    ema_decay: float = DEFAULT_EMA_DECAY  # 0: export the last iteration's weights

    def check(self) -> None:
        positive = {"--iters": self.iters, "--max-iters": self.max_iters, "--lr": self.lr,
                    "--batch-size": self.batch_size, "--temperature": self.temperature,
                    "--calib-samples": self.calib_samples, "--check-images": self.check_images,
                    "--save-every": self.save_every}
        for flag, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UsageError(f"{flag} must be a positive number, got {value}")
        if not (math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise UsageError(f"--ema-decay must be at least 0 and below 1, got {self.ema_decay}")
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise UsageError(f"--ce-weight must be 0 or more, got {self.ce_weight}")
        if self.amp not in AMP_MODES:
            raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.output.suffix.lower() != ".onnx":
            raise UsageError(f"-o {self.output}: the fine-tuned model is an ONNX file (name it .onnx)")
        if self.output.is_dir():
            raise UsageError(f"-o {self.output} is a folder; give a file name")

    @property
    def state_path(self) -> Path:
        """model.qat.onnx → model.qat.finetune.pt beside it."""
        return self.output.with_name(self.output.stem + ".finetune.pt")


@dataclass
class FinetuneResult:
    output: Path | None  # None until the schedule is complete
    state: Path
    completed: bool
    iterations: int
    total_iters: int
    cpu_target: str
    weight_bits: int
    train_seconds: float
    images_per_s: float
    loss: float
    calibration: dict[str, Any]
    qdq_check: dict[str, Any] | None = None  # the ONNX (optimizations off) vs the fake-quant module
    vs_fp32: dict[str, Any] | None = None  # INT8 vs the FP32 teacher on held-out images (compare.LogitComparison)
    fp32_top1: float | None = None
    int8_top1: float | None = None
    gate: str | None = None
    notes: list[str] = field(default_factory=list)
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output"] = str(self.output) if self.output else None
        data["state"] = str(self.state)
        data.pop("is_main")
        return data
