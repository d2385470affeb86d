"""Feature-store throughput: write, full scan, random access and padded (N, 150, 40) batches.

Compared side by side in the same run with the naive layout (one .npz file per image), on a
subset so the naive side stays affordable. Figures are printed, never asserted.

    python -m benchmarks.bench_store --images 100000          # the report figures
    python -m benchmarks.bench_store --quick                   # CI: 5000 images
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import dir_bytes, emit, timed
from delfx.store import FeatureSet, ImageFeatures, Manifest, ShardWriter, shard_file_name
from delfx.store.synthetic import synthetic_image


def _write_npz(root: Path, num_images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        r = synthetic_image(f"img{i:08d}", rng, num_features=int(rng.integers(100, 201)))
        np.savez(root / f"img{i:08d}.npz", locations=r.locations, scales=r.scales, scores=r.scores,
                 descriptors=r.descriptors.astype(np.float16))


def _read_npz(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with np.load(path) as data:
            total += data["descriptors"].shape[0] + data["locations"].shape[0] * 0
    return total


def _padded_npz(paths: list[Path], max_features: int = 150) -> np.ndarray:
    out = np.zeros((len(paths), max_features, 40), np.float32)
    for k, path in enumerate(paths):
        with np.load(path) as data:
            order = np.argsort(-data["scores"])[:max_features]
            out[k, :len(order)] = data["descriptors"][order]
    return out


def _write_store(root: Path, num_images: int, num_shards: int, pool: list[ImageFeatures]) -> float:
    """Write `num_images` records cycling through a pre-generated pool; return seconds."""
    manifest = Manifest(num_shards=num_shards, model_id="synthetic", model_hash="0" * 64,
                        config={}, descriptor_dim=40, descriptor_dtype="float16")
    start = time.perf_counter()
    for shard in range(num_shards):
        with ShardWriter(root / shard_file_name(shard, num_shards), descriptor_dim=40,
                         descriptor_dtype="float16", model_id="synthetic",
                         model_hash=manifest.model_hash, config={}, shard_index=shard,
                         num_shards=num_shards) as writer:
            for i in range(shard, num_images, num_shards):
                r = pool[i % len(pool)]
                writer.add(ImageFeatures(f"img{i:08d}", r.locations, r.descriptors, r.scales,
                                         r.scores, r.height, r.width))
        manifest.record(root, writer.info)
    return time.perf_counter() - start


def run(num_images: int, num_shards: int, naive_images: int, repeats: int, workdir: Path) -> dict:
    store = workdir / "store"
    rng = np.random.default_rng(0)
    pool = [synthetic_image(f"p{i}", rng, num_features=int(rng.integers(100, 201)))
            for i in range(1000)]
    write_s = _write_store(store, num_images, num_shards, pool)  # generation not timed
    size = dir_bytes(store)
    with FeatureSet(store) as fs:
        features = fs.manifest.totals()["features"]
        features_mb = features * (40 * 2 + 4 * 4) / 1e6  # descriptors fp16 + loc/scale/score fp32
        scan = timed(lambda: sum(r.num_features for r in fs), repeats)
        blocks = timed(lambda: sum(len(b[0]) for b in fs.iter_descriptor_blocks()), repeats)
        rng = np.random.default_rng(0)
        picks = rng.choice(num_images, 1000, replace=False)
        random_access = timed(lambda: [fs.get(int(i)) for i in picks], repeats)
        batch = 256
        padded_all = timed(lambda: [fs.padded_batch(range(s, min(s + batch, num_images)))
                                    for s in range(0, num_images, batch)], repeats)
        padded_random = timed(lambda: fs.padded_batch(picks.tolist()), repeats)
    # the naive layout, on a subset, in the same run
    naive = workdir / "npz"
    start = time.perf_counter()
    _write_npz(naive, naive_images, seed=1)
    naive_write_s = time.perf_counter() - start
    paths = sorted(naive.glob("*.npz"))
    naive_scan = timed(lambda: _read_npz(paths), repeats)
    naive_padded = timed(lambda: _padded_npz(paths), repeats)
    naive_size = dir_bytes(naive)
    per_image_store = padded_all["median_s"] / num_images
    per_image_naive = naive_padded["median_s"] / naive_images
    return {
        "params": {"images": num_images, "shards": num_shards, "naive_images": naive_images,
                   "repeats": repeats, "features_per_image": [100, 200], "dtype": "float16"},
        "store": {"features": features, "bytes": size, "bytes_per_image": size / num_images,
                  "write_s": write_s, "write_images_per_s": num_images / write_s,
                  "write_mb_per_s": features_mb / write_s,
                  "scan": scan, "scan_images_per_s": num_images / scan["median_s"],
                  "scan_mb_per_s": features_mb / scan["median_s"],
                  "descriptor_blocks": blocks, "descriptor_mb_per_s":
                      features * 40 * 2 / 1e6 / blocks["median_s"],
                  "random_1000": random_access, "padded_all_batch256": padded_all,
                  "padded_random_1000": padded_random},
        "naive_npz": {"bytes_per_image": naive_size / naive_images,
                      "write_images_per_s": naive_images / naive_write_s,
                      "scan": naive_scan, "padded_all": naive_padded},
        "ratios": {"padded_per_image_npz_over_store": per_image_naive / per_image_store,
                   "scan_per_image_npz_over_store":
                       (naive_scan["median_s"] / naive_images) / (scan["median_s"] / num_images)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--naive-images", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5000 images, 1000 naive, 2 repeats")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.naive_images, args.repeats = 5_000, 1_000, 2
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-store-", dir=args.workdir))
    try:
        r = run(args.images, args.shards, args.naive_images, args.repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    s, n = r["store"], r["naive_npz"]
    table = [
        ("images / shards", f"{args.images} / {args.shards} (float16, 100-200 features each)"),
        ("write", f"{s['write_images_per_s']:.0f} images/s, {s['write_mb_per_s']:.0f} MB/s"),
        ("bytes per image", f"{s['bytes_per_image']:.0f} (npz per image: {n['bytes_per_image']:.0f})"),
        ("full scan", f"{s['scan_images_per_s']:.0f} images/s, {s['scan_mb_per_s']:.0f} MB/s"),
        ("descriptor blocks (index)", f"{s['descriptor_mb_per_s']:.0f} MB/s"),
        ("1000 random images", f"{s['random_1000']['median_s'] * 1e3:.0f} ms"),
        ("padded (N,150,40), all, batch 256", f"{s['padded_all_batch256']['median_s']:.2f} s "
         f"({args.images / s['padded_all_batch256']['median_s']:.0f} images/s)"),
        ("padded, 1000 random images", f"{s['padded_random_1000']['median_s'] * 1e3:.0f} ms"),
        ("npz per image: padded", f"{args.naive_images / n['padded_all']['median_s']:.0f} images/s"),
        ("ratio padded npz/store (per image)", f"{r['ratios']['padded_per_image_npz_over_store']:.1f}x"),
        ("ratio scan npz/store (per image)", f"{r['ratios']['scan_per_image_npz_over_store']:.1f}x"),
    ]
    emit("store", r, table, args.json)
    return r


if __name__ == "__main__":
    main()
