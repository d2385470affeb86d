"""The padded (N, max_features, D) batch a classifier reads: one builder for every caller.

An image is seen as its top-`max_features` descriptors by score, zero-padded, with a mask of the
real rows. Shards store each image's features sorted by descending score, so "the top K" is
the first min(K, count) rows; training reads them from the shards (`ShardReader.padded`),
prediction from one query's record (`padded_records`), and both scatter through
`scatter_top_rows`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from delfx.store.records import ImageFeatures


def empty_padded(n: int, max_features: int, dim: int, dtype=np.float32
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Zeroed descriptors (n, max_features, dim) and an all-False mask (n, max_features)."""
    return (np.zeros((n, max_features, dim), dtype=dtype),
            np.zeros((n, max_features), dtype=bool))


def scatter_top_rows(out: np.ndarray, mask: np.ndarray, targets: np.ndarray, block: np.ndarray,
                     starts: np.ndarray, keep: np.ndarray) -> None:
    """out[targets[i], :keep[i]] = block[starts[i] : starts[i] + keep[i]], and the mask, in place.

    Vectorised (one fancy-index copy for all images): a naive per-image loop costs seconds on a
    training set (see ../shared/MEASURED.md).
    """
    keep = np.asarray(keep, dtype=np.int64)
    total = int(keep.sum())
    if not total:
        return
    target = np.repeat(np.asarray(targets, dtype=np.int64), keep)
    within = np.arange(total) - np.repeat(np.cumsum(keep) - keep, keep)
    source = np.repeat(np.asarray(starts, dtype=np.int64), keep) + within
    out[target, within] = block[source]
    mask[target, within] = True


def padded_records(records: Sequence[ImageFeatures], max_features: int, dim: int,
                   dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Padded top-`max_features` descriptors (by score) of records in memory, and the mask."""
    out, mask = empty_padded(len(records), max_features, dim, dtype)
    ordered = [r if _sorted(r) else r.sorted_by_score() for r in records]
    keep = np.array([min(r.num_features, max_features) for r in ordered], dtype=np.int64)
    if not keep.sum():
        return out, mask
    block = np.concatenate([r.descriptors[:k] for r, k in zip(ordered, keep)]).astype(dtype)
    scatter_top_rows(out, mask, np.arange(len(records)), block,
                     np.cumsum(keep) - keep, keep)
    return out, mask


def _sorted(record: ImageFeatures) -> bool:
    scores = np.asarray(record.scores, dtype=np.float64)
    return bool(np.all(scores[:-1] >= scores[1:])) if len(scores) > 1 else True
