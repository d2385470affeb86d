"""Recognition through `delfx classify`'s own code (`run_classify`, what the CLI calls) on the
real photos of landmarks-dev, with its non-landmark photos as distractors: how each way of
scoring and rejecting does.

Protocols (the gallery is labelled; a non-landmark photo has an empty landmark, so it is both a
query that should get no answer and a non-landmark gallery image for the others):

* leave-one-out: all 88 photos are the gallery and the queries, `--exclude-self` (each query
  against all other photos). Calibrated rows are fitted on these same answers (in-sample).
* held-out landmarks: `benchmarks.data.landmark_halves` keeps every other landmark, and all
  non-landmark photos, for evaluation: leave-one-out over that half only. Nothing is tuned on
  it; a calibrated row is fitted on the *other* half (leave-one-out there) and applied here.

Rows, per feature model (`--models name[@long_side][:matcher]`; default delf-hybrid at 512,
delfx's offline default before the learned models, and xfeat at 1024 with its LighterGlue, the
default with the torch extra): the scoring before this stage existed (best image's raw inliers,
non-landmark gallery images ignored), then each change alone, then together; classify's
defaults are the row DEFAULTS names. Every row is one
`run_classify` call in retrieval mode, scored with delfx's GAP and accuracy; a row's
verifications are shared with the others through one VerificationMemo per model (the same
pairs with the same settings give the same inliers), so rows differ only in scoring.

    python -m benchmarks.eval_classify                  # full
    python -m benchmarks.eval_classify --quick          # 8 landmarks, 8 distractors, rootsift
    python -m benchmarks.eval_classify --json out.json --models delf-hybrid,xfeat@1024

Figures are printed, never asserted. The shared data is read in place, never copied.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import emit, learned_unavailable, load_text
from benchmarks.data import (Photo, extract, landmark_halves, load_photos, parse_model_entry,
                             quick_subset, resolve_data_dir, write_labels, write_subset)

MAX_SIDE = 512
log = logging.getLogger("eval_classify")

# name -> run_classify settings. "before" is the rule delfx used until this stage existed.
VARIANTS: dict[str, dict[str, Any]] = {
    "before: best image, raw inliers": {"scoring": {"aggregate": 1, "non_landmark_penalty": False},
                                        "chance_pairs": 0},
    "+ non-landmark penalty": {"scoring": {"aggregate": 1, "non_landmark_penalty": True},
                               "chance_pairs": 0},
    "+ chance model": {"scoring": {"aggregate": 1, "non_landmark_penalty": False},
                       "chance_pairs": 200},
    "+ top-3 sum": {"scoring": {"aggregate": 3, "non_landmark_penalty": False},
                    "chance_pairs": 0},
    "penalty + chance": {"scoring": {"aggregate": 1, "non_landmark_penalty": True},
                         "chance_pairs": 200},
    "penalty + chance + top-3": {"scoring": {"aggregate": 3, "non_landmark_penalty": True},
                                 "chance_pairs": 200},
    "penalty + chance + top-3, max 3 per landmark": {
        "scoring": {"aggregate": 3, "non_landmark_penalty": True}, "chance_pairs": 200,
        "max_per_landmark": 3},
    "penalty + chance, --min-score 1 (no answer below chance)": {
        "scoring": {"aggregate": 1, "non_landmark_penalty": True}, "chance_pairs": 200,
        "min_score": 1.0},
}
DEFAULTS = "+ non-landmark penalty"  # classify's defaults
CALIBRATED = ("penalty + chance", "penalty + chance + top-3")
# The verification recipe, with penalty + chance scoring: each row changes one setting.
_PENALTY_CHANCE = {"scoring": {"aggregate": 1, "non_landmark_penalty": True}, "chance_pairs": 200}
RECIPE: dict[str, dict[str, Any]] = {
    "penalty + chance, RANSAC similarity": {**_PENALTY_CHANCE,
                                            "search_settings": {"ransac": "similarity"}},
    "penalty + chance, RANSAC homography": {**_PENALTY_CHANCE,
                                            "search_settings": {"ransac": "homography"}},
    "penalty + chance, RANSAC threshold x1.5": {**_PENALTY_CHANCE, "threshold_scale": 1.5},
    "penalty + chance, RANSAC threshold x0.67": {**_PENALTY_CHANCE, "threshold_scale": 2 / 3},
    "penalty + chance, shortlist 60": {**_PENALTY_CHANCE, "shortlist": 60},
}
# Chance as a gate only: answers above chance ranked by raw inliers, those below after them.
RANK: dict[str, dict[str, Any]] = {
    "chance, ranked by inliers": {"scoring": {"aggregate": 1, "non_landmark_penalty": False,
                                              "rank_by": "inliers"}, "chance_pairs": 200},
    "penalty + chance, ranked by inliers": {
        "scoring": {"aggregate": 1, "non_landmark_penalty": True, "rank_by": "inliers"},
        "chance_pairs": 200},
    "penalty + chance + top-3, ranked by inliers": {
        "scoring": {"aggregate": 3, "non_landmark_penalty": True, "rank_by": "inliers"},
        "chance_pairs": 200},
}
ROW_GROUPS = ("scoring", "recipe", "rank")


def default_models(quick: bool) -> str:
    if quick:
        return "rootsift"
    # delf-hybrid as shipped (PCA-40) and in its best measured form (208-d at 1024 px,
    # docs/MODELS.md "Which recipe"): the no-torch choices side by side
    return "delf-hybrid,delf-hybrid@1024/0" + ("" if learned_unavailable() else ",xfeat@1024")


def score(submission: Path, photos: Sequence[Photo]) -> dict[str, Any]:
    """delfx's own evaluation of a submission against the photos' labels."""
    from delfx.evaluate import evaluate, read_submission
    truth = {p.image_id: p.landmark for p in photos}
    report = evaluate(read_submission(submission), truth)
    return {k: report[k] for k in ("gap", "top1", "non_landmark_rejection",
                                   "non_landmark_harmless", "coverage", "landmark_queries",
                                   "non_landmark_queries")}


def protocol_sets(full_dir: Path, photos: Sequence[Photo], root: Path
                  ) -> dict[str, dict[str, Any]]:
    """Per protocol: gallery feature set, its index and labels (queries = the gallery)."""
    from delfx.index.faiss_index import build_index
    from delfx.store import FeatureSet
    train, evaluation = landmark_halves(photos)
    nonland = [p for p in photos if p.landmark is None]
    sets = {"leave-one-out": list(photos), "held-out landmarks": evaluation,
            "held-out: the other half (calibration only)": train + nonland}
    out = {}
    with FeatureSet(full_dir) as full:
        for i, (name, members) in enumerate(sets.items()):
            folder = root / f"protocol{i}"
            write_subset(full, [p.image_id for p in members], folder / "gallery")
            build_index(folder / "gallery", folder / "index")
            out[name] = {"gallery": folder / "gallery", "index": folder / "index",
                         "labels": write_labels(folder / "labels.csv", members),
                         "photos": members, "folder": folder}
    return out


def run_row(protocol: dict[str, Any], name: str, settings: dict[str, Any], matcher: str, memo,
            calibration: Path | None = None, calibrate: bool = False) -> dict[str, Any]:
    from delfx.index.geometry import default_threshold
    from delfx.recognition.classify import run_classify
    from delfx.store import FeatureSet
    protocol["rows"] = protocol.get("rows", 0) + 1
    out = protocol["folder"] / f"row{protocol['rows']}.csv"
    settings = dict(settings)
    search = {"matcher": matcher, **settings.pop("search_settings", {})}
    scale = settings.pop("threshold_scale", None)
    if scale is not None:
        with FeatureSet(protocol["gallery"]) as gallery:
            search["relative_threshold"] = scale * default_threshold(gallery.manifest.model_id)
    start = time.perf_counter()
    summary = run_classify(protocol["gallery"], protocol["labels"], protocol["gallery"], out,
                           mode="retrieval", index_dir=protocol["index"],
                           exclude_self=True, search_settings=search,
                           calibration_path=calibration, calibrate=calibrate, memo=memo,
                           **settings)
    seconds = time.perf_counter() - start
    return {**score(out, protocol["photos"]), "seconds": seconds,
            "answered": summary["answered"], "demoted": summary["demoted"],
            "scoring": summary["scoring"], "chance": summary["chance"]}


class _RecordCache:
    """Records read, and index votes taken, once per (feature set or index, query) for this
    process. The rows of a model differ in scoring only, and re-reading the same HDF5 records
    and re-searching the exact index for every query dominated their time (20-40 s a row).
    Checked reads happen the first time; the files do not change while the stage runs."""

    def __init__(self):
        import delfx.index.search as search
        import delfx.recognition.recognize as recognize
        from delfx.index.search import VerificationMemo
        from delfx.store import FeatureSet
        self.original_get, self.original_vote = FeatureSet.get, search.vote
        self.records: dict = {}
        self.votes: dict = {}

        def get(fs, key):
            cache_key = (str(fs.root), key)
            if cache_key not in self.records:
                self.records[cache_key] = self.original_get(fs, key)
            return self.records[cache_key]

        def vote(index, descriptors, config, exclude=frozenset()):
            folder = getattr(index, "folder", None)
            if folder is None:  # not a gallery index (e.g. --non-landmarks): not cached
                return self.original_vote(index, descriptors, config, exclude)
            digest = VerificationMemo.key(_Descriptors(descriptors))
            key = (str(folder), digest, config.k, config.max_distance, frozenset(exclude))
            if key not in self.votes:
                self.votes[key] = self.original_vote(index, descriptors, config, exclude)
            return dict(self.votes[key])

        FeatureSet.get = get
        search.vote = recognize.vote = vote

    def clear(self):
        self.records.clear()
        self.votes.clear()

    def close(self):
        import delfx.index.search as search
        import delfx.recognition.recognize as recognize
        from delfx.store import FeatureSet
        FeatureSet.get = self.original_get
        search.vote = recognize.vote = self.original_vote


class _Descriptors:
    """What VerificationMemo.key reads, for a bare descriptor array."""

    def __init__(self, descriptors):
        import numpy as np
        self.image_id, self.height, self.width = "", 0, 0
        self.num_features = len(descriptors)
        self.locations, self.descriptors = np.zeros(0), descriptors


def evaluate_model(entry: str, photos: Sequence[Photo], workdir: Path,
                   groups: Sequence[str] = ("scoring",)) -> dict[str, Any]:
    from delfx.index.search import VerificationMemo
    label, config, matcher = parse_model_entry(entry, MAX_SIDE, "eval_classify")
    extraction = extract(photos, config, workdir / "features")
    log.info("%s: extracted %d photos in %.0f s", label, extraction["ok"], extraction["seconds"])
    protocols = protocol_sets(workdir / "features", photos, workdir)
    memo = VerificationMemo(matches=50_000)  # RANSAC variants reuse the matcher's work
    rows: dict[str, dict[str, Any]] = {}
    for protocol_name in ("leave-one-out", "held-out landmarks"):
        protocol = protocols[protocol_name]
        rows[protocol_name] = {}
        baseline = {k: VARIANTS[k] for k in ("before: best image, raw inliers", DEFAULTS)}
        variants = {**(VARIANTS if "scoring" in groups else baseline),
                    **(RECIPE if "recipe" in groups else {}),
                    **(RANK if "rank" in groups else {})}
        for name, settings in variants.items():
            rows[protocol_name][name] = run_row(protocol, name, settings, matcher, memo)
            r = rows[protocol_name][name]
            log.info("%s | %s | %s: GAP %.3f top-1 %.3f rejected %.2f harmless %.2f (%.0f s)",
                     label, protocol_name, name, r["gap"], r["top1"],
                     r["non_landmark_rejection"], r["non_landmark_harmless"], r["seconds"])
        for name in CALIBRATED if "scoring" in groups else ():
            settings = VARIANTS[name]
            if protocol_name == "leave-one-out":
                row = run_row(protocol, name, settings, matcher, memo, calibrate=True)
                key = f"{name}, calibrated in-sample"
            else:
                file = workdir / f"calibration-{len(rows[protocol_name])}.json"
                run_row(protocols["held-out: the other half (calibration only)"], name, settings,
                        matcher, memo, calibration=file, calibrate=True)
                row = run_row(protocol, name, settings, matcher, memo, calibration=file)
                key = f"{name}, calibrated on the other half"
            rows[protocol_name][key] = row
            log.info("%s | %s | %s: GAP %.3f top-1 %.3f", label, protocol_name, key, row["gap"],
                     row["top1"])
    return {"label": label, "config": config.to_dict(), "matcher": matcher,
            "extraction": extraction, "rows": rows, "memo_hits": memo.hits}


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("protocols", report["protocol"])]
    for model in report["models"].values():
        ex = model["extraction"]
        out.append((f"[{model['label']}] features", f"{ex['model_id']}: {ex['ok']} photos, "
                    f"{ex['features_per_image']:.0f} features/photo, {ex['seconds_per_image']:.2f} "
                    f"s/photo; matcher {model['matcher']}"))
        for protocol, rows in model["rows"].items():
            out.append((f"[{model['label']}] {protocol}",
                        "GAP   | top-1 | non-landmarks rejected | ... or below every right answer "
                        "| answered | s"))
            for name, r in rows.items():
                out.append((f"  {name}", f"{r['gap']:.3f} | {r['top1']:.3f} | "
                            f"{r['non_landmark_rejection']:.2f}                   | "
                            f"{r['non_landmark_harmless']:.2f}                              | "
                            f"{r['answered']}/{r['coverage']['queries']} | {r['seconds']:.0f}"))
    out.append(("targets (issue 16)", "held-out landmarks: GAP >= 0.70 with >= 80% of non-landmark "
                "queries rejected or below every right answer; leave-one-out GAP >= 0.65"))
    out.append(("load average", load_text(report["load_average"])))
    out.append(("wall time", f"{report['seconds']:.0f} s"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 landmarks, 8 distractors, rootsift")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--models", default=None,
                        help="comma-separated name[@long_side][:matcher] (default: delf-hybrid, "
                             "delf-hybrid@1024/0 and, with the torch extra, xfeat@1024)")
    parser.add_argument("--rows", default="scoring",
                        help=f"row groups, comma-separated: {', '.join(ROW_GROUPS)} (scoring: "
                             f"the ways of scoring and rejecting; recipe: verification settings "
                             f"with the default scoring; rank: the chance model as a gate, "
                             f"answers above it ranked by raw inliers)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start, load_before = time.perf_counter(), os.getloadavg()
    photos = load_photos(resolve_data_dir(args.data))
    if args.quick:
        photos = quick_subset(photos)
    groups = [g.strip() for g in args.rows.split(",") if g.strip()]
    if not groups or set(groups) - set(ROW_GROUPS):
        raise SystemExit(f"eval_classify: --rows takes {', '.join(ROW_GROUPS)}")
    entries = [e for e in (args.models or default_models(args.quick)).split(",") if e.strip()]
    for entry in entries:
        parse_model_entry(entry, MAX_SIDE, "eval_classify")  # all checked before extracting
    models = {}
    cache = _RecordCache()
    with tempfile.TemporaryDirectory(prefix="eval-classify-") as tmp:
        for i, entry in enumerate(entries):
            cache.clear()
            model = evaluate_model(entry, photos, (args.workdir or Path(tmp)) / f"model{i}",
                                   groups)
            models[model["label"]] = model
    cache.close()
    train, evaluation = landmark_halves(photos)
    protocol = (f"{len(photos)} photos ({sum(1 for p in photos if p.landmark is None)} "
                f"non-landmark); leave-one-out over all; held-out landmarks: leave-one-out over "
                f"{len({p.landmark for p in evaluation if p.landmark})} landmarks "
                f"({sum(1 for p in evaluation if p.landmark)} photos) + the non-landmark photos; "
                f"`run_classify` retrieval mode, --exclude-self, shortlist 30, long side "
                f"{MAX_SIDE} unless the model says")
    skipped = None if args.models or args.quick else learned_unavailable()
    report = {"protocol": protocol, "quick": args.quick, "models": models,
              "learned_models_skipped": skipped,
              "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
              "seconds": time.perf_counter() - start}
    rows = table_rows(report)
    if skipped:
        rows.insert(1, ("learned models", f"not run: {skipped}"))
    emit("eval_classify" + (" (quick)" if args.quick else ""), report, rows, args.json)
    return report


if __name__ == "__main__":
    main()
