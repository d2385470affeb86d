"""No reader uses data it has not checked: damaged shards and manifests are refused in one line.

Damage is made by the tests themselves: bytes flipped inside a shard's descriptor chunks (the
manifest left as it was), manifests with fields of the wrong type, shards of an older schema
without chunk checksums.
"""

from __future__ import annotations

import json
import os
import stat

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.errors import StoreError
from delfx.store import FeatureSet, Manifest, inspect, require_intact, verify
from delfx.store import schema as S
from delfx.store.synthetic import write_synthetic_feature_set


def _unit_set(root, **kw):
    """A synthetic set whose manifest promises unit descriptors (as every built-in model's)."""
    write_synthetic_feature_set(root, num_images=40, num_shards=2, features_per_image=(150, 300),
                                descriptor_dtype="float16", **kw)
    data = json.loads((root / "manifest.json").read_text())
    data["descriptor_norm"] = "l2"
    (root / "manifest.json").write_text(json.dumps(data))
    return root


def _flip_descriptor_bytes(shard, count=4000):
    """XOR `count` bytes in the middle of the descriptor data (what the issue reproduced)."""
    with h5py.File(shard, "r") as f:
        offset = f[S.FEATURE_DESCRIPTORS].id.get_chunk_info(0).byte_offset + 256
    data = bytearray(shard.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xA5
    shard.write_bytes(bytes(data))


@pytest.fixture()
def damaged(tmp_path):
    root = _unit_set(tmp_path / "fs")
    _flip_descriptor_bytes(root / "shard-00000-of-00002.h5")
    return root


def test_chunk_checksums_refuse_flipped_bytes_on_read(damaged):
    assert not verify(damaged).ok  # sha256 against the manifest
    with FeatureSet(damaged) as fs:
        with pytest.raises(StoreError, match="damaged shard.*run delfx verify"):
            for _ in fs.iter_descriptor_blocks():
                pass
        with pytest.raises(StoreError, match="damaged shard"):
            list(fs)
        with pytest.raises(StoreError, match="damaged shard"):
            fs.padded_batch(fs.image_ids, 150)


def test_inspect_build_index_and_train_refuse_a_damaged_set(damaged, tmp_path):
    summary = inspect(damaged)
    assert not summary["integrity"]["ok"] and "sha256" in summary["integrity"]["problems"][0]
    result = CliRunner().invoke(cli, ["inspect", str(damaged)])
    assert result.exit_code == 1 and "damaged shard" in result.output
    with pytest.raises(StoreError, match="sha256 differs"):
        require_intact(damaged)
    result = CliRunner().invoke(cli, ["build-index", str(damaged), str(tmp_path / "index")])
    assert result.exit_code == 1 and "sha256 differs" in result.output
    assert not (tmp_path / "index").exists()
    (tmp_path / "labels.csv").write_text("id,landmark_id\n" + "".join(
        f"img{i:08d},{i % 3}\n" for i in range(40)))
    result = CliRunner().invoke(cli, ["train", str(damaged), str(tmp_path / "labels.csv"),
                                      str(tmp_path / "clf")])
    assert result.exit_code == 1 and "sha256 differs" in result.output


def test_descriptor_values_are_checked_where_no_chunk_checksum_exists(tmp_path):
    """A shard of schema 2 has no fletcher32: a non-finite or non-unit descriptor written into
    it (the manifest re-hashed, as an attacker or a broken tool would) is still refused."""
    root = _unit_set(tmp_path / "fs")
    path = root / "shard-00000-of-00002.h5"
    with h5py.File(path, "r+") as f:
        f.attrs[S.ATTR_SCHEMA_VERSION] = 2
        del f[S.IMAGE_INPUT_SIZE], f[S.IMAGE_INPUT_MTIME]
        data = f[S.FEATURE_DESCRIPTORS][()]
        del f[S.FEATURE_DESCRIPTORS]
        data[7, 3] = np.nan
        data[9] *= 40.0
        f.create_dataset(S.FEATURE_DESCRIPTORS, data=data)
    _rehash(root, 0)
    with FeatureSet(root) as fs:
        with pytest.raises(StoreError, match="non-finite descriptor at feature row 7"):
            fs.get(0)
    with h5py.File(path, "r+") as f:
        data = f[S.FEATURE_DESCRIPTORS][()]
        data[7, 3] = 0.1
        f[S.FEATURE_DESCRIPTORS][...] = data
    _rehash(root, 0)
    with FeatureSet(root) as fs:
        with pytest.raises(StoreError, match="feature row 9 has norm"):
            list(fs.iter_descriptor_blocks())


def _rehash(root, index):
    from delfx.digests import file_sha256
    data = json.loads((root / "manifest.json").read_text())
    shard = next(s for s in data["shards"] if s["index"] == index)
    path = root / shard["file"]
    shard["sha256"], shard["bytes"] = file_sha256(path), path.stat().st_size
    (root / "manifest.json").write_text(json.dumps(data))


def test_a_truncated_shard_is_refused_before_it_is_read(tmp_path):
    root = _unit_set(tmp_path / "fs")
    path = root / "shard-00001-of-00002.h5"
    path.write_bytes(path.read_bytes()[:-100])
    with FeatureSet(root) as fs:
        with pytest.raises(StoreError, match="bytes, the manifest says"):
            fs.get(fs.num_images - 1)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(num_shards="two"), "num_shards"),
    (lambda d: d.update(num_shards=True), "num_shards"),
    (lambda d: d.update(descriptor_dim=float("nan")), "descriptor_dim"),
    (lambda d: d["shards"][0].update(bytes="lots"), r"shards\[0\].bytes"),
    (lambda d: d["shards"][0].update(num_features=float("nan")), r"shards\[0\].num_features"),
    (lambda d: d["shards"][0].update(sha256="abc"), "sha256 hex digest"),
    (lambda d: d["shards"][0].update(index=7), "outside 0..1"),
    (lambda d: d["shards"][1].update(index=0), "recorded twice"),
    (lambda d: d["shards"][0].update(num_ok=-1), "num_ok"),
    (lambda d: d["shards"][0].pop("file"), "exactly the fields"),
    (lambda d: d["shards"][0].update(extra=1), "exactly the fields"),
    (lambda d: d.update(shards={}), "shards"),
    (lambda d: d.update(config=[]), "config"),
    (lambda d: d.update(model={"id": "x"}), "model.hash"),
    (lambda d: d.update(descriptor_dtype="int8"), "descriptor_dtype"),
    (lambda d: d.update(global_model={"id": "g", "hash": "h", "dim": 0}), "global_model.dim"),
    (lambda d: d.update(descriptor_norm="l1"), "descriptor_norm"),
    (lambda d: d.update(created=5), "created"),
])
def test_manifests_with_wrong_fields_are_refused_in_one_line(tmp_path, change, message):
    root = _unit_set(tmp_path / "fs")
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match=message):
        Manifest.load(root)
    for command in ("inspect", "verify"):
        result = CliRunner().invoke(cli, [command, str(root)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "malformed manifest" in result.output


def test_artifacts_follow_the_umask(tmp_path):
    """mkstemp made every JSON artifact 0600 while shards followed the umask."""
    old = os.umask(0o027)
    try:
        root = _unit_set(tmp_path / "fs")
        from delfx.paths import atomic_write_json
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        modes = {p.name: stat.S_IMODE(p.stat().st_mode)
                 for p in [tmp_path / "a.json", *root.iterdir()]}
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o640}, modes
