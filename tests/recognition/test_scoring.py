"""Label-level evidence, the chance model and batch demotion, on hand-worked evidence.

Every expected number below is worked out by hand in the comments; the recogniser's own
verification is replaced by fixed verified images where noted, so what is tested is the scoring.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from delfx.recognition.chance import ChanceModel, fit_chance, is_negative, negative_pairs
from delfx.recognition.recognize import RecognitionConfig, Recognizer
from delfx.recognition.scoring import Answer, Verified, aggregate, demote_frequent
from delfx.store import ImageFeatures

EVIDENCE = [Verified("a1", "a", 30, 100), Verified("a2", "a", 10, 100), Verified("a3", "a", 4, 50),
            Verified("a4", "a", 2, 50), Verified("b1", "b", 25, 200),
            Verified("n1", None, 8, 100), Verified("n2", None, 3, 100),
            Verified("a1", "a", 12, 100)]  # a1 again (fused re-verification): its best counts


def test_aggregate_sums_the_best_images_of_each_landmark():
    by_label, non_landmark = aggregate(EVIDENCE, top=1)
    assert {l: e.evidence for l, e in by_label.items()} == {"a": 30, "b": 25}
    assert non_landmark == 8
    by_label, non_landmark = aggregate(EVIDENCE, top=3)
    # a: 30 + 10 + 4 (a1 once, at its best 30); b: 25 alone; non-landmarks: 8 + 3
    assert {l: e.evidence for l, e in by_label.items()} == {"a": 44, "b": 25}
    assert non_landmark == 11
    assert (by_label["a"].gallery_id, by_label["a"].inliers, by_label["a"].images) == ("a1", 30, 4)


def test_aggregate_counts_inliers_above_chance():
    chance = ChanceModel(matches=(100.0,), level=(10.0,), pairs=50)
    # chance level: 10 at 100 matches, falling to 0 below the one bin (5 at 50), flat above it
    assert [chance.expected(m) for m in (0, 50, 100, 200)] == [0, 5, 10, 10]
    by_label, non_landmark = aggregate(EVIDENCE, top=3, chance=chance)
    # a: 30-10 = 20, then only positive values add: 10-10 = 0, 4-5 = -1 -> 0; b: 25 - 10 = 15;
    # non-landmarks: 8-10 = -2 and 3-10 = -7: below chance, no evidence (0, never negative)
    assert {l: e.evidence for l, e in by_label.items()} == {"a": 20, "b": 15}
    assert non_landmark == 0 and by_label["a"].images == 1
    # a landmark whose best image is below chance has negative evidence: 4 - 5 = -1
    by_label, _ = aggregate([Verified("c1", "c", 4, 50), Verified("c2", "c", 1, 50)], 3, chance)
    assert by_label["c"].evidence == -1


class _Gallery:
    image_ids: list = []
    manifest = types.SimpleNamespace(model_id="rootsift+pca40")


def _query(image_id="q"):
    return ImageFeatures(image_id, np.zeros((1, 2), np.float32), np.zeros((1, 4), np.float32),
                         np.ones(1, np.float32), np.ones(1, np.float32), 10, 10)


def _recognizer(verified_of, **config):
    """A retrieval recogniser whose verified gallery images are `verified_of(query id)`."""
    labels = {v.gallery_id: v.label for vs in map(verified_of, ("q1", "q2", "q3")) for v in vs}
    recognizer = Recognizer(_Gallery(), labels, index=object(),
                            config=RecognitionConfig(mode="retrieval", **config))

    def evidence(query, exclude_self=False):  # the real aggregation, fixed verification
        from delfx.recognition.recognize import Candidate
        by_label, non_landmark = aggregate(verified_of(query.image_id), recognizer.config.aggregate,
                                           recognizer.chance)
        ranked = [Candidate(e.label, 0.0, e.inliers, e.matches, e.gallery_id, e.evidence, e.images,
                            e.inlier_sum) for e in by_label.values()]
        ranked.sort(key=lambda c: (-recognizer._raw(c, non_landmark), c.label))
        return ranked, non_landmark

    recognizer.evidence = evidence
    return recognizer


def test_non_landmark_gallery_images_reject_and_reorder():
    def verified(query):
        return {"q1": [Verified("a1", "a", 12, 80), Verified("n1", None, 15, 80)],   # nl wins
                "q2": [Verified("a1", "a", 30, 80), Verified("n1", None, 25, 80)],   # 30 - 25
                "q3": [Verified("b1", "b", 10, 80)]}[query]                            # 10 - 0
    recognizer = _recognizer(verified)
    results = {q: recognizer.recognize(_query(q)) for q in ("q1", "q2", "q3")}
    # raw score of evidence x: 1 + x at or above 0, e^x below
    # q1: 12 - 15 = -3, answered below every other answer (GAP never loses by that)
    assert (results["q1"].label, results["q1"].score) == ("a", pytest.approx(np.exp(-3)))
    assert results["q1"].non_landmark == 15
    assert (results["q2"].label, results["q2"].score) == ("a", 6.0)   # 30 - 25
    assert (results["q3"].label, results["q3"].score) == ("b", 11.0)  # now ranks above q2
    assert results["q2"].features["log_non_landmark"] == pytest.approx(np.log1p(25))
    assert results["q1"].features["log_evidence"] == pytest.approx(np.log1p(12))
    # --min-score 1: no answer below the non-landmark images
    recognizer = _recognizer(verified, min_score=1.0)
    assert recognizer.recognize(_query("q1")).label is None
    assert recognizer.recognize(_query("q2")).label == "a"
    # without the penalty: raw evidence, q1 answered, q2 above q3
    recognizer = _recognizer(verified, non_landmark_penalty=False)
    results = {q: recognizer.recognize(_query(q)) for q in ("q1", "q2", "q3")}
    assert [(results[q].label, results[q].score) for q in ("q1", "q2", "q3")] == [
        ("a", 13.0), ("a", 31.0), ("b", 11.0)]


def test_aggregate_three_turns_a_lucky_single_match_into_a_runner_up():
    # a: one image with 20 inliers; b: three images with 12, 11, 9
    def verified(query):
        return [Verified("a1", "a", 20, 90), Verified("b1", "b", 12, 90),
                Verified("b2", "b", 11, 90), Verified("b3", "b", 9, 90)]
    assert _recognizer(verified).recognize(_query("q1")).label == "a"  # 20 > 12
    result = _recognizer(verified, aggregate=3).recognize(_query("q1"))
    assert (result.label, result.score) == ("b", 33.0)  # 12 + 11 + 9 > 20
    assert result.features["log_evidence_margin"] == pytest.approx(np.log1p(12))


def test_evidence_below_chance_ranks_last_or_is_cut_by_min_score():
    def verified(query):
        return {"q1": [Verified("a1", "a", 9, 100)],    # 9 - 10 = -1
                "q2": [Verified("b1", "b", 14, 40)],    # 14 - 4 = 10
                "q3": [Verified("a2", "a", 0, 100)]}[query]  # nothing verified: no answer
    chance = ChanceModel(matches=(100.0,), level=(10.0,), pairs=50)
    recognizer = _recognizer(verified)
    recognizer.chance = chance
    assert [(r.label, r.score) for r in map(recognizer.recognize, map(_query, ("q1", "q2", "q3")))
            ] == [("a", pytest.approx(np.exp(-1))), ("b", 11.0), (None, 0.0)]
    recognizer = _recognizer(verified, min_score=1.0)
    recognizer.chance = chance
    assert recognizer.recognize(_query("q1")).label is None
    recognizer.chance = None  # raw: 9 inliers
    assert (recognizer.recognize(_query("q1")).label, recognizer.recognize(_query("q1")).score
            ) == ("a", 10.0)


def test_demote_frequent_keeps_labels_and_divides_scores():
    answers = [Answer("q1", "x", 10), Answer("q2", "y", 5), Answer("q3", "x", 8),
               Answer("q4", "x", 9), Answer("q5", "x", 7), Answer("q6", None, 0)]
    out = demote_frequent(answers, cap=2)
    # x by score: q1 10, q4 9 (kept), q3 8 -> 8*2/3, q5 7 -> 7*2/4; y and no-answer unchanged
    assert [(a.query, a.label) for a in out] == [(a.query, a.label) for a in answers]
    assert [a.score for a in out] == pytest.approx([10, 5, 16 / 3, 9, 3.5, 0])
    assert demote_frequent(answers, cap=0) == answers


def test_fit_chance_levels_and_trimming():
    # one bin: 49 pairs with 5 inliers and one mislabelled pair with 100: the top 2% is dropped
    model = fit_chance([(50, 5)] * 49 + [(50, 100)], bins=1)
    assert model.matches == (50.0,) and model.level == (5.0,) and model.pairs == 50
    # two bins: mean + 3 std of (0, 2) alternating = 1 + 3 = 4 at 20 matches; of 6 +- 2: 12 at 80
    model = fit_chance([(20, 0), (20, 2)] * 20 + [(80, 4), (80, 8)] * 20, bins=2)
    assert model.matches == (20.0, 80.0) and model.level == pytest.approx((4.0, 12.0))
    assert model.expected(50) == pytest.approx(8.0)   # interpolated
    assert model.expected(160) == pytest.approx(12.0)  # flat beyond the last bin
    assert model.expected(10) == pytest.approx(2.0)   # falls to 0 below the first
    with pytest.raises(ValueError, match="needs >= 20 negative pairs"):
        fit_chance([(10, 1)] * 5)


def test_fit_chance_is_non_decreasing_and_bounds_random_inliers():
    """Poisson-like chance inliers that grow with matches: the level never decreases with
    matches and few fresh negative pairs exceed it."""
    rng = np.random.default_rng(0)

    def draw(n):
        matches = rng.integers(10, 400, n)
        return list(zip(matches, rng.poisson(0.05 * matches)))

    model = fit_chance(draw(200))
    assert all(b >= a for a, b in zip(model.level, model.level[1:]))
    fresh = draw(2000)
    above = np.mean([inliers > model.expected(m) for m, inliers in fresh])
    assert above < 0.02


def test_negative_pairs_never_pair_one_landmark_or_two_non_landmarks():
    labels = {"a1": "a", "a2": "a", "b1": "b", "n1": None, "n2": ""}
    pairs = negative_pairs(labels, list(labels), 100, seed=0)
    assert pairs and len(pairs) == len(set(pairs))
    assert all(is_negative(labels, a, b) for a, b in pairs)
    unordered = {frozenset(p) for p in pairs}
    assert frozenset(("a1", "a2")) not in unordered and frozenset(("n1", "n2")) not in unordered
    assert frozenset(("a1", "b1")) in unordered  # 8 negative pairs of 10; 100 draws find them
    assert negative_pairs({"a1": "a", "a2": "a"}, ["a1", "a2"], 10) == []


def test_delg_combined_score_reranks_ten_and_lets_five_vote():
    # per image: cosine + min(inliers, 70) / 70
    images = [Verified("a1", "a", 140, 300, 0.9),  # 0.9 + 1.0 = 1.9 (inliers capped at 70)
              Verified("b1", "b", 35, 100, 0.8),   # 0.8 + 0.5 = 1.3
              Verified("b2", "b", 35, 100, 0.7),   # 1.2
              Verified("b3", "b", 7, 50, 0.9),     # 1.0
              Verified("n1", None, 14, 60, 0.6),   # 0.8 (non-landmark)
              Verified("c1", "c", 0, 10, 0.75)]    # 0.75: 6th, re-ranked but not a voter
    by_label, non_landmark = aggregate(images, top=1, rule="delg")
    assert by_label["a"].evidence == pytest.approx(1.9)
    assert by_label["b"].evidence == pytest.approx(1.3 + 1.2 + 1.0)  # three voters
    assert (by_label["b"].gallery_id, by_label["b"].images) == ("b1", 3)
    assert by_label["c"].evidence == 0 and non_landmark == pytest.approx(0.8)
    # eleven images: only the ten best are re-ranked at all
    many = [Verified(f"x{i}", f"l{i}", 70, 100, 1.0 - i / 100) for i in range(11)]
    by_label, _ = aggregate(many, top=1, rule="delg")
    assert len(by_label) == 10 and "l10" not in by_label
    assert sum(e.evidence > 0 for e in by_label.values()) == 5


def test_delg_scoring_needs_shortlist_mode():
    from delfx.errors import DelfxError
    with pytest.raises(DelfxError, match="needs --mode shortlist"):
        Recognizer(_Gallery(), {}, index=object(),
                   config=RecognitionConfig(mode="retrieval", scoring="delg"))


def test_rank_by_inliers_keeps_the_chance_gate():
    """rank_by inliers: answers above chance ranked by raw inliers (1 + inliers), those below
    chance after them, by their evidence (e^x)."""
    chance = ChanceModel(matches=(100.0,), level=(10.0,), pairs=50)  # 10 at 100 matches

    def verified(query):
        return {"q1": [Verified("a1", "a", 20, 200)],   # 20 - 10 = 10 above chance
                "q2": [Verified("b1", "b", 25, 100)],   # 25 - 10 = 15 above chance
                "q3": [Verified("c1", "c", 4, 80)]}[query]  # 4 - 8 = -4: below
    by_evidence = _recognizer(verified)
    by_inliers = _recognizer(verified, rank_by="inliers")
    for r in (by_evidence, by_inliers):
        r.chance = chance
    scores = {q: by_evidence.recognize(_query(q)).score for q in ("q1", "q2", "q3")}
    assert scores == pytest.approx({"q1": 11.0, "q2": 16.0, "q3": np.exp(-4)})
    scores = {q: by_inliers.recognize(_query(q)).score for q in ("q1", "q2", "q3")}
    assert scores == pytest.approx({"q1": 21.0, "q2": 26.0, "q3": np.exp(-4)})


def test_a_learned_matchers_true_match_is_not_chance():
    """LightGlue gives unrelated pairs a few matches, nearly all inliers; a true pair has
    hundreds: the level must not grow with matches beyond what negatives showed."""
    model = fit_chance([(m, m - 1) for m in (3, 4, 5, 6, 8) for _ in range(10)], bins=2)
    assert model.excess(300, 320) > 290
    # a landmark with nothing verified ranks below one with evidence below chance
    def verified(query):
        return [Verified("a1", "a", 0, 0), Verified("b1", "b", 3, 8)]
    recognizer = _recognizer(verified)
    recognizer.chance = model
    result = recognizer.recognize(_query("q1"))
    assert result.label == "b" and 0 < result.score < 1
