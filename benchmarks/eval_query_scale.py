"""The cost of one query at gallery scale: 13k (1e7 descriptors) and 100k gallery images, local
index and global shortlist, and what a GLR-size run would cost.

The gallery is benchmarks/real_gallery.py's (real delf-hybrid descriptors of ~1.7k views of
real photos), grown to N images by adding copies whose descriptors are turned by one seeded
random rotation per copy (orthogonal: unit length and every distance inside a copy are kept).
A copy keeps real descriptors' statistics (their clusters, hence the IVF lists' imbalance, the
number of features per image) but matches no query, so copies are distractors. The global
descriptors are SYNTHETIC (seeded random unit vectors, 512-d like GeM-VGG16; no trained global
model ships): the global path's shortlist is then 30 unrelated images, so its GAP means nothing
here and its verification cost is that of non-matching candidates. Say so wherever a figure is
used.

Per gallery size, each path runs in a fresh process (its peak RSS is its own), through delfx's
own code, over the same queries (OTHER photos of the gallery's landmarks):

* local: `build_index` (auto factory at that size) + `search_many` (k-NN votes over every
  descriptor, 30-image shortlist, MNN, affine RANSAC); skipped above --local-max images
  (adding 1e8 vectors to an IVF index costs most of an hour on 2 cores);
* global: `GlobalIndex.from_feature_set` (exact inner product) + `search_many(global_index=...)`
  (shortlist by global descriptor, candidates read from the store by id, MNN, RANSAC).

Reported: seconds per query (median and mean; the vote apart from verification where it
applies), peak RSS and the index's bytes, start-up (loading) apart; then the GLR-size estimate
(117,703 queries against 4,132,914 gallery images) on N machines of this kind, from these
figures, with what does not fit one machine said.

    python -m benchmarks.eval_query_scale                      # 13k and 100k images: ~40 min
    python -m benchmarks.eval_query_scale --quick              # sample-data, x2 and x4: < 2 min
    python -m benchmarks.eval_query_scale --work DIR           # reuse eval_index_real's folder
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import PROJECT_ROOT, child_env, emit, load_text, rss_bytes, run_measured
from benchmarks.data import resolve_data_dir
from benchmarks.real_gallery import prepare
from delfx.config import ExtractConfig

log = logging.getLogger(__name__)

GLOBAL_DIM = 512
# local: one index in this process; parts: the same index built in --parts parts, searched and
# merged in this process; parts-ray: those parts in one Ray actor each (peak RSS: the driver's)
LOCAL_PATHS = ("local", "parts", "parts-ray")
GLOBAL_MODEL = {"id": "synthetic-random-512", "hash": "0" * 64, "dim": GLOBAL_DIM}
GLR_GALLERY, GLR_QUERIES = 4_132_914, 117_703  # GLDv2 index set and test set (the 2019 challenge)
SHARDS_PER_10K = 2
MIN_SHARDS = 4  # so the index splits into 2 or 4 equal parts (a part holds whole shards)


def rotation(dim: int, seed: int) -> np.ndarray:
    """A seeded random orthogonal (dim, dim) matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng([seed, 17]).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng([seed, 29]).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_scaled(source: Path, out: Path, images: int) -> dict[str, Any]:
    """A feature set of `images` images: the source's, then rotated copies ('<id>~<c>'), each
    with a synthetic global descriptor. Reused when done.json says it is this one."""
    from delfx.store import FeatureSet, Manifest, ShardWriter, shard_file_name
    done = out / "done.json"
    num_shards = max(MIN_SHARDS, math.ceil(images / 10_000 * SHARDS_PER_10K))
    key = {"source": str(source), "images": images, "global": GLOBAL_MODEL, "shards": num_shards}
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        return json.loads(done.read_text())["summary"]
    import shutil
    shutil.rmtree(out, ignore_errors=True)  # this stage's own scratch folder
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with FeatureSet(source) as fs:
        m = fs.manifest
        records = [r for r in (fs.get(i) for i in fs.image_ids) if r.ok]
        manifest = Manifest(num_shards=num_shards, model_id=m.model_id, model_hash=m.model_hash,
                            config=m.config, descriptor_dim=m.descriptor_dim,
                            descriptor_dtype=m.descriptor_dtype, global_model=GLOBAL_MODEL,
                            descriptor_norm=m.descriptor_norm)
        writers = [ShardWriter(out / shard_file_name(s, num_shards),
                               descriptor_dim=m.descriptor_dim,
                               descriptor_dtype=m.descriptor_dtype, model_id=m.model_id,
                               model_hash=m.model_hash, config=m.config, shard_index=s,
                               num_shards=num_shards, global_model=GLOBAL_MODEL)
                   for s in range(num_shards)]
        features, turns = 0, {}
        for number in range(images):
            copy, record = divmod(number, len(records))
            base = records[record]
            descriptors = base.descriptors
            if copy:
                if copy not in turns:
                    turns[copy] = rotation(m.descriptor_dim, copy)
                turned = np.asarray(descriptors, np.float32) @ turns[copy]
                descriptors = turned.astype(descriptors.dtype)
            glob = unit_rows(1, GLOBAL_DIM, number)[0]
            writers[number % num_shards].add(replace(
                base, image_id=base.image_id if not copy else f"{base.image_id}~{copy}",
                descriptors=descriptors, global_descriptor=glob))
            features += base.num_features
        for writer in writers:
            manifest.record(out, writer.close())
    summary = {"images": images, "features": features, "shards": num_shards,
               "copies": math.ceil(images / len(records)), "write_s": time.perf_counter() - t0,
               "bytes": sum(p.stat().st_size for p in out.glob("*.h5"))}
    done.write_text(json.dumps({"key": key, "summary": summary}, indent=2) + "\n")
    return summary


