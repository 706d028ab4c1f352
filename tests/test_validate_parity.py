"""The arithmetic behind `validate`: tallies, parity measures and precision gates (numpy only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.validate.parity import (
    AccuracyTally,
    ParityTally,
    finite_rows,
    gate_failures,
    gate_for,
    softmax,
    topk_indices,
)


def test_softmax_is_stable_and_normalized() -> None:
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-12)


def test_topk_and_accuracy_tally_streams_over_batches() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 0, 2])
    top2 = topk_indices(scores, 2)
    np.testing.assert_array_equal(top2, [[1, 0], [0, 1], [2, 1], [2, 0]])  # ties keep class order
    tally = AccuracyTally(k=2)
    tally.update(top2[:2], labels[:2], np.array([True, True]))
    tally.update(top2[2:], labels[2:], np.array([True, False]))  # the last row was NaN: counted wrong
    assert tally.images == 4 and tally.nonfinite == 1
    assert tally.top1 == pytest.approx(25.0) and tally.topk == pytest.approx(50.0)


def test_parity_tally_measures() -> None:
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    other = np.array([[3.0, 1.5, 0.0], [2.0, 0.0, 1.0]])
    tally = ParityTally(k=2)
    tally.update_predictions(topk_indices(reference, 2), topk_indices(other, 2))
    tally.update_outputs(reference, other)
    assert tally.agreement == 50.0  # row 0 agrees on class 0, row 1 does not
    assert tally.topk_overlap == pytest.approx(75.0)  # {0,1}={0,1}; {1,2} vs {0,2} share one
    assert tally.max_abs_diff == 2.0 and tally.mean_abs == pytest.approx(4.5 / 6)
    cos0 = (9 + 1.5) / (math.sqrt(10) * math.sqrt(11.25))
    cos1 = 1 / (math.sqrt(5) * math.sqrt(5))
    assert tally.cosine == pytest.approx((cos0 + cos1) / 2) and tally.cosine_min == pytest.approx(cos1)


def test_parity_ignores_non_finite_rows() -> None:
    reference = np.array([[1.0, 2.0], [1.0, 2.0]])
    other = np.array([[1.0, 2.5], [np.nan, 2.0]])
    assert finite_rows(other).tolist() == [True, False]
    tally = ParityTally(k=1)
    tally.update_outputs(reference, other)
    assert tally.rows == 1 and tally.max_abs_diff == 0.5
    empty = ParityTally(k=1)
    empty.update_outputs(reference[1:], other[1:])
    assert empty.max_abs_diff is None and empty.cosine is None


@pytest.mark.parametrize(("precision", "drop", "agreement"),
                         [("fp32", 0.1, 99.9), ("fp16", 0.3, 99.5), ("bf16", 0.3, 99.5), ("int8", 1.0, 95.0)])
def test_default_gates_by_precision(precision, drop, agreement) -> None:
    gate = gate_for(precision)
    assert (gate.max_top1_drop, gate.min_agreement) == (drop, agreement)
    assert gate.basis == f"{precision} default"


def test_gate_overrides_and_failures() -> None:
    gate = gate_for("int8", max_top1_drop=0.5)
    assert gate.max_top1_drop == 0.5 and gate.min_agreement == 95.0 and "--max-top1-drop" in gate.basis
    assert gate_failures(gate, top1_delta=-0.5, agreement=95.0) == []  # bounds are inclusive
    assert gate_failures(gate, top1_delta=+3.0, agreement=99.0) == []  # a gain is never a failure
    failures = gate_failures(gate, top1_delta=-0.6, agreement=94.0)
    assert len(failures) == 2 and "dropped 0.60 points" in failures[0] and "94.00 %" in failures[1]
    assert gate_failures(gate_for("fp32"), top1_delta=math.nan, agreement=math.nan)  # NaN never passes
    assert gate_for("mystery").max_top1_drop == 0.1  # an unknown precision gets the strictest gate


def test_reference_choice() -> None:
    from resnet_deploy.validate.run import choose_reference

    onnx, card, plan = Path("m.onnx"), Path("m.safetensors"), Path("m.plan")
    assert choose_reference([onnx, card], None) == ([onnx, card], 1)  # first PyTorch artifact
    assert choose_reference([onnx, plan], None) == ([onnx, plan], 0)  # else the first
    assert choose_reference([onnx, card], plan) == ([plan, onnx, card], 0)  # an unlisted reference is added
    assert choose_reference([onnx, card], Path("m.onnx")) == ([onnx, card], 0)
