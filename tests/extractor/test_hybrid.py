"""delf-hybrid: SIFT keypoints, RootSIFT ⊕ VGG16 block4 sampled there, shipped PCAs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.hybrid import CNN_DIM, RAW_DIM, combine, sample_cells
from delfx.nets.receptive_field import RECEPTIVE_FIELDS, ReceptiveField


def test_sample_cells_follows_the_receptive_field_centres():
    """A map whose cell (i, j) holds (i, j): sampling at pixel (y, x) must give back the
    continuous cell index (y - first_centre) / stride, clipped to the map."""
    rf = RECEPTIVE_FIELDS["vgg16"]  # stride 8, cell 0 centred at pixel 3.5
    h, w = 6, 9
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.float32)
    points = np.array([[3.5, 3.5], [11.5, 19.5], [7.5, 3.5 + 8 * 7.25], [0.0, 0.0],
                       [1000.0, 1000.0]], np.float32)
    got = sample_cells(grid, points, rf)
    np.testing.assert_allclose(got, [[0, 0], [1, 2], [0.5, 7.25], [0, 0], [h - 1, w - 1]],
                               atol=1e-6)
    # another layer geometry: the mapping must use the given receptive field, not VGG's
    other = ReceptiveField(size=291, stride=16, padding=145)  # ResNet50 conv4, centre 0
    np.testing.assert_allclose(sample_cells(grid, np.array([[16.0, 40.0]]), other), [[1, 2.5]])


def test_combine_gives_unit_vectors_and_weights_the_cnn_part():
    rng = np.random.default_rng(0)
    a = rng.random((5, 128)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = rng.normal(size=(5, CNN_DIM)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    out = combine(a, [b, b], np.sqrt(0.5))
    assert out.shape == (5, 128 + 2 * CNN_DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    # the CNN parts together weigh as much as RootSIFT
    np.testing.assert_allclose(out[:, :128], a / np.sqrt(2), atol=1e-6)
    heavy = combine(a, [b], 2.0)
    assert np.all(np.linalg.norm(heavy[:, 128:], axis=1) > np.linalg.norm(heavy[:, :128], axis=1))


@pytest.fixture(scope="module")
def hybrid():
    from delfx.extractor.models import create_model
    return create_model(ExtractConfig(model="delf-hybrid", max_side=320, max_features=300))


def test_hybrid_keypoints_are_rootsift_keypoints(hybrid):
    """Same keypoints, sizes and scores as rootsift; 40-d unit descriptors that differ from
    RootSIFT's (the CNN part contributes)."""
    from skimage.data import astronaut
    from delfx.extractor.models import create_model
    image = astronaut()
    ours = hybrid.extract(image, "a")
    sift = create_model(ExtractConfig(model="rootsift", max_side=320, max_features=300)
                        ).extract(image, "a")
    assert ours.num_features == sift.num_features > 100
    np.testing.assert_array_equal(ours.locations, sift.locations)
    np.testing.assert_array_equal(ours.scales, sift.scales)
    np.testing.assert_array_equal(ours.scores, sift.scores)
    assert ours.descriptors.shape == (ours.num_features, 40) and hybrid.descriptor_dim == 40
    np.testing.assert_allclose(np.linalg.norm(ours.descriptors, axis=1), 1, atol=1e-5)
    assert hybrid.model_id == "delf-hybrid-rootsift+vgg16-hed+pca40"
    raw = type(hybrid)(hybrid.config.replace(descriptor_dim=0), cnn_pca=hybrid.cnn_pca)
    full = raw.extract(image, "a").descriptors
    assert full.shape[1] == RAW_DIM
    # the RootSIFT half is RootSIFT (scaled by the concatenation's norm), the rest is the CNN
    from delfx.extractor.rootsift import detect_rootsift
    from delfx.extractor.base import prepare_image
    rootsift = detect_rootsift(prepare_image(image, raw.config)[0], 300)[1]
    np.testing.assert_allclose(full[:, :128] * np.sqrt(2), rootsift, atol=1e-5)
    assert np.abs(full[:, 128:]).sum(axis=1).min() > 0


