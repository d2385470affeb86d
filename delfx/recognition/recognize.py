"""Landmark recognition for one query: classifier, retrieval, or both fused with verification.

Modes:
* `classifier`: the network's top class and its probability.
* `retrieval`: verified nearest gallery images (index search + RANSAC) vote for their landmark;
  a landmark's evidence is the sum over its `aggregate` best-verified gallery images, in
  inliers or, with a chance model, inliers above chance (scoring.py, chance.py).
* `fused` (default): the classifier's top-k proposals and the retrieval's landmarks, each
  verified against gallery images of that landmark, re-scored from both sources.
* `shortlist`: the `shortlist` gallery images nearest by global (GeM) descriptor are verified
  with local features (the matcher + RANSAC); a landmark's evidence as in `retrieval`. Global retrieval then local re-ranking: the pattern
  of the strongest GLR2019 solutions.

The classifier may be a local-feature classifier (`delfx.classifier.model.Classifier`, fed the
query's top local features) or a GeM global model (`delfx.globalnet.model.GlobalModel`, fed
the query's stored global descriptor).

Every mode produces the evidence features of its answer; a Calibration (calibration.py) turns
them into P(correct), comparable across queries, which is what GAP needs. Without one, raw scores
are used: from the verification evidence x less the non-landmark evidence, 1 + x when x >= 0
and e^x below (retrieval; positive and ranked as x), probability (classifier), and for `fused`
that + probability:
verification decides, the classifier proposes landmarks the retrieval shortlist missed and breaks
ties. (Measured on landmarks-dev with 1-3 photos per landmark, a score that averaged probability
and inliers let a weak classifier's wrong proposals with a few chance inliers beat right answers:
GAP 0.26 against 0.41 for retrieval alone.) No candidate (no inliers, no class), or in
retrieval and shortlist modes no evidence above chance and above the non-landmark gallery
images', means "no landmark": an empty prediction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from delfx.config import CLASSIFY_MODES
from delfx.errors import DelfxError
from delfx.index.search import (SearchConfig, VerificationMemo, search_one, shortlist_one,
                                verify_candidates, vote)
from delfx.recognition.calibration import Calibration
from delfx.recognition.chance import ChanceModel
from delfx.recognition.scoring import RULES, Verified, aggregate
from delfx.store import FeatureSet, ImageFeatures
from delfx.store.padding import padded_records

log = logging.getLogger(__name__)

MODES = CLASSIFY_MODES
RANK_BY = ("evidence", "inliers")
# Evidence features of an answer: FEATURES[mode] are the ones a calibration is fitted on; a
# calibration file may use any subset of them (files fitted by older delfx use fewer).
_VERIFIED = ["log_inliers", "log_margin", "inlier_ratio", "log_evidence", "log_evidence_margin",
             "log_non_landmark"]
FEATURES = {
    "retrieval": _VERIFIED,
    "shortlist": _VERIFIED,
    "classifier": ["probability", "probability_margin"],
    "fused": ["probability"] + _VERIFIED,
}


@dataclass(frozen=True)
class RecognitionConfig:
    """How one query is recognised.

    Attributes:
        aggregate: a landmark's evidence is the sum over its `aggregate` best verified gallery
            images (scoring.py).
        non_landmark_penalty: subtract the evidence of the non-landmark gallery images (those
            labelled with an empty landmark) from every landmark's.
    """

    mode: str = "fused"
    top_k: int = 3          # classifier proposals verified in fused mode
    per_class: int = 5      # gallery images of a proposed landmark that are verified
    min_score: float | None = None  # below this (calibrated or raw) score: no prediction
    shortlist: int = 30     # gallery images nearest by global descriptor verified (shortlist)
    aggregate: int = 1
    non_landmark_penalty: bool = True
    scoring: str = "inliers"  # or "delg" (shortlist mode): scoring.RULES
    rank_by: str = "evidence"  # answers at or above chance ranked by it, or by raw "inliers"
    search: SearchConfig = SearchConfig()


@dataclass
class Candidate:
    label: str
    probability: float = 0.0
    inliers: int = 0        # of the landmark's best verified gallery image
    matches: int = 0
    gallery_id: str | None = None
    evidence: float = 0.0   # aggregated over its best images, above chance when modelled
    images: int = 0         # its verified gallery images with evidence
    inlier_sum: float = 0.0  # raw inliers of its `aggregate` best images


@dataclass
class Recognition:
    query: str
    label: str | None
    score: float
    features: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    non_landmark: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "label": self.label, "score": self.score,
                "features": self.features, "non_landmark_evidence": self.non_landmark,
                "candidates": [vars(c) for c in self.candidates[:5]]}


def _positive(x: float) -> float:
    """The raw score of verification evidence x: 1 + x at or above 0, e^x (in (0, 1)) below.
    Monotone, so it ranks as x does, and positive, as submission scores are."""
    return 1.0 + x if x >= 0 else float(np.exp(x))


def _signed_log(x: float) -> float:
    """log(1 + |x|) with x's sign: evidence below chance is negative."""
    return float(np.sign(x) * np.log1p(abs(x)))


