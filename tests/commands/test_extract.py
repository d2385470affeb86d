"""CLI commands of the extractor stage: fit-pca, export-model."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from delfx.cli import cli


def test_fit_pca_then_use_it(sample_dataset, tmp_path):
    out = tmp_path / "pca.h5"
    result = CliRunner().invoke(cli, ["fit-pca", str(sample_dataset.root / "images"), "--out", str(out),
                                      "--model", "rootsift", "--dim", "32", "--max-side", "200",
                                      "--max-images", "10", "--descriptor-dim", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and out.is_file()
    from delfx.config import ExtractConfig
    from delfx.extractor.models import create_model
    from delfx.extractor.pca import PCAProjection
    pca = PCAProjection.load(out)
    assert (pca.in_dim, pca.out_dim) == (128, 32) and "10 images" in pca.source
    model = create_model(ExtractConfig(model="rootsift", pca_path=str(out), descriptor_dim=32))
    from skimage.data import astronaut
    record = model.extract(astronaut())
    assert record.descriptors.shape[1] == 32 and model.model_id == "rootsift+pca32"
    np.testing.assert_allclose(np.linalg.norm(record.descriptors, axis=1), 1, atol=1e-5)


def test_export_model_cli(tmp_path):
    out = tmp_path / "exported"
    result = CliRunner().invoke(cli, ["export-model", str(out), "--preset", "fast"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and (out / "saved_model.pb").is_file()
    meta = json.loads((out / "delfx_model.json").read_text())
    assert meta["model_id"] == "delf-vgg16-hed+norm+pca40" and meta["config"]["preset"] == "fast"
    again = CliRunner().invoke(cli, ["export-model", str(out)])
    assert again.exit_code == 1 and "not empty" in again.output
    wrong = CliRunner().invoke(cli, ["export-model", str(tmp_path / "x"), "--model", "rootsift"])
    assert wrong.exit_code == 1 and "built-in DELF" in wrong.output
