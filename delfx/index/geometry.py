"""Descriptor matching and geometric verification (pure numpy/OpenCV, no TensorFlow).

Coordinate convention: delfx stores keypoint locations as ``(y, x)`` pixel rows (DELF's order).
Every function here takes ``(y, x)`` arrays and converts internally; transforms are returned in
the usual ``(x, y)`` convention, i.e. 3x3 ``T`` with ``[x_b, y_b, 1]^T ~ T [x_a, y_a, 1]^T`` (the
same convention as OpenCV and as the planar ground-truth homography files).

Example:
    >>> m = mutual_nearest_neighbours(desc_a, desc_b)
    >>> v = verify_pair(loc_a, loc_b, m, model="affine", image_size_b=(480, 640))
    >>> v.inliers, v.transform   # inlier count used for re-ranking, 3x3 a -> b in (x, y)
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from delfx.config import RANSAC_MODELS

logger = logging.getLogger(__name__)

# Minimal sample size of each model (OpenCV refuses fewer points); one per RANSAC_MODELS name.
MIN_SAMPLES = {"affine": 3, "similarity": 2, "homography": 4}
assert set(MIN_SAMPLES) == set(RANSAC_MODELS)
# Bound on the float32 distance block of the matchers (bytes); 64 MB keeps peaks modest.
_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)  # eq=False: elementwise array == would make `==` ambiguous
class Matches:
    """Putative correspondences: ``query_idx`` indexes side a, ``gallery_idx`` side b."""

    query_idx: np.ndarray
    gallery_idx: np.ndarray
    distances: np.ndarray

    def __post_init__(self) -> None:
        fields = {"query_idx": np.int64, "gallery_idx": np.int64, "distances": np.float32}
        for name, dtype in fields.items():
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype).reshape(-1))
        if not len(self.query_idx) == len(self.gallery_idx) == len(self.distances):
            raise ValueError("Matches arrays differ in length")

    def __len__(self) -> int:
        return len(self.query_idx)


@dataclass(frozen=True, eq=False)
class Verification:
    """RANSAC outcome; ``transform`` is 3x3 (a -> b, (x, y) pixels) or None when none was found."""

    inliers: int
    inlier_mask: np.ndarray
    transform: np.ndarray | None
    num_matches: int
    model: str


def _descriptor_pair(desc_a: Any, desc_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(desc_a, np.float32), np.asarray(desc_b, np.float32)  # float16 storage
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptors must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    return a, b


def _distance_blocks(a: np.ndarray, b: np.ndarray, chunk_size: int | None):
    """Yield (start, squared L2 distances of a[start:start+chunk] to all of b), float32."""
    b_sq = np.einsum("ij,ij->i", b, b)
    chunk = chunk_size or max(1, _BLOCK_BYTES // (4 * max(len(b), 1)))
    for start in range(0, len(a), chunk):
        blk = a[start:start + chunk]
        # ||a||^2 + ||b||^2 - 2ab: one sgemm, far faster than explicit differences.
        d = blk @ b.T
        d *= -2.0
        d += np.einsum("ij,ij->i", blk, blk)[:, None]
        d += b_sq[None, :]
        yield start, d


def _make_matches(a: np.ndarray, b: np.ndarray, qi: np.ndarray, gi: np.ndarray,
                  max_distance: float | None) -> Matches:
    # Exact distances for the few kept pairs: the matmul form loses precision by cancellation.
    dist = np.linalg.norm(a[qi] - b[gi], axis=1)
    if max_distance is not None:
        keep = dist <= max_distance
        qi, gi, dist = qi[keep], gi[keep], dist[keep]
    return Matches(qi, gi, dist)


def mutual_nearest_neighbours(desc_a: Any, desc_b: Any, *, max_distance: float | None = None,
                              chunk_size: int | None = None) -> Matches:
    """Pairs (i, j) where j is i's nearest neighbour in b and i is j's nearest in a (L2, exact).

    Args:
        desc_a, desc_b: (N, D) and (M, D) descriptors of images a and b (any float dtype).
        max_distance: drop pairs farther apart than this (L2), if given.
        chunk_size: rows of a per distance block; default bounds a block to ~64 MB.

    Returns:
        Matches sorted by ``query_idx``; empty when either side is empty.

    Example:
        >>> mutual_nearest_neighbours(np.eye(3), np.eye(3)[::-1]).gallery_idx.tolist()
        [2, 1, 0]
    """
    a, b = _descriptor_pair(desc_a, desc_b)
    if len(a) == 0 or len(b) == 0:
        return Matches([], [], [])
    nn_ab, nn_ba = np.empty(len(a), np.int64), np.zeros(len(b), np.int64)
    best_ba, cols = np.full(len(b), np.inf, np.float32), np.arange(len(b))
    for start, d in _distance_blocks(a, b, chunk_size):
        nn_ab[start:start + len(d)] = d.argmin(axis=1)
        arg = d.argmin(axis=0)
        best = d[arg, cols]
        better = best < best_ba  # strict: earlier block wins ties, like one global argmin
        best_ba[better] = best[better]
        nn_ba[better] = arg[better] + start
    qi = np.flatnonzero(nn_ba[nn_ab] == np.arange(len(a)))
    return _make_matches(a, b, qi, nn_ab[qi], max_distance)


def ratio_test_matches(desc_a: Any, desc_b: Any, *, ratio: float = 0.8,
                       chunk_size: int | None = None) -> Matches:
    """Lowe's ratio test: keep i -> nn(i) when d1 < ratio * d2 (for comparison with MNN).

    Args:
        desc_a, desc_b: (N, D), (M, D) descriptors; M < 2 gives no matches (no 2nd neighbour).
        ratio: Lowe's threshold on nearest / second-nearest distance.
        chunk_size: rows of a per distance block.

    Returns:
        Matches sorted by ``query_idx`` (several i may share one j).
    """
    a, b = _descriptor_pair(desc_a, desc_b)
    if len(a) == 0 or len(b) < 2:
        return Matches([], [], [])
    qs, gs = [], []
    for start, d in _distance_blocks(a, b, chunk_size):
        two = np.argpartition(d, 1, axis=1)[:, :2]  # column 0 holds the smallest
        d2 = np.maximum(np.take_along_axis(d, two, axis=1), 0.0)
        ok = np.flatnonzero(d2[:, 0] < (ratio * ratio) * d2[:, 1])  # squared distances
        qs.append(ok + start)
        gs.append(two[ok, 0])
    return _make_matches(a, b, np.concatenate(qs), np.concatenate(gs).astype(np.int64), None)


def _yx_to_xy(points_yx: Any) -> np.ndarray:
    pts = np.asarray(points_yx, dtype=np.float64).reshape(-1, 2)
    return np.ascontiguousarray(pts[:, ::-1])


def transform_points(transform: Any, points_yx: Any) -> np.ndarray:
    """Map (K, 2) ``(y, x)`` points of image a with a 3x3 (x, y) transform; returns (y, x)."""
    t = np.asarray(transform, dtype=np.float64)
    xy = _yx_to_xy(points_yx)
    proj = xy @ t[:, :2].T + t[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = proj[:, :2] / proj[:, 2:3]
    out[np.abs(proj[:, 2]) < 1e-12] = np.inf  # mapped to the line at infinity
    return out[:, ::-1]


def reprojection_errors(transform_3x3: Any, points_a_yx: Any, points_b_yx: Any) -> np.ndarray:
    """Pixel distance between ``T(a)`` and ``b`` for each row; inputs (K, 2) in (y, x)."""
    mapped = transform_points(transform_3x3, points_a_yx)
    err = np.linalg.norm(mapped - np.asarray(points_b_yx, np.float64).reshape(-1, 2), axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def load_homography(path: str | os.PathLike) -> np.ndarray:
    """Read a 3x3 whitespace-separated text matrix (the planar set: ``x_b ~ H x_a``, (x, y))."""
    h = np.loadtxt(Path(path), dtype=np.float64)
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        raise ValueError(f"{path}: expected a finite 3x3 matrix, got shape {h.shape}")
    return h


def default_threshold(model_id: str) -> float:
    """RANSAC residual threshold, as a share of the image diagonal, by keypoint precision:
    DELF cells are ~8x coarser than SIFT keypoints (delf-hybrid places its keypoints with SIFT)."""
    if model_id.startswith("delf-hybrid"):
        return 0.01
    return 0.03 if model_id.startswith(("delf", "tfhub", "savedmodel")) else 0.01


def _unverified(num_matches: int, model: str) -> Verification:
    return Verification(0, np.zeros(num_matches, bool), None, num_matches, model)


def verify_pair(locations_a: Any, locations_b: Any, matches: Matches, *, model: str = "affine",
                residual_threshold: float | None = None, relative_threshold: float = 0.01,
                image_size_b: tuple[int, int] | None = None, max_trials: int = 1000,
                confidence: float = 0.999, seed: int = 0,
                min_matches: int | None = None) -> Verification:
    """Robustly fit a transform a -> b to the putative matches (OpenCV RANSAC family).

    Args:
        locations_a: (N, 2) keypoints of image a, **(y, x)** pixels as stored by delfx.
        locations_b: (M, 2) keypoints of image b, (y, x).
        matches: putative pairs indexing ``locations_a`` / ``locations_b``.
        model: "affine" (cv2.estimateAffine2D, RANSAC: DELF's choice), "similarity"
            (cv2.estimateAffinePartial2D, RANSAC) or "homography" (findHomography, USAC_MAGSAC).
        residual_threshold: inlier threshold in pixels (in image b); overrides the relative one.
        relative_threshold: threshold as a fraction of image b's diagonal, so it scales with
            image size. Without ``image_size_b`` the extent of ``locations_b`` stands in for it.
        image_size_b: (height, width) of image b in pixels.
        max_trials: maximum RANSAC iterations.
        confidence: RANSAC stopping confidence.
        seed: OpenCV RNG seed, set right before the call so results repeat exactly.
        min_matches: fewer matches -> no verification (default: the model's minimal sample).

    Returns:
        Verification; ``transform`` maps (x, y) of a to (x, y) of b (3x3), None with 0 inliers
        when there are too few matches or no model was found (never raises for that).

    Example:
        >>> v = verify_pair(loc_a, loc_b, mutual_nearest_neighbours(d_a, d_b), residual_threshold=8)
    """
    if model not in MIN_SAMPLES:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MIN_SAMPLES)}")
    k = len(matches)
    if k < max(MIN_SAMPLES[model], min_matches or 0):
        return _unverified(k, model)
    loc_b = np.asarray(locations_b, dtype=np.float64).reshape(-1, 2)
    pts_a = _yx_to_xy(np.asarray(locations_a, np.float64).reshape(-1, 2)[matches.query_idx])
    pts_b = _yx_to_xy(loc_b[matches.gallery_idx])
    if residual_threshold is None:
        h, w = image_size_b if image_size_b is not None else loc_b.max(axis=0) + 1.0
        residual_threshold = relative_threshold * float(np.hypot(h, w))
    cv2.setRNGSeed(int(seed))  # theRNG() is per thread: seeding here keeps threads reproducible
    try:
        if model == "homography":
            t, mask = cv2.findHomography(pts_a, pts_b, cv2.USAC_MAGSAC, float(residual_threshold),
                                         maxIters=int(max_trials), confidence=float(confidence))
        else:
            fit = cv2.estimateAffine2D if model == "affine" else cv2.estimateAffinePartial2D
            t, mask = fit(pts_a, pts_b, method=cv2.RANSAC,
                          ransacReprojThreshold=float(residual_threshold),
                          maxIters=int(max_trials), confidence=float(confidence))
            if t is not None:
                t = np.vstack([t, [0.0, 0.0, 1.0]])
    except cv2.error as exc:  # degenerate input (e.g. all points identical)
        logger.debug("%s fit failed on %d matches: %s", model, k, exc)
        return _unverified(k, model)
    if t is None or mask is None or t.size == 0:
        return _unverified(k, model)
    inlier_mask = mask.reshape(-1).astype(bool)
    return Verification(int(inlier_mask.sum()), inlier_mask, t.astype(np.float64), k, model)


def verify_pairs(pairs: Iterable[tuple], *, workers: int | None = None,
                 **kw: Any) -> list[Verification]:
    """verify_pair over many pairs on a thread pool (OpenCV releases the GIL).

    Args:
        pairs: tuples ``(locations_a, locations_b, matches)`` or with a 4th element, a mapping
            of per-pair keyword overrides (e.g. ``{"image_size_b": (h, w)}``).
        workers: threads; default min(4, CPUs); 1 runs sequentially.
        **kw: keyword arguments of verify_pair shared by all pairs.

    Returns:
        One Verification per pair, in input order, identical to sequential calls.

    Example:
        >>> results = verify_pairs([(la, lb, m), (la, lc, m2, {"image_size_b": (480, 640)})])
    """
    items = list(pairs)

    def one(item: tuple) -> Verification:
        loc_a, loc_b, m, *rest = item
        extra: Mapping[str, Any] = rest[0] if rest else {}
        return verify_pair(loc_a, loc_b, m, **{**kw, **extra})

    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    # Contiguous batches: one task per pair would cost more in executor overhead than RANSAC.
    step = max(1, -(-len(items) // (workers * 4)))
    batches = [items[i:i + step] for i in range(0, len(items), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda batch: [one(item) for item in batch], batches)
        return [v for batch in done for v in batch]
