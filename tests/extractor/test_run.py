"""The extraction loop: decoding failures recorded with their reason, batching, model errors."""

from __future__ import annotations

import numpy as np

from tests.support.broken_images import write_broken_images, write_good_images
from delfx.config import ExtractConfig
from delfx.extractor.base import FeatureModel
from delfx.extractor.run import EXTRACTION_ERROR, extract_items
from delfx.inputs import ImageItem, list_images


class CountingModel(FeatureModel):
    """A cheap deterministic model that records how it was called (and can be made to fail)."""

    name = "counting"
    descriptor_dim = 4

    def __init__(self, config, fail_on_height=None):
        super().__init__(config)
        self.calls: list[int] = []
        self.fail_on_height = fail_on_height

    @property
    def model_id(self):
        return "counting"

    def weights_digest(self):
        return ""

    def _extract(self, image):
        if image.shape[0] == self.fail_on_height:
            raise RuntimeError("boom")
        n = 3
        locations = np.tile([[image.shape[0] / 2, image.shape[1] / 2]], (n, 1))
        return locations, np.ones((n, 4)), np.ones(n), np.arange(n, 0, -1)

    def _extract_many(self, images):
        self.calls.append(len(images))
        return [self._extract(image) for image in images]


def test_every_file_gets_a_record_in_input_order(tmp_path):
    good = write_good_images(tmp_path / "good")
    broken = write_broken_images(tmp_path / "bad", min_side=2)
    items = list_images(tmp_path)
    model = CountingModel(ExtractConfig(min_side=2, max_side=None))
    records = list(extract_items(model, items))
    assert [r.image_id for r in records] == [i.image_id for i in items]
    by_id = {r.image_id: r for r in records}
    for name, (h, w) in good.items():
        record = by_id[f"good/{name}"]
        assert record.ok and (record.height, record.width) == (h, w) and record.num_features == 3
    for name, reason in broken.items():
        record = by_id[f"bad/{name}"]
        if reason == "ok":
            assert record.ok
        else:
            assert (record.status, record.reason) == ("failed", reason), name
            assert record.message and record.num_features == 0


def test_batches_group_images_of_one_model_size(tmp_path):
    from PIL import Image
    for i, size in enumerate([(40, 30)] * 5 + [(20, 60)] * 2 + [(40, 30)]):
        Image.new("RGB", size, (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    items = list_images(tmp_path)
    model = CountingModel(ExtractConfig(max_side=None))
    list(extract_items(model, items))
    assert model.calls == [1] * 8  # batch_size 1: one by one
    squashed = CountingModel(ExtractConfig(image_size=32, max_side=None, batch_size=3))
    records = list(extract_items(squashed, items))
    assert squashed.calls == [3, 3, 2]  # image_size: every image has the model size, batches fill
    assert all(r.ok for r in records)


def test_model_error_fails_only_that_image(tmp_path):
    from PIL import Image
    for i, height in enumerate([30, 31, 30, 30]):
        Image.new("RGB", (40, height)).save(tmp_path / f"{i}.png")
    model = CountingModel(ExtractConfig(max_side=None), fail_on_height=31)
    records = list(extract_items(model, list_images(tmp_path)))
    assert [r.ok for r in records] == [True, False, True, True]
    assert records[1].reason == EXTRACTION_ERROR and "boom" in records[1].message
    assert (records[1].height, records[1].width) == (31, 40)


def test_real_models_on_sample_data(sample_dataset):
    """RootSIFT (shipped PCA-40) and the built-in DELF give unit 40-d descriptors on real photos."""
    from delfx.extractor.models import create_model
    items = [ImageItem(i.id, str(sample_dataset.root / i.path)) for i in sample_dataset.images[:4]]
    for name in ("rootsift", "delf-vgg16"):
        model = create_model(ExtractConfig(model=name, max_side=240, scales=(0.7071, 1.0)))
        for record in extract_items(model, items):
            assert record.ok and record.num_features > 20, (name, record.image_id)
            assert record.descriptors.shape[1] == 40
            np.testing.assert_allclose(np.linalg.norm(record.descriptors, axis=1), 1, atol=1e-5)
            assert (record.locations >= 0).all()
            assert (record.locations[:, 0] <= record.height - 1).all()
            assert (record.locations[:, 1] <= record.width - 1).all()
            assert np.all(np.diff(record.scores) <= 0)
