"""`delfx classify`: load what a mode needs, optionally fit the calibration, recognise queries,
write the Kaggle submission and the evidence."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import DelfxError
from delfx.evaluate import write_submission
from delfx.extractor.queries import Queries
from delfx.labels import read_labels
from delfx.metrics import Prediction
from delfx.paths import atomic_text_output
from delfx.recognition.calibration import Calibration, fit_logistic
from delfx.recognition.chance import measure_chance
from delfx.recognition.recognize import FEATURES, RecognitionConfig, Recognizer
from delfx.recognition.scoring import Answer, demote_frequent
from delfx.store import FeatureSet

log = logging.getLogger(__name__)

MAX_CALIBRATION_QUERIES = 400
# Below these, a calibration's probabilities are not to be trusted (measured on photos outside
# the project: a calibration fitted on 12 answers lowered GAP from 0.67 to 0.63): it warns.
TRUSTED_ANSWERS, TRUSTED_PER_OUTCOME = 40, 10
# A classifier with fewer training images per class than this is warned about (fused mode lowered
# GAP with 1-3 photos per class).
TRUSTED_IMAGES_PER_CLASS = 5


def calibration_queries(recognizer: Recognizer, labels: dict[str, str | None],
                        classifier=None, seed: int = 0) -> list[str]:
    """Labelled gallery images whose answer the recogniser has not learnt by heart.

    With a classifier, its validation images and the non-landmark gallery images (the
    classifier's probabilities on its own training images are overconfident); otherwise every
    labelled gallery image (queried leave-one-out). At most MAX_CALIBRATION_QUERIES, seeded.
    """
    ids = list(labels)
    if classifier is not None:
        held_out = set(classifier.info.get("data", {}).get("validation_ids", []))
        if not held_out:
            # Its probabilities on its own training images are near 1: a calibration fitted
            # there learns to trust the classifier far too much (measured: fused GAP 0.26 -> 0.23).
            raise DelfxError("the classifier was trained without validation images, so nothing "
                             "is left to calibrate its probabilities on: retrain with "
                             "--validation-share > 0, or classify without --calibrate")
        ids = [i for i in ids if i in held_out or not labels[i]]
    in_gallery = set(recognizer.gallery.image_ids)
    ids = [i for i in ids if i in in_gallery]
    if len(ids) > MAX_CALIBRATION_QUERIES:
        rng = np.random.default_rng(seed)
        ids = sorted(rng.choice(ids, MAX_CALIBRATION_QUERIES, replace=False).tolist())
    return ids


def fit_calibration(recognizer: Recognizer, labels: dict[str, str | None], ids: list[str]
                    ) -> Calibration:
    """Recognise each labelled id leave-one-out with raw scores; learn P(correct | evidence).

    Each query gives its top answer (right or wrong) and, as a negative, the evidence of its
    best *wrong* landmark: that is what a distractor's top answer looks like, so the model
    learns to tell them apart even when every top answer of the gallery happens to be right.
    """
    raw = recognizer.twin(calibration=None)
    names = FEATURES[raw.config.mode]
    rows, right = [], []
    for image_id in ids:
        scored = raw.scored_candidates(recognizer.gallery.get(image_id), exclude_self=True)
        truth = labels.get(image_id)
        if scored:
            _, top, features = scored[0]
            rows.append([features[n] for n in names])
            right.append(int(top.label == truth))
        wrong = next(((c, f) for _, c, f in scored[1:] if c.label != truth), None)
        if wrong is not None and scored and scored[0][1].label == truth:
            rows.append([wrong[1][n] for n in names])
            right.append(0)
    log.info("calibration on %d answers (%d right)", len(rows), sum(right))
    warn_untrusted_calibration(len(rows), sum(right))
    return fit_logistic(np.array(rows), np.array(right), names,
                        fitted_on={"mode": raw.config.mode, "queries": len(ids),
                                   **scoring_settings(raw.config, raw.chance)})


def warn_untrusted_calibration(answers: int, right: int) -> bool:
    """Warn (and say True) when a calibration is fitted on too few answers to be trusted."""
    wrong = answers - right
    if answers >= TRUSTED_ANSWERS and min(right, wrong) >= TRUSTED_PER_OUTCOME:
        return False
    log.warning("the calibration is fitted on %d answers (%d right, %d wrong): too few to trust "
                "(wanted >= %d, with >= %d of each); its scores may rank answers worse than raw "
                "scores do: label more gallery images, or classify without --calibrate",
                answers, right, wrong, TRUSTED_ANSWERS, TRUSTED_PER_OUTCOME)
    return True


def warn_untrusted_classifier(classifier, source) -> bool:
    """Warn (and say True) when a classifier's proposals cannot be trusted: trained on too
    few images per class, without validation images, or no better than chance on them."""
    info = getattr(classifier, "info", {}) or {}
    data, training = info.get("data", {}), info.get("training", {})
    classes = int(info.get("num_classes") or len(getattr(classifier, "labels", [])) or 0)
    train_images = int(data.get("train_images") or 0)
    accuracy = training.get("val_accuracy")
    reasons = []
    if classes and train_images < TRUSTED_IMAGES_PER_CLASS * classes:
        reasons.append(f"{train_images} training images for {classes} classes "
                       f"(< {TRUSTED_IMAGES_PER_CLASS} per class)")
    if accuracy is None:
        reasons.append("no validation images, so its accuracy is unknown")
    elif classes and accuracy <= 2.0 / classes:
        reasons.append(f"validation accuracy {accuracy:.3f}, about chance (1/{classes})")
    if reasons:
        log.warning("classifier %s: %s: its proposals may lower GAP; consider --mode retrieval",
                    source, "; ".join(reasons))
    return bool(reasons)


def verification_settings(search) -> dict[str, Any]:
    """What makes inlier counts comparable: the features and how they are matched and verified.
    A calibration learns what an inlier count means; with other settings it means otherwise."""
    return {"features": search.features, "matcher": search.matcher, "ransac": search.ransac,
            "relative_threshold": search.relative_threshold}


def scoring_settings(config, chance) -> dict[str, Any]:
    """What makes evidence comparable: verification, aggregation, penalty and chance model."""
    return {**verification_settings(config.search), "aggregate": config.aggregate,
            "non_landmark_penalty": config.non_landmark_penalty, "chance": chance is not None,
            "scoring": config.scoring, "rank_by": config.rank_by}


def check_calibration_settings(calibration: Calibration, config, chance, path) -> None:
    """Refuse a calibration fitted with other verification or scoring settings than this run's
    (files from before delfx recorded them are accepted with a warning)."""
    now = scoring_settings(config, chance)
    recorded = {k: calibration.fitted_on[k] for k in now if k in calibration.fitted_on}
    if not recorded:
        log.warning("%s records no verification settings (an older delfx): it is used as is; "
                    "refit it with --calibrate if the features or --matcher changed", path)
        return
    differ = [f"{k} {recorded[k]} (now {now[k]})" for k in recorded if recorded[k] != now[k]]
    if differ:
        raise DelfxError(f"{path}: calibration was fitted with other verification settings: "
                         f"{', '.join(differ)}; fit one with --calibrate")


def gallery_labels_of(gallery: FeatureSet, labels: dict[str, str | None], source) -> dict:
    """The labels of the gallery's images. Refuses labels that match no gallery image; warns,
    with counts, about labelled ids the gallery lacks and gallery images without a label."""
    in_gallery = set(gallery.image_ids)
    kept = {i: label for i, label in labels.items() if i in in_gallery}
    if not any(kept.values()):
        example = next(iter(labels), None)
        there = gallery.image_ids[0] if gallery.image_ids else None
        raise DelfxError(f"{source}: no landmark label is for an image of the gallery "
                         f"{gallery.root} ({len(labels)} labelled ids, e.g. {example!r}; gallery "
                         f"ids look like {there!r}): are they the same ids?")
    if len(kept) < len(labels):
        log.warning("%d of %d labelled ids are not in the gallery %s: ignored", len(labels) -
                    len(kept), len(labels), gallery.root)
    unlabelled = len(in_gallery) - len(kept)
    if unlabelled:
        log.warning("%d of %d gallery images have no row in %s: they never vote for a landmark",
                    unlabelled, len(in_gallery), source)
    return kept


def run_classify(gallery_dir: Path, gallery_labels: Path, queries: Path, out: Path, *,
                 mode: str = "fused", classifier_dir: Path | None = None,
                 index_dir: Path | None = None, calibration_path: Path | None = None,
                 calibrate: bool = False, evidence_path: Path | None = None,
                 min_score: float | None = None, top_k: int = 3, shortlist: int = 30,
                 global_model_dir: Path | None = None,
                 search_settings: dict[str, Any] | None = None,
                 scoring: dict[str, Any] | None = None, chance_pairs: int = 0,
                 max_per_landmark: int = 0, exclude_self: bool = False,
                 memo=None, non_landmarks: Path | None = None,
                 ray: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recognise every query and write the submission.

    Args:
        queries: a query feature set, or images (extracted with the gallery's model and config;
            when a mode needs global descriptors, embedded with the GeM classifier itself, else
            with `global_model_dir`).
        search_settings: SearchConfig fields for the verification (matcher, ransac, ...);
            None values keep the defaults for the gallery's model.
        scoring: RecognitionConfig fields (aggregate, non_landmark_penalty, per_class); None
            values keep the defaults.
        chance_pairs: negative gallery pairs verified for the chance model (0: raw inliers, the
            default: on landmarks-dev, ranking by inliers above chance cost 0.01-0.03 GAP;
            the chance model is for rejection, with min_score 1; chance.DEFAULT_PAIRS).
        max_per_landmark: answers of one landmark beyond this many are demoted (0: none).
        exclude_self: a query never matches the gallery image with its own id (leave-one-out
            over a labelled gallery: QUERIES = GALLERY_DIR).
        memo: a VerificationMemo to reuse verifications from (benchmarks that score one gallery
            several ways). By default the gallery pairs of the chance model and the calibration
            share one, and the queries use it only when they are the gallery (exclude_self):
            otherwise no query pair can come twice, and hashing and keeping them is waste.
        non_landmarks: images known not to be landmarks, apart from the gallery (a feature set
            of its model, or images): non_landmarks.NonLandmarks.
        ray: an index in parts searched with one Ray actor per part ({"address": ...}).
    """
    from delfx.index.faiss_index import check_compatible
    from delfx.index.search import SearchConfig, VerificationMemo
    if (scoring or {}).get("scoring") == "delg" and mode != "shortlist":
        raise DelfxError("--scoring delg needs --mode shortlist (it weighs each image's global "
                         "similarity)")
    gallery = FeatureSet(gallery_dir, require_complete=False)
    labels = gallery_labels_of(gallery, read_labels(gallery_labels), gallery_labels)
    query_set = Queries(queries, gallery)  # cheap checks before any model is loaded
    classifier = index = global_index = global_model = None
    if global_model_dir is not None:
        from delfx.globalnet.model import load_global_model
        global_model = load_global_model(global_model_dir)
    if mode in ("classifier", "fused"):
        if classifier_dir is None:
            raise DelfxError(f"--mode {mode} needs --classifier (from `delfx train`)")
        from delfx.globalnet.model import is_global_model_dir, load_global_model
        if is_global_model_dir(classifier_dir):
            classifier = global_model = load_global_model(classifier_dir)
        else:
            from delfx.classifier.model import load_classifier
            classifier = load_classifier(classifier_dir)
            classifier.check_features(gallery.manifest)
        warn_untrusted_classifier(classifier, classifier_dir)
    if mode == "shortlist":
        from delfx.index.global_index import GlobalIndex
        global_index = (GlobalIndex.load(index_dir) if index_dir is not None and
                        GlobalIndex.exists(index_dir) else GlobalIndex.from_feature_set(gallery))
        if global_model is not None:
            global_index.check_query_model(global_model.describe(), str(global_model_dir))
    if mode in ("retrieval", "fused"):
        if index_dir is None:
            raise DelfxError(f"--mode {mode} needs --index (from `delfx build-index`)")
        from delfx.index.parts import open_index
        index = open_index(index_dir, ray=ray)  # a single index or one in parts
        check_compatible(index.meta, gallery, index_dir)
    search = SearchConfig.for_model(gallery.manifest.model_id,
                                    **{"shortlist": shortlist, **(search_settings or {})})
    config = RecognitionConfig(mode=mode, top_k=top_k, min_score=min_score, search=search,
                               shortlist=shortlist,
                               **{k: v for k, v in (scoring or {}).items() if v is not None})
    given_memo = memo is not None
    if memo is None and (calibrate or chance_pairs):
        memo = VerificationMemo()
    known = None
    if non_landmarks is not None:
        if mode == "classifier":
            raise DelfxError("--non-landmarks needs verification: --mode retrieval, fused or "
                             "shortlist")
        from delfx.recognition.non_landmarks import NonLandmarks
        known = NonLandmarks(non_landmarks, gallery)
    chance = None
    if chance_pairs and mode != "classifier" and config.scoring == "inliers":
        chance = measure_chance(gallery, labels, search, index=index, pairs=chance_pairs,
                                memo=memo)
    recognizer = Recognizer(gallery, labels, index=index, classifier=classifier, config=config,
                            global_index=global_index, chance=chance, memo=memo,
                            non_landmarks=known)
    calibration = None
    if calibrate:
        ids = calibration_queries(recognizer, labels, classifier)
        calibration = fit_calibration(recognizer, labels, ids)
        if calibration_path is not None:
            calibration.save(calibration_path)
    elif calibration_path is not None:
        calibration = Calibration.load(calibration_path)
        fitted_mode = calibration.fitted_on.get("mode", mode)
        if fitted_mode != mode or not set(calibration.names) <= set(FEATURES[mode]):
            raise DelfxError(f"{calibration_path}: calibration is for features {calibration.names} "
                             f"(fitted in mode {calibration.fitted_on.get('mode', '?')}), --mode "
                             f"{mode} gives {FEATURES[mode]}: fit one with --calibrate")
        check_calibration_settings(calibration, config, chance, calibration_path)
    recognizer = recognizer.twin(calibration=calibration)
    if not (given_memo or exclude_self):
        recognizer.memo = None  # no query pair can come twice: nothing to hash or keep
    results, start = [], time.perf_counter()
    for query in query_set.records(global_model):
        results.append(recognizer.recognize(query, exclude_self=exclude_self))
    getattr(index, "close", lambda: None)()  # an index in parts on Ray: its actors
    answers = demote_frequent([Answer(r.query, r.label, r.score) for r in results],
                              max_per_landmark)
    demoted = sum(1 for a, r in zip(answers, results) if a.score != r.score)
    predictions = [Prediction(a.query, a.label, a.score) for a in answers]
    with contextlib.ExitStack() as stack:
        if evidence_path:
            evidence = stack.enter_context(atomic_text_output(evidence_path))
            for result, answer in zip(results, answers):
                row = result.to_json()
                if answer.score != result.score:
                    row["demoted_score"] = answer.score
                evidence.write(json.dumps(row) + "\n")
        write_submission(out, predictions)
    seconds = time.perf_counter() - start
    answered = sum(1 for p in predictions if p.label)
    return {"out": str(out), "mode": mode, "queries": len(predictions), "answered": answered,
            "unanswered": len(predictions) - answered,
            "calibrated": calibration is not None, "demoted": demoted,
            "scoring": scoring_settings(config, chance),
            "non_landmark_images": {"gallery": sum(1 for v in labels.values() if not v),
                                    "apart": len(known) if known is not None else 0},
            "chance": chance.to_json() if chance is not None else None,
            "seconds_per_query": seconds / len(predictions) if predictions else None}
