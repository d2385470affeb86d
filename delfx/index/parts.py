"""A gallery index in parts: one FAISS index per group of gallery shards, searched part by part
and merged by distance (the semantics of FAISS's IndexShards), in this process or with one Ray
actor per part on as many nodes as the cluster has.

Why: a local-descriptor index over a GLR-size gallery (~3e9 vectors, ~150 GB even as IVF-SQ8)
does not fit one machine. Every part is trained from ONE sample (the coarse quantizer and the
codec are the same object, cloned), so part p holds exactly the codes the single index would
hold for its vectors and scans the same lists: the merged k nearest neighbours are the single
index's, ties aside (tests/index/test_parts.py checks it). Feature shard s goes to part
s % parts.

An index folder in parts holds

* `parts.json`  format "delfx-index-parts": the factory, nprobe, model, and per part its folder
                name, its feature shards and the sha256 of its index.json;
* `part-<p>-of-<P>/`  an ordinary delfx index folder (index.json, index.faiss, mapping.h5) over
                its shards;
* the global index of the whole gallery when the features have global descriptors.

Loading checks every part as a single index is checked (sha256 of its files), and that it is
the part parts.json names (its index.json's sha256); folder names are fixed patterns, never
paths. With Ray every node that may host a part must read the index folder at the same path.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from delfx.artifacts import header, read_json_artifact
from delfx.config import DEFAULT_NPROBE
from delfx.digests import file_sha256
from delfx.errors import DelfxError
from delfx.index.faiss_index import (META_FILE, PARTS_FILE, PARTS_FORMAT, GalleryIndex,
                                     ImageTablePositions, IndexMeta, add_shards, check_index_output, global_index_of, index_meta,
                                     is_parts_dir, trained_index, write_index_files)
from delfx.paths import atomic_write_json, write_directory_atomically
from delfx.store import FeatureSet, require_intact
from delfx.versions import library_versions

log = logging.getLogger(__name__)

FORMAT_NAME, FORMAT_VERSION = PARTS_FORMAT, 1
PLACE_TIMEOUT_S = 300  # loading every part on the cluster (each reads and checks its files)


def part_name(p: int, parts: int) -> str:
    return f"part-{p:05d}-of-{parts:05d}"


def build_index_parts(feature_dir: Path, out_dir: Path, parts: int, *, factory: str = "auto",
                      nprobe: int = DEFAULT_NPROBE, train_size: int | None = None, seed: int = 0,
                      overwrite: bool = False, memory_limit: int | None = None
                      ) -> dict[str, Any]:
    """Build the index of every descriptor in `parts` parts (one trained quantizer); returns
    parts.json's content. Written beside out_dir and swapped in, like a single index."""
    import faiss
    out_dir, feature_dir = Path(out_dir), Path(feature_dir)
    if parts < 1:
        raise DelfxError(f"--parts must be >= 1, got {parts}")
    check_index_output(out_dir, feature_dir, overwrite)
    require_intact(feature_dir)
    with FeatureSet(feature_dir, require_complete=False) as fs:
        shards = list(fs.shard_indices)
        if len(shards) < parts:
            raise DelfxError(f"{feature_dir} has {len(shards)} feature shards, fewer than the "
                             f"{parts} parts asked for (a part holds whole shards)")
        factory, trained = trained_index(fs, factory, train_size=train_size, seed=seed,
                                         memory_limit=memory_limit, parts=parts)
        # dealt round-robin: shard s in part s % parts for a complete set (a partial one may
        # miss shard numbers, and no part may be left empty)
        groups = [shards[p::parts] for p in range(parts)]
        global_index = global_index_of(fs)
        document: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            entries, total = [], 0
            for p, group in enumerate(groups):
                index = faiss.clone_index(trained)
                mapping = add_shards(index, fs, None, only=set(group))
                meta = index_meta(fs, factory, nprobe,
                                  {s: fs.manifest.shards[s].sha256 for s in group}, index, mapping)
                folder = tmp / part_name(p, parts)
                folder.mkdir()
                write_index_files(folder, index, mapping, meta)
                entries.append({"folder": folder.name, "shards": group,
                                "num_vectors": meta.num_vectors, "num_images": meta.num_images,
                                "index_json_sha256": file_sha256(folder / META_FILE)})
                total += meta.num_vectors
                log.info("part %d/%d: shards %s, %d vectors", p + 1, parts, group,
                         meta.num_vectors)
                del index
            if global_index is not None:
                global_index.save(tmp)
            document.update({**header(FORMAT_NAME, FORMAT_VERSION),
                             "model": {"id": fs.manifest.model_id, "hash": fs.manifest.model_hash},
                             "dim": fs.descriptor_dim, "factory": factory, "nprobe": nprobe,
                             "num_vectors": total, "parts": entries,
                             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                 timespec="seconds"), "versions": library_versions()})
            atomic_write_json(tmp / PARTS_FILE, document)  # last: it marks a complete index

        write_directory_atomically(out_dir, write,
                                   lambda: check_index_output(out_dir, feature_dir, overwrite))
    return document


