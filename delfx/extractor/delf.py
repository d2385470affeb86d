"""The built-in DELF feature model: DelfNetwork + pyramid + PCA behind the FeatureModel interface."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from delfx.config import ExtractConfig
from delfx.digests import combined_sha256
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
from delfx.extractor.pca import PCAProjection
from delfx.extractor.pyramid import LevelOutput, level_size, select_features

log = logging.getLogger(__name__)

class DelfModel(FeatureModel):
    """DELF local features from the built-in Keras network.

    Args:
        config: extraction config (scales, threshold, max features, sizes, precision).
        backbone: 'vgg16' (bundled offline weights) or 'resnet50' (weights file needed).
        weights: 'hed' for vgg16; a file for resnet50; None for random weights (tests only).
        attention_weights: trained attention head; None scores cells by feature L2 norm.
        pca: post-processing projection; None keeps raw descriptors (descriptor_dim 0).
        score_threshold: fixed attention threshold replacing `config.score_threshold` (a head
            trained by `delfx train-delf` has its own scale, unlike the official module's).
    """

    name = "delf"

    def __init__(self, config: ExtractConfig, *, backbone: str = "vgg16", weights: str | None = "hed",
                 attention_weights: str | None = None, pca: PCAProjection | None = None,
                 score_threshold: float | None = None):
        super().__init__(config)
        self._fixed_threshold = score_threshold
        from delfx.tf_quiet import import_tensorflow
        self._tf = import_tensorflow()
        from delfx.extractor.lite import build_network
        self.network, self._int8 = build_network(backbone, weights, attention_weights,
                                                 config.precision)
        self.backbone = backbone
        self.pca = pca
        if not config.descriptor_dim and pca is not None:
            raise DelfxError("descriptor_dim 0 means raw descriptors: do not pass a PCA")
        if config.descriptor_dim and pca is None:
            raise DelfxError(f"delf-{backbone} needs a PCA to output {config.descriptor_dim}-d "
                             f"descriptors: run `delfx fit-pca` or set descriptor_dim 0")
        if pca is not None:
            if pca.in_dim != self.network.spec.channels:
                raise DelfxError(f"PCA expects {pca.in_dim}-d input, the {backbone} layer gives "
                                 f"{self.network.spec.channels}")
            if config.descriptor_dim and config.descriptor_dim != pca.out_dim:
                self.pca = pca.truncate(config.descriptor_dim)
        self.descriptor_dim = self.pca.out_dim if self.pca is not None else self.network.spec.channels
        self.rf = self.network.receptive_field
        # One trace for every image size and batch size: all dimensions are None.
        tf = self._tf
        self._forward = tf.function(
            self._forward_impl, reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                             tf.TensorSpec([2], tf.int32)])
        self._resize = tf.function(
            lambda images01, size: tf.image.resize(images01, size, method="bilinear"),
            reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                             tf.TensorSpec([2], tf.int32)])
        self.backbone_seconds = 0.0  # time spent in the network, for the benchmark

    @property
    def min_level_side(self) -> int:
        # Two cells of the backbone: below that a level yields no usable cell.
        return int(2 * self.rf.stride)

    @property
    def fixed_score_threshold(self) -> float | None:
        """The threshold this model always uses, or None when `config.score_threshold` applies.

        Norm scores are on another scale than attention: the threshold only applies to an
        attention head, and a head trained by delfx brings its own.
        """
        if self.network.score_mode == "norm":
            return 0.0
        return self._fixed_threshold

    @property
    def score_threshold(self) -> float:
        fixed = self.fixed_score_threshold
        return self.config.score_threshold if fixed is None else fixed

    @property
    def model_id(self) -> str:
        weights = {"hed": "hed", None: "random"}.get(self.network.weights_source, "file")
        pca = f"+pca{self.pca.out_dim}" if self.pca is not None else ""
        return f"delf-{self.backbone}-{weights}+{self.network.score_mode}{pca}"

    def weights_digest(self) -> str:
        parts = [self.network.weights_digest(), self.pca.digest() if self.pca is not None else ""]
        return combined_sha256(parts)

    @property
    def unit_norm(self) -> bool:
        return self.pca is not None  # PCA post-processing ends with L2; raw cells are not unit

    def output_config(self) -> dict[str, Any]:
        data = self.config.to_dict()
        data.pop("batch_size")  # batching does not change the features
        data["score"] = self.network.score_mode
        data["effective_score_threshold"] = self.score_threshold
        return data

    @property
    def trace_count(self) -> int:
        return int(self._forward.experimental_get_tracing_count())

    def _forward_impl(self, images01, size):
        tf = self._tf
        resized = tf.image.resize(images01, size, method="bilinear")
        return self.network(resized)

    def run_levels(self, batch: np.ndarray) -> list[list[LevelOutput]]:
        """Network outputs at every pyramid level that fits, for a batch of same-size images."""
        import time
        tf = self._tf
        height, width = batch.shape[1:3]
        x = tf.convert_to_tensor(batch, dtype=tf.float32) / 255.0
        per_image: list[list[LevelOutput]] = [[] for _ in range(len(batch))]
        for scale in self.config.scales:
            h, w = level_size(height, width, scale)
            if min(h, w) < self.min_level_side:
                continue
            start = time.perf_counter()
            size = tf.constant([h, w], tf.int32)
            if self._int8 is not None:
                features, scores = self._int8(self._resize(x, size).numpy())
            else:
                features, scores = self._forward(x, size)
                features, scores = features.numpy(), scores.numpy()
            self.backbone_seconds += time.perf_counter() - start
            for k in range(len(batch)):
                per_image[k].append(LevelOutput(scale, h, w, features[k], scores[k]))
        return per_image

    def _finish(self, levels: list[LevelOutput], height: int, width: int):
        locations, raw, scales, scores = select_features(
            levels, height, width, self.rf, self.score_threshold, self.config.max_features)
        descriptors = self.pca.apply(raw) if self.pca is not None else raw
        return locations, descriptors, scales, scores

    def _extract(self, image: np.ndarray):
        return self._extract_many([image])[0]

    def _extract_many(self, images: Sequence[np.ndarray]) -> list[tuple]:
        results: list[tuple | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for k, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(k)
        step = self.config.batch_size
        for shape, members in by_shape.items():
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                levels = self.run_levels(np.stack([images[k] for k in chunk]))
                for k, image_levels in zip(chunk, levels):
                    results[k] = self._finish(image_levels, shape[0], shape[1])
        return results  # type: ignore[return-value]
