"""Writing and reading one feature shard (an HDF5 file in the layout of `schema`)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from delfx.errors import SchemaVersionError, StoreError
from delfx.paths import fsync_directory
from delfx.store import schema as S
from delfx.store.records import ImageFeatures
from delfx.versions import library_versions

log = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial-"


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a completed shard."""

    index: int
    file: str
    sha256: str
    bytes: int
    num_images: int
    num_ok: int
    num_failed: int
    num_features: int


class ShardWriter:
    """Writes one shard to a temporary name and renames it into place only when complete.

    Features are buffered and appended in blocks, so memory stays bounded however many images the
    shard holds. `close()` writes the per-image table, marks the file complete, flushes, fsyncs and
    renames; an exception inside `with ShardWriter(...)` (or `abort()`) deletes the temporary file,
    so a half-written shard can never be mistaken for a complete one.
    """

    def __init__(self, path: Path, *, descriptor_dim: int, descriptor_dtype: str = "float32",
                 model_id: str, model_hash: str, config: dict[str, Any], shard_index: int = 0,
                 num_shards: int = 1, buffer_rows: int = 1 << 16,
                 global_model: dict[str, Any] | None = None):
        if descriptor_dtype not in S.DESCRIPTOR_DTYPES:
            raise StoreError(f"descriptor dtype must be one of {S.DESCRIPTOR_DTYPES}, "
                             f"got {descriptor_dtype!r}")
        self.path = Path(path)
        self.descriptor_dim = int(descriptor_dim)
        self.descriptor_dtype = np.dtype(descriptor_dtype)
        self.shard_index, self.num_shards = int(shard_index), int(num_shards)
        # {"id", "hash", "dim"} of the global model, or None: no images/global dataset.
        self.global_model = global_model
        self.global_dim = int(global_model["dim"]) if global_model else 0
        self._globals: list[np.ndarray] = []
        self.tmp_path = self.path.with_name(f"{self.path.name}{PARTIAL_MARKER}{os.getpid()}")
        self._buffer_rows = buffer_rows
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._table: dict[str, list] = {name: [] for name in S.IMAGE_TABLE if name != S.IMAGE_ID}
        self._pending: list[ImageFeatures] = []
        self._pending_rows = 0
        self._rows = 0
        self._closed = False
        self.info: ShardInfo | None = None  # set by close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp_path, "w", libver="latest")
        attrs = self._file.attrs
        attrs[S.ATTR_FORMAT] = S.FORMAT_NAME
        attrs[S.ATTR_SCHEMA_VERSION] = S.SCHEMA_VERSION
        attrs[S.ATTR_COMPLETE] = False
        attrs[S.ATTR_MODEL_ID] = model_id
        attrs[S.ATTR_MODEL_HASH] = model_hash
        attrs[S.ATTR_CONFIG] = json.dumps(config, sort_keys=True)
        attrs[S.ATTR_VERSIONS] = json.dumps(library_versions(), sort_keys=True)
        attrs[S.ATTR_CREATED] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs[S.ATTR_SHARD_INDEX] = self.shard_index
        attrs[S.ATTR_NUM_SHARDS] = self.num_shards
        attrs[S.ATTR_DESCRIPTOR_DIM] = self.descriptor_dim
        attrs[S.ATTR_DESCRIPTOR_DTYPE] = self.descriptor_dtype.name
        attrs[S.ATTR_GLOBAL_DIM] = self.global_dim
        attrs[S.ATTR_GLOBAL_MODEL_ID] = global_model["id"] if global_model else ""
        attrs[S.ATTR_GLOBAL_MODEL_HASH] = global_model["hash"] if global_model else ""
        chunk = S.FEATURE_CHUNK_ROWS
        self._datasets = {
            S.FEATURE_LOCATIONS: self._file.create_dataset(
                S.FEATURE_LOCATIONS, (0, 2), np.float32, maxshape=(None, 2), chunks=(chunk, 2)),
            S.FEATURE_SCALES: self._file.create_dataset(
                S.FEATURE_SCALES, (0,), np.float32, maxshape=(None,), chunks=(chunk,)),
            S.FEATURE_SCORES: self._file.create_dataset(
                S.FEATURE_SCORES, (0,), np.float32, maxshape=(None,), chunks=(chunk,)),
            S.FEATURE_DESCRIPTORS: self._file.create_dataset(
                S.FEATURE_DESCRIPTORS, (0, self.descriptor_dim), self.descriptor_dtype,
                maxshape=(None, self.descriptor_dim), chunks=(chunk, max(self.descriptor_dim, 1))),
        }

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_images(self) -> int:
        return len(self._ids)

    def add(self, features: ImageFeatures) -> None:
        """Append one image's record (features are stored sorted by descending score)."""
        if self._closed:
            raise StoreError(f"shard {self.path.name} is already closed")
        if features.image_id in self._seen:
            raise StoreError(f"image id {features.image_id!r} added twice to {self.path.name}")
        features.validate(self.descriptor_dim)
        if self.global_dim:
            vector = features.global_descriptor
            if vector is None and features.ok:
                raise StoreError(f"{features.image_id}: no global descriptor, and the shard "
                                 f"stores one per image")
            if vector is not None and np.shape(vector) != (self.global_dim,):
                raise StoreError(f"{features.image_id}: global descriptor of shape "
                                 f"{np.shape(vector)}, the shard stores ({self.global_dim},)")
            self._globals.append(np.zeros(self.global_dim, np.float32) if vector is None
                                 else np.asarray(vector, np.float32))
        features = features.sorted_by_score()
        n = features.num_features
        self._seen.add(features.image_id)
        self._ids.append(features.image_id)
        table = self._table
        table[S.IMAGE_OFFSET].append(self._rows + self._pending_rows)
        table[S.IMAGE_COUNT].append(n)
        table[S.IMAGE_STATUS].append(S.STATUS_OK if features.ok else S.STATUS_FAILED)
        table[S.IMAGE_REASON].append(features.reason)
        table[S.IMAGE_MESSAGE].append(features.message)
        table[S.IMAGE_HEIGHT].append(features.height)
        table[S.IMAGE_WIDTH].append(features.width)
        if n:
            self._pending.append(features)
            self._pending_rows += n
            if self._pending_rows >= self._buffer_rows:
                self._flush_features()

    def _flush_features(self) -> None:
        if not self._pending:
            return
        start, end = self._rows, self._rows + self._pending_rows
        arrays = {
            S.FEATURE_LOCATIONS: np.concatenate([f.locations for f in self._pending]),
            S.FEATURE_SCALES: np.concatenate([f.scales for f in self._pending]),
            S.FEATURE_SCORES: np.concatenate([f.scores for f in self._pending]),
            S.FEATURE_DESCRIPTORS: np.concatenate([f.descriptors for f in self._pending]),
        }
        for name, values in arrays.items():
            dataset = self._datasets[name]
            dataset.resize(end, axis=0)
            dataset[start:end] = values.astype(dataset.dtype, copy=False)
        self._rows = end
        self._pending, self._pending_rows = [], 0

    def close(self) -> ShardInfo:
        """Finish the shard: write the image table, mark complete, fsync, rename into place."""
        if self._closed:
            raise StoreError(f"shard {self.path.name} is already closed")
        try:
            self._flush_features()
            string = h5py.string_dtype("utf-8")
            self._file.create_dataset(S.IMAGE_ID, data=np.array(self._ids, dtype=object), dtype=string)
            dtypes = {S.IMAGE_OFFSET: np.int64, S.IMAGE_COUNT: np.int32, S.IMAGE_STATUS: np.uint8,
                      S.IMAGE_HEIGHT: np.int32, S.IMAGE_WIDTH: np.int32}
            for name, values in self._table.items():
                if name in dtypes:
                    self._file.create_dataset(name, data=np.asarray(values, dtype=dtypes[name]))
                else:
                    self._file.create_dataset(name, data=np.array(values, dtype=object), dtype=string)
            if self.global_dim:
                vectors = (np.stack(self._globals) if self._globals
                           else np.zeros((0, self.global_dim), np.float32))
                self._file.create_dataset(S.IMAGE_GLOBAL, data=vectors.astype(self.descriptor_dtype))
            status = np.asarray(self._table[S.IMAGE_STATUS], dtype=np.uint8)
            attrs = self._file.attrs
            attrs[S.ATTR_NUM_IMAGES] = len(self._ids)
            attrs[S.ATTR_NUM_FEATURES] = self._rows
            attrs[S.ATTR_COMPLETE] = True
            self._file.flush()
            self._file.close()
            with open(self.tmp_path, "rb+") as handle:
                os.fsync(handle.fileno())
            digest = file_sha256(self.tmp_path)
            size = self.tmp_path.stat().st_size
            os.replace(self.tmp_path, self.path)
            fsync_directory(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        num_ok = int((status == S.STATUS_OK).sum())
        log.debug("wrote %s: %d images, %d features", self.path.name, len(self._ids), self._rows)
        self.info = ShardInfo(self.shard_index, self.path.name, digest, size, len(self._ids), num_ok,
                              len(self._ids) - num_ok, self._rows)
        return self.info

    def abort(self) -> None:
        """Drop the shard: close and delete the temporary file (the final name is never touched)."""
        self._closed = True
        try:
            self._file.close()
        except Exception:  # already closed or broken: the unlink below is what matters
            pass
        self.tmp_path.unlink(missing_ok=True)


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class ShardReader:
    """Read access to one complete shard. The per-image table is loaded once; features on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise StoreError(f"{self.path}: shard file is missing") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            self._check_header()
            self._load_table()
        except BaseException:
            self._file.close()
            raise

    def _check_header(self) -> None:
        attrs = self._file.attrs
        if attrs.get(S.ATTR_FORMAT) != S.FORMAT_NAME:
            raise StoreError(f"{self.path}: not a delfx feature shard "
                             f"(format attribute {attrs.get(S.ATTR_FORMAT)!r})")
        version = int(attrs.get(S.ATTR_SCHEMA_VERSION, -1))
        if version not in S.SUPPORTED_SCHEMA_VERSIONS:
            raise SchemaVersionError(
                f"{self.path}: schema version {version} is not supported by this delfx "
                f"(supported: {sorted(S.SUPPORTED_SCHEMA_VERSIONS)}); upgrade delfx or re-extract")
        if not bool(attrs.get(S.ATTR_COMPLETE, False)):
            raise StoreError(f"{self.path}: shard was not completed (interrupted write)")
        self.schema_version = version
        self.model_id = str(attrs[S.ATTR_MODEL_ID])
        self.model_hash = str(attrs[S.ATTR_MODEL_HASH])
        self.config = json.loads(attrs[S.ATTR_CONFIG])
        self.versions = json.loads(attrs[S.ATTR_VERSIONS])
        self.created = str(attrs[S.ATTR_CREATED])
        self.shard_index = int(attrs[S.ATTR_SHARD_INDEX])
        self.num_shards = int(attrs[S.ATTR_NUM_SHARDS])
        self.descriptor_dim = int(attrs[S.ATTR_DESCRIPTOR_DIM])
        self.descriptor_dtype = np.dtype(str(attrs[S.ATTR_DESCRIPTOR_DTYPE]))
        self.num_features = int(attrs[S.ATTR_NUM_FEATURES])
        # v1 shards predate global descriptors: read as having none.
        self.global_dim = int(attrs.get(S.ATTR_GLOBAL_DIM, 0)) if version >= 2 else 0
        self.global_model = ({"id": str(attrs[S.ATTR_GLOBAL_MODEL_ID]),
                              "hash": str(attrs[S.ATTR_GLOBAL_MODEL_HASH]),
                              "dim": self.global_dim} if self.global_dim else None)

    def _load_table(self) -> None:
        f = self._file
        try:
            self.image_ids = _decode(f[S.IMAGE_ID][()])
            self.offsets = f[S.IMAGE_OFFSET][()].astype(np.int64)
            self.counts = f[S.IMAGE_COUNT][()].astype(np.int64)
            self.status = f[S.IMAGE_STATUS][()]
            self.reasons = _decode(f[S.IMAGE_REASON][()])
            self.messages = _decode(f[S.IMAGE_MESSAGE][()])
            self.heights = f[S.IMAGE_HEIGHT][()]
            self.widths = f[S.IMAGE_WIDTH][()]
            self._features = {name: f[name] for name in S.FEATURE_ARRAYS}
            # Read into memory on first use only (1 kB per image at 512-d float16): a local-only
            # scan of a shard never pays for it.
            self._global_dataset = f[S.IMAGE_GLOBAL] if self.global_dim else None
            self._global = None
        except (KeyError, OSError) as exc:
            raise StoreError(f"{self.path}: damaged shard ({exc})") from None
        n = len(self.image_ids)
        if n != int(f.attrs[S.ATTR_NUM_IMAGES]) or any(
                len(a) != n for a in (self.offsets, self.counts, self.status, self.heights)):
            raise StoreError(f"{self.path}: damaged shard (image table lengths disagree)")
        if self._global_dataset is not None and self._global_dataset.shape != (n, self.global_dim):
            raise StoreError(f"{self.path}: damaged shard (global descriptors "
                             f"{self._global_dataset.shape}, expected {(n, self.global_dim)})")
        if any(len(d) != self.num_features for d in self._features.values()):
            raise StoreError(f"{self.path}: damaged shard (feature array lengths disagree)")
        expected = np.concatenate([[0], np.cumsum(self.counts)[:-1]]) if n else self.offsets
        if (n and not np.array_equal(self.offsets, expected)) or int(self.counts.sum()) != self.num_features:
            raise StoreError(f"{self.path}: damaged shard (offsets table does not tile the feature arrays)")
        self._index: dict[str, int] | None = None

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.image_ids)

    def index_of(self, image_id: str) -> int:
        if self._index is None:
            self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in {self.path.name}") from None

    def _record(self, i: int, rows: dict[str, np.ndarray]) -> ImageFeatures:
        ok = self.status[i] == S.STATUS_OK
        return ImageFeatures(self.image_ids[i], rows[S.FEATURE_LOCATIONS],
                             rows[S.FEATURE_DESCRIPTORS], rows[S.FEATURE_SCALES],
                             rows[S.FEATURE_SCORES], int(self.heights[i]), int(self.widths[i]),
                             "ok" if ok else "failed", self.reasons[i], self.messages[i],
                             None if self._global_dataset is None
                             else self._global_rows()[i].astype(np.float32))

    def _global_rows(self) -> np.ndarray:
        if self._global is None:
            self._global = self._global_dataset[()]
        return self._global

    def global_descriptors(self) -> np.ndarray:
        """(num_images, global_dim) float32 global descriptors (zero rows for failed images)."""
        if self._global_dataset is None:
            raise StoreError(f"{self.path}: no global descriptors (extract with --global-model)")
        return self._global_rows().astype(np.float32)

    def get(self, key: int | str) -> ImageFeatures:
        """One image's record, by position in the shard or by image id."""
        i = self.index_of(key) if isinstance(key, str) else int(key)
        start, end = int(self.offsets[i]), int(self.offsets[i] + self.counts[i])
        return self._record(i, {name: d[start:end] for name, d in self._features.items()})

    def __iter__(self) -> Iterator[ImageFeatures]:
        """All records in order, reading the feature arrays in large contiguous blocks."""
        for first, last, rows, base in self._blocks():
            for i in range(first, last):
                start = int(self.offsets[i]) - base
                end = start + int(self.counts[i])
                yield self._record(i, {name: a[start:end] for name, a in rows.items()})

    def _blocks(self, max_rows: int = 1 << 18):
        """Yield (first, last, arrays, base_row): runs of images read with one bounded read each."""
        first, n = 0, len(self)
        while first < n:
            last = first + 1
            base = int(self.offsets[first])
            while last < n and int(self.offsets[last] + self.counts[last]) - base <= max_rows:
                last += 1
            end = int(self.offsets[last - 1] + self.counts[last - 1])
            yield first, last, {name: d[base:end] for name, d in self._features.items()}, base
            first = last

    def iter_descriptor_blocks(self, max_rows: int = 1 << 20
                               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (descriptors, image position, row within the image) in blocks of <= max_rows rows.

        Reads the descriptor array sequentially in bounded blocks, so an index can be built over
        a feature set much larger than memory.
        """
        # Offsets are contiguous in write order (checked on open), so row r belongs to the
        # image found by repeating each image's position `count` times.
        image_of_row = np.repeat(np.arange(len(self), dtype=np.int64), self.counts)
        row_in_image = (np.arange(self.num_features, dtype=np.int64)
                        - np.repeat(self.offsets, self.counts))
        descriptors = self._features[S.FEATURE_DESCRIPTORS]
        for start in range(0, self.num_features, max_rows):
            end = min(start + max_rows, self.num_features)
            yield descriptors[start:end], image_of_row[start:end], row_in_image[start:end]

    def padded(self, indices: Sequence[int], max_features: int = 150, dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top `max_features` descriptors (by score) of each image, zero-padded, with a mask.

        Returns:
            descriptors (N, max_features, D) of `dtype` and mask (N, max_features) bool.
        """
        indices = np.asarray(indices, dtype=np.int64)
        out = np.zeros((len(indices), max_features, self.descriptor_dim), dtype=dtype)
        mask = np.zeros((len(indices), max_features), dtype=bool)
        if not len(indices):
            return out, mask
        keep = np.minimum(self.counts[indices], max_features)
        descriptors = self._features[S.FEATURE_DESCRIPTORS]
        order = np.argsort(indices, kind="stable")
        # Consecutive requested images are read as one span and scattered with numpy; a span
        # that would read much more than it needs is split (random access stays cheap).
        i = 0
        while i < len(order):
            j = i + 1
            span_start = int(self.offsets[indices[order[i]]])
            needed = int(keep[order[i]])
            while j < len(order):
                nxt = indices[order[j]]
                span_end = int(self.offsets[nxt] + keep[order[j]])
                if span_end - span_start > 4 * (needed + int(keep[order[j]])) + 4096:
                    break
                needed += int(keep[order[j]])
                j += 1
            group = order[i:j]
            ks = keep[group]
            span_end = int(max(self.offsets[indices[group]] + ks)) if len(group) else span_start
            block = descriptors[span_start:span_end] if span_end > span_start else None
            if block is not None and ks.sum():
                target = np.repeat(group, ks)
                within = np.arange(int(ks.sum())) - np.repeat(np.cumsum(ks) - ks, ks)
                source = np.repeat(self.offsets[indices[group]] - span_start, ks) + within
                out[target, within] = block[source]
                mask[target, within] = True
            i = j
        return out, mask
