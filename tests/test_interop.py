"""`delfx export` and `match --hloc-out` (delfx/interop.py), read back as hloc reads its
features.h5 and matches.h5 (hloc/utils/io.py: get_keypoints, find_pair, get_matches) and as
COLMAP's database is read (sqlite3 against the schema of COLMAP's scripts/python/database.py)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import h5py
import numpy as np
import pytest

from delfx.errors import DelfxError
from delfx.index.geometry import Matches, Verification
from delfx.interop import (MAX_IMAGE_ID, export_features, names_to_pair, write_hloc_matches)
from delfx.store import FeatureSet
from delfx.store.synthetic import write_synthetic_feature_set
from tests.support.cli import invoke

# COLMAP's tables and their columns, as its database.py creates them
COLMAP_COLUMNS = {
    "cameras": ["camera_id", "model", "width", "height", "params", "prior_focal_length"],
    "images": ["image_id", "name", "camera_id", "prior_qw", "prior_qx", "prior_qy", "prior_qz",
               "prior_tx", "prior_ty", "prior_tz"],
    "keypoints": ["image_id", "rows", "cols", "data"],
    "descriptors": ["image_id", "rows", "cols", "data"],
    "matches": ["pair_id", "rows", "cols", "data"],
    "two_view_geometries": ["pair_id", "rows", "cols", "data", "config", "F", "E", "H", "qvec",
                            "tvec"],
}


def hloc_get_matches(path, name0, name1):
    """hloc's get_matches (utils/io.py): (M, 2) indices and scores of a pair, either order."""
    with h5py.File(path, "r") as hfile:
        pair, reverse = names_to_pair(name0, name1), False
        if pair not in hfile:
            pair, reverse = names_to_pair(name1, name0), True
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    return (np.flip(matches, -1) if reverse else matches), scores[idx]


@pytest.fixture
def features(tmp_path):
    root = tmp_path / "features"
    write_synthetic_feature_set(root, num_images=7, num_shards=2, failed_every=4, seed=3)
    return root


def test_hloc_features_read_back_in_hlocs_layout(features, tmp_path):
    out = tmp_path / "features.h5"
    summary = export_features(features, out, "hloc")
    assert summary["images"] == 6 and summary["skipped"] == 1
    with FeatureSet(features) as fs, h5py.File(out, "r") as f:
        for record in fs:
            if not record.ok:
                assert record.image_id not in f
                continue
            group = f[record.image_id]
            np.testing.assert_array_equal(group["keypoints"].__array__(),
                                          record.locations[:, ::-1])  # x, y
            assert group["descriptors"].shape == (fs.descriptor_dim, record.num_features)
            np.testing.assert_array_equal(group["descriptors"][:, 0], record.descriptors[0])
            np.testing.assert_array_equal(group["scores"], record.scores)
            assert list(group["image_size"]) == [record.width, record.height]


