"""`delfx inspect --failed` and `delfx verify --json`: what failed and why, and a machine-
readable verdict, on a real feature set with failed images and a damaged shard."""

from __future__ import annotations

import json

from click.testing import CliRunner

from delfx.cli import cli
from delfx.store import FeatureSet, shard_file_name
from delfx.store.synthetic import write_synthetic_feature_set


def test_inspect_lists_failed_images_and_verify_speaks_json(tmp_path):
    root = tmp_path / "features"
    write_synthetic_feature_set(root, num_images=9, num_shards=2, failed_every=3, seed=1)
    with FeatureSet(root) as fs:
        failed = sorted(r.image_id for r in fs if not r.ok)
    assert len(failed) == 3
    runner = CliRunner()
    text = runner.invoke(cli, ["inspect", str(root), "--failed"])
    assert text.exit_code == 0, text.output
    rows = [line.split("\t") for line in text.stdout.splitlines() if line.startswith("FAILED")]
    assert sorted(r[1] for r in rows) == failed
    assert all(r[2] == "corrupt" and r[3] == "synthetic failure" for r in rows)
    as_json = json.loads(runner.invoke(cli, ["inspect", str(root), "--failed", "--json"]).stdout)
    assert sorted(r["id"] for r in as_json["failed_images"]) == failed
    assert "failed_images" not in json.loads(runner.invoke(cli, ["inspect", str(root),
                                                                 "--json"]).stdout)
    good = runner.invoke(cli, ["verify", str(root), "--json"])
    assert good.exit_code == 0
    verdict = json.loads(good.stdout)
    assert verdict["ok"] and verdict["shards_checked"] == 2 and verdict["problems"] == []
    shard = root / shard_file_name(1, 2)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = runner.invoke(cli, ["verify", str(root), "--json"])
    assert bad.exit_code == 1
    verdict = json.loads(bad.stdout)  # stdout is the JSON alone
    assert not verdict["ok"] and verdict["damaged_shards"] == [1]
    assert any("shard 1" in p for p in verdict["problems"])
