"""Writing one feature shard (an HDF5 file in the layout of `schema`), atomically."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from delfx.digests import file_sha256
from delfx.errors import StoreError
from delfx.paths import fsync_directory
from delfx.store import schema as S
from delfx.store.manifest import ShardInfo
from delfx.store.records import ImageFeatures
from delfx.versions import library_versions

log = logging.getLogger(__name__)

# Temporary shard files are named `<final name>.partial-<pid>` until they are complete.
PARTIAL_MARKER = ".partial-"


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
