"""Render a results folder of `python -m benchmarks` as Markdown with PNG plots.

The report opens with the machine facts and a side-by-side table (every comparison as a ratio
measured within one run), then one section per stage: the command, what it measures, the
stage's own table, its plots, and the stage's wall time and peak memory.

The headline lines and plots read the stages' JSON keys. A key that moved is reported as a
problem (in the report and in the return value, which makes `python -m benchmarks` exit 1), so
the CI run of the quick suite catches a report that silently lost a figure.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

Headline = list[tuple[str, str]]


# --------------------------------------------------------------------------------------------
# Side-by-side headline figures, per stage
# --------------------------------------------------------------------------------------------

def _faster(ratio: float) -> str:
    """A time ratio (other / ours) in words that stay true when it is below 1."""
    return f"x{ratio:,.2f} faster" if ratio >= 1 else f"x{1 / ratio:,.2f} slower"


def _store(d: dict) -> Headline:
    r, s = d["ratios"], d["store"]
    return [("feature store: full scan, sharded HDF5 vs one .npz per image",
             f"{_faster(r['scan_per_image_npz_over_store'])} ({s['scan_images_per_s']:,.0f} images/s)"),
            ("feature store: padded (N,150,40) batches vs .npz",
             _faster(r['padded_per_image_npz_over_store']))]


def _extract(d: dict) -> Headline:
    rows = {(r["model"], r["preset"], tuple(sorted(r["overrides"].items()))): r for r in d["rows"]}
    seed = rows[("delf-vgg16", "seed128", ())]
    bf16 = rows[("delf-vgg16", "seed128", (("precision", "bfloat16"),))]
    root = rows[("rootsift", "seed128", ())]
    hybrid = rows.get(("delf-hybrid", "seed128", ()))
    b = d["batched_vs_signature"]
    out = [("extraction at seed128 (reference 5-10 s/100 images)",
            f"delf-vgg16 {seed['s_per_100']:.1f} s/100 images (bf16 {bf16['s_per_100']:.1f}); "
            + (f"delf-hybrid {hybrid['s_per_100']:.1f}; " if hybrid else "")
            + f"rootsift {root['s_per_100']:.1f}"),
           ("extraction: batched delfx vs official signature one image at a time",
            f"batched {_faster(b['speedup'])}")]
    # DELF's own architecture (random weights) per precision, since delfx 0.4
    resnet = {dict(r["overrides"]).get("precision", "float32"): r for r in d["rows"]
              if r["model"] == "delf-resnet50" and r["preset"] == "seed128"}
    if resnet:
        out.insert(1, ("DELF's ResNet50 at seed128 (random weights, speed only)", "; ".join(
            f"{p} {r['s_per_100']:.1f} s/100 images" for p, r in resnet.items())))
    return out


def _scaling(d: dict) -> Headline:
    out = []
    for m in d["models"]:
        precision = m.get("precision", "float32")
        name = f"{m['model']} {m['preset']}" + (f" {precision}" if precision != "float32" else "")
        out.append((f"scaling, {name}: time linear in images, memory flat",
                    f"R^2 {m['time_fit']['r2']:.3f}, {m['s_per_100_marginal']:.1f} s/100 marginal "
                    f"+ {m['startup_s']:.1f} s start-up; peak RSS max/min "
                    f"{m['rss_max_over_min']:.2f}"))
    return out


def _roofline(d: dict) -> Headline:
    q = d["bf16_quality"]
    share = d["share_of_matmul"]
    return [("backbone effective GFLOP/s vs this machine's matmul (fp32 / bf16)",
             f"{100 * share['float32']:.0f}% / {100 * share['bfloat16']:.0f}%"),
            ("bf16 vs fp32: extraction speed, correct inliers",
             f"bf16 {_faster(q['speedup_bf16'])}, x{q['correct_inliers_ratio_bf16']:.2f} correct inliers")]


def _ray(d: dict) -> Headline:
    r = d["ratios"]
    out = [("Ray job vs the same job in-process (Ray start-up excluded)",
            f"Ray {_faster(1 / r['ray_over_in_process'])}")]
    if "ray_over_in_process_after_startup" in r:  # since delfx 0.4
        ray = d["ray"]
        out.append((f"Ray vs in-process after all start-up ({d['images']} images)",
                    f"ratio {r['ray_over_in_process_after_startup']:.3f} (Ray "
                    f"{ray['s_per_100_after_startup']:.1f} s/100 images); start-up Ray "
                    f"{ray['start_s']:.1f} s + workers {ray['workers_start_s']:.1f} s; driver "
                    f"writing {100 * ray['writer_share']:.2f}% of the run"))
    if r.get("naive_over_ray") is not None:
        out.append(("Ray job vs naive per-image loop (signature call, one .npz per image)",
                    f"Ray {_faster(r['naive_over_ray'])}"))
    return out


def _verify(d: dict) -> Headline:
    methods = d["methods"]
    ours = methods["delfx verify_pair affine"]
    theirs = next(v for k, v in methods.items() if k.startswith("skimage"))
    return [("geometric verification: delfx (OpenCV) vs scikit-image RANSAC",
             f"delfx {_faster(theirs['ms_per_pair'] / ours['ms_per_pair'])} "
             f"({ours['ms_per_pair']:.3f} ms/pair)")]


def _index(d: dict) -> Headline:
    out = []
    for size, s in sorted(d["sizes"].items(), key=lambda kv: int(kv[0])):
        q16 = s["ivfpq"]["nprobe"]["16"]
        text = f"{q16['ms_per_1000_queries']:.0f} ms/1000 queries, recall@1 {q16['recall_at_1']:.3f}"
        ratio = s.get("ratios", {}).get("kdtree_w1_query_over_ivfpq_nprobe16")
        if ratio is not None:
            text += f"; {_faster(ratio)} than cKDTree"
        out.append((f"FAISS {s['ivfpq_factory']} nprobe 16 over {int(size):,} synthetic vectors",
                    text))
    return out


def _index_real(d: dict) -> Headline:
    p, rows = d["params"], d["rows"]
    flat = rows["Flat"]
    out = [(f"real descriptors, {p['num_vectors']:,} vectors: exact (Flat)",
            f"GAP {flat['gap']:.3f} through search, {flat['queries_per_s']:,.0f} queries/s")]
    chosen = d.get("chosen") or {}
    # one row per factory at nprobe 32 (the default), plus auto's pick; JSON keys are sorted
    # as text, so order by factory then nprobe
    for name, r in sorted(rows.items(), key=lambda kv: (kv[1]["factory"], kv[1]["nprobe"] or 0)):
        if name == "Flat" or (r["nprobe"] != 32 and name != chosen.get("row")):
            continue
        out.append((f"real descriptors: {name}" + (" (delfx's auto)" if name == chosen.get("row")
                                                    else ""),
                    f"recall@1 {r['recall_at_1']:.3f}, recall@10 {r['recall_at_10']:.3f}, GAP "
                    f"{r['gap']:.3f}, {r['queries_per_s']:,.0f} q/s, {_faster(r['speedup_vs_kdtree'])} "
                    f"than cKDTree"))
    return out


def _query_job(d: dict) -> Headline:
    runs = d["runs"]
    out = [(f"search job, {name}", f"{r['queries_per_s']:.2f} queries/s ({r['workers']} "
                                   f"worker(s), x{r['speedup_vs_ray_1']:.2f} one Ray worker)")
           for name, r in runs.items()]
    mem = d["memory"]
    out.append(("worker memory, 2 workers, index memory-mapped / read",
                f"PSS {mem['mmap']['pss_total_bytes'] / 2**20:.0f} / "
                f"{mem['read']['pss_total_bytes'] / 2**20:.0f} MiB together (index file "
                f"{mem['index_file_bytes'] / 2**20:.0f} MiB)"))
    return out


def _query_scale(d: dict) -> Headline:
    out = []
    what = {"local": "k-NN votes + shortlist + MNN + RANSAC",
            "global": "global shortlist + MNN + RANSAC, synthetic global descriptors"}
    for images, r in sorted(d["rows"].items(), key=lambda kv: int(kv[0])):
        for path in ("local", "global"):
            if r.get(path):
                index = f" over {r['factory']}" if path == "local" and r.get("factory") else ""
                out.append((f"one query at {int(images):,} gallery images, {path} path",
                            f"{r[path]['s_per_query_mean']:.3f} s ({what[path]}{index}), peak "
                            f"RSS {r[path]['peak_rss_bytes'] / 2**30:.2f} GiB"))
    g = d["glr"]
    out.append(("GLR-size run (117,703 queries, 4.1M images), global path",
                f"~{g['machine_hours']:,.0f} machine-hours on this kind of machine, global search "
                f"batched, as search does it" + (
                    f" (~{g['machine_hours_one_at_a_time']:,.0f} asked one query at a time)"
                    if "machine_hours_one_at_a_time" in g else "")))
    return out


def _classify(d: dict) -> Headline:
    return [(f"classifier ({h['head']} head): batched vs per-image inference",
             f"batched {_faster(h['batched_over_naive'])}; training {h['train_samples_per_s']:,.0f} "
             f"samples/s") for h in d["heads"]]


def _local_features(d: dict) -> Headline:
    where = d.get("evaluation_photos", "landmarks-dev")
    return [(f"{where}, leave-one-out: {m['label']}",
             f"GAP {m['retrieval']['gap']:.3f}, top-1 {m['retrieval']['top1']:.3f}, "
             f"pair AUC {m['separation']['auc']:.3f}"
             + (f"; held-out landmarks GAP {m['held_out']['gap']:.3f}" if m.get("held_out") else "")
             + (f"; {m['extract_s_per_image'] * 100:.0f} s/100 images, "
                f"{m['verification_ms_per_pair']:.0f} ms/pair ({m['matcher']})"
                if "verification_ms_per_pair" in m else ""))
            for m in d["models"]]


def _retrieval(d: dict) -> Headline:
    # models: label -> result (a dict keyed by label, unlike eval_local_features' list)
    return [(f"landmarks-dev, index + search: {label}",
             f"GAP {m['indexed']['gap']:.3f}, top-1 {m['indexed']['top1']:.3f} "
             f"(every pair verified: GAP {m['exhaustive']['gap']:.3f})")
            for label, m in d["models"].items()]


def _recognition(d: dict) -> Headline:
    # one model per report before delfx 0.3 ("results"), several since ("models")
    models = d.get("models") or {"rootsift": {"results": d["results"]}}
    return [(f"recognition: {label} {mode} ({kind})",
             f"GAP {r['gap']:.3f}, top-1 {r['top1']:.3f}")
            for label, m in models.items() for mode, kinds in m["results"].items()
            for kind, r in kinds.items()]


def _recognition_cli(d: dict) -> Headline:
    return [(f"classify, {protocol}: {label}, {name}",
             f"GAP {r['gap']:.3f}, top-1 {r['top1']:.3f}, non-landmarks below every right "
             f"answer {r['non_landmark_harmless']:.2f}")
            for label, m in d["models"].items() for protocol, rows in m["rows"].items()
            for name, r in rows.items()
            if name.startswith(("before", "+ non-landmark penalty", "penalty + chance, --min"))]


def _hybrid_recipe(d: dict) -> Headline:
    def spread(r: dict, key: str) -> str:
        low, high = r[key + "_range"]
        return f"{r[key]:.3f}" + (f" ({low:.3f}-{high:.3f})" if len(r["orders"]) > 1 else "")
    return [(f"{r['max_side']} px, SIFT {r['sift']}: {r['recipe']}",
             f"LOO GAP {spread(r, 'loo_gap')}"
             + (f", held-out GAP {spread(r, 'held_out_gap')}" if "held_out_gap" in r else "")
             + f"; {r['verification_ms_per_pair']:.1f} ms/pair")
            for r in d["rows"] if r["matcher"] == "mnn" and r["ransac_trials"] >= 10_000]


def _global(d: dict) -> Headline:
    out = []
    for ds in d["datasets"]:
        for system, r in ds["results"].items():
            per_query = r.get("seconds_per_query")
            out.append((f"{ds['dataset']}: {system}", f"GAP {r['gap']:.3f}, top-1 {r['top1']:.3f}"
                        + (f", {per_query:.2f} s/query" if per_query is not None else "")))
    for name, m in d.get("throughput", {}).get("models", {}).items():
        out.append((f"{name} throughput (training / inference)",
                    f"{m['train_images_per_s']:.1f} / {m['inference_images_per_s']:.1f} images/s"))
    return out


HEADLINES: dict[str, Callable[[dict], Headline]] = {
    "store": _store, "extract": _extract, "scaling": _scaling, "roofline": _roofline,
    "ray": _ray, "verify": _verify, "index": _index, "classify": _classify,
    "local_features": _local_features, "local_features_trained": _local_features,
    "local_features_sample": _local_features, "retrieval": _retrieval,
    "recognition": _recognition, "recognition_cli": _recognition_cli,
    "hybrid_recipe": _hybrid_recipe, "global": _global, "index_real": _index_real,
    "query_scale": _query_scale, "query_job": _query_job}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _barh(labels: list[str], values: list[float], xlabel: str, title: str, path: Path,
          band: tuple[float, float] | None = None, log_scale: bool = False,
          band_label: str = "reference", spread: list[tuple[float, float]] | None = None
          ) -> Path:
    """Horizontal bars; `spread`: (min, max) per bar, drawn as a whisker; `band`: a shaded
    range named by `band_label` in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.4))
    ax.barh(range(len(values)), values, color="#4878a8")
    if spread is not None:
        low = [max(v - lo, 0) for v, (lo, _) in zip(values, spread)]
        high = [max(hi - v, 0) for v, (_, hi) in zip(values, spread)]
        ax.errorbar(values, range(len(values)), xerr=[low, high], fmt="none", ecolor="black",
                    capsize=3, linewidth=1, label="min-max of the repeats")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    if band is not None:
        ax.axvspan(*band, color="#f0b040", alpha=0.3, label=band_label)
    if band is not None or spread is not None:
        ax.legend(loc="lower right", fontsize=8)
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def _plot_extract(d: dict, out: Path) -> list[Path]:
    rows = d["rows"]
    labels = [f"{r['model']} {r['preset']}" + "".join(f" {v}" for v in r["overrides"].values())
              for r in rows]
    spread = ([(r["s_per_100_min"], r["s_per_100_max"]) for r in rows]
              if all("s_per_100_min" in r for r in rows) else None)
    return [_barh(labels, [r["s_per_100"] for r in rows],
                  "seconds per 100 images, in process, model loaded (log)",
                  "Extraction cost per model and preset", out / "extract.png", band=(5, 10),
                  log_scale=True, spread=spread,
                  band_label="the brief's reference: DELF, 5-10 s per 100 at 128 px")]


