"""`delfx search` and `delfx classify` as query jobs on a real Ray runtime started by the tests:
the same bytes as in process, a killed worker replaced, a killed driver and Ctrl-C resumed to the
same output, a two-node cluster. Query images are extracted by the workers with delf-vgg16 (slow
enough to be interrupted mid-run)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from delfx.query_job import job_folder
from tests.support.processes import busy_worker, kill_tree
from tests.support.cli import invoke, write_split_lists
from tests.support.ray_cluster import two_node_cluster

pytestmark = pytest.mark.slow

DELFX = [sys.executable, "-m", "delfx"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}, **extra)
    return env


@pytest.fixture(scope="module")
def world(sample_dataset, tmp_path_factory):
    """A delf-vgg16 gallery (its ids and labels), its index, and its images as a query list."""
    root = tmp_path_factory.mktemp("query_jobs")
    write_split_lists(sample_dataset, root)
    invoke("extract", root / "train_list.csv", root / "gallery", "--shards", "2", "--model",
           "delf-vgg16", "--preset", "fast", "--max-side", "200", "--no-ray")
    invoke("build-index", root / "gallery", root / "index")
    with open(sample_dataset.root / "train.csv", newline="") as handle:
        labelled = list(csv.DictReader(handle))
    assert labelled and all(r["id"] for r in labelled)
    return root


def _run(*args, env=None, timeout=600, check=True):
    proc = subprocess.run(DELFX + [*map(str, args)], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def _search(world, out, *extra):
    """Search the gallery's own images (extracted by the workers), leave-one-out."""
    return ["search", world / "index", world / "gallery", world / "train_list.csv",
            "--exclude-self", "--out", out, "--chunk-size", "1", "--json", *extra]


def _classify(world, sample_dataset, out, *extra):
    return ["classify", world / "gallery", sample_dataset.root / "train.csv",
            world / "train_list.csv", "--mode", "retrieval", "--index", world / "index",
            "--exclude-self", "--max-per-landmark", "2", "--out", out, "--chunk-size", "1",
            *extra]


@pytest.fixture(scope="module")
def reference(world, sample_dataset, tmp_path_factory):
    """Uninterrupted Ray runs (workers of one CPU, as in the runs they are compared with)."""
    root = tmp_path_factory.mktemp("reference")
    search = json.loads(_run(*_search(world, root / "search.jsonl", "--ray")).stdout)
    assert search["executor"] == "ray" and search["workers"] == 2 and search["chunks_run"] >= 10
    _run(*_classify(world, sample_dataset, root / "classify.csv", "--ray"))
    return {"search": (root / "search.jsonl").read_text(),
            "classify": (root / "classify.csv").read_text()}


def test_on_ray_equals_in_process(world, sample_dataset, tmp_path):
    """Stored queries (no extraction, so no thread-count rounding): search streamed to stdout,
    as an in-process job and on Ray; classify with calibration and demotion in process and on
    Ray: the same bytes, the evidence too."""
    queries = world / "gallery"
    common = ["search", world / "index", world / "gallery", queries, "--exclude-self"]
    streamed = _run(*common).stdout
    _run(*common, "--out", tmp_path / "here.jsonl", "--chunk-size", "3")
    summary = json.loads(_run(*common, "--out", tmp_path / "ray.jsonl", "--ray", "--json",
                              "--chunk-size", "3").stdout)
    assert summary["executor"] == "ray" and summary["workers"] == 2
    assert (tmp_path / "here.jsonl").read_text() == streamed == \
        (tmp_path / "ray.jsonl").read_text()
    assert len(streamed.splitlines()) >= 12
    runs = {}
    for name, extra in (("here", []), ("ray", ["--ray"])):
        proc = _run("classify", world / "gallery", sample_dataset.root / "train.csv", queries,
                    "--mode", "retrieval", "--index", world / "index", "--exclude-self",
                    "--calibrate", "--max-per-landmark", "1", "--chunk-size", "2",
                    "--out", tmp_path / f"{name}.csv", "--evidence", tmp_path / f"{name}.jsonl",
                    *extra)
        runs[name] = json.loads(proc.stdout)
    assert runs["ray"]["job"]["executor"] == "ray" and runs["here"]["job"]["executor"] == "in-process"
    assert runs["here"]["demoted"] > 0 and runs["here"]["calibrated"]
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "here.jsonl").read_text()


def _wait_for_chunks(out: Path, proc, at_least: int, timeout: float = 300) -> None:
    folder = job_folder(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if len(list(folder.glob("chunk-*.json"))) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("no chunk was recorded in time")


def test_killed_worker_is_replaced(world, reference, tmp_path):
    out = tmp_path / "search.jsonl"
    proc = subprocess.Popen(DELFX + [*map(str, _search(world, out, "--ray"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_chunks(out, proc, 1)
    busy_worker(proc, "ray::ChunkWorker.process").kill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # only data on stdout, even when Ray reports the dead worker
    assert summary["workers_replaced"] >= 1
    assert out.read_text() == reference["search"]  # every query exactly once, same results
    assert not job_folder(out).exists()


def test_killed_driver_resumes_to_the_same_output(world, sample_dataset, reference, tmp_path):
    out = tmp_path / "classify.csv"
    proc = subprocess.Popen(DELFX + [*map(str, _classify(world, sample_dataset, out, "--ray"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    _wait_for_chunks(out, proc, 2)
    kill_tree(proc)
    done_before = len(list(job_folder(out).glob("chunk-*.json")))
    assert done_before >= 2 and not out.exists()
    summary = json.loads(_run(*_classify(world, sample_dataset, out, "--ray")).stdout)
    assert summary["job"]["chunks_resumed"] >= done_before  # the dead driver's lock was free
    assert summary["job"]["chunks_run"] == summary["job"]["chunks"] - summary["job"]["chunks_resumed"]
    assert out.read_text() == reference["classify"]
    assert not job_folder(out).exists()


def test_ctrl_c_leaves_a_resumable_state(world, reference, tmp_path):
    out = tmp_path / "search.jsonl"
    # a user's Ctrl-C at a terminal: SIGINT's default action in the child (see the extract test)
    proc = subprocess.Popen(DELFX + [*map(str, _search(world, out, "--ray"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_chunks(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    left = sorted(p.name for p in job_folder(out).iterdir())
    assert "job.json" in left and any(n.startswith("chunk-") for n in left)
    assert all(n == "job.json" or n.startswith("chunk-") for n in left)  # no lock, no temp file
    assert not out.exists()
    summary = json.loads(_run(*_search(world, out, "--ray")).stdout)
    assert summary["chunks_resumed"] >= 1
    assert out.read_text() == reference["search"]


def test_two_node_cluster(world, reference, tmp_path):
    """A head and a second node as separate processes (token authentication on); the job's
    workers run on both and the output is the one-machine run's."""
    with two_node_cluster(_env()) as address:
        out = tmp_path / "search.jsonl"
        summary = json.loads(_run(*_search(world, out, "--ray", "--address", address),
                                  env=_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")).stdout)
        assert summary["workers"] == 2 and summary["nodes"] == 2, summary
        assert out.read_text() == reference["search"]