def test_colmap_database_follows_colmaps_schema(features, tmp_path):
    with FeatureSet(features) as fs:
        ok = [r for r in fs if r.ok]
    names = [r.image_id for r in ok]
    a, b = ok[0], ok[1]
    n = min(a.num_features, b.num_features, 20)
    matches = Matches(np.arange(n), np.arange(n)[::-1], np.full(n, 0.5))
    mask = np.arange(n) % 3 == 0
    verification = Verification(int(mask.sum()), mask, np.eye(3), n, "affine")
    write_hloc_matches([(a.image_id, b.image_id, a.num_features, matches, verification)],
                       tmp_path / "matches.h5")
    got, scores = hloc_get_matches(tmp_path / "matches.h5", b.image_id, a.image_id)  # reversed
    np.testing.assert_array_equal(got, np.stack([np.arange(n)[::-1], np.arange(n)], 1))
    np.testing.assert_allclose(scores, 1 - 0.25 / 2)
    db_path = tmp_path / "database.db"
    summary = export_features(features, db_path, "colmap", matches_path=tmp_path / "matches.h5")
    assert (summary["images"], summary["pairs"], summary["verified_pairs"]) == (6, 1, 1)
    db = sqlite3.connect(db_path)
    for table, columns in COLMAP_COLUMNS.items():
        assert [row[1] for row in db.execute(f"PRAGMA table_info({table})")] == columns
    images = dict(db.execute("SELECT name, image_id FROM images"))
    assert sorted(images) == sorted(names)
    for record in ok:
        rows, cols, data = db.execute("SELECT rows, cols, data FROM keypoints WHERE image_id=?",
                                      (images[record.image_id],)).fetchone()
        keypoints = np.frombuffer(data, np.float32).reshape(rows, cols)
        np.testing.assert_allclose(keypoints, record.locations[:, ::-1] + 0.5)  # COLMAP origin
    width, height, params = db.execute(
        "SELECT width, height, params FROM cameras JOIN images USING (camera_id) "
        "WHERE name=?", (a.image_id,)).fetchone()
    assert (width, height) == (a.width, a.height)
    assert np.frombuffer(params, np.float64)[1:3].tolist() == [a.width / 2, a.height / 2]
    ia, ib = images[a.image_id], images[b.image_id]
    pair = min(ia, ib) * MAX_IMAGE_ID + max(ia, ib)
    rows, data = db.execute("SELECT rows, data FROM matches WHERE pair_id=?", (pair,)).fetchone()
    stored = np.frombuffer(data, np.uint32).reshape(rows, 2)
    expected = np.stack([np.arange(n), np.arange(n)[::-1]], 1)
    np.testing.assert_array_equal(stored, expected if ia < ib else expected[:, ::-1])
    rows, data, config = db.execute("SELECT rows, data, config FROM two_view_geometries "
                                    "WHERE pair_id=?", (pair,)).fetchone()
    assert rows == mask.sum() and config == 3
    db.close()


def test_exports_replace_only_their_own_files(features, tmp_path):
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"a user's file")
    with pytest.raises(DelfxError, match="exists: use --overwrite"):
        export_features(features, mine, "hloc")
    with pytest.raises(DelfxError, match="not written by delfx export"):
        export_features(features, mine, "hloc", overwrite=True)
    assert mine.read_bytes() == b"a user's file"
    out = tmp_path / "features.h5"
    export_features(features, out, "hloc")
    export_features(features, out, "hloc", overwrite=True)  # delfx's own: replaced
    db = tmp_path / "database.db"
    export_features(features, db, "colmap")
    with pytest.raises(DelfxError, match="not written by delfx export"):
        export_features(features, out, "colmap", overwrite=True)  # an hloc file is not a db
    export_features(features, db, "colmap", overwrite=True)
    assert not list(tmp_path.glob(".*.tmp"))