# --- one path, in its own process ---------------------------------------------------------------

def label_of(landmarks: dict[str, str | None], gallery_id: str) -> str | None:
    """A gallery image's landmark; a rotated copy's is its own (it is a distractor)."""
    return f"copy:{gallery_id}" if "~" in gallery_id else landmarks.get(gallery_id)


def run_path(path: str, gallery_dir: Path, queries_dir: Path, index_dir: Path | None,
             landmarks: dict[str, str | None]) -> dict[str, Any]:
    """Load, then search every query (timed one by one) with delfx's own search code."""
    from delfx.index.global_index import GlobalIndex
    from delfx.index.parts import open_index
    from delfx.index.search import SearchConfig, search_one, shortlist_one, vote
    from delfx.metrics import gap, predictions_from
    from delfx.store import FeatureSet
    t0 = time.perf_counter()
    gallery = FeatureSet(gallery_dir)
    with FeatureSet(queries_dir) as qs:
        queries = [r for r in (qs.get(i) for i in qs.image_ids) if r.ok and r.num_features]
    config = SearchConfig.for_model(gallery.manifest.model_id)
    local = path in LOCAL_PATHS
    if local:  # parts-ray: one Ray actor per part on a local Ray instance started here
        index = open_index(index_dir, ray={} if path == "parts-ray" else None)
    else:
        index = GlobalIndex.from_feature_set(gallery)
        queries = [replace(q, global_descriptor=unit_rows(1, GLOBAL_DIM, 10**9 + n)[0])
                   for n, q in enumerate(queries)]
    load_s = time.perf_counter() - t0
    batched = None
    if local:  # the k-NN alone: one batched search of every query descriptor
        descriptors = np.concatenate([q.descriptors for q in queries]).astype(np.float32)
        t = time.perf_counter()
        index.search(descriptors, config.k)
        batched = {"descriptors": len(descriptors), "queries_per_s":
                   len(descriptors) / (time.perf_counter() - t), "nprobe": index.nprobe}
    totals, votes_s, predicted = [], [], {}
    for query in queries:
        t = time.perf_counter()
        if local:
            votes = vote(index, query.descriptors, config)
            votes_s.append(time.perf_counter() - t)
            results = search_one(query, index, gallery, config, votes=votes)
        else:
            results = shortlist_one(query, index, gallery, config)
        totals.append(time.perf_counter() - t)
        top = results[0] if results else None
        label = label_of(landmarks, top.gallery_id) if top and top.inliers > 0 else None
        predicted[query.image_id] = (label, top.inliers) if label else None
    gallery.close()
    getattr(index, "close", lambda: None)()
    truth = {q.image_id: landmarks[q.image_id] for q in queries}
    return {"peak_rss_bytes": rss_bytes()["peak_rss"], "load_s": load_s, "queries": len(queries), "s_per_query_median": statistics.median(totals),
            "s_per_query_mean": statistics.fmean(totals),
            "vote_s_mean": statistics.fmean(votes_s) if votes_s else None, "knn": batched,
            "gap": gap(predictions_from(predicted), truth)}


