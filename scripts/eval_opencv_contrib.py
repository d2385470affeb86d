"""OpenCV-contrib learned descriptors (TEBLID, BEBLID, VGG) at delfx's RootSIFT keypoints.

The measurement behind docs/MODELS.md's "OpenCV's learned descriptors" (issue #15): none of
them, alone or beside RootSIFT, beat delf-hybrid, so delfx does not ship them. The contrib
build provides the same `cv2` module as delfx's opencv-python-headless, so it goes into a side
folder, never into the environment:

    .venv/bin/python -m pip install --no-deps --target /tmp/cv-contrib \
        opencv-contrib-python-headless==5.0.0.93
    PYTHONPATH=/tmp/cv-contrib:. .venv/bin/python scripts/eval_opencv_contrib.py \
        [--quick] [--json results.json]

Protocol = benchmarks/eval_local_features.py's "rootsift raw128" row: photos decoded with
delfx.images.load_image, resized with delfx's prepare_image (long side 512), grey as
delfx.extractor.rootsift._to_gray, SIFT with SIFT_PARAMS, top 1000 keypoints in
detect_rootsift's deterministic order; MNN (exact L2) + affine RANSAC 8 px at working res.
Every descriptor is computed once per photo at the *same* cv2.KeyPoint objects on the same grey
image; rows use the keypoints that every descriptor part kept (plus a RootSIFT row on all
keypoints, the sanity check against the project's 0.466 / 0.845).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import cv2

from benchmarks.data import load_photos, resolve_data_dir, select_subset
from benchmarks.eval_local_features import (SIFT_THRESHOLD_PX, held_out_retrieval,
                                            loo_retrieval, pair_inliers, separation)
from delfx.config import ExtractConfig
from delfx.extractor.base import prepare_image, to_original_pixels
from delfx.extractor.rootsift import _to_gray, detect_rootsift, root_sift, sift_detector
from delfx.images import load_image
from delfx.store.records import ImageFeatures

CONFIG = ExtractConfig(model="rootsift", max_side=512, max_features=1000)
MAX_FEATURES = CONFIG.max_features
X = cv2.xfeatures2d
TEBLID_512 = int(X.TEBLID_SIZE_512_BITS)   # 103 in this build (verified: (N, 64) uint8)
BEBLID_512 = int(X.BEBLID_SIZE_512_BITS)   # 100 in this build (verified: (N, 64) uint8)
VGG_120 = 100                              # VGG::VGG_120 (verified: (N, 120) float32)
SIFT_SCALE = 6.75                          # the documented scale_factor for SIFT keypoints

# name -> (factory, kind); each is computed once per photo at the same keypoints.
PARTS = {
    "teblid512_s6.75": (lambda: X.TEBLID_create(SIFT_SCALE, TEBLID_512), "binary"),
    "beblid512_s6.75": (lambda: X.BEBLID_create(SIFT_SCALE, BEBLID_512), "binary"),
    "vgg120_s6.75": (lambda: X.VGG_create(desc=VGG_120, scale_factor=SIFT_SCALE), "float"),
    # cheap sweep for TEBLID only: 5.0 (the documented value for AKAZE/FAST/BRISK keypoints)
    "teblid512_s5.0": (lambda: X.TEBLID_create(5.0, TEBLID_512), "binary"),
}

# row label -> parts (RootSIFT = "rootsift"); parts weighted 1/sqrt(k), each unit norm.
VARIANTS = {
    "rootsift raw128 (all keypoints, sanity)": None,
    "rootsift raw128": ["rootsift"],
    "teblid-512 (s 6.75)": ["teblid512_s6.75"],
    "teblid-512 (s 5.0)": ["teblid512_s5.0"],
    "beblid-512 (s 6.75)": ["beblid512_s6.75"],
    "vgg-120 (s 6.75)": ["vgg120_s6.75"],
    "rootsift + teblid (s 6.75)": ["rootsift", "teblid512_s6.75"],
    "rootsift + teblid (s 5.0)": ["rootsift", "teblid512_s5.0"],
    "rootsift + beblid (s 6.75)": ["rootsift", "beblid512_s6.75"],
    "rootsift + vgg-120": ["rootsift", "vgg120_s6.75"],
    "rootsift + teblid + vgg-120": ["rootsift", "teblid512_s6.75", "vgg120_s6.75"],
}


def sift_keypoints(gray: np.ndarray):
    """detect_rootsift's detection, replicated to keep the cv2.KeyPoint objects:
    (keypoints in detect_rootsift's order, RootSIFT (N, 128))."""
    keypoints, descriptors = sift_detector(MAX_FEATURES).detectAndCompute(gray, None)
    x, y, size, angle, response = np.array(
        [(k.pt[0], k.pt[1], k.size, k.angle, k.response) for k in keypoints], np.float64).T
    order = np.lexsort((angle, size, x, y, -response))
    rs = root_sift(descriptors[order])
    valid = rs.any(axis=1)
    keep = order[valid][:MAX_FEATURES]
    rs = rs[valid][:MAX_FEATURES]
    kps = []
    for idx, k in enumerate(keep):
        kp = keypoints[k]
        # class_id carries our index through compute(), which may drop keypoints
        kps.append(cv2.KeyPoint(kp.pt[0], kp.pt[1], kp.size, kp.angle, kp.response, kp.octave,
                                idx))
    return kps, rs.astype(np.float32)


def binary_to_float(d: np.ndarray) -> np.ndarray:
    """Packed bits -> ±1 / sqrt(bits): unit norm, squared L2 = 4 Hamming / bits."""
    bits = np.unpackbits(d, axis=1).astype(np.float32)
    return (2.0 * bits - 1.0) / np.float32(np.sqrt(bits.shape[1]))


def l2n(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), np.float32(1e-12))


