"""Keras training helpers shared by every `delfx train` and `delfx train-delf` run.

* the output folder: refused before any work unless it is empty or (with overwrite) a model
  directory of the same kind; written under a temporary name and swapped in, re-checked then;
* one log line per epoch and the pure training time (`EpochLogger`);
* the learning-rate schedule and early stopping of the reference recipe (`callbacks`);
* balanced class weights, the training-curves picture, and the result every run returns.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from delfx.artifacts import has_format, header
from delfx.digests import file_sha256
from delfx.errors import DelfxError
from delfx.paths import (atomic_write_bytes, atomic_write_json, foreign_entries,
                         write_directory_atomically)

log = logging.getLogger(__name__)

# The formats of the folders `delfx train` writes (config.json's "format"): --overwrite may
# replace one of them with another, never any other folder.
CLASSIFIER_FORMAT = "delfx-classifier"
GLOBAL_MODEL_FORMAT = "delfx-global-model"
TRAINED_MODEL_FORMATS = (CLASSIFIER_FORMAT, GLOBAL_MODEL_FORMAT)
# The files of a `delfx train` model directory (both families).
MODEL_FILE, LABELS_FILE, CONFIG_FILE = "model.keras", "labels.json", "config.json"
CURVES_JSON, CURVES_PNG = "curves.json", "curves.png"
TRAINED_MODEL_CONFIG = CONFIG_FILE
TRAINED_MODEL_FILES = {MODEL_FILE, LABELS_FILE, CONFIG_FILE, CURVES_JSON, CURVES_PNG}


def is_trained_model_dir(directory: Path) -> bool:
    """Whether `directory` holds a `delfx train` output (a classifier or a GeM global model)."""
    return has_format(Path(directory) / TRAINED_MODEL_CONFIG, TRAINED_MODEL_FORMATS)


def check_output_dir(out_dir: Path, overwrite: bool, replaceable: Callable[[Path], bool],
                     what: str, known: set[str] = TRAINED_MODEL_FILES) -> None:
    """Refuse an output folder before any work is done, not after an hour of training.

    Args:
        replaceable: whether a non-empty `out_dir` is a model directory that `overwrite` may
            replace (never an arbitrary folder that was named by mistake).
        what: the kind of model, for the messages ("classifier").
        known: the files such a directory holds; one holding anything else is not replaced
            (it would be deleted with the old model).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DelfxError(f"{out_dir} exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DelfxError(f"{out_dir} is not empty; choose a new directory or overwrite "
                         f"(--overwrite) an earlier {what}")
    if not replaceable(out_dir):
        raise DelfxError(f"{out_dir} is not empty and is not a delfx {what}; refusing to "
                         f"replace it even with --overwrite")
    foreign = foreign_entries(out_dir, known)
    if foreign:
        raise DelfxError(f"{out_dir} holds files that are not the {what}'s "
                         f"({', '.join(foreign[:3])}): move them, then --overwrite")


def write_model_dir(out_dir: Path, overwrite: bool, write: Callable[[Path], None],
                    replaceable: Callable[[Path], bool], what: str,
                    known: set[str] = TRAINED_MODEL_FILES) -> None:
    """Write a model directory atomically; re-check `out_dir`, which may have filled meanwhile."""
    write_directory_atomically(Path(out_dir), write, lambda: check_output_dir(
        out_dir, overwrite, replaceable, what, known))


@functools.cache
def _epoch_logger_class():
    from delfx.tf_quiet import import_keras
    keras = import_keras()

    class EpochLogger(keras.callbacks.Callback):
        """One log line per epoch (Keras runs with verbose=0) and the pure training time."""

        def __init__(self, epochs: int):
            super().__init__()
            self.epochs = epochs
            self.train_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = self._last_batch = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._last_batch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.train_seconds.append(self._last_batch - self._begin)
            parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss",
                                                     "val_accuracy") if k in logs]
            if "learning_rate" in logs:
                parts.append(f"lr {float(logs['learning_rate']):.1e}")
            log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, ", ".join(parts),
                     time.perf_counter() - self._begin)

        def samples_per_second(self, samples_per_epoch: int) -> float:
            """Training throughput; epoch 1 is left out when there are more (it traces)."""
            timed = self.train_seconds[1:] or self.train_seconds
            return samples_per_epoch * len(timed) / max(sum(timed), 1e-9)

    return EpochLogger


def epoch_logger(epochs: int):
    """A Keras callback: one log line per epoch, and the pure training seconds of each."""
    return _epoch_logger_class()(epochs)


