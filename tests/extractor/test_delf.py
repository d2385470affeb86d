"""The built-in DELF network: keypoint locations, retracing, export + TF-Hub loading."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from delfx.config import PRESETS, ExtractConfig
from delfx.errors import DelfxError
from delfx.nets.receptive_field import ReceptiveField

tf = pytest.importorskip("tensorflow")


def _blob_image(height, width, y, x, radius=6):
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 90, np.uint8)
    image[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = 250
    return image


@pytest.fixture(scope="module")
def vgg_raw():
    """The bundled-weights network, raw 512-d descriptors, single scale."""
    from delfx.extractor.delf import DelfModel
    config = ExtractConfig(model="delf-vgg16", scales=(1.0,), max_side=None, descriptor_dim=0,
                           max_features=5)
    return DelfModel(config)


@pytest.mark.parametrize("y,x", [(100, 60), (37, 141), (150, 150)])
def test_blob_lights_the_expected_location(vgg_raw, y, x):
    """The strongest cell of an image with one bright blob lies on the blob (within a cell)."""
    record = vgg_raw.extract(_blob_image(200, 180, y, x))
    top = record.locations[0]
    assert np.abs(top - [y, x]).max() <= vgg_raw.rf.stride, (top, (y, x))


def test_locations_map_back_through_resizing(vgg_raw):
    """The same blob found on a 2x larger image resized to the model size maps to 2x coordinates."""
    from delfx.extractor.delf import DelfModel
    config = vgg_raw.config.replace(image_size=200)  # squash to 200 x 200 first
    squashed = DelfModel(config)
    big = _blob_image(400, 360, 200, 120, radius=12)
    top = squashed.extract(big).locations[0]
    assert np.abs(top - [200, 120]).max() <= 2 * squashed.rf.stride


def test_no_retracing_across_sizes_and_batches():
    from delfx.extractor.delf import DelfModel
    model = DelfModel(ExtractConfig(model="delf-vgg16", descriptor_dim=0, max_side=None,
                                    scales=(0.5, 1.0), batch_size=1))
    rng = np.random.default_rng(0)
    for h, w in [(64, 80), (97, 61), (128, 128), (50, 200)]:
        model.extract(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    batched = DelfModel(ExtractConfig(model="delf-vgg16", descriptor_dim=0, image_size=96,
                                      max_side=None, scales=(0.5, 1.0), batch_size=4))
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(80, 60)] * 5 + [(50, 70)] * 2]
    records = batched.extract_batch(images, [str(i) for i in range(7)])
    assert model.trace_count == 1 and batched.trace_count == 1
    # batching does not change the features
    alone = batched.extract(images[5])
    np.testing.assert_allclose(alone.descriptors, records[5].descriptors, atol=1e-4)
    np.testing.assert_array_equal(alone.locations, records[5].locations)


def test_selection_threshold_and_global_top_k():
    from delfx.extractor.pyramid import LevelOutput, select_features
    rf = ReceptiveField(1, 1, 0)
    level_a = LevelOutput(1.0, 2, 2, np.eye(4, dtype=np.float32).reshape(2, 2, 4),
                          np.array([[5.0, 1.0], [3.0, 9.0]], np.float32))
    level_b = LevelOutput(0.5, 1, 1, np.ones((1, 1, 4), np.float32), np.array([[7.0]], np.float32))
    locations, descriptors, scales, scores = select_features([level_a, level_b], 2, 2, rf, 2.0, 3)
    assert scores.tolist() == [9.0, 7.0, 5.0]          # threshold drops 1.0; top-3 across levels
    assert scales.tolist() == [1.0, 2.0, 1.0]          # 1 / pyramid scale
    assert locations[0].tolist() == [1.0, 1.0]         # cell (1, 1) at scale 1
    assert locations[1].tolist() == [0.5, 0.5]         # the 1x1 level's cell covers the 2x2 image
    np.testing.assert_array_equal(descriptors[0], [0, 0, 0, 1])


@pytest.fixture(scope="module")
def small_delf():
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.models import shipped_pca_path
    from delfx.extractor.pca import PCAProjection
    config = PRESETS["fast"].replace(model="delf-vgg16", max_side=160, max_features=300)
    return DelfModel(config, pca=PCAProjection.load(shipped_pca_path("delf-vgg16")))


@pytest.fixture(scope="module")
def exported(small_delf, tmp_path_factory):
    from delfx.extractor.export import export_model
    return export_model(small_delf, tmp_path_factory.mktemp("export") / "delf")


def _images():
    from skimage import data
    return [data.astronaut(), data.coffee()[:301, :257], data.chelsea()]


def test_export_loads_through_tensorflow_hub_with_same_features(small_delf, exported):
    from delfx.extractor.export import read_export_metadata
    from delfx.extractor.hub import HubModel
    hub_model = HubModel(small_delf.config.replace(model="tfhub", model_path=str(exported)))
    assert hub_model.descriptor_dim == 40 and hub_model.model_id == "savedmodel:delf"
    assert read_export_metadata(exported)["model_hash"] == small_delf.model_hash
    for image in _images():
        ours, theirs = small_delf.extract(image), hub_model.extract(image)
        assert ours.num_features == theirs.num_features > 50
        np.testing.assert_allclose(theirs.locations, ours.locations, atol=1e-3)
        np.testing.assert_allclose(theirs.descriptors, ours.descriptors, atol=1e-4)
        np.testing.assert_allclose(theirs.scores, ours.scores, rtol=1e-4)
        np.testing.assert_array_equal(theirs.scales, ours.scales)


def test_official_handle_loads_from_a_preseeded_cache(small_delf, exported, tmp_path, monkeypatch):
    """The real loading code for https://tfhub.dev/google/delf/1, offline, via TFHUB_CACHE_DIR."""
    from delfx.extractor.hub import DEFAULT_HANDLE, HubModel
    from delfx.extractor.models import choose_auto, create_model
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    assert choose_auto(ExtractConfig())[0] != "tfhub"
    shutil.copytree(exported, tmp_path / hashlib.sha1(DEFAULT_HANDLE.encode()).hexdigest())
    name, reason = choose_auto(ExtractConfig())
    assert name == "tfhub" and "available locally" in reason
    model = create_model(small_delf.config.replace(model="auto"))
    assert isinstance(model, HubModel) and model.model_id == f"tfhub:{DEFAULT_HANDLE}"
    image = _images()[0]
    np.testing.assert_allclose(model.extract(image).descriptors, small_delf.extract(image).descriptors,
                               atol=1e-4)