class Recognizer:
    """Recognises query images against a labelled gallery.

    Args:
        gallery: the gallery feature set (local features of the labelled images).
        labels: gallery image id -> landmark (None or "" for non-landmark gallery images;
            gallery images without an entry are ignored).
        index: the gallery's GalleryIndex (retrieval and fused modes).
        classifier: a loaded classifier (classifier and fused modes) with `.predict(x, mask)`
            and `.labels` (a LabelMap).
        calibration: P(correct) model for this mode, or None for raw scores.
        chance: chance inliers of these verification settings (chance.py), or None: raw inliers.
        memo: verifications to reuse and record (VerificationMemo), or None: every pair is
            verified afresh (the right thing when no pair can come twice).
        non_landmarks: images known not to be landmarks, kept apart from the gallery
            (non_landmarks.NonLandmarks): more non-landmark evidence.
    """

    def __init__(self, gallery: FeatureSet, labels: dict[str, str | None], *, index=None,
                 classifier=None, calibration: Calibration | None = None,
                 config: RecognitionConfig = RecognitionConfig(), global_index=None,
                 chance: ChanceModel | None = None, memo: VerificationMemo | None = None,
                 non_landmarks=None):
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if config.mode in ("retrieval", "fused") and index is None:
            raise ValueError(f"mode {config.mode} needs the gallery index")
        if config.mode == "shortlist" and global_index is None:
            raise ValueError("mode shortlist needs the gallery's global index")
        if config.mode in ("classifier", "fused") and classifier is None:
            raise ValueError(f"mode {config.mode} needs a classifier")
        if config.aggregate < 1:
            raise ValueError("aggregate must be >= 1")
        if config.scoring not in RULES:
            raise ValueError(f"scoring must be one of {RULES}")
        if config.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}")
        if config.scoring == "delg" and config.mode != "shortlist":
            raise DelfxError("--scoring delg needs --mode shortlist (it weighs each image's "
                             "global similarity)")
        if calibration is not None and not set(calibration.names) <= set(FEATURES[config.mode]):
            raise ValueError(f"calibration is for features {calibration.names}, mode "
                             f"{config.mode} gives {FEATURES[config.mode]}")
        if config.search.features != gallery.manifest.model_id:
            # the matcher depends on the features (auto: a learned model's own LightGlue)
            config = replace(config, search=config.search.for_features(gallery.manifest.model_id))
        self.gallery, self.labels, self.index = gallery, labels, index
        self.classifier, self.calibration, self.config = classifier, calibration, config
        self.global_index, self.chance = global_index, chance
        self.memo = memo
        self.non_landmarks = non_landmarks
        self.names = calibration.names if calibration is not None else FEATURES[config.mode]
        self._by_label: dict[str, list[str]] = {}
        for image_id, label in labels.items():
            if label:
                self._by_label.setdefault(label, []).append(image_id)

    def twin(self, *, calibration: Calibration | None) -> "Recognizer":
        """The same recogniser with another calibration (None: raw scores)."""
        return Recognizer(self.gallery, self.labels, index=self.index, classifier=self.classifier,
                          calibration=calibration, config=self.config,
                          global_index=self.global_index, chance=self.chance, memo=self.memo,
                          non_landmarks=self.non_landmarks)

    def _probabilities(self, query: ImageFeatures) -> dict[str, float]:
        if getattr(self.classifier, "kind", "local") == "global":
            if query.global_descriptor is None:
                raise DelfxError(f"query {query.image_id} has no global descriptor for the GeM "
                                 f"classifier (extract with --global-model)")
            probs = self.classifier.predict_descriptors(query.global_descriptor[None])[0]
            return {label: float(p) for label, p in zip(self.classifier.labels.labels, probs)}
        x, mask = padded_records([query], self.classifier.config.max_features,
                                 self.gallery.descriptor_dim)
        probs = self.classifier.predict(x, mask)[0]
        return {label: float(p) for label, p in zip(self.classifier.labels.labels, probs)}

    def _verified(self, results, similarity: bool = False) -> list[Verified]:
        """Search results as evidence; gallery images without a label entry are left out.
        `similarity`: the results' votes are global cosine x 1000 (shortlist_one)."""
        return [Verified(r.gallery_id, self.labels[r.gallery_id] or None, r.inliers, r.matches,
                         r.votes / 1000 if similarity else 0.0)
                for r in results if r.gallery_id in self.labels]

    def _verify_labels(self, query: ImageFeatures, labels: list[str], exclude: str | None,
                       votes: dict[int, int]) -> list[Verified]:
        """The per_class most-voted gallery images of each label, verified."""
        candidates, owners = [], []
        positions = self.index.mapping_positions if self.index is not None else {}
        for label in labels:
            members = [m for m in self._by_label.get(label, []) if m != exclude]
            members.sort(key=lambda m: (-votes.get(positions.get(m, -1), 0), m))
            for image_id in members[:self.config.per_class]:
                candidates.append(self.gallery.get(image_id))
                owners.append((label, image_id))
        results = verify_candidates(query, candidates, self.config.search, self.memo)
        return [Verified(image_id, label, r.inliers, r.num_matches)
                for (label, image_id), r in zip(owners, results)]

    def _shortlist(self, query: ImageFeatures, exclude_self: bool) -> list[Verified]:
        """The nearest gallery images by global descriptor, verified."""
        search = dataclasses.replace(self.config.search, shortlist=self.config.shortlist,
                                     top=self.config.shortlist)
        return self._verified(shortlist_one(query, self.global_index, self.gallery, search,
                                            exclude_self, self.memo), similarity=True)

    def evidence(self, query: ImageFeatures, exclude_self: bool = False
                 ) -> tuple[list[Candidate], float]:
        """(per-landmark evidence, best first; the non-landmark evidence) of one query."""
        mode = self.config.mode
        exclude = query.image_id if exclude_self else None
        verified: list[Verified] = []
        if mode == "shortlist":
            verified = self._shortlist(query, exclude_self)
        votes: dict[int, int] = {}
        if mode in ("retrieval", "fused") and query.num_features:
            positions = self.index.mapping_positions
            excluded = {positions[exclude]} if exclude in positions else set()
            votes = vote(self.index, query.descriptors, self.config.search, excluded)
            search = dataclasses.replace(self.config.search, top=self.config.search.shortlist)
            verified = self._verified(search_one(query, self.index, self.gallery, search,
                                                 exclude_self, votes=votes, memo=self.memo))
        probabilities: dict[str, float] = {}
        if mode in ("classifier", "fused"):
            probabilities = self._probabilities(query)
            proposals = sorted(probabilities, key=lambda l: (-probabilities[l], l))
            if mode == "classifier" or not query.num_features:
                ranked = [Candidate(l, probabilities[l]) for l in proposals[:self.config.top_k]]
                return sorted(ranked, key=lambda c: (-c.probability, c.label)), 0.0
            seen = {v.label for v in verified}
            missing = [l for l in proposals[:self.config.top_k] if l not in seen]
            verified += self._verify_labels(query, missing, exclude, votes)
        if self.non_landmarks is not None:
            verified += self.non_landmarks.verified(query, self.config.search, self.memo,
                                                    exclude_self)
        by_label, non_landmark = aggregate(verified, self.config.aggregate, self.chance,
                                           self.config.scoring)
        candidates = [Candidate(e.label, probabilities.get(e.label, 0.0), e.inliers, e.matches,
                                e.gallery_id, e.evidence, e.images, e.inlier_sum)
                      for e in by_label.values()]
        candidates.sort(key=lambda c: (-self._raw(c, non_landmark), c.label))
        return candidates, non_landmark

    def candidates(self, query: ImageFeatures, exclude_self: bool = False) -> list[Candidate]:
        """Per-landmark evidence, best first."""
        return self.evidence(query, exclude_self)[0]

    def _features(self, chosen: Candidate, others: list[Candidate], non_landmark: float
                  ) -> dict[str, float]:
        second_inliers = max((c.inliers for c in others), default=0)
        second_p = max((c.probability for c in others), default=0.0)
        second_evidence = max((c.evidence for c in others), default=0.0)
        return {"probability": chosen.probability,
                "probability_margin": chosen.probability - second_p,
                "log_inliers": float(np.log1p(chosen.inliers)),
                "log_margin": float(np.log1p(max(chosen.inliers - second_inliers, 0))),
                "inlier_ratio": chosen.inliers / max(chosen.matches, 1),
                "log_evidence": _signed_log(chosen.evidence),
                "log_evidence_margin": float(np.log1p(max(chosen.evidence - second_evidence, 0))),
                "log_non_landmark": float(np.log1p(max(non_landmark, 0.0)))}

    def _verification_score(self, candidate: Candidate, non_landmark: float) -> float:
        """The landmark's evidence, less the non-landmark evidence when penalised."""
        penalty = non_landmark if self.config.non_landmark_penalty else 0.0
        return candidate.evidence - penalty

    def _raw(self, candidate: Candidate, non_landmark: float = 0.0) -> float:
        mode = self.config.mode
        if mode == "classifier":
            return candidate.probability
        if candidate.inliers == 0 and self.config.scoring == "inliers":
            # nothing verified: below every verified answer whatever the chance level
            return candidate.probability if mode == "fused" else 0.0
        x = self._verification_score(candidate, non_landmark)
        if self.config.rank_by == "inliers" and x >= 0:
            # above chance and the non-landmark images: ranked by raw inliers, all above 1
            verification = 1.0 + candidate.inlier_sum
        else:
            verification = _positive(x)
        if mode in ("retrieval", "shortlist"):
            return verification
        # fused: verification decides, the probability proposes and breaks ties
        return verification + candidate.probability

    def scored(self, query: ImageFeatures, exclude_self: bool = False
               ) -> tuple[list[tuple[float, Candidate, dict[str, float]]], float]:
        """((score, candidate, evidence features) per landmark, best first; the non-landmark
        evidence)."""
        ranked, non_landmark = self.evidence(query, exclude_self)
        scored = []
        for c in ranked:
            features = self._features(c, [o for o in ranked if o is not c], non_landmark)
            vector = np.array([[features[n] for n in self.names]])
            score = (float(self.calibration.score(vector)[0]) if self.calibration is not None
                     else self._raw(c, non_landmark))
            scored.append((score, c, features))
        scored.sort(key=lambda t: (-t[0], t[1].label))
        return scored, non_landmark

    def scored_candidates(self, query: ImageFeatures, exclude_self: bool = False
                          ) -> list[tuple[float, Candidate, dict[str, float]]]:
        """(score, candidate, evidence features) per landmark, best first."""
        return self.scored(query, exclude_self)[0]

    def recognize(self, query: ImageFeatures, exclude_self: bool = False) -> Recognition:
        """The query's answer. No answer when nothing was found (retrieval, shortlist: no
        verified inlier) or when the score is below `min_score`. Otherwise weak evidence is an
        answer with a low score, not no answer: GAP never loses by an answer ranked below the
        others, and a right one there still counts."""
        if not query.ok:
            return Recognition(query.image_id, None, 0.0)
        scored, non_landmark = self.scored(query, exclude_self)
        ranked = [c for _, c, _ in scored]
        best = scored[0] if scored else None
        if best is None or (self.config.mode in ("retrieval", "shortlist")
                            and self.config.scoring == "inliers" and best[1].inliers == 0):
            return Recognition(query.image_id, None, 0.0, {}, ranked, non_landmark)
        score, candidate, features = best
        floor = self.config.min_score
        label = candidate.label if floor is None or score >= floor else None
        return Recognition(query.image_id, label, score if label else 0.0,
                           {k: features[k] for k in self.names}, ranked, non_landmark)
