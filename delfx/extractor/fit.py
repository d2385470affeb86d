"""`delfx fit-pca`: learn the PCA post-processing of a model from a sample of images."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from delfx import __version__
from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
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
    from delfx.extractor.models import FITTABLE_MODELS, create_model, resolve_model
    config = resolve_model(config, FITTABLE_MODELS, takes="fit-pca needs a built-in model")
    model = create_model(config.replace(descriptor_dim=0, pca_path=None))
    return fit_pca_on_model(model, items, dim=dim, whiten=whiten, max_images=max_images,
                            max_per_image=max_per_image, seed=seed, source=source)


def fit_pca_on_model(model: FeatureModel, items: Sequence[ImageItem], *, dim: int = 40,
                     whiten: bool = False, max_images: int | None = None,
                     max_per_image: int | None = None, seed: int = 0,
                     source: str | None = None) -> PCAProjection:
    """Fit a PCA on the raw descriptors `model` (built with descriptor_dim 0) gives `items`."""
    from delfx.extractor.run import extract_items
    config = model.config
    items = list(items)
    if max_images is not None and len(items) > max_images:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), max_images, replace=False))]
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


def fit_hybrid_cnn_pca(config: ExtractConfig, items: Sequence[ImageItem], *, dim: int = 128,
                       max_per_image: int | None = None, source: str = "",
                       seed: int = 0) -> PCAProjection:
    """Fit delf-hybrid's whitened CNN projection on VGG16 samples at SIFT keypoints of `items`.

    The images are resized as `config` says (max_side), exactly as the model will see them.
    """
    from delfx.extractor.base import prepare_image
    from delfx.extractor.hybrid import CnnSampler
    from delfx.images import ImageError, load_image
    from delfx.extractor.rootsift import detect_rootsift
    sampler = CnnSampler("hed", config.precision)
    blocks = []
    for item in items:
        try:
            image = load_image(item.path, max_pixels=config.max_pixels, min_side=config.min_side)
        except ImageError as exc:
            log.warning("skipping %s: %s", item.image_id, exc)
            continue
        resized = prepare_image(image, config)[0]
        locations = detect_rootsift(resized, config.max_features)[0][:max_per_image]
        if len(locations):
            blocks.extend(sampler(resized, locations))  # every scale's samples, pooled
    if not blocks:
        raise DelfxError("no image gave any SIFT keypoint")
    samples = np.concatenate(blocks)
    log.info("fitting the hybrid CNN PCA (%d-d, whitened) on %d samples from %d images",
             dim, len(samples), len(blocks) // len(sampler.scales))
    return fit_pca(samples, dim, whiten=True, source=source, seed=seed)