def test_remote_handle_offline_fails_at_once_with_ways_out(tmp_path, monkeypatch):
    from delfx.extractor.hub import load_signature
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed loopback port: no traffic leaves
    with pytest.raises(DelfxError) as info:
        load_signature("https://tfhub.dev/google/delf/1")
    message = str(info.value)
    assert "\n" not in message and "offline" in message
    for way in ("--model-path", "TFHUB_CACHE_DIR", "--model rootsift"):
        assert way in message
    with pytest.raises(DelfxError, match="no saved_model.pb"):
        load_signature(str(tmp_path))


def test_model_hash_tracks_what_changes_features(small_delf):
    from delfx.extractor.delf import DelfModel
    other = DelfModel(small_delf.config.replace(max_features=299), pca=small_delf.pca)
    same = DelfModel(small_delf.config.replace(batch_size=1), pca=small_delf.pca)
    assert other.model_hash != small_delf.model_hash and same.model_hash == small_delf.model_hash
    assert small_delf.model_id == "delf-vgg16-hed+norm+pca40"


def test_bfloat16_close_to_float32():
    from delfx.extractor.delf import DelfModel
    config = ExtractConfig(model="delf-vgg16", descriptor_dim=0, scales=(1.0,), max_side=None,
                           max_features=50)
    image = _images()[1]
    fp32 = DelfModel(config).extract(image)
    bf16 = DelfModel(config.replace(precision="bfloat16")).extract(image)
    overlap = len({tuple(p) for p in fp32.locations} & {tuple(p) for p in bf16.locations})
    assert overlap >= 40  # the same strongest cells, up to bf16 rounding near the cut
