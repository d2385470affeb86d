"""Query jobs: queries/s of `delfx search --out` in process and on 1 and 2 Ray workers, and what
a worker holds in memory with the index memory-mapped and read.

The gallery and queries are benchmarks/real_gallery.py's (real delf-hybrid descriptors of views
of real photos; --quick: sample-data), the index `build_index`'s auto factory. The queries are
the stage's query photos, each written R times under new ids ("<id>#<r>"), so a run is long
enough to time and every copy costs the same. Each run is `run_search_job`, the code `delfx
search --out` runs, and the outputs of all runs must be the same bytes (checked: the job
resumed or not, in process or on Ray, gives one answer).

Memory: two processes each build what a job's worker holds (`SearchProcessor`: index, gallery,
query reader) and search every query, then, both alive, have their RSS, USS (pages only they
hold) and PSS (shared pages split between the processes that map them) read: once with the
index memory-mapped (IO_FLAG_MMAP, what workers use) and once read into memory.

    python -m benchmarks.eval_query_job --work DIR      # reuse eval_index_real's folder
    python -m benchmarks.eval_query_job --quick         # sample-data: < 2 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, emit, load_text
from benchmarks.data import resolve_data_dir
from benchmarks.real_gallery import prepare
from delfx.config import ExtractConfig

log = logging.getLogger(__name__)

RUNS = (("in-process", None, None), ("ray-1", {"address": None}, 1),
        ("ray-2", {"address": None}, 2))


def write_repeated(source: Path, out: Path, repeats: int) -> int:
    """The query feature set `source` written `repeats` times under new ids; how many."""
    from delfx.store import FeatureSet, Manifest, ShardWriter, shard_file_name
    shutil.rmtree(out, ignore_errors=True)  # this stage's own scratch folder
    out.mkdir(parents=True)
    with FeatureSet(source) as fs:
        m = fs.manifest
        records = [fs.get(i) for i in fs.image_ids]
        manifest = Manifest(num_shards=1, model_id=m.model_id, model_hash=m.model_hash,
                            config=m.config, descriptor_dim=m.descriptor_dim,
                            descriptor_dtype=m.descriptor_dtype, global_model=m.global_model,
                            descriptor_norm=m.descriptor_norm)
        writer = ShardWriter(out / shard_file_name(0, 1), descriptor_dim=m.descriptor_dim,
                             descriptor_dtype=m.descriptor_dtype, model_id=m.model_id,
                             model_hash=m.model_hash, config=m.config, shard_index=0,
                             num_shards=1, global_model=m.global_model)
        for r in range(repeats):
            for record in records:
                writer.add(replace(record, image_id=f"{record.image_id}#{r}"))
        manifest.record(out, writer.close())
    return repeats * len(records)


def timed_runs(index: Path, gallery: Path, queries: Path, work: Path, chunk_size: int
               ) -> dict[str, Any]:
    """Each of RUNS on the same queries; their summaries, and whether the outputs agree."""
    from delfx.index.search_job import run_search_job
    runs, outputs = {}, {}
    for name, ray, workers in RUNS:
        out = work / f"job-{name}.jsonl"
        out.unlink(missing_ok=True)
        summary = run_search_job(index, gallery, queries, out, ray=ray, workers=workers,
                                 chunk_size=chunk_size, progress=False)
        outputs[name] = out.read_bytes()
        busy = summary["seconds"] - summary["startup_seconds"]
        runs[name] = {**summary, "busy_seconds": busy}
        log.info("%s: %.2f queries/s after %.1f s start-up", name, summary["queries_per_s"],
                 summary["startup_seconds"])
        out.unlink()
    base = runs["ray-1"]["queries_per_s"]
    for row in runs.values():
        row["speedup_vs_ray_1"] = row["queries_per_s"] / base if base else None
        row["recording_share"] = row["recording_seconds"] / row["busy_seconds"]
    return {"runs": runs, "same_output": len(set(outputs.values())) == 1}


MEMORY_CHILD = """
import json, sys
from benchmarks.eval_query_job import worker_memory_child
worker_memory_child(json.loads(sys.argv[1]))
"""


def worker_memory_child(spec: dict[str, Any]) -> None:
    """A worker's load and work (the spec's mmap on or off), then 'ready' until stdin closes."""
    from delfx.index.search_job import SearchProcessor
    processor = SearchProcessor(spec, threads=1)
    items = processor.queries.job_items()
    for k in range(0, len(items), 16):
        processor.process(items[k:k + 16])
    print("ready", flush=True)
    sys.stdin.read()


def worker_memory(index: Path, gallery: Path, queries: Path, processes: int = 2
                  ) -> dict[str, Any]:
    """RSS, USS and PSS of `processes` workers alive together, index memory-mapped and read."""
    import dataclasses

    import psutil

    from delfx.digests import file_sha256
    from delfx.index.faiss_index import INDEX_FILE
    from delfx.index.search import SearchConfig
    from delfx.index.search_job import index_digest
    from delfx.store import FeatureSet
    from delfx.store.schema import MANIFEST_NAME
    with FeatureSet(gallery) as fs:
        config = SearchConfig.for_model(fs.manifest.model_id)
    spec = {"gallery": str(gallery), "index": str(index), "queries": str(queries),
            "digests": {"gallery": file_sha256(gallery / MANIFEST_NAME),
                        "index": index_digest(index)},
            "config": dataclasses.asdict(config), "exclude_self": False,
            "global_shortlist": False, "global_model": None}
    out: dict[str, Any] = {"index_file_bytes": (index / INDEX_FILE).stat().st_size,
                           "processes": processes}
    for mmap in (True, False):
        children = [subprocess.Popen([sys.executable, "-c", MEMORY_CHILD,
                                      json.dumps({**spec, "mmap": mmap})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=child_env())
                    for _ in range(processes)]
        try:
            for child in children:
                line = child.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"a memory child failed (exit {child.wait()})")
            infos = [psutil.Process(c.pid).memory_full_info() for c in children]
            out["mmap" if mmap else "read"] = {
                "rss_bytes": [i.rss for i in infos], "uss_bytes": [i.uss for i in infos],
                "pss_bytes": [i.pss for i in infos], "pss_total_bytes": sum(i.pss for i in infos)}
        finally:
            for child in children:
                child.stdin.close()
                child.wait(timeout=120)
    return out


def evaluate(work: Path, data_dir: Path | None, quick: bool, config: ExtractConfig,
             repeats: int, chunk_size: int) -> dict[str, Any]:
    from delfx.index.faiss_index import build_index
    prep = prepare(work, data_dir, quick, config)
    prep.pop("landmarks")
    load = {"before": list(os.getloadavg())}
    index = work / "index-query-job"
    shutil.rmtree(index, ignore_errors=True)  # this stage's own scratch folder
    t0 = time.perf_counter()
    meta = build_index(work / "gallery", index, factory="auto")
    build_s = time.perf_counter() - t0
    queries = work / f"queries-x{repeats}"
    count = write_repeated(work / "queries", queries, repeats)
    timing = timed_runs(index, work / "gallery", queries, work, chunk_size)
    memory = worker_memory(index, work / "gallery", queries)
    shutil.rmtree(index, ignore_errors=True)
    shutil.rmtree(queries, ignore_errors=True)
    load["after"] = list(os.getloadavg())
    return {"params": {**prep, "model": config.model, "precision": config.precision,
                       "repeats": repeats, "queries": count, "chunk_size": chunk_size,
                       "quick": quick, "factory": meta.factory, "nprobe": meta.nprobe,
                       "index_vectors": meta.num_vectors, "index_build_s": build_s,
                       "cpus": os.cpu_count()},
            **timing, "memory": memory, "load_average": load}


def table_for(results: dict[str, Any]) -> list[tuple[str, str]]:
    p, mem = results["params"], results["memory"]
    table = [("gallery", f"{p['gallery_images']} views of real photos ({p['model']}, "
                         f"{p['precision']}): {p['index_vectors']:,} vectors, {p['factory']} "
                         f"nprobe {p['nprobe']}"),
             ("queries", f"{p['query_photos']} other photos x {p['repeats']} = {p['queries']}, "
                         f"{p['chunk_size']} per chunk"),
             ("load", load_text(results["load_average"]))]
    for name, r in results["runs"].items():
        table.append((f"search job, {name}", f"{r['queries_per_s']:.2f} queries/s after "
                      f"{r['startup_seconds']:.1f} s start-up ({r['workers']} worker(s); x"
                      f"{r['speedup_vs_ray_1']:.2f} one Ray worker); the driver's recording "
                      f"{100 * r['recording_share']:.2f}% of the run"))
    table.append(("outputs", "identical bytes in every run" if results["same_output"]
                  else "DIFFER between runs"))
    for kind in ("mmap", "read"):
        m = mem[kind]
        table.append((f"worker memory, index {'memory-mapped' if kind == 'mmap' else 'read'}",
                      f"{mem['processes']} workers alive: RSS "
                      f"{', '.join(f'{b / 1e6:.0f}' for b in m['rss_bytes'])} MB, USS "
                      f"{', '.join(f'{b / 1e6:.0f}' for b in m['uss_bytes'])} MB, PSS total "
                      f"{m['pss_total_bytes'] / 1e6:.0f} MB (index file "
                      f"{mem['index_file_bytes'] / 1e6:.0f} MB)"))
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: ../shared/data "
                        "next to the project, or $DELFX_SHARED_DATA)")
    parser.add_argument("--quick", action="store_true", help="sample-data")
    parser.add_argument("--work", type=Path, help="keep views and features here "
                        "(eval_index_real's --work folder is reused as it is)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="copies of each query (default 6; --quick 4)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--precision", default="int8", choices=("float32", "int8"))
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("delfx", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = resolve_data_dir(args.data)
    if args.quick or not (data_dir / "landmarks-dev" / "labels.csv").is_file():
        data_dir = None
    config = ExtractConfig(model="delf-hybrid", precision=args.precision,
                           max_side=512 if args.quick else 1024)
    repeats = args.repeats or (4 if args.quick else 6)
    with tempfile.TemporaryDirectory(prefix="delfx-query-job-") as scratch:
        work = args.work or Path(scratch)
        results = evaluate(work, data_dir, args.quick, config, repeats, args.chunk_size)
    emit("query_job", results, table_for(results), args.json)
    return results


if __name__ == "__main__":
    main()
