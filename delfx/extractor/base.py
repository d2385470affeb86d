"""The one small interface every feature model implements, and the resizing they share."""

from __future__ import annotations

import abc
import json
from typing import Any, Sequence

import numpy as np

from delfx.config import ExtractConfig
from delfx.digests import text_sha256
from delfx.store.records import ImageFeatures


class FeatureModel(abc.ABC):
    """A local-feature model: image in, `ImageFeatures` out, same record for every model.

    Subclasses set `name` (the registry key), `descriptor_dim` and implement `_extract`, which
    receives the image already resized by `prepare_image` and returns locations in the resized
    image; `extract` maps them back to original-image pixels. The pipeline never knows which
    model it runs.
    """

    name: str = "abstract"
    descriptor_dim: int = 0
    # True when `_extract` reports scales as sizes in pixels of the image it saw (classical
    # detectors); they are then converted to original-image pixels. DELF's 1 / pyramid scale is
    # unitless and stays as it is.
    scales_in_pixels: bool = False

    def __init__(self, config: ExtractConfig):
        self.config = config

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Human-readable id recorded in every artifact, e.g. `delf-vgg16-hed+norm+pca40`."""

    @abc.abstractmethod
    def weights_digest(self) -> str:
        """sha256 (hex) of everything learned: weights, PCA, attention. Empty string if none."""

    @property
    def model_hash(self) -> str:
        """Identifies the model exactly: weights digest + the config that shapes its output."""
        payload = json.dumps({"id": self.model_id, "weights": self.weights_digest(),
                              "config": self.output_config()}, sort_keys=True)
        return text_sha256(payload)

    def output_config(self) -> dict[str, Any]:
        """The config fields that change this model's output (recorded and hashed)."""
        return self.config.to_dict()

    @property
    def unit_norm(self) -> bool:
        """Whether every descriptor this model writes has unit L2 norm (recorded in the
        manifest; readers then refuse a stored descriptor that does not: it is damaged)."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.model_id, "hash": self.model_hash,
                "descriptor_dim": self.descriptor_dim, "unit_norm": self.unit_norm}

    @abc.abstractmethod
    def _extract(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(locations (N,2) y,x in the given image, descriptors (N,D), scales (N,), scores (N,))."""

    def _extract_many(self, images: Sequence[np.ndarray]) -> list[tuple]:
        """Batched extraction hook; the default runs images one by one."""
        return [self._extract(image) for image in images]

    def extract(self, image: np.ndarray, image_id: str = "") -> ImageFeatures:
        """Features of one decoded uint8 RGB image (H, W, 3), locations in its own pixels."""
        return self.extract_batch([image], [image_id])[0]

    def extract_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]
                      ) -> list[ImageFeatures]:
        prepared = [prepare_image(image, self.config) for image in images]
        raw = self._extract_many([p[0] for p in prepared])
        out = []
        for image, image_id, (resized, sy, sx), result in zip(images, image_ids, prepared, raw):
            locations, descriptors, scales, scores = result
            locations = to_original_pixels(locations, sy, sx)
            if self.scales_in_pixels:
                # geometric mean: image_size squashes unevenly (sy != sx)
                scales = scales / np.sqrt(sy * sx)
            out.append(ImageFeatures(image_id, locations.astype(np.float32),
                                     descriptors.astype(np.float32), scales.astype(np.float32),
                                     scores.astype(np.float32), int(image.shape[0]),
                                     int(image.shape[1])))
        return out


def target_size(height: int, width: int, config: ExtractConfig) -> tuple[int, int]:
    """(h, w) the model sees: square `image_size`, or long side capped at `max_side`."""
    if config.image_size:
        return config.image_size, config.image_size
    if config.max_side and max(height, width) > config.max_side:
        ratio = config.max_side / max(height, width)
        return max(1, round(height * ratio)), max(1, round(width * ratio))
    return height, width


def prepare_image(image: np.ndarray, config: ExtractConfig) -> tuple[np.ndarray, float, float]:
    """Resize as the config says; return (image, sy, sx) with sy = resized_h / original_h."""
    import cv2
    height, width = image.shape[:2]
    h, w = target_size(height, width, config)
    if (h, w) == (height, width):
        return image, 1.0, 1.0
    # INTER_AREA when shrinking: averaging avoids the aliasing that bilinear shows at 1/8 size.
    interpolation = cv2.INTER_AREA if h * w < height * width else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation), h / height, w / width


def to_original_pixels(locations: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Map (y, x) from a resized image back to the original, pixel centres at integers.

    With half-pixel alignment (what cv2.resize and tf.image.resize use), resized pixel centre
    y maps to original (y + 0.5) / sy - 0.5.
    """
    if sy == 1.0 and sx == 1.0:
        return locations
    out = np.empty_like(locations, dtype=np.float64)
    out[:, 0] = (locations[:, 0] + 0.5) / sy - 0.5
    out[:, 1] = (locations[:, 1] + 0.5) / sx - 0.5
    return out
