"""Ablation of delf-hybrid's descriptor recipe on real photos: which choice costs GAP.

An independent script built from the same ingredients as delf-hybrid (RootSIFT top-1000 at
long side 512 ⊕ VGG16-block4 PCA-40 sampled at the same keypoints, weight 1.0, mutual nearest
neighbours, affine RANSAC 8 px) reached leave-one-out GAP 0.60 on landmarks-dev
(../shared/MEASURED.md), delf-hybrid 0.52. They differ in how the parts are combined:

* the final PCA: delf-hybrid projects the 208-d concatenation to 40-d (whitened); the script
  kept the 168-d concatenation;
* CNN scales: delf-hybrid samples VGG16 at scales 1 and 0.5 (two 40-d parts, weight 1/sqrt 2
  each); the script at scale 1 only (one part, weight 1);
* the CNN projection: whitened (delf-hybrid) or not.

Every recipe here is composed from the SAME raw parts of each photo (HybridModel.parts: SIFT
keypoints, RootSIFT, 512-d VGG16 samples at both scales), so rows differ only in the
combination. The recipe "delfx default" uses the shipped projections and therefore reproduces
`--model delf-hybrid` exactly; every other projection is fitted here on delfx sample-data (the
shipped fit's images and settings, scripts/fit_builtin_pca.py), never on the evaluation photos.
Then, for the recipes that matter, the matching: MNN, Lowe's ratio test, and both together
(MNN pairs that also pass the ratio test).

Protocols and metrics are the local_features stage's (every pair verified; leave-one-out and
held-out landmarks, non-landmark photos as distractors), at long side 512 (8 px) and 1024
(16 px, 2000 keypoints).

    python -m benchmarks.eval_hybrid_recipe            # ~25 min on 2 cores
    python -m benchmarks.eval_hybrid_recipe --quick    # 10 photos, 512 only, < 2 min
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks.common import emit
from benchmarks.data import Photo, load_photos, resolve_data_dir, select_subset
from benchmarks.eval_local_features import (SIFT_THRESHOLD_PX, held_out_retrieval,
                                            loo_retrieval, separation, working_scale)
from delfx.config import ExtractConfig
from delfx.store.records import ImageFeatures

SCALES = (1.0, 0.5)  # the scales the parts are sampled at (HYBRID_CNN_SCALES)
CNN_DIM = 40
RATIO = 0.9  # Lowe's threshold for the joint MNN + ratio signal (0.8 is the SIFT paper's)


@dataclass(frozen=True)
class Recipe:
    """How the parts become one descriptor.

    Attributes:
        label: row name.
        scales: which CNN scales contribute a part (empty: RootSIFT alone).
        cnn_weight: weight of each CNN part (None: 1 / sqrt(number of parts), delfx's rule).
        whiten_cnn: the CNN projection is whitened (the shipped one) or plain (fitted here).
        final_dim: final PCA of the concatenation (whitened, as shipped), 0 for none.
        rootsift: include the RootSIFT part.
        shipped: use the shipped projections (only for delfx's own layout).
    """

    label: str
    scales: tuple[float, ...]
    cnn_weight: float | None = None
    whiten_cnn: bool = True
    final_dim: int = 0
    rootsift: bool = True
    shipped: bool = False

    def weight(self) -> float:
        return self.cnn_weight if self.cnn_weight is not None else float(
            1.0 / np.sqrt(max(len(self.scales), 1)))


RECIPES: tuple[Recipe, ...] = (
    Recipe("delfx default: 2 scales, w 1/√2, final PCA-40", SCALES, final_dim=40, shipped=True),
    Recipe("2 scales, w 1/√2, no final PCA (208-d)", SCALES),
    Recipe("independent: scale 1, w 1, no final PCA (168-d)", (1.0,), 1.0),
    Recipe("scale 1, w 1, final PCA-40", (1.0,), 1.0, final_dim=40),
    Recipe("scale 1, w 1, plain CNN PCA (168-d)", (1.0,), 1.0, whiten_cnn=False),
    Recipe("scale 0.5, w 1, no final PCA (168-d)", (0.5,), 1.0),
    Recipe("2 scales, w 1 each, no final PCA (208-d)", SCALES, 1.0),
    Recipe("2 scales, w 1/√2, final PCA-80", SCALES, final_dim=80),
    Recipe("RootSIFT alone (128-d)", ()),
    Recipe("CNN alone: scale 1 (40-d)", (1.0,), 1.0, rootsift=False),
)


@dataclass
class Parts:
    """Raw parts of one photo; locations already in original pixels."""

    locations: np.ndarray
    rootsift: np.ndarray
    cnn: list[np.ndarray]  # raw 512-d samples, one array per scale of SCALES
    scales: np.ndarray
    scores: np.ndarray
    height: int
    width: int


def hybrid_config(max_side: int, max_features: int) -> ExtractConfig:
    return ExtractConfig(model="delf-hybrid", max_side=max_side, max_features=max_features,
                         descriptor_dim=0)


def extract_parts(items: Sequence[tuple[str, str]], config: ExtractConfig,
                  precise_upscale: bool | None = None) -> tuple[dict[str, Parts], float]:
    """Parts of every (id, path), and seconds per image (decode + SIFT + both VGG16 passes);
    `precise_upscale` chooses SIFT's first-octave upscaling (None: delfx's setting)."""
    from delfx.extractor.base import prepare_image, to_original_pixels
    from delfx.extractor.models import create_model
    from delfx.images import load_image
    model = create_model(config)
    out: dict[str, Parts] = {}
    start = time.perf_counter()
    for image_id, path in items:
        image = load_image(path, max_pixels=config.max_pixels, min_side=config.min_side)
        resized, sy, sx = prepare_image(image, config)
        locations, rootsift, raw, sizes, responses = model.parts(resized, precise_upscale)
        out[image_id] = Parts(to_original_pixels(locations, sy, sx).astype(np.float32), rootsift,
                              raw, (sizes / np.sqrt(sy * sx)).astype(np.float32), responses,
                              int(image.shape[0]), int(image.shape[1]))
    return out, (time.perf_counter() - start) / max(len(items), 1)


class Projections:
    """The CNN and final projections of each recipe (shipped, or fitted on sample-data parts)."""

    def __init__(self, sample_parts: Mapping[str, Parts], per_image: int = 500):
        from delfx.extractor.models import SHIPPED_PCA, shipped_pca_path
        from delfx.extractor.pca import PCAProjection
        self.sample = [p for p in sample_parts.values() if len(p.locations)]
        self.per_image = per_image
        self.shipped_cnn = PCAProjection.load(shipped_pca_path("delf-hybrid-cnn")).truncate(CNN_DIM)
        self.shipped_final = PCAProjection.load(shipped_pca_path("delf-hybrid"))
        self._cache: dict[Any, Any] = {}
        self.notes = {"shipped": [SHIPPED_PCA["delf-hybrid-cnn"], SHIPPED_PCA["delf-hybrid"]]}

    def cnn(self, whiten: bool):
        if whiten:
            return self.shipped_cnn
        key = ("cnn", whiten)
        if key not in self._cache:
            from delfx.extractor.pca import fit_pca
            samples = np.concatenate([c[:self.per_image] for p in self.sample for c in p.cnn])
            self._cache[key] = fit_pca(samples, CNN_DIM, whiten=False,
                                       source="eval_hybrid_recipe: sample-data, both scales")
        return self._cache[key]

    def final(self, recipe: Recipe):
        if recipe.shipped:
            return self.shipped_final.truncate(recipe.final_dim)
        key = ("final", recipe)
        if key not in self._cache:
            from delfx.extractor.pca import fit_pca
            blocks = [compose_raw(p, recipe, self)[:self.per_image] for p in self.sample]
            self._cache[key] = fit_pca(np.concatenate(blocks), recipe.final_dim, whiten=True,
                                       source=f"eval_hybrid_recipe: sample-data, {recipe.label}")
        return self._cache[key]


def compose_raw(parts: Parts, recipe: Recipe, projections: Projections) -> np.ndarray:
    """The concatenation before any final PCA (delf-hybrid's own `combine`)."""
    from delfx.extractor.hybrid import combine
    from delfx.extractor.pca import l2_normalize
    cnn_pca = projections.cnn(recipe.whiten_cnn)
    cnn = [cnn_pca.apply(parts.cnn[SCALES.index(s)]) for s in recipe.scales]
    if not recipe.rootsift:
        return l2_normalize(np.hstack([np.float32(recipe.weight()) * c for c in cnn]))
    return combine(parts.rootsift, cnn, recipe.weight())


def compose(parts: Parts, recipe: Recipe, projections: Projections, image_id: str
            ) -> ImageFeatures:
    descriptors = compose_raw(parts, recipe, projections)
    if recipe.final_dim:
        descriptors = projections.final(recipe).apply(descriptors)
    return ImageFeatures(image_id, parts.locations, descriptors.astype(np.float32), parts.scales,
                         parts.scores.astype(np.float32), parts.height, parts.width)


def match_fn(kind: str) -> Callable:
    """Putative matches of two descriptor sets: 'mnn', 'ratio' (Lowe 0.8), or 'mnn+ratio'
    (MNN pairs whose first neighbour also passes the ratio test at RATIO)."""
    from delfx.index.geometry import Matches, mutual_nearest_neighbours, ratio_test_matches

    def run(a: np.ndarray, b: np.ndarray):
        if kind == "mnn":
            return mutual_nearest_neighbours(a, b)
        if kind == "ratio":
            return ratio_test_matches(a, b, ratio=0.8)
        mnn = mutual_nearest_neighbours(a, b)
        ratio = ratio_test_matches(a, b, ratio=RATIO)
        keep = np.isin(mnn.query_idx, ratio.query_idx)
        return Matches(mnn.query_idx[keep], mnn.gallery_idx[keep], mnn.distances[keep])
    return run


def inlier_matrix(features: Mapping[str, ImageFeatures], ids: Sequence[str],
                  config: ExtractConfig, threshold_px: float, matcher: Callable,
                  trials: int = 1000, order: int | None = None) -> np.ndarray:
    """pair_inliers of the local_features stage with a pluggable matcher, RANSAC's trial cap,
    and the order of the matches given to RANSAC: OpenCV's RANSAC seeds its own generator
    (cv2.setRNGSeed does not reach it), so its samples depend only on the order of the points;
    `order` k shuffles every pair's matches with seed k, None keeps the matcher's order."""
    from delfx.index.geometry import Matches, verify_pair
    rng = np.random.default_rng(order) if order is not None else None
    n = len(ids)
    out = np.full((n, n), -1, np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            fa, fb = features[ids[i]], features[ids[j]]
            matches = matcher(fa.descriptors, fb.descriptors)
            if rng is not None:
                p = rng.permutation(len(matches))
                matches = Matches(matches.query_idx[p], matches.gallery_idx[p],
                                  matches.distances[p])
            v = verify_pair(fa.locations, fb.locations, matches, model="affine",
                            residual_threshold=threshold_px / working_scale(fb, config),
                            image_size_b=(fb.height, fb.width), max_trials=trials)
            out[i, j] = out[j, i] = v.inliers
    return out


def evaluate(recipe: Recipe, matcher: str, parts: Mapping[str, Parts], photos: Sequence[Photo],
             projections: Projections, config: ExtractConfig, threshold_px: float,
             held_out: bool, sift: str, trials: int, orders: Sequence[int]) -> dict[str, Any]:
    """One row: the recipe's figures for each RANSAC match order, their mean and range."""
    ids = [p.image_id for p in photos]
    landmarks = [p.landmark for p in photos]
    features = {i: compose(parts[i], recipe, projections, i) for i in ids}
    per_order, seconds = [], 0.0
    for order in orders:
        start = time.perf_counter()
        inliers = inlier_matrix(features, ids, config, threshold_px, match_fn(matcher), trials,
                                order)
        seconds += time.perf_counter() - start
        loo = loo_retrieval(inliers, ids, landmarks)
        figures = {"order": order, "loo_gap": loo["gap"], "loo_top1": loo["top1"],
                   "auc": separation(inliers, landmarks)["auc"],
                   "non_landmark_false_alarms": loo["non_landmark_queries_with_prediction"]}
        if held_out:
            h = held_out_retrieval(inliers, photos)
            figures.update(held_out_gap=h["gap"], held_out_top1=h["top1"])
        per_order.append(figures)
    row: dict[str, Any] = {
        "recipe": recipe.label, "sift": sift, "matcher": matcher, "ransac_trials": trials,
        "max_side": config.max_side, "orders": list(orders),
        "descriptor_dim": int(next(iter(features.values())).descriptors.shape[1]),
        "verification_ms_per_pair": 1000 * seconds / len(orders)
        / max(len(ids) * (len(ids) - 1) // 2, 1), "per_order": per_order}
    for key in per_order[0]:
        if key != "order":
            values = [f[key] for f in per_order]
            row[key] = float(np.mean(values))
            row[key + "_range"] = [float(min(values)), float(max(values))]
    return row


def _fmt(row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        return "–"
    low, high = row[key + "_range"]
    spread = f" ({low:.3f}–{high:.3f})" if len(row["orders"]) > 1 else ""
    return f"{row[key]:.3f}{spread}"


def table_for(output: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One (row, figures) pair per recipe; GAP is the mean (range) over RANSAC match orders."""
    rows = [("protocol", f"landmarks-dev, {output['photos']['landmark']} landmark + "
                         f"{output['photos']['non_landmark']} non-landmark photos, every pair "
                         f"verified (MNN or as said, affine RANSAC 8 px at 512); GAP: mean "
                         f"(range) over RANSAC match orders")]
    for r in output["rows"]:
        rows.append((f"{r['max_side']} px, SIFT {r['sift']}, {r['recipe']}, {r['matcher']}, "
                     f"{r['ransac_trials']} trials",
                     f"{r['descriptor_dim']}-d: LOO GAP {_fmt(r, 'loo_gap')}, top-1 "
                     f"{r['loo_top1']:.3f}; held-out GAP {_fmt(r, 'held_out_gap')}; pair AUC "
                     f"{r['auc']:.3f}; {r['verification_ms_per_pair']:.1f} ms/pair"))
    rows.append(("run", f"{output['total_s']:.0f} s; load {output['loadavg_before'][0]:.2f} "
                        f"before, {output['loadavg_after'][0]:.2f} after (1-min)"))
    return rows


SIFT_SETTINGS = {"precise": True, "opencv": False}  # label -> enable_precise_upscale


def plan(quick: bool) -> list[tuple[int, str, Recipe, str, int, tuple[int, ...]]]:
    """(long side, SIFT, recipe, matcher, RANSAC trials, orders) of every row.

    Rows compare at 10,000 RANSAC trials over two match orders (at 1,000 trials the order alone
    moves LOO GAP by a few hundredths, so single-order differences that small are noise); one
    row per SIFT setting keeps delfx's 1,000 trials over three orders to show that noise.
    """
    if quick:
        return [(512, s, r, "mnn", 1000, (1, 2)) for s in SIFT_SETTINGS for r in RECIPES[:3]]
    by_label = {r.label: r for r in RECIPES}
    core = [RECIPES[0], RECIPES[1], RECIPES[2], RECIPES[3], by_label["RootSIFT alone (128-d)"]]
    rows = []
    for sift in SIFT_SETTINGS:
        rows.append((512, sift, RECIPES[0], "mnn", 1000, (1, 2, 3)))
        rows += [(512, sift, r, "mnn", 10_000, (1, 2)) for r in core]
    # the remaining recipes and the matchers with OpenCV's upscaling only (the candidate)
    rows += [(512, "opencv", r, "mnn", 10_000, (1, 2)) for r in RECIPES if r not in core]
    rows += [(512, "opencv", r, m, 10_000, (1,)) for r in (RECIPES[0], RECIPES[2])
             for m in ("ratio", "mnn+ratio")]
    rows += [(1024, s, r, "mnn", 10_000, (1,)) for s in SIFT_SETTINGS for r in core[:3] + core[4:]]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 photos, long side 512 only")
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--data", type=Path,
                        help="shared data folder (default: $DELFX_SHARED_DATA or ../shared/data)")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data)
    if not (data_dir / "landmarks-dev" / "labels.csv").is_file():
        sys.exit(f"eval_hybrid_recipe: landmarks-dev not found under {data_dir}; pass --data DIR "
                 f"or set DELFX_SHARED_DATA")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from delfx.inputs import list_images
    from delfx.sample_data import write_sample_data

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    photos = load_photos(data_dir)
    if args.quick:
        photos = select_subset(photos, landmarks=4, per_landmark=2, non_landmarks=2)
    rows_plan = plan(args.quick)
    load_before, start = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="delfx-hybrid-recipe-") as tmp:
        # The shipped projections' fitting set and settings (scripts/fit_builtin_pca.py), with
        # delfx's SIFT: projections fitted here are the same for every row.
        sample = write_sample_data(Path(tmp) / "sample", landmarks=3 if args.quick else 10,
                                   views=2 if args.quick else 5,
                                   non_landmarks=2 if args.quick else 8, long_side=640, seed=0)
        sample_items = [(i.image_id, i.path) for i in list_images(sample.root / "images")]
        sample_parts, _ = extract_parts(sample_items, hybrid_config(512, 500))
    projections = Projections(sample_parts)
    log(f"[{time.perf_counter() - start:5.0f} s] sample-data parts: {len(sample_parts)} images")
    rows, extraction, parts_cache = [], {}, {}
    for side, sift, recipe, matcher, trials, orders in rows_plan:
        if (side, sift) not in parts_cache:
            parts_cache.clear()  # one resolution and SIFT setting in memory at a time
            config = hybrid_config(side, 1000 if side <= 512 else 2000)
            parts, per_image = extract_parts([(p.image_id, p.path) for p in photos], config,
                                             SIFT_SETTINGS[sift])
            parts_cache[(side, sift)] = (config, parts)
            extraction[f"{side} {sift}"] = per_image
            log(f"[{time.perf_counter() - start:5.0f} s] {len(parts)} photos at {side}, SIFT "
                f"{sift}: {per_image:.2f} s/image")
        config, parts = parts_cache[(side, sift)]
        rows.append(evaluate(recipe, matcher, parts, photos, projections, config,
                             SIFT_THRESHOLD_PX * side / 512, held_out=not args.quick, sift=sift,
                             trials=trials, orders=orders))
        log(f"[{time.perf_counter() - start:5.0f} s] {side} {sift} {recipe.label} {matcher} "
            f"{trials}: LOO GAP {_fmt(rows[-1], 'loo_gap')}, held-out "
            f"{_fmt(rows[-1], 'held_out_gap')}")
    n_land = sum(p.landmark is not None for p in photos)
    output = {"quick": args.quick, "data_dir": str(data_dir),
              "photos": {"landmark": n_land, "non_landmark": len(photos) - n_land},
              "sample_images": len(sample_parts), "extract_s_per_image": extraction,
              "sift_settings": {k: {"enable_precise_upscale": v} for k, v in SIFT_SETTINGS.items()},
              "ratio_joint": RATIO, "rows": rows, "total_s": time.perf_counter() - start,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "reference_measured_md": {"rootsift_vgg16_pca40_mnn_affine8": {"gap": 0.60,
                                                                            "top1": 0.62}}}
    emit("eval_hybrid_recipe", output, table_for(output), args.json)
    return output


if __name__ == "__main__":
    main()
