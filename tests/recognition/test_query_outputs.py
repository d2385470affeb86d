"""search and classify line their outputs up with their inputs and check their labels,
on the legacy artifacts (tests/fixtures/legacy: RootSIFT features, an index)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.store import FeatureSet, ImageFeatures, Manifest, ShardWriter, shard_file_name

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


@pytest.fixture()
def world(tmp_path):
    shutil.copytree(LEGACY, tmp_path / "legacy")
    root = tmp_path / "legacy"
    # queries: one real image and one whose extraction failed, same model as the gallery
    with FeatureSet(root / "features") as fs:
        m = fs.manifest
        good = fs.get("china/view_01")
        (root / "queries").mkdir()
        manifest = Manifest(num_shards=1, model_id=m.model_id, model_hash=m.model_hash,
                            config=m.config, descriptor_dim=m.descriptor_dim,
                            descriptor_dtype=m.descriptor_dtype)
        with ShardWriter(root / "queries" / shard_file_name(0, 1), descriptor_dim=m.descriptor_dim,
                         descriptor_dtype=m.descriptor_dtype, model_id=m.model_id,
                         model_hash=m.model_hash, config=m.config) as writer:
            writer.add(ImageFeatures(**{**vars(good), "image_id": "q_good"}))
            writer.add(ImageFeatures.failed("q_broken", "corrupt", "test", descriptor_dim=40))
        manifest.record(root / "queries", writer.info)
    return root


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_search_writes_a_row_for_every_query(world, fmt, tmp_path):
    out = tmp_path / f"results.{fmt}"
    result = _run("search", world / "index", world / "features", world / "queries",
                  "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        rows = list(csv.DictReader(open(out)))
        assert rows[0]["query"] == "q_good" and rows[0]["gallery_id"] == "china/view_01"
        assert rows[-1] == {"query": "q_broken", "rank": "", "gallery_id": "", "inliers": "",
                            "votes": "", "matches": "", "score": ""}
    else:
        rows = [json.loads(line) for line in open(out)]
        assert rows[-1] == {"query": "q_broken", "rank": None, "gallery_id": None,
                            "inliers": None, "votes": None, "matches": None, "score": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "legacy"])  # no temp file


def test_classify_refuses_labels_of_no_gallery_image(world, tmp_path):
    (tmp_path / "other.csv").write_text("id,landmark_id\nnot_here,1\nnor_this,2\n")
    result = _run("classify", world / "features", tmp_path / "other.csv", world / "queries",
                  "--out", tmp_path / "sub.csv", "--mode", "retrieval", "--index", world / "index")
    assert result.exit_code == 1 and "no landmark label is for an image of the gallery" in result.output
    assert not (tmp_path / "sub.csv").exists()


def test_classify_warns_about_labels_the_gallery_lacks(world, tmp_path):
    labels = (world / "labels.csv").read_text() + "ghost/view_00,china\n"
    (tmp_path / "labels.csv").write_text(labels)
    result = _run("classify", world / "features", tmp_path / "labels.csv", world / "queries",
                  "--out", tmp_path / "sub.csv", "--mode", "fused", "--index", world / "index",
                  "--classifier", world / "classifier")
    assert result.exit_code == 0, result.output  # used to be a KeyError traceback in fused mode
    assert "1 of 11 labelled ids are not in the gallery" in result.stderr
    rows = list(csv.DictReader(open(tmp_path / "sub.csv")))
    assert [r["id"] for r in rows] == ["q_good", "q_broken"] and rows[1]["landmarks"] == ""