def test_hybrid_config_errors():
    from delfx.extractor.hybrid import HybridModel
    from delfx.extractor.pca import fit_pca
    rng = np.random.default_rng(0)
    cnn = fit_pca(rng.normal(size=(200, 512)), CNN_DIM, whiten=True)
    with pytest.raises(DelfxError, match="needs a PCA"):
        HybridModel(ExtractConfig(model="delf-hybrid", descriptor_dim=40), cnn_pca=cnn)
    wrong = fit_pca(rng.normal(size=(200, 128)), 40)
    with pytest.raises(DelfxError, match=f"{RAW_DIM}-d"):
        HybridModel(ExtractConfig(model="delf-hybrid", descriptor_dim=40), cnn_pca=cnn, pca=wrong)
    with pytest.raises(DelfxError, match="CNN PCA"):
        HybridModel(ExtractConfig(model="delf-hybrid", descriptor_dim=0), cnn_pca=wrong)


def test_search_verifies_hybrid_keypoints_at_sift_precision(hybrid):
    from delfx.index.geometry import default_threshold
    assert default_threshold(hybrid.model_id) == default_threshold("rootsift+pca40") == 0.01
    assert default_threshold("delf-vgg16-hed+norm+pca40") == 0.03


def test_hybrid_hash_tracks_its_output(hybrid):
    from delfx.extractor.models import create_model
    other = create_model(hybrid.config.replace(max_features=299))
    same = create_model(hybrid.config.replace(scales=(1.0,), score_threshold=3.0))
    assert other.model_hash != hybrid.model_hash and same.model_hash == hybrid.model_hash


@pytest.mark.slow
def test_hybrid_through_extract_search_and_refused_export(sample_dataset, tmp_path):
    """extract (in-process) -> build-index -> search with queries extracted by the rebuilt
    model: every landmark query finds its landmark first; export-model refuses in one line."""
    root = sample_dataset.root
    train = [i for i in sample_dataset.images if i.split == "train"]
    query = [i for i in sample_dataset.images if i.split == "query" and i.landmark_id]
    (tmp_path / "train.csv").write_text("id,path\n" + "".join(f"{i.id},{root / i.path}\n" for i in train))
    (tmp_path / "query.csv").write_text("id,path\n" + "".join(f"{i.id},{root / i.path}\n" for i in query))
    run = CliRunner()
    common = ["--model", "delf-hybrid", "--max-side", "240", "--max-features", "300", "--no-ray"]
    result = run.invoke(cli, ["extract", str(tmp_path / "train.csv"), str(tmp_path / "features"),
                              "--shards", "1", *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert run.invoke(cli, ["build-index", str(tmp_path / "features"), str(tmp_path / "index")],
                      catch_exceptions=False).exit_code == 0
    result = run.invoke(cli, ["search", str(tmp_path / "index"), str(tmp_path / "features"),
                              str(tmp_path / "query.csv"), "--format", "csv"],
                        catch_exceptions=False)
    assert result.exit_code == 0
    import io
    rows = [r for r in csv.DictReader(io.StringIO(result.stdout)) if r["rank"] == "1"]
    truth = {i.id: i.landmark_id for i in sample_dataset.images}
    assert len(rows) == len(query)
    assert all(truth[r["gallery_id"]] == truth[r["query"]] for r in rows), rows
    summary = json.loads(run.invoke(cli, ["inspect", str(tmp_path / "features"), "--json"]).stdout)
    assert summary["model"]["id"] == "delf-hybrid-rootsift+vgg16-hed+pca40"
    refused = run.invoke(cli, ["export-model", str(tmp_path / "x"), "--model", "delf-hybrid"])
    assert refused.exit_code == 1 and "SIFT" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
