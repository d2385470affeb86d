"""Training data of the classifier: the labelled images of a feature set, split, as padded inputs.

The network sees each image as its top-`max_features` descriptors (shards store features by
descending attention score, so these are the first rows) zero-padded to a fixed shape, plus a 0/1
mask. Small sets are loaded into memory once (`load_arrays`); sets larger than the memory budget
are streamed from the shards batch by batch (`BatchSource` over `FeatureSet.padded_batch`), so
memory stays bounded by a few batches whatever the size of the set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from delfx.errors import DelfxError
from delfx.labels import LabelMap, id_mismatch_hint, stratified_split
from delfx.store import FeatureSet

log = logging.getLogger(__name__)


def feature_counts(feature_set: FeatureSet) -> np.ndarray:
    """Number of stored features of every image, by global position (0 for failed images)."""
    counts = [feature_set.shard(i).counts for i in feature_set.shard_indices]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def estimate_bytes(num_images: int, max_features: int, descriptor_dim: int) -> int:
    """Memory of padded float32 inputs (the mask adds 1/(4D) more and is ignored)."""
    return int(num_images) * int(max_features) * int(descriptor_dim) * 4


def load_arrays(feature_set: FeatureSet, ids: Sequence[int | str], max_features: int = 150
                ) -> tuple[np.ndarray, np.ndarray]:
    """Padded inputs of `ids` (positions or image ids), in that order, in memory.

    Returns:
        features (N, max_features, D) float32 and mask (N, max_features) float32 (0/1).
    """
    x, mask = feature_set.padded_batch(ids, max_features=max_features, dtype=np.float32)
    return x, mask.astype(np.float32)


class BatchSource:
    """Where the padded inputs of a fixed list of images come from, by row of that list.

    Either arrays already in memory (`in_memory=True`, loaded once with `load_arrays`) or reads
    from the shards on every request (`FeatureSet.padded_batch`: bounded memory, any size).
    """

    def __init__(self, feature_set: FeatureSet, positions: np.ndarray, max_features: int,
                 in_memory: bool):
        self.feature_set = feature_set
        self.positions = np.asarray(positions, dtype=np.int64)
        self.max_features = max_features
        self.descriptor_dim = feature_set.descriptor_dim
        self.in_memory = in_memory
        self._arrays = load_arrays(feature_set, self.positions, max_features) if in_memory else None

    def __len__(self) -> int:
        return len(self.positions)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, max_features, D) float32 and mask (n, max_features) float32 of `rows`."""
        if self._arrays is not None:
            return self._arrays[0][rows], self._arrays[1][rows]
        return load_arrays(self.feature_set, self.positions[rows], self.max_features)


