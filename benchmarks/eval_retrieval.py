"""Retrieval quality of delfx's own pipeline on real landmark photos: extract -> index -> search.

Every labelled photo of ``landmarks-dev`` (long side capped at 512) is extracted with
``run_extraction`` in this process, indexed with ``build_index`` (auto factory: Flat at this
size), and then queries all the others: ``search_many(..., exclude_self=True)`` with the
``SearchConfig`` defaults (k=10 neighbours per descriptor, 30-candidate shortlist by votes,
mutual-NN matches, affine RANSAC, top 10 results) and ``default_threshold(model_id)``.
Non-landmark photos are both gallery distractors and queries that should get no landmark.

Side by side, on the same features and with the same matcher and RANSAC settings, every
query is also verified against *every* other photo (no index, no shortlist): the difference is
what the index shortlist loses. ../shared/MEASURED.md gives GAP 0.52 / top-1 0.53 for RootSIFT
+ MNN + affine RANSAC 8 px verified exhaustively (its own script).

Metrics, over the returned list of a query (at most ``top`` = 10 results, in delfx's order:
inliers descending, then votes):

* mAP over landmark queries. For a query with R other photos of its landmark in the gallery
  and returned results r_1..r_n,  AP = (1/R) * sum_{i: r_i relevant} P@i,  where P@i is the share
  of relevant results among r_1..r_i. Relevant photos not returned add 0 but still count in R
  (so AP < 1 when the list misses some). Every returned result counts, verified or not
  (delfx returns candidates with 0 inliers too); ``map_verified`` keeps only results with > 0
  inliers.
* top-1: share of landmark queries whose rank-1 result shows the same landmark
  (``top1_verified``: and has > 0 inliers, which is MEASURED.md's definition).
* GAP (Kaggle Google Landmark Recognition): one prediction per query = the landmark of its
  rank-1 result with score = its inliers; no prediction when that result has 0 inliers or is a
  non-landmark photo (the system then says "no landmark"). Predictions sorted by score
  (descending; ties by query id), GAP = (1/M) sum_i P(i) rel(i) with P(i) the precision of the
  first i predictions, rel(i) = 1 if prediction i is right, M = number of landmark queries. A
  prediction for a non-landmark query is wrong.
* shortlist recall: share of (landmark query, relevant photo) pairs whose photo made the
  30-candidate shortlist (the vote), i.e. had a chance to be verified.
* time per query: wall time of search_many per query (k-NN votes, reading candidates, MNN,
  RANSAC), queries read from the feature set beforehand.

Models: RootSIFT with its shipped PCA-40 (the default), RootSIFT raw 128-d (what the 128 -> 40
reduction costs), delf-vgg16 with preset ``fast`` at long side 512.

    python -m benchmarks.eval_retrieval                     # full run (DELF extraction: minutes)
    python -m benchmarks.eval_retrieval --quick             # RootSIFT on a subset, < 2 min
    python -m benchmarks.eval_retrieval --json out.json --data ../shared/data

The shared data is read in place (evaluation only, never copied). Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.common import emit, learned_unavailable, load_text
from benchmarks.data import NUM_SHARDS, Photo, extract, load_photos, quick_subset, resolve_data_dir
from delfx.config import PRESETS, ExtractConfig
from delfx.metrics import gap, predictions_from

MAX_SIDE = 512



@dataclass(frozen=True)
class ModelSpec:
    """One evaluated model: a report label and its extraction config."""

    label: str
    config: ExtractConfig
    matcher: str = "mnn"


def default_specs(quick: bool = False, max_side: int = MAX_SIDE) -> list[ModelSpec]:
    """RootSIFT PCA-40 and 128-d, delf-hybrid and delf-vgg16 `fast`, and with the torch extra
    XFeat (long side 1024, as `delfx extract --model xfeat` by default) with mutual nearest
    neighbours and with LighterGlue (--quick: RootSIFT PCA-40, and XFeat at 512 with MNN)."""
    rootsift = ExtractConfig(model="rootsift", max_side=max_side)
    specs = [ModelSpec("rootsift pca40", rootsift)]
    if not quick:
        specs += [ModelSpec("rootsift raw128", rootsift.replace(descriptor_dim=128)),
                  ModelSpec("delf-hybrid pca40", ExtractConfig(model="delf-hybrid",
                                                               max_side=max_side)),
                  ModelSpec("delf-vgg16 fast",
                            PRESETS["fast"].replace(model="delf-vgg16", max_side=max_side))]
    if learned_unavailable() is None:
        if quick:
            specs.append(ModelSpec("xfeat 512 mnn", ExtractConfig(model="xfeat", max_side=512)))
        else:
            xfeat = ExtractConfig(model="xfeat", max_side=2 * max_side)
            specs += [ModelSpec("xfeat 1024 mnn", xfeat),
                      ModelSpec("xfeat 1024 lightglue", xfeat.replace(max_features=1024),
                                matcher="lightglue")]
    return specs


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def average_precision(ranked: Sequence[str], relevant: set[str]) -> float:
    """AP of a returned list: (1/|relevant|) * sum of precision@i at the relevant results.

    Relevant items missing from the list count as misses (they are in the denominator).

    Example:
        >>> average_precision(["a", "x", "b"], {"a", "b", "c"})   # (1/1 + 2/3) / 3
        0.5555555555555555
    """
    if not relevant:
        raise ValueError("AP is undefined without a relevant item")
    hits, total = 0, 0.0
    for i, item in enumerate(ranked, start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant)


def retrieval_metrics(ranked: Mapping[str, Sequence[tuple[str, int]]],
                      truth: Mapping[str, str | None]) -> dict[str, Any]:
    """mAP, top-1 and GAP from each query's returned list of (gallery id, inliers).

    Args:
        ranked: query id -> results in returned order, as (gallery id, inliers).
        truth: image id -> landmark (None: no landmark), for queries and gallery alike.

    Returns:
        the figures defined in the module docstring, plus per-query predictions.
    """
    members: dict[str, set[str]] = {}
    for image_id, label in truth.items():
        if label is not None:
            members.setdefault(label, set()).add(image_id)
    aps, aps_verified, top1, top1_verified = [], [], 0, 0
    predictions: dict[str, tuple[str, float] | None] = {}
    landmark_queries = [q for q in ranked if truth[q] is not None and len(members[truth[q]]) > 1]
    for query, results in ranked.items():
        first = results[0] if results else None
        label = truth.get(first[0]) if first else None
        predictions[query] = (label, float(first[1])) if first and label and first[1] > 0 else None
        if query not in landmark_queries:
            continue
        relevant = members[truth[query]] - {query}
        aps.append(average_precision([g for g, _ in results], relevant))
        aps_verified.append(average_precision([g for g, n in results if n > 0], relevant))
        top1 += label == truth[query]
        top1_verified += label == truth[query] and first[1] > 0
    queried_truth = {q: truth[q] for q in ranked}
    n = len(landmark_queries)
    return {"map": float(np.mean(aps)) if aps else None,
            "map_verified": float(np.mean(aps_verified)) if aps else None,
            "top1": top1 / n if n else None, "top1_verified": top1_verified / n if n else None,
            "gap": gap(predictions_from(predictions), queried_truth),
            "landmark_queries": n, "queries": len(ranked),
            "non_landmark_queries_with_prediction":
                sum(1 for q, p in predictions.items() if truth[q] is None and p is not None),
            "predictions": {q: (list(p) if p else None) for q, p in predictions.items()}}


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------

def indexed_search(feature_dir: Path, index_dir: Path, matcher: str = "mnn") -> dict[str, Any]:
    """build_index, then leave-one-out search_many of every photo; timings and shortlists."""
    from delfx.index.faiss_index import GalleryIndex, build_index
    from delfx.index.search import SearchConfig, search_many, vote
    from delfx.store import FeatureSet
    start = time.perf_counter()
    meta = build_index(feature_dir, index_dir)
    build_s = time.perf_counter() - start
    with FeatureSet(feature_dir) as gallery:
        index = GalleryIndex(index_dir)
        config = SearchConfig.for_model(gallery.manifest.model_id, matcher=matcher)
        queries = list(gallery)  # read before timing: the queries' features come from the store
        ranked: dict[str, list[tuple[str, int]]] = {}
        per_query: list[float] = []
        results_iter = search_many(queries, index, gallery, config, exclude_self=True)
        for query in queries:
            start = time.perf_counter()
            _, results = next(results_iter)
            per_query.append(time.perf_counter() - start)
            ranked[query.image_id] = [(r.gallery_id, r.inliers) for r in results]
        # The shortlist again (vote is deterministic), outside the search timing: which gallery
        # photos had a chance to be verified at all, and what the k-NN vote alone costs.
        shortlists, vote_s = {}, []
        for query in queries:
            if not query.ok:
                shortlists[query.image_id] = []
                continue
            exclude = {index.mapping_positions[query.image_id]}
            start = time.perf_counter()
            votes = vote(index, query.descriptors, config, exclude)
            vote_s.append(time.perf_counter() - start)
            best = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:config.shortlist]
            shortlists[query.image_id] = [index.mapping.image_ids[g] for g, _ in best]
    return {"factory": meta.factory, "vectors": meta.num_vectors, "build_s": build_s,
            "config": {"k": config.k, "max_distance": config.max_distance,
                       "shortlist": config.shortlist, "top": config.top, "model": config.ransac,
                       "relative_threshold": config.relative_threshold,
                       "matcher": config.matcher},
            "ranked": ranked, "shortlists": shortlists, "per_query_s": per_query,
            "vote_s": vote_s}


def exhaustive_search(feature_dir: Path, top: int, matcher: str = "mnn") -> dict[str, Any]:
    """Every query verified against every other photo, with search_one's matcher and RANSAC.

    Same matcher, RANSAC model, relative threshold and seed as the SearchConfig defaults
    (verify_candidates itself); ranked by inliers (ties: gallery id), cut to `top` like the
    indexed results.
    """
    from delfx.index.search import SearchConfig, verify_candidates
    from delfx.store import FeatureSet
    with FeatureSet(feature_dir) as gallery:
        config = SearchConfig.for_model(gallery.manifest.model_id, matcher=matcher)
        records = [r for r in gallery]
    ranked: dict[str, list[tuple[str, int]]] = {}
    per_query: list[float] = []
    for query in records:
        start = time.perf_counter()
        others = [r for r in records if r.image_id != query.image_id and r.ok]
        if not query.ok:
            ranked[query.image_id] = []
            per_query.append(time.perf_counter() - start)
            continue
        verified = verify_candidates(query, others, config)
        order = sorted(zip(others, verified), key=lambda t: (-t[1].inliers, t[0].image_id))
        ranked[query.image_id] = [(o.image_id, v.inliers) for o, v in order[:top]]
        per_query.append(time.perf_counter() - start)
    return {"ranked": ranked, "per_query_s": per_query}


def shortlist_recall(shortlists: Mapping[str, Sequence[str]], truth: Mapping[str, str | None]
                     ) -> dict[str, Any]:
    """Share of (landmark query, relevant photo) pairs whose photo reached the shortlist."""
    members: dict[str, set[str]] = {}
    for image_id, label in truth.items():
        if label is not None:
            members.setdefault(label, set()).add(image_id)
    found = total = queries_all = queries_any = 0
    for query, shortlist in shortlists.items():
        if truth[query] is None:
            continue
        relevant = members[truth[query]] - {query}
        if not relevant:
            continue
        hit = len(relevant & set(shortlist))
        found, total = found + hit, total + len(relevant)
        queries_all += hit == len(relevant)
        queries_any += hit > 0
    n = sum(1 for q in shortlists if truth[q] is not None and len(members[truth[q]]) > 1)
    return {"pairs_recall": found / total if total else None,
            "queries_all_relevant": queries_all / n if n else None,
            "queries_any_relevant": queries_any / n if n else None}


def _timing(per_query: Sequence[float]) -> dict[str, float]:
    return {"mean_s": float(np.mean(per_query)), "median_s": float(statistics.median(per_query)),
            "max_s": float(np.max(per_query)), "total_s": float(np.sum(per_query))}


def evaluate_model(spec: ModelSpec, photos: Sequence[Photo], workdir: Path) -> dict[str, Any]:
    """Extract, index, search (indexed and exhaustive), and score one model."""
    truth = {p.image_id: p.landmark for p in photos}
    load_before = os.getloadavg()
    features = Path(workdir) / "features"
    extraction = extract(photos, spec.config, features)
    indexed = indexed_search(features, Path(workdir) / "index", spec.matcher)
    exhaustive = exhaustive_search(features, indexed["config"]["top"], spec.matcher)
    return {
        "label": spec.label, "config": spec.config.to_dict(), "extraction": extraction,
        "index": {k: indexed[k] for k in ("factory", "vectors", "build_s", "config")},
        "indexed": {**retrieval_metrics(indexed["ranked"], truth),
                    "shortlist": shortlist_recall(indexed["shortlists"], truth),
                    "time_per_query": _timing(indexed["per_query_s"]),
                    "vote_time_per_query": _timing(indexed["vote_s"]),
                    "results": {q: [list(r) for r in rs] for q, rs in indexed["ranked"].items()}},
        "exhaustive": {**retrieval_metrics(exhaustive["ranked"], truth),
                       "time_per_query": _timing(exhaustive["per_query_s"])},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Readable rows for one model."""
    label, ex, ix, full = r["label"], r["extraction"], r["indexed"], r["exhaustive"]
    la = r["load_average"]
    failed = f", failed {ex['failed_by_reason']}" if ex["failed_by_reason"] else ""
    return [
        (f"[{label}] model", f"{ex['model_id']}: {ex['ok']} photos{failed}, "
         f"{ex['features_per_image']:.0f} features/photo, extraction {ex['seconds_per_image']:.2f} "
         f"s/photo; index {r['index']['factory']} over {r['index']['vectors']:,} vectors "
         f"({r['index']['build_s']:.1f} s); RANSAC threshold "
         f"{r['index']['config']['relative_threshold']} of the diagonal"),
        (f"[{label}] index, shortlist {r['index']['config']['shortlist']}",
         f"mAP {ix['map']:.3f} (verified only {ix['map_verified']:.3f}), top-1 {ix['top1']:.3f} "
         f"(verified {ix['top1_verified']:.3f}), GAP {ix['gap']:.3f}; "
         f"{ix['time_per_query']['mean_s'] * 1e3:.0f} ms/query (median "
         f"{ix['time_per_query']['median_s'] * 1e3:.0f}; k-NN vote alone "
         f"{ix['vote_time_per_query']['mean_s'] * 1e3:.0f})"),
        (f"[{label}] exhaustive, every pair",
         f"mAP {full['map']:.3f} (verified only {full['map_verified']:.3f}), top-1 "
         f"{full['top1']:.3f} (verified {full['top1_verified']:.3f}), GAP {full['gap']:.3f}; "
         f"{full['time_per_query']['mean_s'] * 1e3:.0f} ms/query"),
        (f"[{label}] shortlist recall",
         f"{ix['shortlist']['pairs_recall']:.3f} of relevant photos reach the shortlist; "
         f"all of them for {ix['shortlist']['queries_all_relevant']:.3f} of landmark queries"),
        (f"[{label}] distractors", f"non-landmark queries given a landmark: "
         f"{ix['non_landmark_queries_with_prediction']} indexed, "
         f"{full['non_landmark_queries_with_prediction']} exhaustive "
         f"(of {ix['queries'] - ix['landmark_queries']}); landmark queries {ix['landmark_queries']}"),
        (f"[{label}] load average", load_text(la)),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: evaluate the models, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: ../shared/data "
                        "next to the project, or $DELFX_SHARED_DATA)")
    parser.add_argument("--quick", action="store_true",
                        help="RootSIFT PCA-40 only, on a subset of the photos: < 2 min")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data)
    if not (data_dir / "landmarks-dev" / "labels.csv").is_file():
        print(f"eval_retrieval: no landmarks-dev/labels.csv under {data_dir}; pass --data DIR or "
              f"set DELFX_SHARED_DATA to the shared data folder", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    photos = load_photos(data_dir)
    if args.quick:
        photos = quick_subset(photos)
    models = {}
    for spec in default_specs(quick=args.quick):
        with tempfile.TemporaryDirectory(prefix="delfx-eval-retrieval-", dir=args.workdir) as work:
            models[spec.label] = evaluate_model(spec, photos, Path(work))
    results = {"params": {"data": str(data_dir), "photos": len(photos),
                          "landmark_photos": sum(p.landmark is not None for p in photos),
                          "quick": args.quick, "max_side": MAX_SIDE, "shards": NUM_SHARDS},
               "models": models}
    table = [("photos", f"{len(photos)} ({results['params']['landmark_photos']} of landmarks), "
              f"long side <= {MAX_SIDE}; leave-one-out")]
    table += [row for r in models.values() for row in table_rows(r)]
    emit("retrieval", results, table, args.json)
    return results


if __name__ == "__main__":
    main()
