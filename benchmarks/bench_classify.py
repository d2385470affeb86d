"""Classifier throughput: training and inference of the bottleneck heads over stored features.

A synthetic feature set with class structure (each landmark class owns prototype descriptors;
an image shows a noisy subset of its class's prototypes among shared background descriptors) is
written as real HDF5 shards, so the figures include reading padded (N, 150, 40) batches.
Measured side by side in one run, per head (`pool`, `flatten`):
- training samples/s (forward + backward) and the held-out accuracy after a few epochs (a check
  that the run learned, not a score: the data are synthetic);
- inference from the store (padded batch read + predict) in images/s;
- batched inference against a naive per-image predict loop, as a ratio.

    python -m benchmarks.bench_classify            # 20000 images, 200 classes
    python -m benchmarks.bench_classify --quick    # CI: 2000 images, 50 classes
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit

DIM = 40


def write_class_feature_set(root: Path, num_images: int, num_classes: int, seed: int = 0
                            ) -> tuple[Path, dict[str, str]]:
    """Real shards whose descriptors carry the class; returns (labels.csv, id -> class)."""
    from delfx.store import ImageFeatures, Manifest, ShardWriter, shard_file_name
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_classes, 30, DIM)).astype(np.float32)
    background = rng.standard_normal((200, DIM)).astype(np.float32)
    num_shards = 4
    manifest = Manifest(num_shards=num_shards, model_id="synthetic-classes", model_hash="0" * 64,
                        config={"synthetic": True, "classes": num_classes}, descriptor_dim=DIM,
                        descriptor_dtype="float16")
    labels: dict[str, str] = {}
    for shard in range(num_shards):
        with ShardWriter(root / shard_file_name(shard, num_shards), descriptor_dim=DIM,
                         descriptor_dtype="float16", model_id=manifest.model_id,
                         model_hash=manifest.model_hash, config=manifest.config,
                         shard_index=shard, num_shards=num_shards) as writer:
            for i in range(shard, num_images, num_shards):
                cls = i % num_classes
                n = int(rng.integers(100, 201))
                own = prototypes[cls][rng.integers(0, 30, n // 2)]
                other = background[rng.integers(0, 200, n - n // 2)]
                desc = np.concatenate([own, other]) + 0.2 * rng.standard_normal((n, DIM))
                desc /= np.linalg.norm(desc, axis=1, keepdims=True)
                image_id = f"img{i:07d}"
                writer.add(ImageFeatures(image_id, (rng.random((n, 2)) * 480).astype(np.float32),
                                         desc.astype(np.float32), np.ones(n, np.float32),
                                         rng.random(n).astype(np.float32), 480, 640))
                labels[image_id] = f"c{cls:04d}"
        manifest.record(root, writer.info)
    csv_path = root.parent / "labels.csv"
    csv_path.write_text("id,landmark_id\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    return csv_path, labels


def measure_head(head: str, features: Path, labels_csv: Path, out: Path, epochs: int,
                 naive_images: int) -> dict[str, Any]:
    from delfx.classifier.model import ClassifierConfig
    from delfx.classifier.train import train_classifier
    from delfx.store import FeatureSet
    config = ClassifierConfig(head=head, epochs=epochs, patience=epochs, validation_share=0.1)
    result = train_classifier(features, labels_csv, out, config)
    classifier = result.model
    with FeatureSet(features) as fs:
        ids = list(fs.image_ids)
        start = time.perf_counter()
        for i in range(0, len(ids), 1024):
            x, mask = fs.padded_batch(ids[i:i + 1024], max_features=classifier.max_features)
            classifier.predict(x, mask)
        from_store = time.perf_counter() - start
        x, mask = fs.padded_batch(ids[:naive_images], max_features=classifier.max_features)
    classifier.predict(x[:1], mask[:1], batch_size=1)  # warm-up of the batch-1 path
    start = time.perf_counter()
    for j in range(len(x)):
        classifier.predict(x[j:j + 1], mask[j:j + 1], batch_size=1)
    naive = (time.perf_counter() - start) / len(x)
    start = time.perf_counter()
    classifier.predict(x, mask)
    batched = (time.perf_counter() - start) / len(x)
    return {"head": head, "epochs": result.epochs_run, "train_images": result.train_images,
            "val_accuracy": result.val_accuracy,
            "train_samples_per_s": result.train_samples_per_s,
            "inference_samples_per_s": result.inference_samples_per_s,
            "from_store_images_per_s": len(ids) / from_store,
            "naive_images_per_s": 1 / naive, "batched_images_per_s": 1 / batched,
            "batched_over_naive": naive / batched, "params": int(classifier.model.count_params())}


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("data", f"{r['images']} images, {r['classes']} classes, synthetic, 4 HDF5 shards")]
    for h in r["heads"]:
        rows.append((f"{h['head']} training", f"{h['train_samples_per_s']:.0f} samples/s "
                     f"({h['epochs']} epochs, val accuracy {h['val_accuracy']:.2f}, "
                     f"{h['params']:,} parameters)"))
        rows.append((f"{h['head']} inference from store", f"{h['from_store_images_per_s']:.0f} images/s"))
        rows.append((f"{h['head']} batched vs per-image", f"{h['batched_images_per_s']:.0f} vs "
                     f"{h['naive_images_per_s']:.0f} images/s: x{h['batched_over_naive']:.0f}"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2000 images, 50 classes, 2 epochs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.epochs = 2000, 50, 2
    workdir = Path(tempfile.mkdtemp(prefix="delfx-bench-classify-"))
    try:
        features = workdir / "features"
        features.mkdir()
        start = time.perf_counter()
        labels_csv, _ = write_class_feature_set(features, args.images, args.classes)
        write_s = time.perf_counter() - start
        heads = [measure_head(head, features, labels_csv, workdir / f"clf-{head}", args.epochs,
                              naive_images=100 if args.quick else 300)
                 for head in ("pool", "flatten")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"images": args.images, "classes": args.classes, "write_s": write_s, "heads": heads}
    emit("classify", result, table_rows(result), args.json)
    return result


if __name__ == "__main__":
    main()
