"""The bottleneck classifier network, its hyper-parameters, and the classifier directory.

Input: the top-`max_features` descriptors of an image (150 x D, float32, zero-padded) and a 0/1
mask of the real rows. Two heads:

* ``flatten`` (the reference GLR2019 design): zero the padded rows, Flatten the 150 x D block,
  then `blocks` x [Dense(units) -> BatchNormalization -> activation -> Dropout] and
  Dense(num_classes, sigmoid). Row k of the input is "the k-th strongest feature", so the
  first Dense learns one weight per (rank, descriptor dimension).
* ``pool``: a per-keypoint Dense(pool_units) -> activation, then the masked mean and max over
  the real keypoints (order-invariant: the same set of features in any order gives the same
  output), then the same bottleneck blocks and sigmoid output.

Both train with binary cross-entropy over one-hot targets (the reference recipe). ``pool`` is
the default because it generalises far better to new views of a landmark. Measured with the
default settings on `delfx sample-data` RootSIFT features, training on the train views and
classifying the unseen query views (seeds 0-4):

* 8 landmarks, 5 train / 3 query views each (long side 240): pool 1.00 every seed, flatten
  0.42-0.63 (chance 0.125);
* 10 landmarks, 9 train / 5 query views each (long side 320): pool 1.00 every seed, flatten
  0.74-0.83 (chance 0.10).

The k-th strongest keypoints of two views are rarely the same physical points in the same rank
order, so the per-rank weights of ``flatten`` need far more views per class to generalise: on
the larger set its validation loss stops improving after 40-70 epochs (early stopping), while
``pool``'s still falls at epoch 100. Both heads separate clustered
synthetic descriptors perfectly. ``flatten`` is cheaper: on 2 CPU cores (100 classes, batch 256)
it trains at ~6,400 images/s and predicts at ~18,000/s, ``pool`` at ~3,600/s and ~9,000/s.

A classifier directory holds ``model.keras`` (Keras native format, loaded with Keras'
safe_mode: no pickled code), ``labels.json`` (`LabelMap`), ``config.json`` (hyper-parameters,
the feature model it expects, data summary, throughput, versions), ``curves.json`` and
``curves.png`` (loss and accuracy per epoch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delfx.artifacts import read_json_artifact
from delfx.errors import DelfxError
from delfx.labels import LabelMap
from delfx.nets.heads import HeadConfig, bottleneck, check_activation
from delfx.nets.training import (CLASSIFIER_FORMAT, CONFIG_FILE, CURVES_JSON, CURVES_PNG,
                                 LABELS_FILE, MODEL_FILE, write_trained_model)

FORMAT_NAME, FORMAT_VERSION = CLASSIFIER_FORMAT, 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
ARTIFACTS = (MODEL_FILE, LABELS_FILE, CONFIG_FILE, CURVES_JSON, CURVES_PNG)
HEADS = ("pool", "flatten")
_LAYERS: dict[str, type] = {}  # our registered Keras layers, filled by _keras()


@dataclass(frozen=True)
class ClassifierConfig(HeadConfig):
    """Every hyper-parameter of a classifier and its training run (recorded in config.json).

    The head and training fields are `HeadConfig`'s (shared with the GeM global models); these
    are the classifier's own.

    Attributes:
        head: ``pool`` (order-invariant, the default: better on new views, see the module
            docstring) or ``flatten`` (the reference 150 x D bottleneck).
        pool_units: width of the per-keypoint Dense layer (pool head only).
        max_features: descriptors per image fed to the network (top by attention score).
        memory_budget_mb: inputs estimated above this are streamed from the shards instead of
            loaded into memory.
    """

    NAME = "classifier config"

    head: str = "pool"
    pool_units: int = 256
    max_features: int = 150
    memory_budget_mb: int = 4096

    def check(self) -> None:
        super().check()
        self.need(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        self.need_int(("pool_units", "max_features", "memory_budget_mb"), 1)


@functools.cache
def _keras():
    """Keras, imported on first use (with TensorFlow's start-up noise hidden), plus our layers.

    Deferred so that `ClassifierConfig` can be imported (by the CLI, for its options) without
    paying TensorFlow's import cost.
    """
    from delfx.tf_quiet import import_tensorflow
    import_tensorflow()
    import keras

    @keras.saving.register_keras_serializable(package="delfx")
    class MaskedMeanMax(keras.layers.Layer):
        """Concatenated mean and max over the rows where mask == 1 (zeros when there are none).

        A registered layer instead of a Lambda: Lambda layers hold Python bytecode that Keras'
        safe_mode refuses to load.
        """

        def call(self, inputs):
            values, mask = inputs
            ops = keras.ops
            m = ops.expand_dims(ops.cast(mask, values.dtype), -1)
            count = ops.sum(m, axis=1)
            mean = ops.sum(values * m, axis=1) / ops.maximum(count, 1.0)
            # Padded rows pushed far below any real value; a finite constant (not -inf) keeps the
            # gradient finite.
            largest = ops.max(values * m + (m - 1.0) * 1e9, axis=1)
            largest = ops.where(count > 0, largest, ops.zeros_like(largest))
            return ops.concatenate([mean, largest], axis=-1)

        def compute_output_shape(self, input_shape):
            values_shape = input_shape[0]
            return (values_shape[0], 2 * values_shape[-1])

    _LAYERS["MaskedMeanMax"] = MaskedMeanMax
    return keras


def build_model(config: ClassifierConfig, descriptor_dim: int, num_classes: int,
                steps_per_epoch: int = 100):
    """The uncompiled Keras model: inputs ``features`` (max_features, D) and ``mask`` (max_features,).

    Args:
        steps_per_epoch: sets the BatchNorm momentum when `config.batchnorm_momentum` is None.

    Raises:
        DelfxError: for an activation name Keras does not know.
    """
    keras = _keras()
    layers = keras.layers
    mf = config.max_features
    check_activation(config)
    features = keras.Input((mf, descriptor_dim), name="features")
    mask = keras.Input((mf,), name="mask")
    if config.head == "flatten":
        # Zeroing the padded rows makes an image with 40 features look the same whatever
        # garbage might sit in rows 41..150.
        masked = layers.Multiply(name="masked")([features, layers.Reshape((mf, 1))(mask)])
        x = layers.Flatten(name="flatten")(masked)
    else:
        points = layers.Dense(config.pool_units, activation=config.activation,
                              name="keypoint_dense")(features)
        x = _LAYERS["MaskedMeanMax"](name="masked_mean_max")([points, mask])
    outputs = bottleneck(x, config, num_classes, steps_per_epoch)
    return keras.Model({"features": features, "mask": mask}, outputs,
                       name=f"delfx_classifier_{config.head}")


class Classifier:
    """A trained classifier: the Keras model, its classes and everything recorded about it.

    Attributes:
        model: the Keras model.
        labels: `LabelMap` (output index <-> landmark id).
        config: `ClassifierConfig`.
        info: the whole config.json (feature model, data summary, throughput, versions).
    """

    def __init__(self, model, labels: LabelMap, config: ClassifierConfig, info: dict[str, Any]):
        self.model, self.labels, self.config, self.info = model, labels, config, info

    @property
    def descriptor_dim(self) -> int:
        return int(self.info["features"]["descriptor_dim"])

    @property
    def max_features(self) -> int:
        return self.config.max_features

    def predict(self, features: np.ndarray, mask: np.ndarray, batch_size: int | None = None
                ) -> np.ndarray:
        """Per-class probabilities (N, C) float32 (independent sigmoids, not summing to 1).

        Args:
            features: (N, max_features, D) descriptors, as `FeatureSet.padded_batch` gives them.
            mask: (N, max_features), bool or 0/1.
        """
        features = np.asarray(features, dtype=np.float32)
        mask = np.asarray(mask).astype(np.float32)
        want = (self.max_features, self.descriptor_dim)
        if features.ndim != 3 or features.shape[1:] != want or mask.shape != features.shape[:2]:
            raise DelfxError(f"classifier input must be features (N, {want[0]}, {want[1]}) and "
                             f"mask (N, {want[0]}); got {features.shape} and {mask.shape}")
        if not len(features):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch = batch_size or self.config.batch_size
        out = [np.asarray(self.model.predict_on_batch(
                   {"features": features[i:i + batch], "mask": mask[i:i + batch]}))
               for i in range(0, len(features), batch)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def check_features(self, manifest) -> None:
        """Refuse features from another model than the one the classifier was trained on."""
        want = self.info["features"]
        if (manifest.model_id, manifest.model_hash) != (want["model_id"], want["model_hash"]):
            raise DelfxError(f"the classifier was trained on {want['model_id']} features "
                             f"({want['model_hash'][:12]}), these are {manifest.model_id} "
                             f"({manifest.model_hash[:12]}): extract them with the same model")


def save_classifier(directory: Path, model, labels: LabelMap, info: dict[str, Any],
                    curves: dict[str, Any]) -> dict[str, Any]:
    """Write every artifact of a classifier into `directory` (which must exist); returns the
    content of config.json."""
    return write_trained_model(directory, model, labels, info, curves, FORMAT_NAME, FORMAT_VERSION)


def read_info(directory: Path) -> dict[str, Any]:
    """config.json of a classifier directory, checked for format and version."""
    path = Path(directory) / CONFIG_FILE
    data = read_json_artifact(path, FORMAT_NAME, SUPPORTED_FORMAT_VERSIONS,
                              what="delfx classifier", advice="upgrade delfx or retrain")
    for key in ("classifier", "features", "num_classes"):
        if key not in data:
            raise DelfxError(f"{path}: malformed classifier config (no {key!r})")
    return data


def load_classifier(directory: str | Path) -> Classifier:
    """Load a classifier directory written by `train_classifier`.

    Raises:
        DelfxError: if the directory is not a classifier of a known format version, or its
            files disagree with each other.
    """
    directory = Path(directory)
    info = read_info(directory)
    config = ClassifierConfig.from_dict(info["classifier"])
    labels = LabelMap.load(directory / LABELS_FILE)
    if len(labels) != info["num_classes"]:
        raise DelfxError(f"{directory}: {LABELS_FILE} has {len(labels)} classes, "
                         f"{CONFIG_FILE} says {info['num_classes']}")
    keras = _keras()
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise DelfxError(f"{directory}: {MODEL_FILE} is missing")
    try:
        model = keras.saving.load_model(model_path)  # safe_mode=True: no code from the file
    except Exception as exc:  # a damaged zip, foreign layers, ...: all one message to the user
        raise DelfxError(f"{model_path}: cannot load the model ({exc})") from exc
    if model.output_shape[-1] != len(labels):
        raise DelfxError(f"{model_path}: {model.output_shape[-1]} outputs for {len(labels)} classes")
    return Classifier(model, labels, config, info)
