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
from pathlib import Path
from typing import Any

import numpy as np

from delfx.classifier.data import (BatchSource, TrainingData, estimate_bytes, load_arrays,
                                   make_dataset, prepare_training_data)
from delfx.classifier.model import (Classifier, ClassifierConfig, _keras, build_model,
                                    save_classifier)
from delfx.labels import read_labels
from delfx.nets.heads import compile_head
from delfx.nets.training import (TrainResult, balanced_weights, check_output_dir, fit_head,
                                 is_trained_model_dir, write_model_dir)
from delfx.store import FeatureSet, require_intact
from delfx.versions import library_versions

log = logging.getLogger(__name__)

# At most this many images are timed for the inference throughput (it is a rate, not a score).
_INFERENCE_PROBE = 4096
WHAT = "classifier"  # what the output-folder messages call it


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
    check_output_dir(out_dir, overwrite, is_trained_model_dir, WHAT)
    labels = read_labels(labels_csv)
    require_intact(Path(feature_dir))  # train on what was written, sha256 checked
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
    write_model_dir(out_dir, overwrite, lambda tmp: written.update(
        save_classifier(tmp, classifier.model, data.label_map, info, fit["curves"])),
        is_trained_model_dir, WHAT)
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
                       run["inference_rate"], seconds, summary, run["input_mode"])


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
    compile_head(model, config)
    fit = _fit(model, config, data, train, val, batch_size)
    fit.update(steps_per_epoch=steps, batchnorm_momentum=config.momentum(steps))
    classifier = Classifier(model, data.label_map, config,
                            {"features": {"descriptor_dim": fs.descriptor_dim}})
    val_loss, val_accuracy = _evaluate(classifier, val, data.val_targets)
    rate = _inference_rate(classifier, fs, data.train_positions, data.val_positions,
                           max_features=config.max_features)
    return {"classifier": classifier, "fit": fit, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "inference_rate": rate,
            "input_mode": "memory" if in_memory else "stream", "input_bytes": need}


def _fit(model, config: ClassifierConfig, data: TrainingData, train: BatchSource,
         val: BatchSource, batch_size: int) -> dict[str, Any]:
    num_classes = len(data.label_map)
    weights = (balanced_weights(data.train_targets, num_classes) if config.class_weighting
               else None)
    train_ds = make_dataset(train, data.train_targets, num_classes, batch_size, weights=weights,
                            shuffle=True, seed=config.seed)
    has_val = len(val) > 0
    val_ds = (make_dataset(val, data.val_targets, num_classes, batch_size) if has_val else None)
    if not has_val:
        log.warning("no validation images (validation_share=%s, or every class has a single "
                    "image): early stopping watches the training loss", config.validation_share)
    log.info("training %s head: %d classes, %d train / %d validation images, batch %d, up to "
             "%d epochs", config.head, num_classes, len(train), len(val), batch_size,
             config.epochs)
    fit = fit_head(model, config, train_ds, val_ds, len(train))
    return {"epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "monitor": fit.monitor,
            "batch_size": batch_size, "samples_per_s": round(fit.samples_per_s, 1),
            "curves": fit.curves}


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