@dataclass
class _Images:
    """The merged image table: part p's image rows follow those of parts 0..p-1."""

    image_ids: list[str]


def read_parts(folder: Path) -> dict[str, Any]:
    """parts.json, checked: format, fixed folder names, disjoint shards."""
    path = Path(folder) / PARTS_FILE
    data = read_json_artifact(path, FORMAT_NAME, {FORMAT_VERSION}, what="delfx index in parts",
                              advice="rebuild it with this delfx")
    try:
        entries = data["parts"]
        count = len(entries)
        seen: set[int] = set()
        for p, entry in enumerate(entries):
            if entry["folder"] != part_name(p, count):
                raise ValueError(f"part {p} is named {entry['folder']!r}, not "
                                 f"{part_name(p, count)!r}")
            shards = {int(s) for s in entry["shards"]}
            if shards & seen:
                raise ValueError(f"shards {sorted(shards & seen)} are in two parts")
            seen |= shards
            if not isinstance(entry["index_json_sha256"], str):
                raise ValueError("index_json_sha256 is not a digest")
        if not count:
            raise ValueError("no parts")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DelfxError(f"{path}: malformed index-in-parts metadata ({exc}); rebuild the index "
                         f"(build-index --parts N --overwrite)") from None
    return data


def part_folders(folder: Path, data: dict[str, Any]) -> list[Path]:
    """Each part's folder, after checking its index.json is the one parts.json names."""
    out = []
    for entry in data["parts"]:
        part = Path(folder) / entry["folder"]
        meta = part / META_FILE
        if not meta.is_file() or file_sha256(meta) != entry["index_json_sha256"]:
            raise DelfxError(f"{part}: missing, or not the part {Path(folder) / PARTS_FILE} was "
                             f"written with; rebuild the index (build-index --parts N "
                             f"--overwrite)")
        out.append(part)
    return out


class PartSearcher:
    """One part, loaded once: in this process, or as a Ray actor on any node."""

    def __init__(self, folder: str, nprobe: int | None = None):
        self.index = GalleryIndex(Path(folder), nprobe=nprobe)

    def describe(self) -> dict[str, Any]:
        node = None
        if "ray" in sys.modules:  # never import ray here: in process it would start Ray
            import ray
            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"image_ids": self.index.mapping.image_ids, "nprobe": self.index.nprobe,
                "node": node, "pid": os.getpid()}

    def search(self, descriptors: np.ndarray, k: int):
        return self.index.search(descriptors, k)


