"""The one logit comparator: how far a candidate's logits stray from a reference's on the same inputs.

Every stage that compares two runtimes uses it: export (ONNX Runtime vs PyTorch), the FP16/INT8
conversions (vs the FP32 source), the ONNX Runtime and OpenVINO targets (vs their source) and
`validate` (each artifact vs the reference, streamed batch by batch). One set of definitions:

* agreement: % of images whose top-1 class matches the reference's;
* top-k overlap: mean % of the reference's top-k classes found in the candidate's top-k (k = 5, or
  the class count when smaller);
* max/mean |Δ logit| and cosine similarity over output rows where both sides are finite;
* non-finite: inf/NaN values in either output (never a pass);
* the tolerance actually needed (Polygraphy reports this, not only pass/fail): max |Δ|, or with a
  relative gate max |Δ| / max(1, max |reference logit|).

With a tolerance, a top-1 flip counts as a disagreement only when the reference's top-1/top-2 margin
exceeds twice the allowed error (otherwise it is a numerical tie). Percentages are 0–100.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOP_K = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    shifted = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best classes per row, best first; a stable sort keeps ties in class order."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def percent(count: float, images: int) -> float:
    """`count` per image as a percentage; NaN when no image was seen (no rate, rather than 0 %)."""
    return 100.0 * count / images if images else math.nan


def finite_rows(array: np.ndarray) -> np.ndarray:
    """A boolean per leading row: True where every value in the row is finite."""
    return np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)


@dataclass(frozen=True)
class LogitComparison:
    """Candidate vs reference logits. `passed`/`allowed` are None when no tolerance was given."""

    images: int
    agreement: float  # top-1 agreement, percent
    topk_overlap: float  # top-k overlap, percent
    k: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    cosine_similarity: float  # mean over finite rows
    min_cosine_similarity: float
    logit_scale: float  # max |reference logit| (finite values)
    non_finite_reference: int  # inf/NaN values in the reference output
    non_finite_candidate: int  # inf/NaN values in the candidate output
    needed_tolerance: float  # the smallest tolerance (absolute, or relative when `relative`) that passes
    disagreements: int  # top-1 flips that are not numerical ties under `allowed`
    relative: bool = False
    tolerance: float | None = None
    allowed: float | None = None  # the absolute bound max |Δ| was held to
    passed: bool | None = None

    @property
    def non_finite(self) -> int:
        return self.non_finite_reference + self.non_finite_candidate

    @property
    def finite(self) -> bool:
        """The candidate produced no inf/NaN."""
        return self.non_finite_candidate == 0

    def to_dict(self) -> dict[str, Any]:
        """Every measure; the gate fields (tolerance, relative, allowed, passed) only when a tolerance was given,
        so a caller that spreads this into its own result keeps its own `passed`."""
        data = {**dataclasses.asdict(self), "non_finite": self.non_finite, "finite": self.finite}
        if self.tolerance is None:
            for key in ("tolerance", "relative", "allowed", "passed"):
                del data[key]
        return data


@dataclass
class LogitTally:
    """Streams the numbers behind a `LogitComparison` over batches (validate never holds a whole data set).

    Predictions are compared per image (`update_predictions`, from top-k indices) and raw outputs per
    output row (`update_outputs`; with ten-crop each crop is a row). `update` does both from logits.
    """

    k: int = TOP_K
    images: int = 0
    agree: int = 0
    overlap: float = 0.0  # sum over images of |topk ∩ reference topk| / k
    rows: int = 0
    elements: int = 0
    max_abs: float = 0.0
    abs_sum: float = 0.0
    cosine_sum: float = 0.0
    cosine_min: float = 1.0
    scale: float = 0.0  # max |finite reference value|
    non_finite_reference: int = 0
    non_finite_candidate: int = 0
    flip_margins: list[float] = field(default_factory=list)  # reference top-1/top-2 margin of each flipped image

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """One batch of (N, classes) logits."""
        k = min(self.k, reference.shape[1])
        self.update_predictions(topk_indices(reference, k), topk_indices(candidate, k), k=k)
        flips = reference.argmax(axis=1) != candidate.argmax(axis=1)
        if flips.any():
            if reference.shape[1] > 1:
                ordered = np.sort(reference[flips].astype(np.float64), axis=1)
                self.flip_margins.extend((ordered[:, -1] - ordered[:, -2]).tolist())
            else:
                self.flip_margins.extend([math.inf] * int(flips.sum()))
        self.update_outputs(reference, candidate)

    def update_predictions(self, reference_topk: np.ndarray, topk: np.ndarray, *, k: int | None = None) -> None:
        self.images += len(topk)
        self.agree += int(np.count_nonzero(topk[:, 0] == reference_topk[:, 0]))
        shared = (topk[:, :, None] == reference_topk[:, None, :]).any(axis=2).sum(axis=1)
        self.overlap += float(shared.sum()) / (k or self.k)

    def update_outputs(self, reference: np.ndarray, outputs: np.ndarray) -> None:
        self.non_finite_reference += int(np.count_nonzero(~np.isfinite(reference)))
        self.non_finite_candidate += int(np.count_nonzero(~np.isfinite(outputs)))
        keep = finite_rows(reference) & finite_rows(outputs)
        if not keep.any():
            return
        a = reference[keep].astype(np.float64).reshape(int(keep.sum()), -1)
        b = outputs[keep].astype(np.float64).reshape(len(a), -1)
        diff = np.abs(a - b)
        self.rows += len(a)
        self.elements += diff.size
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum())
        self.scale = max(self.scale, float(np.abs(a).max()))
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        # Two all-zero rows are identical; one zero row against a non-zero one shares no direction.
        cosine = np.where(norms > 0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0),
                          np.where(np.abs(a).sum(axis=1) + np.abs(b).sum(axis=1) == 0, 1.0, 0.0))
        self.cosine_sum += float(cosine.sum())
        self.cosine_min = min(self.cosine_min, float(cosine.min()))

    @property
    def agreement(self) -> float:
        return percent(self.agree, self.images)

    @property
    def topk_overlap(self) -> float:
        return percent(self.overlap, self.images)

    @property
    def mean_abs(self) -> float | None:
        return self.abs_sum / self.elements if self.elements else None

    @property
    def max_abs_diff(self) -> float | None:
        return self.max_abs if self.elements else None

    @property
    def cosine(self) -> float | None:
        return self.cosine_sum / self.rows if self.rows else None

    def result(self, *, tolerance: float | None = None, relative: bool = False) -> LogitComparison:
        """The comparison so far; with `tolerance`, also whether it passes (relative: to the logit scale)."""
        nothing_compared = self.images > 0 and not self.elements  # every row held inf/NaN
        max_abs = math.inf if nothing_compared else self.max_abs
        needed = max_abs / max(1.0, self.scale) if relative else max_abs
        allowed = None if tolerance is None else (tolerance * max(1.0, self.scale) if relative else tolerance)
        disagreements = sum(1 for m in self.flip_margins if m > 2 * (allowed or 0.0))
        passed = None
        if allowed is not None:
            passed = bool(max_abs <= allowed and disagreements == 0
                          and not (self.non_finite_reference or self.non_finite_candidate))
        return LogitComparison(
            images=self.images,
            agreement=self.agreement if self.images else 100.0,
            topk_overlap=self.topk_overlap if self.images else 100.0,
            k=self.k,
            max_abs_logit_diff=max_abs,
            mean_abs_logit_diff=math.inf if nothing_compared else (self.mean_abs or 0.0),
            cosine_similarity=self.cosine if self.rows else (0.0 if nothing_compared else 1.0),
            min_cosine_similarity=self.cosine_min if self.rows else (0.0 if nothing_compared else 1.0),
            logit_scale=self.scale,
            non_finite_reference=self.non_finite_reference,
            non_finite_candidate=self.non_finite_candidate,
            needed_tolerance=needed,
            disagreements=disagreements,
            relative=relative,
            tolerance=tolerance,
            allowed=allowed,
            passed=passed,
        )


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float | None = None,
                   relative: bool = False, k: int = TOP_K) -> LogitComparison:
    """Compare two (N, classes) logit arrays in one go (see the module docstring for the definitions)."""
    tally = LogitTally(k=min(k, reference.shape[1]) if reference.ndim == 2 else k)
    if len(reference):
        tally.update(np.asarray(reference), np.asarray(candidate))
    return tally.result(tolerance=tolerance, relative=relative)
