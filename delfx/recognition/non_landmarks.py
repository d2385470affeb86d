"""Images known not to show a landmark, as evidence against one (`classify --non-landmarks`).

GLR queries are mostly not landmarks, and a non-landmark query often finds a few chance inliers
in some landmark's photos. When it matches an image known to show no landmark as well as it
matches its best landmark, it is probably not one either (GLR2020 1st place). delfx already uses
the gallery's non-landmark images (an empty landmark in the gallery labels) this way; this adds
images kept apart from the gallery: a feature set extracted with the gallery's model, or images
(extracted on the fly with it, as queries are).

They are held in memory with an exact FAISS index (L2 on the unit descriptors, as the gallery's
votes): fine for thousands of images; for far more, add them to the gallery with an empty
landmark, so they are indexed with it. Per query, the `shortlist` most-voted of them are
verified with the run's matcher and RANSAC, and count as non-landmark evidence (scoring.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from delfx.errors import DelfxError
from delfx.recognition.scoring import Verified

log = logging.getLogger(__name__)

DEFAULT_SHORTLIST = 5


class _Mapping:
    def __init__(self, image_ids: list[str]):
        self.image_ids = image_ids


class NonLandmarks:
    """Non-landmark images, their in-memory index, and their verification against a query.

    Args:
        source: a feature set of the gallery's model, or images (a folder or a list file).
        gallery: the gallery (its model extracts images; its ids must not be reused).
        shortlist: non-landmark images verified per query.
    """

    def __init__(self, source: Path, gallery, shortlist: int = DEFAULT_SHORTLIST):
        import faiss
        from delfx.extractor.queries import Queries
        self.source, self.shortlist = Path(source), shortlist
        records = [r for r in Queries(self.source, gallery).records()
                   if r.ok and r.num_features]
        if not records:
            raise DelfxError(f"{source}: no non-landmark image with features")
        clash = sorted(set(r.image_id for r in records) & set(gallery.image_ids))
        if clash:
            raise DelfxError(f"{source}: {len(clash)} non-landmark ids are gallery ids too (e.g. "
                             f"{clash[0]!r}): give them other ids, or label them in the gallery")
        self.records = {r.image_id: r for r in records}
        self.mapping = _Mapping([r.image_id for r in records])
        self.mapping_positions = {image_id: i for i, image_id in enumerate(self.mapping.image_ids)}
        descriptors = np.concatenate([r.descriptors for r in records]).astype(np.float32)
        self._image = np.concatenate([np.full(r.num_features, i, np.int64)
                                      for i, r in enumerate(records)])
        self._index = faiss.IndexFlatL2(descriptors.shape[1])
        self._index.add(np.ascontiguousarray(descriptors))
        log.info("%d non-landmark images (%d descriptors) from %s", len(records),
                 len(descriptors), source)

    def __len__(self) -> int:
        return len(self.records)

    def search(self, descriptors: np.ndarray, k: int):
        """The GalleryIndex.search contract: (L2 distances, image rows, keypoint rows)."""
        k = min(k, int(self._index.ntotal))
        squared, ids = self._index.search(np.ascontiguousarray(descriptors, np.float32), k)
        valid = ids >= 0
        images = np.where(valid, self._image[np.where(valid, ids, 0)], -1)
        return np.sqrt(np.maximum(squared, 0)), images, np.where(valid, ids, -1)

    def verified(self, query, search, memo=None, exclude_self: bool = False) -> list[Verified]:
        """The query verified against its most-voted non-landmark images (not the one with
        its own id when `exclude_self`)."""
        from delfx.index.search import verify_candidates, vote
        if not query.num_features:
            return []
        own = self.mapping_positions.get(query.image_id) if exclude_self else None
        votes = vote(self, query.descriptors, search, {own} if own is not None else set())
        rows = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:self.shortlist]
        candidates = [self.records[self.mapping.image_ids[row]] for row, _ in rows]
        results = verify_candidates(query, candidates, search, memo)
        return [Verified(c.image_id, None, r.inliers, r.num_matches)
                for c, r in zip(candidates, results)]
