"""How extraction cost grows with work: time must grow linearly, memory must stay flat.

Each point is a fresh `delfx extract --no-ray` process over N images (the real pipeline: decode,
extract, sharded HDF5 writes, manifest), so its wall time and peak resident memory belong to that
N alone. A least-squares line t = start-up + N x per-image cost is fitted; R^2 near 1 means
linear. Peak memory is fitted the same way: the slope (bytes per extra image) should be ~0
because features stream to the shards instead of piling up in memory.

    python -m benchmarks.bench_scaling            # report figures
    python -m benchmarks.bench_scaling --quick    # CI: rootsift on 16-64 images
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, run_measured

# (model, preset, image counts of the full run, precision). delf-resnet50 is DELF's own
# architecture with RANDOM weights (a temporary file; speed does not depend on the weights):
# its marginal cost is the end-to-end figure, start-up reported apart.
FULL = [("rootsift", "seed128", [50, 100, 200, 400], "float32"),
        ("delf-hybrid", "seed128", [50, 100, 200, 400], "float32"),
        ("delf-vgg16", "seed128", [25, 50, 100, 200], "float32"),
        ("delf-resnet50", "seed128", [56, 112, 224], "float32"),
        ("delf-resnet50", "seed128", [56, 112, 224], "bfloat16"),
        ("delf-resnet50", "seed128", [56, 112, 224], "int8")]
QUICK = [("rootsift", "seed128", [16, 32, 64], "float32")]


def image_folder(source: list[Path], count: int, folder: Path) -> Path:
    """`count` distinct file names cycling over the source images (symlinks: no copies)."""
    folder.mkdir(parents=True)
    for i in range(count):
        src = source[i % len(source)]
        (folder / f"img{i:05d}{src.suffix}").symlink_to(src)
    return folder


def run_point(images: Path, out: Path, model: str, preset: str, precision: str = "float32",
              extra: list[str] | None = None) -> dict[str, Any]:
    """One fresh extraction process: wall time, peak RSS and the images it extracted."""
    cmd = [sys.executable, "-m", "delfx", "-q", "extract", str(images), str(out), "--no-ray",
           "--shards", "2", "--model", model, "--preset", preset, "--precision", precision,
           "--json", *(extra or [])]
    summary_file, log_file = out.with_suffix(".json"), out.with_suffix(".log")
    with open(summary_file, "wb") as stdout, open(log_file, "wb") as stderr:
        measured = run_measured(cmd, stdout=stdout, stderr=stderr)
    if measured["exit_code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {measured['exit_code']}: "
                           f"{log_file.read_text(errors='replace')[-2000:]}")
    summary = json.loads(summary_file.read_text())
    return {"wall_s": measured["wall_s"], "peak_rss_bytes": measured["peak_rss_bytes"],
            "cpu_s": measured["cpu_s"], "ok": summary.get("ok")}


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R^2 (1 = perfectly linear)."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    total = np.sum((ys - ys.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual ** 2) / total) if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def run(rows, workdir: Path) -> list[dict[str, Any]]:
    from delfx.sample_data import write_sample_data
    data = write_sample_data(workdir / "sample", landmarks=10, views=9, non_landmarks=10,
                             long_side=640)
    source = sorted(p for p in (data.root / "images").rglob("*") if p.is_file())
    results = []
    extra: list[str] = []
    if any(model == "delf-resnet50" for model, *_ in rows):
        # In a child process: building ResNet50 here would leave this process at ~0.9 GB, and
        # a forked child's peak RSS starts from its parent's (Linux carries the pre-exec
        # high-water mark into ru_maxrss), so every point after it would read >= 0.9 GB.
        import subprocess
        weights = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from benchmarks."
             "bench_extract import random_resnet50_weights as f; print(f(Path(sys.argv[1])))",
             str(workdir)], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        extra = ["--model-path", weights, "--descriptor-dim", "0"]
    for model, preset, counts, precision in rows:
        points = []
        for n in counts:
            tag = f"{model}-{precision}-{n}"
            folder = image_folder(source, n, workdir / f"in-{tag}")
            point = run_point(folder, workdir / f"out-{tag}", model, preset, precision,
                              extra if model == "delf-resnet50" else None)
            points.append({"images": n, **point})
            print(f"[scaling] {model} {preset} {precision} {n} images: {point['wall_s']:.1f} s, "
                  f"peak {point['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
        counts_f = [p["images"] for p in points]
        time_fit = linear_fit(counts_f, [p["wall_s"] for p in points])
        rss_fit = linear_fit(counts_f, [p["peak_rss_bytes"] for p in points])
        rss = [p["peak_rss_bytes"] for p in points]
        results.append({"model": model, "preset": preset, "precision": precision,
                        "random_weights": model == "delf-resnet50", "points": points,
                        "time_fit": time_fit, "s_per_100_marginal": 100 * time_fit["slope"],
                        "startup_s": time_fit["intercept"],
                        "rss_fit": rss_fit, "rss_growth_bytes_per_image": rss_fit["slope"],
                        "rss_max_over_min": max(rss) / min(rss)})
    return results


def table_rows(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rows = []
    for r in results:
        label = f"{r['model']} {r['preset']}" + (
            f" {r['precision']}" if r.get("precision", "float32") != "float32" else "") + (
            " (random weights)" if r.get("random_weights") else "")
        pts = ", ".join(f"{p['images']}: {p['wall_s']:.1f} s" for p in r["points"])
        rows.append((f"{label} time", pts))
        rows.append((f"{label} fit", f"{r['startup_s']:.1f} s start-up + "
                     f"{r['s_per_100_marginal']:.1f} s/100 images, R^2 {r['time_fit']['r2']:.3f}"))
        mem = ", ".join(f"{p['images']}: {p['peak_rss_bytes'] / 2**20:.0f}" for p in r["points"])
        rows.append((f"{label} peak RSS MiB", f"{mem} (max/min {r['rss_max_over_min']:.2f}, "
                     f"{r['rss_growth_bytes_per_image'] / 2**10:.0f} KiB per extra image)"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rootsift only, 16/32/64 images")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-scaling-"))
    try:
        results = run(QUICK if args.quick else FULL, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output = {"models": results}
    emit("scaling", output, table_rows(results), args.json)
    return output


if __name__ == "__main__":
    main()
