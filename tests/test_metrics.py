"""GAP and accuracy against hand-worked cases."""

from __future__ import annotations

import pytest

from delfx.metrics import Prediction as P
from delfx.metrics import accuracy, gap, per_class, predictions_from


def gapm(mapping, truth):
    return gap(predictions_from(mapping), truth)


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
    with pytest.raises(ValueError, match="undefined"):
        gap([], {"q1": None})  # no landmark query: M = 0
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
    # n1 (score 1) ranks below q1, the only right answer (score 3): harmless; n2 unanswered
    assert acc["non_landmark_harmless"] == 1.0
    acc = accuracy(preds + [P("n2", "b", 5)], truth)  # above the right answer: it costs GAP
    assert acc["non_landmark_rejection"] == 0.0 and acc["non_landmark_harmless"] == 0.5
    assert per_class(preds, truth) == {"a": {"queries": 2, "correct": 1, "accuracy": 0.5},
                                       "b": {"queries": 1, "correct": 0, "accuracy": 0.0}}


# --------------------------------------------------------------------------------------------
# GAP from {query: (label, score)} mappings, as the benchmarks call it, worked by hand
# --------------------------------------------------------------------------------------------


def test_gap_all_correct_is_one():
    truth = {"q1": "a", "q2": "b"}
    assert gapm({"q1": ("a", 3.0), "q2": ("b", 1.0)}, truth) == pytest.approx(1.0)


def test_gap_wrong_prediction_lowers_precision_of_those_below():
    # sorted: q1 (9, right) P=1/1, q3 (7, wrong: shows no landmark), q2 (5, right) P=2/3
    truth = {"q1": "a", "q2": "b", "q3": None}
    predictions = {"q1": ("a", 9.0), "q2": ("b", 5.0), "q3": ("c", 7.0)}
    assert gapm(predictions, truth) == pytest.approx((1 + 2 / 3) / 2)


def test_gap_wrong_label_on_landmark_query():
    # q2 predicts the wrong landmark with the top score: q1 is right at rank 2 -> 1/2, M = 2
    truth = {"q1": "a", "q2": "b"}
    assert gapm({"q1": ("a", 1.0), "q2": ("a", 2.0)}, truth) == pytest.approx(0.25)


def test_gap_ties_are_broken_by_query_id_not_input_order():
    truth = {"q1": "a", "q2": "b"}
    # q1 (right) sorts before q2 (wrong) at equal score: P(1) = 1 -> GAP 1/2
    first = {"q2": ("x", 5.0), "q1": ("a", 5.0)}
    second = {"q1": ("a", 5.0), "q2": ("x", 5.0)}
    assert gapm(first, truth) == gapm(second, truth) == pytest.approx(0.5)
    # the other way round q2 (right) follows q1 (wrong): P(2) = 1/2 -> 1/4
    assert gapm({"q1": ("x", 5.0), "q2": ("b", 5.0)}, truth) == pytest.approx(0.25)


def test_gap_empty_and_missing_predictions():
    truth = {"q1": "a", "q2": "b", "n1": None}
    assert gapm({}, truth) == 0.0
    assert gapm({"q1": None, "q2": None, "n1": None}, truth) == 0.0
    # a landmark query without prediction still counts in M
    assert gapm({"q1": ("a", 1.0)}, truth) == pytest.approx(0.5)


def test_gap_non_landmark_query_with_prediction_counts_as_wrong():
    truth = {"n1": None, "q1": "a"}
    # n1 ranked first is wrong; q1 right at rank 2 -> (1/2) / M=1
    assert gapm({"n1": ("a", 10.0), "q1": ("a", 1.0)}, truth) == pytest.approx(0.5)
    # ranked last it costs nothing
    assert gapm({"n1": ("a", 0.5), "q1": ("a", 1.0)}, truth) == pytest.approx(1.0)


def test_gap_refuses_undefined_cases():
    with pytest.raises(ValueError):
        gapm({"n1": ("a", 1.0)}, {"n1": None})  # no landmark query: M = 0
    with pytest.raises(ValueError):
        gapm({"zz": ("a", 1.0)}, {"q1": "a"})  # prediction for an unknown query
