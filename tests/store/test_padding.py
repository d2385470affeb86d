"""The one padded-batch builder: shards (training) and records (prediction) give the same rows."""

from __future__ import annotations

import numpy as np

from delfx.store import FeatureSet
from delfx.store.padding import padded_records
from delfx.store.synthetic import write_synthetic_feature_set


def test_records_and_shards_pad_alike(tmp_path):
    write_synthetic_feature_set(tmp_path / "fs", num_images=12, num_shards=3,
                                features_per_image=(20, 200), failed_every=5)
    with FeatureSet(tmp_path / "fs") as fs:
        ids = fs.image_ids[::-1]  # any order
        from_shards, mask_shards = fs.padded_batch(ids, max_features=150)
        records = [fs.get(i) for i in ids]
    shuffled = []
    rng = np.random.default_rng(0)
    for r in records:  # a record fresh from a model need not be sorted by score
        order = rng.permutation(r.num_features)
        shuffled.append(type(r)(r.image_id, r.locations[order], r.descriptors[order],
                                r.scales[order], r.scores[order], r.height, r.width, r.status,
                                r.reason, r.message))
    from_records, mask_records = padded_records(shuffled, 150, fs.descriptor_dim)
    np.testing.assert_array_equal(mask_records, mask_shards)
    np.testing.assert_array_equal(from_records, from_shards)
    counts = mask_shards.sum(axis=1)
    assert counts.max() == 150 and counts.min() == 0  # capped, and failed images are empty
    expected = [min(r.num_features, 150) for r in records]
    assert counts.tolist() == expected
    # the first row is the best-scoring feature
    first = next(k for k, r in enumerate(records) if r.num_features)
    best = records[first].descriptors[np.argmax(records[first].scores)]
    np.testing.assert_array_equal(from_shards[first, 0], best.astype(np.float32))
