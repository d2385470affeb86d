"""benchmarks/eval_hybrid_recipe.py: its recipes are composed from delf-hybrid's own parts.

The ablation is only worth its table if the "delfx default" row IS `--model delf-hybrid`:
composed from the parts with the shipped projections, the descriptors must equal what the model
writes. The joint MNN + ratio matcher must keep exactly the MNN pairs that pass the ratio test.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import eval_hybrid_recipe as ev


@pytest.fixture(scope="module")
def sample_items(tmp_path_factory):
    from delfx.inputs import list_images
    from delfx.sample_data import write_sample_data
    data = write_sample_data(tmp_path_factory.mktemp("hybrid") / "s", landmarks=2, views=1,
                             non_landmarks=0, long_side=400, seed=3)
    return [(i.image_id, i.path) for i in list_images(data.root / "images")][:2]


def test_default_recipe_reproduces_the_model(sample_items):
    from delfx.extractor.models import create_model
    from delfx.images import load_image
    config = ev.hybrid_config(320, 300)
    parts, _ = ev.extract_parts(sample_items, config)
    projections = ev.Projections({})  # the default needs only the shipped projections
    model = create_model(config.replace(descriptor_dim=40))
    for image_id, path in sample_items:
        expected = model.extract(load_image(path), image_id)
        got = ev.compose(parts[image_id], ev.RECIPES[0], projections, image_id)
        assert got.num_features == expected.num_features > 20
        np.testing.assert_allclose(got.locations, expected.locations, atol=1e-3)
        np.testing.assert_allclose(got.descriptors, expected.descriptors, atol=1e-5)
        raw = ev.compose(parts[image_id], ev.RECIPES[2], projections, image_id)
        assert raw.descriptors.shape[1] == 128 + ev.CNN_DIM  # one CNN part, no final PCA
        np.testing.assert_allclose(np.linalg.norm(raw.descriptors, axis=1), 1.0, atol=1e-5)


def test_joint_matcher_is_mnn_filtered_by_the_ratio_test():
    from delfx.index.geometry import mutual_nearest_neighbours, ratio_test_matches
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 8)).astype(np.float32)
    b = np.vstack([a[:30] + 0.05 * rng.normal(size=(30, 8)), rng.normal(size=(40, 8))]
                  ).astype(np.float32)
    joint = ev.match_fn("mnn+ratio")(a, b)
    mnn = mutual_nearest_neighbours(a, b)
    ratio = set(ratio_test_matches(a, b, ratio=ev.RATIO).query_idx.tolist())
    expected = [(q, g) for q, g in zip(mnn.query_idx.tolist(), mnn.gallery_idx.tolist())
                if q in ratio]
    assert list(zip(joint.query_idx.tolist(), joint.gallery_idx.tolist())) == expected
    assert 25 <= len(expected) < len(mnn)  # the noisy copies pass, some random MNN pairs do not
