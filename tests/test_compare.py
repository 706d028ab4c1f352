"""The one logit comparator (resnet_deploy.compare): definitions, gates and streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnet_deploy.compare import LogitTally, compare_logits


def test_percentages_differences_and_needed_tolerance() -> None:
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    other = np.array([[3.0, 1.5, 0.0], [2.0, 0.0, 1.0]])
    result = compare_logits(reference, other, k=2)
    assert result.images == 2 and result.k == 2
    assert result.agreement == 50.0 and result.topk_overlap == pytest.approx(75.0)
    assert result.max_abs_logit_diff == 2.0 and result.mean_abs_logit_diff == pytest.approx(4.5 / 6)
    assert result.needed_tolerance == 2.0 and result.passed is None and result.disagreements == 1
    relative = compare_logits(reference, other, tolerance=0.1, relative=True)
    assert relative.logit_scale == 3.0 and relative.needed_tolerance == pytest.approx(2.0 / 3.0)
    assert relative.allowed == pytest.approx(0.3) and relative.passed is False


def test_a_flip_within_the_tolerance_is_a_tie_not_a_disagreement() -> None:
    reference = np.array([[1.0, 1.0 + 1e-6, 0.0]], dtype=np.float32)
    candidate = np.array([[1.0 + 1e-6, 1.0, 0.0]], dtype=np.float32)
    result = compare_logits(reference, candidate, tolerance=1e-4)
    assert result.agreement == 0.0 and result.disagreements == 0 and result.passed is True


def test_non_finite_never_passes_and_is_counted_per_side() -> None:
    reference = np.zeros((2, 3), dtype=np.float32)
    candidate = np.array([[0.0, np.inf, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    result = compare_logits(reference, candidate, tolerance=1.0)
    assert result.non_finite_candidate == 1 and result.non_finite_reference == 0 and not result.finite
    assert result.passed is False
    assert result.max_abs_logit_diff == 0.0  # measured over the rows both sides computed
    everything_broken = compare_logits(reference, np.full((2, 3), np.nan, dtype=np.float32))
    assert math.isinf(everything_broken.max_abs_logit_diff) and everything_broken.min_cosine_similarity == 0.0


def test_streaming_tally_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 10)).astype(np.float32)
    candidate = (reference + 0.3 * rng.standard_normal((50, 10))).astype(np.float32)
    tally = LogitTally()
    for start in range(0, 50, 16):
        tally.update(reference[start:start + 16], candidate[start:start + 16])
    streamed, whole = tally.result(tolerance=0.5), compare_logits(reference, candidate, tolerance=0.5)
    for name in ("agreement", "topk_overlap", "max_abs_logit_diff", "disagreements", "passed"):
        assert getattr(streamed, name) == getattr(whole, name), name
    assert streamed.mean_abs_logit_diff == pytest.approx(whole.mean_abs_logit_diff)
    assert streamed.cosine_similarity == pytest.approx(whole.cosine_similarity)
    assert 0 < whole.agreement < 100 and whole.to_dict()["finite"] is True
    # Without a tolerance there is no verdict to report: a caller's own "passed" is never overwritten.
    assert "passed" not in compare_logits(reference, candidate).to_dict() and whole.to_dict()["passed"] is False
