"""Accuracy and parity arithmetic for `validate`: streaming tallies over batches, and the gates.

The logit definitions (agreement, overlap, |Δ|, cosine) live in `resnet_deploy.compare`.

Everything here is numpy on arrays already in memory; `validate.py` feeds it one batch at a time
so no run ever holds the logits of a whole data set. Percentages are 0–100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resnet_deploy.compare import LogitTally, finite_rows, percent, softmax, topk_indices
from resnet_deploy.confidence import PairedCounts

# The gates live in resnet_deploy.gates (one policy for build-engine and validate); re-exported for callers here.
from resnet_deploy.gates import DEFAULT_GATES, Gate, gate_failures, gate_for

__all__ = ["DEFAULT_GATES", "AccuracyTally", "Gate", "ParityTally", "finite_rows", "gate_failures", "gate_for",
           "softmax", "topk_indices"]


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
        return percent(self.top1_correct, self.images)

    @property
    def topk(self) -> float:
        return percent(self.topk_correct, self.images)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


@dataclass
class ParityTally(LogitTally):
    """How far one artifact strays from the reference on the same inputs, streamed over batches.

    The tally and its definitions are `compare.LogitTally`'s (the one comparator); predictions are
    compared per image (top-1 agreement, top-k overlap), raw outputs per output row (with ten-crop,
    each crop is a row), only where both rows are finite.
    """

    # Paired top-1 correctness against the reference (for Δtop-1's interval and McNemar's test).
    both_right: int = 0
    only_candidate: int = 0  # this artifact right, the reference wrong
    only_reference: int = 0
    both_wrong: int = 0

    def update_correct(self, reference_correct: np.ndarray, correct: np.ndarray) -> None:
        self.both_right += int(np.count_nonzero(reference_correct & correct))
        self.only_candidate += int(np.count_nonzero(~reference_correct & correct))
        self.only_reference += int(np.count_nonzero(reference_correct & ~correct))
        self.both_wrong += int(np.count_nonzero(~reference_correct & ~correct))

    def paired_counts(self) -> PairedCounts:
        return PairedCounts(self.both_right, self.only_candidate, self.only_reference, self.both_wrong)