def measure_path(path: str, gallery_dir: Path, work: Path, index_dir: Path | None
                 ) -> dict[str, Any]:
    """run_path in a fresh interpreter: the peak RSS it reads of itself is the searching
    process's alone (wait4's ru_maxrss would start at this process's, TensorFlow and all)."""
    out = work / f"path-{path}-{gallery_dir.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.eval_query_scale", "--child", path,
           "--child-gallery", str(gallery_dir), "--work", str(work), "--json", str(out)]
    if index_dir is not None:
        cmd += ["--child-index", str(index_dir)]
    measured = run_measured(cmd, env=child_env(), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    if measured["exit_code"] != 0 or not out.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({measured['exit_code']})")
    return {**json.loads(out.read_text()), "wall_s": measured["wall_s"]}


# --- the stage --------------------------------------------------------------------------------

def global_search_cost(num_vectors: int, batch: int = 256) -> dict[str, Any]:
    """Exact global search (FAISS IndexFlatIP, what GlobalIndex holds) over `num_vectors`
    random 512-d vectors: seconds per query asked one at a time (as shortlist_one asks: memory
    bound, the whole matrix is read per query) and in one batch of `batch` (BLAS: compute
    bound). Both grow linearly with the gallery."""
    import faiss
    index = faiss.IndexFlatIP(GLOBAL_DIM)
    for start in range(0, num_vectors, 1 << 18):
        index.add(unit_rows(min(1 << 18, num_vectors - start), GLOBAL_DIM, start))
    queries = unit_rows(batch, GLOBAL_DIM, -1 % 2**32)
    t0 = time.perf_counter()
    for q in queries[:16]:
        index.search(q[None], 30)
    single = (time.perf_counter() - t0) / 16
    t0 = time.perf_counter()
    index.search(queries, 30)
    batched = (time.perf_counter() - t0) / batch
    return {"num_vectors": num_vectors, "single_s_per_query": single,
            "batched_s_per_query": batched, "batch": batch}


def glr_estimate(rows: dict[str, Any], features_per_image: float, bytes_per_image: float,
                 search: dict[str, Any], machines: Sequence[int] = (1, 10, 100)
                 ) -> dict[str, Any]:
    """A GLR-size run (GLR_QUERIES against GLR_GALLERY images) from the measured rows.

    Global path: verification is the same 30 candidates whatever the gallery, so its cost is
    the largest gallery's minus its own global search; the exact global search at GLR size is
    `search` scaled linearly (a 4.1M x 512 float32 matrix per machine: 8.5 GB), batched (one
    query at a time it would be memory bound). Local path: the index at GLR size, bytes per
    vector as measured, is what must fit in memory.
    """
    largest = max(rows.values(), key=lambda r: r["images"])
    g = largest["global"]
    local = [r for r in rows.values() if r.get("local")]
    biggest_local = max(local, key=lambda r: r["images"]) if local else None
    per_vector = (biggest_local["index_bytes"] / biggest_local["features"]
                  if biggest_local else None)
    scale = GLR_GALLERY / search["num_vectors"]
    verify = g["s_per_query_mean"] - search["single_s_per_query"] * largest["images"] / search[
        "num_vectors"]
    global_search = search["batched_s_per_query"] * scale
    s_per_query = verify + global_search
    cpu_hours = GLR_QUERIES * s_per_query / 3600
    # one query per call (search_many's way until it batched GLOBAL_BATCH queries): memory
    # bound at this size
    one_at_a_time = GLR_QUERIES * (verify + search["single_s_per_query"] * scale) / 3600
    return {"global_path_s_per_query": s_per_query, "verification_s_per_query": verify,
            "global_search_s_per_query": global_search,
            "global_search_one_at_a_time_s": search["single_s_per_query"] * scale,
            "machine_hours": cpu_hours, "machine_hours_one_at_a_time": one_at_a_time,
            "hours_on": {str(n): cpu_hours / n for n in machines},
            "store_bytes": GLR_GALLERY * bytes_per_image,
            "global_matrix_bytes": GLR_GALLERY * GLOBAL_DIM * 4,
            "local_index_bytes": (GLR_GALLERY * features_per_image * per_vector
                                  if per_vector else None)}


def evaluate(work: Path, data_dir: Path | None, quick: bool, config: ExtractConfig,
             sizes: Sequence[int], local_max: int, parts: int = 2,
             local_factory: str = "auto") -> dict[str, Any]:
    import shutil

    from delfx.index.faiss_index import INDEX_FILE, build_index
    from delfx.index.parts import build_index_parts
    prep = prepare(work, data_dir, quick, config)
    (work / "landmarks.json").write_text(json.dumps(prep.pop("landmarks")))
    load = {"before": list(os.getloadavg())}
    rows: dict[str, Any] = {}
    for images in sizes:
        scaled = write_scaled(work / "gallery", work / f"scaled-{images}", images)
        row: dict[str, Any] = {**scaled, "local": None}
        gallery_dir = work / f"scaled-{images}"
        if images <= local_max:
            index_dir = work / f"index-{images}"
            shutil.rmtree(index_dir, ignore_errors=True)  # our own scratch folder
            t0 = time.perf_counter()
            meta = build_index(gallery_dir, index_dir, factory=local_factory)
            row.update(factory=meta.factory, nprobe=meta.nprobe,
                       index_build_s=time.perf_counter() - t0,
                       index_bytes=(index_dir / INDEX_FILE).stat().st_size)
            row["local"] = measure_path("local", gallery_dir, work, index_dir)
            log.info("%d images, local: %.3f s/query", images, row["local"]["s_per_query_mean"])
            shutil.rmtree(index_dir, ignore_errors=True)
            if parts > 1:
                parts_dir = work / f"parts-{images}"
                shutil.rmtree(parts_dir, ignore_errors=True)  # our own scratch folder
                t0 = time.perf_counter()
                build_index_parts(gallery_dir, parts_dir, parts, factory=meta.factory)
                row["parts_build_s"] = time.perf_counter() - t0
                for path in ("parts", "parts-ray"):
                    row[path] = measure_path(path, gallery_dir, work, parts_dir)
                    log.info("%d images, %s: %.3f s/query", images, path,
                             row[path]["s_per_query_mean"])
                shutil.rmtree(parts_dir, ignore_errors=True)
        row["global"] = measure_path("global", gallery_dir, work, None)
        log.info("%d images, global: %.3f s/query", images, row["global"]["s_per_query_mean"])
        rows[str(images)] = row
    load["after"] = list(os.getloadavg())
    largest = rows[str(max(sizes))]
    search = global_search_cost(100_000 if quick else 1_000_000)
    estimate = glr_estimate(rows, largest["features"] / largest["images"],
                            largest["bytes"] / largest["images"], search)
    return {"params": {**prep, "model": config.model, "precision": config.precision,
                       "sizes": list(sizes), "local_max": local_max, "quick": quick,
                       "local_factory": local_factory,
                       "parts": parts,
                       "global_model": GLOBAL_MODEL, "glr_gallery": GLR_GALLERY,
                       "glr_queries": GLR_QUERIES},
            "rows": rows, "global_search": search, "glr": estimate, "load_average": load}


def keep_earlier_rows(results: dict[str, Any], earlier: dict[str, Any], source: str
                      ) -> dict[str, Any]:
    """`results` with the rows of `earlier` whose gallery sizes it lacks, each marked, ordered
    by size (the GLR estimate stays this run's: its largest size)."""
    parts = earlier.get("params", {}).get("parts", 2)
    rows = {size: {**row, "from_earlier_run": source,
                   "parts_count": row.get("parts_count", parts)}
            for size, row in earlier.get("rows", {}).items() if size not in results["rows"]}
    rows.update(results["rows"])
    return {**results, "rows": dict(sorted(rows.items(), key=lambda kv: int(kv[0]))),
            "params": {**results["params"], "kept_rows_from": source if rows else None}}


def table_for(results: dict[str, Any]) -> list[tuple[str, str]]:
    p, glr = results["params"], results["glr"]
    table = [("gallery", f"{p['gallery_images']} views of real photos ({p['model']}, "
                         f"{p['precision']}) + rotated copies (distractors); global descriptors "
                         f"synthetic ({GLOBAL_DIM}-d random)"),
             ("queries", f"{p['query_photos']} other photos"),
             ("load", load_text(results["load_average"]))]
    for images, r in results["rows"].items():
        head = f"{int(images):,} images ({r['features'] / 1e6:.1f}M descriptors, store " \
               f"{r['bytes'] / 1e9:.1f} GB)" + (" [earlier run]" if r.get("from_earlier_run")
                                                else "")
        if r["local"]:
            loc = r["local"]
            table.append((f"{head} local", f"{loc['s_per_query_mean']:.3f} s/query (vote "
                          f"{loc['vote_s_mean']:.3f}; k-NN alone {loc['knn']['queries_per_s']:,.0f} "
                          f"descriptors/s at nprobe {loc['knn']['nprobe']}), GAP {loc['gap']:.3f}, peak RSS "
                          f"{loc['peak_rss_bytes'] / 1e9:.2f} GB, load {loc['load_s']:.1f} s; "
                          f"{r['factory']} {r['index_bytes'] / 1e6:.0f} MB, build "
                          f"{r['index_build_s']:.0f} s"))
        for path in ("parts", "parts-ray"):
            if r.get(path):
                pr = r[path]
                table.append((f"{head} {path} ({r.get('parts_count', p.get('parts', 2))} parts)",
                              f"{pr['s_per_query_mean']:.3f} s/query (vote {pr['vote_s_mean']:.3f}; "
                              f"k-NN alone {pr['knn']['queries_per_s']:,.0f} descriptors/s), "
                              f"GAP {pr['gap']:.3f}, peak RSS {pr['peak_rss_bytes'] / 1e9:.2f} GB "
                              f"(this process), load {pr['load_s']:.1f} s"))
        g = r["global"]
        table.append((f"{head} global", f"{g['s_per_query_mean']:.3f} s/query, peak RSS "
                      f"{g['peak_rss_bytes'] / 1e9:.2f} GB, load {g['load_s']:.1f} s"))
    s = results["global_search"]
    table.append((f"global search, {s['num_vectors']:,} x {GLOBAL_DIM}", f"{1e3 * s['single_s_per_query']:.1f} ms per "
                  f"query one at a time, {1e3 * s['batched_s_per_query']:.2f} ms batched "
                  f"({s['batch']})"))
    hours = ", ".join(f"{h:,.1f} h on {n}" for n, h in glr["hours_on"].items())
    table.append(("GLR-size run (estimate)", f"{p['glr_queries']:,} queries x "
                  f"{glr['global_path_s_per_query']:.2f} s (global path: verification "
                  f"{glr['verification_s_per_query']:.2f} + batched global search "
                  f"{glr['global_search_s_per_query']:.3f}; one query at a time the search "
                  f"alone is {glr['global_search_one_at_a_time_s']:.2f}) = "
                  f"{glr['machine_hours']:,.0f} machine-hours batched ("
                  f"{glr['machine_hours_one_at_a_time']:,.0f} one query at a time, as "
                  f"search_many asked before it batched): {hours} machines; store "
                  f"{glr['store_bytes'] / 1e9:,.0f} GB, global matrix "
                  f"{glr['global_matrix_bytes'] / 1e9:.1f} GB" + (
                      f", local index {glr['local_index_bytes'] / 1e9:,.0f} GB"
                      if glr["local_index_bytes"] else "")))
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: ../shared/data "
                        "next to the project, or $DELFX_SHARED_DATA)")
    parser.add_argument("--quick", action="store_true", help="sample-data, tiny galleries")
    parser.add_argument("--work", type=Path, help="keep views, features and galleries here "
                        "(eval_index_real's --work folder is reused as it is)")
    parser.add_argument("--images", help="comma-separated gallery sizes (default 13000,100000: "
                        "1.0e7 and 7.7e7 descriptors at delf-hybrid's ~770 per view)")
    parser.add_argument("--local-max", type=int, default=20_000,
                        help="largest gallery searched through a local index (default 20000)")
    parser.add_argument("--precision", default="int8", choices=("float32", "int8"))
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--parts", type=int, default=2, help="also build the local index in "
                        "this many parts and search them in process and on Ray (default 2; "
                        "1: not)")
    parser.add_argument("--local-factory", default="auto", help="the local index's FAISS "
                        "factory (default auto; fewer IVF lists build far faster at 1e8 "
                        "vectors and scan more per query: an upper bound on the query's cost)")
    parser.add_argument("--keep", type=Path, help="an earlier run's --json: its rows of the "
                        "gallery sizes not run now are kept (marked as from that run), so one "
                        "long size can be run alone")
    parser.add_argument("--child", choices=(*LOCAL_PATHS, "global"), help=argparse.SUPPRESS)
    parser.add_argument("--child-gallery", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("delfx", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.child:
        landmarks = json.loads((args.work / "landmarks.json").read_text())
        out = run_path(args.child, args.child_gallery, args.work / "queries", args.child_index,
                       landmarks)
        args.json.write_text(json.dumps(out) + "\n")
        return out
    data_dir = resolve_data_dir(args.data)
    if args.quick or not (data_dir / "landmarks-dev" / "labels.csv").is_file():
        data_dir = None
    config = ExtractConfig(model="delf-hybrid", precision=args.precision,
                           max_side=512 if args.quick else 1024)
    with tempfile.TemporaryDirectory(prefix="delfx-query-scale-") as scratch:
        work = args.work or Path(scratch)
        if args.images:
            sizes = [int(float(s)) for s in args.images.split(",")]
        elif args.quick:
            sizes = []  # set below from the gallery's size
        else:
            sizes = [13_000, 100_000]
        if not sizes:
            n = prepare(work, data_dir, True, config)["gallery_images"]
            sizes = [2 * n, 4 * n]
        results = evaluate(work, data_dir, args.quick, config, sizes,
                           args.local_max if not args.quick else 4 * 10**6, args.parts,
                           args.local_factory)
    if args.keep:
        results = keep_earlier_rows(results, json.loads(args.keep.read_text()), args.keep.name)
    emit("query_scale", results, table_for(results), args.json)
    return results


if __name__ == "__main__":
    main()
