"""What delfx 0.1.0 wrote still loads, and still means the same (tests/fixtures/legacy/).

The fixtures were written once by the code of the commit that added tests/fixtures/make_legacy.py
(RootSIFT features of a tiny sample-data set, their index, a classifier, a calibration). Later
versions must read them as they are: the header spellings of 0.1.0 (`version` for
`format_version`), the same model hash for the same model (so a resume keeps every shard), the
same classifier outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"


@pytest.fixture()
def legacy(tmp_path) -> Path:
    """A copy: tests never write into the fixtures."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_feature_set_verifies_and_reads(legacy):
    from delfx.store import FeatureSet, inspect, verify
    report = verify(legacy / "features")
    assert report.ok, report.problems
    summary = inspect(legacy / "features")
    assert summary["images"]["total"] == 10 and summary["schema_version"] == 2
    with FeatureSet(legacy / "features") as fs:
        record = fs.get("china/view_00")
        assert record.ok and record.descriptors.shape[1] == 40
        x, mask = fs.padded_batch(fs.image_ids[:3], max_features=60)
        assert x.shape == (3, 60, 40) and mask.any()


def test_plan_of_0_1_0_is_read(legacy):
    from delfx.extractor.plan import RunIdentity
    raw = json.loads((legacy / "features" / "plan.json").read_text())
    assert "version" in raw and "format_version" not in raw  # 0.1.0's spelling
    identity = RunIdentity.load(legacy / "features")
    assert identity.num_shards == 2 and identity.model_id.startswith("rootsift")


@pytest.mark.slow
def test_resume_keeps_every_legacy_shard(legacy, tmp_path):
    """Same images, same options: today's delfx builds the same model (same hash) and keeps
    both shards of the 0.1.0 feature set untouched."""
    from delfx.extractor.executors import InProcessExecutor
    from delfx.extractor.job import run_extraction
    from delfx.config import ExtractConfig
    from delfx.inputs import ImageItem
    from delfx.sample_data import write_sample_data
    data = write_sample_data(tmp_path / "data", landmarks=3, views=2, non_landmarks=1,
                             long_side=160, seed=0)
    items = [ImageItem(i.id, str(data.root / i.path)) for i in data.images]
    before = {p.name: p.read_bytes() for p in (legacy / "features").glob("shard-*.h5")}
    config = ExtractConfig(model="rootsift", max_features=60)
    summary = run_extraction(items, config, legacy / "features", 2, InProcessExecutor(),
                             progress=False)
    assert summary.shards_skipped == 2 and summary.shards_written == 0
    after = {p.name: p.read_bytes() for p in (legacy / "features").glob("shard-*.h5")}
    assert after == before


def test_index_loads_and_searches(legacy):
    from delfx.index.faiss_index import GalleryIndex, check_compatible
    from delfx.index.search import SearchConfig, search_one
    from delfx.store import FeatureSet
    assert json.loads((legacy / "index" / "index.json").read_text())["version"] == 1
    index = GalleryIndex(legacy / "index")
    with FeatureSet(legacy / "features") as fs:
        check_compatible(index.meta, fs, legacy / "index")
        query = fs.get("china/view_01")
        results = search_one(query, index, fs, SearchConfig.for_model(fs.manifest.model_id))
    assert results[0].gallery_id == "china/view_01"  # itself, first


def test_classifier_and_calibration_load(legacy):
    from delfx.classifier.model import load_classifier
    from delfx.recognition.calibration import Calibration
    from delfx.store import FeatureSet
    classifier = load_classifier(legacy / "classifier")
    with FeatureSet(legacy / "features") as fs:
        classifier.check_features(fs.manifest)
        x, mask = fs.padded_batch(fs.image_ids, classifier.max_features)
    probabilities = classifier.predict(x, mask)
    assert probabilities.shape == (10, len(classifier.labels))
    assert np.isfinite(probabilities).all()
    calibration = Calibration.load(legacy / "calibration.json")
    assert calibration.names == ["log_inliers", "log_margin", "inlier_ratio"]
    assert 0.0 <= calibration.score(np.array([[3.0, 2.0, 0.5]]))[0] <= 1.0


@pytest.mark.slow
def test_classify_runs_on_legacy_artifacts(legacy, tmp_path):
    from click.testing import CliRunner
    from delfx.cli import cli
    out = tmp_path / "sub.csv"
    result = CliRunner().invoke(cli, [
        "classify", str(legacy / "features"), str(legacy / "labels.csv"), str(legacy / "features"),
        "--out", str(out), "--mode", "fused", "--classifier", str(legacy / "classifier"),
        "--index", str(legacy / "index"), "--calibration", str(legacy / "calibration.json")])
    assert result.exit_code != 0 and "calibration is for features" in result.output  # retrieval's
    result = CliRunner().invoke(cli, [
        "classify", str(legacy / "features"), str(legacy / "labels.csv"), str(legacy / "features"),
        "--out", str(out), "--mode", "retrieval", "--index", str(legacy / "index"),
        "--calibration", str(legacy / "calibration.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["queries"] == 10
