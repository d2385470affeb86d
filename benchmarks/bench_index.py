"""FAISS index cost and quality on synthetic clustered 40-d descriptors, vs scipy's cKDTree.

For each gallery size, in one run and on the same vectors:

* build time, train and add apart, and bytes of the serialised index (``faiss.write_index``),
  for IVF-PQ with the lists delfx's ``auto_factory`` picks (``ivfpq_factory``; auto itself
  picks SQ8 up to 5e7 vectors, see eval_index_real), configured as ``build_index`` does (FAISS's
  polysemous training off; up to 1e6 also timed with it on), and for exact ``Flat``; next to it
  the bytes ``estimate_bytes`` predicts (the figure build_index checks against free memory);
* search time of 1000 queries (k=10) and queries/s for IVF-PQ at nprobe 8, 16, 32 and Flat;
* recall of IVF-PQ against the exact Flat results: recall@1 (same top-1 id) and recall@10
  (mean overlap of the two top-10 id sets / 10), plus "NN in top-10" (exact top-1 among the
  IVF-PQ top-10: what the vote of ``delfx.index.search`` needs);
* at 1e6 (1e5 with --quick): ``scipy.spatial.cKDTree`` (the matcher of the DELF tutorial),
  build and the same 1000 queries, with workers=1 as the tutorial runs it and workers=-1.

The data imitates ../shared/MEASURED.md: unit vectors drawn around 1000 (<= 1e6) or 4000
(1e7) random centres on the sphere, and queries drawn close to random gallery points, so the
exact nearest neighbour of a query is (almost always) its source point and recall is meaningful.
Everything is seeded. Vectors are generated and added in chunks of 2^20, so 1e7 needs the Flat
index (1.6 GB) plus a chunk; only the sizes where cKDTree runs keep the whole array. (The
process peak at 1e7 is still ~4 GB: IndexFlat's code vector doubles its capacity while growing.)

    python -m benchmarks.bench_index                    # 1e6 and 1e7: ~12 min (~40 with other jobs running)
    python -m benchmarks.bench_index --quick            # 1e5 only, < 1 min
    python -m benchmarks.bench_index --sizes 1e6 --json out.json

Figures are printed, never asserted. Timings are medians of `--repeats` runs (one run for the
1e7 Flat search and for cKDTree queries: tens of seconds each); other jobs on the machine skew
them, so the load average is recorded next to each size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from benchmarks.common import emit, load_text, recall, rss_bytes, timed

DIM = 40
K = 10
NUM_QUERIES = 1000
NPROBES = (8, 16, 32)
CHUNK = 1 << 20
# Gaussian spread per dimension around a centre (before renormalising): cluster members sit
# ~0.43 apart, while a query's offset from its source point is ~0.06 (QUERY_NOISE * sqrt(40)),
# far below the distance to the nearest other cluster member: the exact NN is the source point.
CLUSTER_SPREAD = 0.05
QUERY_NOISE = 0.01
# cKDTree side by side only up to this size (the tutorial's matcher: ~36 s / 1000 queries at 1e6).
KDTREE_MAX = 1_000_000


def _progress(message: str) -> None:
    # stderr, so a long run shows where it is without mixing into the table on stdout
    print(f"[bench_index {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clusters_for(num_vectors: int) -> int:
    """Number of Gaussian clusters for a gallery size (MEASURED.md: 1000 up to 1e6, then 4000)."""
    return 1000 if num_vectors <= 1_000_000 else 4000


def clustered_chunks(num_vectors: int, dim: int = DIM, seed: int = 0, chunk: int = CHUNK,
                     clusters: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, float32 (m, dim) unit vectors) chunk by chunk, deterministically.

    Each chunk has its own generator keyed by (seed, chunk number), so a chunk does not depend
    on how the previous ones were consumed and the stream repeats exactly.

    Args:
        num_vectors: total vectors.
        dim: dimension.
        seed: seed of the centres and of every chunk.
        chunk: vectors per chunk (bounds the temporary memory to a few times chunk * dim * 4).
        clusters: number of centres (default: clusters_for(num_vectors)).
    """
    clusters = clusters or clusters_for(num_vectors)
    centres = _unit(np.random.default_rng([seed, 1 << 30]).standard_normal((clusters, dim),
                                                                           dtype=np.float32))
    for number, start in enumerate(range(0, num_vectors, chunk)):
        m = min(chunk, num_vectors - start)
        rng = np.random.default_rng([seed, number])
        x = rng.standard_normal((m, dim), dtype=np.float32)
        x *= CLUSTER_SPREAD
        x += centres[rng.integers(clusters, size=m)]
        yield start, _unit(x)


