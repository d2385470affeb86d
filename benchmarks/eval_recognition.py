"""Landmark recognition quality of delfx on real photos: retrieval, classifier and fused modes,
each with raw scores and with a calibration, scored with GAP with non-landmark distractors.

Protocol (landmarks-dev: 22 landmarks x 3 photos + 22 non-landmark photos):

* Per model (``--models``; default RootSIFT, delf-hybrid and, with the torch extra, XFeat at
  long side 1024 with its LighterGlue; others at ``ExtractConfig(model=..., max_side=512)``)
  the features are extracted ONCE per photo into one feature set (``run_extraction`` with
  ``InProcessExecutor``), and everything below runs on it with the model's default matcher
  (``auto``: a learned model's own LightGlue, else mutual nearest neighbours).
* 3 folds. In fold f, photo number f of every landmark (photos sorted by file name) is the
  query and the other photos of that landmark are the gallery / training images. Every
  non-landmark photo is a query in every fold (a distractor: the right answer is "no landmark").
  labels.csv does not hold exactly 3 photos per landmark: 15 landmarks have 2 photos, 3 have
  3, and sacre_coeur 11, nle_tower 7, piazza_san_marco 5, london_bridge 4. A landmark with 2
  photos has no query in fold 2 (both photos are gallery there) and a single gallery photo in
  folds 0 and 1; photos after the third are gallery images in every fold. So the folds have
  22, 22 and 7 landmark queries (51 in all) against 22 distractor queries each (66 in all).
* Per fold: the gallery records are copied into a new feature set (same model id, hash and
  config as the full set), indexed with ``build_index``, a classifier is trained on them with
  ``train_classifier`` (``ClassifierConfig(validation_share=0.0, epochs=100, seed=0)``: with two
  images per class there is nothing to hold out, so there is no validation set and early
  stopping watches the training loss), and per mode a calibration is fitted with
  ``fit_calibration`` on every gallery image queried leave-one-out (``calibration_queries``
  warns that the classifier has no validation images: the classifier's probabilities on those
  images are optimistic).
* Every query is recognised with ``Recognizer(...)`` per mode, raw (no calibration) and
  calibrated. One prediction per query; the predictions of all folds are pooled with query ids
  ``"{fold}:{image}"`` and scored with ``delfx.metrics.gap`` (M = landmark queries) and
  ``delfx.metrics.accuracy`` (top-1 over landmark queries, share of non-landmark queries left
  without a prediction).

Reference: ../shared/MEASURED.md gives GAP 0.52 / top-1 0.53 for RootSIFT + MNN + affine RANSAC
verified leave-one-out with all other photos as gallery (different protocol: 2 relevant photos
in the gallery as here, but also every other photo incl. non-landmarks, and no distractor
queries).

    python -m benchmarks.eval_recognition                # full: 3 folds, all photos
    python -m benchmarks.eval_recognition --quick        # 1 fold, 8 landmarks, 8 distractors
    python -m benchmarks.eval_recognition --json out.json --data ../shared/data

The shared data is read in place (evaluation only, never copied). Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, learned_unavailable, load_text
from benchmarks.data import (extract, load_photos, make_folds, parse_model_entry, quick_subset,
                             resolve_data_dir, write_subset)
from delfx.errors import DelfxError
from delfx.config import ExtractConfig

MAX_SIDE = 512
FOLDS = 3
MODES = ("retrieval", "classifier", "fused")
KINDS = ("raw", "calibrated")

log = logging.getLogger("eval_recognition")


# --------------------------------------------------------------------------------------------
# Data and folds
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# One fold
# --------------------------------------------------------------------------------------------

def run_fold(fold: dict[str, Any], full_dir: Path, workdir: Path, epochs: int,
             matcher: str = "auto") -> dict[str, Any]:
    from delfx.classifier.model import ClassifierConfig
    from delfx.recognition.classify import calibration_queries, fit_calibration
    from delfx.recognition.recognize import RecognitionConfig, Recognizer
    from delfx.classifier.train import train_classifier
    from delfx.index.faiss_index import GalleryIndex, build_index
    from delfx.index.search import SearchConfig
    from delfx.store import FeatureSet

    f = fold["fold"]
    root = workdir / f"fold{f}"
    gallery_dir, index_dir = root / "gallery", root / "index"
    labels = {p.image_id: p.landmark for p in fold["gallery"]}
    out: dict[str, Any] = {"fold": f, "gallery_images": len(labels),
                           "queries": len(fold["queries"]), "modes": {}}
    with FeatureSet(full_dir) as full:
        write_subset(full, sorted(labels), gallery_dir)
        queries = [full.get(p.image_id) for p in fold["queries"]]
    labels_csv = root / "labels.csv"
    labels_csv.write_text("id,landmark_id\n" + "".join(
        f"{i},{labels[i] or ''}\n" for i in sorted(labels)))

    start = time.perf_counter()
    build_index(gallery_dir, index_dir)
    out["index_s"] = time.perf_counter() - start
    start = time.perf_counter()
    trained = train_classifier(gallery_dir, labels_csv, root / "classifier",
                               ClassifierConfig(validation_share=0.0, epochs=epochs, seed=0))
    out["train_s"] = time.perf_counter() - start
    out["train"] = {"epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                    "classes": trained.num_classes, "train_images": trained.train_images}
    classifier = trained.model

    with FeatureSet(gallery_dir) as gallery:
        index = GalleryIndex(index_dir)
        search = SearchConfig.for_model(gallery.manifest.model_id, matcher=matcher)
        out["matcher"] = search.matcher
        for mode in MODES:
            config = RecognitionConfig(mode=mode, search=search)
            kw = {"index": index if mode != "classifier" else None,
                  "classifier": classifier if mode != "retrieval" else None}
            raw = Recognizer(gallery, labels, config=config, **kw)
            start = time.perf_counter()
            row: dict[str, Any] = {}
            recognizers = [("raw", raw)]
            try:
                ids = calibration_queries(raw, labels, classifier if mode != "retrieval" else None)
            except DelfxError as exc:
                # delfx refuses to calibrate a classifier on its own training images (leakage):
                # with 1-3 photos per landmark there are none to hold out.
                row["calibration_refused"] = str(exc)
            else:
                calibration = fit_calibration(raw, labels, ids)
                recognizers.append(("calibrated", Recognizer(gallery, labels, calibration=calibration,
                                                             config=config, **kw)))
                row.update({"calibration_s": time.perf_counter() - start,
                            "calibration_queries": len(ids),
                            "calibration": {"fitted_on": calibration.fitted_on,
                                            "names": calibration.names,
                                            "coef": calibration.coef.tolist(),
                                            "intercept": calibration.intercept}})
            for kind, recognizer in recognizers:
                predictions, times = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    result = recognizer.recognize(q)
                    times.append(time.perf_counter() - t0)
                    top = result.candidates[0] if result.candidates else None
                    predictions.append({"query": f"{f}:{q.image_id}", "label": result.label,
                                        "score": float(result.score),
                                        "inliers": top.inliers if top else 0,
                                        "probability": top.probability if top else 0.0})
                row[kind] = {"predictions": predictions, "seconds": times}
            out["modes"][mode] = row
            log.info("fold %d mode %s done", f, mode)
    return out


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def score(folds: list[dict[str, Any]], truth: dict[str, str | None]) -> dict[str, Any]:
    from delfx.metrics import Prediction, accuracy, gap
    results: dict[str, Any] = {}
    for mode in MODES:
        results[mode] = {}
        for kind in KINDS:
            if any(kind not in fold["modes"][mode] for fold in folds):
                continue  # e.g. calibration refused for this mode
            rows = [p for fold in folds for p in fold["modes"][mode][kind]["predictions"]]
            seconds = [s for fold in folds for s in fold["modes"][mode][kind]["seconds"]]
            preds = [Prediction(p["query"], p["label"], p["score"]) for p in rows]
            acc = accuracy(preds, truth)
            landmark_truth = {q: t for q, t in truth.items() if t}
            landmark_preds = [p for p in preds if p.query in landmark_truth]
            distractor_scores = [p.score for p in preds if not truth[p.query] and p.label]
            right_scores = [p.score for p in preds if truth[p.query] and p.label == truth[p.query]]
            results[mode][kind] = {
                "gap": gap(preds, truth),
                "gap_without_distractors": gap(landmark_preds, landmark_truth),
                **acc,
                "distractor_inliers": [p["inliers"] for p in rows if not truth[p["query"]]],
                "distractor_score_median": statistics.median(distractor_scores)
                if distractor_scores else None,
                "right_score_median": statistics.median(right_scores) if right_scores else None,
                "seconds_per_query": float(np.mean(seconds)),
            }
    return results


def parse_model(text: str) -> tuple[str, ExtractConfig, str]:
    return parse_model_entry(text, MAX_SIDE, "eval_recognition")


def default_models(quick: bool) -> str:
    """RootSIFT (the classical baseline), delf-hybrid and, with the torch extra, XFeat at
    1024 with its LighterGlue (--quick: RootSIFT only)."""
    if quick:
        return "rootsift"
    return "rootsift,delf-hybrid" + ("" if learned_unavailable() else ",xfeat@1024")


def evaluate_model(text: str, photos, folds, workdir: Path, epochs: int) -> dict[str, Any]:
    """Extract once, run every fold, score: one model's part of the report."""
    label, config, matcher = parse_model(text)
    extraction = extract(photos, config, workdir / "features")
    log.info("%s: extracted %d photos", label, extraction["ok"])
    fold_results = [run_fold(fold, workdir / "features", workdir, epochs, matcher)
                    for fold in folds]
    truth = {f"{fold['fold']}:{p.image_id}": p.landmark for fold in folds
             for p in fold["queries"]}
    return {"label": label, "config": config.to_dict(), "matcher": fold_results[0]["matcher"],
            "extraction": extraction, "results": score(fold_results, truth),
            "folds": fold_results}


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("protocol", report["protocol"]),
            ("queries", f"{report['landmark_queries']} landmark + {report['distractor_queries']} "
             f"non-landmark (pooled over {report['fold_count']} fold(s))")]
    for model in report["models"].values():
        rows += [(f"[{model['label']}] {name}", text) for name, text in model_rows(model)]
    rows.append(("reference", "MEASURED.md: RootSIFT + MNN + affine RANSAC leave-one-out GAP 0.52 "
                 "/ top-1 0.53 (all other photos as gallery, no distractor queries)"))
    rows.append(("load average", load_text(report["load_average"])))
    rows.append(("wall time", f"{report['seconds']:.0f} s"))
    return rows


