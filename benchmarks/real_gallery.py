"""A gallery of real descriptors at scale, shared by the index_real and query_scale stages.

Views of photos (landmarks-dev, the planar sets, delfx sample-data) at several scales, crops
and rotations (VARIANTS) are written as JPEGs to a work folder and extracted with delfx's job
loop; the queries are OTHER photos of the same landmarks (never a view of one in the gallery)
and half of the non-landmark photos. A work folder is reused when it holds the same photos and
config (done.json), so the two stages, and reruns, extract once.

The photos of ../shared/data are read in place (evaluation only, never copied).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.data import (Photo, extract, load_photos, load_planar_pairs, planar_items,
                             sample_data_photos, sample_split_photos)
from delfx.config import ExtractConfig

log = logging.getLogger(__name__)

JPEG_QUALITY = 95


@dataclass(frozen=True)
class Variant:
    """One view of a gallery photo: a crop (fractions of the photo), a rotation, a long side."""

    name: str
    long_side: int
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0, y0, x1, y1
    rotation: float = 0.0  # degrees, counter-clockwise, about the centre (the frame is kept)


VARIANTS = (
    Variant("full1024", 1024), Variant("full768", 768), Variant("full512", 512),
    Variant("centre70", 1024, (0.15, 0.15, 0.85, 0.85)),
    Variant("topleft65", 1024, (0.0, 0.0, 0.65, 0.65)),
    Variant("bottomright65", 1024, (0.35, 0.35, 1.0, 1.0)),
    Variant("rot+15", 1024, rotation=15.0), Variant("rot-15", 768, rotation=-15.0),
    Variant("rot90", 640, rotation=90.0), Variant("centre50", 768, (0.25, 0.25, 0.75, 0.75)),
)
QUICK_VARIANTS = VARIANTS[:3] + VARIANTS[6:7]


def render_variant(rgb: np.ndarray, variant: Variant) -> np.ndarray:
    """The view of an RGB photo: crop, then rotate (rot90 turns the frame), then resize so the
    long side is variant.long_side (never upscaled)."""
    import cv2
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = variant.crop
    view = rgb[int(round(y0 * h)):int(round(y1 * h)), int(round(x0 * w)):int(round(x1 * w))]
    if variant.rotation == 90.0:
        view = np.ascontiguousarray(np.rot90(view))
    elif variant.rotation:
        vh, vw = view.shape[:2]
        m = cv2.getRotationMatrix2D((vw / 2, vh / 2), variant.rotation, 1.0)
        view = cv2.warpAffine(view, m, (vw, vh), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
    scale = min(1.0, variant.long_side / max(view.shape[:2]))
    if scale < 1.0:
        view = cv2.resize(view, (max(1, round(view.shape[1] * scale)),
                                 max(1, round(view.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return view


def write_views(photos: Sequence[Photo], variants: Sequence[Variant], folder: Path) -> list[Photo]:
    """Every variant of every photo as a JPEG under folder; ids '<photo id>#<variant>'."""
    import cv2

    from delfx.images import load_image
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number, photo in enumerate(photos):
        rgb = load_image(photo.path)
        for variant in variants:
            path = folder / f"{number:04d}_{variant.name}.jpg"
            if not path.is_file():
                bgr = cv2.cvtColor(render_variant(rgb, variant), cv2.COLOR_RGB2BGR)
                if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise RuntimeError(f"could not write {path}")
            out.append(Photo(f"{photo.image_id}#{variant.name}", str(path), photo.landmark))
    return out


def split_photos(data_dir: Path | None, sample_root: Path, quick: bool
                 ) -> tuple[list[Photo], list[Photo]]:
    """(gallery photos, query photos).

    With the shared data: per landmark of landmarks-dev its first photo (by id) is a query and
    the others are gallery photos; non-landmark scenes alternate (sorted) between query and
    gallery; the planar images and a sample-data set (ids 'sample/...') are gallery photos too.
    Without it (and with --quick): sample-data only, its query split as queries.
    """
    if data_dir is None:
        gallery, queries = sample_split_photos(sample_root, quick=True)
        return gallery, queries
    photos = load_photos(data_dir)
    by_landmark: dict[str, list[Photo]] = {}
    for p in photos:
        if p.landmark is not None:
            by_landmark.setdefault(p.landmark, []).append(p)
    gallery, queries = [], []
    for name in sorted(by_landmark):
        members = sorted(by_landmark[name], key=lambda p: p.image_id)
        queries.append(members[0])
        gallery += members[1:]
    distractors = sorted((p for p in photos if p.landmark is None), key=lambda p: p.image_id)
    queries += distractors[1::2]
    gallery += distractors[0::2]
    gallery += [Photo(f"planar/{i.image_id}", i.path, f"planar/{i.image_id.rsplit('/', 1)[0]}")
                for i in planar_items(data_dir, load_planar_pairs(data_dir))]
    gallery += [Photo(f"sample/{p.image_id}", p.path, p.landmark and f"sample/{p.landmark}")
                for p in sample_data_photos(sample_root, landmarks=10, views=5, non_landmarks=10)]
    return gallery, queries


def extract_once(photos: Sequence[Photo], config: ExtractConfig, out_dir: Path) -> dict[str, Any]:
    """Extract into out_dir, or reuse it when an earlier run of the same photos and config
    finished there (done.json records both)."""
    done = out_dir / "done.json"
    key = {"ids": [p.image_id for p in photos], "config": config.to_dict()}
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("key") == key:
            log.info("reusing the features in %s", out_dir)
            return previous["summary"]
        raise SystemExit(f"eval_index_real: {out_dir} holds features of other photos or another "
                         f"config; choose another --work")
    summary = extract(photos, config, out_dir)
    done.write_text(json.dumps({"key": key, "summary": summary}, indent=2) + "\n")
    return summary


def prepare(work: Path, data_dir: Path | None, quick: bool, config: ExtractConfig
            ) -> dict[str, Any]:
    """The gallery views and the queries, extracted (or reused) under work."""
    gallery_photos, query_photos = split_photos(data_dir, work / "sample-data", quick)
    variants = QUICK_VARIANTS if quick else VARIANTS
    views = write_views(gallery_photos, variants, work / "views")
    t0 = time.perf_counter()
    gallery = extract_once(views, config, work / "gallery")
    queries = extract_once(query_photos, config, work / "queries")
    return {"gallery_photos": len(gallery_photos), "variants": [v.name for v in variants],
            "gallery_images": len(views), "query_photos": len(query_photos),
            "gallery_extract": gallery, "query_extract": queries,
            "prepare_s": time.perf_counter() - t0,
            "landmarks": {p.image_id: p.landmark for p in [*views, *query_photos]}}