def ivfpq_factory(num_vectors: int, dim: int = DIM) -> str:
    """The IVF-PQ factory measured: auto_factory's lists for this size (those of its switch-over
    size below FLAT_MAX_VECTORS) with its PQ codec. auto itself picks SQ8 up to
    SQ8_MAX_VECTORS (eval_index_real measures why on real descriptors); this stage keeps
    measuring the PQ codec that larger galleries get, whose synthetic recall is optimistic."""
    from delfx.index.faiss_index import FLAT_MAX_VECTORS, ivf_lists, pq_codec
    return f"IVF{ivf_lists(max(num_vectors, FLAT_MAX_VECTORS))},{pq_codec(dim)}"


def train_size_for(index, num_vectors: int) -> int:
    """Training-sample size, as delfx.index.faiss_index.build_index chooses it (kept in step
    by hand: build_index computes it inline)."""
    import faiss
    nlist = faiss.extract_index_ivf(index).nlist
    return min(num_vectors, max(64 * nlist, 100_000), 1_000_000)


# --quick: PQ20 training takes 20-40 s here even on 40k vectors (20 k-means of 256 centroids in
# 2-d, ~1 s each: distance-count bound, not flops), so the smoke run uses a small IVF on the
# smallest sample FAISS accepts without a warning (39 points per list); the full run measures
# the real factory.
QUICK_FACTORY, QUICK_TRAIN_SIZE = "IVF256,PQ20", 10_000
# Up to this size (not with --quick) the same factory is also trained with FAISS's polysemous
# training left on (index_factory's default for "PQ<m>" without "np"; build_index turns it off),
# to show what it would cost.
POLYSEMOUS_COMPARE_MAX = 1_000_000


def delfx_ivfpq(factory: str):
    """faiss.index_factory(DIM, factory) configured as delfx's build_index configures it:
    polysemous training off (delfx never searches with polysemous codes)."""
    import faiss
    index = faiss.index_factory(DIM, factory)
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf) if ivf is not None else None
    if inner is not None and hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    return index


def serialised_bytes(index, folder: Path) -> int:
    """Size of the index as faiss.write_index stores it (what `delfx build-index` writes).

    A temp file rather than faiss.serialize_index: the latter makes an in-memory copy, 1.6 GB
    for Flat at 1e7.
    """
    import faiss
    path = Path(folder) / "bench.faiss"
    faiss.write_index(index, str(path))
    try:
        return path.stat().st_size
    finally:
        path.unlink()


def _search_stats(t: dict[str, float]) -> dict[str, Any]:
    return {**t, "ms_per_1000_queries": t["median_s"] * 1e3 * 1000 / NUM_QUERIES,
            "queries_per_s": NUM_QUERIES / t["median_s"]}


