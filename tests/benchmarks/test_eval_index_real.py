"""The index_real and query_scale stages: views, recall, scaled galleries, the GLR estimate.

What their figures rest on: the views are what VARIANTS say (crop, rotation, never upscaled),
recall counts what it says, the vote runs on the neighbours that were timed, and the rotated
copies of a gallery keep every distance inside a copy while matching nothing outside it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import eval_index_real as ir
from benchmarks import eval_query_scale as qs
from benchmarks import real_gallery as rg


def test_views_crop_rotate_and_never_upscale():
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:150, :200] = 255  # the top-left quarter is white
    top_left = rg.render_variant(rgb, rg.Variant("tl", 1024, (0.0, 0.0, 0.5, 0.5)))
    assert top_left.shape == (150, 200, 3) and top_left.min() == 255  # cropped, not upscaled
    small = rg.render_variant(rgb, rg.Variant("s", 200))
    assert small.shape == (150, 200, 3)
    turned = rg.render_variant(rgb, rg.Variant("r", 1024, rotation=90.0))
    assert turned.shape == (400, 300, 3)
    assert turned[-1, 0].min() == 255 and turned[0, -1].max() == 0  # counter-clockwise
    tilted = rg.render_variant(rgb, rg.Variant("t", 1024, rotation=15.0))
    assert tilted.shape == rgb.shape and not np.array_equal(tilted, rgb)


def test_recall_counts_top1_overlap_and_nn():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[1, 3, 9], [5, 4, -1]])
    r = ir.recall(approx, exact)
    assert r["recall_at_1"] == 0.5
    assert r["recall_at_10"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert r["nn_in_top10"] == 1.0


def test_answers_hand_out_the_timed_search_in_order():
    d = np.arange(10, dtype=np.float32).reshape(5, 2)
    answers = ir.Answers(d, d.astype(np.int64), d.astype(np.int64), [2, 3])
    first = answers.search(np.zeros((2, 40)), 2)
    assert np.array_equal(first[0], d[:2])
    with pytest.raises(RuntimeError):
        answers.search(np.zeros((2, 40)), 2)  # the second query has 3 descriptors


def test_vote_on_answers_equals_vote_on_the_index(tmp_path):
    from delfx.index.faiss_index import GalleryIndex, build_index
    from delfx.index.search import SearchConfig, vote
    from delfx.store import FeatureSet
    from delfx.store.synthetic import write_synthetic_feature_set
    write_synthetic_feature_set(tmp_path / "g", num_images=6, features_per_image=(20, 30))
    build_index(tmp_path / "g", tmp_path / "i")
    index = GalleryIndex(tmp_path / "i")
    with FeatureSet(tmp_path / "g") as fs:
        queries = [fs.get(0).descriptors, fs.get(3).descriptors[:7]]
    config = SearchConfig(k=ir.K)
    batch = np.concatenate(queries)
    answers = ir.Answers(*index.search(batch, ir.K), [len(q) for q in queries])
    for q in queries:
        assert vote(answers, q, config) == vote(index, q, config)


def test_rotation_is_orthogonal_and_seeded():
    r = qs.rotation(40, 3)
    assert np.allclose(r @ r.T, np.eye(40), atol=1e-5)
    assert np.array_equal(r, qs.rotation(40, 3)) and not np.allclose(r, qs.rotation(40, 4))


def test_scaled_gallery_copies_are_rotated_distractors(tmp_path):
    from delfx.store import FeatureSet, require_intact
    from delfx.store.synthetic import write_synthetic_feature_set
    write_synthetic_feature_set(tmp_path / "src", num_images=4, features_per_image=(10, 12),
                                descriptor_dtype="float16")
    summary = qs.write_scaled(tmp_path / "src", tmp_path / "big", 10)
    require_intact(tmp_path / "big")
    with FeatureSet(tmp_path / "src") as src, FeatureSet(tmp_path / "big") as big:
        assert big.num_images == 10 and summary["copies"] == 3
        assert set(big.image_ids) == {*src.image_ids, *(f"{i}~1" for i in src.image_ids),
                                      "img00000000~2", "img00000001~2"}
        base, copy = src.get("img00000001"), big.get("img00000001~2")
        a, b = (np.asarray(x.descriptors, np.float32) for x in (base, copy))
        assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=3e-3)
        assert np.allclose(a @ a.T, b @ b.T, atol=5e-3)  # distances inside the copy kept
        assert np.abs(a @ b.T).max() < 0.9  # and it matches nothing of the original
        assert np.array_equal(copy.locations, base.locations)
        assert big.global_descriptors().shape == (10, qs.GLOBAL_DIM)
    again = qs.write_scaled(tmp_path / "src", tmp_path / "big", 10)
    assert again == summary  # reused, not rewritten
    assert json.loads((tmp_path / "big" / "done.json").read_text())["summary"] == summary


def test_glr_estimate_adds_the_scaled_global_search():
    rows = {"100": {"images": 100, "features": 10_000, "index_bytes": 280_000,
                    "local": {"s_per_query_mean": 0.4},
                    "global": {"s_per_query_mean": 0.30}}}
    search = {"num_vectors": 1000, "single_s_per_query": 0.01, "batched_s_per_query": 0.001}
    g = qs.glr_estimate(rows, 100.0, 1e5, search, machines=(1, 10))
    assert g["verification_s_per_query"] == pytest.approx(0.30 - 0.01 * 100 / 1000)
    assert g["global_search_s_per_query"] == pytest.approx(0.001 * qs.GLR_GALLERY / 1000)
    s = g["global_path_s_per_query"]
    assert g["machine_hours"] == pytest.approx(qs.GLR_QUERIES * s / 3600)
    assert g["hours_on"]["10"] == pytest.approx(g["machine_hours"] / 10)
    assert g["machine_hours_one_at_a_time"] == pytest.approx(
        qs.GLR_QUERIES * (g["verification_s_per_query"] + 0.01 * qs.GLR_GALLERY / 1000) / 3600)
    assert g["local_index_bytes"] == pytest.approx(qs.GLR_GALLERY * 100 * 28)
