"""A small, labelled, landmark-style image set that can be generated offline on any machine.

The photographs come from packages delfx already depends on (scikit-learn and scikit-image ship
a handful of real photos), so the quickstart and the tests need neither the internet nor a
shared data directory. Each photo is one "landmark": a canonical view plus synthetic views made
with a random (seeded) homography, crop, scale, illumination change, blur/noise and JPEG
re-compression. The homography of every view is recorded so tests can check keypoint geometry.

Layout written under ``out_dir``::

    images/<landmark_id>/view_00.jpg      canonical view (long side == long_side)
    images/<landmark_id>/view_NN.jpg      synthetic views
    images/non_landmark/image_NN.jpg      distractors that show no landmark
    labels.csv, train.csv, query.csv      columns id,path,landmark_id (empty for non-landmarks)
    views.json                            per image id: path, split, landmark_id, source, size,
                                          canonical_id, homography (canonical -> image pixels)
    README.md                             what the set is; sources and licences of the photos
    .delfx-sample-data.json               marker: this directory was written by this module

Why one module of ~500 lines: it is one seeded recipe read top to bottom (photo sources, view
geometry, photometric changes, distractors, the files written), and "same arguments, same
bytes" depends on every step drawing from one random stream in one order; split up, the order
would hide across files. Nothing else in delfx imports its parts.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import operator
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

MARKER_NAME = ".delfx-sample-data.json"
NON_LANDMARK_DIR = "non_landmark"
_FORMAT = 1
_CANONICAL_QUALITY = 95
_MAX_LONG_SIDE = 4096
# labels.csv is written last: its presence is what marks a run as complete.
_OUTPUT_FILES = ("labels.csv", "train.csv", "query.csv", "views.json", "README.md")
_PROCEDURAL_KINDS = ("shapes", "clouds", "stripes", "noise")


@dataclass(frozen=True)
class _Source:
    name: str
    package: str  # distribution that ships the photo
    file: str  # path of the photo inside the installed package
    credit: str  # origin and licence, as the package's own docs state them


_SK = "scikit-image"
_LANDMARK_SOURCES = (
    _Source("china", "scikit-learn", "sklearn/datasets/images/china.jpg",
            "Photo by danielbuechele, https://www.flickr.com/photos/danielbuechele/6061409035/ ; "
            "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/), "
            "per sklearn/datasets/images/README.txt."),
    _Source("flower", "scikit-learn", "sklearn/datasets/images/flower.jpg",
            "Photo from https://www.flickr.com/photos/vultilion/6056698931/ ; CC BY 2.0 "
            "(https://creativecommons.org/licenses/by/2.0/), per sklearn/datasets/images/README.txt "
            "(which credits danielbuechele but links to the Flickr user vultilion)."),
    _Source("rocket", _SK, "skimage/data/rocket.jpg",
            "Launch of DSCOVR on Falcon 9, SpaceX, https://www.flickr.com/photos/spacexphotos/16511594820/ ; "
            "released into the public domain by SpaceX."),
    _Source("coffee", _SK, "skimage/data/coffee.png",
            "Coffee cup, courtesy of Pikolo Espresso Bar; CC0 by the photographer (Rachel Michetti)."),
    _Source("astronaut", _SK, "skimage/data/astronaut.png",
            "Eileen Collins, NASA Great Images database, https://flic.kr/p/r9qvLn ; "
            "no known copyright restrictions, public domain."),
    _Source("chelsea", _SK, "skimage/data/chelsea.png",
            "Chelsea the cat; CC0 by the photographer (Stefan van der Walt)."),
    _Source("camera", _SK, "skimage/data/camera.png",
            "Camera man (grayscale); CC0 by the photographer (Lav Varshney)."),
    _Source("immunohistochemistry", _SK, "skimage/data/ihc.png",
            "IHC staining of colonic glands, Center for Microscopy And Molecular Imaging (CMMI); "
            "no known copyright restrictions."),
    _Source("hubble_deep_field", _SK, "skimage/data/hubble_deep_field.jpg",
            "Hubble eXtreme Deep Field, NASA/HubbleSite; may be freely used, public domain."),
    _Source("retina", _SK, "skimage/data/retina.jpg",
            "Fundus photograph of a normal left eye (Mikael Häggström), Wikimedia Commons; CC0 1.0."),
)
# Photos that are never landmarks, so distractors cannot share content with any landmark.
# moon and page are left out: their docstrings state no licence.
_NON_LANDMARK_PHOTOS = (
    _Source("coins", _SK, "skimage/data/coins.png",
            "Greek coins from Pompeii, Brooklyn Museum Collection; no known copyright restrictions."),
    _Source("clock", _SK, "skimage/data/clock_motion.png",
            "Motion-blurred wall clock; public domain (photographer Stefan van der Walt)."),
    _Source("brick", _SK, "skimage/data/brick.png", "Brick wall, CC0Textures (Bricks25); CC0."),
    _Source("gravel", _SK, "skimage/data/gravel.png", "Gravel, CC0Textures (Gravel04); CC0."),
    _Source("grass", _SK, "skimage/data/grass.png", "Grass, DeviantArt (linolafett, Grass-01); CC0."),
    _Source("text", _SK, "skimage/data/text.png",
            "Wikipedia File:Corner.png; no known copyright restrictions, public domain."),
    _Source("cell", _SK, "skimage/data/cell.png",
            "Quantitative phase image of a cell (Mueller et al., Optics Express 2018); CC0."),
)


@dataclass(frozen=True)
class SampleImage:
    """One image of the sample set.

    Attributes:
        id: Stable id, e.g. ``china/view_00`` or ``non_landmark/image_03``.
        path: Path relative to the data set root, with ``/`` separators.
        landmark_id: The landmark shown, or None for a non-landmark.
        split: ``"train"`` or ``"query"``.
        homography: 3x3 H with ``x_image ~ H @ x_canonical`` (homogeneous pixel coordinates,
            pixel centres at integers) relative to ``<landmark_id>/view_00``; None for
            non-landmarks. Excluded from ``==`` because arrays do not compare to a bool.
        source: Package file (or ``procedural:<kind>``) the image was made from.
    """

    id: str
    path: str
    landmark_id: str | None
    split: str
    homography: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: str = ""


@dataclass(frozen=True)
class SampleDataSet:
    """A written sample data set: its root directory, its images and its CSV files."""

    root: Path
    images: tuple[SampleImage, ...]
    labels_csv: Path
    train_csv: Path
    query_csv: Path

    @property
    def views_json(self) -> Path:
        return self.root / "views.json"

    @property
    def landmark_ids(self) -> list[str]:
        """Landmark ids in generation order."""
        return list(dict.fromkeys(im.landmark_id for im in self.images if im.landmark_id))

    def split(self, name: str) -> tuple[SampleImage, ...]:
        """Images of one split (``"train"`` or ``"query"``)."""
        return tuple(im for im in self.images if im.split == name)


def available_landmarks() -> list[str]:
    """Names of the landmarks in the fixed order in which ``write_sample_data`` uses them."""
    return [s.name for s in _LANDMARK_SOURCES]


@functools.lru_cache(maxsize=None)
def _load_photo(source: _Source) -> np.ndarray:
    """Loads a packaged photo as read-only RGB uint8 (grayscale is replicated to 3 channels)."""
    # Imported lazily: both packages take a while to import and only this command needs them.
    if source.package == "scikit-learn":
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        names = [Path(f).name for f in bunch.filenames]
        img = bunch.images[names.index(Path(source.file).name)]
    else:
        from skimage import data

        img = getattr(data, source.name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
    img.setflags(write=False)
    return img


def _resize_long_side(img: np.ndarray, long_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def _affine(a: float = 1.0, b: float = 0.0, c: float = 0.0, d: float = 1.0, tx: float = 0.0,
            ty: float = 0.0) -> np.ndarray:
    return np.array([[a, b, tx], [c, d, ty], [0.0, 0.0, 1.0]])


def _random_geometry(rng: np.random.Generator, w: int, h: int, long_side: int) -> tuple[np.ndarray, int, int]:
    """Draws a view homography (perspective, rotation, crop, scale) that keeps the photo recognisable.

    Candidates are rejected until the photo covers >= 85% of the view (little border fill) and
    >= 55% of the photo stays visible; the distortion is halved every 10 rejections.
    """
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for attempt in range(40):
        strength = 0.5 ** (attempt // 10)
        jitter = rng.uniform(-0.12, 0.12, size=(4, 2)) * (w, h) * strength
        persp = cv2.getPerspectiveTransform(corners.astype(np.float32),
                                            (corners + jitter).astype(np.float32)).astype(np.float64)
        t = np.deg2rad(rng.uniform(-20.0, 20.0) * strength)
        rot = _affine(np.cos(t), -np.sin(t), np.sin(t), np.cos(t))
        rot = _affine(tx=cx, ty=cy) @ rot @ _affine(tx=-cx, ty=-cy)  # about the image centre
        hom = rot @ persp
        quad = _apply_h(hom, corners)
        lo, extent = quad.min(0), np.ptp(quad, axis=0)
        crop = extent * rng.uniform(0.65, 1.0, size=2)
        origin = lo + rng.uniform(0.0, 1.0, size=2) * (extent - crop)
        scale = rng.uniform(0.65, 1.15) * long_side / crop.max()
        hom = _affine(scale, 0, 0, scale) @ _affine(tx=-origin[0], ty=-origin[1]) @ hom
        out_w, out_h = (max(1, int(round(v))) for v in crop * scale)
        quad = _apply_h(hom, corners).astype(np.float32)
        frame = np.array([[-0.5, -0.5], [out_w - 0.5, -0.5], [out_w - 0.5, out_h - 0.5], [-0.5, out_h - 0.5]],
                         dtype=np.float32)
        inter, _ = cv2.intersectConvexConvex(quad, frame)
        if inter >= 0.85 * out_w * out_h and inter >= 0.55 * cv2.contourArea(quad):
            return hom / hom[2, 2], out_w, out_h
    # Unreachable in practice (strength is tiny by now); a plain rescale is always valid.
    s = long_side / max(w, h)
    return _affine(s, 0, 0, s), max(1, round(w * s)), max(1, round(h * s))


def _photometric(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, gain with a colour cast, a soft light falloff, then blur or sensor noise (or neither)."""
    img = (rgb.astype(np.float32) / 255.0) ** np.float32(rng.uniform(0.7, 1.4))
    gain = (rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
    h, w = img.shape[:2]
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    yy, xx = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    ramp = (1.0 + rng.uniform(0.0, 0.25) * (xx * direction[0] + yy * direction[1])).astype(np.float32)
    img = img * gain * ramp[:, :, None]
    degradation = rng.integers(3)
    if degradation == 1:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.5))
    elif degradation == 2:
        img = img + rng.normal(0.0, rng.uniform(0.008, 0.025), size=img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _synthetic_view(base: np.ndarray, rng: np.random.Generator,
                    long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (view RGB, H base->view)."""
    h, w = base.shape[:2]
    hom, out_w, out_h = _random_geometry(rng, w, h, long_side)
    # Area ratio ~ squared scale; pre-blur when shrinking so the warp does not alias.
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    scale = np.sqrt(cv2.contourArea(_apply_h(hom, corners).astype(np.float32)) / ((w - 1) * (h - 1)))
    src = base if scale >= 0.9 else cv2.GaussianBlur(base, (0, 0), 0.5 * np.sqrt(1.0 / scale**2 - 1.0))
    view = cv2.warpPerspective(src, hom, (out_w, out_h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    return _photometric(view, rng), hom


def _procedural(kind: str, rng: np.random.Generator, long_side: int) -> np.ndarray:
    """A seeded synthetic image (no photo content) of roughly landmark size."""
    long_ = int(rng.uniform(0.65, 1.15) * long_side)
    short = int(long_ * rng.uniform(0.6, 1.0))
    w, h = (long_, short) if rng.random() < 0.6 else (short, long_)
    if kind == "shapes":
        c0, c1 = rng.uniform(0, 1, size=(2, 3))
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = np.ascontiguousarray(np.broadcast_to((c0 * (1 - t) + c1 * t) * 255, (h, w, 3)), dtype=np.uint8)
        for _ in range(int(rng.integers(12, 30))):
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            x, y = (int(v) for v in rng.integers(0, (w, h)))
            r = int(rng.integers(4, max(5, long_ // 6)))
            shape = rng.integers(3)
            if shape == 0:
                cv2.circle(img, (x, y), r, colour, -1, cv2.LINE_AA)
            elif shape == 1:
                cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
            else:
                pts = rng.integers(-r, r, size=(int(rng.integers(3, 6)), 2)) + (x, y)
                cv2.fillPoly(img, [pts.astype(np.int32)], colour, cv2.LINE_AA)
        return img
    if kind == "clouds":  # multi-octave value noise mapped through random colours
        acc = np.zeros((h, w), np.float32)
        for octave in range(1, 8):
            grid = rng.random((2**octave + 1, 2**octave + 1)).astype(np.float32)
            acc += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * 0.75**octave
        acc = (acc - acc.min()) / (np.ptp(acc) + 1e-6)
        lo, hi = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        return np.clip((lo + (hi - lo) * acc[:, :, None]) * 255, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":  # a few sinusoidal gratings per channel
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(3):
            theta, freq = rng.uniform(0, np.pi), rng.uniform(0.02, 0.25)
            wave = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
            img += wave[:, :, None] * rng.uniform(0, 1, size=3).astype(np.float32)
        return np.clip((img - img.min()) / (np.ptp(img) + 1e-6) * 255, 0, 255).astype(np.uint8)
    noise = rng.normal(size=(h, w, 3)).astype(np.float32)  # "noise": blurred coloured noise
    noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(1.0, 4.0))
    return np.clip((noise - noise.mean()) / (noise.std() + 1e-6) * 50 + 128, 0, 255).astype(np.uint8)


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DelfxError("OpenCV could not encode a JPEG image")
    return buf.tobytes()


def _write_text(path: Path, text: str) -> None:
    # Write-then-rename so a crash never leaves a half-written CSV/JSON under the real name.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _csv_text(images: list[SampleImage]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "landmark_id"])
    writer.writerows([im.id, im.path, im.landmark_id or ""] for im in images)
    return buf.getvalue()


def _int_arg(name: str, value: object, lo: int, hi: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise DelfxError(f"sample-data: {name} must be an integer, got {value!r}") from None
    if number < lo or (hi is not None and number > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise DelfxError(f"sample-data: {name} must be {bound}, got {number}")
    return number


def _prepare_dir(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DelfxError(f"sample-data: {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if (root / MARKER_NAME).is_file():
            logger.info("Replacing previous sample data in %s", root)
            shutil.rmtree(root / "images", ignore_errors=True)
        elif not overwrite:
            raise DelfxError(f"sample-data: {root} is not empty and is not a previous sample-data output; "
                             "choose an empty or new directory, or pass overwrite=True (--overwrite)")
        else:
            logger.warning("Writing sample data into non-empty directory %s; other files are kept", root)
        # Drop labels.csv (the completion mark) first so an interrupted rewrite never looks complete.
        for name in _OUTPUT_FILES:
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _readme(sources: list[_Source], procedural: bool, args: dict) -> str:
    lines = [
        "# delfx sample data", "",
        "A small labelled landmark-style image set generated offline by `delfx sample-data` "
        "(`delfx.sample_data.write_sample_data`) with arguments "
        + ", ".join(f"{k}={v}" for k, v in args.items()) + ".", "",
        "Each landmark is one photo shipped by an installed Python package: `view_00` is the photo resized "
        "so its long side is `long_side`; the other views are synthetic (random homography, rotation, crop, "
        "scale, illumination change, blur or noise, JPEG re-compression). `views.json` gives, per image, "
        "the 3x3 homography H with x_view ~ H x_canonical (pixel centres at integer coordinates). "
        "Non-landmarks (`images/non_landmark/`) are other package photos that are never landmarks, "
        "or procedurally generated images.", "",
        "`labels.csv` lists all images (`id,path,landmark_id`; landmark_id empty for non-landmarks); "
        "`train.csv` holds the canonical and first views of each landmark, `query.csv` the other views "
        "and all non-landmarks.", "",
        "## Photo sources and licences (as stated by the packages)", "",
    ]
    lines += [f"- `{s.name}`: {s.package}, `{s.file}`. {s.credit}" for s in sources]
    if procedural:
        lines.append("- `procedural:*`: generated by delfx from a seeded random generator "
                     "(no photo content).")
    lines += ["", "The images here are derived (resized, warped, re-compressed) from those photos; the "
              "licences above apply to them (CC BY 2.0 requires attribution as given above).", ""]
    return "\n".join(lines)


def write_sample_data(out_dir: str | os.PathLike, *, landmarks: int = 8, views: int = 5,
                      non_landmarks: int = 8, long_side: int = 480, seed: int = 0,
                      overwrite: bool = False) -> SampleDataSet:
    """Writes the sample image set under ``out_dir``.

    Same arguments give byte-identical files. Each image draws from its own generator seeded with
    (seed, kind, index), so a landmark's views do not depend on how many landmarks are requested.

    Args:
        out_dir: Target directory; created if missing. A previous sample-data output is replaced.
        landmarks: Number of landmarks, taken in the order of ``available_landmarks()``.
        views: Synthetic views per landmark (in addition to the canonical view).
        non_landmarks: Number of distractor images without any landmark.
        long_side: Long side of the canonical views in pixels; synthetic views are 0.65-1.15x that.
        seed: Non-negative random seed.
        overwrite: Also write into a non-empty directory that is not a sample-data output
            (its other files are kept).

    Returns:
        The written data set.

    Raises:
        DelfxError: On invalid arguments or a non-empty foreign ``out_dir`` without ``overwrite``.
    """
    landmarks = _int_arg("landmarks", landmarks, 1, len(_LANDMARK_SOURCES))
    views = _int_arg("views", views, 1)
    non_landmarks = _int_arg("non_landmarks", non_landmarks, 0)
    long_side = _int_arg("long_side", long_side, 64, _MAX_LONG_SIDE)
    seed = _int_arg("seed", seed, 0)
    args = {"landmarks": landmarks, "views": views, "non_landmarks": non_landmarks, "long_side": long_side,
            "seed": seed}
    root = Path(out_dir)
    _prepare_dir(root, overwrite)
    _write_text(root / MARKER_NAME, json.dumps({"format": _FORMAT, "args": args}, indent=2) + "\n")

    images: list[SampleImage] = []
    meta: dict[str, dict] = {}

    def emit(image: SampleImage, rgb: np.ndarray, quality: int) -> None:
        target = root / image.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_encode_jpeg(rgb, quality))
        images.append(image)
        hom = None if image.homography is None else [[float(v) for v in row] for row in image.homography]
        meta[image.id] = {"path": image.path, "split": image.split, "landmark_id": image.landmark_id,
                          "source": image.source, "size": [int(rgb.shape[1]), int(rgb.shape[0])],
                          "canonical_id": f"{image.landmark_id}/view_00" if image.landmark_id else None,
                          "homography": hom}

    n_train_views = views - max(1, views // 2)  # at least one query view per landmark
    for li, src in enumerate(_LANDMARK_SOURCES[:landmarks]):
        canonical = _resize_long_side(_load_photo(src), long_side)
        for v in range(views + 1):
            if v == 0:
                rgb, hom, quality = canonical, np.eye(3), _CANONICAL_QUALITY
            else:
                rng = np.random.default_rng([seed, 0, li, v])
                rgb, hom = _synthetic_view(canonical, rng, long_side)
                quality = int(rng.integers(40, 96))
            hom = np.array(hom, dtype=np.float64)
            hom.setflags(write=False)
            emit(SampleImage(f"{src.name}/view_{v:02d}", f"images/{src.name}/view_{v:02d}.jpg", src.name,
                             "train" if v <= n_train_views else "query", hom, src.file), rgb, quality)

    used_photos: list[_Source] = []
    for i in range(non_landmarks):
        rng = np.random.default_rng([seed, 1, i])
        # Alternate real photos (realistic distractors) with procedural images once photos run out.
        if i % 2 == 0 and i // 2 < len(_NON_LANDMARK_PHOTOS):
            photo = _NON_LANDMARK_PHOTOS[i // 2]
            used_photos.append(photo)
            rgb, _ = _synthetic_view(_resize_long_side(_load_photo(photo), long_side), rng, long_side)
            source = photo.file
        else:
            kind = _PROCEDURAL_KINDS[(i - len(used_photos)) % len(_PROCEDURAL_KINDS)]
            rgb, source = _photometric(_procedural(kind, rng, long_side), rng), f"procedural:{kind}"
        image_id = f"{NON_LANDMARK_DIR}/image_{i:02d}"
        emit(SampleImage(image_id, f"images/{image_id}.jpg", None, "query", None, source), rgb,
             int(rng.integers(40, 96)))

    _write_text(root / "views.json", json.dumps(meta, indent=1) + "\n")
    _write_text(root / "train.csv", _csv_text([im for im in images if im.split == "train"]))
    _write_text(root / "query.csv", _csv_text([im for im in images if im.split == "query"]))
    _write_text(root / "README.md", _readme(list(_LANDMARK_SOURCES[:landmarks]) + used_photos,
                                            len(used_photos) < non_landmarks, args))
    _write_text(root / "labels.csv", _csv_text(images))
    logger.info("Wrote %d sample images (%d landmarks, %d non-landmarks) to %s",
                len(images), landmarks, non_landmarks, root)
    return load_sample_data(root)


def load_sample_data(root: str | os.PathLike) -> SampleDataSet:
    """Reads back a complete output of ``write_sample_data``.

    Raises:
        DelfxError: If ``root`` holds no complete sample data set (labels.csv is written last).
    """
    root = Path(root)
    if not (root / "labels.csv").is_file() or not (root / "views.json").is_file():
        raise DelfxError(f"{root} holds no complete sample data set (missing labels.csv or views.json); "
                         "run `delfx sample-data` again")
    meta = json.loads((root / "views.json").read_text(encoding="utf-8"))
    images = []
    for image_id, m in meta.items():
        hom = None
        if m["homography"] is not None:
            hom = np.array(m["homography"], dtype=np.float64)
            hom.setflags(write=False)
        images.append(SampleImage(image_id, m["path"], m["landmark_id"], m["split"], hom, m["source"]))
    return SampleDataSet(root, tuple(images), root / "labels.csv", root / "train.csv", root / "query.csv")
