"""Training data of the classifier: labels, label map, stratified split and padded inputs.

The network sees each image as its top-`max_features` descriptors (shards store features by
descending attention score, so these are the first rows) zero-padded to a fixed shape, plus a 0/1
mask. Small sets are loaded into memory once (`load_arrays`); sets larger than the memory budget
are streamed from the shards batch by batch (`BatchSource` over `FeatureSet.padded_batch`), so
memory stays bounded by a few batches whatever the size of the set.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from delfx.errors import DelfxError
from delfx.paths import atomic_write_json
from delfx.store import FeatureSet

log = logging.getLogger(__name__)

ID_COLUMN, LABEL_COLUMN = "id", "landmark_id"
LABELS_FORMAT, LABELS_VERSION = "delfx-classifier-labels", 1


def read_labels(csv_path: str | Path) -> dict[str, str | None]:
    """Image id -> landmark id from a CSV with `id` and `landmark_id` columns.

    Other columns are ignored (the sample-data files have `id,path,landmark_id`). An empty
    landmark id marks a non-landmark image, returned as None.

    Raises:
        DelfxError: if the file is missing or unreadable, lacks a column, or gives one id two
            different landmarks.
    """
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in (ID_COLUMN, LABEL_COLUMN) if c not in columns]
            if missing:
                raise DelfxError(f"{path}: no column {' or '.join(map(repr, missing))} in the "
                                 f"header {columns} (expected at least {ID_COLUMN},{LABEL_COLUMN})")
            reader.fieldnames = columns
            labels: dict[str, str | None] = {}
            for line, row in enumerate(reader, start=2):
                image_id = (row.get(ID_COLUMN) or "").strip()
                if not image_id:
                    raise DelfxError(f"{path}:{line}: empty image id")
                label = (row.get(LABEL_COLUMN) or "").strip() or None
                if image_id in labels and labels[image_id] != label:
                    raise DelfxError(f"{path}:{line}: image {image_id!r} labelled both "
                                     f"{labels[image_id]!r} and {label!r}")
                labels[image_id] = label
    except FileNotFoundError:
        raise DelfxError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DelfxError(f"cannot read labels file {path}: {exc}") from None
    return labels


def label_sort_key(label: str) -> tuple:
    """Numeric landmark ids (GLR's) in numeric order, then any others alphabetically."""
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


@dataclass(frozen=True)
class LabelMap:
    """The classes of a classifier: output index <-> landmark id, with training image counts.

    Attributes:
        labels: landmark ids in output order (sorted, see `label_sort_key`).
        counts: training-set images per class (before the validation split), same order.
    """

    labels: tuple[str, ...]
    counts: tuple[int, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.counts):
            raise ValueError("labels and counts differ in length")
        object.__setattr__(self, "_index", {label: i for i, label in enumerate(self.labels)})
        if len(self._index) != len(self.labels):
            raise ValueError("duplicate labels in a label map")

    @classmethod
    def build(cls, image_labels: Mapping[str, str], min_samples: int = 1
              ) -> tuple["LabelMap", dict[str, int]]:
        """Classes with at least `min_samples` images, and what the long-tail cut dropped.

        Returns:
            the label map and {"classes_dropped", "images_dropped"}.
        """
        counts: dict[str, int] = {}
        for label in image_labels.values():
            counts[label] = counts.get(label, 0) + 1
        kept = sorted((l for l, n in counts.items() if n >= min_samples), key=label_sort_key)
        dropped = [l for l in counts if counts[l] < min_samples]
        return (cls(tuple(kept), tuple(counts[l] for l in kept)),
                {"classes_dropped": len(dropped),
                 "images_dropped": sum(counts[l] for l in dropped)})

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def index(self, label: str) -> int:
        return self._index[label]

    def label(self, index: int) -> str:
        return self.labels[index]

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        """Output indices (int32) of landmark ids."""
        return np.fromiter((self._index[l] for l in labels), dtype=np.int32)

    def to_json(self) -> dict[str, Any]:
        return {"format": LABELS_FORMAT, "format_version": LABELS_VERSION,
                "labels": list(self.labels), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: Any, source: str = "labels") -> "LabelMap":
        if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
            raise DelfxError(f"{source}: not a delfx classifier label map")
        if data.get("format_version") != LABELS_VERSION:
            raise DelfxError(f"{source}: label map version {data.get('format_version')!r} is not "
                             f"supported by this delfx (supported: {LABELS_VERSION})")
        try:
            return cls(tuple(str(l) for l in data["labels"]), tuple(int(n) for n in data["counts"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DelfxError(f"{source}: malformed label map ({exc})") from None

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DelfxError(f"{path}: unreadable label map ({exc})") from None
        return cls.from_json(data, str(path))


def stratified_split(targets: np.ndarray, validation_share: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, per-class train/validation split.

    Each class sends `validation_share` of its images to validation, but never all of them: a
    class with n >= 2 images keeps at least one for training, a class with one image trains on
    it. Per class the count is rounded down, and the fractions left over are handed out as one
    extra validation image each to randomly drawn classes (weighted by their fraction) until the
    total is the requested share: a long tail of small classes, where every class would round
    down to zero, still yields the requested share overall.

    Args:
        targets: class index per image.
    Returns:
        (train indices, validation indices), each sorted.
    """
    if not 0.0 <= validation_share < 1.0:
        raise DelfxError(f"validation share must be in [0, 1), got {validation_share}")
    rng = np.random.default_rng(seed)
    order = np.argsort(targets, kind="stable")
    _, starts, sizes = np.unique(targets[order], return_index=True, return_counts=True)
    expected = np.where(sizes >= 2, sizes * validation_share, 0.0)
    n_val = np.minimum(np.floor(expected).astype(np.int64), np.maximum(sizes - 1, 0))
    fraction = np.where(n_val < sizes - 1, expected - n_val, 0.0)
    extra = min(int(round(expected.sum())) - int(n_val.sum()), int((fraction > 0).sum()))
    if extra > 0:
        n_val[rng.choice(len(sizes), extra, replace=False, p=fraction / fraction.sum())] += 1
    val = [rng.permutation(order[start:start + size])[:k]
           for start, size, k in zip(starts, sizes, n_val) if k]
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(targets), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


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


def balanced_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights n / (C * n_c) (scikit-learn's "balanced"), as float32."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = len(targets) / (present.sum() * counts[present])
    return per_class[targets].astype(np.float32)


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
