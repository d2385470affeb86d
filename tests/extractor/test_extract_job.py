"""`delfx extract` on a real Ray runtime started by the tests: end to end, a two-node cluster,
killed workers, a killed driver, damaged shards, broken images, refused resumes, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.broken_images import write_broken_images, write_good_images
from tests.support.processes import busy_worker, kill_tree
from tests.support.ray_cluster import two_node_cluster
from delfx.store import FeatureSet, shard_file_name, verify

pytestmark = pytest.mark.slow

DELFX = [sys.executable, "-m", "delfx"]
# delf-vgg16 on small images: slow enough (TensorFlow workers) to be interrupted mid-run.
SLOW_MODEL = ["--model", "delf-vgg16", "--preset", "fast", "--max-side", "200"]
FAST_MODEL = ["--model", "rootsift", "--preset", "fast", "--max-side", "240"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}, **extra)
    return env


def _extract(*args, env=None, timeout=300, check=True):
    proc = subprocess.run(DELFX + ["extract", *map(str, args), "--json"], capture_output=True,
                          text=True, env=env or _env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def _summary(proc) -> dict:
    return json.loads(proc.stdout)


def _contents(root: Path) -> dict:
    with FeatureSet(root) as fs:
        return {r.image_id: r for r in fs}


def _assert_same(a: dict, b: dict, exact: bool = True):
    """Same images, same records; `exact=False` allows float16 rounding differences (BLAS and
    OpenCV results vary in the last bit with the thread count: in-process vs a 1-CPU worker)."""
    assert sorted(a) == sorted(b)
    for image_id, left in a.items():
        right = b[image_id]
        assert (left.status, left.reason, left.height, left.width) == (
            right.status, right.reason, right.height, right.width)
        if exact:
            np.testing.assert_array_equal(left.locations, right.locations)
            np.testing.assert_array_equal(left.descriptors, right.descriptors)
        else:
            np.testing.assert_allclose(left.locations, right.locations, atol=1e-3)
            np.testing.assert_allclose(left.descriptors, right.descriptors, atol=2e-3)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from delfx.sample_data import write_sample_data
    data = write_sample_data(tmp_path_factory.mktemp("ray") / "data", landmarks=4, views=4,
                             non_landmarks=4, long_side=240, seed=1)
    return data.root / "images"


def test_end_to_end_local_default(images, tmp_path):
    """The local default: a Ray instance started by delfx, the auto model (offline: xfeat with
    the torch extra, PyTorch in the workers; delf-hybrid without), every image once."""
    from delfx.extractor.learned import missing_parts
    out = tmp_path / "features"
    proc = _extract(images, out, "--shards", "3", "--max-side", "240")
    summary = _summary(proc)
    assert summary["executor"] == "ray"
    expected = ("delf-hybrid-rootsift+vgg16-hed+pca40" if missing_parts("xfeat") else "xfeat")
    assert summary["model"]["id"] == expected
    assert f"model auto -> {expected.split('-rootsift')[0]}" in proc.stderr
    assert summary["images_processed"] == summary["ok"] == 24 and summary["shards_written"] == 3
    assert verify(out).ok
    ids = list(_contents(out))
    assert len(ids) == len(set(ids)) == 24
    report = json.loads((out / "extract_report.json").read_text())
    assert report["versions"]["ray"] and report["seconds_per_100_images"] > 0
    # start-up (Ray, workers, model loads) and the driver's writing are timed apart
    assert 0 < report["startup_seconds"] < report["seconds"]
    assert 0 < report["writer_seconds"] < report["seconds"] - report["startup_seconds"]
    assert 0 < report["seconds_per_100_images_after_startup"] < report["seconds_per_100_images"]
    from delfx.commands.extract import _format_extract_summary
    from delfx.extractor.job import Summary
    fields = {k: report[k] for k in ("executor", "images_processed", "ok", "seconds",
                                     "startup_seconds", "writer_seconds")}
    text = _format_extract_summary(Summary(str(out), report["model"], **fields))
    assert (f"{report['startup_seconds']:.1f} s start-up, then "
            f"{report['seconds_per_100_images_after_startup']:.2f} s per 100 images") in text
    again = _summary(_extract(images, out, "--shards", "3", "--max-side", "240"))
    assert again["shards_skipped"] == 3 and again["images_processed"] == 0


def test_two_node_cluster(images, tmp_path):
    """A head and a second node as separate processes, with token authentication on (as
    `ray start --head` has by default); delfx joins with --address and no Ray settings."""
    with two_node_cluster(_env()) as address:
        out = tmp_path / "features"
        summary = _summary(_extract(images, out, "--shards", "4", "--address", address,
                                    *FAST_MODEL, env=_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")))
        assert summary["executor"] == "ray" and summary["shards_written"] == 4
        assert len(set(summary["shard_nodes"].values())) == 2, summary["shard_nodes"]
        assert verify(out).ok


def _wait_for_shards(out: Path, proc, at_least: int, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            if len(json.loads((out / "manifest.json").read_text())["shards"]) >= at_least:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("no shard completed in time")


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """An uninterrupted run of the slow model, for the interruption tests to equal."""
    out = tmp_path_factory.mktemp("reference") / "features"
    _extract(images, out, "--shards", "6", "--chunk-size", "1", *SLOW_MODEL)
    return _contents(out)


def test_killed_worker_is_replaced(images, tmp_path, reference):
    out = tmp_path / "features"
    proc = subprocess.Popen(DELFX + ["extract", str(images), str(out), "--shards", "6",
                                     "--chunk-size", "1", "--json", *SLOW_MODEL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_shards(out, proc, 1)
    busy_worker(proc, "ray::ExtractWorker.process").kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # only data on stdout, even when Ray reports the dead worker
    assert summary["workers_replaced"] >= 1 and not summary["shards_failed"]
    assert verify(out).ok
    _assert_same(_contents(out), reference)  # every image exactly once, same features


def test_killed_driver_resumes_to_the_same_content(images, tmp_path, reference):
    out = tmp_path / "features"
    proc = subprocess.Popen(DELFX + ["extract", str(images), str(out), "--shards", "6",
                                     "--chunk-size", "1", *SLOW_MODEL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    _wait_for_shards(out, proc, 2)
    kill_tree(proc)
    done_before = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert done_before < 6
    summary = _summary(_extract(images, out, "--shards", "6", "--chunk-size", "1", *SLOW_MODEL))
    assert summary["shards_skipped"] == done_before  # the stale lock of the dead driver was taken over
    assert summary["shards_written"] == 6 - done_before
    assert verify(out).ok and not list(out.glob("*.partial-*"))
    _assert_same(_contents(out), reference)


def test_ctrl_c_leaves_a_resumable_state(images, tmp_path, reference):
    out = tmp_path / "features"
    # A user's Ctrl-C at a terminal: the child starts with SIGINT's default action even when
    # this test runs in the background of a script (a shell without job control starts its
    # background commands with SIGINT ignored, and a child inherits that).
    proc = subprocess.Popen(DELFX + ["extract", str(images), str(out), "--shards", "6",
                                     "--chunk-size", "1", *SLOW_MODEL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_shards(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not list(out.glob("*.partial-*")) and not (out / ".delfx-extract.lock").exists()
    assert verify(out).problems and all("not completed" in p for p in verify(out).problems)
    summary = _summary(_extract(images, out, "--shards", "6", "--chunk-size", "1", *SLOW_MODEL))
    assert summary["shards_skipped"] >= 1 and verify(out).ok
    _assert_same(_contents(out), reference)


def test_damaged_shard_is_named_and_repaired(images, tmp_path):
    out = tmp_path / "features"
    _extract(images, out, "--shards", "3", *FAST_MODEL, "--no-ray")
    before = _contents(out)
    damaged = out / shard_file_name(1, 3)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0x5A
    damaged.write_bytes(bytes(data))
    check = subprocess.run(DELFX + ["verify", str(out)], capture_output=True, text=True)
    assert check.returncode == 1 and "PROBLEM shard 1" in check.stdout
    summary = _summary(_extract(images, out, "--shards", "3", *FAST_MODEL))
    assert summary["shards_skipped"] == 2 and summary["shards_written"] == 1
    assert verify(out).ok
    _assert_same(_contents(out), before, exact=False)


def test_broken_images_are_recorded(tmp_path):
    folder = tmp_path / "mixed"
    good = write_good_images(folder / "good")
    broken = write_broken_images(folder / "bad", min_side=16)
    (folder / "bad" / "notes.txt").write_text("not listed: wrong extension")
    out = tmp_path / "features"
    proc = _extract(folder, out, "--shards", "2", "--model", "rootsift")
    summary = _summary(proc)
    contents = _contents(out)
    assert len(contents) == len(good) + len(broken)
    for name in good:
        assert contents[f"good/{name}"].ok, name
    for name, reason in broken.items():
        record = contents[f"bad/{name}"]
        assert (record.status if reason == "ok" else record.reason) == ("ok" if reason == "ok" else reason), name
    expected_failures = sum(1 for r in broken.values() if r != "ok")
    assert sum(summary["failed_by_reason"].values()) == expected_failures
    assert proc.returncode == 0  # bad images are recorded, not fatal


def test_resume_refuses_other_settings_and_concurrent_runs(images, tmp_path):
    out = tmp_path / "features"
    _extract(images, out, "--shards", "2", *FAST_MODEL, "--no-ray")
    other = _extract(images, out, "--shards", "2", *FAST_MODEL, "--max-features", "100",
                     "--no-ray", check=False)
    assert other.returncode == 1
    assert "refusing to resume" in other.stderr and "max_features: 500 then, 100 now" in other.stderr
    fewer = _extract(images, out, "--shards", "3", *FAST_MODEL, "--no-ray", check=False)
    assert "shards: 2 then, 3 now" in fewer.stderr
    from delfx.extractor.plan import RunLock
    with RunLock(out):  # this test process holds the folder: a second run must be refused
        busy = _extract(images, out, "--shards", "2", *FAST_MODEL, "--no-ray", check=False)
    assert busy.returncode == 1 and f"pid {os.getpid()}" in busy.stderr
    # a lock file left by a dead run is no lock: the kernel released its flock
    (out / ".delfx-extract.lock").write_text(json.dumps({"pid": 999999999, "host": "x"}))
    fresh = _summary(_extract(images, out, "--shards", "3", *FAST_MODEL, "--no-ray", "--overwrite"))
    assert fresh["shards_written"] == 3 and verify(out).ok
