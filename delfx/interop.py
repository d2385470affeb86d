"""Features and matches in the layouts hloc and COLMAP read (`delfx export`, `match --export`).

hloc (Hierarchical-Localization; the layout of hloc/extract_features.py, match_features.py and
utils/io.py):

* features.h5: one group per image name (a relative path: names with "/" are nested groups,
  as hloc writes them) holding `keypoints` (N, 2) x, y in original-image pixels with pixel
  centres at integers, `descriptors` (D, N), `scores` (N,) and `image_size` (2,) = (width,
  height). delfx stores (y, x) at the same pixel convention: exported swapped.
* matches.h5: one group per pair, hloc's `names_to_pair(name0, name1)` (each name with "/"
  made "-", joined by "/"), holding `matches0` (N0,) (the index of each of image 0's keypoints'
  match in image 1, -1 for none) and `matching_scores0` (N0,). delfx adds `inliers0` (N0,) bool
  (RANSAC's verdict; hloc ignores it) and the attributes `ransac` and `transform_xy`.

COLMAP (the schema of COLMAP 3.8's scripts/python/database.py, which COLMAP since then opens):
one SIMPLE_RADIAL camera per image (focal 1.2 x the long side, the centre, no distortion: the
prior COLMAP itself assumes), the image by name, its keypoints (x + 0.5, y + 0.5: COLMAP's origin
is the corner of the first pixel), no descriptors (COLMAP's matchers want 128-d uint8 SIFT; its
reconstruction needs only keypoints and matches), and from a matches.h5 the putative matches
(`matches`) and, where inliers are recorded, the verified ones (`two_view_geometries`, config
UNCALIBRATED).

Every file is written beside its destination and renamed into place; an existing file is
replaced only with `overwrite`, and only when delfx wrote it (its `delfx_format` mark).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from delfx.errors import DelfxError
from delfx.store import FeatureSet, ImageFeatures

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("hloc", "colmap")
MARK = "delfx_format"  # the attribute (HDF5) or table (SQLite) that marks delfx's own exports
HLOC_FEATURES, HLOC_MATCHES, COLMAP_DB = ("delfx-hloc-features", "delfx-hloc-matches",
                                          "delfx-colmap-database")
MAX_IMAGE_ID = 2**31 - 1
SIMPLE_RADIAL, UNCALIBRATED = 2, 3

COLMAP_SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (
    camera_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, model INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, params BLOB,
    prior_focal_length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, name TEXT NOT NULL UNIQUE,
    camera_id INTEGER NOT NULL, prior_qw REAL, prior_qx REAL, prior_qy REAL, prior_qz REAL,
    prior_tx REAL, prior_ty REAL, prior_tz REAL,
    CONSTRAINT image_id_check CHECK(image_id >= 0 and image_id < 2147483647),
    FOREIGN KEY(camera_id) REFERENCES cameras(camera_id));
CREATE TABLE IF NOT EXISTS keypoints (
    image_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
    data BLOB, FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS descriptors (
    image_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
    data BLOB, FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS matches (
    pair_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
    data BLOB);
CREATE TABLE IF NOT EXISTS two_view_geometries (
    pair_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
    data BLOB, config INTEGER NOT NULL, F BLOB, E BLOB, H BLOB, qvec BLOB, tvec BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS index_name ON images(name);
"""


def names_to_pair(name0: str, name1: str) -> str:
    """hloc's key of a pair in matches.h5."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def pair_id(image_id0: int, image_id1: int) -> int:
    """COLMAP's pair id (the smaller image id first)."""
    a, b = sorted((image_id0, image_id1))
    return a * MAX_IMAGE_ID + b


# --- writing a file safely ------------------------------------------------------------------

def is_own(path: Path, mark: str) -> bool:
    """Whether `path` is a file delfx exported (`mark` recorded in it)."""
    try:
        if mark == COLMAP_DB:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute(f"SELECT value FROM {MARK}").fetchone()
            return row is not None and row[0] == mark
        import h5py
        with h5py.File(path, "r") as f:
            value = f.attrs.get(MARK)
        return (value.decode() if isinstance(value, bytes) else value) == mark
    except Exception:  # unreadable, another kind of file: not ours
        return False


