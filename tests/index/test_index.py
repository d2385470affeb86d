"""FAISS index: build/load, refusal of mismatched features, --update, retrieval + verification."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.errors import DelfxError
from delfx.index.faiss_index import (GalleryIndex, auto_factory, build_index, check_compatible,
                                     check_gpu_factory, estimate_bytes, update_index)
from delfx.store import FeatureSet, Manifest
from delfx.store.synthetic import write_synthetic_feature_set


def test_auto_factory_and_estimates():
    assert auto_factory(10_000, 40) == "Flat"
    assert auto_factory(1_000_000, 40) == "IVF4096,SQ8"
    assert auto_factory(10_000_000, 40) == "IVF16384,SQ8"
    assert auto_factory(100_000_000, 40) == "IVF32768,PQ20"
    assert auto_factory(100_000_000, 64) == "IVF32768,PQ16"
    assert estimate_bytes("Flat", 1000, 40) == 160_000
    assert estimate_bytes("IVF1024,PQ20", 1_000_000, 40) == 28_000_000 + 1024 * 160
    check_gpu_factory("IVF1024,PQ20", 40)
    with pytest.raises(DelfxError, match="M in"):
        check_gpu_factory("IVF1024,PQ8", 40)  # 40/8 = 5-d sub-vectors: not on the GPU


@pytest.mark.parametrize("factory", ["Flat", "IVF64,PQ20"])
def test_build_load_search_round_trip(tmp_path, factory):
    write_synthetic_feature_set(tmp_path / "fs", num_images=120, num_shards=3, failed_every=10)
    meta = build_index(tmp_path / "fs", tmp_path / "index", factory=factory, nprobe=64)
    assert meta.factory == factory and meta.num_images == 120 and sorted(meta.shards) == [0, 1, 2]
    saved = json.loads((tmp_path / "index" / "index.json").read_text())
    assert saved["model"]["id"] == "synthetic" and saved["versions"]["faiss"]
    index = GalleryIndex(tmp_path / "index")
    with FeatureSet(tmp_path / "fs") as fs:
        assert index.index.ntotal == fs.manifest.totals()["features"]
        hits = 0
        for image_id in ("img00000000", "img00000055", "img00000118"):
            record = fs.get(image_id)
            distances, images, rows = index.search(record.descriptors, 1)
            found = [index.mapping.image_ids[i] for i in images[:, 0]]
            hits += sum(f == image_id for f in found)
            if factory == "Flat":  # exact: every descriptor finds itself, at its own row
                assert found == [image_id] * record.num_features
                np.testing.assert_array_equal(rows[:, 0], np.arange(record.num_features))
                assert distances.max() < 1e-3
        assert hits > 0.9 * sum(fs.get(i).num_features for i in ("img00000000", "img00000055", "img00000118"))


def test_mismatched_index_is_refused(tmp_path):
    write_synthetic_feature_set(tmp_path / "a", num_images=20, num_shards=2)
    write_synthetic_feature_set(tmp_path / "b", num_images=20, num_shards=2, seed=7)
    write_synthetic_feature_set(tmp_path / "c", num_images=20, num_shards=2, model_id="other")
    meta = build_index(tmp_path / "a", tmp_path / "index")
    for other, message in (("b", "other features"), ("c", "built from model")):
        with FeatureSet(tmp_path / other) as fs, pytest.raises(DelfxError, match=message):
            check_compatible(meta, fs, tmp_path / "index")
    with pytest.raises(DelfxError, match="other features"):
        update_index(tmp_path / "b", tmp_path / "index")
    with pytest.raises(DelfxError, match="not empty"):
        build_index(tmp_path / "a", tmp_path / "index")
    with pytest.raises(DelfxError, match="would need"):
        build_index(tmp_path / "a", tmp_path / "big", memory_limit=1000)
    (tmp_path / "index" / "index.json").write_text(json.dumps({"format": "delfx-index", "version": 9}))
    with pytest.raises(DelfxError, match="version 9"):
        GalleryIndex(tmp_path / "index")


def test_update_adds_new_shards_without_rebuild(tmp_path):
    full = write_synthetic_feature_set(tmp_path / "fs", num_images=60, num_shards=3)
    partial = Manifest.load(tmp_path / "fs")
    del partial.shards[2]  # as if shard 2 had not completed yet
    partial.save(tmp_path / "fs")
    first = build_index(tmp_path / "fs", tmp_path / "index")
    assert sorted(first.shards) == [0, 1]
    full.save(tmp_path / "fs")  # shard 2 completes
    meta, added = update_index(tmp_path / "fs", tmp_path / "index")
    assert added == [2] and meta.num_images == 60
    assert update_index(tmp_path / "fs", tmp_path / "index")[1] == []
    rebuilt = build_index(tmp_path / "fs", tmp_path / "rebuilt")
    assert rebuilt.num_vectors == meta.num_vectors
    updated, fresh = GalleryIndex(tmp_path / "index"), GalleryIndex(tmp_path / "rebuilt")
    with FeatureSet(tmp_path / "fs") as fs:
        query = fs.get("img00000002").descriptors  # lives in shard 2
        a = updated.search(query, 3)
        b = fresh.search(query, 3)
        assert [updated.mapping.image_ids[i] for i in a[1][:, 0]] == \
               [fresh.mapping.image_ids[i] for i in b[1][:, 0]] == ["img00000002"] * len(query)


@pytest.fixture(scope="module")
def sample_gallery(sample_dataset, tmp_path_factory):
    """Train images extracted (RootSIFT, in-process) and indexed through the CLI."""
    root = tmp_path_factory.mktemp("gallery")
    (root / "train.csv").write_text("id,path\n" + "".join(
        f"{i.id},{sample_dataset.root / i.path}\n" for i in sample_dataset.images if i.split == "train"))
    (root / "query.csv").write_text("id,path\n" + "".join(
        f"{i.id},{sample_dataset.root / i.path}\n" for i in sample_dataset.images if i.split == "query"))
    run = CliRunner()
    common = ["--model", "rootsift", "--max-side", "320", "--no-ray"]
    assert run.invoke(cli, ["extract", str(root / "train.csv"), str(root / "features"), "--shards", "2", *common],
                      catch_exceptions=False).exit_code == 0
    assert run.invoke(cli, ["build-index", str(root / "features"), str(root / "index")],
                      catch_exceptions=False).exit_code == 0
    return root


def test_synthetic_views_retrieve_their_landmark(sample_dataset, sample_gallery):
    """Query images (extracted on the fly with the gallery's model) find their landmark first."""
    result = CliRunner().invoke(cli, ["search", str(sample_gallery / "index"),
                                      str(sample_gallery / "features"),
                                      str(sample_gallery / "query.csv"), "--format", "csv"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    truth = {i.id: i.landmark_id for i in sample_dataset.images}
    first = {r["query"]: r for r in rows if r["rank"] == "1"}
    landmark_queries = [i.id for i in sample_dataset.images if i.split == "query" and i.landmark_id]
    for query in landmark_queries:
        assert truth[first[query]["gallery_id"]] == truth[query], (query, first[query])
        assert int(first[query]["inliers"]) >= 10
    distractors = [int(r["inliers"]) for q, r in first.items() if truth[q] is None]
    correct = [int(first[q]["inliers"]) for q in landmark_queries]
    assert max(distractors, default=0) < np.median(correct)


def test_match_draws_the_inliers(sample_dataset, tmp_path):
    same = [sample_dataset.root / i.path for i in sample_dataset.images if i.landmark_id == "china"][:2]
    other = next(sample_dataset.root / i.path for i in sample_dataset.images if i.landmark_id is None)
    out = tmp_path / "match.png"
    result = CliRunner().invoke(cli, ["match", str(same[0]), str(same[1]), "--out", str(out),
                                      "--model", "rootsift"], catch_exceptions=False)
    info = json.loads(result.stdout)
    assert info["inliers"] >= 30 and out.is_file()
    import cv2
    picture = cv2.imread(str(out))
    assert picture.shape[1] > picture.shape[0] and picture.std() > 10
    unrelated = json.loads(CliRunner().invoke(cli, ["match", str(same[0]), str(other), "--model",
                                                    "rootsift"], catch_exceptions=False).stdout)
    assert unrelated["inliers"] < info["inliers"] / 3
