"""The evaluation data of the benchmark stages: real photos, planar pairs, sample data, subsets,
folds, and feature sets made from them. One module, so the eval stages share it instead of
importing each other.

The photos of ../shared/data are read in place (evaluation only, never copied).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import PROJECT_ROOT
from delfx.config import ExtractConfig
from delfx.inputs import ImageItem

NUM_SHARDS = 2  # more than one, so a feature set and an index mapping span shards


@dataclass(frozen=True)
class Photo:
    """A labelled photo of landmarks-dev; landmark None = shows no landmark."""

    image_id: str
    path: str
    landmark: str | None

def resolve_data_dir(data: Path | None) -> Path:
    """--data, else $DELFX_SHARED_DATA, else ../shared/data next to the project."""
    if data is not None:
        return Path(data)
    return Path(os.environ.get("DELFX_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

def load_photos(data_dir: Path) -> list[Photo]:
    """All photos of landmarks-dev/labels.csv, in file order (empty landmark -> None)."""
    root = Path(data_dir) / "landmarks-dev"
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        return [Photo(row["image"], str(root / row["image"]), row["landmark"].strip() or None)
                for row in csv.DictReader(handle)]

def select_subset(photos: Sequence[Photo], landmarks: int, per_landmark: int,
                  non_landmarks: int) -> list[Photo]:
    """A small deterministic subset: the first `landmarks` landmarks (file order) with their
    first `per_landmark` photos, and `non_landmarks` non-landmark photos from distinct scenes.

    Non-landmark photos come in pairs of one scene (01/02 of a WxBS folder); taking one per
    folder keeps the negatives truly unrelated to each other.
    """
    chosen: list[Photo] = []
    by_landmark: dict[str, list[Photo]] = {}
    for photo in photos:
        if photo.landmark is not None:
            by_landmark.setdefault(photo.landmark, []).append(photo)
    for name in list(by_landmark)[:landmarks]:
        chosen.extend(by_landmark[name][:per_landmark])
    scenes: set[str] = set()
    for photo in photos:
        scene = photo.image_id.rsplit("/", 1)[0]
        if photo.landmark is None and scene not in scenes and len(scenes) < non_landmarks:
            scenes.add(scene)
            chosen.append(photo)
    return chosen

def landmark_halves(photos: Sequence[Photo]) -> tuple[list[Photo], list[Photo]]:
    """(training half, evaluation half): landmarks alternate in file order; the non-landmark
    photos all go to the evaluation half (distractors there, never trained on)."""
    order = list(dict.fromkeys(p.landmark for p in photos if p.landmark is not None))
    train = set(order[0::2])
    return ([p for p in photos if p.landmark in train],
            [p for p in photos if p.landmark not in train])

def sample_data_photos(root: Path, landmarks: int = 10, views: int = 5, non_landmarks: int = 10,
                       long_side: int = 640, seed: int = 1) -> list[Photo]:
    """A `delfx sample-data` set as evaluation photos. Seed 1: other synthetic views (and other
    distractors) than the seed-0 set the shipped PCAs were fitted on."""
    from delfx.sample_data import write_sample_data
    data = write_sample_data(root, landmarks=landmarks, views=views, non_landmarks=non_landmarks,
                             long_side=long_side, seed=seed)
    return [Photo(i.id, str(data.root / i.path), i.landmark_id) for i in data.images]

def load_planar_pairs(data_dir: Path) -> list[dict[str, str]]:
    """Rows of planar/pairs.csv (paths relative to the data folder), plus 'group' Oxford|EVD."""
    with open(Path(data_dir) / "planar" / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["group"] = "EVD" if row["dataset"].startswith("EVD") else "Oxford"
    return rows

def quick_planar_pairs(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Two Oxford graf pairs sharing img1 (3 images) and the first EVD pair."""
    oxford = [r for r in rows if r["group"] == "Oxford"][:2]
    evd = [r for r in rows if r["group"] == "EVD"][:1]
    return oxford + evd

def planar_items(data_dir: Path, rows: Sequence[dict[str, str]]) -> list[ImageItem]:
    """Unique images of the planar pairs (graf img1 appears in several pairs: extract once)."""
    paths = dict.fromkeys(p for r in rows for p in (r["image_a"], r["image_b"]))
    return [ImageItem(p, str(Path(data_dir) / p)) for p in paths]

def quick_subset(photos: Sequence[Photo], landmarks: int = 8, per_landmark: int = 3,
                 non_landmarks: int = 8) -> list[Photo]:
    """The quick runs' subset: `select_subset` of eval_local_features with these defaults."""
    return select_subset(photos, landmarks, per_landmark, non_landmarks)