def test_match_exports_a_pair_for_hloc_and_colmap(sample_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = [sample_dataset.root / i.path for i in sample_dataset.images[:2]]
    for n, path in enumerate(source):
        shutil.copy(path, images / f"view{n}.jpg")
    a, b = images / "view0.jpg", images / "view1.jpg"
    model = ["--model", "rootsift", "--max-side", "240"]
    printed = json.loads(invoke("match", a, b, "--hloc-out", tmp_path / "hloc", *model))
    folder = tmp_path / "hloc"
    assert (folder / "pairs.txt").read_text() == "view0.jpg view1.jpg\n"
    got, _ = hloc_get_matches(folder / "matches.h5", "view0.jpg", "view1.jpg")
    assert len(got) == printed["matches"] > 0
    with h5py.File(folder / "matches.h5", "r") as f:
        assert int(f[names_to_pair("view0.jpg", "view1.jpg")]["inliers0"][()].sum()) == \
            printed["inliers"]
    with h5py.File(folder / "features.h5", "r") as f:
        assert f["view0.jpg"]["keypoints"].shape == (printed["features_a"], 2)
    # the same images extracted as a feature set with the same settings: COLMAP gets the
    # keypoints and the matches (their indices fit the keypoints)
    invoke("extract", images, tmp_path / "features", "--shards", "1", "--no-ray", *model)
    summary = json.loads(invoke("export", tmp_path / "features", tmp_path / "database.db",
                                "--format", "colmap", "--matches", folder / "matches.h5"))
    assert summary["pairs"] == summary["verified_pairs"] == 1
    (folder / "notes.txt").write_text("mine")
    from click.testing import CliRunner

    from delfx.cli import cli
    refused = CliRunner().invoke(cli, ["match", str(a), str(b), "--hloc-out", str(folder),
                                       *model])
    assert refused.exit_code == 1 and "another kind than delfx's hloc export" in refused.output
    assert (folder / "notes.txt").read_text() == "mine"


def test_search_writes_each_results_matches_for_hloc(sample_dataset, tmp_path):
    """search --matches-out: every result row's pair in matches.h5, with the very inliers and
    putative matches the search counted (verified again the same way)."""
    model = ["--model", "rootsift", "--max-side", "240", "--no-ray"]
    invoke("extract", sample_dataset.root / "train.csv", tmp_path / "gallery", "--shards", "2",
           *model)
    invoke("build-index", tmp_path / "gallery", tmp_path / "index")
    gallery = tmp_path / "gallery"
    summary = json.loads(invoke("search", tmp_path / "index", gallery, gallery, "--exclude-self",
                                "--top", "3", "--out", tmp_path / "results.jsonl",
                                "--matches-out", tmp_path / "matches.h5", "--json"))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["gallery_id"]]
    assert summary["matched_pairs"] == len(rows) > 10
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        for row in rows:
            group = f[names_to_pair(row["query"], row["gallery_id"])]
            assert int((group["matches0"][()] >= 0).sum()) == row["matches"]
            assert int(group["inliers0"][()].sum()) == row["inliers"]
    export = json.loads(invoke("export", gallery, tmp_path / "database.db", "--format", "colmap",
                               "--matches", tmp_path / "matches.h5"))
    unordered = {frozenset((r["query"], r["gallery_id"])) for r in rows}
    # both orders of a pair are hloc keys of their own; COLMAP holds each pair once
    assert export["pairs"] == len(unordered)
    assert export["reverse_pairs_skipped"] == len(rows) - len(unordered)


def test_hloc_features_import_back_into_a_feature_set_that_searches(features, tmp_path):
    from delfx.interop import import_hloc
    export_features(features, tmp_path / "features.h5", "hloc")
    summary = import_hloc(tmp_path / "features.h5", tmp_path / "imported", shards=2)
    assert summary["images"] == 6 and summary["model"] == "hloc:features.h5"
    with FeatureSet(features) as original, FeatureSet(tmp_path / "imported") as imported:
        assert sorted(imported.image_ids) == sorted(r.image_id for r in original if r.ok)
        for image_id in imported.image_ids:
            a, b = original.get(image_id), imported.get(image_id)
            np.testing.assert_allclose(b.locations, a.locations)
            unit = a.descriptors / np.linalg.norm(a.descriptors, axis=1, keepdims=True)
            np.testing.assert_allclose(b.descriptors, unit, atol=1e-6)
            assert (b.height, b.width) == (a.height, a.width)
    invoke("build-index", tmp_path / "imported", tmp_path / "index")
    found = invoke("search", tmp_path / "index", tmp_path / "imported", tmp_path / "imported",
                   "--top", "1")
    rows = [json.loads(line) for line in found.splitlines()]
    assert len(rows) == 6 and all(r["gallery_id"] == r["query"] for r in rows)  # itself, first
    with pytest.raises(DelfxError, match="not empty"):
        import_hloc(tmp_path / "features.h5", tmp_path / "imported")