def extract_photo(photo, extractors):
    """Everything for one photo; per-part wall/CPU times."""
    image = load_image(photo.path, max_pixels=CONFIG.max_pixels, min_side=CONFIG.min_side)
    resized, sy, sx = prepare_image(image, CONFIG)
    times = {}
    # reference: delfx's own detect_rootsift (includes grey conversion), the RootSIFT cost
    t0, c0 = time.perf_counter(), time.process_time()
    ref_loc, ref_desc, ref_size, ref_resp = detect_rootsift(resized, MAX_FEATURES)
    times["rootsift"] = (time.perf_counter() - t0, time.process_time() - c0)
    gray = _to_gray(resized)
    kps, rs = sift_keypoints(gray)
    loc = np.array([(k.pt[1], k.pt[0]) for k in kps], np.float32).reshape(-1, 2)
    size = np.array([k.size for k in kps], np.float32)
    resp = np.array([k.response for k in kps], np.float32)
    agree = (loc.shape == ref_loc.shape and np.array_equal(loc, ref_loc)
             and np.array_equal(rs, ref_desc) and np.array_equal(size, ref_size))
    n = len(kps)
    parts = {"rootsift": (rs, np.ones(n, bool))}
    for name, (extractor, kind) in extractors.items():
        t0, c0 = time.perf_counter(), time.process_time()
        out_kps, desc = extractor.compute(gray, kps)
        times[name] = (time.perf_counter() - t0, time.process_time() - c0)
        idx = np.array([k.class_id for k in out_kps], np.int64)
        # compute() must not move keypoints
        moved = max((abs(k.pt[0] - kps[i].pt[0]) + abs(k.pt[1] - kps[i].pt[1])
                     for k, i in zip(out_kps, idx)), default=0.0)
        assert moved < 1e-4, (photo.image_id, name, moved)
        desc = binary_to_float(desc) if kind == "binary" else l2n(desc)
        full = np.zeros((n, desc.shape[1]), np.float32)
        full[idx] = desc
        mask = np.zeros(n, bool)
        mask[idx] = True
        parts[name] = (full, mask)
    return {"image_id": photo.image_id, "height": int(image.shape[0]),
            "width": int(image.shape[1]), "sy": sy, "sx": sx, "loc": loc, "size": size,
            "resp": resp, "parts": parts, "times": times, "agree": bool(agree),
            "ref": (ref_loc, ref_desc, ref_size, ref_resp)}