def _plot_scaling(d: dict, out: Path) -> list[Path]:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in d["models"]:
        n = [p["images"] for p in m["points"]]
        precision = m.get("precision", "float32")
        label = f"{m['model']} {m['preset']}" + (f" {precision}" if precision != "float32" else "")
        left.plot(n, [p["wall_s"] for p in m["points"]], "o", label=label)
        fit = m["time_fit"]
        left.plot(n, [fit["intercept"] + fit["slope"] * x for x in n], "--", color="grey")
        right.plot(n, [p["peak_rss_bytes"] / 2**20 for p in m["points"]], "o-", label=label)
    left.set(xlabel="images", ylabel="wall time (s)", title="Extraction time vs images")
    right.set(xlabel="images", ylabel="peak RSS (MiB)", title="Extraction memory vs images")
    right.set_ylim(bottom=0)
    left.legend()
    right.legend()
    return [_save(fig, out / "scaling.png")]


def _plot_roofline(d: dict, out: Path) -> list[Path]:
    labels, values = [], []
    for p in ("float32", "bfloat16", "int8"):
        if "gflops" in d["matmul"][p]:
            labels.append(f"matmul {p}")
            values.append(d["matmul"][p]["gflops"])
    for p, b in d["backbone"].items():
        labels.append(f"VGG16 backbone {p}")
        values.append(b["gflops"])
    return [_barh(labels, values, "GFLOP/s (GOP/s for int8)",
                  "Achieved rate vs the machine's matmul", out / "roofline.png")]


