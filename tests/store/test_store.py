"""The feature store: round trips, atomic writes, damage detection, schema refusal, padded batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from delfx.errors import SchemaVersionError, StoreError
from delfx.store import (FeatureSet, ImageFeatures, Manifest, ShardReader, ShardWriter, inspect,
                         shard_file_name, verify)
from delfx.store import schema as S
from delfx.store.synthetic import synthetic_image, write_synthetic_feature_set

MODEL = dict(model_id="test-model", model_hash="ab" * 32, config={"preset": "test", "scales": [0.5, 1.0]})


def _writer(path, dtype="float32", **kw):
    return ShardWriter(path, descriptor_dim=40, descriptor_dtype=dtype, **MODEL, **kw)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_every_field(tmp_path, dtype):
    rng = np.random.default_rng(1)
    records = [synthetic_image(f"dir/ä image {i}.jpg", rng, num_features=n) for i, n in enumerate([5, 0, 300])]
    records.insert(2, ImageFeatures.failed("broken.jpg", "truncated", "image file is truncated",
                                           height=10, width=20, descriptor_dim=40))
    with _writer(tmp_path / "s.h5", dtype, buffer_rows=100) as writer:  # small buffer: several flushes
        for record in records:
            writer.add(record)
    assert writer.info.num_images == 4 and writer.info.num_failed == 1 and writer.info.num_features == 305
    with ShardReader(tmp_path / "s.h5") as reader:
        assert reader.model_id == MODEL["model_id"] and reader.model_hash == MODEL["model_hash"]
        assert reader.config == MODEL["config"] and reader.versions["delfx"]
        assert reader.descriptor_dtype == np.dtype(dtype) and reader.schema_version == S.SCHEMA_VERSION
        assert reader.image_ids == [r.image_id for r in records]
        for original, stored in zip(records, reader):
            by_id = reader.get(original.image_id)
            expected = original.sorted_by_score()
            for got in (stored, by_id):
                assert (got.status, got.reason, got.message) == (original.status, original.reason, original.message)
                assert (got.height, got.width) == (original.height, original.width)
                np.testing.assert_array_equal(got.locations, expected.locations)
                np.testing.assert_array_equal(got.scales, expected.scales)
                np.testing.assert_array_equal(got.scores, expected.scores)
                np.testing.assert_array_equal(got.descriptors, expected.descriptors.astype(dtype))
            assert np.all(np.diff(stored.scores) <= 0), "features are stored by descending score"


def test_writer_refuses_bad_records(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(StoreError, match="added twice"):
        with _writer(tmp_path / "s.h5") as writer:
            writer.add(synthetic_image("a", rng, num_features=3))
            writer.add(synthetic_image("a", rng, num_features=3))
    assert not list(tmp_path.iterdir()), "a failed write leaves nothing behind"
    with pytest.raises(ValueError, match="descriptor dimension"):
        with _writer(tmp_path / "s.h5") as writer:
            writer.add(synthetic_image("a", rng, num_features=3, descriptor_dim=128))
    bad = synthetic_image("b", rng, num_features=3)
    bad.scores = bad.scores[:2]
    with pytest.raises(ValueError, match="scores"):
        with _writer(tmp_path / "s.h5") as writer:
            writer.add(bad)
    assert not list(tmp_path.iterdir())


def test_killed_write_never_reads_as_complete(tmp_path):
    """SIGKILL in the middle of a write: only a partial-named file remains, and it is refused."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from delfx.store import ShardWriter
        from delfx.store.synthetic import synthetic_image
        rng = np.random.default_rng(0)
        w = ShardWriter({str(tmp_path / "s.h5")!r}, descriptor_dim=40, model_id="m", model_hash="h",
                        config={{}}, buffer_rows=50)
        for i in range(20):
            w.add(synthetic_image(f"i{{i}}", rng, num_features=30))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert not (tmp_path / "s.h5").exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and ".partial-" in leftovers[0].name
    os.replace(leftovers[0], tmp_path / "s.h5")  # even renamed by hand, it is not taken as complete
    with pytest.raises(StoreError, match="not completed|not a readable"):
        ShardReader(tmp_path / "s.h5")


