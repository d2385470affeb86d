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

    def __init__(self, queries: Path, gallery: FeatureSet):
        self.source, self.gallery = Path(queries), gallery
        self.feature_set: FeatureSet | None = None
        self.items = None
        if (self.source / MANIFEST_NAME).is_file():
            self.feature_set = FeatureSet(self.source, require_complete=False)
            if self.feature_set.manifest.model_hash != gallery.manifest.model_hash:
                raise DelfxError(f"{self.source} was extracted with "
                                 f"{self.feature_set.manifest.model_id}, the gallery with "
                                 f"{gallery.manifest.model_id}")
        else:
            from delfx.inputs import list_images
            self.items = list_images(self.source)

    def records(self, global_model=None) -> Iterable[ImageFeatures]:
        """The query records, in order.

        Args:
            global_model: a GlobalModel whose descriptors the queries must carry (query images
                are embedded with it; a query feature set must have been extracted with it).
        """
        if self.feature_set is not None:
            wanted = (global_model.describe() if global_model is not None
                      else self.gallery.global_model)
            found = self.feature_set.global_model
            if found and wanted and found["hash"] != wanted["hash"]:
                raise DelfxError(f"{self.source} holds global descriptors of {found['id']} "
                                 f"({found['hash'][:12]}), {wanted['id']} "
                                 f"({wanted['hash'][:12]}) is needed")
            return iter(self.feature_set)
        from delfx.extractor.models import model_for_features
        from delfx.extractor.run import extract_items
        model = model_for_features(self.gallery.manifest)
        if global_model is not None:
            from delfx.extractor.with_global import WithGlobal
            model = WithGlobal(model, global_model)
        return extract_items(model, self.items)


