"""`delfx train-delf`: learn the DELF attention head from image-level landmark labels.

The recipe of the DELF paper (Noh et al. 2017, section 4.2), weak supervision only:

    crop -> backbone (frozen; optionally its last block trainable) -> feature map f (h, w, C)
         -> attention a = head(f) >= 0 (conv1x1 512 -> BN -> ReLU -> conv1x1 1 -> softplus)
         -> pooled = mean over cells of a * L2(f)  -> dense -> softmax over landmark classes

The attention is trained only through the classification loss, so it learns to weight the
cells that tell landmarks apart. (DELF's code averages where its paper writes a sum: the mean
keeps the pooled vector's scale independent of the crop size; the classifier is linear either
way.) Training data: multi-scale random square crops of every labelled landmark image (a crop
covers a random share of the short side, then is resized to `crop_size`), drawn once, seeded.

CPU cost: with the backbone frozen, its output is computed once per crop and cached in memory
(float16); every epoch then trains only the head, which is cheap. With `finetune_last_block`
the cache holds block3's output and block4 (the last VGG16 block up to DELF's layer) trains too.

Output: a model directory (delfx.extractor.delf_model_dir) that `--model delf-vgg16
--model-path DIR` loads (extract, fit-pca, export-model, match...).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from delfx.errors import DelfxError
from delfx.extractor.delf_model_dir import (ATTENTION_FILE, BACKBONE_FILE, MODEL_DIR_FILES, PCA_FILE,
                                            backbone_weights as directory_backbone,
                                            is_model_dir, write_model_json)
from delfx.inputs import ImageItem
from delfx.labels import label_sort_key, stratified_split
from delfx.nets.training import (callbacks, check_output_dir, epoch_logger, history_curves,
                                 plot_curves, write_model_dir)
from delfx.paths import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

WHAT = "DELF model directory"  # what the output-folder messages call it
# The last VGG16 block up to block4_conv3 (DELF's layer); its input is block3_pool.
VGG16_LAST_BLOCK = ("block4_conv1", "block4_conv2", "block4_conv3")


@dataclass(frozen=True)
class AttentionTrainConfig:
    """Settings of `train-delf` (recorded in delf_model.json).

    Attributes:
        finetune_last_block: also train block4 (the paper's first stage fine-tunes the backbone).
        max_side: images are first downscaled so the long side is at most this.
        crop_size: side of the square crops the network sees.
        crop_min, crop_max: a crop covers a random share in [crop_min, crop_max] of the short side
            (multi-scale: the same landmark seen at different sizes).
        crops_per_image: random crops drawn per image (once, seeded).
        epochs, batch_size, learning_rate: Adam's schedule.
        lr_factor, lr_patience, min_learning_rate: ReduceLROnPlateau on the monitored loss.
        validation_share: images (per class, see stratified_split) held out for validation.
        pca_dim: components of the PCA re-fitted after training.
        seed: crops, split, initialisation.
    """

    finetune_last_block: bool = False
    max_side: int = 512
    crop_size: int = 192
    crop_min: float = 0.5
    crop_max: float = 1.0
    crops_per_image: int = 8
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_learning_rate: float = 1e-5
    validation_share: float = 0.2
    pca_dim: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.crop_min <= self.crop_max <= 1:
            raise DelfxError(f"need 0 < crop_min <= crop_max <= 1, got {self.crop_min}, "
                             f"{self.crop_max}")
        if self.crop_size < 32 or self.crops_per_image < 1 or self.epochs < 1:
            raise DelfxError("crop_size must be >= 32, crops_per_image and epochs >= 1")


def random_crops(image: np.ndarray, count: int, size: int, lo: float, hi: float,
                 rng: np.random.Generator) -> np.ndarray:
    """`count` square crops of random side in [lo, hi] x short side, resized to `size`.

    Returns:
        (count, size, size, 3) uint8.
    """
    import cv2
    height, width = image.shape[:2]
    short = min(height, width)
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        side = max(8, int(round(short * rng.uniform(lo, hi))))
        y = int(rng.integers(0, height - side + 1))
        x = int(rng.integers(0, width - side + 1))
        crop = image[y:y + side, x:x + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(crop, (size, size), interpolation=interpolation)
    return out


def _split_backbone(backbone, finetune: bool):
    """(frozen part, trainable part or None): the trainable part is block4 when fine-tuning."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    if not finetune:
        return backbone, None
    cut = backbone.get_layer("block3_pool").output
    frozen = keras.Model(backbone.input, cut, name="vgg16_to_block3")
    x = inputs = keras.Input(cut.shape[1:], name="block3_pool")
    for name in VGG16_LAST_BLOCK:
        x = backbone.get_layer(name)(x)
    return frozen, keras.Model(inputs, x, name="vgg16_block4")


def _cache_features(network, frozen, crops_of: Sequence[np.ndarray], batch: int = 16
                    ) -> np.ndarray:
    """Frozen-part outputs of every crop, float16 (N, h, w, C)."""
    import tensorflow as tf
    crops = np.concatenate(crops_of)
    out = []
    for i in range(0, len(crops), batch):
        x = tf.convert_to_tensor(crops[i:i + batch], tf.float32) / 255.0
        out.append(frozen(network.normalise(x), training=False).numpy().astype(np.float16))
    return np.concatenate(out)


def build_trainer(attention, trainable_block, channels: int, num_classes: int):
    """Keras model: cached maps -> (block4) -> attention-weighted mean of L2(f) -> logits."""
    from delfx.tf_quiet import import_keras
    keras = import_keras()
    from keras import layers, ops
    inputs = keras.Input((None, None, trainable_block.input.shape[-1] if trainable_block
                          else channels), name="cached")
    features = trainable_block(inputs) if trainable_block is not None else inputs
    scores = attention(features)  # (B, h, w, 1), softplus >= 0
    normalised = features / ops.sqrt(ops.maximum(
        ops.sum(ops.square(features), axis=-1, keepdims=True), 1e-12))
    pooled = ops.mean(scores * normalised, axis=(1, 2))
    logits = layers.Dense(num_classes, name="classifier")(pooled)
    return keras.Model(inputs, logits, name="delf_attention_trainer")


def train_attention(items: Sequence[ImageItem], labels: Mapping[str, str | None],
                    out_dir: str | Path, config: AttentionTrainConfig = AttentionTrainConfig(),
                    *, overwrite: bool = False, backbone_weights: str | None = "hed"
                    ) -> dict[str, Any]:
    """Train the attention head of the VGG16 DELF network; write a model directory.

    Args:
        items: images (ids as in `labels`); those without a landmark label are skipped.
        labels: image id -> landmark id (None: no landmark).
        out_dir: the model directory to write (atomically).
        config: training settings.
        overwrite: replace an existing delfx DELF model directory.
        backbone_weights: 'hed' (bundled) or None (random weights: tests of the mechanics only).

    Returns:
        The summary recorded in delf_model.json.
    """
    from delfx.config import ExtractConfig
    from delfx.extractor.base import prepare_image
    from delfx.extractor.delf_net import DelfNetwork
    from delfx.images import ImageError, load_image
    from delfx.tf_quiet import import_tensorflow
    import_tensorflow()
    from delfx.tf_quiet import import_keras
    keras = import_keras()

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, is_model_dir, WHAT, MODEL_DIR_FILES)
    labelled = [item for item in items if labels.get(item.image_id)]
    classes = sorted({labels[i.image_id] for i in labelled}, key=label_sort_key)
    if len(classes) < 2:
        raise DelfxError(f"train-delf needs images of at least 2 landmarks, got {len(classes)} "
                         f"({len(labelled)} labelled images among {len(items)})")
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    resize = ExtractConfig(model="delf-vgg16", max_side=config.max_side)
    crops_of, targets, used = [], [], []
    for item in labelled:
        try:
            image = prepare_image(load_image(item.path), resize)[0]
        except ImageError as exc:
            log.warning("skipping %s: %s", item.image_id, exc)
            continue
        crops_of.append(random_crops(image, config.crops_per_image, config.crop_size,
                                     config.crop_min, config.crop_max, rng))
        targets.append(classes.index(labels[item.image_id]))
        used.append(item)
    targets_arr = np.array(targets)
    train_idx, val_idx = stratified_split(targets_arr, config.validation_share, config.seed)
    network = DelfNetwork("vgg16", backbone_weights)
    frozen, block = _split_backbone(network.backbone, config.finetune_last_block)
    start = time.perf_counter()
    cache = _cache_features(network, frozen, crops_of)
    log.info("cached the %s output of %d crops of %d images (%.0f MB) in %.0f s",
             "block3" if block is not None else "block4", len(cache), len(used),
             cache.nbytes / 2**20, time.perf_counter() - start)
    per = config.crops_per_image
    rows = lambda idx: (idx[:, None] * per + np.arange(per)[None]).ravel()  # noqa: E731
    x_train, y_train = cache[rows(train_idx)], np.repeat(targets_arr[train_idx], per)
    x_val, y_val = cache[rows(val_idx)], np.repeat(targets_arr[val_idx], per)

    from delfx.extractor.delf_net import build_attention_head
    attention = build_attention_head(network.spec.channels)
    trainer = build_trainer(attention, block, network.spec.channels, len(classes))
    trainer.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    monitor = "val_loss" if len(x_val) else "loss"
    schedule = callbacks(monitor, lr_factor=config.lr_factor, lr_patience=config.lr_patience,
                         min_learning_rate=config.min_learning_rate, patience=None,
                         logger=epoch_logger(config.epochs))
    log.info("training the attention head%s: %d classes, %d train / %d validation images "
             "(x %d crops), up to %d epochs", " and block4" if block is not None else "",
             len(classes), len(train_idx), len(val_idx), per, config.epochs)
    start = time.perf_counter()
    history = trainer.fit(x_train.astype(np.float32), y_train, batch_size=config.batch_size,
                          epochs=config.epochs, verbose=0, shuffle=True,
                          validation_data=(x_val.astype(np.float32), y_val) if len(x_val) else None,
                          callbacks=schedule).history
    train_s = time.perf_counter() - start
    curves = history_curves(history, monitor, None)
    summary = {
        "backbone": "vgg16",
        "backbone_weights": "finetuned" if block is not None else backbone_weights,
        "base_weights": backbone_weights, "trained": ["attention"] + (
            ["block4"] if block is not None else []),
        # Keypoints are the top max_features cells by attention: the 100 of the official
        # module is on its own head's scale, not on this one's.
        "score_threshold": 0.0,
        "classes": classes, "images": len(used), "train_images": int(len(train_idx)),
        "validation_images": int(len(val_idx)), "crops": int(len(cache)),
        "train_seconds": round(train_s, 1), "config": asdict(config),
        "final": {k: v[-1] for k, v in curves.items() if isinstance(v, list) and k != "epoch"},
    }

    def write(tmp: Path) -> None:
        attention.save_weights(tmp / ATTENTION_FILE)
        if block is not None:
            network.backbone.save_weights(tmp / BACKBONE_FILE)
        atomic_write_json(tmp / "curves.json", curves)
        atomic_write_bytes(tmp / "curves.png", plot_curves(curves))
        from delfx.versions import library_versions
        summary["versions"] = library_versions()
        pca = _refit_pca(tmp, summary, used, config)
        summary["pca_source"] = pca.source
        summary.update(write_model_json(tmp, summary))  # last: it marks a complete directory

    write_model_dir(out_dir, overwrite, write, is_model_dir, WHAT, MODEL_DIR_FILES)
    return summary


def _refit_pca(folder: Path, summary: dict[str, Any], items: Sequence[ImageItem],
               config: AttentionTrainConfig):
    """Fit the PCA on the trained model's own descriptors (its keypoints moved with training).

    The model is built from the files just written, exactly as `--model-path` will load it,
    but with raw descriptors (the PCA is what is being fitted).
    """
    from delfx.config import PRESETS
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.fit import fit_pca_on_model
    extract = PRESETS["fast"].replace(model="delf-vgg16", model_path=str(folder),
                                      max_side=config.max_side, descriptor_dim=0)
    model = DelfModel(extract, backbone="vgg16", weights=directory_backbone(folder, summary),
                      attention_weights=str(folder / ATTENTION_FILE),
                      score_threshold=float(summary["score_threshold"]))
    pca = fit_pca_on_model(model, items, dim=config.pca_dim, max_per_image=500, seed=config.seed,
                           source=f"delfx train-delf: re-fitted on the trained model's descriptors "
                                  f"of its {len(items)} training images, preset fast")
    pca.save(folder / PCA_FILE)
    return pca