def _plot_index(d: dict, out: Path) -> list[Path]:
    plt = _pyplot()
    sizes = sorted(d["sizes"], key=int)
    n = [int(s) for s in sizes]
    fig, (left, right, memory) = plt.subplots(1, 3, figsize=(14, 3.8))
    # the saved index is what a search holds; the benchmark process also holds the raw vectors
    # it generated (4 bytes x dim each), so its RSS is drawn apart, as what it is
    memory.loglog(n, [d["sizes"][s]["ivfpq"]["bytes"] / 2**20 for s in sizes], "o-",
                  label="the IVF-PQ index (saved bytes)")
    memory.loglog(n, [d["sizes"][s]["memory_peak"] / 2**20 for s in sizes], "s--", alpha=0.6,
                  label="benchmark process peak RSS\n(incl. the raw vectors)")
    memory.set(xlabel="vectors", ylabel="MiB", title="Index size vs vectors")
    memory.legend(fontsize=8)
    build = [d["sizes"][s]["ivfpq"]["train_s"] + d["sizes"][s]["ivfpq"]["add_s"] for s in sizes]
    left.loglog(n, build, "o-", label="IVF-PQ train + add")
    kd = [(int(s), d["sizes"][s]["kdtree"]["build_s"]) for s in sizes if d["sizes"][s].get("kdtree")]
    if kd:
        left.loglog(*zip(*kd), "s--", label="cKDTree build")
    left.set(xlabel="vectors", ylabel="seconds", title="Index build vs vectors")
    for nprobe in ("8", "16", "32"):
        right.loglog(n, [d["sizes"][s]["ivfpq"]["nprobe"][nprobe]["ms_per_1000_queries"]
                         for s in sizes], "o-", label=f"IVF-PQ nprobe {nprobe}")
    flat = [(int(s), d["sizes"][s]["flat"]["search"]["ms_per_1000_queries"])
            for s in sizes if d["sizes"][s].get("flat")]
    if flat:
        right.loglog(*zip(*flat), "^--", label="exact (Flat)")
    kq = [(int(s), d["sizes"][s]["kdtree"]["ms_per_1000_queries_workers1"])
          for s in sizes if d["sizes"][s].get("kdtree")]
    if kq:
        right.loglog(*zip(*kq), "s--", label="cKDTree")
    right.set(xlabel="vectors", ylabel="ms per 1000 queries (k=10)", title="Search vs vectors")
    left.legend()
    right.legend(fontsize=8)
    return [_save(fig, out / "index.png")]