def callbacks(monitor: str, *, lr_factor: float, lr_patience: int, min_learning_rate: float,
              patience: int | None, logger) -> list:
    """ReduceLROnPlateau, EarlyStopping with the best weights restored (unless patience is
    None), and the logger last (it then sees the learning rate the schedule put in the logs)."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    out = [keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=lr_factor,
                                             patience=lr_patience, min_lr=min_learning_rate,
                                             verbose=0)]
    if patience is not None:
        out.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                                 restore_best_weights=True, verbose=0))
    return out + [logger]


@dataclass
class Fit:
    """What `fit_head` measured: the Keras history and what is read off it."""

    history: dict[str, list]
    monitor: str
    epochs_run: int
    best_epoch: int
    samples_per_s: float
    curves: dict[str, Any]


def fit_head(model, config, train_ds, val_ds, train_samples: int) -> Fit:
    """Train a compiled model the reference way: ReduceLROnPlateau and early stopping on the
    validation loss (the training loss without a validation set), best weights restored, one
    log line per epoch; the datasets shuffle themselves (seeded), Keras does not."""
    monitor = "val_loss" if val_ds is not None else "loss"
    logger = epoch_logger(config.epochs)
    schedule = callbacks(monitor, lr_factor=config.lr_factor, lr_patience=config.lr_patience,
                         min_learning_rate=config.min_learning_rate, patience=config.patience,
                         logger=logger)
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=0,
                        shuffle=False, callbacks=schedule).history
    best_epoch = int(np.argmin(history[monitor])) + 1
    return Fit(history, monitor, len(history.get("loss", [])), best_epoch,
               round(logger.samples_per_second(train_samples), 2),
               history_curves(history, monitor, best_epoch))


def write_trained_model(directory: Path, model, labels, info: dict[str, Any],
                        curves: dict[str, Any], format_name: str, version: int) -> dict[str, Any]:
    """Write a `delfx train` model directory's files into `directory` (which must exist).

    config.json comes last: its presence marks a complete directory. It records `info`, the
    header, the sha256 of model.keras (what identifies the model, e.g. next to the global
    descriptors it made in a feature set) and the creation time; returns what it holds.
    """
    directory = Path(directory)
    model.save(directory / MODEL_FILE)
    labels.save(directory / LABELS_FILE)
    atomic_write_json(directory / CURVES_JSON, curves)
    atomic_write_bytes(directory / CURVES_PNG, plot_curves(curves))
    written = {**header(format_name, version), **info,
               "model_hash": file_sha256(directory / MODEL_FILE),
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(directory / CONFIG_FILE, written)
    return written


def balanced_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights n / (C * n_c) (scikit-learn's "balanced"), as float32."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = len(targets) / (present.sum() * counts[present])
    return per_class[targets].astype(np.float32)


def history_curves(history: Mapping[str, list], monitor: str, best_epoch: int | None
                   ) -> dict[str, Any]:
    """What curves.json records of a Keras history."""
    epochs = len(history.get("loss", []))
    curves: dict[str, Any] = {"epoch": list(range(1, epochs + 1)), "monitor": monitor}
    if best_epoch is not None:
        curves["best_epoch"] = best_epoch
    for key, values in history.items():
        curves[key] = [float(v) for v in values]
    return curves


def plot_curves(curves: Mapping[str, Any]) -> bytes:
    """PNG of loss and accuracy per epoch, training vs validation.

    Uses matplotlib's Agg canvas directly (not pyplot), so no global backend is switched and no
    display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = curves.get("epoch", [])
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, k + 1)
        for prefix, name in (("", "train"), ("val_", "validation")):
            values = curves.get(prefix + metric)
            if values:
                ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=name)
        if curves.get("best_epoch") is not None:
            ax.axvline(curves["best_epoch"], color="grey", linestyle=":", label="best")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass
class TrainResult:
    """What a `delfx train` run produced and measured (a sample is one image).

    Attributes:
        out_dir: the model directory written.
        model: the trained model (same as loading `out_dir`).
        num_classes, train_images, validation_images: data sizes.
        epochs_run: epochs trained before early stopping (or the configured maximum).
        best_epoch: 1-based epoch whose weights were kept.
        val_accuracy, val_loss: of the kept weights on the validation set (None without one).
        train_samples_per_s: training throughput (forward + backward, first epoch excluded
            when there is more than one, because it includes graph tracing).
        inference_samples_per_s: prediction throughput.
        seconds: wall time of the whole run.
        data: the training data summary (as recorded in config.json).
        input_mode: how inputs were fed ("memory", "stream", or "images").
    """

    out_dir: Path
    model: Any
    num_classes: int
    train_images: int
    validation_images: int
    epochs_run: int
    best_epoch: int
    val_accuracy: float | None
    val_loss: float | None
    train_samples_per_s: float
    inference_samples_per_s: float
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    input_mode: str = "memory"