def features_for(cache, parts, common: bool) -> dict[str, ImageFeatures]:
    out = {}
    for e in cache:
        if parts is None:  # RootSIFT exactly as detect_rootsift gave it, all keypoints
            loc, desc, size, resp = e["ref"]
        else:
            mask = e["common"] if common else np.ones(len(e["loc"]), bool)
            w = np.float32(1.0 / np.sqrt(len(parts)))
            desc = np.concatenate([e["parts"][p][0][mask] * w for p in parts], axis=1)
            loc, size, resp = e["loc"][mask], e["size"][mask], e["resp"][mask]
        loc_o = to_original_pixels(loc, e["sy"], e["sx"]).astype(np.float32)
        out[e["image_id"]] = ImageFeatures(
            e["image_id"], loc_o, np.ascontiguousarray(desc, np.float32),
            (size / np.sqrt(e["sy"] * e["sx"])).astype(np.float32), resp.astype(np.float32),
            e["height"], e["width"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--variants", help="comma-separated substrings of row labels")
    args = parser.parse_args(argv)
    if not hasattr(cv2, "xfeatures2d"):
        sys.exit(f"eval_opencv_contrib: {cv2.__file__} is not the contrib build (see the "
                 f"docstring: install it into a side folder and put that first on PYTHONPATH)")
    log = lambda m: print(m, file=sys.stderr, flush=True)
    photos = load_photos(resolve_data_dir(None))
    if args.quick:
        photos = select_subset(photos, landmarks=4, per_landmark=2, non_landmarks=2)
    ids = [p.image_id for p in photos]
    landmarks = [p.landmark for p in photos]
    load_before = os.getloadavg()
    t_start, c_start = time.perf_counter(), time.process_time()
    extractors = {name: (factory(), kind) for name, (factory, kind) in PARTS.items()}
    extract_photo(photos[0], extractors)  # warm-up, untimed (VGG loads its tables)
    cache = []
    for i, p in enumerate(photos):
        cache.append(extract_photo(p, extractors))
        if i % 20 == 0:
            log(f"extracted {i + 1}/{len(photos)}")
    for e in cache:
        e["common"] = np.logical_and.reduce([m for _, m in e["parts"].values()])
    extract_s = time.perf_counter() - t_start
    n_kp = [len(e["loc"]) for e in cache]
    n_common = [int(e["common"].sum()) for e in cache]
    part_stats = {}
    for name in ["rootsift", *PARTS]:
        wall = np.array([e["times"][name][0] for e in cache])
        cpu = np.array([e["times"][name][1] for e in cache])
        kept = [int(e["parts"][name][1].sum()) for e in cache]
        part_stats[name] = {"wall_s_per_image": float(wall.mean()),
                            "wall_s_median": float(np.median(wall)),
                            "cpu_s_per_image": float(cpu.mean()),
                            "kept_per_image": float(np.mean(kept)),
                            "dropped_total": int(sum(n_kp) - sum(kept))}
        log(f"{name}: {wall.mean() * 1000:.1f} ms/image wall, {cpu.mean() * 1000:.1f} ms CPU, "
            f"kept {np.mean(kept):.1f}/{np.mean(n_kp):.1f}")
    agree = sum(e["agree"] for e in cache)
    log(f"replicated SIFT agrees with detect_rootsift on {agree}/{len(cache)} photos; "
        f"common keypoints {np.mean(n_common):.1f}/{np.mean(n_kp):.1f} per image")

    rows = []
    variants = VARIANTS
    if args.variants:
        wanted = [w.strip() for w in args.variants.split(",")]
        variants = {k: v for k, v in VARIANTS.items() if any(w in k for w in wanted)}
    for label, parts in variants.items():
        feats = features_for(cache, parts, common=True)
        t0, c0 = time.perf_counter(), time.process_time()
        inl = pair_inliers(feats, ids, CONFIG, SIFT_THRESHOLD_PX, matcher="mnn")
        match_s, match_cpu = time.perf_counter() - t0, time.process_time() - c0
        sep = separation(inl, landmarks)
        ret = loo_retrieval(inl, ids, landmarks)
        held = held_out_retrieval(inl, photos)
        if parts is None:
            desc_parts = ["rootsift"]
        else:
            desc_parts = parts
        ext_wall = part_stats["rootsift"]["wall_s_per_image"] + sum(
            part_stats[p]["wall_s_per_image"] for p in desc_parts if p != "rootsift")
        ext_cpu = part_stats["rootsift"]["cpu_s_per_image"] + sum(
            part_stats[p]["cpu_s_per_image"] for p in desc_parts if p != "rootsift")
        row = {"label": label, "parts": parts, "dim": int(next(iter(feats.values())).descriptors.shape[1]),
               "features_per_image": float(np.mean([f.num_features for f in feats.values()])),
               "descriptor_s_per_image": {p: part_stats[p]["wall_s_per_image"]
                                          for p in desc_parts},
               "extract_total_wall_s_per_image": ext_wall,
               "extract_total_cpu_s_per_image": ext_cpu,
               "matching_s": match_s, "matching_cpu_s": match_cpu,
               "separation": sep, "retrieval": {k: v for k, v in ret.items() if k != "predictions"},
               "predictions": ret["predictions"],
               "held_out": {k: v for k, v in held.items() if k != "predictions"},
               "inliers": inl.tolist()}
        rows.append(row)
        log(f"{label}: LOO GAP {ret['gap']:.3f} top-1 {ret['top1']:.3f} AUC {sep['auc']:.3f} "
            f"held-out GAP {held['gap']:.3f} | {row['features_per_image']:.0f} f/img, "
            f"dim {row['dim']}, match {match_s:.0f} s | load {os.getloadavg()[0]:.2f}")
        # write as we go, so a long run is never lost
        out = {"cv2_file": cv2.__file__, "cv2_version": cv2.__version__,
               "ints": {"TEBLID_SIZE_512_BITS": TEBLID_512, "BEBLID_SIZE_512_BITS": BEBLID_512,
                        "VGG_120": VGG_120},
               "scale_factors": {"teblid": [6.75, 5.0], "beblid": 6.75, "vgg": 6.75},
               "photos": len(photos), "quick": args.quick,
               "threshold_px_working": SIFT_THRESHOLD_PX, "max_side": CONFIG.max_side,
               "max_features": MAX_FEATURES,
               "sift_replica_agrees": f"{agree}/{len(cache)}",
               "keypoints_per_image": float(np.mean(n_kp)),
               "common_keypoints_per_image": float(np.mean(n_common)),
               "parts": part_stats, "extract_pass_wall_s": extract_s,
               "loadavg_before": load_before, "loadavg_now": os.getloadavg(),
               "total_wall_s": time.perf_counter() - t_start,
               "total_cpu_s": time.process_time() - c_start,
               "cpu_count": os.cpu_count(), "rows": rows}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    log(f"done: {time.perf_counter() - t_start:.0f} s wall, "
        f"{time.process_time() - c_start:.0f} s CPU; load {load_before} -> {os.getloadavg()}")


if __name__ == "__main__":
    main()
