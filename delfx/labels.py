"""Landmark labels: the labels CSV, the label map of a trained model, and the stratified split.

Used by every stage that learns or scores from labels (`train`, `train-delf`, the GeM models,
`classify`, `evaluate`), so it lives below all of them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from delfx.artifacts import check_header, header, read_json_artifact
from delfx.errors import DelfxError
from delfx.paths import atomic_write_json

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


def id_mismatch_hint(label_ids: Iterable[str], feature_ids: Iterable[str]) -> str:
    """Why labels and features may name no image alike, when it is the usual reason: features
    extracted from an image folder are named by file (`china/view_00.jpg`), labels usually not
    (`china/view_00`). An empty string when that is not it."""
    stems = {f.rsplit(".", 1)[0] for f in feature_ids if "." in f.rsplit("/", 1)[-1]}
    label_ids = list(label_ids)
    if label_ids and sum(1 for i in label_ids if i in stems) * 2 >= len(label_ids):
        return ("; the features are named by image file (with its extension) and the labels "
                "are not: extract from the label file itself (a list with id,path columns, "
                "e.g. sample-data's train.csv), so the ids agree")
    return ""


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
        return {**header(LABELS_FORMAT, LABELS_VERSION),
                "labels": list(self.labels), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: Any, source: str = "labels") -> "LabelMap":
        check_header(data, LABELS_FORMAT, {LABELS_VERSION}, source,
                     what="delfx classifier label map", advice="upgrade delfx or retrain")
        try:
            return cls(tuple(str(l) for l in data["labels"]), tuple(int(n) for n in data["counts"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DelfxError(f"{source}: malformed label map ({exc})") from None

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        data = read_json_artifact(path, LABELS_FORMAT, {LABELS_VERSION},
                                  what="delfx classifier label map", advice="upgrade delfx or retrain")
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