class IndexParts(ImageTablePositions):
    """An index in parts, searched as one: the GalleryIndex contract (meta, mapping.image_ids,
    mapping_positions, nprobe, search), so search and classify use it unchanged.

    Args:
        folder: the index folder (parts.json).
        nprobe: IVF lists searched per query (default: the one saved).
        ray: None to search the parts in this process; else a dict of Ray settings
            ({"address": ..., "verbosity": ...}): one actor per part, one CPU each.
        searchers: the part actors of an IndexParts opened with `ray` (`.searchers`), to
            share them (from a query job's workers) instead of loading the parts again.
    """

    def __init__(self, folder: Path, *, nprobe: int | None = None,
                 ray: dict[str, Any] | None = None, searchers: list | None = None):
        self.folder = Path(folder)
        self.data = read_parts(self.folder)
        folders = part_folders(self.folder, self.data)
        self.started_ray = False
        if searchers is not None:  # the actors of another IndexParts (a query job's workers)
            import ray as ray_module
            self._searchers = list(searchers)
            described = ray_module.get([s.describe.remote() for s in self._searchers],
                                       timeout=PLACE_TIMEOUT_S)
            self._remote = True
        elif ray is None:
            self._searchers = [PartSearcher(str(f), nprobe) for f in folders]
            described = [s.describe() for s in self._searchers]
            self._remote = False
        else:
            from delfx.ray_runtime import connect

            # connect before `import ray`: joining a cluster may set RAY_AUTH_MODE first
            self.started_ray = connect(ray.get("address"), verbosity=ray.get("verbosity", 0))
            import ray as ray_module
            # A part is memory held for searches: one CPU each where the cluster has them, a
            # share of them where it has fewer CPUs than parts (every part must be placed).
            # Shared by a query job's workers ("part_cpus": 0), it claims none: a worker waits
            # while its parts search, so the CPUs are the workers' to count.
            cpus = ray_module.cluster_resources().get("CPU", 1)
            share = ray.get("part_cpus", min(1.0, cpus / len(folders)))
            actor = ray_module.remote(PartSearcher).options(num_cpus=share, max_restarts=0)
            self._searchers = [actor.remote(str(f.resolve()), nprobe) for f in folders]
            try:
                described = ray_module.get([s.describe.remote() for s in self._searchers],
                                           timeout=PLACE_TIMEOUT_S)
            except ray_module.exceptions.GetTimeoutError:
                self.close()
                raise DelfxError(f"the Ray cluster did not load the {len(folders)} parts of "
                                 f"{self.folder} within {PLACE_TIMEOUT_S} s (short of memory, "
                                 f"or a node cannot read the folder?)") from None
            except ray_module.exceptions.RayActorError as exc:
                self.close()
                raise DelfxError(f"a part of {self.folder} failed to load on Ray: "
                                 f"{str(exc).strip().splitlines()[-1]}") from None
            self._remote = True
        metas = [IndexMeta.load(f) for f in folders]
        self._offsets = np.cumsum([0] + [len(d["image_ids"]) for d in described])
        self.mapping = _Images([i for d in described for i in d["image_ids"]])
        self.nprobe = described[0]["nprobe"]
        self.nodes = [d["node"] for d in described]  # where each part lives (None: here)
        first = metas[0]
        if any((m.model_id, m.model_hash, m.dim, m.factory) != (
                first.model_id, first.model_hash, first.dim, first.factory) for m in metas):
            raise DelfxError(f"{self.folder}: its parts were built from different models or "
                             f"factories; rebuild the index")
        shards = {s: d for m in metas for s, d in m.shards.items()}
        self.meta = IndexMeta(first.model_id, first.model_hash, first.dim, first.factory,
                              self.data["nprobe"], shards, sum(m.num_vectors for m in metas),
                              len(self.mapping.image_ids), self.data["created"],
                              self.data["versions"])
        log.info("index %s: %d parts, %d vectors, %s, %s", self.folder, len(folders),
                 self.meta.num_vectors, self.meta.factory,
                 "one Ray actor per part" if self._remote else "in this process")

    @property
    def searchers(self) -> list:
        """The part actors (an index opened with `ray`), for other processes to share."""
        return list(self._searchers) if self._remote else []

    @property
    def num_parts(self) -> int:
        return len(self._searchers)

    def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each part's k nearest, merged by distance (stable: a tie goes to the lower part)."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if self._remote:
            import ray
            ref = ray.put(descriptors)
            answers = ray.get([s.search.remote(ref, k) for s in self._searchers])
        else:
            answers = [s.search(descriptors, k) for s in self._searchers]
        return merge(answers, self._offsets[:-1], k)

    def close(self) -> None:
        """Release the actors (and the local Ray instance, when this index started it)."""
        if getattr(self, "started_ray", False):
            import ray
            ray.shutdown()
            self.started_ray = False


def merge(answers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], offsets: Sequence[int],
          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k nearest of several parts' (distances, image rows, keypoint rows): image rows are
    shifted by each part's offset into the merged image table; -1 (none) stays -1 and sorts
    last."""
    distances = np.concatenate([a[0] for a in answers], axis=1)
    images = np.concatenate([np.where(a[1] >= 0, a[1] + off, -1)
                             for a, off in zip(answers, offsets)], axis=1)
    rows = np.concatenate([a[2] for a in answers], axis=1)
    key = np.where(images >= 0, distances, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return take(distances), take(images), take(rows)


def open_index(folder: Path, *, nprobe: int | None = None, ray: dict[str, Any] | None = None,
               searchers: list | None = None, mmap: bool = False):
    """A GalleryIndex, or an IndexParts when the folder holds an index in parts. `ray` and
    `searchers` apply to an index in parts only (a single index is one process's by nature);
    `mmap` to a single index (see GalleryIndex)."""
    if is_parts_dir(folder):
        return IndexParts(folder, nprobe=nprobe, ray=ray, searchers=searchers)
    if ray is not None:
        raise DelfxError(f"{folder} is a single index: searching on Ray needs an index in parts "
                         f"(build-index --parts N)")
    return GalleryIndex(folder, nprobe=nprobe, mmap=mmap)

