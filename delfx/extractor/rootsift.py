"""RootSIFT: OpenCV SIFT keypoints with Hellinger-kernel descriptors, behind the DELF interface.

RootSIFT (Arandjelovic & Zisserman, "Three things everyone should know to improve object
retrieval", CVPR 2012) L1-normalises each SIFT descriptor and takes the element-wise square
root, so that the dot product of two descriptors is the Hellinger kernel of the SIFT
histograms; the results are L2-normalised by construction. An optional `PCAProjection`
(fitted with `delfx fit-pca`) reduces them to `config.descriptor_dim`, as DELF does.

Pixel convention: SIFT runs with `enable_precise_upscale=True`. With OpenCV's default (False)
the 2x upsampled first octave shifts every keypoint by +0.25 px in x and y (measured: flipping
an image moves its keypoints by 0.5 px instead of 0; a blob centred at (100, 120) is found at
(100.24, 120.24)). With precise upscaling, `kp.pt` has pixel centres at integer coordinates,
the convention of `ImageFeatures` and of `to_original_pixels`. (`detect_rootsift` can run the
default upscaling for comparison, corrected by UPSCALE_OFFSET_PX; on landmarks-dev neither finds
better keypoints consistently: docs/MODELS.md, "Which recipe".)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
from delfx.extractor.pca import PCAProjection

logger = logging.getLogger(__name__)

SIFT_DIM = 128
# Fixed detector parameters (OpenCV/Lowe defaults except the upscale fix); recorded in
# `output_config` so that changing any of them changes the model hash.
SIFT_PARAMS: dict[str, Any] = {"n_octave_layers": 3, "contrast_threshold": 0.04,
                               "edge_threshold": 10.0, "sigma": 1.6, "precise_upscale": True}
# OpenCV's default (imprecise) 2x upscaling of the first octave places every keypoint, in every
# octave, this far right of and below where it is (measured on Gaussian blobs: +0.22-0.32 px;
# a flipped image's keypoints move by 0.50 px instead of 0); subtracted when it is used.
UPSCALE_OFFSET_PX = 0.25
# The config fields that change RootSIFT output; DELF-only ones (scales, score_threshold,
# precision, batch_size) must not change its hash.
OUTPUT_FIELDS = ("image_size", "max_side", "max_features", "descriptor_dim", "descriptor_dtype",
                 "min_side")


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT -> RootSIFT: L1-normalise, then element-wise sqrt (unit L2 norm follows).

    SIFT histograms are non-negative; the clip only guards against foreign input.
    """
    d = np.clip(np.asarray(descriptors, dtype=np.float32), 0.0, None)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), np.float32(1e-12)))


