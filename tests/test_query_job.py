"""The resumable query job (delfx/query_job.py) in this process: chunks recorded and reused, a
resume that equals an uninterrupted run, refusals, and what it never deletes. Its runs on Ray
(killed workers and drivers, Ctrl-C, two nodes) are in tests/recognition/test_query_jobs_ray.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from delfx.errors import DelfxError
from delfx.locks import FolderLock
from delfx.query_job import (LOCK_NAME, InProcessPool, JobFolder, job_folder, run_query_job)

ITEMS = [(f"q{n:02d}", None) for n in range(10)]


class Squares:
    """A processor whose rows are a function of the query id; can be told to fail."""

    def __init__(self, fail_at: str | None = None, calls: list | None = None):
        self.fail_at, self.calls = fail_at, calls if calls is not None else []

    def describe(self) -> dict:
        return {}

    def process(self, chunk):
        self.calls.append([i for i, _ in chunk])
        if self.fail_at in [i for i, _ in chunk]:
            raise KeyboardInterrupt  # the user's Ctrl-C in the middle of a chunk
        return [{"id": i, "square": int(i[1:]) ** 2, "score": int(i[1:]) / 7} for i, _ in chunk]


def _run(out: Path, processor, identity=None, chunk_size=3):
    written = []

    def write(rows):
        written.extend(rows)
        out.write_text("".join(json.dumps(row) + "\n" for _, row in written))

    summary = run_query_job(ITEMS, out, identity or {"settings": 1}, InProcessPool(lambda: processor),
                            write=write, what="test", chunk_size=chunk_size, progress=False)
    return summary, written


def test_rows_come_back_in_query_order_and_the_folder_goes(tmp_path):
    out = tmp_path / "out.jsonl"
    summary, rows = _run(out, Squares())
    assert [i for i, _ in rows] == [i for i, _ in ITEMS]
    assert [r["square"] for _, r in rows] == [n * n for n in range(10)]
    assert rows[3][1]["score"] == 3 / 7  # floats survive the chunk files exactly
    assert (summary.chunks, summary.chunks_run, summary.chunks_resumed) == (4, 4, 0)
    assert not job_folder(out).exists()  # nothing left beside the output


def test_an_interrupted_job_resumes_to_the_same_output(tmp_path):
    whole = tmp_path / "whole.jsonl"
    _run(whole, Squares())
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(out, Squares(fail_at="q07"))
    folder = job_folder(out)
    assert sorted(p.name for p in folder.iterdir()) == [
        "chunk-000000.json", "chunk-000001.json", "job.json"]  # the lock went with the run
    assert not out.exists()
    calls: list = []
    summary, _ = _run(out, Squares(calls=calls))
    assert summary.chunks_resumed == 2 and calls == [["q06", "q07", "q08"], ["q09"]]
    assert out.read_bytes() == whole.read_bytes()


def test_damaged_or_stale_chunks_are_computed_again(tmp_path, caplog):
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(out, Squares(fail_at="q09"))
    folder = job_folder(out)
    chunk = folder / "chunk-000001.json"
    chunk.write_text(chunk.read_text().replace('"square":16', '"square":17'))
    calls: list = []
    with caplog.at_level(logging.WARNING):
        _run(out, Squares(calls=calls))
    assert "rows altered after they were written: running that chunk again" in caplog.text
    assert calls == [["q03", "q04", "q05"], ["q09"]]
    assert json.loads(out.read_text().splitlines()[4])["square"] == 16
    # other settings: every chunk of the earlier job is dropped, none reused
    with pytest.raises(KeyboardInterrupt):
        _run(out, Squares(fail_at="q09"))
    calls = []
    summary, _ = _run(out, Squares(calls=calls), identity={"settings": 2})
    assert summary.chunks_resumed == 0 and len(calls) == 4
    # another chunking is another job too
    with pytest.raises(KeyboardInterrupt):
        _run(out, Squares(fail_at="q09"))
    summary, _ = _run(out, Squares(), chunk_size=5)
    assert summary.chunks_resumed == 0 and summary.chunks == 2


def test_a_folder_with_foreign_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    folder = job_folder(out)
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(DelfxError, match="holds files delfx did not write"):
        _run(out, Squares())
    assert (folder / "notes.txt").read_text() == "mine"


def test_one_run_of_a_job_at_a_time(tmp_path):
    out = tmp_path / "out.jsonl"
    job_folder(out).mkdir()
    with FolderLock(job_folder(out), LOCK_NAME, "delfx test"):
        with pytest.raises(DelfxError, match="another delfx test is writing to"):
            _run(out, Squares())


def test_a_chunk_of_other_ids_is_not_used(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    job = JobFolder(folder, "abc", [ITEMS[:2], ITEMS[2:4]])
    job.open()
    job.save(0, [{"a": 1}, {"a": 2}])
    assert job.open() == {0}
    other = JobFolder(folder, "abc", [ITEMS[1:3], ITEMS[3:5]])  # same identity, other plan
    assert other.open() == set() and not other.path(0).exists()
