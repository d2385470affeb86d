"""Synthetic feature sets with known content, for tests and storage benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from delfx.store.manifest import Manifest
from delfx.store.records import ImageFeatures
from delfx.store.schema import shard_file_name
from delfx.store.writer import ShardWriter


def synthetic_image(image_id: str, rng: np.random.Generator, *, num_features: int,
                    descriptor_dim: int = 40) -> ImageFeatures:
    """Random features: unit descriptors, distinct scores, locations inside a 480x640 image."""
    descriptors = rng.standard_normal((num_features, descriptor_dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-12
    locations = (rng.random((num_features, 2)) * [480, 640]).astype(np.float32)
    scales = rng.choice(np.float32([0.5, 0.7071, 1.0, 1.4142, 2.0]), num_features)
    scores = rng.permutation(num_features).astype(np.float32) + rng.random(num_features, dtype=np.float32)
    return ImageFeatures(image_id, locations, descriptors, scales, scores, 480, 640)


def write_synthetic_feature_set(root: Path, *, num_images: int, num_shards: int = 1,
                                features_per_image: tuple[int, int] = (100, 200),
                                descriptor_dim: int = 40, descriptor_dtype: str = "float32",
                                failed_every: int = 0, seed: int = 0,
                                model_id: str = "synthetic", config: dict | None = None
                                ) -> Manifest:
    """Write a complete feature set of random images; image i goes to shard i % num_shards.

    Args:
        features_per_image: inclusive range the per-image count is drawn from.
        failed_every: every k-th image is recorded as failed ("corrupt"); 0 for none.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = config or {"synthetic": True, "seed": seed}
    manifest = Manifest(num_shards=num_shards, model_id=model_id, model_hash="0" * 64,
                        config=config, descriptor_dim=descriptor_dim,
                        descriptor_dtype=descriptor_dtype)
    low, high = features_per_image
    for shard in range(num_shards):
        with ShardWriter(root / shard_file_name(shard, num_shards), descriptor_dim=descriptor_dim,
                         descriptor_dtype=descriptor_dtype, model_id=model_id,
                         model_hash=manifest.model_hash, config=config, shard_index=shard,
                         num_shards=num_shards) as writer:
            for i in range(shard, num_images, num_shards):
                image_id = f"img{i:08d}"
                if failed_every and i % failed_every == failed_every - 1:
                    writer.add(ImageFeatures.failed(image_id, "corrupt", "synthetic failure",
                                                    descriptor_dim=descriptor_dim))
                else:
                    n = int(rng.integers(low, high + 1))
                    writer.add(synthetic_image(image_id, rng, num_features=n,
                                               descriptor_dim=descriptor_dim))
        manifest.record(root, writer.info)
    return manifest
