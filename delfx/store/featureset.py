"""A whole feature set (a folder of shards plus its manifest) as one readable object."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from delfx.errors import StoreError
from delfx.store.manifest import Manifest
from delfx.store.padding import empty_padded
from delfx.store.records import ImageFeatures
from delfx.store.reader import ShardReader


class FeatureSet:
    """Read access to every image of a feature set, in shard order.

    Images are numbered globally 0..num_images-1 by concatenating the shards in index order; this
    position is what an index or classifier stores instead of the id string.

    Example:
        >>> with FeatureSet("features/") as fs:                         # doctest: +SKIP
        ...     x, mask = fs.padded_batch(fs.image_ids[:256], max_features=150)
    """

    def __init__(self, root: Path, *, require_complete: bool = True):
        self.root = Path(root)
        self.manifest = Manifest.load(self.root)
        if require_complete and not self.manifest.complete:
            raise StoreError(f"{self.root}: feature set is incomplete, shards missing: "
                             f"{self.manifest.missing_shards} (resume the extraction)")
        self._readers: dict[int, ShardReader] = {}
        self.shard_indices = sorted(self.manifest.shards)
        counts = [self.manifest.shards[i].num_images for i in self.shard_indices]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._ids: list[str] | None = None
        self._positions: dict[str, int] | None = None

    def __enter__(self) -> "FeatureSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    @property
    def descriptor_dim(self) -> int:
        return self.manifest.descriptor_dim

    @property
    def global_model(self) -> dict | None:
        """{"id", "hash", "dim"} of the stored global descriptors, or None (see schema v2)."""
        return self.manifest.global_model

    def global_descriptors(self) -> np.ndarray:
        """(num_images, G) float32 global descriptors of every image, by global position."""
        if not self.global_model:
            raise StoreError(f"{self.root}: no global descriptors (extract with --global-model)")
        blocks = [reader.global_descriptors() for _, reader in self._readers_in_order()]
        return (np.concatenate(blocks) if blocks
                else np.zeros((0, int(self.global_model["dim"])), np.float32))

    @property
    def num_images(self) -> int:
        return int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_images

    def shard(self, index: int) -> ShardReader:
        """The reader of shard `index` (opened once, checked against the manifest)."""
        if index not in self._readers:
            record = self.manifest.shards[index]
            path = self.manifest.shard_path(self.root, index)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise StoreError(f"{path}: shard file is missing (run delfx verify)") from None
            if size != record.bytes:
                raise StoreError(f"{path}: {size} bytes, the manifest says {record.bytes} "
                                 f"(truncated or replaced; run delfx verify)")
            reader = ShardReader(path, unit_norm=self.manifest.descriptor_norm == "l2")
            if (reader.model_id, reader.model_hash) != (self.manifest.model_id,
                                                        self.manifest.model_hash):
                reader.close()
                raise StoreError(f"{reader.path}: written by model {reader.model_id}, "
                                 f"the manifest says {self.manifest.model_id}")
            if reader.global_model != self.manifest.global_model:
                reader.close()
                raise StoreError(f"{reader.path}: global descriptors {reader.global_model}, the "
                                 f"manifest says {self.manifest.global_model}")
            if len(reader) != record.num_images or reader.num_features != record.num_features:
                reader.close()
                raise StoreError(f"{reader.path}: holds {len(reader)} images / "
                                 f"{reader.num_features} features, the manifest says "
                                 f"{record.num_images} / {record.num_features} (run delfx verify)")
            self._readers[index] = reader
        return self._readers[index]

    def _readers_in_order(self) -> Iterator[tuple[int, ShardReader]]:
        for k, index in enumerate(self.shard_indices):
            yield int(self._starts[k]), self.shard(index)

    @property
    def image_ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [i for _, reader in self._readers_in_order() for i in reader.image_ids]
        return self._ids

    def position(self, image_id: str) -> int:
        """Global position of an image id."""
        if self._positions is None:
            self._positions = {image_id: i for i, image_id in enumerate(self.image_ids)}
        try:
            return self._positions[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the feature set {self.root}") from None

    def _locate(self, position: int) -> tuple[ShardReader, int]:
        if not 0 <= position < self.num_images:
            raise IndexError(f"image position {position} outside 0..{self.num_images - 1}")
        k = int(np.searchsorted(self._starts, position, side="right") - 1)
        return self.shard(self.shard_indices[k]), position - int(self._starts[k])

    def get(self, key: int | str) -> ImageFeatures:
        """One image's record by global position or id."""
        position = self.position(key) if isinstance(key, str) else int(key)
        reader, local = self._locate(position)
        return reader.get(local)

    def __iter__(self) -> Iterator[ImageFeatures]:
        for _, reader in self._readers_in_order():
            yield from reader

    def iter_descriptor_blocks(self, max_rows: int = 1 << 20
                               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(descriptors, global image position, row within image) in bounded blocks, all shards."""
        for start, reader in self._readers_in_order():
            for descriptors, image, row in reader.iter_descriptor_blocks(max_rows):
                yield descriptors, image + start, row

    def load_descriptors(self, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All descriptors in memory with their image position and row (for small sets)."""
        blocks = list(self.iter_descriptor_blocks())
        if not blocks:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros((0, self.descriptor_dim), dtype=dtype), empty, empty
        return (np.concatenate([b[0] for b in blocks]).astype(dtype, copy=False),
                np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks]))

    def padded_batch(self, keys: Sequence[int | str], max_features: int = 150, dtype=np.float32
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`max_features` descriptors by score per image, zero-padded, and the mask.

        Args:
            keys: global positions or image ids, in the order wanted.
        Shape:
            returns (N, max_features, D) and (N, max_features) bool.
        """
        positions = np.array([self.position(k) if isinstance(k, str) else int(k) for k in keys],
                             dtype=np.int64)
        out, mask = empty_padded(len(positions), max_features, self.descriptor_dim, dtype)
        if not len(positions):
            return out, mask
        if positions.min() < 0 or positions.max() >= self.num_images:
            raise IndexError(f"image positions outside 0..{self.num_images - 1}")
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1
        for k in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == k)
            reader = self.shard(self.shard_indices[k])
            x, m = reader.padded(positions[rows] - self._starts[k], max_features, dtype)
            out[rows], mask[rows] = x, m
        return out, mask