def test_feature_set_across_shards(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=23, num_shards=3, failed_every=5,
                                features_per_image=(0, 220))
    with FeatureSet(tmp_path) as fs:
        assert len(fs) == 23
        assert sorted(fs.image_ids) == [f"img{i:08d}" for i in range(23)]
        assert [r.image_id for r in fs] == fs.image_ids
        assert fs.get("img00000004").status == "failed" and fs.get("img00000004").reason == "corrupt"
        descriptors, image, row = fs.load_descriptors()
        blocks = list(fs.iter_descriptor_blocks(max_rows=97))
        assert all(len(b[0]) <= 97 for b in blocks)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), image)
        for position in (0, 7, 22):
            record = fs.get(position)
            rows = np.flatnonzero(image == position)
            np.testing.assert_array_equal(row[rows], np.arange(record.num_features))
            np.testing.assert_array_equal(descriptors[rows], record.descriptors)


@pytest.mark.parametrize("max_features", [1, 150, 400])
def test_padded_batches(tmp_path, max_features):
    write_synthetic_feature_set(tmp_path, num_images=40, num_shards=2, failed_every=7,
                                features_per_image=(0, 300), descriptor_dtype="float16")
    with FeatureSet(tmp_path) as fs:
        rng = np.random.default_rng(3)
        keys = list(rng.permutation(40)[:25]) + [fs.image_ids[5], 3, 3]  # mixed ids, repeats, any order
        x, mask = fs.padded_batch(keys, max_features=max_features)
        assert x.shape == (len(keys), max_features, 40) and x.dtype == np.float32
        for k, key in enumerate(keys):
            record = fs.get(key)
            # the reference: sort by score (descending) and cut, independently of the store's order
            order = np.argsort(-record.scores, kind="stable")[:max_features]
            n = len(order)
            assert mask[k].sum() == n and mask[k, :n].all()
            np.testing.assert_array_equal(x[k, :n], record.descriptors[order].astype(np.float32))
            assert not x[k, n:].any()
        x_ids, _ = fs.padded_batch([fs.image_ids[i] for i in range(40)], max_features=max_features)
        x_pos, _ = fs.padded_batch(range(40), max_features=max_features)
        np.testing.assert_array_equal(x_ids, x_pos)