class RootSIFT(FeatureModel):
    """The classical baseline: SIFT keypoints, RootSIFT descriptors, optional PCA.

    Output dimension, made explicit by `descriptor_dim`:
        * `config.descriptor_dim` 0 or 128, no PCA: raw 128-d RootSIFT.
        * any other `config.descriptor_dim` d: `pca` is required (in_dim 128, out_dim >= d; a
          larger PCA is truncated to its d leading axes) and applied after RootSIFT.
        * `config.descriptor_dim` 128 with a 128-d PCA: rotation (and whitening) only.
        * 0 with a PCA is refused as contradictory ("0 keeps the raw dimension").

    Instances hold no OpenCV object (a detector is made per call, it costs < 1 us), so they are
    cheap to build, picklable and safe to ship to a Ray actor.

    Args:
        config: the extraction config.
        pca: projection fitted on RootSIFT descriptors of other images, or None.

    Raises:
        DelfxError: when the config and the PCA do not fit together.
    """

    name = "rootsift"
    # kp.size is a diameter in pixels of the image the model sees (not 1 / pyramid scale as for
    # DELF); this flag asks the base class to divide it by the resize factor, so that stored
    # scales are in original-image pixels.
    scales_in_pixels = True

    def __init__(self, config: ExtractConfig, pca: PCAProjection | None = None):
        super().__init__(config)
        dim = config.descriptor_dim
        if pca is not None and pca.in_dim != SIFT_DIM:
            raise DelfxError(f"RootSIFT needs a PCA fitted on {SIFT_DIM}-d RootSIFT descriptors, "
                             f"got one with input dimension {pca.in_dim}")
        if dim == 0 and pca is not None:
            raise DelfxError("descriptor_dim 0 keeps raw 128-d RootSIFT, but a PCA was given; "
                             f"set descriptor_dim to {pca.out_dim} to use it")
        if dim not in (0, SIFT_DIM) or (dim == SIFT_DIM and pca is not None):
            if pca is None:
                raise DelfxError(f"RootSIFT with descriptor_dim {dim} needs a PCA: run "
                                 "`delfx fit-pca` on RootSIFT descriptors, or set descriptor_dim "
                                 f"{SIFT_DIM} (or 0) for raw RootSIFT")
            pca = pca.for_descriptors(SIFT_DIM, dim, "RootSIFT")
        self.pca = pca
        self.descriptor_dim = pca.out_dim if pca is not None else SIFT_DIM

    @property
    def model_id(self) -> str:
        if self.pca is None:
            return self.name
        return f"{self.name}+pca{self.pca.out_dim}" + ("+whiten" if self.pca.whiten else "")

    def weights_digest(self) -> str:
        return self.pca.digest() if self.pca is not None else ""

    @property
    def unit_norm(self) -> bool:
        return True  # RootSIFT is unit by construction, and the PCA re-normalises

    def output_config(self) -> dict[str, Any]:
        values = self.config.to_dict()
        return {**{key: values[key] for key in OUTPUT_FIELDS}, "sift": dict(SIFT_PARAMS)}

    def _extract(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """SIFT on the grey image; the `max_features` strongest keypoints, strongest first."""
        locations, descriptors, sizes, responses = detect_rootsift(image, self.config.max_features)
        if self.pca is not None:
            descriptors = self.pca.apply(descriptors)  # (0, 128) -> (0, out_dim) too
        return locations, descriptors, sizes, responses


def sift_detector(max_features: int, precise_upscale: bool | None = None):
    """OpenCV's SIFT with delfx's settings (SIFT_PARAMS), at most `max_features` keypoints;
    `precise_upscale` overrides SIFT_PARAMS' (benchmarks compare the two)."""
    import cv2
    if precise_upscale is None:
        precise_upscale = SIFT_PARAMS["precise_upscale"]
    return cv2.SIFT_create(nfeatures=max_features,
                           nOctaveLayers=SIFT_PARAMS["n_octave_layers"],
                           contrastThreshold=SIFT_PARAMS["contrast_threshold"],
                           edgeThreshold=SIFT_PARAMS["edge_threshold"],
                           sigma=SIFT_PARAMS["sigma"],
                           enable_precise_upscale=bool(precise_upscale))


def detect_rootsift(image: np.ndarray, max_features: int, precise_upscale: bool | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `max_features` strongest SIFT keypoints of an image, strongest first, with RootSIFT.

    Shared by `RootSIFT` and the hybrid model (delfx/extractor/hybrid.py), so that both place
    keypoints identically.

    Args:
        image: uint8 RGB (H, W, 3), RGBA or grey.
        max_features: keep at most this many keypoints.
        precise_upscale: OpenCV's precise first-octave upscaling (default SIFT_PARAMS').

    Returns:
        locations (N, 2) (y, x) in image pixels, RootSIFT (N, 128) float32 of unit L2 norm,
        sizes (N,) keypoint diameters in pixels, responses (N,).
    """
    gray = _to_gray(image)
    empty = (np.zeros((0, 2), np.float32), np.zeros((0, SIFT_DIM), np.float32),
             np.zeros((0,), np.float32), np.zeros((0,), np.float32))
    if gray.size == 0:
        return empty
    if precise_upscale is None:
        precise_upscale = SIFT_PARAMS["precise_upscale"]
    keypoints, descriptors = sift_detector(max_features, precise_upscale).detectAndCompute(gray,
                                                                                           None)
    if not keypoints or descriptors is None:
        return empty
    x, y, size, angle, response = np.array(
        [(k.pt[0], k.pt[1], k.size, k.angle, k.response) for k in keypoints], np.float64).T
    if not precise_upscale:
        x, y = x - UPSCALE_OFFSET_PX, y - UPSCALE_OFFSET_PX
    # OpenCV's own nfeatures cut keeps every keypoint tied with the last one (and SIFT emits
    # one keypoint per dominant orientation, all with the same response), so it can return
    # more than asked; its order also depends on threading. A full sort key makes both the
    # cut and the order deterministic.
    order = np.lexsort((angle, size, x, y, -response))
    descriptors = root_sift(descriptors[order])
    # A zero SIFT histogram cannot become a unit vector; drop it rather than store it.
    valid = descriptors.any(axis=1)
    keep = order[valid][:max_features]
    descriptors = descriptors[valid][:max_features]
    locations = np.stack([y[keep], x[keep]], axis=1).astype(np.float32)
    return (locations, descriptors.astype(np.float32), size[keep].astype(np.float32),
            response[keep].astype(np.float32))


def _to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W) from uint8 RGB (H, W, 3), RGBA, (H, W, 1) or already grey."""
    import cv2
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DelfxError(f"RootSIFT expects uint8 images, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4) and image.size:
        code = cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.zeros(image.shape[:2], np.uint8)
    raise DelfxError(f"RootSIFT expects an (H, W, 3) RGB image, got shape {image.shape}")
