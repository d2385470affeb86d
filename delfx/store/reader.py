"""Reading one complete feature shard: the image table once, features on demand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from delfx.artifacts import check_header
from delfx.errors import SchemaVersionError, StoreError
from delfx.store import schema as S
from delfx.store.padding import empty_padded, scatter_top_rows
from delfx.store.records import ImageFeatures


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


# How far from 1 a stored unit descriptor's norm may be: float16 storage rounds each of ~40-200
# components by up to 2^-11 relative, far below this; damage (flipped bits) lands far above.
NORM_TOLERANCE = 0.02


class ShardReader:
    """Read access to one complete shard. The per-image table is loaded once; features on demand.

    Nothing damaged is handed out as data: a chunk that fails its HDF5 checksum (fletcher32,
    schema >= 3), non-finite values, or (with `unit_norm`, when the manifest says the model
    writes unit descriptors) a descriptor whose norm is not 1 raise StoreError naming the shard.

    Args:
        unit_norm: check that every descriptor read has unit L2 norm.
    """

    def __init__(self, path: Path, *, unit_norm: bool = False):
        self.path = Path(path)
        self.unit_norm = bool(unit_norm)
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
        version = check_header(attrs, S.FORMAT_NAME, S.SUPPORTED_SCHEMA_VERSIONS, str(self.path),
                               what="delfx feature shard", version_key=S.ATTR_SCHEMA_VERSION,
                               error=StoreError, version_error=SchemaVersionError,
                               advice="upgrade delfx or re-extract")
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
            # v3: what identified each input file when it was extracted (resume compares it)
            self.input_stamps = ((f[S.IMAGE_INPUT_SIZE][()].astype(np.int64),
                                  f[S.IMAGE_INPUT_MTIME][()].astype(np.int64))
                                 if self.schema_version >= 3 else None)
            self._features = {name: f[name] for name in S.FEATURE_ARRAYS}
            # Read into memory on first use only (1 kB per image at 512-d float16): a local-only
            # scan of a shard never pays for it.
            self._global_dataset = f[S.IMAGE_GLOBAL] if self.global_dim else None
            self._global = None
        except (KeyError, OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.path}: damaged shard ({exc}); run delfx verify, then "
                             f"extract it again") from None
        n = len(self.image_ids)
        if n != int(f.attrs[S.ATTR_NUM_IMAGES]) or any(
                len(a) != n for a in (self.offsets, self.counts, self.status, self.heights)):
            raise StoreError(f"{self.path}: damaged shard (image table lengths disagree)")
        if self._global_dataset is not None and self._global_dataset.shape != (n, self.global_dim):
            raise StoreError(f"{self.path}: damaged shard (global descriptors "
                             f"{self._global_dataset.shape}, expected {(n, self.global_dim)})")
        if self.input_stamps is not None and any(len(a) != n for a in self.input_stamps):
            raise StoreError(f"{self.path}: damaged shard (input stamps of another length)")
        if set(np.unique(self.status)) - {S.STATUS_OK, S.STATUS_FAILED} or (
                n and (self.counts.min() < 0 or self.heights.min() < 0 or self.widths.min() < 0)):
            raise StoreError(f"{self.path}: damaged shard (impossible values in the image table)")
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

    def _read(self, dataset, selection=()):
        """dataset[selection], or StoreError when a chunk fails its checksum or cannot be read."""
        try:
            return dataset[selection]
        except OSError as exc:
            raise StoreError(f"{self.path}: damaged shard ({dataset.name}: "
                             f"{str(exc).split('(')[-1].rstrip(')') or exc}); run delfx verify, "
                             f"then extract it again") from None

    def _check_descriptors(self, descriptors: np.ndarray, first_row: int) -> np.ndarray:
        """Refuse damaged descriptors: non-finite values, or norms off 1 where unit is promised."""
        values = np.asarray(descriptors, dtype=np.float32)
        if not np.isfinite(values).all():
            row = first_row + int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise StoreError(f"{self.path}: damaged shard (non-finite descriptor at feature row "
                             f"{row}); run delfx verify, then extract it again")
        if self.unit_norm and len(values):
            norms = np.sqrt(np.einsum("ij,ij->i", values, values))
            bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
            if len(bad):
                raise StoreError(f"{self.path}: damaged shard (descriptor at feature row "
                                 f"{first_row + int(bad[0])} has norm {norms[bad[0]]:.4g}, the "
                                 f"model writes unit vectors); run delfx verify, then extract it "
                                 f"again")
        return descriptors

    def _rows(self, start: int, end: int) -> dict[str, np.ndarray]:
        """Feature rows start..end of every array, read and checked."""
        rows = {name: self._read(d, slice(start, end)) for name, d in self._features.items()}
        self._check_descriptors(rows[S.FEATURE_DESCRIPTORS], start)
        for name in (S.FEATURE_LOCATIONS, S.FEATURE_SCALES, S.FEATURE_SCORES):
            if not np.isfinite(rows[name]).all():
                raise StoreError(f"{self.path}: damaged shard (non-finite {name} between feature "
                                 f"rows {start} and {end}); run delfx verify, then extract it "
                                 f"again")
        return rows

    def _global_rows(self) -> np.ndarray:
        if self._global is None:
            rows = self._read(self._global_dataset)
            if not np.isfinite(rows).all():
                raise StoreError(f"{self.path}: damaged shard (non-finite global descriptor)")
            self._global = rows
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
        return self._record(i, self._rows(start, end))

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
            yield first, last, self._rows(base, end), base
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
            block = self._check_descriptors(self._read(descriptors, slice(start, end)), start)
            yield block, image_of_row[start:end], row_in_image[start:end]

    def padded(self, indices: Sequence[int], max_features: int = 150, dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top `max_features` descriptors (by score) of each image, zero-padded, with a mask.

        Returns:
            descriptors (N, max_features, D) of `dtype` and mask (N, max_features) bool.
        """
        indices = np.asarray(indices, dtype=np.int64)
        out, mask = empty_padded(len(indices), max_features, self.descriptor_dim, dtype)
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
            if span_end > span_start and ks.sum():
                block = self._check_descriptors(
                    self._read(descriptors, slice(span_start, span_end)), span_start)
                scatter_top_rows(out, mask, group, block,
                                 self.offsets[indices[group]] - span_start, ks)
            i = j
        return out, mask
