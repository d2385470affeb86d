"""Query features for `search` and `classify`: a query feature set, or images extracted exactly
as the gallery was (its recorded model and config, rebuilt and checked by hash)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from delfx.errors import DelfxError
from delfx.store import FeatureSet, ImageFeatures
from delfx.store.schema import MANIFEST_NAME


def query_records(queries: Path, gallery: FeatureSet, global_model=None
                  ) -> Iterable[ImageFeatures]:
    """Records of a query feature set, or of query images extracted like the gallery.

    Args:
        queries: a feature-set folder, or an image folder / list file.
        gallery: the gallery the queries are compared with.
        global_model: a GlobalModel whose descriptors the queries must carry (query images are
            embedded with it; a query feature set must have been extracted with it).

    Raises:
        DelfxError: when a query feature set was made by another local or global model.
    """
    queries = Path(queries)
    if (queries / MANIFEST_NAME).is_file():
        query_set = FeatureSet(queries, require_complete=False)
        if query_set.manifest.model_hash != gallery.manifest.model_hash:
            raise DelfxError(f"{queries} was extracted with {query_set.manifest.model_id}, "
                             f"the gallery with {gallery.manifest.model_id}")
        wanted = global_model.describe() if global_model is not None else gallery.global_model
        found = query_set.global_model
        if found and wanted and found["hash"] != wanted["hash"]:
            raise DelfxError(f"{queries} holds global descriptors of {found['id']} "
                             f"({found['hash'][:12]}), {wanted['id']} ({wanted['hash'][:12]}) "
                             f"is needed")
        return iter(query_set)
    from delfx.extractor.models import model_for_features
    from delfx.extractor.run import extract_items
    from delfx.inputs import list_images
    model = model_for_features(gallery.manifest)
    if global_model is not None:
        from delfx.extractor.with_global import WithGlobal
        model = WithGlobal(model, global_model)
    return extract_items(model, list_images(queries))
