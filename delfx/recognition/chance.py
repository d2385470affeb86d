"""How many inliers verification finds between images that do NOT show the same landmark.

RANSAC always finds some inliers among putative matches, more the more matches there are (and
the looser the threshold): on landmarks-dev, RootSIFT + MNN gives unrelated pairs 5-20 inliers,
LightGlue far fewer. A raw inlier count therefore says little on its own; what says "this is a
match" is how far it is above what unrelated images reach with as many putative matches.

The chance model is measured on the gallery itself, with the run's own features, matcher and
RANSAC settings: pairs of gallery images that cannot show one landmark (different landmarks, or
a landmark and a non-landmark image) are verified, half of them at random and half the most
similar such image by index votes (what a query's shortlist holds: the hardest negatives). The
pairs are binned by putative matches; per bin the chance level is mean + z * std of the inliers
(z = 3 by default, so about 1 pair in 700 of a Gaussian tail exceeds it), after dropping the top
2% of the bin (a mislabelled pair must not set the level). Between bins the level is
interpolated; below the first it falls with the matches to 0, above the last it stays at the
last bin's level: a learned matcher gives unrelated pairs a handful of matches, nearly all
inliers, and true pairs hundreds, so scaling the level up with the matches would call every
true match chance (measured: XFeat + LighterGlue GAP 0.80 -> 0.09). The model is
non-decreasing in matches.

Stored as JSON in the classify summary and evidence, never a pickle.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PAIRS = 200
DEFAULT_Z = 3.0
MIN_PAIRS = 20
_TRIM = 0.02


@dataclass(frozen=True)
class ChanceModel:
    """Chance inliers as a function of putative matches.

    Attributes:
        matches: per bin, the median putative matches (increasing).
        level: per bin, the chance level of inliers (non-decreasing).
        pairs: how many negative pairs were verified.
        z: the level is mean + z * std.
    """

    matches: tuple[float, ...]
    level: tuple[float, ...]
    pairs: int
    z: float = DEFAULT_Z

    def expected(self, matches: float) -> float:
        """The chance level of inliers for a pair with `matches` putative matches."""
        m, level = np.asarray(self.matches), np.asarray(self.level)
        if matches <= 0:
            return 0.0
        if matches < m[0]:
            return float(level[0] * matches / max(m[0], 1.0))
        return float(np.interp(matches, m, level))  # flat beyond the last bin

    def excess(self, inliers: int, matches: int) -> float:
        """Inliers above the chance level (negative below it)."""
        return float(inliers) - self.expected(matches)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ChanceModel":
        return cls(tuple(data["matches"]), tuple(data["level"]), int(data["pairs"]),
                   float(data["z"]))


def fit_chance(samples: Sequence[tuple[int, int]], *, z: float = DEFAULT_Z,
               bins: int = 5) -> ChanceModel:
    """The chance model from (putative matches, inliers) of negative pairs.

    Raises:
        ValueError: fewer than MIN_PAIRS samples.
    """
    data = np.asarray(samples, np.float64).reshape(-1, 2)
    if len(data) < MIN_PAIRS:
        raise ValueError(f"a chance model needs >= {MIN_PAIRS} negative pairs, got {len(data)}")
    data = data[np.argsort(data[:, 0], kind="stable")]
    bins = max(1, min(bins, len(data) // MIN_PAIRS))
    centres, levels = [], []
    for chunk in np.array_split(data, bins):
        inliers = np.sort(chunk[:, 1])
        kept = inliers[:max(1, int(np.ceil(len(inliers) * (1 - _TRIM))))]
        centres.append(float(np.median(chunk[:, 0])))
        levels.append(float(kept.mean() + z * kept.std()))
    # equal centres (many pairs with the same match count) collapse into one point
    merged: dict[float, float] = {}
    for c, level in zip(centres, levels):
        merged[c] = max(level, merged.get(c, 0.0))
    xs = sorted(merged)
    ys = np.maximum.accumulate([merged[x] for x in xs])
    return ChanceModel(tuple(xs), tuple(float(y) for y in ys), len(data), z)


def negative_pairs(labels: Mapping[str, str | None], ids: Sequence[str], count: int,
                   seed: int = 0) -> list[tuple[str, str]]:
    """Up to `count` distinct random pairs (a, b) of `ids` that cannot show one landmark: their
    labels differ and at least one is a landmark (two non-landmark photos may show one place)."""
    ids = sorted(ids)
    rng = np.random.default_rng(seed)
    pairs: set[tuple[str, str]] = set()
    for _ in range(count * 20):
        if len(pairs) >= count or len(ids) < 2:
            break
        a, b = rng.choice(len(ids), 2, replace=False)
        if is_negative(labels, ids[a], ids[b]):
            pairs.add((ids[a], ids[b]))
    return sorted(pairs)


def is_negative(labels: Mapping[str, str | None], a: str, b: str) -> bool:
    la, lb = labels.get(a) or None, labels.get(b) or None
    return (la is not None or lb is not None) and la != lb


def measure_chance(gallery, labels: Mapping[str, str | None], search, *, index=None,
                   pairs: int = DEFAULT_PAIRS, seed: int = 0, z: float = DEFAULT_Z,
                   memo=None) -> ChanceModel | None:
    """Verify negative pairs of the gallery with `search`'s settings and fit the chance model.

    With an index, half the pairs are each sampled image with its most-voted negative (the
    hardest). None (with a warning) when the gallery has too few negative pairs.
    """
    from delfx.index.search import verify_candidates, vote
    ids = [i for i in gallery.image_ids if i in labels]
    random_pairs = negative_pairs(labels, ids, pairs // 2 if index is not None else pairs, seed)
    hard: list[tuple[str, str]] = []
    if index is not None:
        rng = np.random.default_rng(seed + 1)
        sampled = sorted(rng.choice(ids, min(len(ids), pairs - len(random_pairs)),
                                    replace=False).tolist()) if ids else []
        positions = index.mapping_positions
        for a in sampled:
            record = gallery.get(a)
            if not record.num_features:
                continue
            votes = vote(index, record.descriptors, search, {positions.get(a, -1)})
            for row, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])):
                b = index.mapping.image_ids[row]
                if b in labels and is_negative(labels, a, b):
                    hard.append((a, b))
                    break
    samples = []
    by_query: dict[str, list[str]] = {}
    for a, b in random_pairs + hard:
        by_query.setdefault(a, []).append(b)
    for a, others in sorted(by_query.items()):
        results = verify_candidates(gallery.get(a), [gallery.get(b) for b in others], search,
                                    memo)
        samples += [(r.num_matches, r.inliers) for r in results]
    if len(samples) < MIN_PAIRS:
        log.warning("only %d negative pairs in the gallery (labels of >= 2 landmarks or "
                    "non-landmark images needed): scores are not corrected for chance inliers",
                    len(samples))
        return None
    model = fit_chance(samples, z=z)
    log.info("chance inliers from %d negative pairs (%d hardest): %s", len(samples), len(hard),
             ", ".join(f"{level:.1f} at {m:.0f} matches"
                       for m, level in zip(model.matches, model.level)))
    return model
