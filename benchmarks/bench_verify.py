"""Geometric verification throughput: delfx (OpenCV RANSAC) vs skimage.measure.ransac.

Synthetic pairs like /work/shared/MEASURED.md: 300 putative matches, 40% inliers (affine truth,
1 px noise) and uniform outliers over a 1024x768 image, residual threshold 20 px for every method.
skimage runs the DELF example's recipe (AffineTransform, 1000 trials) on fewer pairs since it is
slow. Figures are printed, never asserted.

    python -m benchmarks.bench_verify              # 400 pairs (skimage: 20), 5 repeats
    python -m benchmarks.bench_verify --quick      # CI: 100 pairs (skimage: 5), 2 repeats
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.common import emit, timed
from delfx.index.geometry import Matches, verify_pair, verify_pairs

SIZE = (768, 1024)  # (height, width) of the synthetic images
THRESHOLD = 20.0


def make_pairs(count: int, matches: int = 300, inlier_frac: float = 0.4, seed: int = 0) -> list:
    """[(locations_a, locations_b (y, x), Matches, true inlier mask)] with random affine truths."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    pairs = []
    for _ in range(count):
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.7, 1.3)
        lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lin = lin @ np.array([[1.0, rng.uniform(-0.2, 0.2)], [0.0, rng.uniform(0.8, 1.2)]])
        xy_a = rng.uniform([0, 0], [w, h], (matches, 2))
        xy_b = xy_a @ lin.T + rng.uniform(-100, 100, 2) + rng.normal(0, 1.0, (matches, 2))
        inl = np.zeros(matches, bool)
        inl[rng.choice(matches, int(round(inlier_frac * matches)), replace=False)] = True
        xy_b[~inl] = rng.uniform([0, 0], [w, h], ((~inl).sum(), 2))
        idx = np.arange(matches)
        pairs.append((xy_a[:, ::-1].copy(), xy_b[:, ::-1].copy(), Matches(idx, idx, np.zeros(matches)),
                      inl))
    return pairs


def skimage_verify(loc_a: np.ndarray, loc_b: np.ndarray, m: Matches, seed: int = 0) -> np.ndarray:
    """The DELF example's recipe; returns the inlier mask."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform
    _, inliers = ransac((loc_a[m.query_idx][:, ::-1], loc_b[m.gallery_idx][:, ::-1]),
                        AffineTransform, min_samples=3, residual_threshold=THRESHOLD,
                        max_trials=1000, rng=seed)
    return np.zeros(len(m), bool) if inliers is None else np.asarray(inliers, bool)


def _quality(masks: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    tp = sum(int((m & t).sum()) for m, t in zip(masks, truths))
    found = sum(int(m.sum()) for m in masks)
    true = sum(int(t.sum()) for t in truths)
    return {"precision": tp / max(found, 1), "recall": tp / max(true, 1)}


def run(num_pairs: int, skimage_pairs: int, repeats: int) -> dict:
    pairs = make_pairs(num_pairs)
    inputs = [p[:3] for p in pairs]
    truths = [p[3] for p in pairs]
    out: dict = {"pairs": num_pairs, "skimage_pairs": skimage_pairs, "matches_per_pair": 300,
                 "inlier_fraction": 0.4, "residual_threshold_px": THRESHOLD, "methods": {}}

    def record(name: str, n: int, fn, masks: list[np.ndarray]) -> None:
        t = timed(fn, repeats)
        out["methods"][name] = {"ms_per_pair": t["median_s"] / n * 1e3,
                                "pairs_per_s": n / t["median_s"], "timing": t,
                                **_quality(masks, truths[:n])}

    for model in ("affine", "homography"):
        kw = {"model": model, "residual_threshold": THRESHOLD}
        seq = [verify_pair(*p, **kw).inlier_mask for p in inputs]
        record(f"delfx verify_pair {model}", num_pairs,
               lambda kw=kw: [verify_pair(*p, **kw) for p in inputs], seq)
        par = [v.inlier_mask for v in verify_pairs(inputs, workers=2, **kw)]
        out["methods"][f"delfx verify_pair {model}"]["parallel_identical"] = all(
            np.array_equal(a, b) for a, b in zip(seq, par))
        record(f"delfx verify_pairs {model}, 2 workers", num_pairs,
               lambda kw=kw: verify_pairs(inputs, workers=2, **kw), par)
    sk = [skimage_verify(*p) for p in inputs[:skimage_pairs]]
    record("skimage ransac AffineTransform 1000 trials", skimage_pairs,
           lambda: [skimage_verify(*p) for p in inputs[:skimage_pairs]], sk)
    m = out["methods"]
    out["ratio_skimage_over_delfx_affine"] = (
        m["skimage ransac AffineTransform 1000 trials"]["ms_per_pair"]
        / m["delfx verify_pair affine"]["ms_per_pair"])
    out["speedup_2_workers_affine"] = (m["delfx verify_pairs affine, 2 workers"]["pairs_per_s"]
                                       / m["delfx verify_pair affine"]["pairs_per_s"])
    out["speedup_2_workers_homography"] = (
        m["delfx verify_pairs homography, 2 workers"]["pairs_per_s"]
        / m["delfx verify_pair homography"]["pairs_per_s"])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--skimage-pairs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 pairs, 5 for skimage, 2 repeats")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.skimage_pairs, args.repeats = 100, 5, 2
    load_before = os.getloadavg()[0]
    r = run(args.pairs, min(args.skimage_pairs, args.pairs), args.repeats)
    # Threads only help when cores are idle: record how busy the machine was.
    r["loadavg_1min"] = {"before": load_before, "after": os.getloadavg()[0], "cores": os.cpu_count()}
    table = [("pairs (skimage)", f"{args.pairs} ({r['skimage_pairs']}), 300 matches, 40% inliers, "
                                 f"threshold {THRESHOLD:g} px, median of {args.repeats}")]
    for name, v in r["methods"].items():
        table.append((name, f"{v['ms_per_pair']:8.3f} ms/pair {v['pairs_per_s']:9.0f} pairs/s   "
                            f"precision {v['precision']:.3f} recall {v['recall']:.3f}"))
    table += [("ratio skimage / delfx affine", f"{r['ratio_skimage_over_delfx_affine']:.0f}x"),
              ("2 workers / 1 (affine, homography)", f"{r['speedup_2_workers_affine']:.2f}x, "
                                                    f"{r['speedup_2_workers_homography']:.2f}x"),
              ("parallel == sequential", str(all(v.get("parallel_identical", True)
                                                 for v in r["methods"].values()))),
              ("load average before / after", f"{r['loadavg_1min']['before']:.2f} / "
                                              f"{r['loadavg_1min']['after']:.2f} "
                                              f"on {os.cpu_count()} cores")]
    emit("verify", r, table, args.json)
    return r


if __name__ == "__main__":
    main()
