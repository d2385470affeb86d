"""`delfx build-index`: a FAISS index over every local descriptor of a feature set.

An index folder holds:

* `index.faiss`  the FAISS index (FAISS's own format, written with faiss.write_index)
* `mapping.h5`   for vector v: `image[v]` (row of the image table) and `row[v]` (keypoint row
                 within the image); the image table `image_ids`
* `index.json`   what made it: model id and hash, dimension, factory string, nprobe, the
                 sha256 of every feature shard indexed, counts, versions, creation time

Exact search (`Flat`) for small sets; IVF with 8-bit scalar quantisation (SQ8, one byte per
dimension) up to SQ8_MAX_VECTORS, IVF-PQ (PQ20: 20 bytes per 40-d vector) beyond, chosen by
size. On real delf-hybrid descriptors (benchmarks/eval_index_real.py, 1.3e6 vectors) SQ8
searched faster than PQ20 at the same nprobe with far higher recall (0.91 against 0.73
recall@1 at nprobe 32); PQ20 costs 42% less memory, which is what counts past 5e7 vectors
(2.4 GB of SQ8 codes). For 40-d descriptors on the GPU the PQ sub-quantizer count must divide
40 and be one the GPU implementation supports with a supported sub-vector size: 2, 4, 20 or 40.
GPU search is used automatically when FAISS sees a GPU (faiss-gpu), with k and nprobe capped
at the GPU limit of 2048. Descriptors are streamed from the shards in bounded blocks.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from delfx.artifacts import check_header, has_format, header, read_json_artifact
from delfx.config import DEFAULT_NPROBE
from delfx.digests import file_sha256
from delfx.errors import DelfxError
from delfx.index.global_index import INDEX_FILE as GLOBAL_INDEX_FILE, META_FILE as GLOBAL_META_FILE
from delfx.paths import atomic_write_json, foreign_entries, write_directory_atomically
from delfx.store import FeatureSet, require_intact
from delfx.versions import library_versions

log = logging.getLogger(__name__)

INDEX_FILE, MAPPING_FILE, META_FILE = "index.faiss", "mapping.h5", "index.json"
FORMAT_NAME, FORMAT_VERSION = "delfx-index", 1
MAPPING_FORMAT = "delfx-index-mapping"
INDEX_FILES = {INDEX_FILE, MAPPING_FILE, META_FILE, GLOBAL_INDEX_FILE, GLOBAL_META_FILE}
# An index in parts (delfx/index/parts.py): parts.json and one index folder per part.
PARTS_FILE, PARTS_FORMAT = "parts.json", "delfx-index-parts"
PART_NAME = re.compile(r"part-(\d{5})-of-(\d{5})")
GPU_MAX_K = 2048  # FAISS GPU limit on k and nprobe
GPU_PQ_M_FOR_40D = (2, 4, 20, 40)


FLAT_MAX_VECTORS = 200_000  # below this, exact search
SQ8_MAX_VECTORS = 50_000_000  # up to this, IVF-SQ8; above, IVF-PQ (memory first)


def ivf_lists(num_vectors: int) -> int:
    """~4 sqrt(n) inverted lists, a power of two in 256..65536 (FAISS's rule of thumb)."""
    return int(np.clip(int(2 ** round(np.log2(4 * np.sqrt(num_vectors)))), 256, 65536))


def pq_codec(dim: int) -> str:
    """PQ20 for 40-d (2-d sub-vectors, a size the GPU supports), else the largest m dividing dim."""
    m = 20 if dim % 20 == 0 else next(m for m in (16, 8, 4, 2, 1) if dim % m == 0)
    return f"PQ{m}"


def auto_factory(num_vectors: int, dim: int) -> str:
    """Flat below FLAT_MAX_VECTORS; IVF-SQ8 up to SQ8_MAX_VECTORS; IVF-PQ beyond."""
    if num_vectors < FLAT_MAX_VECTORS:
        return "Flat"
    codec = "SQ8" if num_vectors <= SQ8_MAX_VECTORS else pq_codec(dim)
    return f"IVF{ivf_lists(num_vectors)},{codec}"


def estimate_bytes(factory: str, num_vectors: int, dim: int) -> int:
    """Rough memory the index needs (codes + ids + coarse centroids), before building."""
    if factory == "Flat":
        return num_vectors * dim * 4
    try:
        nlist = int(factory.split(",")[0][3:]) if factory.startswith("IVF") else 0
        if "PQ" in factory:
            code = int(factory.split("PQ")[1].split("x")[0].rstrip("np"))
        elif "SQ8" in factory:
            code = dim
        else:
            code = dim * 4
    except ValueError:
        # A factory string this rough parser does not know (OPQ, HNSW coarse quantizers, ...):
        # assume uncompressed vectors, the safe side for the memory check.
        return num_vectors * (dim * 4 + 8)
    return num_vectors * (code + 8) + nlist * dim * 4


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def check_gpu_factory(factory: str, dim: int) -> None:
    """Refuse a PQ size that FAISS's GPU IVF-PQ cannot run (only checked when a GPU is used)."""
    if "PQ" in factory and dim == 40:
        try:
            m = int(factory.split("PQ")[1].split("x")[0].split(",")[0].rstrip("np"))
        except ValueError:
            return  # not a plain PQ<m>: FAISS itself will say what the GPU cannot run
        if m not in GPU_PQ_M_FOR_40D:
            raise DelfxError(f"{factory}: on the GPU, PQ for 40-d vectors needs M in "
                             f"{GPU_PQ_M_FOR_40D} (M divides 40 and 40/M is a supported size)")


def gpu_count() -> int:
    import faiss
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@dataclass
class IndexMeta:
    model_id: str
    model_hash: str
    dim: int
    factory: str
    nprobe: int
    shards: dict[int, str]  # shard index -> sha256 of the shard file indexed
    num_vectors: int
    num_images: int
    created: str
    versions: dict[str, str]
    # sha256 of index.faiss and mapping.h5, checked on every load (None: written by delfx 0.1.0)
    files: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**header(FORMAT_NAME, FORMAT_VERSION), "model": {"id": self.model_id,
                "hash": self.model_hash}, "dim": self.dim, "factory": self.factory,
                "nprobe": self.nprobe, "shards": {str(k): v for k, v in sorted(self.shards.items())},
                "num_vectors": self.num_vectors, "num_images": self.num_images,
                "created": self.created, "versions": self.versions, "files": self.files}

    @classmethod
    def load(cls, folder: Path) -> "IndexMeta":
        path = Path(folder) / META_FILE
        data = read_json_artifact(path, FORMAT_NAME, {FORMAT_VERSION}, what="delfx index",
                                  advice="rebuild it with this delfx")
        try:
            meta = cls(_text(data["model"]["id"]), _text(data["model"]["hash"]),
                       _count(data["dim"], 1), _text(data["factory"]), _count(data["nprobe"], 1),
                       {_shard_key(k): _text(v) for k, v in data["shards"].items()},
                       _count(data["num_vectors"]), _count(data["num_images"]),
                       _text(data["created"]), dict(data["versions"]), data.get("files"))
            if meta.files is not None and not (isinstance(meta.files, dict) and all(
                    isinstance(v, str) for v in meta.files.values())):
                raise ValueError("files is not an object of digests")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DelfxError(f"{path}: malformed index metadata ({exc!r}); rebuild the index "
                             f"(build-index --overwrite)") from None
        return meta


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{value!r} is not a non-empty string")
    return value


