"""Retrieval with geometric verification: query -> k-NN votes -> shortlist -> RANSAC -> ranking.

For every local descriptor of a query, the index gives its k nearest gallery keypoints; each
gallery image gets one vote per query descriptor that has a neighbour in it closer than
`max_distance`. The `shortlist` images with most votes are verified: putative matches between
the query and the candidate are mutual nearest neighbours (they beat Lowe's ratio test on our
real photos: RootSIFT GAP 0.52 vs 0.44), then RANSAC (affine, as DELF does, or homography) with a
residual threshold relative to the candidate's image size, seeded so results repeat. Candidates
are ranked by inliers, then votes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from delfx.errors import DelfxError
from delfx.index.faiss_index import GalleryIndex
from delfx.index.geometry import default_threshold, verify_pairs
from delfx.index.matchers import match, resolve_matcher
from delfx.store import FeatureSet, ImageFeatures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """How a query is searched and verified.

    Attributes:
        k: nearest gallery keypoints per query descriptor.
        max_distance: L2 distance (unit descriptors) under which a neighbour votes.
        shortlist: candidates verified per query.
        top: results kept per query.
        ransac: RANSAC model, 'affine' (DELF), 'homography' or 'similarity' (RANSAC_MODELS).
        relative_threshold: RANSAC residual threshold as a share of the candidate's diagonal
            (0.01 is ~8 px at 512 px, the RootSIFT setting; coarse CNN cells want ~0.03).
        seed: RANSAC's random seed (results repeat exactly).
        workers: threads for verification (OpenCV releases the GIL); None: min(4, CPUs).
        matcher: putative matches before RANSAC: 'mnn' (mutual nearest neighbours),
            'lightglue' (a learned model's own matcher) or 'auto' (lightglue where the features
            have one, else mnn; `for_model` makes it concrete): delfx.index.matchers.
        match_max_distance: MNN only: drop pairs farther apart than this (unit descriptors).
        features: the feature model id (which learned matcher; set by `for_model`).
    """

    k: int = 10
    max_distance: float = 1.0
    shortlist: int = 30
    top: int = 10
    ransac: str = "affine"
    relative_threshold: float = 0.01
    seed: int = 0
    workers: int | None = None
    matcher: str = "auto"
    match_max_distance: float | None = None
    features: str = ""

    @classmethod
    def for_model(cls, model_id: str, **changes) -> "SearchConfig":
        """The defaults for features of `model_id` (its RANSAC threshold, and the model id a
        learned matcher needs), with `changes`; a None change keeps the default."""
        values = {"relative_threshold": default_threshold(model_id), "features": model_id}
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values).for_features(model_id)

    def for_features(self, model_id: str) -> "SearchConfig":
        """This config for features of `model_id`: `features` set, `auto` matcher made concrete
        (the other settings as they are)."""
        return replace(self, features=model_id,
                       matcher=resolve_matcher(self.matcher, model_id))


RESULT_FIELDS = ("query", "rank", "gallery_id", "inliers", "votes", "matches", "score")


@dataclass(frozen=True)
class Result:
    query: str
    rank: int
    gallery_id: str
    inliers: int
    votes: int
    matches: int
    score: float

    def to_json(self) -> dict:
        return asdict(self)


def vote(index: GalleryIndex, descriptors: np.ndarray, config: SearchConfig,
         exclude: set[int] = frozenset()) -> dict[int, int]:
    """Votes per gallery image row: query descriptors with a neighbour in it within reach."""
    if len(descriptors) == 0:
        return {}
    distances, images, _ = index.search(descriptors, config.k)
    keep = (images >= 0) & (distances <= config.max_distance)
    query_of = np.repeat(np.arange(len(descriptors)), images.shape[1])[keep.ravel()]
    pairs = np.unique(np.stack([query_of, images.ravel()[keep.ravel()]], axis=1), axis=0)
    gallery, counts = np.unique(pairs[:, 1], return_counts=True) if len(pairs) else ([], [])
    return {int(g): int(c) for g, c in zip(gallery, counts) if int(g) not in exclude}


def search_one(query: ImageFeatures, index: GalleryIndex, gallery: FeatureSet,
               config: SearchConfig, exclude_self: bool = False,
               votes: dict[int, int] | None = None,
               memo: VerificationMemo | None = None) -> list[Result]:
    """Ranked, verified gallery matches of one query.

    Args:
        votes: the query's `vote` (with the same exclusion), when the caller already has it.
        memo: verifications to reuse and record (VerificationMemo).
    """
    if votes is None:
        exclude = set()
        if exclude_self and query.image_id in index.mapping_positions:
            exclude.add(index.mapping_positions[query.image_id])
        votes = vote(index, query.descriptors, config, exclude)
    shortlist = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:config.shortlist]
    candidates = [gallery.get(index.mapping.image_ids[g]) for g, _ in shortlist]
    verified = verify_candidates(query, candidates, config, memo)
    ranked = sorted(zip(shortlist, candidates, verified),
                    key=lambda t: (-t[2].inliers, -t[0][1], t[1].image_id))[:config.top]
    return [Result(query.image_id, rank, candidate.image_id, v.inliers, votes_, v.num_matches,
                   float(v.inliers))
            for rank, ((_, votes_), candidate, v) in enumerate(ranked, start=1)]


class VerificationMemo:
    """Verifications already done, by (settings, query features, candidate features).

    A pair is verified once however often it is asked for: calibration then the run over the
    same labelled gallery, the chance model's pairs, benchmark variants of scoring. Records are
    keyed by content (id, sizes and a digest of locations and descriptors), never by id alone,
    so a query set and a gallery that share an id never share an answer. At most `capacity`
    pairs are kept (each holds its inlier mask, one byte per putative match); later pairs are verified as if there were no memo. With
    `matches` > 0, up to that many pairs' putative matches are kept too (two indices and a distance per match), so
    other RANSAC settings reuse a learned matcher's work (benchmarks that vary RANSAC).
    """

    def __init__(self, capacity: int = 100_000, matches: int = 0) -> None:
        self.capacity, self.matches_capacity = capacity, matches
        self._results: dict[tuple, Any] = {}
        self._matches: dict[tuple, Any] = {}
        self.hits = 0

    @staticmethod
    def key(record: ImageFeatures) -> tuple:
        """What identifies a record's features: its id, sizes and a digest of its arrays."""
        h = hashlib.blake2b(digest_size=16)
        for array in (record.locations, record.descriptors):
            h.update(np.ascontiguousarray(array).tobytes())
        return record.image_id, record.height, record.width, record.num_features, h.hexdigest()

    def get(self, config: SearchConfig, query_key: tuple, candidate_key: tuple):
        found = self._results.get((config, query_key, candidate_key))
        self.hits += found is not None
        return found

    def put(self, config: SearchConfig, query_key: tuple, candidate_key: tuple, result) -> None:
        if len(self._results) < self.capacity:
            self._results[(config, query_key, candidate_key)] = result

    def matches(self, config: SearchConfig, query_key: tuple, candidate_key: tuple, compute):
        """The putative matches of a pair: kept ones, else `compute()` (kept if room)."""
        key = (config.matcher, config.features, config.match_max_distance, query_key,
               candidate_key)
        found = self._matches.get(key)
        if found is None:
            found = compute()
            if len(self._matches) < self.matches_capacity:
                self._matches[key] = found
        return found


