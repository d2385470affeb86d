"""`WithGlobal`: a local-feature model that also computes each image's global descriptor.

Extraction with `--global-model DIR` wraps the local model in this, so every record carries the
L2-normalised GeM vector of its image and the shards store it (schema v2). The local features,
model id and model hash are exactly those of the wrapped model: a feature set with global
descriptors stays compatible with indexes and classifiers built on the same local features.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from delfx.extractor.base import FeatureModel
from delfx.store.records import ImageFeatures


class WithGlobal(FeatureModel):
    """Delegates local extraction to `local`; adds `global_model.embed` of the same images."""

    def __init__(self, local: FeatureModel, global_model):
        super().__init__(local.config)
        self.local, self.global_model = local, global_model
        self.name = local.name
        self.descriptor_dim = local.descriptor_dim
        self.scales_in_pixels = local.scales_in_pixels

    @property
    def model_id(self) -> str:
        return self.local.model_id

    def weights_digest(self) -> str:
        return self.local.weights_digest()

    @property
    def model_hash(self) -> str:
        return self.local.model_hash

    @property
    def unit_norm(self) -> bool:
        return self.local.unit_norm

    def output_config(self) -> dict[str, Any]:
        return self.local.output_config()

    def describe(self) -> dict[str, Any]:
        return {**self.local.describe(), "global": self.global_model.describe()}

    def _extract(self, image: np.ndarray):
        return self.local._extract(image)

    def extract_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]
                      ) -> list[ImageFeatures]:
        records = self.local.extract_batch(images, image_ids)
        vectors = self.global_model.embed(list(images))
        for record, vector in zip(records, vectors):
            record.global_descriptor = vector
        return records