def run_size(num_vectors: int, repeats: int, seed: int, workdir: Path, kdtree: bool,
             factory: str | None = None, train_size: int | None = None,
             compare_polysemous: bool = False) -> dict[str, Any]:
    """Build Flat and IVF-PQ over `num_vectors` synthetic vectors, search, compare.

    Args:
        num_vectors: gallery size.
        repeats: timing repeats of the fast searches (medians reported).
        seed: data seed.
        workdir: scratch folder for serialising the indexes.
        kdtree: also run cKDTree on the same data (keeps the whole array in memory).
        factory: IVF-PQ factory string (default: ivfpq_factory(num_vectors)).
        train_size: IVF-PQ training vectors (default: as build_index chooses).
        compare_polysemous: also time training with FAISS's polysemous training on.

    Returns:
        a JSON-ready dict of the figures for this size.
    """
    import faiss
    from delfx.index.faiss_index import auto_factory, estimate_bytes

    load_before = os.getloadavg()
    _progress(f"{num_vectors:,} vectors: generate, train, add")
    auto = auto_factory(num_vectors, DIM)
    factory = factory or ivfpq_factory(num_vectors)
    flat = faiss.IndexFlatL2(DIM)
    ivfpq = delfx_ivfpq(factory)
    train_size = min(num_vectors, train_size or train_size_for(ivfpq, num_vectors))

    # Queries: noisy copies of random gallery points, picked while the stream goes by.
    rng = np.random.default_rng([seed, 7])
    sources = np.sort(rng.choice(num_vectors, NUM_QUERIES, replace=False))
    queries = np.empty((NUM_QUERIES, DIM), np.float32)
    kept = [] if kdtree else None

    flat_add = ivf_add = ivf_train = generate = 0.0
    polysemous: dict[str, float] | None = None
    buffered: list[np.ndarray] = []  # chunks waiting for IVF-PQ training (at most ~1M vectors)
    have = 0
    t0 = time.perf_counter()
    for start, x in clustered_chunks(num_vectors, DIM, seed):
        generate += time.perf_counter() - t0
        lo, hi = np.searchsorted(sources, [start, start + len(x)])
        queries[lo:hi] = x[sources[lo:hi] - start]
        if kept is not None:
            kept.append(x)
        t = time.perf_counter()
        flat.add(x)
        flat_add += time.perf_counter() - t
        if not ivfpq.is_trained:
            buffered.append(x)
            have += len(x)
            if have >= train_size or start + len(x) >= num_vectors:
                # The stream is i.i.d., so its first train_size vectors are a uniform sample,
                # like build_index's: no second pass over the data needed.
                sample = np.concatenate(buffered)[:train_size]
                t = time.perf_counter()
                ivfpq.train(sample)
                ivf_train = time.perf_counter() - t
                if compare_polysemous and not factory.endswith("np"):
                    polysemous = _polysemous_cost(factory, sample, ivf_train)
                del sample
                for b in buffered:
                    t = time.perf_counter()
                    ivfpq.add(b)
                    ivf_add += time.perf_counter() - t
                buffered = []
        else:
            t = time.perf_counter()
            ivfpq.add(x)
            ivf_add += time.perf_counter() - t
        del x
        t0 = time.perf_counter()
    queries += QUERY_NOISE * np.random.default_rng([seed, 8]).standard_normal(
        queries.shape, dtype=np.float32)
    _unit(queries)

    _progress(f"{num_vectors:,} vectors: built (IVF-PQ train {ivf_train:.0f} s, add {ivf_add:.0f} s); "
              f"serialise and search")
    sizes = {"Flat": serialised_bytes(flat, workdir), factory: serialised_bytes(ivfpq, workdir)}
    memory_after_build = rss_bytes()

    # Exact ground truth = the Flat search itself. At 1e7 one Flat search of 1000 queries takes
    # about a minute, so it runs once there.
    exact: dict[str, np.ndarray] = {}

    def flat_search() -> None:
        exact["ids"] = flat.search(queries, K)[1]

    flat_t = _search_stats(timed(flat_search, 1 if num_vectors >= 10_000_000 else repeats))
    ivf = faiss.extract_index_ivf(ivfpq)
    probes = {}
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        got: dict[str, np.ndarray] = {}

        def ivf_search() -> None:
            got["ids"] = ivfpq.search(queries, K)[1]

        probes[str(nprobe)] = {**_search_stats(timed(ivf_search, repeats)),
                               **recall(got["ids"], exact["ids"])}
    self_found = float(np.mean(exact["ids"][:, 0] == sources))

    result: dict[str, Any] = {
        "vectors": num_vectors, "dim": DIM, "clusters": clusters_for(num_vectors),
        "auto_factory": auto, "ivfpq_factory": factory, "train_size": int(train_size),
        "faiss_threads": faiss.omp_get_max_threads(),
        "exact_top1_is_source": self_found, "generate_s": generate,
        "flat": {"train_s": 0.0, "add_s": flat_add, "bytes": sizes["Flat"],
                 "bytes_per_vector": sizes["Flat"] / num_vectors,
                 "estimate_bytes": estimate_bytes("Flat", num_vectors, DIM),
                 "search": flat_t},
        "ivfpq": {"train_s": ivf_train, "polysemous_compare": polysemous,
                  "add_s": ivf_add, "bytes": sizes[factory],
                  "bytes_per_vector": sizes[factory] / num_vectors,
                  # estimate_bytes cannot parse "PQ20np" (ValueError, e.g. with --factory); the
                  # "np" suffix changes nothing in memory, so the plain factory's estimate holds.
                  "estimate_bytes": estimate_bytes(factory.removesuffix("np"), num_vectors, DIM),
                  "nprobe": probes},
        "memory_after_build": memory_after_build,
    }
    del flat, ivfpq

    if kept is not None:
        _progress(f"{num_vectors:,} vectors: cKDTree")
        result["kdtree"] = _kdtree(np.concatenate(kept), queries, exact["ids"])
        del kept
        kd = result["kdtree"]
        result["ratios"] = {
            "kdtree_w1_query_over_flat": kd["query_workers1_s"] / flat_t["median_s"],
            **{f"kdtree_w1_query_over_ivfpq_nprobe{p}":
               kd["query_workers1_s"] / probes[str(p)]["median_s"] for p in NPROBES},
            "kdtree_wall_query_over_flat": kd["query_all_workers_s"] / flat_t["median_s"],
            # whole job, build + 1000 queries: what a one-off matcher pays
            "kdtree_w1_build_query_over_flat_build_search":
                (kd["build_s"] + kd["query_workers1_s"]) / (flat_add + flat_t["median_s"]),
            "kdtree_w1_build_query_over_ivfpq16_build_search":
                (kd["build_s"] + kd["query_workers1_s"])
                / (ivf_train + ivf_add + probes["16"]["median_s"]),
        }
    result["memory_peak"] = rss_bytes()["peak_rss"]
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return result