def verify_candidates(query: ImageFeatures, candidates: list, config: SearchConfig,
                      memo: VerificationMemo | None = None) -> list:
    """Matches of the query with each candidate (`config.matcher`), then RANSAC (in parallel).
    With a memo, pairs verified before are not verified again."""
    if memo is not None:
        query_key = memo.key(query)
        keys = [memo.key(c) for c in candidates]
        known = [memo.get(config, query_key, k) for k in keys]
    else:
        keys = known = [None] * len(candidates)
    pairs = []
    for candidate, key, found in zip(candidates, keys, known):
        if found is not None:
            continue

        def compute(candidate=candidate):
            return match(query, candidate, config.matcher, config.features,
                         config.match_max_distance)
        matches = memo.matches(config, query_key, key, compute) if memo is not None else compute()
        pairs.append((query.locations, candidate.locations, matches,
                      {"image_size_b": (candidate.height, candidate.width)}))
    fresh = iter(verify_pairs(pairs, workers=config.workers, **ransac_settings(config)))
    results = []
    for key, found in zip(keys, known):
        if found is None:
            found = next(fresh)
            if memo is not None:
                memo.put(config, query_key, key, found)
        results.append(found)
    return results


def pair_matches(query: ImageFeatures, candidate: ImageFeatures, config: SearchConfig):
    """(putative Matches, Verification) of one pair, made exactly as search verifies it (the
    same matcher, RANSAC model, threshold and seed: the same inliers)."""
    from delfx.index.geometry import verify_pair
    matches = match(query, candidate, config.matcher, config.features, config.match_max_distance)
    return matches, verify_pair(query.locations, candidate.locations, matches,
                                image_size_b=(candidate.height, candidate.width),
                                **ransac_settings(config))


def ransac_settings(config: SearchConfig) -> dict[str, Any]:
    """verify_pair's settings of a search: one place, so a pair verified again (exports) is
    verified exactly as the search verified it."""
    return {"model": config.ransac, "relative_threshold": config.relative_threshold,
            "seed": config.seed}


