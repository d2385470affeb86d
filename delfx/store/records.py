"""The per-image record that every feature model returns and every shard stores."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@dataclass
class ImageFeatures:
    """Local features of one image, or the reason it has none.

    Attributes:
        image_id: Stable id of the image (unique within a feature set).
        locations: (N, 2) float32, (y, x) in original-image pixels, pixel centres at integers.
        descriptors: (N, D) float32 or float16.
        scales: (N,) float32, 1 / pyramid scale for DELF (keypoint scale for classical models).
        scores: (N,) float32, attention score (detector response for classical models).
        height, width: size of the original image after EXIF orientation (0 when unreadable).
        status: "ok" or "failed".
        reason: failure code when failed (see delfx.images.REASONS), else "".
        message: human-readable failure detail when failed, else "".
        global_descriptor: (G,) L2-normalised global (GeM) vector of the image, or None when
            the feature set has none (schema v2, `delfx extract --global-model`).
    """

    image_id: str
    locations: np.ndarray = field(default_factory=lambda: _empty((0, 2)))
    descriptors: np.ndarray = field(default_factory=lambda: _empty((0, 0)))
    scales: np.ndarray = field(default_factory=lambda: _empty((0,)))
    scores: np.ndarray = field(default_factory=lambda: _empty((0,)))
    height: int = 0
    width: int = 0
    status: str = "ok"
    reason: str = ""
    message: str = ""
    global_descriptor: np.ndarray | None = None

    @classmethod
    def failed(cls, image_id: str, reason: str, message: str, *, height: int = 0,
               width: int = 0, descriptor_dim: int = 0) -> "ImageFeatures":
        """A record for an image that produced no features, with why."""
        return cls(image_id=image_id, descriptors=_empty((0, descriptor_dim)), height=height,
                   width=width, status="failed", reason=reason, message=message)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def num_features(self) -> int:
        return int(self.locations.shape[0])

    def validate(self, descriptor_dim: int | None = None) -> None:
        """Raise ValueError if the arrays disagree in length or shape (a bug in a feature model)."""
        n = self.locations.shape[0]
        if self.locations.ndim != 2 or self.locations.shape[1] != 2:
            raise ValueError(f"{self.image_id}: locations must be (N, 2), got {self.locations.shape}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"{self.image_id}: descriptors must be (N, D) with N={n}, "
                             f"got {self.descriptors.shape}")
        if descriptor_dim is not None and n and self.descriptors.shape[1] != descriptor_dim:
            raise ValueError(f"{self.image_id}: descriptor dimension {self.descriptors.shape[1]} "
                             f"!= {descriptor_dim}")
        for name in ("scales", "scores"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{self.image_id}: {name} must be ({n},), "
                                 f"got {getattr(self, name).shape}")
        if self.status not in ("ok", "failed"):
            raise ValueError(f"{self.image_id}: status must be 'ok' or 'failed', got {self.status!r}")
        if self.status == "failed" and (n or not self.reason):
            raise ValueError(f"{self.image_id}: a failed image has no features and a reason")
        if self.global_descriptor is not None and np.ndim(self.global_descriptor) != 1:
            raise ValueError(f"{self.image_id}: global_descriptor must be (G,), got "
                             f"{np.shape(self.global_descriptor)}")

    def summary_row(self) -> tuple[bool, str, int]:
        """(ok, failure reason, number of features): what a run summary counts of an image."""
        return self.ok, self.reason, self.num_features

    def sorted_by_score(self) -> "ImageFeatures":
        """A copy with features in descending score order (stable), as shards store them."""
        order = np.argsort(-self.scores.astype(np.float64), kind="stable")
        return ImageFeatures(self.image_id, self.locations[order], self.descriptors[order],
                             self.scales[order], self.scores[order], self.height, self.width,
                             self.status, self.reason, self.message, self.global_descriptor)