def make_dataset(source: BatchSource, targets: np.ndarray | None, num_classes: int,
                 batch_size: int, *, weights: np.ndarray | None = None, shuffle: bool = False,
                 seed: int = 0):
    """A `tf.data.Dataset` of ({"features", "mask"}, one-hot targets[, sample weights]) batches.

    tf.data only shuffles and batches row numbers; each batch is then read by a Python function
    (`source.read`: a slice of the in-memory arrays, or `FeatureSet.padded_batch` on the
    shards), so the pipeline holds a few batches at a time however large the set. One-hot
    targets are likewise made per batch (a full one-hot matrix of a GLR-sized set would not fit
    in memory). A `Dataset.range(...).map(numpy_function)` pipeline is used rather than
    `Dataset.from_generator`: same streaming, but no generator restarted every epoch, which
    costs ~40% of an epoch on small sets. With `shuffle`, tf.data's seeded shuffle draws a new
    permutation every epoch, the same sequence on every run.

    Args:
        targets: class index per row of `source`; None yields inputs only (for prediction).
    """
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    n, mf, dim = len(source), source.max_features, source.descriptor_dim
    shapes = [(None, mf, dim), (None, mf)]
    if targets is not None:
        shapes.append((None, num_classes))
        if weights is not None:
            shapes.append((None,))

    def read(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        x, mask = source.read(rows)
        if targets is None:
            return x, mask
        onehot = np.zeros((len(rows), num_classes), dtype=np.float32)
        onehot[np.arange(len(rows)), targets[rows]] = 1.0
        return (x, mask, onehot) if weights is None else (x, mask, onehot, weights[rows])

    def to_batch(rows):
        arrays = tf.numpy_function(read, [rows], [tf.float32] * len(shapes), stateful=False)
        for array, shape in zip(arrays, shapes):
            array.set_shape(shape)
        inputs = {"features": arrays[0], "mask": arrays[1]}
        return inputs if targets is None else (inputs, *arrays[2:])

    rows = tf.data.Dataset.range(n)
    if shuffle:  # the buffer holds n row numbers, never features
        rows = rows.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    return rows.batch(batch_size).map(to_batch).prefetch(2)


@dataclass
class TrainingData:
    """The images a training run uses, split, with what was left out and why.

    Attributes:
        label_map: the classes kept.
        train_positions, val_positions: global feature-set positions.
        train_targets, val_targets: class indices, aligned with the positions.
        summary: counts for the log and config.json.
    """

    label_map: LabelMap
    train_positions: np.ndarray
    train_targets: np.ndarray
    val_positions: np.ndarray
    val_targets: np.ndarray
    summary: dict[str, Any]


def prepare_training_data(feature_set: FeatureSet, labels: Mapping[str, str | None], *,
                          min_samples: int, validation_share: float, seed: int,
                          source: str = "labels") -> TrainingData:
    """Match labels to the feature set, drop unusable images and small classes, split.

    Non-landmark rows (empty landmark id) are not training data. Labelled ids missing from the
    feature set are reported and ignored; images whose extraction failed (no features) are
    skipped. Every exclusion is counted in `summary` and logged.

    Raises:
        DelfxError: when no labelled id is in the feature set, or fewer than 2 classes remain.
    """
    labelled = {i: l for i, l in labels.items() if l is not None}
    summary: dict[str, Any] = {"label_rows": len(labels),
                               "non_landmark_rows": len(labels) - len(labelled)}
    if not labelled:
        raise DelfxError(f"{source}: no image has a landmark id, nothing to train on")
    ids = feature_set.image_ids
    position_of = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in labelled if i not in position_of]
    summary["not_in_features"] = len(missing)
    if len(missing) == len(labelled):
        raise DelfxError(f"{source}: none of the {len(labelled)} labelled ids is in the feature "
                         f"set {feature_set.root} (e.g. {missing[0]!r} vs {ids[0]!r} there); "
                         f"were the features extracted from these images, with the same ids?"
                         f"{id_mismatch_hint(labelled, ids)}"
                         if ids else f"the feature set {feature_set.root} holds no images")
    if missing:
        log.warning("%d of %d labelled ids are not in the feature set, ignored (e.g. %s)",
                    len(missing), len(labelled), ", ".join(map(repr, missing[:3])))
    counts = feature_counts(feature_set)
    usable = {i: l for i, l in labelled.items() if i in position_of}
    empty = [i for i in usable if counts[position_of[i]] == 0]
    summary["no_features"] = len(empty)
    if empty:
        log.warning("%d labelled images have no features (extraction failed or found none), "
                    "skipped (e.g. %s)", len(empty), ", ".join(map(repr, empty[:3])))
        for i in empty:
            del usable[i]

    label_map, dropped = LabelMap.build(usable, min_samples)
    summary.update(dropped)
    if dropped["classes_dropped"]:
        log.info("min_samples=%d: dropped %d classes (%d images) with fewer images; %d classes "
                 "remain", min_samples, dropped["classes_dropped"], dropped["images_dropped"],
                 len(label_map))
    if len(label_map) < 2:
        raise DelfxError(f"only {len(label_map)} class(es) with >= {min_samples} usable images "
                         f"remain; a classifier needs at least 2 (lower min_samples?)")
    kept = sorted((i for i, l in usable.items() if l in label_map), key=position_of.__getitem__)
    positions = np.array([position_of[i] for i in kept], dtype=np.int64)
    targets = label_map.encode(usable[i] for i in kept)
    train_idx, val_idx = stratified_split(targets, validation_share, seed)
    summary.update(images=len(kept), classes=len(label_map), train_images=len(train_idx),
                   validation_images=len(val_idx),
                   features_per_image_median=float(np.median(counts[positions])))
    log.info("training data: %d images of %d classes (%d train, %d validation); %d non-landmark "
             "rows ignored", len(kept), len(label_map), len(train_idx), len(val_idx),
             summary["non_landmark_rows"])
    return TrainingData(label_map, positions[train_idx], targets[train_idx], positions[val_idx],
                        targets[val_idx], summary)