def shortlist_one(query: ImageFeatures, global_index, gallery: FeatureSet, config: SearchConfig,
                  exclude_self: bool = False, memo: VerificationMemo | None = None,
                  nearest: tuple[np.ndarray, list[list[str]]] | None = None) -> list[Result]:
    """Ranked, verified gallery matches among the `config.shortlist` nearest gallery images by
    global descriptor (`GlobalIndex`); `votes` is then the cosine similarity x 1000, rounded.

    Global retrieval, then local re-ranking: no local-descriptor index is searched.

    Args:
        nearest: this query's `global_index.search(..., global_k(config, exclude_self))`, when
            the caller searched a batch of queries at once (search_many does).
    """
    if query.global_descriptor is None:
        raise DelfxError(f"query {query.image_id} has no global descriptor (extract it with "
                         f"--global-model)")
    sims, ids = nearest or global_index.search(query.global_descriptor,
                                               global_k(config, exclude_self))
    near = [(i, float(s)) for i, s in zip(ids[0], sims[0])
            if not (exclude_self and i == query.image_id)][:config.shortlist]
    candidates = [gallery.get(i) for i, _ in near]
    verified = verify_candidates(query, candidates, config, memo)
    ranked = sorted(zip(near, candidates, verified),
                    key=lambda t: (-t[2].inliers, -t[0][1], t[1].image_id))[:config.top]
    return [Result(query.image_id, rank, candidate.image_id, v.inliers, int(round(1000 * sim)),
                   v.num_matches, float(v.inliers))
            for rank, ((_, sim), candidate, v) in enumerate(ranked, start=1)]


def global_k(config: SearchConfig, exclude_self: bool) -> int:
    """Global neighbours a query needs: the shortlist, plus one that may be itself."""
    return config.shortlist + (1 if exclude_self else 0)


# Queries whose global descriptors are searched in one call: an exact global index is read
# whole per call, so one query at a time is memory bound (205 ms per query at 1e6 x 512 here,
# 5.5 ms per query in batches of 256: benchmarks/eval_query_scale.py).
GLOBAL_BATCH = 256


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def search_many(queries: Iterable[ImageFeatures], index: GalleryIndex | None, gallery: FeatureSet,
                config: SearchConfig, exclude_self: bool = False, global_index=None
                ) -> Iterator[tuple[str, list[Result]]]:
    """(query id, its results) per query, in query order: search_one, or shortlist_one when a
    global index is given (global descriptors searched GLOBAL_BATCH queries at a time). A query
    whose extraction failed has no results (and a warning)."""
    for batch in _batches(queries, GLOBAL_BATCH if global_index is not None else 1):
        nearest: dict[int, tuple] = {}
        if global_index is not None:
            rows = [n for n, q in enumerate(batch) if q.ok and q.global_descriptor is not None]
            if rows:
                sims, ids = global_index.search(
                    np.stack([batch[n].global_descriptor for n in rows]),
                    global_k(config, exclude_self))
                nearest = {n: (sims[i:i + 1], ids[i:i + 1]) for i, n in enumerate(rows)}
        for n, query in enumerate(batch):
            if not query.ok:
                log.warning("query %s skipped: %s (%s)", query.image_id, query.reason,
                            query.message)
                yield query.image_id, []
            elif global_index is not None:
                yield query.image_id, shortlist_one(query, global_index, gallery, config,
                                                    exclude_self, nearest=nearest.get(n))
            else:
                yield query.image_id, search_one(query, index, gallery, config, exclude_self)


def run_search(index_dir: Path, gallery_dir: Path, queries: Path, settings: dict | None = None,
               *, exclude_self: bool = False, global_shortlist: bool = False,
               global_model_dir: Path | None = None, ray: dict | None = None
               ) -> Iterator[tuple[str, list[Result]]]:
    """`delfx search`: results of every query (a feature set, or images extracted with the
    gallery's own model and config), (query id, results) per query, in query order. Everything is
    loaded and checked before this returns; the searching happens as the result is iterated.

    Args:
        settings: SearchConfig fields; None values (and those left out) take the defaults for
            the gallery's model (`SearchConfig.for_model`).
        global_shortlist: shortlist by global descriptor (the index folder's global.faiss)
            instead of local votes.
        global_model_dir: the GeM model that embeds query *images* (global_shortlist).
        ray: search an index in parts with one Ray actor per part ({"address": ...}).
    """
    from delfx.extractor.queries import Queries
    from delfx.index.faiss_index import check_compatible
    gallery = FeatureSet(gallery_dir, require_complete=False)
    config = SearchConfig.for_model(gallery.manifest.model_id, **(settings or {}))
    query_set = Queries(queries, gallery)  # cheap checks before the index is loaded
    from delfx.index.parts import open_index
    index = open_index(index_dir, ray=ray)
    check_compatible(index.meta, gallery, index_dir)
    global_index = global_model = None
    if global_shortlist:
        from delfx.index.global_index import GlobalIndex
        if not GlobalIndex.exists(index_dir):
            raise DelfxError(f"{index_dir} has no global index: extract the gallery with "
                             f"--global-model, then build-index")
        global_index = GlobalIndex.load(index_dir)
        if global_model_dir is not None:
            from delfx.globalnet.model import load_global_model
            global_model = load_global_model(global_model_dir)
            global_index.check_query_model(global_model.describe(), str(global_model_dir))
    records = query_set.records(global_model)  # refusals here, before any output

    def results() -> Iterator[tuple[str, list[Result]]]:
        try:
            with gallery:
                yield from search_many(records, index, gallery, config, exclude_self,
                                       global_index)
        finally:
            getattr(index, "close", lambda: None)()  # an index in parts on Ray: its actors

    return results()