def check_output(path: Path, mark: str, overwrite: bool) -> None:
    """Refuse to write `path` when it exists and may not be replaced (see the docstring)."""
    if path.exists():
        if not overwrite:
            raise DelfxError(f"{path} exists: use --overwrite to replace it, or another name")
        if path.is_dir() or not is_own(path, mark):
            raise DelfxError(f"{path} was not written by delfx export: refusing to replace it")


def _write_atomically(path: Path, mark: str, overwrite: bool, write) -> None:
    """`write(tmp_path)` beside `path`, then the temporary file renamed onto it."""
    path = Path(path)
    check_output(path, mark, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        check_output(path, mark, overwrite)  # again: it may have appeared meanwhile
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- hloc -----------------------------------------------------------------------------------

def _hloc_group(f, record: ImageFeatures) -> None:
    group = f.create_group(record.image_id)
    group.create_dataset("keypoints", data=np.ascontiguousarray(
        record.locations[:, ::-1], dtype=np.float32))
    group.create_dataset("descriptors", data=np.ascontiguousarray(record.descriptors.T))
    group.create_dataset("scores", data=np.asarray(record.scores, np.float32))
    group.create_dataset("image_size", data=np.array([record.width, record.height], np.int64))


def write_hloc_features(records: Iterable[ImageFeatures], path: Path, *, overwrite: bool = False,
                        model: dict[str, Any] | None = None) -> dict[str, int]:
    """features.h5 of `records` (failed ones are left out); how many were written and skipped."""
    import h5py
    counts = {"images": 0, "skipped": 0, "keypoints": 0}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs[MARK] = HLOC_FEATURES
            for key, value in (model or {}).items():
                f.attrs[f"delfx_model_{key}"] = str(value)
            for record in records:
                if not record.ok:
                    counts["skipped"] += 1
                    continue
                if record.image_id in f:
                    raise DelfxError(f"image {record.image_id!r} twice: names must be unique")
                _hloc_group(f, record)
                counts["images"] += 1
                counts["keypoints"] += record.num_features

    _write_atomically(path, HLOC_FEATURES, overwrite, write)
    return counts


def write_hloc_matches(pairs: Iterable[tuple[str, str, int, Any, Any]], path: Path, *,
                       overwrite: bool = False) -> int:
    """matches.h5 of (name0, name1, image 0's keypoint count, delfx Matches (side a is image
    0), Verification or None); the number of pairs."""
    import h5py
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs[MARK] = HLOC_MATCHES
            for name0, name1, num0, matches, verification in pairs:
                group = f.create_group(names_to_pair(name0, name1))
                matches0 = np.full(num0, -1, np.int32)
                scores0 = np.zeros(num0, np.float32)
                inliers0 = np.zeros(num0, bool)
                matches0[matches.query_idx] = matches.gallery_idx
                # cosine similarity of unit descriptors from their L2 distance
                scores0[matches.query_idx] = 1.0 - matches.distances ** 2 / 2
                if verification is not None:
                    inliers0[matches.query_idx[verification.inlier_mask]] = True
                    group.attrs["ransac"] = verification.model
                    if verification.transform is not None:
                        group.attrs["transform_xy"] = np.asarray(verification.transform,
                                                                 np.float64)
                group.create_dataset("matches0", data=matches0)
                group.create_dataset("matching_scores0", data=scores0)
                group.create_dataset("inliers0", data=inliers0)
                written += 1

    _write_atomically(path, HLOC_MATCHES, overwrite, write)
    return written


def read_hloc_matches(path: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(pair key, matches (M, 2) of keypoint indices, inlier mask (M,) or None) per pair of a
    matches.h5 (hloc's or delfx's), checked against its own shapes."""
    import h5py
    pairs = []
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "matches0" in obj:
                    m0 = np.asarray(obj["matches0"]).astype(np.int64)
                    if m0.ndim != 1:
                        raise DelfxError(f"{path}: {name}/matches0 is not one-dimensional")
                    idx = np.flatnonzero(m0 >= 0)
                    inliers = (np.asarray(obj["inliers0"], bool)[idx] if "inliers0" in obj
                               else None)
                    pairs.append((name, np.stack([idx, m0[idx]], axis=1), inliers))
            f.visititems(visit)
    except OSError as exc:
        raise DelfxError(f"{path}: not a readable HDF5 matches file ({exc})") from None
    return pairs


# --- COLMAP ---------------------------------------------------------------------------------

def write_colmap_database(records: Iterable[ImageFeatures], path: Path, *,
                          matches_path: Path | None = None, overwrite: bool = False
                          ) -> dict[str, int]:
    """A COLMAP database of `records`' keypoints (and a matches.h5's matches); counts."""
    pairs = read_hloc_matches(matches_path) if matches_path is not None else []
    counts = {"images": 0, "skipped": 0, "keypoints": 0, "pairs": 0, "verified_pairs": 0,
              "reverse_pairs_skipped": 0}

    def write(tmp: Path) -> None:
        tmp.unlink()  # sqlite makes its own file
        db = sqlite3.connect(tmp)
        try:
            db.executescript(COLMAP_SCHEMA)
            db.execute(f"CREATE TABLE {MARK} (value TEXT NOT NULL)")
            db.execute(f"INSERT INTO {MARK} VALUES (?)", (COLMAP_DB,))
            ids, sizes = {}, {}
            for record in records:
                if not record.ok:
                    counts["skipped"] += 1
                    continue
                w, h = record.width, record.height
                params = np.array([1.2 * max(w, h), w / 2, h / 2, 0.0], np.float64)
                camera = db.execute("INSERT INTO cameras VALUES (NULL, ?, ?, ?, ?, 0)",
                                    (SIMPLE_RADIAL, w, h, params.tobytes())).lastrowid
                image = db.execute("INSERT INTO images (image_id, name, camera_id) VALUES "
                                   "(NULL, ?, ?)", (record.image_id, camera)).lastrowid
                keypoints = np.ascontiguousarray(record.locations[:, ::-1] + 0.5, np.float32)
                db.execute("INSERT INTO keypoints VALUES (?, ?, ?, ?)",
                           (image, *keypoints.shape, keypoints.tobytes()))
                key = record.image_id.replace("/", "-")  # as a pair key names it
                if key in ids and pairs:
                    raise DelfxError(f"images {record.image_id!r} and another are one name in "
                                     f"hloc's pair keys ('/' read as '-'): rename one")
                ids[key] = image
                sizes[image] = record.num_features
                counts["images"] += 1
                counts["keypoints"] += record.num_features
            done: set[tuple[int, int]] = set()
            for key, matches, inliers in pairs:
                name0, _, name1 = key.partition("/")
                if name0 not in ids or name1 not in ids:
                    raise DelfxError(f"{matches_path}: pair {key} names an image the feature "
                                     f"set lacks")
                a, b = ids[name0], ids[name1]
                if len(matches) and (matches[:, 0].max() >= sizes[a] or
                                     matches[:, 1].max() >= sizes[b]):
                    raise DelfxError(f"{matches_path}: pair {key} indexes keypoints the "
                                     f"features lack (other features than these?)")
                if a > b:
                    matches, a, b = matches[:, ::-1], b, a
                if (a, b) in done:  # b, a came first: COLMAP holds one entry a pair (as hloc's
                    counts["reverse_pairs_skipped"] += 1  # own import keeps the first)
                    continue
                done.add((a, b))
                data = np.ascontiguousarray(matches, np.uint32)
                db.execute("INSERT INTO matches VALUES (?, ?, ?, ?)",
                           (pair_id(a, b), *data.shape, data.tobytes()))
                counts["pairs"] += 1
                if inliers is not None:
                    verified = np.ascontiguousarray(data[inliers])
                    db.execute("INSERT INTO two_view_geometries (pair_id, rows, cols, data, "
                               "config) VALUES (?, ?, ?, ?, ?)",
                               (pair_id(a, b), *verified.shape, verified.tobytes(),
                                UNCALIBRATED))
                    counts["verified_pairs"] += 1
            db.commit()
        finally:
            db.close()

    _write_atomically(path, COLMAP_DB, overwrite, write)
    return counts


def export_features(feature_dir: Path, out: Path, fmt: str, *, matches_path: Path | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """`delfx export`: a feature set as hloc's features.h5 or a COLMAP database."""
    if fmt not in EXPORT_FORMATS:
        raise DelfxError(f"--format must be one of {EXPORT_FORMATS}")
    if matches_path is not None and fmt != "colmap":
        raise DelfxError("--matches is for --format colmap (hloc reads matches.h5 as it is)")
    with FeatureSet(Path(feature_dir)) as fs:  # complete sets only: an export is a snapshot
        model = {"id": fs.manifest.model_id, "hash": fs.manifest.model_hash}
        if fmt == "hloc":
            counts = write_hloc_features(iter(fs), out, overwrite=overwrite, model=model)
        else:
            counts = write_colmap_database(iter(fs), out, matches_path=matches_path,
                                           overwrite=overwrite)
    return {"out": str(out), "format": fmt, "model": model["id"], **counts}


# --- importing hloc features ----------------------------------------------------------------

def read_hloc_features(path: Path) -> list[ImageFeatures]:
    """The images of an hloc features.h5 as delfx records: keypoints x, y -> locations y, x;
    descriptors (D, N) -> (N, D), L2-normalised (delfx's search and matching assume unit
    descriptors); scores (ones when absent); image_size (w, h). Checked against their shapes."""
    import h5py
    records: list[ImageFeatures] = []
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if not (isinstance(obj, h5py.Group) and "keypoints" in obj):
                    return
                if "descriptors" not in obj or "image_size" not in obj:
                    raise DelfxError(f"{path}: {name} has keypoints but no descriptors or "
                                     f"image_size")
                keypoints = np.asarray(obj["keypoints"], np.float32)
                descriptors = np.asarray(obj["descriptors"], np.float32)
                size = np.asarray(obj["image_size"]).reshape(-1)
                n = len(keypoints)
                if keypoints.ndim != 2 or keypoints.shape[1] != 2 or descriptors.ndim != 2 \
                        or descriptors.shape[1] != n or size.shape != (2,):
                    raise DelfxError(f"{path}: {name}: keypoints {keypoints.shape}, "
                                     f"descriptors {descriptors.shape}, image_size {size.shape} "
                                     f"are not hloc's (N, 2), (D, N), (2,)")
                scores = (np.asarray(obj["scores"], np.float32).reshape(-1) if "scores" in obj
                          else np.ones(n, np.float32))
                if scores.shape != (n,):
                    raise DelfxError(f"{path}: {name}: {scores.shape[0]} scores for {n} "
                                     f"keypoints")
                desc = descriptors.T
                norms = np.linalg.norm(desc, axis=1, keepdims=True)
                records.append(ImageFeatures(
                    name, locations=np.ascontiguousarray(keypoints[:, ::-1]),
                    descriptors=np.ascontiguousarray(desc / np.maximum(norms, 1e-12)),
                    scales=np.ones(n, np.float32), scores=scores, height=int(size[1]),
                    width=int(size[0])))
            f.visititems(visit)
    except OSError as exc:
        raise DelfxError(f"{path}: not a readable HDF5 features file ({exc})") from None
    if not records:
        raise DelfxError(f"{path}: no image group with keypoints (not an hloc features.h5?)")
    dims = {r.descriptors.shape[1] for r in records}
    if len(dims) != 1:
        raise DelfxError(f"{path}: descriptors of {sorted(dims)} dimensions: one model's only")
    return records


def import_hloc(features_path: Path, out_dir: Path, *, shards: int = 1) -> dict[str, Any]:
    """`delfx import --format hloc`: an hloc features.h5 as a delfx feature set (model id
    `hloc:<file name>`, its hash the file's sha256), for search, build-index and classify."""
    from delfx.digests import file_sha256
    from delfx.store import Manifest, ShardWriter, shard_file_name
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DelfxError(f"{out_dir} is not empty: import into a new folder")
    records = read_hloc_features(Path(features_path))
    digest = file_sha256(features_path)
    dim = records[0].descriptors.shape[1]
    model_id = f"hloc:{Path(features_path).name}"
    config = {"imported_from": "hloc", "file": Path(features_path).name, "sha256": digest,
              "descriptors": "L2-normalised on import"}
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(num_shards=shards, model_id=model_id, model_hash=digest, config=config,
                        descriptor_dim=dim, descriptor_dtype="float32", descriptor_norm="l2")
    for s in range(shards):
        with ShardWriter(out_dir / shard_file_name(s, shards), descriptor_dim=dim,
                         model_id=model_id, model_hash=digest, config=config, shard_index=s,
                         num_shards=shards) as writer:
            for record in records[s::shards]:  # images dealt in the file's (sorted) order
                writer.add(record)
        manifest.record(out_dir, writer.info)
    return {"out": str(out_dir), "format": "hloc", "model": model_id, "images": len(records),
            "keypoints": sum(r.num_features for r in records), "descriptor_dim": dim,
            "shards": shards}
