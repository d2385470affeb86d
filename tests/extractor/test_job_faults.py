"""The extraction job under faults: changed inputs, abandoned shards, a full disk, two runs
racing for the lock, a dead raylet, refusals before start-up, and quiet output.

Every process a test signals is one it started, or a descendant of one (psutil children of the
driver it launched): never a process found by name.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.executors import InProcessExecutor, WorkerDied
from delfx.extractor.job import run_extraction
from delfx.inputs import list_images
from delfx.store import FeatureSet, verify

DELFX = [sys.executable, "-m", "delfx"]
ROOTSIFT = ExtractConfig(model="rootsift", max_side=240)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from delfx.sample_data import write_sample_data
    data = write_sample_data(tmp_path_factory.mktemp("faults") / "data", landmarks=3, views=3,
                             non_landmarks=2, long_side=240, seed=2)
    return data.root / "images"


def _copy(images, tmp_path):
    shutil.copytree(images, tmp_path / "images")
    return tmp_path / "images"


def test_resume_redoes_a_shard_whose_input_changed(images, tmp_path):
    """Resume used to trust ids alone: an image replaced on disk kept its stale features."""
    src = _copy(images, tmp_path)
    out = tmp_path / "out"
    run_extraction(list_images(src), ROOTSIFT, out, 3, InProcessExecutor(), progress=False)
    target = sorted(src.rglob("view_01.jpg"))[0]
    image_id = target.relative_to(src).as_posix()
    with FeatureSet(out) as fs:
        before = fs.get(image_id).descriptors.copy()
    target.write_bytes(sorted(src.rglob("view_02.jpg"))[-1].read_bytes())  # other content
    summary = run_extraction(list_images(src), ROOTSIFT, out, 3, InProcessExecutor(),
                             progress=False)
    assert summary.shards_written == 1 and summary.shards_skipped == 2
    with FeatureSet(out) as fs:
        after = fs.get(image_id).descriptors
    assert after.shape != before.shape or (after != before).any()
    again = run_extraction(list_images(src), ROOTSIFT, out, 3, InProcessExecutor(),
                           progress=False)
    assert again.shards_written == 0  # nothing changed since


class _DyingWorker:
    """In-process executor whose worker dies on every chunk of one shard's first image."""

    name = "in-process"
    global_model = None

    def __init__(self, doomed: str):
        self.inner, self.doomed = InProcessExecutor(), doomed

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, worker, items):
        if any(i.image_id == self.doomed for i in items):
            import concurrent.futures
            future = concurrent.futures.Future()
            future.set_exception(WorkerDied("killed by the test"))
            return future
        return self.inner.submit(worker, items)

    def result(self, handle):
        return handle.result()


def test_an_abandoned_shard_is_not_counted_as_processed(images, tmp_path):
    """628 reported, 532 stored: the summary counted the images of a failed shard."""
    items = list_images(images)
    summary = run_extraction(items, ROOTSIFT, tmp_path / "out", 3,
                             _DyingWorker(items[-1].image_id), chunk_size=1, max_retries=1,
                             progress=False)
    assert len(summary.shards_failed) == 1
    with FeatureSet(tmp_path / "out", require_complete=False) as fs:
        stored = fs.num_images
    assert summary.images_processed == stored < len(items)
    assert summary.ok + sum(summary.failed_by_reason.values()) == stored


def test_a_full_disk_is_one_line_and_leaves_nothing_partial(images, tmp_path, monkeypatch):
    """The issue: ENOSPC traceback, then a segfault. Here the disk 'fills' at the second shard."""
    import delfx.store.writer as writer
    calls = {"n": 0}
    real = writer.ensure_space

    def filling(directory, nbytes):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real(directory, nbytes)

    monkeypatch.setattr(writer, "ensure_space", filling)
    out = tmp_path / "out"
    with pytest.raises(DelfxError, match="No space left on device.*free space, then run again"):
        run_extraction(list_images(images), ROOTSIFT, out, 3, InProcessExecutor(),
                       progress=False)
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    assert not (out / ".delfx-extract.lock").exists()
    monkeypatch.setattr(writer, "ensure_space", real)
    resumed = run_extraction(list_images(images), ROOTSIFT, out, 3, InProcessExecutor(),
                             progress=False)
    assert resumed.shards_skipped >= 1 and verify(out).ok