def model_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    ex, res = report["extraction"], report["results"]
    rows = [("features", f"{ex['model_id']}: {ex['ok']} photos, {ex['features_per_image']:.0f} "
             f"features/photo, extraction {ex['seconds_per_image']:.2f} s/photo; matcher "
             f"{report['matcher']}")]
    for fold in report["folds"]:
        t = fold["train"]
        rows.append((f"fold {fold['fold']}", f"gallery {fold['gallery_images']}, queries "
                     f"{fold['queries']}; index {fold['index_s']:.1f} s; classifier training "
                     f"{fold['train_s']:.1f} s ({t['epochs_run']} epochs, best {t['best_epoch']}, "
                     f"{t['classes']} classes, {t['train_images']} images); calibration s: " +
                     ", ".join(f"{m} {fold['modes'][m]['calibration_s']:.1f}" if
                               fold["modes"][m].get("calibration_s") is not None else f"{m} refused"
                               for m in MODES)))
    rows.append(("mode / scores", "GAP   | GAP w/o distr. | top-1 | non-landmark rejected | "
                 "s/query | median score right / distractor"))
    for mode in MODES:
        for kind in KINDS:
            if kind not in res[mode]:
                rows.append((f"{mode} {kind}", "refused: no held-out images to calibrate the "
                             "classifier on (2-3 photos per landmark)"))
                continue
            r = res[mode][kind]
            fmt = (lambda v: "-" if v is None else f"{v:.3f}")
            rows.append((f"{mode} {kind}",
                         f"{r['gap']:.3f} | {r['gap_without_distractors']:.3f}          | "
                         f"{r['top1']:.3f} | {r['non_landmark_rejection']:.3f}                 | "
                         f"{r['seconds_per_query']:.3f}   | {fmt(r['right_score_median'])} / "
                         f"{fmt(r['distractor_score_median'])}"))
    inl = res["retrieval"]["raw"]["distractor_inliers"]
    if inl:
        rows.append(("distractor top inliers", f"retrieval: median {statistics.median(inl):.0f}, "
                     f"max {max(inl)}, >= 20: {sum(i >= 20 for i in inl)} of {len(inl)}"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 fold, 8 landmarks and 8 distractors (< 2 min)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--models", default=None,
                        help="comma-separated name[@long_side][:matcher], e.g. "
                             "'rootsift,xfeat@1024,xfeat@1024:mnn' (default: rootsift, "
                             "delf-hybrid and, with the torch extra, xfeat@1024; --quick: "
                             "rootsift)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep intermediate files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    start_all, load_before = time.perf_counter(), os.getloadavg()
    photos = load_photos(resolve_data_dir(args.data))
    if args.quick:
        photos = quick_subset(photos)
    folds = make_folds(photos)[:1 if args.quick else FOLDS]
    entries = [e for e in (args.models or default_models(args.quick)).split(",") if e.strip()]
    for entry in entries:
        parse_model(entry)  # every entry checked before the first extraction
    models = {}
    with tempfile.TemporaryDirectory(prefix="eval-recognition-") as tmp:
        for i, entry in enumerate(entries):
            workdir = (args.workdir or Path(tmp)) / f"model{i}"
            model = evaluate_model(entry, photos, folds, workdir, args.epochs)
            models[model["label"]] = model
    truth = {f"{fold['fold']}:{p.image_id}": p.landmark for fold in folds
             for p in fold["queries"]}
    protocol = (f"{len(folds)} fold(s); fold f: photo f (by file name) of each landmark is the "
                f"query (if the landmark has that many photos), its other photos the "
                f"gallery/training images; every non-landmark photo is a "
                f"query in every fold (distractor); long side {MAX_SIDE} unless the model "
                f"says; classifier validation_share 0 (1-2 training images for most classes), "
                f"{args.epochs} epochs, seed 0; calibration "
                f"leave-one-out on all gallery images; GAP pooled over folds")
    skipped = None if args.models or args.quick else learned_unavailable()
    report = {"protocol": protocol, "quick": args.quick, "models": models,
              "learned_models_skipped": skipped, "fold_count": len(folds),
              "landmark_queries": sum(1 for t in truth.values() if t),
              "distractor_queries": sum(1 for t in truth.values() if not t),
              "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
              "seconds": time.perf_counter() - start_all}
    summary = {**report, "models": {label: {**m, "folds": [
        {k: v for k, v in fr.items() if k != "modes"} | {"modes": {
            mode: {"calibration_s": fr["modes"][mode].get("calibration_s")} for mode in MODES}}
        for fr in m["folds"]]} for label, m in models.items()}}
    rows = table_rows(summary)
    if skipped:
        rows.insert(1, ("learned models", f"not run: {skipped}"))
    emit("eval_recognition" + (" (quick)" if args.quick else ""), report, rows, args.json)
    return report



if __name__ == "__main__":
    main()
