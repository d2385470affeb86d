"""FAISS judged on REAL descriptors: recall against exact search and the end metric, per factory
and nprobe, on a gallery of >= 1e6 delf-hybrid descriptors extracted by delfx.

The index stage (bench_index) measures recall on synthetic queries that are near-copies of
gallery points, which flatters product quantisation. Here every vector is a descriptor delfx
extracted from a photo:

* gallery: views of photos (landmarks-dev, the planar sets, delfx sample-data) at several
  scales, crops and rotations (real_gallery.VARIANTS), extracted with `--model delf-hybrid`
  (40-d);
* queries: OTHER photos of the same landmarks (one per landmark of landmarks-dev, never a view
  of it in the gallery) and half of the non-landmark photos, extracted as they are;
* ground truth: exact search (IndexFlatL2) over the same gallery.

For each factory and nprobe, through delfx's own `build_index` and `GalleryIndex`:

* recall@1 (same top-1 vector as exact), recall@10 (top-10 overlap / 10), "NN in top-10";
* queries/s of one batched search of every query descriptor (k = 10, the vote's k), and the
  speed-up over scipy's cKDTree (workers=1, the DELF tutorial's matcher) timed on the same
  gallery with a subset of the queries;
* the end metric, what delfx does with the neighbours: for each query photo the votes
  (`delfx.index.search.vote`) and its 30-image shortlist: share of votes that go to images of
  the query's landmark, share of landmark queries with a right image in the shortlist, and GAP
  through `search_many` (vote -> shortlist -> MNN -> affine RANSAC; prediction = landmark of
  the rank-1 result, score = its inliers, none when it has no inliers or is a non-landmark photo).

The gallery and queries are benchmarks/real_gallery.py's (shared with the query_scale stage,
which measures the cost of a whole query at 10k and 100k gallery images).

    python -m benchmarks.eval_index_real                      # >= 1e6 vectors: ~40 min
    python -m benchmarks.eval_index_real --quick              # sample-data only, < 3 min
    python -m benchmarks.eval_index_real --work DIR           # keep (and reuse) the features

The photos of ../shared/data are read in place; the augmented views are written to the work
folder (a temp dir unless --work). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import emit, load_text, recall
from benchmarks.data import resolve_data_dir
from benchmarks.real_gallery import prepare
from delfx.config import ExtractConfig

log = logging.getLogger(__name__)

K = 10  # neighbours per query descriptor: SearchConfig's default k (what the vote asks for)
SHORTLIST = 30  # SearchConfig's default shortlist
KDTREE_QUERIES = 1000


# --- the factories and what they are judged on -------------------------------------------------

# PQ<m>x4fs: FAISS's fast-scan PQ (4-bit codes, SIMD look-ups: m/2 bytes per vector)
FACTORIES = ("IVF1024,PQ20", "IVF4096,PQ20", "IVF4096,PQ40", "IVF4096,PQ20x4fs",
             "IVF4096,PQ40x4fs", "IVF4096,SQ8", "IVF4096,Flat")
NPROBES = (4, 8, 16, 32, 64, 128)
QUICK_FACTORIES, QUICK_NPROBES = ("IVF256,PQ20", "IVF256,PQ20x4fs", "IVF256,SQ8"), (8, 32)


class Answers:
    """Neighbours already searched, handed out per query in order: `vote` asks its `index`
    for them, so the vote (delfx's own code) runs on the batch search that was timed."""

    def __init__(self, distances: np.ndarray, images: np.ndarray, rows: np.ndarray,
                 counts: Sequence[int]):
        self._parts = np.cumsum([0, *counts])
        self._arrays = (distances, images, rows)
        self._next = 0

    def search(self, descriptors: np.ndarray, k: int):
        lo, hi = self._parts[self._next], self._parts[self._next + 1]
        if hi - lo != len(descriptors) or k > self._arrays[0].shape[1]:
            raise RuntimeError("answers asked for out of order")
        self._next += 1
        return tuple(a[lo:hi, :k] for a in self._arrays)


def keys_of(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One integer per gallery vector (image row, keypoint row), -1 where there is none."""
    return np.where(images >= 0, images.astype(np.int64) * (1 << 20) + rows, -1)


def end_metric(index, answers: Answers, queries: Sequence, gallery, landmarks: dict[str, str | None],
               memo) -> dict[str, Any]:
    """What delfx makes of the neighbours: votes, the shortlist, and GAP through search_one."""
    from delfx.index.search import SearchConfig, search_one, vote
    from delfx.metrics import accuracy, gap, predictions_from
    config = SearchConfig.for_model(gallery.manifest.model_id, k=K, shortlist=SHORTLIST)
    ids = index.mapping.image_ids
    right_votes = all_votes = hits = landmark_queries = 0
    predicted: dict[str, tuple[str, float] | None] = {}
    t0 = time.perf_counter()
    for query in queries:
        votes = vote(answers, query.descriptors, config)
        truth = landmarks[query.image_id]
        if truth is not None:
            landmark_queries += 1
            all_votes += sum(votes.values())
            right_votes += sum(v for g, v in votes.items() if landmarks[ids[g]] == truth)
            shortlist = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:SHORTLIST]
            hits += any(landmarks[ids[g]] == truth for g, _ in shortlist)
        results = search_one(query, index, gallery, config, votes=votes, memo=memo)
        top = results[0] if results else None
        label = landmarks[top.gallery_id] if top is not None and top.inliers > 0 else None
        predicted[query.image_id] = (label, top.inliers) if label is not None else None
    truth = {q.image_id: landmarks[q.image_id] for q in queries}
    predictions = predictions_from(predicted)
    return {"right_vote_share": right_votes / max(all_votes, 1),
            "shortlist_hit": hits / max(landmark_queries, 1),
            "gap": gap(predictions, truth), "top1": accuracy(predictions, truth)["top1"],
            "verify_s": time.perf_counter() - t0}


def measure(index, descriptors: np.ndarray, counts: Sequence[int], queries, gallery, landmarks,
            memo, exact: np.ndarray | None) -> dict[str, Any]:
    """One batched search of every query descriptor (timed), its recall, its end metric."""
    t0 = time.perf_counter()
    distances, images, rows = index.search(descriptors, K)
    seconds = time.perf_counter() - t0
    keys = keys_of(images, rows)
    out = {"search_s": seconds, "queries_per_s": len(descriptors) / seconds,
           **(recall(keys, exact) if exact is not None else {}),
           **end_metric(index, Answers(distances, images, rows, counts), queries, gallery,
                        landmarks, memo)}
    return out, keys


def kdtree_timing(gallery, descriptors: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """scipy cKDTree (workers=1, as the DELF tutorial matches) on the same gallery, timed on
    KDTREE_QUERIES query descriptors spread over the query set."""
    from scipy.spatial import cKDTree
    vectors, images, rows = gallery.load_descriptors()
    t0 = time.perf_counter()
    tree = cKDTree(vectors)
    build_s = time.perf_counter() - t0
    pick = np.linspace(0, len(descriptors) - 1, min(KDTREE_QUERIES, len(descriptors))).astype(int)
    t0 = time.perf_counter()
    _, found = tree.query(descriptors[pick], k=K, workers=1)
    query_s = time.perf_counter() - t0
    # vector order of load_descriptors is the index's (shard by shard, as build_index adds them)
    keys = keys_of(images[found], rows[found])
    return {"build_s": build_s, "queries": len(pick), "query_s": query_s,
            "s_per_query": query_s / len(pick), "recall_at_1_vs_flat": float(
                np.mean(keys[:, 0] == exact[pick, 0]))}


def evaluate(work: Path, data_dir: Path | None, quick: bool, config: ExtractConfig,
             factories: Sequence[str], nprobes: Sequence[int]) -> dict[str, Any]:
    import shutil

    from delfx.config import DEFAULT_NPROBE
    from delfx.index.faiss_index import INDEX_FILE, GalleryIndex, auto_factory, build_index
    from delfx.index.search import VerificationMemo
    from delfx.store import FeatureSet
    prep = prepare(work, data_dir, quick, config)
    landmarks = prep.pop("landmarks")
    gallery_dir = work / "gallery"
    gallery = FeatureSet(gallery_dir)
    with FeatureSet(work / "queries") as query_set:
        queries = [r for r in (query_set.get(i) for i in query_set.image_ids)
                   if r.ok and r.num_features]
    descriptors = np.concatenate([q.descriptors for q in queries]).astype(np.float32)
    counts = [q.num_features for q in queries]
    num_vectors = gallery.manifest.totals()["features"]
    auto = auto_factory(num_vectors, gallery.descriptor_dim)
    factories = list(dict.fromkeys([auto, *factories] if auto != "Flat" else factories))
    memo = VerificationMemo(capacity=1_000_000)
    rows: dict[str, Any] = {}

    def built(factory: str) -> tuple[Path, dict[str, Any]]:
        out = work / "indexes" / factory.replace(",", "_")
        shutil.rmtree(out, ignore_errors=True)  # our own scratch folder under work
        t0 = time.perf_counter()
        build_index(gallery_dir, out, factory=factory, overwrite=True)
        return out, {"build_s": time.perf_counter() - t0,
                     "index_bytes": (out / INDEX_FILE).stat().st_size}

    load = {"before": list(os.getloadavg())}
    folder, build = built("Flat")
    flat, exact = measure(GalleryIndex(folder), descriptors, counts, queries, gallery, landmarks,
                          memo, None)
    rows["Flat"] = {"factory": "Flat", "nprobe": None, **build, **flat}
    log.info("Flat: %.0f queries/s, GAP %.3f", flat["queries_per_s"], flat["gap"])
    kdtree = kdtree_timing(gallery, descriptors, exact)
    log.info("cKDTree: %.2f ms per query", 1e3 * kdtree["s_per_query"])
    for factory in factories:
        folder, build = built(factory)
        for nprobe in nprobes:
            if factory.endswith(",Flat") and nprobe > 64:
                continue  # an uncompressed scan of 1/32 of the gallery per query: minutes here
            figures, _ = measure(GalleryIndex(folder, nprobe=nprobe), descriptors, counts,
                                 queries, gallery, landmarks, memo, exact)
            figures["speedup_vs_kdtree"] = kdtree["s_per_query"] / (
                figures["search_s"] / len(descriptors))
            rows[f"{factory} nprobe {nprobe}"] = {"factory": factory, "nprobe": nprobe,
                                                  **build, **figures}
            log.info("%s nprobe %d: r@1 %.3f, %.0f q/s, GAP %.3f", factory, nprobe,
                     figures["recall_at_1"], figures["queries_per_s"], figures["gap"])
        shutil.rmtree(folder, ignore_errors=True)
    load["after"] = list(os.getloadavg())
    gallery.close()
    return {"params": {**prep, "model": config.model, "precision": config.precision,
                       "max_side": config.max_side, "num_vectors": num_vectors,
                       "query_descriptors": len(descriptors), "queries_used": len(queries),
                       "landmark_queries": sum(landmarks[q.image_id] is not None for q in queries),
                       "k": K, "shortlist": SHORTLIST, "auto_factory": auto, "quick": quick},
            "kdtree": kdtree, "rows": rows, "load_average": load,
            # what `delfx build-index` picks for this gallery by default
            "chosen": {"row": "Flat" if auto == "Flat" else f"{auto} nprobe {DEFAULT_NPROBE}"}}


def table_for(results: dict[str, Any]) -> list[tuple[str, str]]:
    p, kd = results["params"], results["kdtree"]
    table = [("gallery", f"{p['num_vectors']:,} real {p['model']} descriptors ({p['precision']}) "
                         f"of {p['gallery_images']} views ({len(p['variants'])} per photo) of "
                         f"{p['gallery_photos']} photos"),
             ("queries", f"{p['query_descriptors']:,} descriptors of {p['queries_used']} other "
                         f"photos ({p['landmark_queries']} of landmarks); k = {p['k']}"),
             ("cKDTree (workers=1)", f"{1e3 * kd['s_per_query']:.2f} ms per query "
                                     f"({kd['queries']} queries), build {kd['build_s']:.1f} s"),
             ("load", load_text(results["load_average"]))]
    for name, r in results["rows"].items():
        rec = (f"r@1 {r['recall_at_1']:.3f} r@10 {r['recall_at_10']:.3f} NN-in-10 "
               f"{r['nn_in_top10']:.3f}; " if "recall_at_1" in r else "exact; ")
        speed = (f", x{r['speedup_vs_kdtree']:.0f} cKDTree" if "speedup_vs_kdtree" in r else "")
        table.append((name, f"{rec}{r['queries_per_s']:,.0f} q/s{speed}; right votes "
                            f"{r['right_vote_share']:.3f}, shortlist hit {r['shortlist_hit']:.2f}, "
                            f"GAP {r['gap']:.3f}, top-1 {r['top1']:.2f}; "
                            f"{r['index_bytes'] / 1e6:.0f} MB, build {r['build_s']:.0f} s"))
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: ../shared/data "
                        "next to the project, or $DELFX_SHARED_DATA)")
    parser.add_argument("--quick", action="store_true",
                        help="sample-data only, a few views and two small factories: < 3 min")
    parser.add_argument("--work", type=Path, help="keep views, features and indexes here and "
                        "reuse the features of an earlier run (default: a temp dir)")
    parser.add_argument("--factories", help="comma-separated FAISS factories (auto's pick is "
                        "always added)")
    parser.add_argument("--nprobes", help="comma-separated nprobe values")
    parser.add_argument("--precision", default="int8", choices=("float32", "int8"),
                        help="extraction precision (int8 by default: 2.5x faster, descriptor "
                             "cosine > 0.99 to float32, tests/extractor/test_int8.py)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("delfx", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = resolve_data_dir(args.data)
    if args.quick or not (data_dir / "landmarks-dev" / "labels.csv").is_file():
        if not args.quick:
            log.warning("no landmarks-dev under %s: sample-data only", data_dir)
        data_dir = None
    factories = (args.factories.split(",") if args.factories
                 else QUICK_FACTORIES if args.quick else FACTORIES)
    nprobes = ([int(n) for n in args.nprobes.split(",")] if args.nprobes
               else QUICK_NPROBES if args.quick else NPROBES)
    config = ExtractConfig(model="delf-hybrid", precision=args.precision,
                           max_side=512 if args.quick else 1024)
    with tempfile.TemporaryDirectory(prefix="delfx-index-real-") as scratch:
        work = args.work or Path(scratch)
        results = evaluate(work, data_dir, args.quick, config, factories, nprobes)
    emit("index_real", results, table_for(results), args.json)
    return results


if __name__ == "__main__":
    main()