def _count(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TypeError(f"{value!r} is not an integer >= {minimum}")
    return value


def _shard_key(key: str) -> int:
    if not key.isdigit():
        raise ValueError(f"shard key {key!r} is not a shard index")
    return int(key)


class Mapping:
    """vector id -> (image table row, keypoint row); image table row -> image id."""

    def __init__(self, image_ids: list[str], image: np.ndarray, row: np.ndarray):
        self.image_ids, self.image, self.row = image_ids, image, row

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            for key, value in header(MAPPING_FORMAT, FORMAT_VERSION).items():
                f.attrs[key] = value
            f.create_dataset("image_ids", data=np.array(self.image_ids, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("image", data=self.image.astype(np.int32))
            f.create_dataset("row", data=self.row.astype(np.int32))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Mapping":
        """Read and check a mapping.h5: every vector maps to an image of the table."""
        advice = "rebuild the index (build-index --overwrite)"
        try:
            with h5py.File(path, "r") as f:
                if "format_version" in f.attrs:  # delfx 0.1.0 wrote the format name only
                    check_header(f.attrs, MAPPING_FORMAT, {FORMAT_VERSION}, str(path),
                                 what="delfx index mapping", advice=advice)
                elif f.attrs.get("format") != MAPPING_FORMAT:
                    raise DelfxError(f"{path}: not a delfx index mapping; {advice}")
                ids = [v.decode() if isinstance(v, bytes) else v for v in f["image_ids"][()]]
                mapping = cls(ids, f["image"][()].astype(np.int64), f["row"][()].astype(np.int64))
        except FileNotFoundError:
            raise DelfxError(f"{path}: missing; {advice}") from None
        except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
            raise DelfxError(f"{path}: unreadable index mapping ({exc}); {advice}") from None
        if mapping.image.ndim != 1 or mapping.image.shape != mapping.row.shape:
            raise DelfxError(f"{path}: damaged mapping (image and row arrays differ); {advice}")
        if len(mapping.image) and (mapping.image.min() < 0 or mapping.image.max() >= len(ids)
                                   or mapping.row.min() < 0):
            raise DelfxError(f"{path}: damaged mapping (vectors of images outside the "
                             f"{len(ids)}-image table); {advice}")
        return mapping


def _indexed_shards(fs: FeatureSet) -> dict[int, str]:
    return {i: fs.manifest.shards[i].sha256 for i in fs.shard_indices}


def _train_sample(fs: FeatureSet, size: int, seed: int) -> np.ndarray:
    """A uniform random sample of descriptors, collected in one streaming pass."""
    total = fs.manifest.totals()["features"]
    rng = np.random.default_rng(seed)
    wanted = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out, start = [], 0
    for descriptors, _, _ in fs.iter_descriptor_blocks():
        end = start + len(descriptors)
        lo, hi = np.searchsorted(wanted, [start, end])
        if hi > lo:
            out.append(np.asarray(descriptors[wanted[lo:hi] - start], dtype=np.float32))
        start = end
    return np.concatenate(out) if out else np.zeros((0, fs.descriptor_dim), np.float32)


def build_index(feature_dir: Path, out_dir: Path, *, factory: str = "auto",
                nprobe: int = DEFAULT_NPROBE,
                train_size: int | None = None, seed: int = 0, overwrite: bool = False,
                memory_limit: int | None = None) -> IndexMeta:
    """Build the index of every descriptor of a (complete or partial) feature set."""
    out_dir = Path(out_dir)
    check_index_output(out_dir, Path(feature_dir), overwrite)
    require_intact(Path(feature_dir))  # the index must hold what was written, sha256 checked
    with FeatureSet(feature_dir, require_complete=False) as fs:
        factory, index = trained_index(fs, factory, train_size=train_size, seed=seed,
                                       memory_limit=memory_limit)
        mapping = add_shards(index, fs, None)
        meta = index_meta(fs, factory, nprobe, _indexed_shards(fs), index, mapping)
        global_index = global_index_of(fs)
    _save(out_dir, index, mapping, meta, global_index,
          lambda: check_index_output(out_dir, Path(feature_dir), overwrite))
    return meta


def trained_index(fs: FeatureSet, factory: str, *, train_size: int | None = None, seed: int = 0,
                  memory_limit: int | None = None, parts: int = 1) -> tuple[str, Any]:
    """(factory, an empty FAISS index trained on a sample of the feature set's descriptors).

    `factory` "auto" is resolved from the whole set's size; the memory check is for the
    largest of `parts` equal parts (an index in parts is built one part at a time).
    """
    import faiss
    total, dim = fs.manifest.totals()["features"], fs.descriptor_dim
    if total == 0:
        raise DelfxError(f"{fs.root}: no descriptors to index")
    factory = auto_factory(total, dim) if factory == "auto" else factory
    need = estimate_bytes(factory, -(-total // parts), dim)
    limit = memory_limit or int(0.8 * available_memory())
    log.info("index %s over %d vectors (%d-d): ~%.0f MB", factory, total, dim, need / 1e6)
    if need > limit:
        raise DelfxError(f"the index would need ~{need / 1e9:.1f} GB, more than the "
                         f"{limit / 1e9:.1f} GB available; choose a compressed factory, "
                         f"e.g. --factory IVF4096,PQ20, or build it in --parts")
    gpus = gpu_count()
    if gpus:
        check_gpu_factory(factory, dim)
    log.info("FAISS on %s", f"{gpus} GPU(s)" if gpus else "the CPU")
    try:
        index = faiss.index_factory(dim, factory)
    except RuntimeError as exc:
        raise DelfxError(f"bad FAISS factory string {factory!r}: {exc}") from None
    ivf = faiss.try_extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf) if ivf is not None else None
    if ivfpq is not None and hasattr(ivfpq, "do_polysemous_training"):
        # IVF-PQ also trains polysemous codes by default; delfx never searches with them
        # and they cost most of the training time (measured at 1M vectors: 9.3 s off vs 31.0 s on).
        ivfpq.do_polysemous_training = False
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        size = train_size or min(total, max(64 * nlist, 100_000), 1_000_000)
        sample = _train_sample(fs, size, seed)
        if len(sample) < 39 * nlist:
            log.warning("training on %d vectors for %d lists (FAISS wants >= %d)",
                        len(sample), nlist, 39 * nlist)
        log.info("training on %d vectors", len(sample))
        _train(index, sample, gpus)
    return factory, index


def index_meta(fs: FeatureSet, factory: str, nprobe: int, shards: dict[int, str], index,
               mapping: "Mapping") -> IndexMeta:
    """index.json's content for an index over `shards` of the feature set."""
    return IndexMeta(fs.manifest.model_id, fs.manifest.model_hash, fs.descriptor_dim, factory,
                     nprobe, shards, int(index.ntotal), len(mapping.image_ids),
                     _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     library_versions())


def _train(index, sample: np.ndarray, gpus: int) -> None:
    import faiss
    if gpus:
        ivf = faiss.extract_index_ivf(index)
        clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
        ivf.clustering_index = clustering_index
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add_shards(index, fs: FeatureSet, mapping: Mapping | None, only: set[int] | None = None
             ) -> Mapping:
    """Stream descriptors of the chosen shards into the index; extend the mapping."""
    ids = list(mapping.image_ids) if mapping else []
    images = [mapping.image] if mapping else []
    rows = [mapping.row] if mapping else []
    known = {image_id: i for i, image_id in enumerate(ids)}
    for shard_index in fs.shard_indices:
        if only is not None and shard_index not in only:
            continue
        reader = fs.shard(shard_index)
        for image_id in reader.image_ids:
            if image_id not in known:
                known[image_id] = len(ids)
                ids.append(image_id)
        table = np.array([known[i] for i in reader.image_ids], np.int64)
        for descriptors, image, row in reader.iter_descriptor_blocks():
            index.add(np.ascontiguousarray(descriptors, dtype=np.float32))
            images.append(table[image])
            rows.append(row)
    return Mapping(ids, np.concatenate(images) if images else np.zeros(0, np.int64),
                   np.concatenate(rows) if rows else np.zeros(0, np.int64))


def global_index_of(fs: FeatureSet):
    """The global (GeM) index of a schema-v2 gallery that stores global descriptors, else None."""
    if not fs.global_model:
        return None
    from delfx.index.global_index import GlobalIndex
    global_index = GlobalIndex.from_feature_set(fs)
    log.info("global index: %d images, %s", len(global_index), global_index.model["id"])
    return global_index


def is_index_dir(folder: Path) -> bool:
    return has_format(Path(folder) / META_FILE, (FORMAT_NAME,))


def is_parts_dir(folder: Path) -> bool:
    return has_format(Path(folder) / PARTS_FILE, (PARTS_FORMAT,))


def _own_entries(folder: Path) -> set[str]:
    """Names in an index folder that are provably delfx's: the index files, and in an index in
    parts parts.json and part folders that hold nothing but index files."""
    own = set(INDEX_FILES)
    if is_parts_dir(folder):
        own.add(PARTS_FILE)
        own |= {p.name for p in Path(folder).iterdir()
                if p.is_dir() and PART_NAME.fullmatch(p.name) and is_index_dir(p)
                and not foreign_entries(p, INDEX_FILES)}
    return own


def check_index_output(out_dir: Path, feature_dir: Path, overwrite: bool) -> None:
    """Refuse an index folder that is (or holds) the feature set, or that is not empty unless
    --overwrite names an index folder holding nothing but index files."""
    out, features = out_dir.resolve(), feature_dir.resolve()
    if out == features or out in features.parents:
        raise DelfxError(f"{out_dir} is (or holds) the feature set {feature_dir}: write the "
                         f"index to a folder of its own")
    if out_dir.exists() and not out_dir.is_dir():
        raise DelfxError(f"{out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DelfxError(f"{out_dir} is not empty (use --overwrite to replace an index there, "
                         f"or --update to add shards)")
    if not (is_index_dir(out_dir) or is_parts_dir(out_dir)):
        raise DelfxError(f"{out_dir} is not empty and is not a delfx index; refusing to replace "
                         f"it even with --overwrite")
    foreign = foreign_entries(out_dir, _own_entries(out_dir))
    if foreign:
        raise DelfxError(f"{out_dir} holds files that are not the index's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): move them, then --overwrite")


def _check_own_files(index_dir: Path) -> None:
    foreign = foreign_entries(index_dir, INDEX_FILES)
    if foreign:
        raise DelfxError(f"{index_dir} holds files that are not the index's "
                         f"({', '.join(foreign[:3])}): move them before updating it")


def _save(out_dir: Path, index, mapping: Mapping, meta: IndexMeta, global_index=None,
          before_replacing=None) -> None:
    """Write the index folder beside `out_dir` and swap it in: a failed build leaves the old
    index as it was."""
    def write(tmp: Path) -> None:
        write_index_files(tmp, index, mapping, meta)
        if global_index is not None:
            global_index.save(tmp)

    write_directory_atomically(out_dir, write, before_replacing)


def write_index_files(folder: Path, index, mapping: Mapping, meta: IndexMeta) -> None:
    """index.faiss, mapping.h5 and, last (it marks a complete index), index.json."""
    import faiss
    faiss.write_index(index, str(folder / INDEX_FILE))
    mapping.save(folder / MAPPING_FILE)
    meta.files = {name: file_sha256(folder / name) for name in (INDEX_FILE, MAPPING_FILE)}
    atomic_write_json(folder / META_FILE, meta.to_json())


def load_index_files(folder: Path, *, mmap: bool = False) -> tuple[IndexMeta, Any, Mapping]:
    """index.json, index.faiss and mapping.h5 of an index folder, each checked: the files'
    sha256 against index.json, and that index, mapping and metadata describe one index.

    `mmap`: an IVF index's inverted lists are memory-mapped from index.faiss (FAISS's
    IO_FLAG_MMAP) instead of read into memory, so the processes of one machine that search
    it share one copy in the page cache (a query job's workers). Other indexes are read."""
    import faiss
    folder = Path(folder)
    meta = IndexMeta.load(folder)
    advice = "rebuild the index (build-index --overwrite)"
    for name in (INDEX_FILE, MAPPING_FILE):
        path = folder / name
        if not path.is_file():
            raise DelfxError(f"{path}: missing; {advice}")
        if meta.files is not None and file_sha256(path) != meta.files.get(name):
            raise DelfxError(f"{path}: sha256 differs from index.json (the file was altered "
                             f"after it was written); {advice}")
    try:
        flags = faiss.IO_FLAG_MMAP if mmap and "IVF" in meta.factory else 0
        index = faiss.read_index(str(folder / INDEX_FILE), flags)
    except RuntimeError as exc:
        raise DelfxError(f"{folder / INDEX_FILE}: unreadable FAISS index "
                         f"({str(exc).strip().splitlines()[-1]}); {advice}") from None
    mapping = Mapping.load(folder / MAPPING_FILE)
    try:
        built = faiss.downcast_index(faiss.index_factory(meta.dim, meta.factory))
    except RuntimeError:
        raise DelfxError(f"{folder / META_FILE}: factory {meta.factory!r} is not a FAISS factory "
                         f"string; {advice}") from None
    loaded = faiss.downcast_index(index)
    found = type(loaded).__name__
    problems = [what for what, bad in (
        (f"the index holds {index.ntotal} vectors, the mapping {len(mapping.image)}",
         index.ntotal != len(mapping.image)),
        (f"the index holds {index.ntotal} vectors, index.json says {meta.num_vectors}",
         index.ntotal != meta.num_vectors),
        (f"the mapping lists {len(mapping.image_ids)} images, index.json says {meta.num_images}",
         len(mapping.image_ids) != meta.num_images),
        (f"the index is {index.d}-d, index.json says {meta.dim}", index.d != meta.dim),
        (f"index.json's factory {meta.factory!r} does not build this index ({found})",
         not isinstance(loaded, type(built)) or loaded.metric_type != built.metric_type)) if bad]
    if problems:
        raise DelfxError(f"{folder}: {problems[0]}; {advice}")
    return meta, index, mapping


def check_compatible(meta: IndexMeta, fs: FeatureSet, index_dir: Path) -> None:
    """Refuse an index built from other features or another model than this feature set."""
    if (meta.model_id, meta.model_hash) != (fs.manifest.model_id, fs.manifest.model_hash):
        raise DelfxError(f"index {index_dir} was built from model {meta.model_id} "
                         f"({meta.model_hash[:12]}), the features in {fs.root} come from "
                         f"{fs.manifest.model_id} ({fs.manifest.model_hash[:12]}): rebuild it")
    for shard, digest in meta.shards.items():
        record = fs.manifest.shards.get(shard)
        if record is None or record.sha256 != digest:
            raise DelfxError(f"index {index_dir} was built from other features than {fs.root} "
                             f"(shard {shard} differs): rebuild it")


def update_index(feature_dir: Path, index_dir: Path) -> tuple[IndexMeta, list[int]]:
    """Add the shards completed since the index was built, without a rebuild."""
    index_dir = Path(index_dir)
    if is_parts_dir(index_dir):
        raise DelfxError(f"{index_dir} is an index in parts: --update adds to a single index "
                         f"only; rebuild it (build-index --parts N --overwrite)")
    meta = IndexMeta.load(index_dir)
    _check_own_files(index_dir)
    with FeatureSet(feature_dir, require_complete=False) as fs:
        check_compatible(meta, fs, index_dir)
        new = sorted(set(fs.shard_indices) - set(meta.shards))
        if not new:
            return meta, []
        require_intact(Path(feature_dir), set(new))
        _, index, old_mapping = load_index_files(index_dir)
        mapping = add_shards(index, fs, old_mapping, only=set(new))
        meta.shards.update({i: fs.manifest.shards[i].sha256 for i in new})
        meta.num_vectors, meta.num_images = int(index.ntotal), len(mapping.image_ids)
        global_index = global_index_of(fs)  # exact and small: rebuilt whole rather than appended
    _save(index_dir, index, mapping, meta, global_index, lambda: _check_own_files(index_dir))
    return meta, new


class ImageTablePositions:
    """`mapping_positions` (image id -> row of `mapping.image_ids`), built once when asked."""

    _positions: dict[str, int] | None = None

    @property
    def mapping_positions(self) -> dict[str, int]:
        """image id -> row of the image table."""
        if self._positions is None:
            self._positions = {image_id: i for i, image_id in enumerate(self.mapping.image_ids)}
        return self._positions


class GalleryIndex(ImageTablePositions):
    """A loaded index: k nearest gallery keypoints for query descriptors (GPU when present)."""

    def __init__(self, index_dir: Path, *, nprobe: int | None = None, mmap: bool = False):
        import faiss
        self.folder = Path(index_dir)
        self.meta, index, self.mapping = load_index_files(self.folder, mmap=mmap)
        self.nprobe = nprobe or self.meta.nprobe
        self.gpu = gpu_count() > 0
        if "IVF" in self.meta.factory:
            faiss.extract_index_ivf(index).nprobe = min(self.nprobe, GPU_MAX_K if self.gpu else 1 << 30)
        if self.gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        self.index = index
        log.info("index %s: %d vectors, %s on %s", self.folder, index.ntotal, self.meta.factory,
                 "GPU" if self.gpu else "CPU")

    def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(L2 distances (n, k), gallery image rows (n, k), keypoint rows (n, k)); -1 = none."""
        k = min(k, GPU_MAX_K) if self.gpu else k
        k = min(k, max(1, int(self.index.ntotal)))
        squared, ids = self.index.search(np.ascontiguousarray(descriptors, dtype=np.float32), k)
        valid = ids >= 0
        images = np.where(valid, self.mapping.image[np.where(valid, ids, 0)], -1)
        rows = np.where(valid, self.mapping.row[np.where(valid, ids, 0)], -1)
        return np.sqrt(np.maximum(squared, 0)), images, rows
