"""The recogniser's scoring and the calibration fit, as units, on hand-made evidence.

`Recognizer.candidates` (index search, verification, classifier) is replaced by fixed
candidates, so what is tested is exactly the scoring: which landmark wins, with which raw or
calibrated score, which evidence features, and when there is no answer.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from delfx.recognition.calibration import Calibration, fit_logistic
from delfx.recognition.classify import fit_calibration
from delfx.recognition.recognize import (FEATURES, Candidate, RecognitionConfig, Recognizer)
from delfx.store import ImageFeatures


class _Gallery:
    """What the recogniser asks of a gallery here: records by id, and the features' model."""

    def __init__(self, ids):
        self.image_ids = list(ids)
        self.manifest = types.SimpleNamespace(model_id="rootsift+pca40")

    def get(self, image_id):
        return _query(image_id)


def _query(image_id="q"):
    return ImageFeatures(image_id, np.zeros((1, 2), np.float32), np.zeros((1, 4), np.float32),
                         np.ones(1, np.float32), np.ones(1, np.float32), 10, 10)


def _recognizer(mode, candidates, calibration=None, min_score=0.0, non_landmark=0.0, **config):
    """A recogniser whose evidence is `candidates(query id)` (a landmark's evidence defaults to
    its best image's inliers, the `aggregate 1` rule without a chance model)."""
    recognizer = Recognizer(_Gallery([]), {}, index=object(), classifier=object(),
                            global_index=object(), calibration=calibration,
                            config=RecognitionConfig(mode=mode, min_score=min_score, **config))

    def evidence(query, exclude_self=False):
        ranked = [Candidate(**{"evidence": float(c.get("inliers", 0)), **c})
                  for c in candidates(query.image_id)]
        ranked.sort(key=lambda c: (-recognizer._raw(c, non_landmark), c.label))
        return ranked, non_landmark

    recognizer.evidence = evidence
    return recognizer


def test_fused_raw_score_is_inliers_plus_probability():
    # raw verification score 1 + inliers (x >= 0):
    # a: 12 inliers, p 0.1 -> 13.1; b: 11 inliers, p 0.9 -> 12.9; c: unverified proposal, p 0.95
    # -> 0.95 (nothing verified: its probability only)
    candidates = [{"label": "a", "probability": 0.1, "inliers": 12, "matches": 40},
                  {"label": "b", "probability": 0.9, "inliers": 11, "matches": 20},
                  {"label": "c", "probability": 0.95, "inliers": 0, "matches": 0}]
    recognizer = _recognizer("fused", lambda q: candidates)
    scored = recognizer.scored_candidates(_query())
    assert [c.label for _, c, _ in scored] == ["a", "b", "c"]
    assert [s for s, _, _ in scored] == pytest.approx([13.1, 12.9, 0.95])
    result = recognizer.recognize(_query())
    assert (result.label, result.score) == ("a", pytest.approx(13.1))
    # evidence of the winner, against the best of the others
    assert result.features == pytest.approx({
        "probability": 0.1, "log_inliers": np.log1p(12), "log_margin": np.log1p(12 - 11),
        "inlier_ratio": 12 / 40, "log_evidence": np.log1p(12), "log_evidence_margin": np.log1p(1),
        "log_non_landmark": 0.0})


def test_retrieval_without_inliers_is_no_answer_and_min_score_cuts():
    recognizer = _recognizer("retrieval", lambda q: [{"label": "a", "inliers": 0, "matches": 5}])
    assert recognizer.recognize(_query()).label is None
    recognizer = _recognizer("retrieval", lambda q: [{"label": "a", "inliers": 9, "matches": 30},
                                                     {"label": "b", "inliers": 4, "matches": 30}],
                             min_score=11)  # 9 inliers: raw score 10
    result = recognizer.recognize(_query())
    assert result.label is None and result.score == 0.0
    assert [c.label for c in result.candidates] == ["a", "b"]  # the evidence is still kept


def test_calibrated_score_reorders_candidates():
    # A calibration that trusts the inlier *ratio* only: b (30 of 40 matches) beats a (40 of 400).
    # (The three features of the calibrations of older delfx: a subset of today's.)
    names = ["log_inliers", "log_margin", "inlier_ratio"]
    calibration = Calibration(names, np.zeros(3), np.ones(3), np.array([0.0, 0.0, 10.0]), -5.0, {})
    recognizer = _recognizer("retrieval", lambda q: [
        {"label": "a", "inliers": 40, "matches": 400}, {"label": "b", "inliers": 30, "matches": 40}],
        calibration=calibration)
    result = recognizer.recognize(_query())
    assert result.label == "b"
    assert result.score == pytest.approx(1 / (1 + np.exp(-(10 * 0.75 - 5))))


def test_classifier_mode_ranks_by_probability():
    recognizer = _recognizer("classifier", lambda q: [{"label": "a", "probability": 0.2},
                                                      {"label": "b", "probability": 0.7}])
    result = recognizer.recognize(_query())
    assert (result.label, result.score) == ("b", pytest.approx(0.7))
    assert result.features == pytest.approx({"probability": 0.7, "probability_margin": 0.5})


def test_fit_calibration_learns_from_top_answers_and_best_wrong_ones(monkeypatch, caplog):
    """Each labelled query adds its top answer (right or wrong) and, when the top answer is
    right, its best wrong landmark as a negative: rows and labels worked by hand."""
    truth = {f"r{i}": "x" for i in range(6)} | {f"w{i}": "y" for i in range(4)}

    def candidates(image_id):
        if image_id.startswith("r"):  # right with many inliers, a wrong runner-up with few
            return [{"label": "x", "inliers": 30 + int(image_id[1]), "matches": 60},
                    {"label": "z", "inliers": 5, "matches": 60}]
        return [{"label": "z", "inliers": 6 + int(image_id[1]), "matches": 60}]  # wrong on top

    recognizer = _recognizer("retrieval", candidates)
    recognizer.gallery = _Gallery(truth)
    rows = []

    def spy(features, correct, names, **kw):
        rows.append((np.asarray(features), np.asarray(correct)))
        return fit_logistic(features, correct, names, **kw)

    import delfx.recognition.classify as classify
    monkeypatch.setattr(classify, "fit_logistic", spy)
    # fit_calibration builds a raw twin of the recogniser: give it the same fixed candidates
    recognizer.twin = lambda calibration: recognizer
    with caplog.at_level("WARNING"):
        calibration = fit_calibration(recognizer, truth, sorted(truth))
    features, correct = rows[0]
    # 6 right tops + 6 wrong runners-up + 4 wrong tops
    assert len(correct) == 16 and correct.sum() == 6
    assert calibration.fitted_on["predictions"] == 16
    assert calibration.names == FEATURES["retrieval"]
    # 16 answers are too few to trust: said, with the counts
    assert "fitted on 16 answers (6 right, 10 wrong): too few to trust" in caplog.text

    def row(inliers, margin):  # evidence = best image's inliers here (aggregate 1, no chance)
        return [np.log1p(inliers), np.log1p(margin), inliers / 60, np.log1p(inliers),
                np.log1p(margin), 0.0]

    high = calibration.score(np.array([row(35, 30)]))[0]
    low = calibration.score(np.array([row(7, 7)]))[0]
    assert high > 0.8 > 0.2 > low
