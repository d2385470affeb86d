"""`train_classifier`: train the bottleneck classifier on a feature set and write its directory.

The recipe of the reference design: Adam (lr 1e-3), binary cross-entropy over one-hot targets,
ReduceLROnPlateau down to 1e-5 and EarlyStopping on the validation loss with the best weights
restored; optional balanced class weights. Everything is seeded, so a re-run on the same data
and config gives the same model. The directory is written under a temporary name and renamed
into place, so a crash never leaves a half-written classifier behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfx.classifier.data import (BatchSource, TrainingData, balanced_weights, estimate_bytes,
                                   load_arrays, make_dataset, prepare_training_data, read_labels)
from delfx.classifier.model import (Classifier, ClassifierConfig, _keras,
                                    auto_batchnorm_momentum, build_model, compile_model,
                                    is_classifier_dir, save_classifier)
from delfx.errors import DelfxError
from delfx.paths import write_directory_atomically
from delfx.store import FeatureSet
from delfx.versions import library_versions

log = logging.getLogger(__name__)

# At most this many images are timed for the inference throughput (it is a rate, not a score).
_INFERENCE_PROBE = 4096


@dataclass
class TrainResult:
    """What a training run produced and measured.

    Attributes:
        out_dir: the classifier directory written.
        classifier: the trained classifier (same as `load_classifier(out_dir)`).
        num_classes, train_images, validation_images: data sizes.
        epochs_run: epochs trained before early stopping (or `config.epochs`).
        best_epoch: 1-based epoch whose weights were kept.
        val_accuracy, val_loss: of the kept weights on the validation set (None without one).
        train_samples_per_s: training throughput (forward + backward, first epoch excluded
            because it includes graph tracing, when there is more than one).
        inference_samples_per_s: `Classifier.predict` throughput on in-memory inputs.
        input_mode: "memory" or "stream" (see `delfx.classifier.data`).
        seconds: wall time of the whole run.
        data: the training data summary (as recorded in config.json).
    """

    out_dir: Path
    classifier: Classifier
    num_classes: int
    train_images: int
    validation_images: int
    epochs_run: int
    best_epoch: int
    val_accuracy: float | None
    val_loss: float | None
    train_samples_per_s: float
    inference_samples_per_s: float
    input_mode: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)


def train_classifier(feature_dir: str | Path, labels_csv: str | Path, out_dir: str | Path,
                     config: ClassifierConfig = ClassifierConfig(), overwrite: bool = False
                     ) -> TrainResult:
    """Train a classifier on the features of `feature_dir` with the labels of `labels_csv`.

    Args:
        feature_dir: a feature set (`delfx extract` output).
        labels_csv: `id,landmark_id` (other columns ignored; empty landmark = non-landmark).
        out_dir: the classifier directory to write (must be empty or absent, or an earlier
            classifier with `overwrite`).
        config: hyper-parameters.
        overwrite: replace an existing classifier directory.

    Raises:
        DelfxError: on a non-empty `out_dir` without `overwrite`, labels that match no image,
            fewer than 2 classes, or unreadable inputs.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    _check_output(out_dir, overwrite)
    labels = read_labels(labels_csv)
    with FeatureSet(Path(feature_dir), require_complete=False) as fs:
        if not fs.manifest.complete:
            log.warning("feature set %s is incomplete (shards missing: %s): training on the "
                        "images extracted so far", fs.root, fs.manifest.missing_shards)
        data = prepare_training_data(fs, labels, min_samples=config.min_samples,
                                     validation_share=config.validation_share, seed=config.seed,
                                     source=str(labels_csv))
        run = _train(fs, data, config)
        # Recorded so later stages (score calibration) can tell held-out images from training ones.
        validation_ids = [fs.image_ids[p] for p in data.val_positions]
        manifest = fs.manifest

    summary = {**data.summary, "input_mode": run["input_mode"],
               "input_bytes_estimate": run["input_bytes"], "labels_csv": str(labels_csv),
               "feature_dir": str(feature_dir), "validation_ids": validation_ids}
    fit = run["fit"]
    training = {key: fit[key] for key in ("steps_per_epoch", "batchnorm_momentum", "epochs_run",
                                          "best_epoch", "monitor", "batch_size")}
    training.update(val_loss=run["val_loss"], val_accuracy=run["val_accuracy"],
                    train_samples_per_s=fit["samples_per_s"],
                    inference_samples_per_s=run["inference_rate"],
                    seconds=round(time.monotonic() - start, 3))
    info = {"classifier": config.to_dict(), "num_classes": len(data.label_map),
            "features": {"model_id": manifest.model_id, "model_hash": manifest.model_hash,
                         "descriptor_dim": manifest.descriptor_dim,
                         "descriptor_dtype": manifest.descriptor_dtype,
                         "extract_config": manifest.config},
            "data": summary, "training": training, "versions": library_versions()}
    classifier = run["classifier"]
    written: dict[str, Any] = {}
    _write_atomically(out_dir, overwrite, lambda tmp: written.update(
        save_classifier(tmp, classifier.model, data.label_map, info, fit["curves"])))
    classifier.info = written
    seconds = time.monotonic() - start
    log.info("classifier: %d classes, best epoch %d of %d, validation accuracy %s; training %.0f "
             "samples/s, inference %.0f samples/s; written to %s in %.1f s",
             len(data.label_map), fit["best_epoch"], fit["epochs_run"],
             "n/a" if run["val_accuracy"] is None else f"{run['val_accuracy']:.3f}",
             fit["samples_per_s"], run["inference_rate"], out_dir, seconds)
    return TrainResult(out_dir, classifier, len(data.label_map), len(data.train_positions),
                       len(data.val_positions), fit["epochs_run"], fit["best_epoch"],
                       run["val_accuracy"], run["val_loss"], fit["samples_per_s"],
                       run["inference_rate"], run["input_mode"], seconds, summary)


