"""The seed's global models side by side: GeM classifiers, the DELF-features bottleneck, and the
GeM shortlist + local verification against local voting alone, scored with GAP.

Systems (each trained per fold on the gallery images only):

* ``gem-vgg16`` (and ``gem-resnet50``, ``concat`` when ``--resnet-weights FILE`` is given: no
  ImageNet ResNet50 weights can be installed offline), trained with `train_global_model`
  (frozen backbone, GeM p + bottleneck head, random crops, BCE, Adam, ReduceLROnPlateau). As a
  classifier: prediction = top class of its head on the query, score = its probability.
* ``delf-bottleneck``: the local-feature classifier (`train_classifier`, pool head) on the
  same RootSIFT features the retrieval uses; `Recognizer` classifier mode.
* ``local voting``: `Recognizer` retrieval mode (every query keypoint votes through the FAISS
  index of the gallery's local descriptors, the 30 most-voted images are verified).
* ``gem shortlist K``: `Recognizer` shortlist mode: the K gallery images nearest by the
  gem-vgg16 descriptor are verified with the same local features and RANSAC.
* ``gem k-NN``: the nearest gallery image by gem-vgg16 descriptor alone, score = cosine (no
  verification): what the global descriptor knows on its own.

Retrieval-style systems predict the landmark of their best-verified gallery image, score =
inliers, and no landmark when nothing verified. GAP counts a prediction for a non-landmark
query as wrong.

Data:
* landmarks-dev (real photos), the folds of `eval_recognition`: fold f's queries are photo f of
  each landmark plus every non-landmark photo (distractors); the other photos are the gallery.
* `delfx sample-data` (8 landmarks, 5 synthetic views each + 8 non-landmarks): its train split
  is the gallery, its query split the queries (non-landmarks are queries too).

Throughput of all three GeM models side by side (``throughput``): each is trained for
`THROUGHPUT_EPOCHS` epochs on the sample-data gallery and embeds its queries; without
``--resnet-weights`` the ResNet50 branch gets random weights saved to a file (speed does not
depend on the weights; no quality figure is taken from them).

Also measured: training and inference throughput (whole images/s through each network; for
delf-bottleneck, images/s from features already extracted: its `*_features_per_s` keys), and the
extra bytes per image that storing the global descriptor adds to the shards (the same gallery
written with and without it).

    python -m benchmarks.eval_global                 # 3 folds + sample data (~10 min)
    python -m benchmarks.eval_global --quick         # 1 fold of a subset + small sample data
    python -m benchmarks.eval_global --json out.json --resnet-weights r50.weights.h5

The shared data is read in place (evaluation only, never copied). Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import emit, load_text
from benchmarks.data import (Photo, extract, load_photos, make_folds, quick_subset,
                             resolve_data_dir, sample_split_photos, write_labels, write_subset)
from delfx.config import ExtractConfig

MAX_SIDE = 512
SHORTLISTS = (10, 30)
THROUGHPUT_EPOCHS = 3
log = logging.getLogger("eval_global")


def _prediction(query: str, label: str | None, score: float) -> dict[str, Any]:
    return {"query": query, "label": label, "score": float(score)}


def run_fold(name: str, gallery: Sequence[Photo], queries: Sequence[Photo], full_dir: Path,
             root: Path, args) -> dict[str, Any]:
    """Train every system on `gallery`, answer `queries`; predictions keyed "<name>:<id>"."""
    from delfx.classifier.model import ClassifierConfig
    from delfx.recognition.recognize import RecognitionConfig, Recognizer
    from delfx.classifier.train import train_classifier
    from delfx.images import load_image
    from delfx.globalnet.model import GlobalConfig
    from delfx.globalnet.train import train_global_model
    from delfx.index.faiss_index import GalleryIndex, build_index
    from delfx.index.global_index import GlobalIndex
    from delfx.index.search import SearchConfig
    from delfx.store import FeatureSet

    root.mkdir(parents=True, exist_ok=True)
    labels = {p.image_id: p.landmark for p in gallery}
    labels_csv = write_labels(root / "gallery.csv", gallery)
    out: dict[str, Any] = {"name": name, "gallery_images": len(gallery), "queries": len(queries),
                           "systems": {}, "models": {}}
    systems = out["systems"]

    def qid(p: Photo) -> str:
        return f"{name}:{p.image_id}"

    # The GeM models, as classifiers; gem-vgg16 also provides the shortlist descriptors.
    models = ["gem-vgg16"] + (["gem-resnet50", "concat"] if args.resnet_weights else [])
    pixels = {p.image_id: load_image(p.path) for p in list(gallery) + list(queries)}
    vectors: dict[str, np.ndarray] = {}
    for model_name in models:
        config = GlobalConfig(model=model_name, backbone_weights=args.resnet_weights,
                              image_size=args.image_size, crop_size=args.crop_size,
                              epochs=args.epochs, validation_share=0.0, seed=0)
        start = time.perf_counter()
        result = train_global_model(labels_csv, labels_csv, root / model_name, config)
        model = result.model
        out["models"][model_name] = {
            "train_s": time.perf_counter() - start, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "classes": result.num_classes,
            "train_images": result.train_images,
            "train_images_per_s": result.train_samples_per_s,
            "inference_images_per_s": result.inference_samples_per_s,
            "descriptor_dim": model.descriptor_dim,
            "gem_p": float(np.mean([np.mean(model.embedder.get_layer(f"{b}_gem").get_weights()[0])
                                    for b in config.backbones]))}
        ids = [p.image_id for p in queries]
        model.embed([pixels[i] for i in ids[:16]])  # trace once, outside the timing
        start = time.perf_counter()
        embedded = model.embed([pixels[i] for i in ids])
        out["models"][model_name]["embed_images_per_s"] = len(ids) / (time.perf_counter() - start)
        probs = model.predict_descriptors(embedded)
        systems[f"{model_name} classifier"] = [
            _prediction(qid(p), model.labels.label(int(k)), probs[i, k])
            for i, (p, k) in enumerate(zip(queries, probs.argmax(axis=1)))]
        if model_name == "gem-vgg16":
            vectors.update(zip(ids, embedded))
            g_ids = [p.image_id for p in gallery]
            vectors.update(zip(g_ids, model.embed([pixels[i] for i in g_ids])))
            gem_model = model
        log.info("%s %s trained and scored", name, model_name)

    # Local features: the gallery subset with and without global descriptors (storage cost).
    with FeatureSet(full_dir) as full:
        write_subset(full, sorted(labels), root / "gallery_local")
        records = [full.get(p.image_id) for p in queries]
        gallery_records = [full.get(i) for i in sorted(labels)]
    for r in records + gallery_records:
        r.global_descriptor = vectors[r.image_id]
    _write_with_global(root / "gallery_local", root / "gallery", gallery_records,
                       gem_model.describe())
    bytes_plain = sum(p.stat().st_size for p in (root / "gallery_local").glob("shard-*.h5"))
    bytes_global = sum(p.stat().st_size for p in (root / "gallery").glob("shard-*.h5"))
    out["storage"] = {"bytes_per_image_without": bytes_plain / len(gallery),
                      "bytes_per_image_with": bytes_global / len(gallery),
                      "extra_bytes_per_image": (bytes_global - bytes_plain) / len(gallery),
                      "global_dim": gem_model.descriptor_dim}

    build_index(root / "gallery", root / "index")
    start = time.perf_counter()
    trained = train_classifier(root / "gallery", labels_csv, root / "bottleneck",
                               ClassifierConfig(validation_share=0.0, epochs=args.epochs * 2,
                                                seed=0))
    out["models"]["delf-bottleneck"] = {
        "train_s": time.perf_counter() - start, "epochs_run": trained.epochs_run,
        "classes": trained.num_classes, "train_images": trained.train_images,
        "train_features_per_s": trained.train_samples_per_s,
        "inference_features_per_s": trained.inference_samples_per_s}

    with FeatureSet(root / "gallery") as gallery_set:
        index = GalleryIndex(root / "index")
        global_index = GlobalIndex.from_feature_set(gallery_set)
        search = SearchConfig.for_model(gallery_set.manifest.model_id)
        runs = [("delf-bottleneck classifier", RecognitionConfig(mode="classifier", search=search),
                 {"classifier": trained.model}),
                ("local voting + verification", RecognitionConfig(mode="retrieval", search=search),
                 {"index": index})]
        runs += [(f"gem shortlist {k} + verification",
                  RecognitionConfig(mode="shortlist", shortlist=k, search=search),
                  {"global_index": global_index}) for k in SHORTLISTS]
        for label, config, kw in runs:
            recognizer = Recognizer(gallery_set, labels, config=config, **kw)
            rows, seconds = [], []
            for q in records:
                t0 = time.perf_counter()
                result = recognizer.recognize(q)
                seconds.append(time.perf_counter() - t0)
                rows.append(_prediction(f"{name}:{q.image_id}", result.label, result.score))
            systems[label] = rows
            out.setdefault("seconds_per_query", {})[label] = float(np.mean(seconds))
        # The global descriptor alone: nearest gallery image, score = cosine similarity.
        sims, ids = global_index.search(np.stack([vectors[q.image_id] for q in records]), 1)
        systems["gem k-NN (no verification)"] = [
            _prediction(f"{name}:{q.image_id}", labels.get(i[0]) if i else None,
                        s[0] if len(s) else 0.0) for q, s, i in zip(records, sims, ids)]
    return out


def _write_with_global(plain_dir: Path, out_dir: Path, records, global_model: dict) -> None:
    """The same gallery records as `plain_dir`, written with their global descriptors (v2)."""
    from delfx.store import FeatureSet, Manifest, ShardWriter, shard_file_name
    with FeatureSet(plain_dir) as plain:
        m = plain.manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(num_shards=1, model_id=m.model_id, model_hash=m.model_hash,
                        config=m.config, descriptor_dim=m.descriptor_dim,
                        descriptor_dtype=m.descriptor_dtype, global_model=global_model)
    with ShardWriter(out_dir / shard_file_name(0, 1), descriptor_dim=m.descriptor_dim,
                     descriptor_dtype=m.descriptor_dtype, model_id=m.model_id,
                     model_hash=m.model_hash, config=m.config, global_model=global_model
                     ) as writer:
        for record in records:
            writer.add(record)
    manifest.record(out_dir, writer.info)


def throughput(gallery: Sequence[Photo], queries: Sequence[Photo], root: Path, args
               ) -> dict[str, Any]:
    """Training and inference images/s of gem-vgg16, gem-resnet50 and concat, one run."""
    from delfx.images import load_image
    from delfx.globalnet.model import GlobalConfig
    from delfx.globalnet.train import train_global_model
    root.mkdir(parents=True, exist_ok=True)
    weights, random_weights = args.resnet_weights, False
    if weights is None:
        import keras
        weights, random_weights = str(root / "resnet50-random.weights.h5"), True
        keras.applications.ResNet50(include_top=False, weights=None).save_weights(weights)
    labels_csv = write_labels(root / "gallery.csv", gallery)
    images = [load_image(p.path) for p in queries]
    out: dict[str, Any] = {"epochs": THROUGHPUT_EPOCHS, "random_resnet_weights": random_weights,
                           "models": {}}
    for name in ("gem-vgg16", "gem-resnet50", "concat"):
        config = GlobalConfig(model=name, backbone_weights=weights, image_size=args.image_size,
                              crop_size=args.crop_size, epochs=THROUGHPUT_EPOCHS,
                              validation_share=0.0, seed=0)
        result = train_global_model(labels_csv, labels_csv, root / name, config)
        result.model.embed(images[:16])  # trace once, outside the timing
        start = time.perf_counter()
        result.model.embed(images)
        out["models"][name] = {
            "train_images_per_s": result.train_samples_per_s,
            "inference_images_per_s": len(images) / (time.perf_counter() - start),
            "descriptor_dim": result.model.descriptor_dim,
            "model_bytes": (root / name / "model.keras").stat().st_size}
        log.info("throughput of %s measured", name)
    return out


def score(folds: list[dict[str, Any]], truth: dict[str, str | None]) -> dict[str, Any]:
    from delfx.metrics import Prediction, accuracy, gap
    results = {}
    for system in folds[0]["systems"]:
        preds = [Prediction(p["query"], p["label"], p["score"])
                 for fold in folds for p in fold["systems"][system]]
        mine = {p.query: truth[p.query] for p in preds}
        results[system] = {"gap": gap(preds, mine), **accuracy(preds, mine)}
        seconds = [f["seconds_per_query"][system] for f in folds
                   if system in f.get("seconds_per_query", {})]
        if seconds:
            results[system]["seconds_per_query"] = float(np.mean(seconds))
    return results


def evaluate_dataset(label: str, folds: list[tuple[str, list[Photo], list[Photo]]],
                     photos: Sequence[Photo], workdir: Path, args) -> dict[str, Any]:
    config = ExtractConfig(model="rootsift", max_side=MAX_SIDE)
    extraction = extract(photos, config, workdir / "features")
    runs = [run_fold(name, gallery, queries, workdir / "features", workdir / name, args)
            for name, gallery, queries in folds]
    truth = {f"{name}:{p.image_id}": p.landmark for name, _, queries in folds for p in queries}
    models: dict[str, Any] = {}
    for run in runs:
        for model, facts in run["models"].items():
            models.setdefault(model, []).append(facts)
    return {"dataset": label, "folds": len(folds), "extraction": extraction,
            "landmark_queries": sum(1 for t in truth.values() if t),
            "distractor_queries": sum(1 for t in truth.values() if not t),
            "results": score(runs, truth),
            "models": {m: _mean_facts(f) for m, f in models.items()},
            "storage": _mean_facts([r["storage"] for r in runs]),
            "runs": [{k: v for k, v in r.items() if k != "systems"} for r in runs]}


def _mean_facts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("protocol", report["protocol"])]
    for ds in report["datasets"]:
        name = ds["dataset"]
        rows.append((name, f"{ds['folds']} fold(s), {ds['landmark_queries']} landmark + "
                     f"{ds['distractor_queries']} non-landmark queries; RootSIFT "
                     f"{ds['extraction']['features_per_image']:.0f} features/photo"))
        rows.append((f"{name}: system", "GAP   | top-1 | non-landmark rejected | s/query"))
        for system, r in ds["results"].items():
            per_query = r.get("seconds_per_query")
            rows.append((f"{name}: {system}", f"{r['gap']:.3f} | {r['top1']:.3f} | "
                         f"{r['non_landmark_rejection']:.3f}                 | " +
                         ("-" if per_query is None else f"{per_query:.3f}")))
        for model, m in ds["models"].items():
            if "train_images_per_s" in m:
                rows.append((f"{name}: {model}", f"training {m['train_images_per_s']:.1f} images/s, "
                             f"inference {m['embed_images_per_s']:.1f} images/s, "
                             f"{m['epochs_run']:.0f} epochs, {m['train_s']:.0f} s, "
                             f"{m['descriptor_dim']:.0f}-d, mean GeM p {m['gem_p']:.2f}"))
            else:
                rows.append((f"{name}: {model}", f"training {m['train_features_per_s']:.0f} "
                             f"images/s, inference {m['inference_features_per_s']:.0f} images/s "
                             f"(from stored features), {m['epochs_run']:.0f} epochs"))
        s = ds["storage"]
        rows.append((f"{name}: storage", f"{s['bytes_per_image_without']:.0f} B/image without, "
                     f"{s['bytes_per_image_with']:.0f} with the {s['global_dim']:.0f}-d global "
                     f"descriptor: +{s['extra_bytes_per_image']:.0f} B/image"))
    t = report.get("throughput")
    if t:
        for name, m in t["models"].items():
            rows.append((f"throughput: {name}", f"training {m['train_images_per_s']:.1f} images/s, "
                         f"inference {m['inference_images_per_s']:.1f} images/s, "
                         f"{m['descriptor_dim']}-d, model.keras {m['model_bytes'] / 1e6:.0f} MB"))
        rows.append(("throughput: note", f"{t['epochs']} epochs on the sample-data gallery; "
                     + ("random ResNet50 weights (speed only)" if t["random_resnet_weights"]
                        else "given ResNet50 weights")))
    rows.append(("skipped", report["skipped"] or "nothing"))
    rows.append(("load average", load_text(report["load_average"])))
    rows.append(("wall time", f"{report['seconds']:.0f} s"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 fold of a landmarks-dev subset and a small sample set")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--resnet-weights", default=None,
                        help="ResNet50 .weights.h5: also evaluate gem-resnet50 and concat")
    parser.add_argument("--epochs", type=int, default=None, help="[30; quick: 15]")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the side-by-side throughput of the three GeM models")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (15 if args.quick else 30)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start_all, load_before = time.perf_counter(), os.getloadavg()
    datasets, skipped = [], []
    if not args.resnet_weights:
        skipped.append("gem-resnet50 and concat quality: no --resnet-weights (no ImageNet ResNet50 "
                       "weights can be installed offline)")
    with tempfile.TemporaryDirectory(prefix="eval-global-") as tmp:
        workdir = args.workdir or Path(tmp)
        data_dir = resolve_data_dir(args.data)
        if (data_dir / "landmarks-dev" / "labels.csv").is_file():
            photos = load_photos(data_dir)
            if args.quick:
                photos = quick_subset(photos)
            folds = [(f"fold{f['fold']}", f["gallery"], f["queries"])
                     for f in make_folds(photos)[:1 if args.quick else 3]]
            datasets.append(evaluate_dataset("landmarks-dev", folds, photos,
                                             workdir / "landmarks-dev", args))
        else:
            skipped.append(f"landmarks-dev: not found under {data_dir}")
        gallery, queries = sample_split_photos(workdir / "sample" / "data", args.quick)
        datasets.append(evaluate_dataset("sample-data", [("sample", gallery, queries)],
                                         gallery + queries, workdir / "sample", args))
        speed = (None if args.no_throughput else
                 throughput(gallery, queries, workdir / "throughput", args))
    protocol = (f"GeM models: frozen backbone, image {args.image_size}² squashed, random crops "
                f"{args.crop_size}² + flips, {args.epochs} epochs max, BCE + Adam + "
                f"ReduceLROnPlateau, seed 0; delf-bottleneck: pool head, {args.epochs * 2} epochs; "
                f"local features RootSIFT max_side {MAX_SIDE}; verification MNN + affine RANSAC; "
                f"landmarks-dev folds as eval_recognition, GAP pooled over folds")
    report = {"protocol": protocol, "quick": args.quick, "datasets": datasets,
              "throughput": speed,
              "skipped": "; ".join(skipped),
              "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
              "seconds": time.perf_counter() - start_all}
    emit("eval_global" + (" (quick)" if args.quick else ""), report, table_rows(report), args.json)
    return report


if __name__ == "__main__":
    main()
