"""Writing one feature shard (an HDF5 file in the layout of `schema`), atomically."""

from __future__ import annotations

import datetime as _dt
import errno
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
# Free space kept in reserve below every write: HDF5 must still be able to write its metadata
# when the file is closed, or it fails the close (and crashes the process at exit). So a write
# that would leave less than this is refused before HDF5 sees it.
SPACE_RESERVE = 4 << 20


def ensure_space(directory: Path, nbytes: int) -> None:
    """Raise OSError(ENOSPC) unless `nbytes` plus the reserve fit on `directory`'s device."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return  # cannot tell: let the write itself decide
    free = st.f_bavail * st.f_frsize
    if nbytes + SPACE_RESERVE > free:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free >> 20} MiB free, "
                                    f"{(nbytes + SPACE_RESERVE) >> 20} MiB needed)",
                      str(directory))



# Memory for the features a writer holds before appending them to the file (float32 in memory).
BUFFER_BYTES = 32 << 20
MAX_BUFFER_ROWS = 1 << 16


def buffer_rows_for(descriptor_dim: int) -> int:
    """Rows of `descriptor_dim`-d features that fit BUFFER_BYTES (4 float32 columns besides
    the descriptor), at most MAX_BUFFER_ROWS, at least one HDF5 chunk's worth."""
    row_bytes = 4 * (4 + max(int(descriptor_dim), 1))
    return max(S.FEATURE_CHUNK_ROWS, min(MAX_BUFFER_ROWS, BUFFER_BYTES // row_bytes))

class ShardWriter:
    """Writes one shard to a temporary name and renames it into place only when complete.

    Features are buffered and appended in blocks, so memory stays bounded however many images the
    shard holds. `close()` writes the per-image table, marks the file complete, flushes, fsyncs and
    renames; an exception inside `with ShardWriter(...)` (or `abort()`) deletes the temporary file,
    so a half-written shard can never be mistaken for a complete one.
    """

    def __init__(self, path: Path, *, descriptor_dim: int, descriptor_dtype: str = "float32",
                 model_id: str, model_hash: str, config: dict[str, Any], shard_index: int = 0,
                 num_shards: int = 1, buffer_rows: int | None = None,
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
        # Rows held before a flush: bounded in BYTES, so a wide descriptor (DELF's raw 1024-d)
        # does not hold 65,536 rows (268 MB, twice that while concatenating) per open shard.
        self._buffer_rows = buffer_rows or buffer_rows_for(self.descriptor_dim)
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._table: dict[str, list] = {name: [] for name in S.IMAGE_TABLE if name != S.IMAGE_ID}
        self._pending: list[ImageFeatures] = []
        self._pending_rows = 0
        self._rows = 0
        self._closed = False
        self.info: ShardInfo | None = None  # set by close()
        versions = json.dumps(library_versions(), sort_keys=True)  # before the file exists
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        try:
            self._file = h5py.File(self.tmp_path, "w", libver="latest")
            self._init_file(model_id, model_hash, config, versions, global_model)
        except BaseException:  # Ctrl-C or an error here: no partial file is left behind
            if self._file is not None:
                self._file.close()
            self.tmp_path.unlink(missing_ok=True)
            raise

    def _init_file(self, model_id, model_hash, config, versions, global_model) -> None:
        attrs = self._file.attrs
        attrs[S.ATTR_FORMAT] = S.FORMAT_NAME
        attrs[S.ATTR_SCHEMA_VERSION] = S.SCHEMA_VERSION
        attrs[S.ATTR_COMPLETE] = False
        attrs[S.ATTR_MODEL_ID] = model_id
        attrs[S.ATTR_MODEL_HASH] = model_hash
        attrs[S.ATTR_CONFIG] = json.dumps(config, sort_keys=True)
        attrs[S.ATTR_VERSIONS] = versions
        attrs[S.ATTR_CREATED] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs[S.ATTR_SHARD_INDEX] = self.shard_index
        attrs[S.ATTR_NUM_SHARDS] = self.num_shards
        attrs[S.ATTR_DESCRIPTOR_DIM] = self.descriptor_dim
        attrs[S.ATTR_DESCRIPTOR_DTYPE] = self.descriptor_dtype.name
        attrs[S.ATTR_GLOBAL_DIM] = self.global_dim
        attrs[S.ATTR_GLOBAL_MODEL_ID] = global_model["id"] if global_model else ""
        attrs[S.ATTR_GLOBAL_MODEL_HASH] = global_model["hash"] if global_model else ""
        chunk = S.FEATURE_CHUNK_ROWS
        # fletcher32 on every chunk: a flipped bit fails the read instead of becoming data (the
        # checksum is verified on each chunk read, nearly free next to decompression-free I/O).
        feature = dict(fletcher32=True)
        self._datasets = {
            S.FEATURE_LOCATIONS: self._file.create_dataset(
                S.FEATURE_LOCATIONS, (0, 2), np.float32, maxshape=(None, 2), chunks=(chunk, 2),
                **feature),
            S.FEATURE_SCALES: self._file.create_dataset(
                S.FEATURE_SCALES, (0,), np.float32, maxshape=(None,), chunks=(chunk,), **feature),
            S.FEATURE_SCORES: self._file.create_dataset(
                S.FEATURE_SCORES, (0,), np.float32, maxshape=(None,), chunks=(chunk,), **feature),
            S.FEATURE_DESCRIPTORS: self._file.create_dataset(
                S.FEATURE_DESCRIPTORS, (0, self.descriptor_dim), self.descriptor_dtype,
                maxshape=(None, self.descriptor_dim), chunks=(chunk, max(self.descriptor_dim, 1)),
                **feature),
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

    def add(self, features: ImageFeatures, stamp: tuple[int, int] = (-1, -1)) -> None:
        """Append one image's record (features are stored sorted by descending score).

        Args:
            stamp: (size, mtime_ns) of the input file (`delfx.inputs.input_stamp`); (-1, -1)
                when unknown.
        """
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
        table[S.IMAGE_INPUT_SIZE].append(int(stamp[0]))
        table[S.IMAGE_INPUT_MTIME].append(int(stamp[1]))
        if n:
            self._pending.append(features)
            self._pending_rows += n
            if self._pending_rows >= self._buffer_rows:
                self._flush_features()

    def _flush_features(self) -> None:
        if not self._pending:
            return
        row_bytes = 4 * 4 + self.descriptor_dim * self.descriptor_dtype.itemsize
        ensure_space(self.path.parent, self._pending_rows * row_bytes)
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
            ensure_space(self.path.parent, 200 * len(self._ids) + 8 * self.global_dim * len(self._ids))
            string = h5py.string_dtype("utf-8")
            self._file.create_dataset(S.IMAGE_ID, data=np.array(self._ids, dtype=object), dtype=string)
            dtypes = {S.IMAGE_OFFSET: np.int64, S.IMAGE_COUNT: np.int32, S.IMAGE_STATUS: np.uint8,
                      S.IMAGE_HEIGHT: np.int32, S.IMAGE_WIDTH: np.int32,
                      S.IMAGE_INPUT_SIZE: np.int64, S.IMAGE_INPUT_MTIME: np.int64}
            for name, values in self._table.items():
                if name in dtypes:
                    self._numeric(name, np.asarray(values, dtype=dtypes[name]))
                else:  # HDF5 filters cannot apply to variable-length strings
                    self._file.create_dataset(name, data=np.array(values, dtype=object), dtype=string)
            if self.global_dim:
                vectors = (np.stack(self._globals) if self._globals
                           else np.zeros((0, self.global_dim), np.float32))
                self._numeric(S.IMAGE_GLOBAL, vectors.astype(self.descriptor_dtype))
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

    def _numeric(self, name: str, values: np.ndarray) -> None:
        """A table dataset with fletcher32 (which needs a chunked layout, even when empty)."""
        chunks = (max(1, min(len(values), 1 << 16)),) + values.shape[1:]
        self._file.create_dataset(name, data=values, chunks=chunks, fletcher32=True,
                                  maxshape=(None,) + values.shape[1:])

    def abort(self) -> None:
        """Drop the shard: close and delete the temporary file (the final name is never touched)."""
        self._closed = True
        try:
            self._file.close()
        except Exception:  # already closed or broken: the unlink below is what matters
            pass
        self.tmp_path.unlink(missing_ok=True)