def _train(fs: FeatureSet, data: TrainingData, config: ClassifierConfig) -> dict[str, Any]:
    """Choose the input mode, build, fit and measure the model (nothing written yet)."""
    n_all = len(data.train_positions) + len(data.val_positions)
    need = estimate_bytes(n_all, config.max_features, fs.descriptor_dim)
    in_memory = need <= config.memory_budget_mb << 20
    log.info("inputs: %d images x %d x %d float32 = %.1f MB %s the %d MB budget: %s",
             n_all, config.max_features, fs.descriptor_dim, need / 2**20,
             "within" if in_memory else "above", config.memory_budget_mb,
             "loading them into memory" if in_memory else "streaming batches from the shards")
    train = BatchSource(fs, data.train_positions, config.max_features, in_memory)
    val = BatchSource(fs, data.val_positions, config.max_features, in_memory)
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    batch_size = min(config.batch_size, len(train))
    steps = -(-len(train) // batch_size)
    model = build_model(config, fs.descriptor_dim, len(data.label_map), steps)
    compile_model(model, config)
    fit = _fit(model, config, data, train, val, batch_size)
    fit.update(steps_per_epoch=steps, batchnorm_momentum=(
        config.batchnorm_momentum if config.batchnorm_momentum is not None
        else auto_batchnorm_momentum(steps)))
    classifier = Classifier(model, data.label_map, config,
                            {"features": {"descriptor_dim": fs.descriptor_dim}})
    val_loss, val_accuracy = _evaluate(classifier, val, data.val_targets)
    rate = _inference_rate(classifier, fs, data.train_positions, data.val_positions,
                           max_features=config.max_features)
    return {"classifier": classifier, "fit": fit, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "inference_rate": rate,
            "input_mode": "memory" if in_memory else "stream", "input_bytes": need}


def _check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse before any work is done, not after an hour of training."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DelfxError(f"{out_dir} exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DelfxError(f"{out_dir} is not empty; choose a new directory or overwrite "
                         f"(--overwrite) an earlier classifier")
    # overwrite replaces a classifier, never an arbitrary folder that was named by mistake.
    if not is_classifier_dir(out_dir):
        raise DelfxError(f"{out_dir} is not empty and is not a delfx classifier; refusing to "
                         f"replace it even with overwrite")


def _write_atomically(out_dir: Path, overwrite: bool, write) -> None:
    """Swap the written directory in; re-check `out_dir`, which may have filled while we trained."""
    write_directory_atomically(out_dir, write, lambda: _check_output(out_dir, overwrite))


def _epoch_logger():
    keras = _keras()

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
                parts.append(f"lr {logs['learning_rate']:.1e}")
            log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, ", ".join(parts),
                     time.perf_counter() - self._begin)

    return EpochLogger


