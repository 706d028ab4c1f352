"""Accuracy and parity arithmetic for `validate`: streaming tallies over batches, and the gates.

Everything here is numpy on arrays already in memory; `validate.py` feeds it one batch at a time
so no run ever holds the logits of a whole data set. Percentages are 0–100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    shifted = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best classes per row, best first; a stable sort keeps ties in class order."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def finite_rows(array: np.ndarray) -> np.ndarray:
    """A boolean per leading row: True where every value in the row is finite."""
    return np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)


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


@dataclass
class ParityTally:
    """How far one artifact strays from the reference on the same inputs.

    Predictions are compared per image (top-1 agreement, top-k overlap); raw outputs per output row
    (with ten-crop, each crop is a row), only where both rows are finite.
    """

    k: int
    images: int = 0
    agree: int = 0
    overlap: float = 0.0  # sum over images of |topk ∩ reference topk| / k
    rows: int = 0
    elements: int = 0
    max_abs: float = 0.0
    abs_sum: float = 0.0
    cosine_sum: float = 0.0
    cosine_min: float = 1.0

    def update_predictions(self, reference_topk: np.ndarray, topk: np.ndarray) -> None:
        self.images += len(topk)
        self.agree += int(np.count_nonzero(topk[:, 0] == reference_topk[:, 0]))
        shared = (topk[:, :, None] == reference_topk[:, None, :]).any(axis=2).sum(axis=1)
        self.overlap += float(shared.sum()) / self.k

    def update_outputs(self, reference: np.ndarray, outputs: np.ndarray) -> None:
        keep = finite_rows(reference) & finite_rows(outputs)
        if not keep.any():
            return
        a = reference[keep].astype(np.float64)
        b = outputs[keep].astype(np.float64)
        diff = np.abs(a - b)
        self.rows += len(a)
        self.elements += diff.size
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum())
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        # Two all-zero rows are identical; one zero row against a non-zero one shares no direction.
        cosine = np.where(norms > 0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0),
                          np.where(np.abs(a).sum(axis=1) + np.abs(b).sum(axis=1) == 0, 1.0, 0.0))
        self.cosine_sum += float(cosine.sum())
        self.cosine_min = min(self.cosine_min, float(cosine.min()))

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree / self.images if self.images else math.nan

    @property
    def topk_overlap(self) -> float:
        return 100.0 * self.overlap / self.images if self.images else math.nan

    @property
    def mean_abs(self) -> float | None:
        return self.abs_sum / self.elements if self.elements else None

    @property
    def max_abs_diff(self) -> float | None:
        return self.max_abs if self.elements else None

    @property
    def cosine(self) -> float | None:
        return self.cosine_sum / self.rows if self.rows else None


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
