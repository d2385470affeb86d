"""`delfx extract` end to end: Ray against in-process against the naive loop, side by side.

* ray:        the real job (local Ray instance, one worker per core, sharded HDF5 output)
* in-process: the same job without Ray (InProcessExecutor)
* naive:      what the DELF tutorials do: decode, call the exported official signature on one
              image at a time, one .npz file per image

Seconds per 100 images, with and without start-up (Ray itself, then the workers' model loads,
both timed apart), the ratios after start-up, and the driver's own share of the run (HDF5
appends, fsync, sha256, manifest). The reference cost of DELF at 128 px is 5-10 s per 100 images.

    python -m benchmarks.bench_ray [--quick] [--json PATH] [--images DIR] [--model M] [--preset P]
                                   [--precision P] [--count N] [--naive-images N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit
from delfx.config import PRESETS
from delfx.inputs import list_images


def _job(items, config, out: Path, executor, shards: int, repeats: int = 1) -> dict:
    """The whole job `repeats` times into fresh folders; the median wall time and the spread."""
    from delfx.extractor.job import run_extraction
    walls, startups, workers, writers, ok = [], [], [], [], None
    for i in range(repeats):
        # The job stops the executor it was given; starting it here first keeps Ray's start-up
        # out of the job's time (and reported on its own) for every repeat.
        start = time.perf_counter()
        executor.start(config)
        startups.append(time.perf_counter() - start)
        start = time.perf_counter()
        summary = run_extraction(items, config, out / f"run{i}", shards, executor, progress=False)
        walls.append(time.perf_counter() - start)
        ok = summary.ok
        workers.append(summary.startup_seconds)
        writers.append(summary.writer_seconds)
    wall = statistics.median(walls)
    after = [w - s for w, s in zip(walls, workers)]
    return {"wall_s": wall, "wall_min_s": min(walls), "wall_max_s": max(walls),
            "repeats": repeats, "s_per_100": 100 * wall / len(items), "images": len(items), "ok": ok,
            "start_s": statistics.median(startups),
            # inside the job: workers started and models loaded, then the marginal work
            "workers_start_s": statistics.median(workers),
            "after_startup_s": statistics.median(after),
            "s_per_100_after_startup": 100 * statistics.median(after) / len(items),
            "writer_share": statistics.median(w / t for w, t in zip(writers, walls))}


def _naive(items, config, workdir: Path) -> dict:
    """Per image: decode, resize, one call of the exported signature, one .npz file."""
    from delfx.extractor.base import prepare_image
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.export import export_model
    from delfx.extractor.hub import load_signature
    from delfx.images import load_image
    from delfx.extractor.models import create_model
    import tensorflow as tf
    model = create_model(config)
    if not isinstance(model, DelfModel):
        return {}
    folder = export_model(model, workdir / "naive-export")
    signature, _ = load_signature(str(folder))
    out = workdir / "naive-out"
    out.mkdir()
    start = time.perf_counter()
    for item in items:
        image, _, _ = prepare_image(load_image(item.path), config)
        result = signature(image=tf.constant(image, tf.float32) / 255.0,
                           score_threshold=tf.constant(config.score_threshold),
                           image_scales=tf.constant(config.scales, tf.float32),
                           max_feature_num=tf.constant(config.max_features))
        np.savez(out / (item.image_id.replace("/", "__") + ".npz"),
                 **{k: v.numpy() for k, v in result.items()})
    wall = time.perf_counter() - start
    return {"wall_s": wall, "s_per_100": 100 * wall / len(items), "images": len(items)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path)
    parser.add_argument("--model", default="delf-vgg16")
    parser.add_argument("--preset", default="seed128")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--count", type=int, default=None,
                        help="run on this many images (the sample photos repeated under distinct "
                             "names)")
    parser.add_argument("--naive-images", type=int, default=None,
                        help="images for the naive loop (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each job, median reported (default 2, quick 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-ray-"))
    try:
        if args.images is None:
            from delfx.sample_data import write_sample_data
            n_views = 3 if args.quick else 9
            data = write_sample_data(workdir / "sample", landmarks=10, views=n_views,
                                     non_landmarks=10, long_side=640)
            args.images = data.root / "images"
        if args.count:
            from benchmarks.bench_scaling import image_folder
            source = sorted(p for p in Path(args.images).rglob("*") if p.is_file())
            args.images = image_folder(source, args.count, workdir / "many")
        items = list_images(args.images)
        config = PRESETS[args.preset].replace(model=args.model, precision=args.precision)
        from delfx.extractor.executors import InProcessExecutor, RayExecutor
        ray_run = _job(items, config, workdir / "ray", RayExecutor(), args.shards, repeats)
        startup = ray_run["ray_start_s"] = ray_run["start_s"]
        in_process = _job(items, config, workdir / "inproc", InProcessExecutor(), args.shards,
                          repeats)
        naive = _naive(items[:args.naive_images], config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"model": args.model, "preset": args.preset, "images": len(items),
              "ray": ray_run, "in_process": in_process, "naive": naive,
              "precision": args.precision,
              "ratios": {"ray_over_in_process": ray_run["wall_s"] / in_process["wall_s"],
                         "ray_over_in_process_after_startup": (
                             ray_run["after_startup_s"] / in_process["after_startup_s"]),
                         "naive_over_ray": (naive["s_per_100"] / ray_run["s_per_100"]
                                            if naive else None),
                         "naive_over_in_process": (naive["s_per_100"] / in_process["s_per_100"]
                                                   if naive else None)}}
    r = result["ratios"]
    table = [("job", f"{args.model} {args.preset} {args.precision}, {len(items)} images, "
                     f"{args.shards} shards"),
             ("ray (workers + start-up)", f"{ray_run['s_per_100']:.1f} s/100 images "
              f"(+ {startup:.1f} s to start Ray)"),
             ("in-process", f"{in_process['s_per_100']:.1f} s/100 images"),
             ("ratio ray / in-process", f"{r['ray_over_in_process']:.2f}"),
             ("after start-up", f"ray {ray_run['s_per_100_after_startup']:.1f} vs in-process "
              f"{in_process['s_per_100_after_startup']:.1f} s/100 images: ratio "
              f"{r['ray_over_in_process_after_startup']:.2f} (start-up: Ray {startup:.1f} s, "
              f"workers + models {ray_run['workers_start_s']:.1f} s vs "
              f"{in_process['workers_start_s']:.1f} s in-process)"),
             ("driver writing (HDF5 append, fsync, sha256, manifest)",
              f"{100 * ray_run['writer_share']:.2f}% of the Ray run, "
              f"{100 * in_process['writer_share']:.2f}% in-process")]
    if naive:
        table += [("naive loop", f"{naive['s_per_100']:.1f} s/100 images"),
                  ("ratio naive / ray", f"{r['naive_over_ray']:.2f}"),
                  ("ratio naive / in-process", f"{r['naive_over_in_process']:.2f}")]
    table.append(("reference (DELF at 128 px)", "5-10 s/100 images"))
    emit("ray", result, table, args.json)
    return result


if __name__ == "__main__":
    main()
