"""Confidence intervals and McNemar's exact test, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnet_deploy.confidence import (
    PairedCounts,
    mcnemar_exact_p,
    paired_delta_interval,
    significance_note,
    wilson_interval,
)


def test_wilson_matches_the_published_examples() -> None:
    # Newcombe (1998), Table I, Wilson score interval: 81/263 → 0.2553–0.3662; 0/20 → 0–0.1611.
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-5) and high == pytest.approx(0.3662, abs=5e-5)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=5e-5)  # z²/(n + z²) = 3.8415/23.8415
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(20 / 23.8415, abs=5e-5)


def test_wilson_stays_inside_and_narrows_with_n() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    widths = [np.subtract(*wilson_interval(n // 2, n)[::-1]) for n in (10, 100, 1000, 10000)]
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact_by_hand() -> None:
    # 2 vs 9 discordant pairs: 2·(C(11,0) + C(11,1) + C(11,2)) / 2¹¹ = 2·67/2048.
    assert mcnemar_exact_p(2, 9) == pytest.approx(134 / 2048, rel=1e-12)
    assert mcnemar_exact_p(9, 2) == mcnemar_exact_p(2, 9)
    assert mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024, rel=1e-12)
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # Tens of thousands of discordant pairs stay finite (log space): an even split is not significant,
    # a 45/55 split of 20,000 is.
    assert mcnemar_exact_p(10000, 10000) == 1.0
    assert 0 < mcnemar_exact_p(9000, 11000) < 1e-40


def test_paired_delta_interval_by_hand() -> None:
    # a=8 both right, b=2 only the candidate right, c=0, d=0 (n=10): φ = 0 (a zero margin).
    # Candidate 10/10: Wilson (0.72246, 1); reference 8/10: Wilson (0.49016, 0.94332).
    # below = sqrt((1 − 0.72246)² + (0.94332 − 0.8)²) = 0.31236; above = sqrt(0 + (0.8 − 0.49016)²) = 0.30984.
    low, high = paired_delta_interval(PairedCounts(8, 2, 0, 0))
    assert low == pytest.approx(0.2 - 0.31236, abs=2e-4) and high == pytest.approx(0.2 + 0.30984, abs=2e-4)


def test_paired_delta_interval_is_narrower_than_unpaired_when_outcomes_agree() -> None:
    # 1,000 images, 900 right by both, 10 and 5 discordant: the paired interval is far tighter than
    # the two Wilson intervals side by side, and contains the observed Δ of +0.5 points.
    counts = PairedCounts(900, 10, 5, 85)
    low, high = paired_delta_interval(counts)
    assert low < counts.delta == 0.005 < high
    c_low, c_high = wilson_interval(910, 1000)
    r_low, r_high = wilson_interval(905, 1000)
    assert high - low < (c_high - c_low)
    assert low > c_low - r_high and high < c_high - r_low
    assert significance_note(mcnemar_exact_p(10, 5)) == "not significant"
    assert significance_note(0.01) == "" and significance_note(math.nan) == ""


def test_parity_tally_counts_discordant_pairs() -> None:
    from resnet_deploy.validate.parity import ParityTally

    tally = ParityTally(k=1)
    reference = np.array([True, True, False, False, True])
    candidate = np.array([True, False, True, False, True])
    tally.update_correct(reference, candidate)
    tally.update_correct(reference[:2], candidate[:2])
    assert tally.paired_counts() == PairedCounts(both=3, only_candidate=1, only_reference=2, neither=1)


def test_report_cells_show_intervals_and_significance() -> None:
    from resnet_deploy.gates import gate_for
    from resnet_deploy.validate.report import COLUMNS, row_cells
    from resnet_deploy.validate.run import ArtifactResult

    result = ArtifactResult(
        artifact="m.int8.onnx", backend="onnxruntime", precision="int8", device="cpu", images=450, top1=90.0,
        top5=99.0, images_per_s=None, is_reference=False, top1_delta=0.22, top5_delta=0.0, agreement=98.0,
        top5_overlap=99.0, max_abs_logit_diff=0.1, mean_abs_logit_diff=0.01, cosine_similarity=1.0,
        min_cosine_similarity=1.0, nonfinite=0, gate=gate_for("int8"), failures=[], transform="",
        top1_ci=(86.9, 92.5), agreement_ci=(96.2, 99.0), top1_delta_ci=(-0.9, 1.3), top1_delta_p=1.0)
    cells = dict(zip(COLUMNS, row_cells(result), strict=True))
    assert cells["top-1 CI"] == "86.90 – 92.50"
    assert cells["agree CI"] == "96.20 – 99.00"
    assert cells["Δtop-1 CI"] == "-0.90 – +1.30, p 1 (not significant)"
    compact = dict(zip(COLUMNS, row_cells(result, compact=True), strict=True))
    assert compact["top-1 CI"] == "86.9–92.5" and compact["Δtop-1 CI"] == "-0.9–+1.3 n.s."
    document = result.to_dict()
    assert document["top1_ci"] == [86.9, 92.5] and document["agreement_ci"] == [96.2, 99.0]
    assert document["top1_delta_ci"] == [-0.9, 1.3] and document["top1_delta_p"] == 1.0
    assert document["top1_delta_significant"] is False