def extract(photos: Sequence[Photo], config: ExtractConfig, out_dir: Path) -> dict[str, Any]:
    """Extract the photos into a feature set with delfx's job loop, in this process."""
    from delfx.extractor.executors import InProcessExecutor
    from delfx.extractor.job import run_extraction
    from delfx.inputs import ImageItem
    items = [ImageItem(p.image_id, p.path) for p in photos]
    summary = run_extraction(items, config, out_dir, NUM_SHARDS, InProcessExecutor(),
                             progress=False)
    if summary.shards_failed:
        raise RuntimeError(f"extraction failed for shards {summary.shards_failed}")
    return {"model_id": summary.model["id"], "seconds": summary.seconds,
            "seconds_per_image": summary.seconds / max(summary.images_processed, 1),
            "ok": summary.ok, "failed_by_reason": summary.failed_by_reason,
            "features_per_image": summary.features / max(summary.ok, 1),
            "bytes": summary.output_bytes}

def make_folds(photos: Sequence[Photo], folds: int = 3) -> list[dict[str, Any]]:
    """Fold f: photo f (by file name) of each landmark is the query, the others the gallery;
    every non-landmark photo is a query of every fold."""
    by_landmark: dict[str, list[Photo]] = {}
    for p in photos:
        if p.landmark is not None:
            by_landmark.setdefault(p.landmark, []).append(p)
    distractors = sorted((p for p in photos if p.landmark is None), key=lambda p: p.image_id)
    out = []
    for f in range(folds):
        queries, gallery = [], []
        for name in sorted(by_landmark):
            members = sorted(by_landmark[name], key=lambda p: p.image_id)
            if f < len(members):
                queries.append(members[f])
            gallery += [m for i, m in enumerate(members) if i != f]
        out.append({"fold": f, "queries": queries + distractors, "gallery": gallery})
    return out

def write_subset(full, ids: Sequence[str], out_dir: Path) -> None:
    """Copy the records of `ids` from feature set `full` into a new 1-shard feature set with
    the same model identity and config."""
    from delfx.store import Manifest, ShardWriter, shard_file_name
    m = full.manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(num_shards=1, model_id=m.model_id, model_hash=m.model_hash,
                        config=m.config, descriptor_dim=m.descriptor_dim,
                        descriptor_dtype=m.descriptor_dtype)
    with ShardWriter(out_dir / shard_file_name(0, 1), descriptor_dim=m.descriptor_dim,
                     descriptor_dtype=m.descriptor_dtype, model_id=m.model_id,
                     model_hash=m.model_hash, config=m.config, shard_index=0,
                     num_shards=1) as writer:
        for image_id in ids:
            writer.add(full.get(image_id))
    manifest.record(out_dir, writer.info)

def sample_split_photos(root: Path, quick: bool) -> tuple[list[Photo], list[Photo]]:
    """(gallery, queries) of a fresh `delfx sample-data` set."""
    from delfx.sample_data import write_sample_data
    ds = write_sample_data(root, landmarks=4 if quick else 8, views=3 if quick else 5,
                           non_landmarks=4 if quick else 8, long_side=320 if quick else 480)
    photos = {i.id: Photo(i.id, str(ds.root / i.path), i.landmark_id) for i in ds.images}
    gallery = [photos[i.id] for i in ds.images if i.split == "train" and i.landmark_id]
    queries = [photos[i.id] for i in ds.images if i.split == "query" or not i.landmark_id]
    return gallery, queries

def parse_model_entry(text: str, default_side: int, stage: str) -> tuple[str, ExtractConfig, str]:
    """A `--models` entry 'name[@long_side][/descriptor_dim][:matcher]' -> (label, extraction
    config, matcher); e.g. 'rootsift', 'xfeat@1024', 'xfeat:mnn', 'delf-hybrid/0' (208-d, no
    PCA). The matcher defaults to auto (a learned model's LightGlue, else mutual nearest
    neighbours); the dimension to the model's default."""
    from delfx.config import MATCHERS, MODEL_NAMES
    spec, _, matcher = text.strip().partition(":")
    spec, _, dim = spec.partition("/")
    name, _, side = spec.partition("@")
    if name not in MODEL_NAMES or name in ("auto", "tfhub", "delf-resnet50"):
        raise SystemExit(f"{stage}: unknown model {name!r} in --models")
    if ((matcher or "auto") not in MATCHERS or (side and not side.isdigit())
            or (dim and not dim.isdigit())):
        raise SystemExit(f"{stage}: bad --models entry {text!r} "
                         f"(name[@long_side][/descriptor_dim][:matcher])")
    changes = {"descriptor_dim": int(dim)} if dim else {}
    config = ExtractConfig(model=name, max_side=int(side) if side else default_side, **changes)
    return text.strip(), config, matcher or "auto"


def write_labels(path: Path, photos: Sequence[Photo]) -> Path:
    path.write_text("id,path,landmark_id\n" + "".join(
        f"{p.image_id},{p.path},{p.landmark or ''}\n" for p in photos))
    return path
