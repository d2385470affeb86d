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
from delfx.metrics import Prediction
from delfx.paths import atomic_text_output
from delfx.recognition.calibration import Calibration, fit_logistic
from delfx.recognition.chance import measure_chance
from delfx.recognition.recognize import FEATURES, Recognizer
from delfx.recognition.scoring import Answer, demote_frequent

log = logging.getLogger(__name__)

MAX_CALIBRATION_QUERIES = 400
# Below these, a calibration's probabilities are not to be trusted (measured on photos outside
# the project: a calibration fitted on 12 answers lowered GAP from 0.67 to 0.63): it warns.
TRUSTED_ANSWERS, TRUSTED_PER_OUTCOME = 40, 10


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
                 ray: dict[str, Any] | None = None, workers: int | None = None,
                 chunk_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Recognise every query and write the submission: a resumable query job (delfx.query_job)
    in this process, or on Ray workers.

    The chance model and the calibration need the labelled gallery as a whole: they are
    measured and fitted here, on the driver, first; the workers get them with the spec.
    Frequency demotion needs every answer: it runs here too, over the recorded rows, when the
    submission is written. So the submission is the same bytes in process and on Ray.

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
        ray: None: in this process; else {"address": ...}: Ray workers (a local instance on
            127.0.0.1 unless an address); an index in parts is one actor per part, shared.
        workers, chunk_size: Ray workers (default: as many as the cluster's CPUs hold) and
            queries per chunk (query_job.DEFAULT_CHUNK_SIZE).
    """
    from delfx.index.search import VerificationMemo
    from delfx.query_job import DEFAULT_CHUNK_SIZE, InProcessPool, RayPool, run_query_job
    from delfx.recognition.setup import ClassifyProcessor, RecognitionSetup, make_processor
    started = time.monotonic()
    if (scoring or {}).get("scoring") == "delg" and mode != "shortlist":
        raise DelfxError("--scoring delg needs --mode shortlist (it weighs each image's global "
                         "similarity)")
    resolved = lambda p: str(Path(p).resolve()) if p is not None else None  # noqa: E731
    spec = {"gallery": resolved(gallery_dir), "labels": resolved(gallery_labels),
            "queries": resolved(queries), "mode": mode, "classifier": resolved(classifier_dir),
            "index": resolved(index_dir), "global_model": resolved(global_model_dir),
            "non_landmarks": resolved(non_landmarks), "top_k": top_k, "min_score": min_score,
            "shortlist": shortlist, "search_settings": search_settings, "scoring": scoring,
            "exclude_self": exclude_self}
    setup = RecognitionSetup(spec, ray={**ray, "part_cpus": 0} if ray is not None else None)
    try:
        config, labels, index = setup.config, setup.labels, setup.index
        given_memo = memo is not None
        if memo is None and (calibrate or chance_pairs):
            memo = VerificationMemo()
        chance = None
        if chance_pairs and mode != "classifier" and config.scoring == "inliers":
            chance = measure_chance(setup.gallery, labels, setup.search, index=index,
                                    pairs=chance_pairs, memo=memo)
        recognizer = setup.recognizer(chance=chance, memo=memo)
        calibration = None
        if calibrate:
            ids = calibration_queries(recognizer, labels, setup.classifier)
            calibration = fit_calibration(recognizer, labels, ids)
            if calibration_path is not None:
                calibration.save(calibration_path)
        elif calibration_path is not None:
            calibration = Calibration.load(calibration_path)
            fitted_mode = calibration.fitted_on.get("mode", mode)
            if fitted_mode != mode or not set(calibration.names) <= set(FEATURES[mode]):
                raise DelfxError(f"{calibration_path}: calibration is for features "
                                 f"{calibration.names} (fitted in mode "
                                 f"{calibration.fitted_on.get('mode', '?')}), --mode {mode} "
                                 f"gives {FEATURES[mode]}: fit one with --calibrate")
            check_calibration_settings(calibration, config, chance, calibration_path)
        recognizer = recognizer.twin(calibration=calibration)
        if not (given_memo or exclude_self):
            recognizer.memo = None  # no query pair can come twice: nothing to hash or keep
        digests = _input_digests(spec, setup)
        identity = {"job": "classify", "digests": digests,
                    "settings": {k: v for k, v in spec.items() if k not in (
                        "gallery", "labels", "queries", "classifier", "index", "global_model",
                        "non_landmarks")},
                    "chance": chance.to_json() if chance is not None else None,
                    "calibration": calibration.to_json() if calibration is not None else None}
        if ray is None:
            pool = InProcessPool(lambda: ClassifyProcessor(recognizer, setup.query_set,
                                                           setup.global_model, exclude_self))
        else:
            worker_spec = {**spec, "digests": digests, "chance": identity["chance"],
                           "calibration": identity["calibration"],
                           "searchers": getattr(index, "searchers", None) or None}
            pool = RayPool(make_processor, worker_spec, address=ray.get("address"),
                           verbosity=ray.get("verbosity", 0),
                           connected=bool(getattr(index, "started_ray", False)))
        written: dict[str, Any] = {}

        def write(rows) -> None:
            written.update(_write_outputs(rows, out, evidence_path, max_per_landmark))

        job = run_query_job(setup.query_set.job_items(), out, identity, pool, write=write,
                            what="classify", chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                            workers=workers, progress=progress, started=started)
    finally:
        setup.close()
    queries_done = written["queries"]
    return {"out": str(out), "mode": mode, **written,
            "calibrated": calibration is not None,
            "scoring": scoring_settings(config, chance),
            "non_landmark_images": {"gallery": sum(1 for v in labels.values() if not v),
                                    "apart": len(setup.non_landmarks)
                                    if setup.non_landmarks is not None else 0},
            "chance": chance.to_json() if chance is not None else None,
            # the queries' own time: loading, the chance model and the calibration are the
            # job's start-up
            "seconds_per_query": (job.seconds - job.startup_seconds) / queries_done
            if queries_done and job.chunks_run else None,
            "job": job.to_json()}


def _input_digests(spec: dict[str, Any], setup) -> dict[str, str | None]:
    """What identifies the content of a classify run's inputs (see query_job)."""
    from delfx.digests import file_sha256, folder_sha256
    from delfx.index.search_job import index_digest
    from delfx.store.schema import MANIFEST_NAME
    folder = lambda p: folder_sha256(p) if p is not None else None  # noqa: E731
    non_landmarks = None
    if spec["non_landmarks"] is not None:
        non_landmarks = Queries(Path(spec["non_landmarks"]), setup.gallery).digest()
    return {"gallery": file_sha256(Path(spec["gallery"]) / MANIFEST_NAME),
            "labels": file_sha256(spec["labels"]), "queries": setup.query_set.digest(),
            "index": index_digest(Path(spec["index"])) if spec["index"] else None,
            "classifier": folder(spec["classifier"]), "global_model": folder(spec["global_model"]),
            "non_landmarks": non_landmarks}


def _write_outputs(rows, out: Path, evidence_path: Path | None, max_per_landmark: int
                   ) -> dict[str, Any]:
    """The submission (and the evidence) from every query's Recognition row, in query order,
    after frequency demotion over the whole batch; what was written, for the summary."""
    results = [row for _, row in rows]
    answers = demote_frequent([Answer(r["query"], r["label"], r["score"]) for r in results],
                              max_per_landmark)
    predictions = [Prediction(a.query, a.label, a.score) for a in answers]
    with contextlib.ExitStack() as stack:
        if evidence_path:
            evidence = stack.enter_context(atomic_text_output(evidence_path))
            for row, answer in zip(results, answers):
                if answer.score != row["score"]:
                    row = {**row, "demoted_score": answer.score}
                evidence.write(json.dumps(row) + "\n")
        write_submission(out, predictions)
    answered = sum(1 for p in predictions if p.label)
    return {"queries": len(predictions), "answered": answered,
            "unanswered": len(predictions) - answered,
            "demoted": sum(1 for a, r in zip(answers, results) if a.score != r["score"])}
