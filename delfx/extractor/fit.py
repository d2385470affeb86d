"""`delfx fit-pca`: learn the PCA post-processing of a model from a sample of images."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from delfx import __version__
from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.pca import PCAProjection, fit_pca
from delfx.inputs import ImageItem

log = logging.getLogger(__name__)


def fit_model_pca(config: ExtractConfig, items: Sequence[ImageItem], *, dim: int = 40,
                  whiten: bool = False, max_images: int | None = None,
                  max_per_image: int | None = None, seed: int = 0,
                  source: str | None = None) -> PCAProjection:
    """Fit the PCA of `config.model` on raw descriptors of (a seeded sample of) `items`.

    Args:
        dim: components to keep (a model may use fewer: leading axes are taken).
        max_images: sample at most this many images (seeded).
        max_per_image: keep at most this many top-scoring descriptors per image.
    """
    from delfx.extractor.models import create_model
    from delfx.extractor.run import extract_items
    if config.model not in ("rootsift", "delf-vgg16", "delf-resnet50"):
        raise DelfxError(f"fit-pca needs a built-in model (rootsift, delf-vgg16, delf-resnet50), "
                         f"got {config.model!r}")
    items = list(items)
    if max_images is not None and len(items) > max_images:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), max_images, replace=False))]
    model = create_model(config.replace(descriptor_dim=0, pca_path=None))
    blocks, used = [], 0
    for record in extract_items(model, items):
        if record.ok and record.num_features:
            blocks.append(record.descriptors[:max_per_image])
            used += 1
    if not blocks:
        raise DelfxError("fit-pca: no image gave any feature")
    descriptors = np.concatenate(blocks)
    log.info("fitting a %d-d PCA on %d descriptors from %d images", dim, len(descriptors), used)
    source = source or (f"delfx {__version__} fit-pca: model {model.model_id}, preset "
                        f"{config.preset}, {used} images, {len(descriptors)} descriptors, "
                        f"seed {seed}")
    return fit_pca(descriptors, dim, whiten=whiten, source=source, seed=seed)
