"""Extraction cost per preset and model, in-process, side by side in one run.

Reports seconds per 100 images (decode + extract; the reference is 5-10 s per 100 images for
DELF at 128 px), the share of time in the network (the pipeline's cost over its raw network
time is 1 / that share), the speed-up of batched seed128 over calling the exported official
signature one image at a time, and bf16 and int8 (LiteRT) against fp32. DELF's own
architecture (ResNet50 to conv4_block6_out) runs with RANDOM weights, saved to a temporary
.weights.h5: its speed does not depend on the weights, its features here mean nothing.

    python -m benchmarks.bench_extract                 # report figures (median of 3 runs)
    python -m benchmarks.bench_extract --quick         # CI: a few images per row
    python -m benchmarks.bench_extract --images DIR    # your own photos (default: sample data)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, learned_unavailable
from delfx.config import PRESETS
from delfx.inputs import list_images

# (model, preset, overrides, images in the full run); the delf preset on VGG16 costs seconds
# per image on 2 cores, so it gets fewer images.
RESNET50_RANDOM = "<random ResNet50 weights>"  # replaced by a temporary weights file
ROWS = [
    ("delf-resnet50", "seed128", {"model_path": RESNET50_RANDOM}, 100),
    ("delf-resnet50", "seed128", {"model_path": RESNET50_RANDOM, "precision": "bfloat16"}, 100),
    ("delf-resnet50", "seed128", {"model_path": RESNET50_RANDOM, "precision": "int8"}, 100),
    ("delf-resnet50", "delf", {"model_path": RESNET50_RANDOM}, 10),
    ("delf-resnet50", "delf", {"model_path": RESNET50_RANDOM, "precision": "bfloat16"}, 10),
    ("delf-resnet50", "delf", {"model_path": RESNET50_RANDOM, "precision": "int8"}, 10),
    ("delf-vgg16", "seed128", {}, 100),
    ("delf-vgg16", "seed128", {"precision": "bfloat16"}, 100),
    ("delf-vgg16", "seed128", {"precision": "int8"}, 100),
    ("delf-vgg16", "fast", {}, 30),
    ("delf-vgg16", "delf", {}, 10),
    ("rootsift", "seed128", {}, 100),
    ("rootsift", "fast", {}, 100),
    ("rootsift", "delf", {}, 100),
    # SIFT keypoints + VGG16 block4 at two scales of the working image
    ("delf-hybrid", "seed128", {}, 50),
    ("delf-hybrid", "fast", {}, 50),
    ("delf-hybrid", "fast", {"precision": "int8"}, 50),
    ("delf-hybrid", "delf", {}, 30),
    ("delf-hybrid", "delf", {"precision": "int8"}, 30),
]
# The learned models (the torch extra): only when it is installed (the report says when not).
LEARNED_ROWS = [
    ("xfeat", "seed128", {}, 100),
    ("xfeat", "fast", {}, 100),
    ("xfeat", "delf", {}, 100),
    ("aliked", "fast", {}, 30),
    ("disk", "fast", {}, 30),
]


def _extract_rate(model, items) -> dict:
    from delfx.extractor.run import extract_items
    model_backbone = getattr(model, "backbone_seconds", None)
    start = time.perf_counter()
    features = [r.num_features for r in extract_items(model, items)]
    seconds = time.perf_counter() - start
    backbone = (getattr(model, "backbone_seconds", 0.0) - model_backbone
                if model_backbone is not None else None)
    return {"images": len(items), "seconds": seconds, "s_per_100": 100 * seconds / len(items),
            "backbone_share": backbone / seconds if backbone is not None else None,
            "features_per_image": sum(features) / len(features)}


def _repeated_rate(model, items, repeats: int) -> dict:
    """_extract_rate `repeats` times: the median run's figures plus the spread of s/100."""
    runs = sorted((_extract_rate(model, items) for _ in range(repeats)),
                  key=lambda r: r["s_per_100"])
    median = dict(runs[len(runs) // 2])
    median.update(repeats=repeats, s_per_100_min=runs[0]["s_per_100"],
                  s_per_100_max=runs[-1]["s_per_100"])
    return median


def _warm(model, items) -> None:
    """One image first, so graph tracing and oneDNN kernel selection are not billed."""
    from delfx.extractor.run import extract_items
    list(extract_items(model, items[:1]))
    if hasattr(model, "backbone_seconds"):
        model.backbone_seconds = 0.0


def random_resnet50_weights(workdir: Path) -> str:
    """A .weights.h5 of Keras ResNet50(include_top=False) with seeded random weights."""
    import keras
    keras.utils.set_random_seed(0)
    path = workdir / "resnet50-random.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None).save_weights(path)
    return str(path)


def run(items, quick: bool, workdir: Path, repeats: int = 1) -> dict:
    from delfx.extractor.export import export_model
    from delfx.extractor.hub import HubModel
    from delfx.extractor.models import create_model
    rows = []
    skipped = learned_unavailable()
    resnet50 = random_resnet50_weights(workdir)
    for model_name, preset, overrides, full_n in ROWS + ([] if skipped else LEARNED_ROWS):
        n = min(len(items), max(2, full_n // 16) if quick else full_n)
        changes = {k: (resnet50 if v == RESNET50_RANDOM else v) for k, v in overrides.items()}
        if model_name == "delf-resnet50":
            changes["descriptor_dim"] = 0  # no PCA fitted on random features
        config = PRESETS[preset].replace(model=model_name, **changes)
        start = time.perf_counter()
        model = create_model(config)
        build_s = time.perf_counter() - start  # weights, and the int8 conversion + probe
        _warm(model, items)
        result = _repeated_rate(model, items[:n], repeats)
        int8 = getattr(model, "_int8", None) or getattr(getattr(model, "sampler", None),
                                                       "_int8", None)
        rows.append({"model": model_name, "preset": preset,
                     "overrides": {k: ("random" if k == "model_path" else v)
                                   for k, v in overrides.items()},
                     "build_s": build_s, **result,
                     "int8_fidelity": int8.fidelity if int8 is not None else None})
    # Batched seed128 against the exported official signature called one image at a time.
    n = min(len(items), 8 if quick else 50)
    config = PRESETS["seed128"].replace(model="delf-vgg16")
    batched = create_model(config)
    exported = export_model(batched, workdir / "exported")
    per_image = HubModel(config.replace(model="tfhub", model_path=str(exported), batch_size=1))
    _warm(batched, items)
    _warm(per_image, items)
    batched_rate = _repeated_rate(batched, items[:n], repeats)
    signature_rate = _repeated_rate(per_image, items[:n], repeats)
    return {"rows": rows, "learned_models_skipped": skipped, "batched_vs_signature": {
        "images": n, "batched_s_per_100": batched_rate["s_per_100"],
        "signature_s_per_100": signature_rate["s_per_100"],
        "speedup": signature_rate["s_per_100"] / batched_rate["s_per_100"]}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder or list of images (default: sample data)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per row, median reported (default 3, quick 2)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-extract-"))
    try:
        if args.images is None:
            from delfx.sample_data import write_sample_data
            data = write_sample_data(workdir / "sample", landmarks=10, views=9, non_landmarks=10,
                                     long_side=640)
            source = "delfx sample-data, 110 images, long side ~640"
            args.images = data.root / "images"
        else:
            source = str(args.images)
        items = list_images(args.images)
        result = run(items, args.quick, workdir, repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["images_source"] = source
    table = [("images", source)]
    for row in result["rows"]:
        label = f"{row['model']} {row['preset']}" + "".join(f" {k}={v}" for k, v in row["overrides"].items())
        share = (f", network {100 * row['backbone_share']:.0f}% (pipeline "
                 f"x{1 / row['backbone_share']:.2f} its network time)"
                 if row["backbone_share"] else "")
        if row.get("int8_fidelity"):
            share += f", int8 cosine {row['int8_fidelity']['median_cosine_kept_cells']:.4f}"
        if row["model"] == "delf-resnet50":
            share += ", random weights (speed only)"
        table.append((label, f"{row['s_per_100']:.1f} s/100 images [{row['s_per_100_min']:.1f}-"
                             f"{row['s_per_100_max']:.1f} over {row['repeats']} runs] "
                             f"({row['images']} images, {row['features_per_image']:.0f} "
                             f"features/image{share})"))
    if result["learned_models_skipped"]:
        table.append(("learned models", f"not run: {result['learned_models_skipped']}"))
    b = result["batched_vs_signature"]
    table.append(("seed128 batched vs signature", f"{b['batched_s_per_100']:.1f} vs "
                  f"{b['signature_s_per_100']:.1f} s/100 images: x{b['speedup']:.2f}"))
    table.append(("reference (DELF at 128 px)", "5-10 s/100 images"))
    emit("extract", result, table, args.json)
    return result


if __name__ == "__main__":
    main()
