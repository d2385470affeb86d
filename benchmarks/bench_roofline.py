"""How close extraction runs to this machine's limit, and whether bf16 / int8 raise that limit.

Measured side by side in one run:
- the machine's dense matmul rate (TensorFlow, fp32 and bf16; int8 through TensorFlow's integer
  matmul), the practical ceiling for a convolutional backbone on this CPU;
- the achieved rate of the built-in VGG16 backbone (conv FLOPs counted from the layers' shapes,
  divided by the measured forward time) in fp32 and in mixed bf16, as a share of that ceiling;
- int8 through TFLite (dynamic range and full integer): speed and feature fidelity;
- what bf16 does to matching quality on `delfx sample-data` views with known homographies: kept
  keypoints shared with fp32, descriptor cosine similarity, and verified inliers that are
  correct under the true homography (fp32 vs bf16).

    python -m benchmarks.bench_roofline            # report figures
    python -m benchmarks.bench_roofline --quick    # CI: small matrices and images
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import emit, timed
from delfx.config import PRESETS

# Inliers whose true reprojection error is under this many pixels of the image the model saw
# count as correct (the RANSAC threshold delfx uses for DELF cells is of the same order).
CORRECT_PX = 8.0


def _median_seconds(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up: kernel selection and graph tracing are not billed
    return timed(fn, repeats)


def matmul_ceiling(sizes: list[int], repeats: int) -> dict[str, Any]:
    """The best matmul rate per dtype over several sizes: small sizes underuse the cores."""
    per_size = [matmul_rates(n, repeats) for n in sizes]
    best: dict[str, Any] = {"sizes": per_size}
    for dtype in ("float32", "bfloat16", "int8"):
        rates = [(r[dtype]["gflops"], r["n"]) for r in per_size if "gflops" in r[dtype]]
        if rates:
            gflops, n = max(rates)
            best[dtype] = {"gflops": gflops, "n": n}
        else:
            best[dtype] = {"error": per_size[-1][dtype]["error"]}
    return best


def matmul_rates(n: int, repeats: int) -> dict[str, Any]:
    """GFLOP/s (GOP/s for int8) of an n x n x n matmul per dtype; the result is materialised.

    int8 goes through TensorFlow's integer matmul: whether it reaches the VNNI units is exactly
    what this measures (a path slower than fp32 cannot raise the ceiling).
    """
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    rng = np.random.default_rng(0)
    a32 = tf.constant(rng.random((n, n), dtype=np.float32))
    b32 = tf.constant(rng.random((n, n), dtype=np.float32))
    cases = {
        "float32": lambda: tf.matmul(a32, b32).numpy(),
        "bfloat16": (lambda a, b: lambda: tf.matmul(a, b).numpy())(
            tf.cast(a32, tf.bfloat16), tf.cast(b32, tf.bfloat16)),
    }
    a8 = tf.constant(rng.integers(-100, 100, (n, n), dtype=np.int8))
    b8 = tf.constant(rng.integers(-100, 100, (n, n), dtype=np.int8))
    cases["int8"] = lambda: tf.linalg.matmul(a8, b8, output_type=tf.int32).numpy()
    out: dict[str, Any] = {"n": n}
    for name, fn in cases.items():
        try:
            t = _median_seconds(fn, repeats)
        except Exception as exc:  # an op this TensorFlow build lacks is a finding, not a crash
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        out[name] = {**t, "gflops": 2 * n ** 3 / t["median_s"] / 1e9}
    return out


def conv_flops(backbone, height: int, width: int) -> int:
    """Multiply-adds x 2 of every Conv2D of a Keras functional backbone for one image."""
    import keras
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    probe = keras.Model(backbone.inputs, [layer.output for layer in convs])
    outputs = probe([np.zeros((1, height, width, 3), np.float32)], training=False)
    total = 0
    for layer, out in zip(convs, outputs):
        kh, kw, cin, cout = layer.kernel.shape
        total += 2 * kh * kw * cin * cout * int(out.shape[1]) * int(out.shape[2])
    return total


def backbone_rate(precision: str, batch: int, size: int, repeats: int) -> dict[str, Any]:
    """Achieved GFLOP/s of the built-in VGG16 backbone (hed weights) on a batch of size x size."""
    from delfx.extractor.delf_net import DelfNetwork
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    network = DelfNetwork("vgg16", "hed", precision=precision)
    images = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32))
    forward = tf.function(lambda x: network.backbone(network.normalise(x), training=False))
    t = _median_seconds(lambda: forward(images).numpy(), repeats)
    flops = conv_flops(network.backbone, size, size) * batch
    return {"precision": precision, "batch": batch, "size": size, **t,
            "gflop_per_batch": flops / 1e9, "gflops": flops / t["median_s"] / 1e9,
            "images_per_s": batch / t["median_s"]}


def _real_images(size: int) -> list[np.ndarray]:
    """Package photos (sklearn, skimage) as [0, 1] RGB size x size: calibration and probes."""
    import cv2
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images) + [skdata.astronaut(), skdata.coffee(),
                                                   skdata.chelsea(), skdata.rocket()]
    return [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            for p in photos]


def tflite_int8(size: int, repeats: int) -> dict[str, Any]:
    """The backbone through TFLite (XNNPACK): fp32, dynamic-range int8 and full int8.

    TensorFlow's own int8 ops do not reach the VNNI units (see the matmul row); TFLite's int8
    kernels do. Quality is the cosine between each variant's block4 features and TensorFlow
    fp32's on a package photo the calibration never saw (a cell with cosine ~1 gives the same
    descriptor). Full int8 is calibrated on the other package photos.
    """
    from delfx.extractor.delf_net import DelfNetwork
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    network = DelfNetwork("vgg16", "hed")
    images = _real_images(size)
    probe, calibration = images[0][None], images[1:]
    fn = tf.function(lambda x: network.backbone(network.normalise(x), training=False),
                     input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)])
    reference = fn(probe).numpy()
    tf_time = _median_seconds(lambda: fn(probe).numpy(), repeats)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    out: dict[str, Any] = {"size": size, "tensorflow_float32": tf_time}
    for mode in ("float32", "dynamic_int8", "full_int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "full_int8":
            converter.representative_dataset = lambda: ([im[None]] for im in calibration)
        try:
            interpreter = tf.lite.Interpreter(model_content=converter.convert(), num_threads=os.cpu_count())
        except Exception as exc:  # TFLite is deprecated in TensorFlow: record, do not crash
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        interpreter.allocate_tensors()
        inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def invoke():
            interpreter.set_tensor(inp["index"], probe)
            interpreter.invoke()
            return interpreter.get_tensor(outp["index"])

        t = _median_seconds(invoke, repeats)
        a = reference.reshape(-1, reference.shape[-1])
        b = invoke().reshape(-1, reference.shape[-1]).astype(np.float32)
        norms = np.linalg.norm(a, axis=1)
        cos = np.sum(a * b, axis=1) / (norms * np.linalg.norm(b, axis=1) + 1e-12)
        strong = norms >= np.percentile(norms, 90)  # the cells keypoint selection keeps
        out[mode] = {**t, "speedup_vs_tensorflow": tf_time["median_s"] / t["median_s"],
                     "median_cosine": float(np.median(cos)),
                     "median_cosine_top10pct_cells": float(np.median(cos[strong]))}
    return out


# --------------------------------------------------------------------------------------------
# bf16 matching quality
# --------------------------------------------------------------------------------------------

def _extract(config, items) -> dict[str, Any]:
    from delfx.extractor.models import create_model
    from delfx.extractor.run import extract_items
    model = create_model(config)
    list(extract_items(model, items[:1]))  # warm-up
    start = time.perf_counter()
    features = {r.image_id: r for r in extract_items(model, items) if r.ok}
    return {"features": features, "seconds": time.perf_counter() - start}


def keypoint_agreement(fp32: dict, bf16: dict) -> dict[str, float]:
    """Share of bf16 keypoints at an fp32 keypoint (same place and scale), and their cosine."""
    shared, cosines = [], []
    for image_id, a in fp32.items():
        b = bf16.get(image_id)
        if b is None or not a.num_features or not b.num_features:
            continue
        key_a = {(round(float(y), 1), round(float(x), 1), round(float(s), 3)): i
                 for i, ((y, x), s) in enumerate(zip(a.locations, a.scales))}
        pairs = [(key_a[k], j) for j, ((y, x), s) in enumerate(zip(b.locations, b.scales))
                 if (k := (round(float(y), 1), round(float(x), 1), round(float(s), 3))) in key_a]
        shared.append(len(pairs) / b.num_features)
        if pairs:
            ia, ib = np.array(pairs).T
            da, db = a.descriptors[ia].astype(np.float32), b.descriptors[ib].astype(np.float32)
            cos = np.sum(da * db, axis=1) / (np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1)
                                             + 1e-12)
            cosines.extend(cos.tolist())
    return {"shared_keypoints": float(np.mean(shared)) if shared else 0.0,
            "median_cosine": float(np.median(cosines)) if cosines else 0.0,
            "p05_cosine": float(np.percentile(cosines, 5)) if cosines else 0.0}


def correct_inliers(features: dict, pairs: list[tuple[str, str, np.ndarray]], config
                    ) -> dict[str, float]:
    """Per view pair: MNN -> homography RANSAC; inliers, and those the true H confirms."""
    from delfx.index.geometry import mutual_nearest_neighbours, reprojection_errors, verify_pair
    from delfx.extractor.base import target_size
    inliers, correct = [], []
    for id_a, id_b, truth in pairs:
        fa, fb = features.get(id_a), features.get(id_b)
        if fa is None or fb is None:
            inliers.append(0)
            correct.append(0)
            continue
        scale = target_size(fb.height, fb.width, config)[0] / fb.height
        matches = mutual_nearest_neighbours(fa.descriptors, fb.descriptors)
        v = verify_pair(fa.locations, fb.locations, matches, model="homography",
                        residual_threshold=CORRECT_PX / scale, image_size_b=(fb.height, fb.width))
        inliers.append(v.inliers)
        if v.inliers:
            keep = v.inlier_mask
            err = reprojection_errors(truth, fa.locations[matches.query_idx[keep]],
                                      fb.locations[matches.gallery_idx[keep]])
            correct.append(int(np.sum(err * scale < CORRECT_PX)))
        else:
            correct.append(0)
    return {"pairs": len(pairs), "mean_inliers": float(np.mean(inliers)),
            "mean_correct_inliers": float(np.mean(correct)),
            "pairs_with_10_correct": int(sum(c >= 10 for c in correct))}


def bf16_quality(workdir: Path, quick: bool) -> dict[str, Any]:
    """fp32 vs mixed bf16 extraction (seed128 preset) on sample-data views: speed and matching."""
    from delfx.inputs import ImageItem
    from delfx.sample_data import write_sample_data
    data = write_sample_data(workdir / "sample", landmarks=4 if quick else 10,
                             views=3 if quick else 6, non_landmarks=0, long_side=640)
    views = [im for im in data.images if im.landmark_id is not None]
    items = [ImageItem(im.id, str(data.root / im.path)) for im in views]
    canonical = {im.landmark_id: im for im in views if im.id.endswith("view_00")}
    pairs = [(canonical[im.landmark_id].id, im.id, im.homography) for im in views
             if not im.id.endswith("view_00")]
    config = PRESETS["seed128"].replace(model="delf-vgg16")
    runs = {p: _extract(config.replace(precision=p), items) for p in ("float32", "bfloat16")}
    quality = {p: correct_inliers(r["features"], pairs, config) for p, r in runs.items()}
    fp32, bf16 = quality["float32"], quality["bfloat16"]
    return {"images": len(items), "preset": "seed128",
            "s_per_100": {p: 100 * r["seconds"] / len(items) for p, r in runs.items()},
            "speedup_bf16": runs["float32"]["seconds"] / runs["bfloat16"]["seconds"],
            "matching": quality,
            "correct_inliers_ratio_bf16": (bf16["mean_correct_inliers"]
                                           / max(fp32["mean_correct_inliers"], 1e-9)),
            "agreement": keypoint_agreement(runs["float32"]["features"],
                                            runs["bfloat16"]["features"])}


def run(quick: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    matmul = matmul_ceiling([512, 1024] if quick else [1024, 2048, 4096], repeats)
    batch, size = (2, 224) if quick else (4, 512)
    backbone = {p: backbone_rate(p, batch, size, repeats) for p in ("float32", "bfloat16")}
    ceiling = {p: matmul[p]["gflops"] for p in ("float32", "bfloat16") if "gflops" in matmul[p]}
    share = {p: backbone[p]["gflops"] / ceiling[p] for p in backbone if p in ceiling}
    return {"matmul": matmul, "backbone": backbone, "share_of_matmul": share,
            "bf16_backbone_speedup": backbone["float32"]["median_s"] / backbone["bfloat16"]["median_s"],
            "bf16_quality": bf16_quality(workdir, quick),
            "tflite": tflite_int8(224 if quick else 512, repeats)}


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    m = r["matmul"]
    rows = []
    for name in ("float32", "bfloat16", "int8"):
        value = m[name]
        unit = "GOP/s" if name == "int8" else "GFLOP/s"
        rows.append((f"matmul {name} (best size)", value["error"] if "error" in value
                     else f"{value['gflops']:.0f} {unit} at n={value['n']}"))
    for p, b in r["backbone"].items():
        rows.append((f"VGG16 block4 {p} ({b['batch']}x{b['size']}px)",
                     f"{b['gflops']:.0f} GFLOP/s = {100 * r['share_of_matmul'][p]:.0f}% of matmul "
                     f"({b['images_per_s']:.1f} images/s)"))
    rows.append(("bf16 backbone speed-up", f"x{r['bf16_backbone_speedup']:.2f}"))
    q = r["bf16_quality"]
    rows.append(("seed128 extraction fp32 / bf16", f"{q['s_per_100']['float32']:.1f} / "
                 f"{q['s_per_100']['bfloat16']:.1f} s/100 images: x{q['speedup_bf16']:.2f}"))
    for p in ("float32", "bfloat16"):
        mq = q["matching"][p]
        rows.append((f"matching {p}", f"{mq['mean_correct_inliers']:.1f} correct of "
                     f"{mq['mean_inliers']:.1f} inliers per pair ({mq['pairs']} pairs)"))
    lite = r["tflite"]
    for mode in ("float32", "dynamic_int8", "full_int8"):
        v = lite[mode]
        rows.append((f"TFLite {mode} backbone ({lite['size']}px)", v["error"] if "error" in v else
                     f"x{v['speedup_vs_tensorflow']:.2f} vs TensorFlow fp32; feature cosine median "
                     f"{v['median_cosine']:.3f} ({v['median_cosine_top10pct_cells']:.3f} on the "
                     f"strongest 10% of cells)"))
    a = q["agreement"]
    rows.append(("bf16 vs fp32", f"correct inliers x{q['correct_inliers_ratio_bf16']:.2f}, "
                 f"{100 * a['shared_keypoints']:.0f}% keypoints shared, descriptor cosine median "
                 f"{a['median_cosine']:.4f} (5th pct {a['p05_cosine']:.4f})"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="matmul up to 1024, 2x224 px, 12 views")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 3)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-roofline-"))
    try:
        result = run(args.quick, repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit("roofline", result, table_rows(result), args.json)
    return result


if __name__ == "__main__":
    main()