def _small_filesystem(path: Path, megabytes: int) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_really_full_disk_through_the_cli(images, tmp_path):
    """On a real 6 MB file system: exit 1, one line, no partial file, no crash (exit 139)."""
    full = tmp_path / "full"
    if not _small_filesystem(full, 6):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        many = tmp_path / "many"
        for k in range(12):  # enough images to overflow 6 MB of shards
            shutil.copytree(images, many / f"copy{k}")
        proc = subprocess.run(DELFX + ["extract", str(many), str(full / "out"), "--shards", "6",
                                       "--model", "rootsift", "--no-ray"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
        assert not [p for p in (full / "out").iterdir() if ".partial-" in p.name]
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


def _take_lock(root: str, barrier, results):
    from delfx.extractor.plan import RunLock
    from delfx.errors import DelfxError as Error
    lock = RunLock(Path(root))
    barrier.wait()
    try:
        lock.acquire()
        results.put("took")
        barrier.wait()  # hold it until every contender has tried
        lock.release()
    except Error:
        results.put("refused")
        barrier.wait()


def test_only_one_of_many_racing_runs_takes_the_lock(tmp_path):
    """A stale lock file of a dead run, and 4 runs finding it at once: exactly one wins."""
    (tmp_path / ".delfx-extract.lock").write_text(json.dumps({"pid": 999999999, "host": "x"}))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take_lock, args=(str(tmp_path), barrier, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["refused", "refused", "refused", "took"]


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", TF_CPP_MIN_LOG_LEVEL="2")
    return env


@pytest.mark.slow
def test_a_refused_resume_starts_nothing(images, tmp_path):
    out = tmp_path / "out"
    run_extraction(list_images(images), ROOTSIFT, out, 2, InProcessExecutor(), progress=False)
    proc = subprocess.run(DELFX + ["extract", str(images), str(out), "--shards", "3", "--model",
                                   "rootsift", "--max-side", "240"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 1 and "shards: 2 then, 3 now" in proc.stderr
    assert "Ray" not in proc.stderr  # refused before a Ray instance was started


@pytest.mark.slow
def test_quiet_means_quiet(images, tmp_path):
    proc = subprocess.run(DELFX + ["-q", "extract", str(images), str(tmp_path / "out"),
                                   "--shards", "2", "--model", "rootsift", "--max-side", "240"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""  # no "Token authentication is enabled..." for our own instance


@pytest.mark.slow
def test_a_dead_raylet_ends_the_run_resumably(images, tmp_path):
    """The issue: SIGKILL of the driver's raylet hung the driver forever, holding the lock."""
    import psutil
    many = tmp_path / "many"
    for k in range(6):
        shutil.copytree(images, many / f"copy{k}")
    out = tmp_path / "out"
    proc = subprocess.Popen(DELFX + ["extract", str(many), str(out), "--shards", "4", "--model",
                                     "rootsift", "--max-side", "480", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 240
        raylet = None
        while raylet is None and time.monotonic() < deadline:  # until a worker extracts
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "raylet" in " ".join(child.cmdline()) and any(
                            "ExtractWorker.process" in " ".join(c.cmdline())
                            for c in child.children(recursive=True)):
                        raylet = child
                except psutil.Error:
                    continue
            time.sleep(0.05)
        assert raylet is not None, "the run's raylet and workers never appeared"
        raylet.kill()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 2), stderr[-3000:]  # 0 only if it had already finished
    assert not (out / ".delfx-extract.lock").exists()
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    summary = json.loads(stdout)
    if proc.returncode == 2:
        assert summary["shards_failed"] and "lost its raylet" in json.dumps(summary)
    resumed = run_extraction(list_images(many), ExtractConfig(model="rootsift", max_side=480),
                             out, 4, InProcessExecutor(), progress=False)
    assert resumed.shards_written + resumed.shards_skipped == 4 and verify(out).ok
