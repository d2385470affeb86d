"""Run a feature model over image files: decode, batch, extract, and record failures.

This is the loop every extraction goes through, in-process or inside a Ray worker: a bad image
becomes a failed record with its reason and the loop goes on; a model error on one image is
recorded for that image alone.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator

import numpy as np

from delfx.extractor.base import FeatureModel, target_size
from delfx.images import ImageError, image_size, load_image
from delfx.inputs import ImageItem
from delfx.store.records import ImageFeatures

log = logging.getLogger(__name__)

EXTRACTION_ERROR = "extraction_error"  # the model failed on a decodable image


def _decode(item: ImageItem, model: FeatureModel) -> np.ndarray | ImageFeatures:
    config = model.config
    try:
        return load_image(item.path, max_pixels=config.max_pixels, min_side=config.min_side)
    except ImageError as exc:
        height = width = 0
        if exc.reason == "too_small":
            try:
                height, width = image_size(item.path)
            except ImageError:
                pass
        return ImageFeatures.failed(item.image_id, exc.reason, exc.message, height=height,
                                    width=width, descriptor_dim=model.descriptor_dim)


def _extract_batch(model: FeatureModel, batch: list[tuple[ImageItem, np.ndarray]]
                   ) -> list[ImageFeatures]:
    try:
        return model.extract_batch([image for _, image in batch], [i.image_id for i, _ in batch])
    except Exception as exc:
        if len(batch) == 1:
            item, image = batch[0]
            log.warning("extraction failed for %s: %s", item.image_id, exc)
            message = f"{type(exc).__name__}: {exc}"
            return [ImageFeatures.failed(item.image_id, EXTRACTION_ERROR, message[:500],
                                         height=int(image.shape[0]), width=int(image.shape[1]),
                                         descriptor_dim=model.descriptor_dim)]
        # one bad image must not fail its neighbours: retry them one by one
        return [record for pair in batch for record in _extract_batch(model, [pair])]


def extract_items(model: FeatureModel, items: Iterable[ImageItem],
                  on_record: Callable[[ImageFeatures], None] | None = None
                  ) -> Iterator[ImageFeatures]:
    """Features (or failure records) of every item, in input order.

    Images that the model will see at the same size are batched (`config.batch_size`), which is
    what makes the seed128 preset fast; other images go one by one.
    """
    batch_size = model.config.batch_size
    pending: list[tuple[ImageItem, np.ndarray]] = []
    order: list[ImageItem] = []
    done: dict[str, ImageFeatures] = {}

    def flush() -> Iterator[ImageFeatures]:
        nonlocal pending, order
        if pending:
            for record in _extract_batch(model, pending):
                done[record.image_id] = record
        pending = []
        for item in order:
            record = done.pop(item.image_id)
            if on_record is not None:
                on_record(record)
            yield record
        order = []

    last_shape = None
    for item in items:
        decoded = _decode(item, model)
        if isinstance(decoded, ImageFeatures):
            done[item.image_id] = decoded
        else:
            shape = target_size(decoded.shape[0], decoded.shape[1], model.config)
            if pending and shape != last_shape:
                yield from flush()
            pending.append((item, decoded))
            last_shape = shape
        order.append(item)
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


