"""`delfx search` as a resumable job over query chunks (delfx.query_job): in this process, or
on Ray workers that each load the index (memory-mapped, so the workers of one machine share
it) and the gallery once; an index in parts is loaded once as one Ray actor per part, shared by
every worker. The output is the same bytes as `run_search` streams, however it was produced.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from delfx.digests import combined_sha256, file_sha256, folder_sha256
from delfx.errors import DelfxError
from delfx.index.search import RESULT_FIELDS, Result, SearchConfig, search_many
from delfx.store import FeatureSet
from delfx.store.schema import MANIFEST_NAME

log = logging.getLogger(__name__)


def index_digest(index_dir: Path) -> str:
    """What identifies an index's content: its index.json or parts.json (each records the
    sha256 of the files it describes), and global.json when there is one."""
    from delfx.index.faiss_index import META_FILE, PARTS_FILE, is_parts_dir
    from delfx.index.global_index import META_FILE as GLOBAL_META_FILE
    index_dir = Path(index_dir)
    names = [PARTS_FILE if is_parts_dir(index_dir) else META_FILE, GLOBAL_META_FILE]
    return combined_sha256(file_sha256(index_dir / n) for n in names if (index_dir / n).is_file())


def check_digest(path: Path, expected: str, digest) -> None:
    """Refuse an input that differs from the one the driver planned with (a worker on another
    node may read another copy)."""
    found = digest(path)
    if found != expected:
        raise DelfxError(f"{path}: differs from the driver's copy (sha256 {found[:12]}, the "
                         f"driver's {expected[:12]}): every node must read the same files")


class SearchProcessor:
    """Searches chunks of queries: the index, the gallery and the query reader loaded once."""

    def __init__(self, spec: dict[str, Any], threads: int | None = None):
        from delfx.extractor.queries import Queries
        from delfx.index.faiss_index import check_compatible
        from delfx.index.parts import open_index
        self.spec = spec
        gallery_dir, index_dir = Path(spec["gallery"]), Path(spec["index"])
        check_digest(gallery_dir / MANIFEST_NAME, spec["digests"]["gallery"], file_sha256)
        check_digest(index_dir, spec["digests"]["index"], index_digest)
        self.gallery = FeatureSet(gallery_dir, require_complete=False)
        self.config = SearchConfig(**{**spec["config"], "workers": threads or None})
        # memory-mapped unless the spec says not (a benchmark compares the two)
        self.index = open_index(index_dir, searchers=spec.get("searchers"),
                                mmap=spec.get("mmap", True))
        check_compatible(self.index.meta, self.gallery, index_dir)
        self.global_index = self.global_model = None
        if spec["global_shortlist"]:
            from delfx.index.global_index import GlobalIndex
            self.global_index = GlobalIndex.load(index_dir)
            if spec.get("global_model"):
                from delfx.globalnet.model import load_global_model
                self.global_model = load_global_model(Path(spec["global_model"]))
                self.global_index.check_query_model(self.global_model.describe(),
                                                    spec["global_model"])
        self.queries = Queries(Path(spec["queries"]), self.gallery, list_images=False)
        if spec["global_shortlist"]:
            self.queries.check_global(self.global_model)

    def describe(self) -> dict[str, Any]:
        return {"index_vectors": int(self.index.meta.num_vectors)}

    def process(self, chunk: list[tuple[str, str | None]]) -> list[list[dict]]:
        """Each query's results (as Result.to_json rows), in the chunk's order."""
        records = self.queries.records_of(chunk, self.global_model)
        return [[r.to_json() for r in results] for _, results in
                search_many(records, self.index, self.gallery, self.config,
                            self.spec["exclude_self"], self.global_index)]


def make_processor(spec: dict[str, Any], threads: int | None = None) -> SearchProcessor:
    return SearchProcessor(spec, threads)


def write_results(handle, fmt: str, results: Iterator[tuple[str, list]]) -> None:
    """Search results as JSON lines or CSV: one row per result, and one empty row for a query
    that found nothing (or could not be extracted), so outputs line up with inputs. Results
    are Result objects or their to_json rows."""
    import csv
    import json
    writer = csv.writer(handle) if fmt == "csv" else None
    if writer:
        writer.writerow(RESULT_FIELDS)
    for query, query_results in results:
        rows = [r.to_json() if isinstance(r, Result) else r for r in query_results] or [
            {name: (query if name == "query" else None) for name in RESULT_FIELDS}]
        for row in rows:
            if writer:
                writer.writerow(["" if row[n] is None else row[n] for n in RESULT_FIELDS])
            else:
                handle.write(json.dumps(row) + "\n")
        handle.flush()


def run_search_job(index_dir: Path, gallery_dir: Path, queries: Path, out: Path, *,
                   fmt: str = "jsonl", settings: dict | None = None,
                   exclude_self: bool = False, global_shortlist: bool = False,
                   global_model_dir: Path | None = None, ray: dict[str, Any] | None = None,
                   workers: int | None = None, chunk_size: int | None = None,
                   progress: bool = True, matches_out: Path | None = None) -> dict[str, Any]:
    """`delfx search --out`: search every query as a resumable job, write `out` atomically in
    query order; the run's summary.

    Args:
        ray: None: in this process; else {"address": ...}: Ray workers (a local instance on
            127.0.0.1 unless an address); an index in parts is one actor per part.
        workers: Ray workers (default: as many as the cluster's CPUs hold).
        chunk_size: queries per chunk (query_job.DEFAULT_CHUNK_SIZE).
        matches_out: also write each (query, result) pair's matches and inliers as hloc's
            matches.h5 (a query feature set only): after the output, on the driver, each pair
            verified again exactly as the search did (top x queries pairs).
    """
    from delfx.extractor.queries import Queries
    from delfx.index.faiss_index import check_compatible, is_parts_dir
    from delfx.index.faiss_index import IndexMeta
    from delfx.paths import atomic_text_output
    from delfx.query_job import DEFAULT_CHUNK_SIZE, InProcessPool, RayPool, run_query_job
    started = time.monotonic()
    index_dir, gallery_dir, queries = Path(index_dir), Path(gallery_dir), Path(queries)
    with FeatureSet(gallery_dir, require_complete=False) as gallery:
        config = SearchConfig.for_model(gallery.manifest.model_id, **(settings or {}))
        query_set = Queries(queries, gallery)  # cheap checks first
        if matches_out is not None and query_set.feature_set is None:
            raise DelfxError("--matches-out needs QUERIES as a feature set (their keypoints are "
                             "what the matches index): extract them first")
        if matches_out is not None:  # refused now, not after the search
            from delfx.interop import HLOC_MATCHES, check_output
            check_output(Path(matches_out), HLOC_MATCHES, overwrite=True)
        if not is_parts_dir(index_dir):
            check_compatible(IndexMeta.load(index_dir), gallery, index_dir)
        if global_shortlist:
            from delfx.index.global_index import GlobalIndex
            if not GlobalIndex.exists(index_dir):
                raise DelfxError(f"{index_dir} has no global index: extract the gallery with "
                                 f"--global-model, then build-index")
        # the global model and index are loaded (and checked against each other and the
        # queries) once, by the processor: not here as well
        items = query_set.job_items()
        digests = {"gallery": file_sha256(gallery_dir / MANIFEST_NAME),
                   "index": index_digest(index_dir), "queries": query_set.digest()}
    spec = {"gallery": str(gallery_dir.resolve()), "index": str(index_dir.resolve()),
            "queries": str(queries.resolve()), "digests": digests,
            "config": dataclasses.asdict(config), "exclude_self": exclude_self,
            "global_shortlist": global_shortlist,
            "global_model": str(Path(global_model_dir).resolve()) if global_model_dir else None}
    identity = {"job": "search", "format": fmt, "digests": digests,
                "config": {k: v for k, v in spec["config"].items() if k != "workers"},
                "exclude_self": exclude_self, "global_shortlist": global_shortlist,
                "global_model": folder_sha256(global_model_dir) if global_model_dir else None}
    parts = None
    if ray is not None and is_parts_dir(index_dir):
        from delfx.index.parts import IndexParts
        parts = IndexParts(index_dir, ray={**ray, "part_cpus": 0})  # shared by the workers
        spec["searchers"] = parts.searchers
    pool = (RayPool(make_processor, spec, address=(ray or {}).get("address"),
                    verbosity=(ray or {}).get("verbosity", 0), connected=parts is not None)
            if ray is not None else InProcessPool(lambda: SearchProcessor(spec)))

    pairs: list[tuple[str, str]] = []

    def write(rows) -> None:
        def recorded():
            for query, results in rows:
                pairs.extend((query, r["gallery_id"]) for r in results)
                yield query, results
        with atomic_text_output(out) as handle:
            write_results(handle, fmt, recorded())

    try:
        summary = run_query_job(items, out, identity, pool, write=write, what="search",
                                chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, workers=workers,
                                progress=progress, started=started)
    finally:
        if parts is not None:
            parts.close()
    written = {}
    if matches_out is not None:
        written["matches_out"] = str(matches_out)
        written["matched_pairs"] = write_search_matches(pairs, gallery_dir, queries, config,
                                                        matches_out)
    return {"out": str(out), **summary.to_json(), **written}


def write_search_matches(pairs: list[tuple[str, str]], gallery_dir: Path, queries_dir: Path,
                         config: SearchConfig, out: Path) -> int:
    """hloc's matches.h5 of the (query id, gallery id) pairs: putative matches, RANSAC's
    inliers (`inliers0`) and transform, as search verified them; the number of pairs."""
    from delfx.index.search import pair_matches
    from delfx.interop import write_hloc_matches

    def matched():
        with FeatureSet(gallery_dir, require_complete=False) as gallery, \
                FeatureSet(queries_dir, require_complete=False) as query_set:
            for query_id, gallery_id in pairs:
                query, candidate = query_set.get(query_id), gallery.get(gallery_id)
                matches, verification = pair_matches(query, candidate, config)
                yield query_id, gallery_id, query.num_features, matches, verification

    return write_hloc_matches(matched(), out, overwrite=True)
