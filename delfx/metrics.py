"""Recognition metrics: Global Average Precision (GLR challenge) and accuracy.

GAP, as the Kaggle Google Landmark Recognition challenges define it (micro-AP): every query gets
at most one prediction (label, score). All predictions of all queries are sorted by score,
descending, and

    GAP = 1/M * sum_i P(i) * rel(i)

where P(i) is the precision over the first i predictions, rel(i) is 1 when prediction i is
correct, and M is the number of queries that have a true landmark. A query without prediction
adds nothing (but still counts in M if it has a landmark); a non-landmark query that gets a
prediction is a wrong prediction and lowers the precision of everything ranked after it. Ties in
score are broken by query id (ascending), so the result never depends on input order. With no
landmark query at all (M = 0) GAP is undefined: `gap` raises rather than report a number.

This is delfx's one GAP: `delfx evaluate`, `classify` and every benchmark stage use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Prediction:
    query: str
    label: str | None   # None or "" = no prediction
    score: float = 0.0


def _has_label(value: str | None) -> bool:
    return value is not None and value != ""


def gap(predictions: Sequence[Prediction], truth: Mapping[str, str | None]) -> float:
    """Global Average Precision of one-prediction-per-query results.

    Args:
        predictions: at most one per query; queries missing here have no prediction.
        truth: every query's true landmark, None/"" for non-landmark queries.

    Raises:
        ValueError: two predictions for one query, a prediction for a query not in `truth`,
            or no landmark query in `truth`.
    """
    seen = set()
    for p in predictions:
        if p.query in seen:
            raise ValueError(f"more than one prediction for query {p.query!r}")
        if p.query not in truth:
            raise ValueError(f"prediction for unknown query {p.query!r}")
        seen.add(p.query)
    m = sum(1 for label in truth.values() if _has_label(label))
    if m == 0:
        raise ValueError("GAP is undefined without a query that shows a landmark")
    made = sorted((p for p in predictions if _has_label(p.label)),
                  key=lambda p: (-float(p.score), p.query))
    correct, total = 0, 0.0
    for i, p in enumerate(made, start=1):
        if _has_label(truth[p.query]) and p.label == truth[p.query]:
            correct += 1
            total += correct / i
    return total / m


def predictions_from(mapping: Mapping[str, tuple[str, float] | None]) -> list[Prediction]:
    """Predictions from {query: (label, score) or None (no prediction)}."""
    return [Prediction(q, p[0], float(p[1])) if p is not None else Prediction(q, None, 0.0)
            for q, p in mapping.items()]


def accuracy(predictions: Sequence[Prediction], truth: Mapping[str, str | None]) -> dict[str, float]:
    """top1: share of landmark queries predicted right; non_landmark_rejection: share of
    non-landmark queries left without a prediction; non_landmark_harmless: share of non-landmark
    queries left without one or scored below every right answer (they cost no GAP)."""
    by_query = {p.query: p for p in predictions}
    landmark = [q for q, label in truth.items() if _has_label(label)]
    others = [q for q, label in truth.items() if not _has_label(label)]
    right = sum(1 for q in landmark if q in by_query and by_query[q].label == truth[q])
    rejected = sum(1 for q in others if q not in by_query or not _has_label(by_query[q].label))
    # GAP is only hurt by a wrong answer ranked above a right one: a non-landmark answered
    # below every right answer costs nothing
    weakest = min((float(by_query[q].score) for q in landmark
                   if q in by_query and by_query[q].label == truth[q]), default=None)
    harmless = sum(1 for q in others if q not in by_query or not _has_label(by_query[q].label)
                   or (weakest is not None and float(by_query[q].score) < weakest))
    return {"top1": right / len(landmark) if landmark else 0.0,
            "non_landmark_rejection": rejected / len(others) if others else 1.0,
            "non_landmark_harmless": harmless / len(others) if others else 1.0,
            "landmark_queries": len(landmark), "non_landmark_queries": len(others)}


def per_class(predictions: Sequence[Prediction], truth: Mapping[str, str | None]
              ) -> dict[str, dict[str, float]]:
    """Per true landmark: queries, correct, accuracy."""
    by_query = {p.query: p for p in predictions}
    out: dict[str, dict[str, float]] = {}
    for query, label in truth.items():
        if not _has_label(label):
            continue
        row = out.setdefault(label, {"queries": 0, "correct": 0})
        row["queries"] += 1
        row["correct"] += int(query in by_query and by_query[query].label == label)
    for row in out.values():
        row["accuracy"] = row["correct"] / row["queries"]
    return out
