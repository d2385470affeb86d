"""Query features for `search` and `classify`: a query feature set, or images extracted exactly
as the gallery was (its recorded model and config, rebuilt and checked by hash).

`Queries` runs the cheap checks (is it a feature set of the gallery's model? does the folder or
list hold images?) when it is made, before anything expensive is loaded; the model that
extracts query images is built only when the records are asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from delfx.errors import DelfxError
from delfx.store import FeatureSet, ImageFeatures
from delfx.store.schema import MANIFEST_NAME


class Queries:
    """The queries of a search or classify run.

    Args:
        queries: a feature-set folder, or an image folder / list file.
        gallery: the gallery the queries are compared with.

    Raises:
        DelfxError: a query feature set made by another model; an image input with no images.
    """

    def __init__(self, queries: Path, gallery: FeatureSet, *, list_images: bool = True):
        self.source, self.gallery = Path(queries), gallery
        self.feature_set: FeatureSet | None = None
        self.items = None
        self._model = None  # the model that extracts query images, once built
        if (self.source / MANIFEST_NAME).is_file():
            self.feature_set = FeatureSet(self.source, require_complete=False)
            if self.feature_set.manifest.model_hash != gallery.manifest.model_hash:
                raise DelfxError(f"{self.source} was extracted with "
                                 f"{self.feature_set.manifest.model_id}, the gallery with "
                                 f"{gallery.manifest.model_id}")
        elif list_images:  # a job's worker is given its images chunk by chunk instead
            from delfx.inputs import list_images as listed
            self.items = listed(self.source)

    def job_items(self) -> list[tuple[str, str | None]]:
        """(id, image path or None for a stored record) of every query, in order."""
        if self.feature_set is not None:
            return [(image_id, None) for image_id in self.feature_set.image_ids]
        return [(item.image_id, str(item.path)) for item in self.items]

    def digest(self) -> str:
        """What identifies these queries' content: the query feature set's manifest (it
        records every shard's sha256), or each image's id, path, size and mtime."""
        from delfx.digests import file_sha256, text_sha256
        if self.feature_set is not None:
            return file_sha256(self.source / MANIFEST_NAME)
        from delfx.inputs import input_stamp
        return text_sha256("\n".join(f"{item.image_id}\t{item.path}\t{input_stamp(item.path)}"
                                      for item in self.items))

    def records(self, global_model=None) -> Iterable[ImageFeatures]:
        """The query records, in order.

        Args:
            global_model: a GlobalModel whose descriptors the queries must carry (query images
                are embedded with it; a query feature set must have been extracted with it).
        """
        if self.feature_set is not None:
            self.check_global(global_model)
            return iter(self.feature_set)
        from delfx.extractor.run import extract_items
        return extract_items(self._extractor(global_model), self.items)

    def check_global(self, global_model=None) -> None:
        """Refuse a query feature set whose global descriptors are not the ones needed."""
        if self.feature_set is None:
            return
        wanted = (global_model.describe() if global_model is not None
                  else self.gallery.global_model)
        found = self.feature_set.global_model
        if found and wanted and found["hash"] != wanted["hash"]:
            raise DelfxError(f"{self.source} holds global descriptors of {found['id']} "
                             f"({found['hash'][:12]}), {wanted['id']} "
                             f"({wanted['hash'][:12]}) is needed")

    def records_of(self, chunk: list[tuple[str, str | None]], global_model=None
                   ) -> list[ImageFeatures]:
        """The records of a chunk of `job_items()`: read from the query feature set, or
        extracted (the model built once per Queries)."""
        if self.feature_set is not None:
            return [self.feature_set.get(image_id) for image_id, _ in chunk]
        from delfx.extractor.run import extract_items
        from delfx.inputs import ImageItem
        return list(extract_items(self._extractor(global_model),
                                  [ImageItem(image_id, path) for image_id, path in chunk]))

    def _extractor(self, global_model=None):
        if self._model is None:
            from delfx.extractor.models import model_for_features
            self._model = model_for_features(self.gallery.manifest)
            if global_model is not None:
                from delfx.extractor.with_global import WithGlobal
                self._model = WithGlobal(self._model, global_model)
        return self._model


