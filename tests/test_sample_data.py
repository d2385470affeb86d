"""Tests for delfx.sample_data: layout, determinism, homography geometry and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from delfx.errors import DelfxError
from delfx.sample_data import MARKER_NAME, available_landmarks, load_sample_data, write_sample_data

# Small but big enough for SIFT to find a few dozen keypoints per image.
SMALL = dict(landmarks=3, views=2, non_landmarks=4, long_side=200, seed=0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample_data(tmp_path_factory.mktemp("sample") / "data", **SMALL)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "path", "landmark_id"]
        return list(reader)


def _gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img


def _landmark_views(ds):
    """(canonical image, view image) pairs, synthetic views only."""
    by_id = {im.id: im for im in ds.images}
    return [(by_id[f"{im.landmark_id}/view_00"], im) for im in ds.images
            if im.landmark_id and not im.id.endswith("/view_00")]


def test_available_landmarks_fixed_order():
    names = available_landmarks()
    assert names[:3] == ["china", "flower", "rocket"]
    assert len(names) == len(set(names)) >= 8


def test_files_and_csvs_consistent(sample):
    root = sample.root
    labels = _read_csv(sample.labels_csv)
    train, query = _read_csv(sample.train_csv), _read_csv(sample.query_csv)
    ids = [r["id"] for r in labels]
    assert len(ids) == len(set(ids)) == 3 * (2 + 1) + 4
    # The splits partition the labelled images, row for row.
    def rows(table):
        return sorted(tuple(r.values()) for r in table)

    assert rows(train + query) == rows(labels)
    assert [im.id for im in sample.images] == ids
    for row, im in zip(labels, sample.images):
        assert row["path"] == im.path and (row["landmark_id"] or None) == im.landmark_id
        img = cv2.imread(str(root / row["path"]), cv2.IMREAD_COLOR)
        assert img is not None and img.ndim == 3 and img.shape[2] == 3
        assert 0.6 * SMALL["long_side"] <= max(img.shape[:2]) <= 1.2 * SMALL["long_side"]
    non = [r for r in labels if not r["landmark_id"]]
    assert len(non) == 4 and all(r["path"].startswith("images/non_landmark/") for r in non)
    assert {r["id"] for r in non} <= {r["id"] for r in query}
    assert sample.landmark_ids == available_landmarks()[:3]
    for lm in sample.landmark_ids:
        assert f"{lm}/view_00" in {r["id"] for r in train if r["landmark_id"] == lm}
        assert any(r["landmark_id"] == lm for r in query)
    meta = json.loads(sample.views_json.read_text())
    assert list(meta) == ids
    for m in meta.values():
        assert (m["homography"] is None) == (m["landmark_id"] is None)
    landmark_sources = {m["source"] for m in meta.values() if m["landmark_id"]}
    assert not landmark_sources & {m["source"] for m in meta.values() if not m["landmark_id"]}
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "sklearn/datasets/images/china.jpg" in readme and "CC BY 2.0" in readme
    assert (root / MARKER_NAME).is_file()
    assert not list(root.rglob("*.tmp"))


def test_load_round_trip(sample):
    loaded = load_sample_data(sample.root)
    assert loaded == sample
    for a, b in zip(loaded.images, sample.images):
        assert (a.homography is None) == (b.homography is None)
        if a.homography is not None:
            np.testing.assert_array_equal(a.homography, b.homography)


def test_canonical_view_has_identity_and_long_side(sample):
    for im in sample.images:
        if im.id.endswith("/view_00"):
            np.testing.assert_array_equal(im.homography, np.eye(3))
            assert max(_gray(sample.root / im.path).shape) == SMALL["long_side"]


def test_deterministic(sample, tmp_path):
    again = write_sample_data(tmp_path / "again", **SMALL)
    files = sorted(p.relative_to(sample.root) for p in sample.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for rel in files:
        assert (sample.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel


def test_other_seed_gives_other_views(sample, tmp_path):
    other = write_sample_data(tmp_path / "other", **{**SMALL, "seed": 1})
    rel = "images/china/view_01.jpg"
    assert (other.root / rel).read_bytes() != (sample.root / rel).read_bytes()
    # The canonical view is the resized photo whatever the seed.
    rel = "images/china/view_00.jpg"
    assert (other.root / rel).read_bytes() == (sample.root / rel).read_bytes()


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask].astype(np.float64), b[mask].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _warp_ncc(canon: np.ndarray, view: np.ndarray, hom: np.ndarray,
              sigma: float = 0.0) -> tuple[float, float]:
    """NCC between the view and the canonical warped by hom, and the fraction of the view compared.

    With sigma > 0 both images are high-pass filtered first (image minus its Gaussian blur), which
    makes the score drop to ~0 for a misalignment of a few pixels; raw photos are too smooth for that.
    """
    h, w = view.shape
    canon, view = canon.astype(np.float32), view.astype(np.float32)
    if sigma:
        canon = canon - cv2.GaussianBlur(canon, (0, 0), sigma)
        view = view - cv2.GaussianBlur(view, (0, 0), sigma)
    warped = cv2.warpPerspective(canon, hom, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.full(canon.shape, 255, np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0
    return _ncc(warped, view, mask), float(mask.mean())


def test_homography_warp_matches_view(sample):
    shift = np.array([[1.0, 0, 3], [0, 1, -3], [0, 0, 1]])  # a wrong H, off by ~4 px
    for canon_im, view_im in _landmark_views(sample):
        canon, view = _gray(sample.root / canon_im.path), _gray(sample.root / view_im.path)
        right, covered = _warp_ncc(canon, view, view_im.homography)
        assert covered > 0.7, view_im.id  # most of the view shows the landmark
        assert right > 0.8, (view_im.id, right)
        right_hp, _ = _warp_ncc(canon, view, view_im.homography, sigma=2.0)
        wrong_hp, _ = _warp_ncc(canon, view, shift @ view_im.homography, sigma=2.0)
        inverse_hp, _ = _warp_ncc(canon, view, np.linalg.inv(view_im.homography), sigma=2.0)
        assert right_hp > 0.5, (view_im.id, right_hp)
        assert max(wrong_hp, inverse_hp) < 0.2, (view_im.id, wrong_hp, inverse_hp)


def test_homography_sift_reprojection(sample):
    sift = cv2.SIFT_create()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    for canon_im, view_im in _landmark_views(sample):
        canon, view = _gray(sample.root / canon_im.path), _gray(sample.root / view_im.path)
        kp1, d1 = sift.detectAndCompute(canon, None)
        kp2, d2 = sift.detectAndCompute(view, None)
        good = [m for m, n in matcher.knnMatch(d1, d2, k=2) if m.distance < 0.75 * n.distance]
        assert len(good) >= 10, (view_im.id, len(good))
        src = np.float64([kp1[m.queryIdx].pt for m in good])
        dst = np.float64([kp2[m.trainIdx].pt for m in good])
        proj = cv2.perspectiveTransform(src[None], view_im.homography)[0]
        err = np.linalg.norm(proj - dst, axis=1)
        assert np.median(err) < 2.0, (view_im.id, np.median(err))
        assert (err < 3.0).mean() > 0.6, view_im.id
        # The inverse (view -> canonical) direction must not fit: guards against a swapped convention.
        inv = cv2.perspectiveTransform(src[None], np.linalg.inv(view_im.homography))[0]
        assert np.median(np.linalg.norm(inv - dst, axis=1)) > 5.0, view_im.id


def test_most_of_landmark_visible(sample):
    for canon_im, view_im in _landmark_views(sample):
        ch, cw = _gray(sample.root / canon_im.path).shape
        vh, vw = _gray(sample.root / view_im.path).shape
        ys, xs = np.mgrid[0:ch:4, 0:cw:4]
        pts = cv2.perspectiveTransform(np.float64(np.c_[xs.ravel(), ys.ravel()])[None], view_im.homography)[0]
        inside = (pts[:, 0] > -0.5) & (pts[:, 0] < vw - 0.5) & (pts[:, 1] > -0.5) & (pts[:, 1] < vh - 0.5)
        assert inside.mean() > 0.5, view_im.id


def test_landmark_views_independent_of_landmark_count(sample, tmp_path):
    fewer = write_sample_data(tmp_path / "fewer", **{**SMALL, "landmarks": 1, "non_landmarks": 0})
    assert [im.id for im in fewer.images] == ["china/view_00", "china/view_01", "china/view_02"]
    for im in fewer.images:
        assert (fewer.root / im.path).read_bytes() == (sample.root / im.path).read_bytes()


def test_refuses_foreign_non_empty_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DelfxError, match="not empty"):
        write_sample_data(tmp_path, landmarks=1, views=1, non_landmarks=0, long_side=64)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    ds = write_sample_data(tmp_path, landmarks=1, views=1, non_landmarks=1, long_side=64, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len(ds.images) == 3


def test_refuses_file_as_out_dir(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DelfxError, match="not a directory"):
        write_sample_data(target, landmarks=1, views=1, long_side=64, overwrite=True)


def test_rewrites_previous_output_and_drops_stale_images(tmp_path):
    write_sample_data(tmp_path, landmarks=2, views=2, non_landmarks=2, long_side=64)
    ds = write_sample_data(tmp_path, landmarks=1, views=1, non_landmarks=1, long_side=64)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.jpg")}
    assert on_disk == {im.path for im in ds.images}
    assert len(_read_csv(ds.labels_csv)) == 3


def test_incomplete_output_is_not_loadable(tmp_path):
    write_sample_data(tmp_path, landmarks=1, views=1, non_landmarks=0, long_side=64)
    (tmp_path / "labels.csv").unlink()  # as if the run had been interrupted
    with pytest.raises(DelfxError, match="no complete sample data"):
        load_sample_data(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(landmarks=0), "landmarks"),
    (dict(landmarks=len(available_landmarks()) + 1), "landmarks"),
    (dict(landmarks=2.5), "landmarks"),
    (dict(views=0), "views"),
    (dict(non_landmarks=-1), "non_landmarks"),
    (dict(long_side=63), "long_side"),
    (dict(long_side=True), "long_side"),
    (dict(seed=-1), "seed"),
])
def test_argument_validation(tmp_path, kwargs, match):
    with pytest.raises(DelfxError, match=match):
        write_sample_data(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
