"""The bottleneck head every trained landmark classifier of delfx ends in, and its config base.

    x -> [Dense(units) -> BatchNormalization -> activation -> Dropout] x blocks
      -> Dense(num_classes, sigmoid)

trained with binary cross-entropy over one-hot targets and Adam (the GLR2019 reference recipe).
The bottleneck classifier on local features (delfx.classifier) and the GeM global models
(delfx.globalnet) share the head and every hyper-parameter of it and of the training run:
`HeadConfig` holds those fields and their validation once; each family adds its own fields.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from delfx.errors import DelfxError


def is_int(value: Any) -> bool:
    """An integer, and not a bool (True is an int to Python, never to a config)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def auto_batchnorm_momentum(steps_per_epoch: int) -> float:
    """BatchNorm momentum whose averaging window is one epoch, at most 100 steps (Keras' 0.99).

    The moving statistics are what validation and inference use. With Keras' fixed 0.99 they
    average over ~100 steps; a small set trains in a few steps per epoch, so for dozens of
    epochs they would describe long-gone weights and the validation loss would lag far behind
    the training loss (early stopping would then judge stale statistics, not the model).
    """
    window = min(max(int(steps_per_epoch), 1), 100)
    return 1.0 - 1.0 / window


@dataclass(frozen=True)
class HeadConfig:
    """The bottleneck head and its training run (recorded in the model's config.json).

    Attributes:
        units: width of each bottleneck Dense layer.
        blocks: number of [Dense -> BatchNorm -> activation -> Dropout] blocks.
        activation: Keras activation name of the blocks.
        dropout: dropout rate after each block.
        batchnorm_momentum: momentum of the BatchNormalization moving statistics; None picks
            it from the steps per epoch (see `auto_batchnorm_momentum`).
        batch_size: training batch size (capped to the number of training images).
        epochs: maximum number of epochs; early stopping usually ends sooner.
        learning_rate: initial Adam learning rate.
        min_learning_rate: ReduceLROnPlateau floor.
        lr_factor: ReduceLROnPlateau factor.
        lr_patience: epochs without validation-loss improvement before the rate is reduced.
        patience: epochs without improvement before early stopping (best weights restored).
        min_samples: classes with fewer usable images are dropped (long-tail cut; 1 keeps all).
        validation_share: share of each class held out for validation (0 disables validation;
            early stopping then watches the training loss).
        class_weighting: weight samples n / (C * n_class) so rare classes count as much.
        seed: seeds the split, the shuffling, the initial weights and dropout.
    """

    NAME = "head config"  # how messages name the config (subclasses say which)

    units: int = 512
    blocks: int = 1
    activation: str = "relu"
    dropout: float = 0.5
    batchnorm_momentum: float | None = None
    batch_size: int = 256
    epochs: int = 100
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    lr_factor: float = 0.2
    lr_patience: int = 3
    patience: int = 8
    min_samples: int = 1
    validation_share: float = 0.1
    class_weighting: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()

    def need(self, ok: bool, what: str) -> None:
        if not ok:
            raise DelfxError(f"{self.NAME}: {what}")

    def need_int(self, names: tuple[str, ...], minimum: int) -> None:
        for name in names:
            value = getattr(self, name)
            self.need(is_int(value) and value >= minimum,
                      f"{name} must be an integer >= {minimum}, got {value!r}")

    def check(self) -> None:
        """Validate every field; subclasses extend this (and call it)."""
        self.need_int(("units", "batch_size", "epochs", "min_samples"), 1)
        self.need_int(("blocks", "lr_patience", "patience", "seed"), 0)
        self.need(isinstance(self.activation, str) and bool(self.activation),
                  f"activation must be a Keras activation name, got {self.activation!r}")
        for name in ("dropout", "learning_rate", "min_learning_rate", "lr_factor",
                     "validation_share"):
            value = getattr(self, name)
            self.need(isinstance(value, numbers.Real) and not isinstance(value, bool),
                      f"{name} must be a number, got {value!r}")
        self.need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        self.need(self.batchnorm_momentum is None or (
                      isinstance(self.batchnorm_momentum, numbers.Real)
                      and 0.0 <= self.batchnorm_momentum < 1.0),
                  f"batchnorm_momentum must be in [0, 1) or None, got {self.batchnorm_momentum}")
        self.need(0.0 <= self.validation_share < 1.0,
                  f"validation_share must be in [0, 1), got {self.validation_share}")
        self.need(0.0 < self.min_learning_rate <= self.learning_rate,
                  f"need 0 < min_learning_rate <= learning_rate, got {self.min_learning_rate} "
                  f"and {self.learning_rate}")
        self.need(0.0 < self.lr_factor < 1.0, f"lr_factor must be in (0, 1), got {self.lr_factor}")
        self.need(isinstance(self.class_weighting, bool),
                  f"class_weighting must be true or false, got {self.class_weighting!r}")

    def momentum(self, steps_per_epoch: int) -> float:
        """The BatchNorm momentum used: the configured one, or one epoch's window."""
        if self.batchnorm_momentum is not None:
            return float(self.batchnorm_momentum)
        return auto_batchnorm_momentum(steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The config from a dict (config.json, a config file); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DelfxError(f"{cls.NAME}: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def check_activation(config: HeadConfig) -> None:
    """Refuse an activation name Keras does not know, before any network is built."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    try:
        keras.activations.get(config.activation)
    except ValueError:
        raise DelfxError(f"{config.NAME}: unknown activation {config.activation!r}") from None


def bottleneck(x, config: HeadConfig, num_classes: int, steps_per_epoch: int):
    """The head on a Keras tensor `x`: the bottleneck blocks, then one sigmoid per class."""
    from keras import layers
    check_activation(config)
    momentum = config.momentum(steps_per_epoch)
    for b in range(config.blocks):
        x = layers.Dense(config.units, name=f"bottleneck_{b}")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"batchnorm_{b}")(x)
        x = layers.Activation(config.activation, name=f"activation_{b}")(x)
        x = layers.Dropout(config.dropout, seed=config.seed + b, name=f"dropout_{b}")(x)
    return layers.Dense(num_classes, activation="sigmoid", name="probabilities")(x)


def compile_head(model, config: HeadConfig) -> None:
    """Adam + binary cross-entropy over one-hot targets (the reference recipe), top-1 accuracy."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    # "accuracy" alone would resolve to binary accuracy (per output unit) with this loss, which
    # is ~1 - 1/C for any model; categorical accuracy is the top-1 accuracy wanted here.
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
