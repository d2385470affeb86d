"""GAP and accuracy against hand-worked cases."""

from __future__ import annotations

import pytest

from delfx.metrics import Prediction as P
from delfx.metrics import accuracy, gap, per_class


def test_gap_hand_worked():
    truth = {"q1": "a", "q2": "b", "q3": "c", "q4": None}
    # sorted: q1 (0.9, right) P=1/1; q4 (0.8, non-landmark: wrong); q2 (0.7, right) P=2/3;
    # q3 no prediction. GAP = (1 + 2/3) / 3 landmark queries
    preds = [P("q1", "a", 0.9), P("q2", "b", 0.7), P("q4", "a", 0.8)]
    assert gap(preds, truth) == pytest.approx((1 + 2 / 3) / 3)
    # the non-landmark query without a prediction costs nothing
    assert gap([P("q1", "a", 0.9), P("q2", "b", 0.7)], truth) == pytest.approx(2 / 3)
    assert gap([P("q4", "", 0.99), P("q1", "a", 0.9), P("q2", "b", 0.7)], truth) == pytest.approx(2 / 3)


def test_gap_ties_are_deterministic():
    truth = {"q1": "a", "q2": "b"}
    # equal scores: q1 before q2 (query id). q1 wrong, q2 right: P(2) = 1/2 -> GAP = 0.25
    preds = [P("q2", "b", 0.5), P("q1", "x", 0.5)]
    assert gap(preds, truth) == pytest.approx(0.25)
    assert gap(list(reversed(preds)), truth) == pytest.approx(0.25)


def test_gap_edges():
    assert gap([], {"q1": "a"}) == 0.0
    assert gap([], {"q1": None}) == 0.0
    assert gap([P("q1", "a", 1.0)], {"q1": "a"}) == 1.0
    with pytest.raises(ValueError, match="more than one"):
        gap([P("q1", "a", 1), P("q1", "b", 2)], {"q1": "a"})
    with pytest.raises(ValueError, match="unknown query"):
        gap([P("zz", "a", 1)], {"q1": "a"})


def test_accuracy_and_per_class():
    truth = {"q1": "a", "q2": "a", "q3": "b", "n1": None, "n2": ""}
    preds = [P("q1", "a", 3), P("q2", "b", 2), P("n1", "a", 1)]
    acc = accuracy(preds, truth)
    assert acc["top1"] == pytest.approx(1 / 3) and acc["non_landmark_rejection"] == 0.5
    assert per_class(preds, truth) == {"a": {"queries": 2, "correct": 1, "accuracy": 0.5},
                                       "b": {"queries": 1, "correct": 0, "accuracy": 0.0}}
