"""`delfx train-delf`: the attention head learns from image labels; the result loads everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.delf_model_dir import read_model_dir
from delfx.extractor.train_attention import AttentionTrainConfig, random_crops


def test_random_crops_are_multi_scale_and_seeded():
    image = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    a = random_crops(image, 6, 64, 0.3, 1.0, np.random.default_rng(1))
    b = random_crops(image, 6, 64, 0.3, 1.0, np.random.default_rng(1))
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len({c.tobytes() for c in a}) == 6
    with pytest.raises(DelfxError):
        AttentionTrainConfig(crop_min=0.8, crop_max=0.5)


@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory):
    """train-delf through the CLI on generated sample data: 4 landmarks, frozen backbone."""
    out = tmp_path_factory.mktemp("delf") / "model"
    result = CliRunner().invoke(cli, [
        "train-delf", str(sample_dataset.root / "labels.csv"), str(sample_dataset.root / "labels.csv"),
        str(out), "--epochs", "12", "--crops-per-image", "6", "--crop-size", "96",
        "--batch-size", "16", "--max-side", "240", "--validation-share", "0.25"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_a_model_directory(trained):
    out, printed = trained
    info = read_model_dir(out)
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["loss"]) == 12 and "val_loss" in curves and "learning_rate" in curves
    # the classification loss through the attention-weighted pooling must really go down
    assert curves["loss"][-1] < 0.7 * curves["loss"][0]
    assert curves["accuracy"][-1] > curves["accuracy"][0]
    assert info["trained"] == ["attention"] and info["base_weights"] == "hed"
    assert printed["classes"] == info["classes"] and len(info["classes"]) == 4
    for name in ("attention.weights.h5", "pca.h5", "curves.png", "delf_model.json"):
        assert (out / name).is_file(), name
    assert "re-fitted" in info["pca_source"]


@pytest.mark.slow
def test_trained_model_extracts_and_exports(trained, sample_dataset, tmp_path):
    """--model delf-vgg16 --model-path DIR: attention scores, the directory's PCA, and the
    official-signature export gives the same features."""
    from delfx.extractor.models import create_model
    out, _ = trained
    config = ExtractConfig(model="delf-vgg16", model_path=str(out), max_side=240,
                           scales=(0.7071, 1.0), max_features=200)
    model = create_model(config)
    assert model.network.score_mode == "attention" and model.score_threshold == 0.0
    assert model.model_id == "delf-vgg16-hed+attention+pca40"
    untrained = create_model(config.replace(model_path=None))
    assert model.model_hash != untrained.model_hash
    image_path = sample_dataset.root / sample_dataset.images[0].path
    from delfx.images import load_image
    image = load_image(str(image_path))
    ours = model.extract(image, "x")
    assert ours.num_features == 200 and ours.descriptors.shape[1] == 40
    assert np.all(np.diff(ours.scores) <= 0) and ours.scores.min() >= 0
    result = CliRunner().invoke(cli, ["export-model", str(tmp_path / "exported"), "--model",
                                      "delf-vgg16", "--model-path", str(out), "--max-side", "240",
                                      "--scales", "0.7071,1.0", "--max-features", "200"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "exported" / "delfx_model.json").read_text())
    assert meta["score"] == "attention"
    exported = create_model(config.replace(model="tfhub", model_path=str(tmp_path / "exported")))
    theirs = exported.extract(image, "x")
    np.testing.assert_allclose(theirs.locations, ours.locations, atol=1e-3)
    np.testing.assert_allclose(theirs.descriptors, ours.descriptors, atol=1e-3)


@pytest.mark.slow
def test_finetuning_the_last_block_and_refusals(sample_dataset, tmp_path):
    from delfx.extractor.models import create_model
    from delfx.extractor.train_attention import train_attention
    from delfx.labels import read_labels
    from delfx.inputs import list_images
    items = list_images(sample_dataset.root / "labels.csv")
    labels = read_labels(sample_dataset.root / "labels.csv")
    config = AttentionTrainConfig(finetune_last_block=True, epochs=2, crops_per_image=2,
                                  crop_size=64, max_side=160, validation_share=0.0, pca_dim=16)
    summary = train_attention(items, labels, tmp_path / "ft", config)
    assert summary["trained"] == ["attention", "block4"]
    assert (tmp_path / "ft" / "backbone.weights.h5").is_file()
    model = create_model(ExtractConfig(model="delf-vgg16", model_path=str(tmp_path / "ft"),
                                       descriptor_dim=16, max_side=160, scales=(1.0,)))
    assert model.model_id == "delf-vgg16-file+attention+pca16"
    assert model.extract(np.full((96, 96, 3), 90, np.uint8)).descriptors.shape[1] == 16
    with pytest.raises(DelfxError, match="not empty"):
        train_attention(items, labels, tmp_path / "ft", config)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DelfxError, match="refusing"):
        train_attention(items, labels, tmp_path / "other", config, overwrite=True)
    with pytest.raises(DelfxError, match="at least 2 landmarks"):
        train_attention(items, {i.image_id: None for i in items}, tmp_path / "none", config)
    with pytest.raises(DelfxError, match="train-delf"):
        create_model(ExtractConfig(model="delf-vgg16", model_path=str(tmp_path / "other")))
