"""The benchmark suite: every stage, one command, results in one folder.

Each stage is one `benchmarks.<module>` run in a fresh process (so TensorFlow, Ray and memory
do not leak from one stage to the next, and each stage's peak memory is its own). A stage writes
`<name>.json` (its figures, the table it printed and the machine facts) and `<name>.log`; the
suite writes `suite.json` (what ran, how it ended, wall time and peak memory per stage) and
then the report (`report.md` and PNG plots, see benchmarks/report.py).

A failing stage is recorded with the tail of its log and the suite goes on; the exit status
is 1 when any stage failed. Stages that need the real photos of ../shared/data are skipped,
with the reason, when that folder is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PROJECT_ROOT, child_env, machine_facts, run_measured



@dataclass(frozen=True)
class Stage:
    """One benchmark stage.

    Attributes:
        name: key in the results (and file stem of its JSON, log and plots).
        module: `benchmarks.<module>` runs it.
        title: section title in the report.
        what: what it measures, one sentence for the report.
        quick: arguments of the quick run (CI), full: of the report run.
        needs_shared: reads the real photos of ../shared/data.
        notes: how to read the figures (facts that do not change from run to run).
    """

    name: str
    module: str
    title: str
    what: str
    quick: tuple[str, ...] = ("--quick",)
    full: tuple[str, ...] = ()
    needs_shared: bool = False
    notes: str = ""

    def argv(self, quick: bool) -> list[str]:
        return list(self.quick if quick else self.full)

    def command(self, quick: bool) -> str:
        return " ".join(["python -m benchmarks." + self.module, *self.argv(quick)])


STAGES: tuple[Stage, ...] = (
    Stage("store", "bench_store", "Feature store",
          "Sharded HDF5 against one .npz file per image: write, full scan, random access and "
          "padded (N, 150, 40) batches.", full=("--images", "100000"),
          notes="The .npz side runs on a subset (it costs one file open per image); ratios are per "
                "image."),
    Stage("extract", "bench_extract", "Extraction cost",
          "Seconds per 100 images per model and preset (reference: 5-10 s per 100 images for "
          "DELF at 128 px), bf16 against fp32, batched against the official signature called "
          "one image at a time.",
          notes="VGG16 to block4 has about 3x the FLOPs of DELF's ResNet50 to conv4 (the network "
                "the 5-10 s reference was measured with), so the built-in network starts ~3x "
                "behind the reference at 128 px; bf16 uses the CPU's AVX-512 BF16 units through "
                "oneDNN. RootSIFT runs no network."),
    Stage("scaling", "bench_scaling", "Extraction scaling",
          "Fresh `delfx extract` processes over growing image counts: time must grow linearly "
          "and peak memory must stay flat.",
          notes="The fitted start-up is interpreter, library and model loading; the slope is the "
                "marginal cost per image. Features stream to the shards, so peak memory should "
                "not grow with the number of images."),
    Stage("roofline", "bench_roofline", "Machine limit, bf16 and int8",
          "The backbone's achieved GFLOP/s against this machine's dense matmul rate measured in "
          "the same run, and what bf16 and int8 do to speed and to quality.",
          notes="Backbone FLOPs are counted as direct convolution; oneDNN may use faster "
                "algorithms (e.g. Winograd), so an effective rate above the matmul rate is "
                "possible. TensorFlow's int8 matmul does not reach the VNNI units; TFLite's int8 "
                "kernels (XNNPACK) do. Full-integer int8 quantises activations with one scale per "
                "tensor, which is what costs fidelity; dynamic-range int8 keeps float activations."),
    Stage("ray", "bench_ray", "The Ray job",
          "The real `delfx extract` job on a local Ray instance against the same job in-process "
          "and against a naive loop (per image: decode, signature call, one .npz): 1,000 images "
          "(the sample photos under distinct names), start-up timed apart, and the driver's own "
          "writing as a share of the run.",
          full=("--count", "1000", "--precision", "bfloat16", "--naive-images", "110"),
          notes="Ray's overhead is mostly each worker loading TensorFlow and the model (seconds "
                "per worker); it amortises over real datasets and buys retries, resumable shards "
                "and multi-node runs. On 2 cores per-level batching gains little over the naive "
                "loop."),
    Stage("verify", "bench_verify", "Geometric verification",
          "delfx's OpenCV RANSAC against scikit-image RANSAC on the same match sets: pairs per "
          "second and inlier recovery."),
    Stage("index", "bench_index", "FAISS index",
          "Build, search and memory of the FAISS index against exact search and scipy cKDTree, "
          "as the number of vectors grows.",
          full=("--sizes", "100000,1000000,10000000")),
    Stage("index_real", "eval_index_real", "FAISS on real descriptors",
          "Recall against exact search, queries/s against cKDTree and the end metric (votes, "
          "shortlist, GAP through search) per FAISS factory and nprobe, on >= 1e6 delf-hybrid "
          "descriptors of views (scales, crops, rotations) of real photos, queried with other "
          "photos of the same landmarks.",
          full=("--work", "bench-results/real-gallery"),
          notes="Without ../shared/data the full run falls back to sample-data (far below 1e6 "
                "vectors). GAP counts the landmark queries and the non-landmark ones (a wrong "
                "answer to those costs GAP); with ~20 landmark queries one query moves GAP by "
                "~0.05, so rows within that of each other are a tie."),
    Stage("query_scale", "eval_query_scale", "One query at gallery scale",
          "Seconds and peak memory of a whole query (k-NN votes, shortlist, MNN, RANSAC) at 10k "
          "and 100k gallery images, through a local-descriptor index and through a global "
          "shortlist read from the store, and the cost of a GLR-size run estimated from them.",
          full=("--work", "bench-results/real-gallery"),
          notes="The gallery grows by copies of the real one whose descriptors are turned by a "
                "random rotation (real statistics, matching nothing); the global descriptors are "
                "random (no trained global model ships), so the global path's GAP is "
                "meaningless here and only its cost counts."),
    Stage("query_job", "eval_query_job", "Search as a query job",
          "Queries/s of `delfx search --out` (a resumable query job) in process and on 1 and "
          "2 Ray workers over a real-descriptor gallery, the driver's own share of the run, "
          "and what each worker holds in memory with the index memory-mapped and read.",
          full=("--work", "bench-results/real-gallery"),
          notes="On this 2-core machine two workers share the two cores with the driver and "
                "Ray's own processes; the speed-up a cluster gives is bounded by the driver's "
                "recording share (each chunk's result written once)."),
    Stage("classify", "bench_classify", "Classifier throughput",
          "Training and inference of the bottleneck heads over stored features; batched against "
          "per-image inference."),
    Stage("local_features", "eval_local_features", "Local features on real photos",
          "Leave-one-out and held-out-landmark retrieval GAP, positive/negative inlier separation "
          "and planar homography errors of each local-feature model on ../shared/data: RootSIFT "
          "(the classical baseline), delf-hybrid, the untrained built-in DELF network and the "
          "learned models of the torch extra (XFeat, ALIKED, DISK) with mutual nearest "
          "neighbours and with their own LightGlue.",
          full=("--models", "rootsift pca40,delf-hybrid pca40,hed fast,1024 pca40,xfeat,aliked,"
                            "disk"),
          needs_shared=True,
          notes="Every pair is matched (mutual nearest neighbours, or the model's LightGlue) and "
                "verified with affine RANSAC (1% of the working image's long side for keypoints: "
                "8 px at 512, 16 px at 1024; 20 px for CNN cells); every other photo is the "
                "gallery and the non-landmark photos are distractors. Held-out: every other "
                "landmark only (the half train-delf never sees)."),
    Stage("local_features_trained", "eval_local_features", "Trained DELF attention on held-out landmarks",
          "`delfx train-delf` trains the attention head on every other landmark of landmarks-dev; "
          "every model is then evaluated on the other landmarks plus all non-landmark photos.",
          quick=("--quick", "--train-delf", "landmarks-half", "--train-epochs", "2",
                 "--models", "rootsift pca40,trained"),
          full=("--train-delf", "landmarks-half",
                "--models", "rootsift pca40,delf-hybrid pca40,hed fast,trained"),
          needs_shared=True),
    Stage("local_features_sample", "eval_local_features", "Local features on delfx sample-data",
          "The same measurement on generated sample data (synthetic views of package photos), "
          "with an attention head from `delfx train-delf` (what it was trained on: the train-delf row).",
          quick=("--quick", "--sample-data", "--train-delf", "sample-data", "--train-epochs", "2",
                 "--models", "rootsift pca40,trained"),
          full=("--sample-data", "--train-delf", "sample-data")),
    Stage("hybrid_recipe", "eval_hybrid_recipe", "delf-hybrid's recipe, ablated",
          "Each choice in how delf-hybrid builds its descriptor (final PCA, CNN scales and "
          "weights, whitening, SIFT's upscaling) and matches it (MNN, ratio test, both), composed "
          "from the same parts of each photo, on landmarks-dev.",
          needs_shared=True,
          notes="GAP is the mean over RANSAC match orders with its range: OpenCV's RANSAC draws "
                "its samples by position, so the order of the matches alone moves leave-one-out "
                "GAP by a few hundredths at 1,000 trials; rows compare at 10,000."),
    Stage("retrieval", "eval_retrieval", "Retrieval on real photos",
          "The delfx index + search pipeline (FAISS, voting, matcher + RANSAC) on the real "
          "photos, per feature model.",
          needs_shared=True),
    Stage("recognition", "eval_recognition", "Recognition on real photos",
          "3-fold recognition GAP and accuracy of retrieval, classifier and fused modes, per "
          "feature model (RootSIFT, delf-hybrid, XFeat with LighterGlue).",
          needs_shared=True),
    Stage("recognition_cli", "eval_classify", "Recognition through `delfx classify`",
          "`run_classify` (what the CLI calls) in retrieval mode on landmarks-dev with its "
          "non-landmark photos as distractors, leave-one-out and on held-out landmarks: the "
          "scoring delfx used before, each change of scoring and rejection alone and together, "
          "calibration, and the verification recipe, per feature model.",
          full=("--rows", "scoring,recipe,rank"),
          needs_shared=True,
          notes="Nothing is rejected by default (an answer ranked below the others never costs "
                "GAP), so the rejection column is non-zero only with --min-score; 'below every "
                "right answer' counts the non-landmark queries that cost no GAP. Rows of a "
                "model share their verifications (VerificationMemo): they differ in scoring "
                "only, and their seconds are not the cost of a fresh run."),
    Stage("global", "eval_global", "Global models (GeM) on real photos",
          "The reference study's systems side by side on the same folds: GeM-VGG16 and the DELF "
          "bottleneck as classifiers, local voting against the GeM shortlist + verification; "
          "training and inference throughput of every GeM model; extra storage per image.",
          needs_shared=True,
          notes="Without ImageNet ResNet50 weights (none install offline) gem-resnet50 and concat "
                "are measured for speed only, with random weights."),
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def shared_data_dir() -> Path:
    return Path(os.environ.get("DELFX_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def select_stages(names: list[str] | None) -> list[Stage]:
    if not names:
        return list(STAGES)
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_NAMES)}")
    return [s for s in STAGES if s.name in names]


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_stage(stage: Stage, quick: bool, out_dir: Path) -> dict[str, Any]:
    """Run one stage in a fresh interpreter; its figures land in out_dir/<name>.json."""
    if stage.needs_shared and not (shared_data_dir() / "landmarks-dev" / "labels.csv").is_file():
        return {"status": "skipped", "reason": f"needs the real photos of {shared_data_dir()} "
                                               f"(absent; set DELFX_SHARED_DATA)"}
    json_path, log_path = out_dir / f"{stage.name}.json", out_dir / f"{stage.name}.log"
    json_path.unlink(missing_ok=True)  # a stale file must never pass for this run's result
    cmd = [sys.executable, "-m", f"benchmarks.{stage.module}", *stage.argv(quick),
           "--json", str(json_path)]
    with open(log_path, "wb") as log:
        measured = run_measured(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                env=child_env())
    record = {"command": stage.command(quick), **measured}
    if measured["exit_code"] != 0 or not json_path.is_file():
        return {**record, "status": "failed", "reason": _log_tail(log_path)}
    return {**record, "status": "ok"}


def run_suite(stages: list[Stage], quick: bool, out_dir: Path) -> dict[str, Any]:
    """Run the stages in order, recording each as it ends (suite.json is rewritten each time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "full"
    suite = _previous_run(out_dir, mode) or {
        "mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_facts(), "stages": {}}
    for stage in stages:
        print(f"[bench] {stage.name}: {stage.command(quick)}", file=sys.stderr, flush=True)
        record = run_stage(stage, quick, out_dir)
        record["ran_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        suite["stages"][stage.name] = record
        took = f" in {record['wall_s']:.0f} s" if "wall_s" in record else ""
        print(f"[bench] {stage.name}: {record['status']}{took}", file=sys.stderr, flush=True)
        if record["status"] == "failed":
            print(record["reason"], file=sys.stderr, flush=True)
        elif record["status"] == "ok":
            _print_table(out_dir / f"{stage.name}.json", stage)
        (out_dir / "suite.json").write_text(json.dumps(suite, indent=2, sort_keys=True) + "\n")
    suite["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out_dir / "suite.json").write_text(json.dumps(suite, indent=2, sort_keys=True) + "\n")
    return suite


def _previous_run(out_dir: Path, mode: str) -> dict[str, Any] | None:
    """An earlier run into the same folder and mode: its other stages stay in the report.

    This is how one stage is re-run (`--stages index --out SAME`) without redoing the others;
    each stage keeps the time it ran at. A folder of the other mode is refused: quick and full
    figures must never mix in one report.
    """
    path = out_dir / "suite.json"
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    if previous.get("mode") != mode:
        raise SystemExit(f"{out_dir} holds a {previous.get('mode')} run; use another --out for a "
                         f"{mode} run")
    previous.pop("finished", None)
    return previous


def import_result(stage: Stage, source: Path, out_dir: Path, command: str, note: str
                  ) -> dict[str, Any]:
    """Adopt a stage's JSON that was produced outside the suite (e.g. by an issue's own run).

    The record says where it came from, with `note` (which code made it), so the report never
    passes it off as part of this run. A JSON without its table gets one rebuilt by the
    stage module's `table_for`, when the module has one.
    """
    import importlib
    data = json.loads(Path(source).read_text())
    if "table" not in data:
        module = importlib.import_module(f"benchmarks.{stage.module}")
        if not hasattr(module, "table_for"):
            raise SystemExit(f"{source} has no table and benchmarks.{stage.module} cannot rebuild one")
        data["table"] = [list(row) for row in module.table_for(data)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stage.name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    suite_path = out_dir / "suite.json"
    suite = json.loads(suite_path.read_text()) if suite_path.is_file() else {
        "mode": "full", "started": data.get("machine", {}).get("date", ""),
        "machine": data.get("machine", machine_facts()), "stages": {}}
    record = {"status": "ok", "command": command, "imported_from": str(source), "note": note,
              "ran_at": data.get("machine", {}).get("date", "unknown"),
              "wall_s": data.get("total_s") or data.get("seconds")}
    suite["stages"][stage.name] = record
    suite_path.write_text(json.dumps(suite, indent=2, sort_keys=True) + "\n")
    return record


def _print_table(json_path: Path, stage: Stage) -> None:
    """The stage's table on stdout (data), as it finishes."""
    table = json.loads(json_path.read_text()).get("table", [])
    print(f"\n## {stage.title}")
    width = max((len(k) for k, _ in table), default=0)
    for key, value in table:
        print(f"{key.ljust(width)}  {value}")
    sys.stdout.flush()
