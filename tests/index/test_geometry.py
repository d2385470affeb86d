"""Matching and geometric verification (delfx.index.geometry): synthetic, plus planar GT pairs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from delfx.index.geometry import (Matches, load_homography, mutual_nearest_neighbours,
                                  ratio_test_matches, reprojection_errors, transform_points,
                                  verify_pair, verify_pairs)

AFFINE = np.array([[0.9, 0.2, 30.0], [-0.15, 1.05, -20.0], [0.0, 0.0, 1.0]])
SIMILARITY = np.array([[0.9, -0.3, 40.0], [0.3, 0.9, -10.0], [0.0, 0.0, 1.0]])
HOMOGRAPHY = np.array([[0.9, 0.2, 30.0], [-0.15, 1.05, -20.0], [2e-4, -1e-4, 1.0]])


def _brute_mnn(a, b):
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    d = cdist(a.astype(np.float64), b.astype(np.float64))
    ab, ba = d.argmin(axis=1), d.argmin(axis=0)
    qi = np.array([i for i in range(len(a)) if ba[ab[i]] == i], np.int64)
    return qi, ab[qi], d[qi, ab[qi]]


def _synthetic_pair(transform, n=300, inlier_frac=0.4, noise=1.0, size=(768, 1024), seed=0):
    """(y, x) locations related by `transform` (x, y convention) plus uniform outliers."""
    rng = np.random.default_rng(seed)
    h, w = size
    xy_a = rng.uniform([0, 0], [w, h], (n, 2))
    p = np.c_[xy_a, np.ones(n)] @ transform.T
    xy_b = p[:, :2] / p[:, 2:] + rng.normal(0, noise, (n, 2))
    inl = np.zeros(n, bool)
    inl[rng.choice(n, int(round(inlier_frac * n)), replace=False)] = True
    xy_b[~inl] = rng.uniform([0, 0], [w, h], ((~inl).sum(), 2))
    matches = Matches(np.arange(n), np.arange(n), np.zeros(n))
    return xy_a[:, ::-1], xy_b[:, ::-1], matches, inl


@pytest.mark.parametrize("n, m, dim", [(0, 5, 8), (5, 0, 8), (0, 0, 8), (1, 1, 8), (1, 7, 8),
                                       (7, 1, 8), (200, 300, 40), (300, 200, 128)])
def test_mutual_nn_matches_brute_force(n, m, dim):
    rng = np.random.default_rng(n * 1000 + m)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(m, dim))
    got = mutual_nearest_neighbours(a, b)
    qi, gi, dist = _brute_mnn(a, b)
    assert got.query_idx.dtype == got.gallery_idx.dtype == np.int64
    assert got.distances.dtype == np.float32
    np.testing.assert_array_equal(got.query_idx, qi)
    np.testing.assert_array_equal(got.gallery_idx, gi)
    np.testing.assert_allclose(got.distances, dist, rtol=1e-5)
    if n == 1 and m >= 1:
        assert len(got) == 1  # a single query is always its neighbour's nearest


def test_mutual_nn_float16_and_dim_mismatch():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 40)).astype(np.float16), rng.normal(size=(60, 40)).astype(np.float16)
    _, gi, _ = _brute_mnn(a.astype(np.float32), b.astype(np.float32))
    got = mutual_nearest_neighbours(a, b)
    np.testing.assert_array_equal(got.gallery_idx, gi)
    with pytest.raises(ValueError):
        mutual_nearest_neighbours(a, b[:, :20])


def test_mutual_nn_max_distance_filters():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    full = mutual_nearest_neighbours(a, b)
    limit = float(np.median(full.distances))
    cut = mutual_nearest_neighbours(a, b, max_distance=limit)
    keep = full.distances <= limit
    assert 0 < len(cut) < len(full)
    np.testing.assert_array_equal(cut.query_idx, full.query_idx[keep])
    np.testing.assert_array_equal(cut.gallery_idx, full.gallery_idx[keep])
    assert np.all(cut.distances <= limit)


def test_mutual_nn_chunked_equals_unchunked():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(500, 40)), rng.normal(size=(400, 40))
    ref = mutual_nearest_neighbours(a, b, chunk_size=10_000)
    for chunk in (1, 7, 64, None):
        got = mutual_nearest_neighbours(a, b, chunk_size=chunk)
        np.testing.assert_array_equal(got.query_idx, ref.query_idx)
        np.testing.assert_array_equal(got.gallery_idx, ref.gallery_idx)


def test_ratio_test_matches_brute_force():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(250, 8))
    d = cdist(a, b)
    order = np.argsort(d, axis=1)
    d1, d2 = d[np.arange(200), order[:, 0]], d[np.arange(200), order[:, 1]]
    keep = np.flatnonzero(d1 < 0.8 * d2)
    got = ratio_test_matches(a, b, ratio=0.8, chunk_size=33)
    np.testing.assert_array_equal(got.query_idx, keep)
    np.testing.assert_array_equal(got.gallery_idx, order[keep, 0])
    assert len(ratio_test_matches(a, b[:1])) == 0 and len(ratio_test_matches(a[:0], b)) == 0


@pytest.mark.parametrize("model, truth", [("affine", AFFINE), ("homography", HOMOGRAPHY)])
def test_verify_recovers_inliers_and_transform(model, truth):
    la, lb, matches, inl = _synthetic_pair(truth)
    v = verify_pair(la, lb, matches, model=model, residual_threshold=5.0)
    tp = int((v.inlier_mask & inl).sum())
    assert v.model == model and v.num_matches == 300 and v.inliers == v.inlier_mask.sum()
    assert tp / v.inliers > 0.95 and tp / inl.sum() > 0.95
    # Close to the truth over the whole image, not just entrywise.
    grid = np.stack(np.meshgrid(np.linspace(0, 767, 5), np.linspace(0, 1023, 5)), -1).reshape(-1, 2)
    assert np.abs(transform_points(v.transform, grid) - transform_points(truth, grid)).max() < 2.0
    again = verify_pair(la, lb, matches, model=model, residual_threshold=5.0)
    np.testing.assert_array_equal(again.inlier_mask, v.inlier_mask)
    np.testing.assert_array_equal(again.transform, v.transform)


@pytest.mark.parametrize("model, k", [("affine", 2), ("similarity", 1), ("homography", 3)])
def test_too_few_matches_gives_zero_inliers(model, k):
    la, lb, _, _ = _synthetic_pair(SIMILARITY, n=10, inlier_frac=1.0)  # fits every model
    few = Matches(np.arange(k), np.arange(k), np.zeros(k))
    for m in (few, Matches([], [], [])):
        v = verify_pair(la, lb, m, model=model, residual_threshold=5.0)
        assert v.inliers == 0 and v.transform is None and v.inlier_mask.shape == (len(m),)
    all10 = Matches(np.arange(10), np.arange(10), np.zeros(10))
    assert verify_pair(la, lb, all10, model=model, residual_threshold=5, min_matches=11).inliers == 0
    assert verify_pair(la, lb, all10, model=model, residual_threshold=5).inliers == 10
    with pytest.raises(ValueError):
        verify_pair(la, lb, all10, model="fundamental")


def test_yx_convention_with_pure_x_translation():
    rng = np.random.default_rng(5)
    loc_a = rng.uniform(0, 400, (60, 2))                  # (y, x)
    loc_b = loc_a + np.array([0.0, 50.0])                 # moved 50 px along x only
    matches = Matches(np.arange(60), np.arange(60), np.zeros(60))
    for model in ("affine", "similarity", "homography"):
        v = verify_pair(loc_a, loc_b, matches, model=model, residual_threshold=2.0)
        assert v.inliers == 60
        t = v.transform / v.transform[2, 2]
        assert t[0, 2] == pytest.approx(50.0, abs=1e-3) and t[1, 2] == pytest.approx(0.0, abs=1e-3)
    shift_x = np.array([[1.0, 0, 50], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(transform_points(shift_x, loc_a), loc_b)
    np.testing.assert_allclose(reprojection_errors(shift_x, loc_a, loc_b), 0.0, atol=1e-9)
    swapped = np.array([[1.0, 0, 0], [0, 1, 50], [0, 0, 1]])  # what a y/x mix-up would give
    np.testing.assert_allclose(reprojection_errors(swapped, loc_a, loc_b), 50 * np.sqrt(2))


def test_relative_threshold_scales_with_image_size():
    # 60 exact correspondences, 60 displaced by exactly 15 px, 60 far outliers.
    rng = np.random.default_rng(6)
    loc_a = rng.uniform(0, 500, (180, 2))
    loc_b = loc_a @ np.array([[1.1, 0.1], [-0.05, 0.95]]) + 20.0
    angle = rng.uniform(0, 2 * np.pi, 60)
    loc_b[60:120] += 15.0 * np.c_[np.sin(angle), np.cos(angle)]
    loc_b[120:] = rng.uniform(0, 600, (60, 2))
    matches = Matches(np.arange(180), np.arange(180), np.zeros(180))
    small = verify_pair(loc_a, loc_b, matches, image_size_b=(600, 800))      # diag 1000 -> 10 px
    large = verify_pair(loc_a, loc_b, matches, image_size_b=(3600, 4800))    # diag 6000 -> 60 px
    assert small.inlier_mask[:60].all() and not small.inlier_mask[60:120].any()
    assert large.inlier_mask[:120].all()
    fixed = verify_pair(loc_a, loc_b, matches, image_size_b=(3600, 4800), residual_threshold=10)
    np.testing.assert_array_equal(fixed.inlier_mask, small.inlier_mask)
    # Without a size, the extent of locations_b stands in for the image.
    assert verify_pair(loc_a, loc_b, matches, relative_threshold=0.001).inliers == 60


def test_verify_pairs_parallel_equals_sequential():
    pairs = []
    for i in range(24):
        truth = AFFINE if i % 2 else HOMOGRAPHY
        la, lb, m, _ = _synthetic_pair(truth, n=100 + 10 * i, inlier_frac=0.3 + 0.02 * i, seed=i)
        pairs.append((la, lb, m) if i % 3 else (la, lb, m, {"residual_threshold": 3.0}))
    pairs.append((pairs[0][0], pairs[0][1], Matches([0], [0], [0.0])))   # too few matches
    kw = {"model": "homography", "image_size_b": (768, 1024)}
    seq = [verify_pair(*p[:3], **{**kw, **(p[3] if len(p) > 3 else {})}) for p in pairs]
    for workers in (1, 2, 4):
        par = verify_pairs(iter(pairs), workers=workers, **kw)
        assert len(par) == len(seq)
        for s, p in zip(seq, par):
            assert (s.inliers, s.num_matches, s.model) == (p.inliers, p.num_matches, p.model)
            np.testing.assert_array_equal(s.inlier_mask, p.inlier_mask)
            assert (s.transform is None and p.transform is None) or np.array_equal(s.transform,
                                                                                    p.transform)
    assert len({v.inliers for v in seq}) > 10  # order actually matters for the check above


def test_load_homography(tmp_path):
    good = tmp_path / "H"
    good.write_text("0.98 -0.0076 7.08\n-0.0012 0.99 7.58\n-9.29E-6 -1.41E-5 1.0\n")
    h = load_homography(good)
    assert h.shape == (3, 3) and h.dtype == np.float64 and h[2, 0] == pytest.approx(-9.29e-6)
    bad = tmp_path / "bad"
    bad.write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError):
        load_homography(bad)


@pytest.mark.shared_data
@pytest.mark.slow
def test_planar_pairs_against_ground_truth(shared_data):
    cv2 = pytest.importorskip("cv2")
    pairs_csv = shared_data / "planar" / "pairs.csv"
    if not pairs_csv.is_file():
        pytest.skip(f"{pairs_csv} not found")
    sift = cv2.SIFT_create(nfeatures=4000)

    def features(rel):
        image = cv2.imread(str(shared_data / rel), cv2.IMREAD_GRAYSCALE)
        assert image is not None, rel
        keypoints, desc = sift.detectAndCompute(image, None)
        return np.array([k.pt for k in keypoints]).reshape(-1, 2)[:, ::-1], desc, image.shape

    rows, report = list(csv.DictReader(pairs_csv.open())), []
    for row in rows:
        loc_a, desc_a, (h, w) = features(row["image_a"])
        loc_b, desc_b, size_b = features(row["image_b"])
        truth = load_homography(shared_data / row["homography_file"])
        m = mutual_nearest_neighbours(desc_a, desc_b)
        v = verify_pair(loc_a, loc_b, m, model="homography", image_size_b=size_b)
        median = corner = np.inf
        if v.transform is not None:
            inl = v.inlier_mask
            median = float(np.median(reprojection_errors(
                truth, loc_a[m.query_idx[inl]], loc_b[m.gallery_idx[inl]])))
            corners = np.array([[0, 0], [0, w - 1], [h - 1, w - 1], [h - 1, 0]], float)
            corner = float(np.linalg.norm(transform_points(v.transform, corners)
                                          - transform_points(truth, corners), axis=1).mean())
        report.append((row["image_a"], row["image_b"].rsplit("/", 1)[-1],
                       row["dataset"].startswith("EVD"), len(m), v.inliers, median, corner))

    print(f"\n{'pair':52s} {'mnn':>5s} {'inl':>5s} {'med GT px':>9s} {'corner px':>9s}")
    for a, b, evd, n, inliers, median, corner in report:
        flag = "ok" if median < 3 else ("fail (EVD, allowed)" if evd else "fail")
        print(f"{a + ' -> ' + b:52s} {n:5d} {inliers:5d} {median:9.2f} {corner:9.1f}  {flag}")
    oxford = [r for r in report if not r[2]]
    good = [r for r in oxford if r[5] < 3]
    print(f"Oxford: {len(good)}/{len(oxford)} pairs < 3 px; "
          f"EVD: {sum(r[5] < 3 for r in report if r[2])}/{len(report) - len(oxford)}")
    assert len(oxford) > 0 and len(good) >= 0.7 * len(oxford)
    # Where verification succeeds, the homography itself must be right (not just its inliers).
    assert all(r[6] < 10 for r in good)