def test_verify_detects_damage(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=12, num_shards=3)
    assert verify(tmp_path).ok
    shard0, shard1, shard2 = (tmp_path / shard_file_name(i, 3) for i in range(3))
    with open(shard0, "r+b") as handle:  # truncate
        handle.truncate(shard0.stat().st_size // 2)
    data = bytearray(shard1.read_bytes())  # flip one byte, same size
    data[len(data) // 2] ^= 0xFF
    shard1.write_bytes(bytes(data))
    shard2.unlink()
    (tmp_path / (shard_file_name(1, 3) + ".partial-999")).write_bytes(b"junk")
    report = verify(tmp_path)
    assert not report.ok and report.bad_shards == {0, 1, 2}
    text = "\n".join(report.problems)
    assert "shard 0" in text and "size" in text
    assert "shard 1" in text and "sha256" in text
    assert "shard 2" in text and "missing" in text
    assert any("interrupted write" in w for w in report.warnings)


def test_verify_structure_without_checksum(tmp_path):
    """With --no-checksum a same-size alteration of the counts is still caught structurally."""
    write_synthetic_feature_set(tmp_path, num_images=6, num_shards=1)
    path = tmp_path / shard_file_name(0, 1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    with h5py.File(path, "r+") as f:
        f[S.IMAGE_COUNT][0] = f[S.IMAGE_COUNT][0] + 1
    manifest["shards"][0]["bytes"] = path.stat().st_size
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = verify(tmp_path, checksum=False)
    assert not report.ok and "offsets table" in report.problems[0]


def test_incomplete_and_duplicate(tmp_path):
    manifest = write_synthetic_feature_set(tmp_path, num_images=4, num_shards=2)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["num_shards"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match=r"incomplete, shards missing: \[2\]"):
        FeatureSet(tmp_path)
    assert any("shard 2: not completed" in p for p in verify(tmp_path).problems)
    other = tmp_path / "other"
    write_synthetic_feature_set(other, num_images=4, num_shards=2)
    shard = tmp_path / shard_file_name(1, 2)
    (tmp_path / shard_file_name(1, 2)).unlink()
    shard.write_bytes((other / shard_file_name(0, 2)).read_bytes())  # ids of shard 0 again
    manifest.shards[1] = Manifest.load(other).shards[0].__class__(
        **{**Manifest.load(other).shards[0].__dict__, "index": 1, "file": shard.name})
    manifest.save(tmp_path)
    problems = "\n".join(verify(tmp_path).problems)
    assert "stored in shards 0 and 1" in problems and "file says shard 0" in problems


def test_unknown_schema_versions_refused(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=3)
    path = tmp_path / shard_file_name(0, 1)
    with h5py.File(path, "r+") as f:
        f.attrs[S.ATTR_SCHEMA_VERSION] = 99
    with pytest.raises(SchemaVersionError, match="schema version 99 is not supported"):
        ShardReader(path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = S.SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError, match=f"schema version {S.SCHEMA_VERSION + 1}"):
        FeatureSet(tmp_path)
    with pytest.raises(StoreError, match="not a delfx manifest"):
        Manifest.from_json({"format": "something-else"})


@pytest.mark.parametrize("evil", ["../outside.h5", "/etc/passwd", "a/../../x.h5", "link.h5"])
def test_manifest_paths_cannot_escape(tmp_path, evil):
    root = tmp_path / "set"
    write_synthetic_feature_set(root, num_images=2)
    (tmp_path / "outside.h5").write_bytes((root / shard_file_name(0, 1)).read_bytes())
    (root / "link.h5").symlink_to(tmp_path / "outside.h5")
    data = json.loads((root / "manifest.json").read_text())
    data["shards"][0]["file"] = evil
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="refusing path"):
        FeatureSet(root).get(0)
    assert any("refusing path" in p for p in verify(root).problems)


def test_inspect_summary(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=10, num_shards=2, failed_every=4,
                                features_per_image=(10, 10))
    summary = inspect(tmp_path)
    assert summary["images"] == {"total": 10, "ok": 8, "failed": 2, "failed_by_reason": {"corrupt": 2}}
    assert summary["features"]["per_ok_image"] == {"min": 10, "median": 10.0, "mean": 10.0, "max": 10}
    assert summary["features"]["total"] == 80 and summary["shards"]["complete"] == 2
    assert summary["bytes"]["total"] == sum(p.stat().st_size for p in tmp_path.glob("*.h5"))


@pytest.mark.parametrize("where", ["open", "attributes"])
def test_interrupted_opening_leaves_no_partial_file(tmp_path, monkeypatch, where):
    """Ctrl-C while a writer creates its file (opening it, writing its attributes and datasets)
    propagates and leaves nothing behind: no half-made file a later run has to explain."""
    import delfx.store.writer as writer_module
    real_file = h5py.File

    def interrupt(*args, **kwargs):
        if where == "open":  # the file exists on disk, the call has not returned yet
            real_file(tmp_path / (shard_file_name(0, 1) + f".partial-{os.getpid()}"), "w").close()
        raise KeyboardInterrupt

    if where == "open":
        monkeypatch.setattr(writer_module.h5py, "File", interrupt)
    else:
        monkeypatch.setattr(writer_module.ShardWriter, "_init_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _writer(tmp_path / shard_file_name(0, 1))
    assert list(tmp_path.iterdir()) == []


def test_buffer_is_bounded_in_bytes_for_wide_descriptors(tmp_path):
    """DELF's raw 1024-d descriptors: the writer flushes every ~32 MB, not every 65,536 rows
    (which held 268 MB per open shard, and the peak RSS of an extraction grew with its images);
    narrow descriptors keep the large buffer. What is written reads back whole."""
    from delfx.store.writer import BUFFER_BYTES, MAX_BUFFER_ROWS, buffer_rows_for
    assert buffer_rows_for(40) == MAX_BUFFER_ROWS
    assert buffer_rows_for(1024) * 4 * (4 + 1024) <= BUFFER_BYTES
    rng = np.random.default_rng(0)
    path = tmp_path / "shard-00000-of-00001.h5"
    with ShardWriter(path, descriptor_dim=1024, descriptor_dtype="float16", **MODEL) as writer:
        most = 0
        for i in range(40):
            writer.add(synthetic_image(f"im{i}", rng, num_features=529, descriptor_dim=1024))
            most = max(most, writer._pending_rows)
    assert most <= buffer_rows_for(1024)  # flushed as it went, never the whole shard
    reader = ShardReader(path)
    assert len(reader) == 40 and reader.get("im39").descriptors.shape == (529, 1024)
