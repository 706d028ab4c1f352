"""Accuracy and parity arithmetic for `validate`: streaming tallies over batches, and the gates.

The logit definitions (agreement, overlap, |Δ|, cosine) live in `resnet_deploy.compare`.

Everything here is numpy on arrays already in memory; `validate.py` feeds it one batch at a time
so no run ever holds the logits of a whole data set. Percentages are 0–100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resnet_deploy.compare import LogitTally, finite_rows, softmax, topk_indices

__all__ = ["DEFAULT_GATES", "AccuracyTally", "Gate", "ParityTally", "finite_rows", "gate_failures", "gate_for",
           "softmax", "topk_indices"]

# Default gates by precision: (largest allowed top-1 drop in points, smallest top-1 agreement in %).
# bf16 keeps fewer mantissa bits than fp16 but the same exponent range; for a classifier the
# prediction flips it causes are of the same order, so it shares fp16's gate.
DEFAULT_GATES: dict[str, tuple[float, float]] = {
    "fp32": (0.1, 99.9),
    "fp16": (0.3, 99.5),
    "bf16": (0.3, 99.5),
    "int8": (1.0, 98.0),
}
_EPS = 1e-9  # counts become percentages through division; compare with a hair of slack


@dataclass
class AccuracyTally:
    """Top-1/top-k correctness of one artifact, and the seconds it spent in inference."""

    k: int
    images: int = 0
    top1_correct: int = 0
    topk_correct: int = 0
    nonfinite: int = 0  # images whose output held NaN or Inf
    seconds: float = 0.0

    def update(self, topk: np.ndarray, labels: np.ndarray, finite: np.ndarray) -> None:
        hits = topk == labels[:, None]
        self.images += len(labels)
        self.top1_correct += int(np.count_nonzero(hits[:, 0] & finite))
        self.topk_correct += int(np.count_nonzero(hits.any(axis=1) & finite))
        self.nonfinite += int(np.count_nonzero(~finite))

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_correct / self.images if self.images else math.nan

    @property
    def topk(self) -> float:
        return 100.0 * self.topk_correct / self.images if self.images else math.nan

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


class ParityTally(LogitTally):
    """How far one artifact strays from the reference on the same inputs, streamed over batches.

    The tally and its definitions are `compare.LogitTally`'s (the one comparator); predictions are
    compared per image (top-1 agreement, top-k overlap), raw outputs per output row (with ten-crop,
    each crop is a row), only where both rows are finite.
    """


@dataclass(frozen=True)
class Gate:
    """Pass if top-1 drops at most `max_top1_drop` points and agreement is at least `min_agreement` %."""

    max_top1_drop: float
    min_agreement: float
    basis: str  # where the numbers came from, e.g. "int8 default" or "--max-top1-drop/--min-agreement"

    def to_dict(self) -> dict[str, object]:
        return {"max_top1_drop": self.max_top1_drop, "min_agreement": self.min_agreement, "basis": self.basis}

    def describe(self) -> str:
        return f"Δ≤{self.max_top1_drop:g} agr≥{self.min_agreement:g}"


def gate_for(precision: str, *, max_top1_drop: float | None = None, min_agreement: float | None = None) -> Gate:
    """The precision's default gate, with either bound overridden by the user's flags."""
    known = precision in DEFAULT_GATES
    drop, agreement = DEFAULT_GATES.get(precision, DEFAULT_GATES["fp32"])
    overridden = [flag for flag, value in (("--max-top1-drop", max_top1_drop), ("--min-agreement", min_agreement))
                  if value is not None]
    basis = f"{precision if known else 'fp32 (unknown precision ' + precision + ')'} default"
    if overridden:
        basis = f"{'/'.join(overridden)} ({basis} otherwise)" if len(overridden) == 1 else "/".join(overridden)
    return Gate(
        max_top1_drop=drop if max_top1_drop is None else max_top1_drop,
        min_agreement=agreement if min_agreement is None else min_agreement,
        basis=basis,
    )


def gate_failures(gate: Gate, top1_delta: float, agreement: float) -> list[str]:
    """Messages for each bound the artifact misses; empty when it passes. `top1_delta` is signed
    (artifact minus reference), so a negative value is a drop."""
    failures = []
    drop = -top1_delta
    if not drop <= gate.max_top1_drop + _EPS:
        failures.append(f"top-1 dropped {drop:.2f} points vs the reference (gate: at most {gate.max_top1_drop:g}, "
                        f"{gate.basis})")
    if not agreement >= gate.min_agreement - _EPS:
        failures.append(f"top-1 agreement with the reference is {agreement:.2f} % (gate: at least "
                        f"{gate.min_agreement:g} %, {gate.basis})")
    return failures
