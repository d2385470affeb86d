"""Image-level training of a GeM global model (`delfx train --model gem-vgg16|gem-resnet50|concat`).

The reference recipe: random crops (and horizontal flips) of each training image, one sigmoid
output per class with binary cross-entropy over one-hot targets, Adam, ReduceLROnPlateau on the
validation loss, early stopping with the best weights restored. Labels and the split are those
of the local-feature classifier (`delfx.labels`): non-landmark rows are not training
data, small classes can be cut, each class keeps an image for training.

Images are decoded once and kept in memory squashed to `image_size` (uint8: 160² x 3 = 77 kB
per image, 1.3 GB for 17k images); a larger set would need a streaming reader, not written yet.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import DelfxError
from delfx.globalnet.model import (GlobalConfig, GlobalModel, backbone_digest, build_networks,
                                   prepare_images, save_global_model)
from delfx.inputs import ImageItem, list_images
from delfx.labels import LabelMap, read_labels, stratified_split
from delfx.nets.heads import compile_head
from delfx.nets.training import (TrainResult, balanced_weights, check_output_dir, fit_head,
                                 is_trained_model_dir, write_model_dir)
from delfx.versions import library_versions

log = logging.getLogger(__name__)

WHAT = "trained model"  # what the output-folder messages call it


def load_labelled_images(items: list[ImageItem], labels: dict[str, str | None], size: int
                         ) -> tuple[list[str], list[str], np.ndarray, dict[str, int]]:
    """(ids, labels, uint8 (N, size, size, 3), counts of what was skipped) of the labelled items."""
    from delfx.images import ImageError, load_image
    ids, names, pixels = [], [], []
    skipped = {"non_landmark": 0, "unlabelled": 0, "unreadable": 0}
    for item in items:
        if item.image_id not in labels:
            skipped["unlabelled"] += 1
            continue
        if labels[item.image_id] is None:
            skipped["non_landmark"] += 1
            continue
        try:
            image = load_image(item.path)
        except ImageError as exc:
            log.warning("skipping %s: %s", item.image_id, exc.message)
            skipped["unreadable"] += 1
            continue
        ids.append(item.image_id)
        names.append(labels[item.image_id])
        pixels.append(np.round(prepare_images([image], size)[0] * 255).astype(np.uint8))
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return ids, names, stacked, skipped


def _dataset(pixels: np.ndarray, targets: np.ndarray, num_classes: int, batch_size: int, *,
             crop: int | None, weights: np.ndarray | None, seed: int):
    """tf.data batches of ([0,1] images, one-hot[, weights]); `crop`: random crops + flips."""
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    onehot = np.zeros((len(targets), num_classes), np.float32)
    onehot[np.arange(len(targets)), targets] = 1.0
    tensors = (pixels, onehot) if weights is None else (pixels, onehot, weights)
    ds = tf.data.Dataset.from_tensor_slices(tensors)

    def augment(image, *rest):
        image = tf.cast(image, tf.float32) / 255.0
        if crop is not None:
            image = tf.image.random_crop(image, [crop, crop, 3], seed=seed)
            image = tf.image.random_flip_left_right(image, seed=seed)
        return (image, *rest)

    if crop is not None:
        ds = ds.shuffle(max(len(targets), 1), seed=seed, reshuffle_each_iteration=True)
    return ds.map(augment).batch(batch_size).prefetch(2)


def train_global_model(images: str | Path, labels_csv: str | Path, out_dir: str | Path,
                       config: GlobalConfig = GlobalConfig(), overwrite: bool = False
                       ) -> TrainResult:
    """Train `config.model` on the labelled images of `images` (a folder or a list file).

    Raises:
        DelfxError: on a non-empty `out_dir` without `overwrite`, labels that match no image,
            or fewer than 2 classes.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, is_trained_model_dir, WHAT)
    labels = read_labels(labels_csv)
    ids, names, pixels, skipped = load_labelled_images(list_images(Path(images)), labels,
                                                       config.image_size)
    if not ids:
        raise DelfxError(f"no labelled landmark image of {labels_csv} is in {images} (image ids "
                         f"must match the CSV ids: give a list file with id,path columns)")
    label_map, dropped = LabelMap.build(dict(zip(ids, names)), min_samples=config.min_samples)
    keep = np.array([n in label_map for n in names])
    ids = [i for i, k in zip(ids, keep) if k]
    pixels = pixels[keep]
    targets = label_map.encode([n for n, k in zip(names, keep) if k])
    if len(label_map) < 2:
        raise DelfxError(f"{len(label_map)} class(es) left after the min_samples cut: need >= 2")
    train_idx, val_idx = stratified_split(targets, config.validation_share, config.seed)

    from delfx.tf_quiet import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    batch_size = min(config.batch_size, len(train_idx))
    steps = -(-len(train_idx) // batch_size)
    model, embedder, head = build_networks(config, len(label_map), steps)
    compile_head(model, config)
    num_classes = len(label_map)
    weights = (balanced_weights(targets[train_idx], num_classes) if config.class_weighting
               else None)
    crop = config.crop_size if config.crop_size < config.image_size else None
    train_ds = _dataset(pixels[train_idx], targets[train_idx], num_classes, batch_size,
                        crop=crop, weights=weights, seed=config.seed)
    has_val = len(val_idx) > 0
    val_ds = (_dataset(pixels[val_idx], targets[val_idx], num_classes, batch_size, crop=None,
                       weights=None, seed=config.seed) if has_val else None)
    log.info("training %s: %d classes, %d train / %d validation images, batch %d, crops %s, "
             "backbone %s", config.model, num_classes, len(train_idx), len(val_idx), batch_size,
             crop or "off", "fine-tuned" if config.fine_tune else "frozen")
    fit = fit_head(model, config, train_ds, val_ds, len(train_idx))
    monitor, epochs_run, best_epoch = fit.monitor, fit.epochs_run, fit.best_epoch
    train_rate = fit.samples_per_s

    trained = GlobalModel(model, embedder, head, label_map, config, {})
    val_loss = val_accuracy = None
    if has_val:
        scores = model.evaluate(val_ds, verbose=0, return_dict=True)
        val_loss, val_accuracy = (round(float(scores[k]), 6) for k in ("loss", "accuracy"))
    probe = pixels[: max(batch_size, 64)]
    trained.predict_images(list(probe))  # trace once, outside the timing
    begin = time.perf_counter()
    trained.predict_images(list(probe))
    inference_rate = len(probe) / max(time.perf_counter() - begin, 1e-9)

    curves = fit.curves
    summary = {"images": str(images), "labels_csv": str(labels_csv), "skipped": skipped,
               **dropped, "train_images": len(train_idx), "validation_images": len(val_idx),
               "validation_ids": [ids[i] for i in val_idx]}
    info = {"global_model": config.to_dict(), "num_classes": num_classes,
            "backbone_weights_sha256": backbone_digest(config),
            "descriptor_dim": config.descriptor_dim, "data": summary,
            "training": {"epochs_run": epochs_run, "best_epoch": best_epoch, "monitor": monitor,
                         "batch_size": batch_size, "steps_per_epoch": steps,
                         "val_loss": val_loss, "val_accuracy": val_accuracy,
                         "train_samples_per_s": round(train_rate, 2),
                         "inference_samples_per_s": round(inference_rate, 2),
                         "seconds": round(time.monotonic() - start, 3)},
            "versions": library_versions()}
    written: dict[str, Any] = {}
    write_model_dir(out_dir, overwrite, lambda tmp: written.update(
        save_global_model(tmp, model, label_map, info, curves)), is_trained_model_dir, WHAT)
    trained.info = written
    log.info("%s: %d classes, best epoch %d of %d, validation accuracy %s; training %.1f "
             "images/s, inference %.1f images/s; written to %s", config.model, num_classes,
             best_epoch, epochs_run, "n/a" if val_accuracy is None else f"{val_accuracy:.3f}",
             train_rate, inference_rate, out_dir)
    return TrainResult(out_dir, trained, num_classes, len(train_idx), len(val_idx), epochs_run,
                       best_epoch, val_accuracy, val_loss, round(train_rate, 2),
                       round(inference_rate, 2), time.monotonic() - start, summary, "images")