def _plot_index_real(d: dict, out: Path) -> list[Path]:
    """Recall@1 and GAP against queries/s, one line per factory over its nprobe values."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    by_factory: dict[str, list[dict]] = {}
    for r in d["rows"].values():
        by_factory.setdefault(r["factory"], []).append(r)
    for factory, rows in by_factory.items():
        rows = sorted(rows, key=lambda r: r["nprobe"] or 0)
        qps = [r["queries_per_s"] for r in rows]
        if factory == "Flat":
            left.axhline(1.0, color="grey", ls=":", label="exact (Flat)")
            right.axhline(rows[0]["gap"], color="grey", ls=":", label="exact (Flat)")
            continue
        left.semilogx(qps, [r["recall_at_1"] for r in rows], "o-", label=factory)
        right.semilogx(qps, [r["gap"] for r in rows], "o-", label=factory)
    chosen = d["rows"].get((d.get("chosen") or {}).get("row", ""))
    if chosen is not None and chosen["factory"] != "Flat":
        left.plot(chosen["queries_per_s"], chosen["recall_at_1"], "k*", ms=14, zorder=5,
                  label=f"default ({chosen['factory']}, nprobe {chosen['nprobe']})")
        right.plot(chosen["queries_per_s"], chosen["gap"], "k*", ms=14, zorder=5)
    n = d["params"]["landmark_queries"]
    left.set(xlabel="queries/s (k=10; nprobe grows to the left)", ylabel="recall@1 vs exact",
             title=f"{d['params']['num_vectors']:,} real descriptors")
    right.set(xlabel="queries/s", ylabel="GAP through search",
              title=f"End metric ({n} landmark queries: one is 1/{n})")
    left.legend(fontsize=7)
    return [_save(fig, out / "index_real.png")]


def _plot_query_scale(d: dict, out: Path) -> list[Path]:
    labels, values = [], []
    for images, r in sorted(d["rows"].items(), key=lambda kv: int(kv[0])):
        for path in ("local", "global"):
            if r.get(path):
                labels.append(f"{int(images):,} images, {path} ({r[path]['queries']} queries)")
                values.append(r[path]["s_per_query_mean"])
    return [_barh(labels, values, "seconds per query (mean)",
                  "One query at gallery scale (global path: synthetic global descriptors)",
                  out / "query_scale.png")]


def _plot_store(d: dict, out: Path) -> list[Path]:
    s, n = d["store"], d["naive_npz"]
    ratios = d["ratios"]
    labels = ["HDF5 full scan", ".npz full scan", "HDF5 padded batches", ".npz padded"]
    scan_npz = s["scan_images_per_s"] / ratios["scan_per_image_npz_over_store"]
    padded_store = d["params"]["images"] / s["padded_all_batch256"]["median_s"]
    padded_npz = padded_store / ratios["padded_per_image_npz_over_store"]
    del n
    return [_barh(labels, [s["scan_images_per_s"], scan_npz, padded_store, padded_npz],
                  "images per second", "Feature store throughput", out / "store.png")]


def _plot_classify(d: dict, out: Path) -> list[Path]:
    labels, values = [], []
    for h in d["heads"]:
        for key, name in (("train_samples_per_s", "training"),
                          ("from_store_images_per_s", "inference from store"),
                          ("batched_images_per_s", "inference batched"),
                          ("naive_images_per_s", "inference per image")):
            labels.append(f"{h['head']}: {name}")
            values.append(h[key])
    return [_barh(labels, values, "images per second", "Classifier throughput",
                  out / "classify.png")]


def _plot_gap(headline: Headline, name: str, title: str, out: Path) -> list[Path]:
    labels, values = [], []
    for label, text in headline:
        labels.append(label.split(": ", 1)[-1] if ": " in label else label)
        values.append(float(text.split("GAP ", 1)[1].split(",")[0].split(" ")[0]))
    return [_barh(labels, values, "GAP", title, out / f"{name}.png")]


PLOTS: dict[str, Callable[[dict, Path], list[Path]]] = {
    "extract": _plot_extract, "scaling": _plot_scaling, "roofline": _plot_roofline,
    "index": _plot_index, "store": _plot_store, "classify": _plot_classify,
    "index_real": _plot_index_real, "query_scale": _plot_query_scale,
    "local_features": lambda d, out: _plot_gap(_local_features(d), "local_features",
                                               "Local features on real photos (leave-one-out)", out),
    "local_features_trained": lambda d, out: _plot_gap(
        _local_features(d), "local_features_trained", "Held-out landmarks (leave-one-out)", out),
    "local_features_sample": lambda d, out: _plot_gap(
        _local_features(d), "local_features_sample", "delfx sample-data (leave-one-out)", out),
    "recognition": lambda d, out: _plot_gap(_recognition(d), "recognition",
                                            "Recognition GAP per mode (real photos)", out),
    "recognition_cli": lambda d, out: _plot_gap(_recognition_cli(d), "recognition_cli",
                                                "delfx classify, before and now (real photos)",
                                                out),
    "hybrid_recipe": lambda d, out: _plot_gap(_hybrid_recipe(d), "hybrid_recipe",
                                              "delf-hybrid recipes, LOO GAP (real photos)", out),
    "global": lambda d, out: _plot_gap([h for h in _global(d) if h[0].startswith("landmarks-dev")],
                                       "global", "Global vs local systems, GAP (real photos)", out),
}


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[tuple[str, str]] | list[list[str]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in rows]
    return lines


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(machine.get("versions", {}).items()))
    return _md_table([("CPU", f"{machine.get('cpu')} ({machine.get('cores')} cores)"),
                      ("memory", f"{machine.get('memory_gib')} GiB"),
                      ("GPU used", "yes" if machine.get("gpu") else "no (none present)"),
                      ("platform", machine.get("platform", "")),
                      ("load average at start", str(machine.get("load_average_1m"))),
                      ("libraries", versions)], ("machine", ""))


def render(results: Path) -> tuple[str, list[Path], list[str]]:
    """(markdown, plot files, problems) of a results folder."""
    from benchmarks.suite import STAGES
    suite = json.loads((results / "suite.json").read_text())
    problems: list[str] = []
    headlines: list[tuple[str, str]] = []
    sections: list[str] = []
    plots: list[Path] = []
    for stage in STAGES:
        record = suite["stages"].get(stage.name)
        if record is None:
            continue
        sections += ["", f"## {stage.title} — `{record.get('command', stage.command(suite['mode'] == 'quick'))}`",
                     "", stage.what + (" " + stage.notes if stage.notes else ""), ""]
        if record["status"] != "ok":
            reason = record.get("reason", "").strip().splitlines()
            sections.append(f"**{record['status']}**: " + _md_escape(reason[-1] if reason else ""))
            if record["status"] == "failed":
                problems.append(f"{stage.name}: failed")
            continue
        try:
            data = json.loads((results / f"{stage.name}.json").read_text())
        except (OSError, ValueError) as exc:  # e.g. the stage is being re-run right now
            sections.append(f"**results unreadable**: {_md_escape(str(exc))}")
            problems.append(f"{stage.name}: results unreadable ({type(exc).__name__})")
            continue
        try:
            headlines += HEADLINES[stage.name](data)
        except (KeyError, TypeError, ValueError, StopIteration, IndexError) as exc:
            problems.append(f"{stage.name}: headline figures missing ({type(exc).__name__}: {exc})")
        sections += _md_table([tuple(row) for row in data.get("table", [])], ("figure", "value"))
        if stage.name in PLOTS:
            try:
                for path in PLOTS[stage.name](data, results):
                    plots.append(path)
                    sections += ["", f"![{stage.title}]({path.name})"]
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                problems.append(f"{stage.name}: plot failed ({type(exc).__name__}: {exc})")
        if record.get("imported_from"):
            # the file's name only: a folder of the machine that ran it means nothing to a reader
            took = f"took {record['wall_s']:.0f} s and " if record.get("wall_s") else ""
            sections += ["", f"Not run by this suite: imported from its result file "
                             f"`{Path(record['imported_from']).name}` ({record.get('note', '')}); "
                             f"that run {took}ended {record.get('ran_at')}."]
        else:
            sections += ["", f"Stage wall time {record['wall_s']:.0f} s, peak memory "
                             f"{record['peak_rss_bytes'] / 2**20:,.0f} MiB (its own process); ran "
                             f"{record.get('ran_at', suite['started'])}."]
    when = suite.get("finished") or suite.get("started")
    lines = [f"# delfx benchmarks — {when.split(' ')[0]}", "",
             f"Produced by `python -m benchmarks{' --quick' if suite['mode'] == 'quick' else ''}` "
             f"({suite['mode']} sizes), started {suite['started']}, finished "
             f"{suite.get('finished', '(unfinished)')}. Every ratio below was measured side by side "
             f"in the same run; absolute times depend on what else the machine was doing "
             f"(load average recorded per stage in its table or JSON).", ""]
    lines += _machine_lines(suite["machine"])
    lines += ["", "## Side by side", ""] + _md_table(headlines, ("comparison", "figure"))
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    lines += sections
    return "\n".join(lines) + "\n", plots, problems


def write_report(results: Path, markdown: Path | None = None) -> Path:
    """Write results/report.md (and a copy at `markdown`, with its plots beside it).

    Returns the report path. Problems are logged and listed in the report, and saved for
    `report_problems(results)`, which callers that must fail on them read.
    """
    text, plots, problems = render(results)
    for problem in problems:
        log.warning("benchmark report: %s", problem)
    path = results / "report.md"
    path.write_text(text)
    (results / "report-problems.json").write_text(json.dumps(problems, indent=2) + "\n")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        plot_dir = markdown.parent / (markdown.stem + "-plots")
        plot_dir.mkdir(exist_ok=True)
        for p in plots:
            shutil.copy2(p, plot_dir / p.name)
        rel = plot_dir.name
        out = text
        notes = markdown.parent / "benchmark-notes.md"
        if notes.is_file():  # the analysis behind the figures lives beside the docs copy
            out = out.replace("\n## Side by side\n", "\nHow these figures came about, run by run, and "
                              "the design choices they settled: [benchmark-notes.md]"
                              "(benchmark-notes.md).\n\n## Side by side\n", 1)
        for p in plots:
            out = out.replace(f"]({p.name})", f"]({rel}/{p.name})")
        markdown.write_text(out)
        # Keep the figures' source next to the report so any number in it can be traced.
        data_dir = markdown.parent / (markdown.stem + "-results")
        data_dir.mkdir(exist_ok=True)
        for f in results.glob("*.json"):
            shutil.copy2(f, data_dir / f.name)
        return markdown
    return path


def report_problems(results: Path) -> list[str]:
    path = results / "report-problems.json"
    return json.loads(path.read_text()) if path.is_file() else []
