"""From verified gallery images to one score per landmark, and batch-level demotion.

Evidence of one query is the list of gallery images it was verified against, each with its
landmark (None for a non-landmark gallery image), inliers and putative matches. Per image, the
value is its inliers, or with a chance model (chance.py) its inliers above chance (negative when
below). Then:

* a landmark's evidence is the value of its best image plus the positive values of its next
  `aggregate - 1` images (1: the best image, the old rule; 3: GLR2019 3rd place's "sum of the
  top 3", which rewards landmarks seen in several gallery photos). Only values above chance
  add: without a chance model, a landmark with many gallery photos would collect their chance
  inliers (measured on landmarks-dev: GAP 0.62 -> 0.47 for the raw top-3 sum);
* the non-landmark evidence is the same sum over the non-landmark gallery images, if positive:
  a query that matches photos known not to be landmarks as well as its best landmark is
  probably not one either (GLR2020 1st place), so with `non_landmark_penalty` it is subtracted;
* with `rule="delg"` (shortlist mode, where each verified image also has its global cosine
  similarity), the DELG baseline's combined score instead: per image, cosine + min(inliers,
  70) / 70; the 10 best images by it, of which the 5 best vote, each with its score (Cao et al.
  2020, the GLDv2 recognition baseline);
* a landmark answered for too many queries of one batch is demoted (`demote_frequent`): a
  landmark with much texture or a common motif collects the distractors (GLR2019 3rd, GLR2020
  2nd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

RULES = ("inliers", "delg")
DELG_INLIER_CAP, DELG_RERANKED, DELG_VOTERS = 70, 10, 5


@dataclass(frozen=True)
class Verified:
    """One gallery image verified against the query."""

    gallery_id: str
    label: str | None
    inliers: int
    matches: int
    similarity: float = 0.0  # global cosine similarity (shortlist mode)


@dataclass
class LabelEvidence:
    label: str
    evidence: float     # best image's value + positive values of its next aggregate - 1
    inliers: int        # of its best image (most inliers)
    matches: int
    gallery_id: str
    images: int         # its verified images with a value > 0
    inlier_sum: float = 0.0  # the sum of its `aggregate` best images' raw inliers


def value_fn(chance) -> Callable[[Verified], float]:
    """The value of one verified image: inliers, or inliers above chance (signed)."""
    if chance is None:
        return lambda v: float(v.inliers)
    return lambda v: chance.excess(v.inliers, v.matches)


def delg_value(v: Verified) -> float:
    return v.similarity + min(v.inliers, DELG_INLIER_CAP) / DELG_INLIER_CAP


def aggregate(verified: Iterable[Verified], top: int, chance=None, rule: str = "inliers"
              ) -> tuple[dict[str, LabelEvidence], float]:
    """(evidence per landmark, non-landmark evidence) of one query; each gallery image counts
    once (its best verification)."""
    best: dict[str, Verified] = {}
    for v in verified:
        if v.gallery_id not in best or v.inliers > best[v.gallery_id].inliers:
            best[v.gallery_id] = v
    if rule == "delg":
        return _aggregate_delg(list(best.values()))
    value = value_fn(chance)
    groups: dict[str | None, list[Verified]] = {}
    for v in best.values():
        groups.setdefault(v.label or None, []).append(v)
    out: dict[str, LabelEvidence] = {}
    non_landmark = 0.0
    for label, members in groups.items():
        values = sorted((value(v) for v in members), reverse=True)
        evidence = float(values[0] + sum(max(x, 0.0) for x in values[1:top]))
        if label is None:
            non_landmark = max(evidence, 0.0)
            continue
        head = min(members, key=lambda v: (-v.inliers, -v.matches, v.gallery_id))
        raw = sorted((v.inliers for v in members), reverse=True)[:top]
        out[label] = LabelEvidence(label, evidence, head.inliers, head.matches, head.gallery_id,
                                   sum(1 for x in values if x > 0), float(sum(raw)))
    return out, non_landmark


def _aggregate_delg(images: list[Verified]) -> tuple[dict[str, LabelEvidence], float]:
    ranked = sorted(images, key=lambda v: (-delg_value(v), v.gallery_id))[:DELG_RERANKED]
    voters = {v.gallery_id for v in ranked[:DELG_VOTERS]}
    out: dict[str, LabelEvidence] = {}
    non_landmark = 0.0
    for v in ranked:
        weight = delg_value(v) if v.gallery_id in voters else 0.0
        if not v.label:
            non_landmark += weight
            continue
        e = out.get(v.label)
        if e is None:  # ranked best first: the first image of a label is its best
            out[v.label] = LabelEvidence(v.label, weight, v.inliers, v.matches, v.gallery_id,
                                         int(weight > 0), weight)
        else:
            e.evidence += weight
            e.inlier_sum += weight
            e.images += int(weight > 0)
    return out, non_landmark


@dataclass(frozen=True)
class Answer:
    query: str
    label: str | None
    score: float


def demote_frequent(answers: Sequence[Answer], cap: int) -> list[Answer]:
    """Answers with each landmark's answers beyond its `cap` best-scored ones demoted: the n-th
    (n > cap, by score) keeps its label and gets score * cap / n, so it ranks after the strong
    answers of other landmarks. cap 0: unchanged. Order of `answers` is kept."""
    if cap <= 0:
        return list(answers)
    by_label: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        if a.label:
            by_label.setdefault(a.label, []).append(i)
    out = list(answers)
    for rows in by_label.values():
        rows.sort(key=lambda i: (-answers[i].score, answers[i].query))
        for n, i in enumerate(rows, start=1):
            if n > cap:
                out[i] = Answer(answers[i].query, answers[i].label, answers[i].score * cap / n)
    return out