def _polysemous_cost(factory: str, sample: np.ndarray, first_off_s: float) -> dict[str, float]:
    """Training time with polysemous training off (as build_index) and on (FAISS's default).

    Off-on-on-off on the same sample, the first "off" being the build itself (first_off_s):
    FAISS's OpenMP training slows down several-fold when other jobs take a core, so a single
    off/on pair measured a minute apart can say the opposite of the truth; the symmetric order
    cancels a linear drift of the load.
    """
    import faiss
    times = {"off": [first_off_s], "on": []}
    for mode in ("on", "on", "off"):
        index = faiss.index_factory(DIM, factory) if mode == "on" else delfx_ivfpq(factory)
        start = time.perf_counter()
        index.train(sample)
        times[mode].append(time.perf_counter() - start)
    return {"off_s": float(np.mean(times["off"])), "on_s": float(np.mean(times["on"])),
            "off_runs": times["off"], "on_runs": times["on"]}


def _kdtree(data: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """cKDTree build and 1000 k=10 queries: workers=1 (the DELF tutorial) and all cores.

    One run each: a query pass takes tens of seconds at 1e6.
    """
    from scipy.spatial import cKDTree
    start = time.perf_counter()
    tree = cKDTree(data)
    build = time.perf_counter() - start
    start = time.perf_counter()
    _, ids = tree.query(queries, k=K, workers=1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    tree.query(queries, k=K, workers=-1)
    every = time.perf_counter() - start
    return {"build_s": build, "query_workers1_s": one, "query_all_workers_s": every,
            "ms_per_1000_queries_workers1": one * 1e3 * 1000 / NUM_QUERIES,
            "queries_per_s_workers1": NUM_QUERIES / one,
            **recall(ids, exact)}


def parse_sizes(text: str) -> list[int]:
    """'1e6,1e7' -> [1000000, 10000000]."""
    return [int(float(s)) for s in text.split(",") if s.strip()]


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Readable rows for one size."""
    n = r["vectors"]
    tag = f"{n:.0e}".replace("e+0", "e")
    flat, ivf = r["flat"], r["ivfpq"]
    la = r["load_average"]
    rows = [
        (f"[{tag}] data", f"{n:,} x {r['dim']}-d unit vectors, {r['clusters']} clusters; "
         f"auto_factory -> {r['auto_factory']}; IVF-PQ measured: {r['ivfpq_factory']}"),
        (f"[{tag}] load average", load_text(la, f", FAISS threads {r['faiss_threads']}")),
        (f"[{tag}] Flat build", f"add {flat['add_s']:.3f} s; {_mb(flat['bytes'])} serialised "
         f"({flat['bytes_per_vector']:.1f} B/vector; estimate_bytes {_mb(flat['estimate_bytes'])})"),
        (f"[{tag}] {r['ivfpq_factory']} build",
         f"train {ivf['train_s']:.2f} s on {r['train_size']:,} + add {ivf['add_s']:.2f} s; "
         f"{_mb(ivf['bytes'])} serialised ({ivf['bytes_per_vector']:.1f} B/vector; "
         f"estimate_bytes {_mb(ivf['estimate_bytes'])})"),
        (f"[{tag}] Flat search", f"{flat['search']['ms_per_1000_queries']:,.0f} ms / 1000 queries "
         f"({flat['search']['queries_per_s']:,.0f} q/s); exact top-1 = source point "
         f"{r['exact_top1_is_source']:.3f}"),
    ]
    if ivf["polysemous_compare"] is not None:
        pc = ivf["polysemous_compare"]
        rows.append((f"[{tag}] polysemous training",
                     f"train off {pc['off_s']:.1f} s vs on {pc['on_s']:.1f} s (FAISS's default for "
                     f"'{r['ivfpq_factory']}'; build_index turns it off; means of an "
                     f"off-on-on-off sequence)"))
    for p, s in ivf["nprobe"].items():
        rows.append((f"[{tag}] IVF-PQ nprobe {p}",
                     f"{s['ms_per_1000_queries']:,.1f} ms / 1000 queries ({s['queries_per_s']:,.0f} "
                     f"q/s); recall@1 {s['recall_at_1']:.3f}, recall@10 {s['recall_at_10']:.3f}, "
                     f"NN in top-10 {s['nn_in_top10']:.3f}"))
    if "kdtree" in r:
        kd, ra = r["kdtree"], r["ratios"]
        rows += [
            (f"[{tag}] cKDTree", f"build {kd['build_s']:.2f} s; {kd['ms_per_1000_queries_workers1']:,.0f} "
             f"ms / 1000 queries workers=1 ({kd['queries_per_s_workers1']:,.0f} q/s), "
             f"{kd['query_all_workers_s'] * 1e3:,.0f} ms workers=-1; recall@1 {kd['recall_at_1']:.3f}"),
            (f"[{tag}] cKDTree(w=1) / FAISS query", f"Flat {ra['kdtree_w1_query_over_flat']:.1f}x, "
             + ", ".join(f"IVF-PQ nprobe {p} {ra[f'kdtree_w1_query_over_ivfpq_nprobe{p}']:.0f}x"
                         for p in NPROBES)),
            (f"[{tag}] build + 1000 queries", f"cKDTree / Flat "
             f"{ra['kdtree_w1_build_query_over_flat_build_search']:.1f}x, cKDTree / IVF-PQ nprobe 16 "
             f"{ra['kdtree_w1_build_query_over_ivfpq16_build_search']:.2f}x (IVF-PQ training "
             f"included)"),
        ]
    rows.append((f"[{tag}] memory", f"RSS after build {_mb(r['memory_after_build']['rss'])}, "
                 f"process peak so far {_mb(r['memory_peak'])}"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run the sizes, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[1_000_000, 10_000_000],
                        help="comma-separated gallery sizes, e.g. 1e6,1e7")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factory", help="IVF-PQ factory (default: ivfpq_factory's)")
    parser.add_argument("--train-size", type=int, help="IVF-PQ training vectors "
                        "(default: as build_index chooses)")
    parser.add_argument("--quick", action="store_true",
                        help=f"1e5 vectors only, {QUICK_FACTORY} trained on {QUICK_TRAIN_SIZE:,}: "
                             f"< 1 min")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [100_000]
        args.factory = args.factory or QUICK_FACTORY
        args.train_size = args.train_size or QUICK_TRAIN_SIZE
    # cKDTree runs at the largest requested size it can afford (1e6; 1e5 with --quick).
    kd_size = max((n for n in args.sizes if n <= KDTREE_MAX), default=None)
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="delfx-bench-index-") as workdir:
        for n in args.sizes:
            sizes[str(n)] = run_size(n, args.repeats, args.seed, Path(workdir), kdtree=n == kd_size,
                                     factory=args.factory, train_size=args.train_size,
                                     compare_polysemous=not args.quick
                                     and n <= POLYSEMOUS_COMPARE_MAX)
    results = {"params": {"sizes": args.sizes, "dim": DIM, "k": K, "queries": NUM_QUERIES,
                          "nprobes": list(NPROBES), "repeats": args.repeats, "seed": args.seed,
                          "factory": args.factory or "auto", "train_size": args.train_size or "auto",
                          "cluster_spread": CLUSTER_SPREAD, "query_noise": QUERY_NOISE},
               "sizes": sizes}
    table = [row for r in sizes.values() for row in table_rows(r)]
    emit("index", results, table, args.json)
    return results


if __name__ == "__main__":
    main()