def _fit(model, config: ClassifierConfig, data: TrainingData, train: BatchSource,
         val: BatchSource, batch_size: int) -> dict[str, Any]:
    keras = _keras()
    num_classes = len(data.label_map)
    weights = (balanced_weights(data.train_targets, num_classes) if config.class_weighting
               else None)
    train_ds = make_dataset(train, data.train_targets, num_classes, batch_size, weights=weights,
                            shuffle=True, seed=config.seed)
    has_val = len(val) > 0
    val_ds = (make_dataset(val, data.val_targets, num_classes, batch_size) if has_val else None)
    monitor = "val_loss" if has_val else "loss"
    if not has_val:
        log.warning("no validation images (validation_share=%s, or every class has a single "
                    "image): early stopping watches the training loss", config.validation_share)
    logger = _epoch_logger()(config.epochs)
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=config.lr_factor,
                                          patience=config.lr_patience,
                                          min_lr=config.min_learning_rate, verbose=0),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                      restore_best_weights=True, verbose=0),
        logger,  # last: sees the learning rate ReduceLROnPlateau puts in the logs
    ]
    log.info("training %s head: %d classes, %d train / %d validation images, batch %d, up to "
             "%d epochs", config.head, num_classes, len(train), len(val), batch_size,
             config.epochs)
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=0,
                        shuffle=False,  # make_dataset shuffles, seeded, per epoch
                        callbacks=callbacks).history
    epochs_run = len(history.get("loss", []))
    monitored = history[monitor]
    best_epoch = int(np.argmin(monitored)) + 1
    timed = logger.train_seconds[1:] or logger.train_seconds  # epoch 1 includes tracing
    samples_per_s = len(train) * len(timed) / max(sum(timed), 1e-9)
    curves = {"epoch": list(range(1, epochs_run + 1)), "best_epoch": best_epoch,
              "monitor": monitor}
    for key, values in history.items():
        curves[key] = [float(v) for v in values]
    return {"epochs_run": epochs_run, "best_epoch": best_epoch, "monitor": monitor,
            "batch_size": batch_size, "samples_per_s": round(samples_per_s, 1), "curves": curves}


def _evaluate(classifier: Classifier, val: BatchSource, targets: np.ndarray
              ) -> tuple[float | None, float | None]:
    """Loss and top-1 accuracy of the kept weights on the validation set (in bounded batches)."""
    if not len(val):
        return None, None
    step = max(classifier.config.batch_size, 1024)
    losses, hits = 0.0, 0
    for i in range(0, len(val), step):
        rows = np.arange(i, min(i + step, len(val)))
        probs = classifier.predict(*val.read(rows)).astype(np.float64)
        onehot = np.zeros_like(probs)
        onehot[np.arange(len(rows)), targets[rows]] = 1.0
        p = np.clip(probs, 1e-7, 1 - 1e-7)  # Keras' epsilon, so the numbers agree with its loss
        losses += float(-(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)).mean(axis=1).sum())
        hits += int((probs.argmax(axis=1) == targets[rows]).sum())
    return round(losses / len(val), 6), round(hits / len(val), 6)


def _inference_rate(classifier: Classifier, fs: FeatureSet, *positions: np.ndarray,
                    max_features: int) -> float:
    """Images per second through `Classifier.predict`, inputs already in memory."""
    probe = np.concatenate(positions)[:_INFERENCE_PROBE]
    x, mask = load_arrays(fs, probe, max_features)
    classifier.predict(x[:classifier.config.batch_size], mask[:classifier.config.batch_size])
    begin = time.perf_counter()
    classifier.predict(x, mask)
    return round(len(probe) / max(time.perf_counter() - begin, 1e-9), 1)
