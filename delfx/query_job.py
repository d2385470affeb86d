"""Search and classify over many queries as a resumable job.

Queries are cut into chunks that run on workers (Ray actors on a local instance or a cluster,
or this process), each worker loading what it needs (index, gallery, models) once. The driver
is the only writer: it records each finished chunk in the job folder, and once every chunk is
there it hands the rows, in query order, to the caller, which writes the output atomically;
then the folder is deleted.

The job folder sits beside the output, `.<output name>.delfx-job/`:
 - job.json: format "delfx-query-job" v1, the job's identity (a sha256 of everything that
   decides its output: the inputs' digests, the settings, the chunking) and its chunk count;
 - chunk-NNNNNN.json: format "delfx-query-chunk" v1, that identity, the chunk's number, its
   query ids, one result row per query and a sha256 of the rows; written atomically;
 - .delfx-job.lock: one run of a job at a time (delfx.locks.FolderLock).
A run with the same identity reuses each chunk file whose identity, number, ids and digest
check out (anything else is computed again, with a warning); a run with another identity (other
settings or inputs) starts the folder over. Only files of these names are ever deleted. So a
killed worker costs the chunks it held, a killed driver or Ctrl-C the chunks in flight, and the
output is byte for byte the same however often the job was interrupted, on Ray or not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from delfx.artifacts import check_header, header
from delfx.digests import text_sha256
from delfx.errors import DelfxError
from delfx.locks import FolderLock
from delfx.paths import atomic_write_bytes, atomic_write_json
from delfx.progress import Progress
from delfx.ray_runtime import ClusterLost, RayActors, WorkerDied
from delfx.versions import library_versions

log = logging.getLogger(__name__)

JOB_FORMAT, CHUNK_FORMAT, FORMAT_VERSION = "delfx-query-job", "delfx-query-chunk", 1
JOB_NAME, LOCK_NAME = "job.json", ".delfx-job.lock"
_CHUNK_FILE = re.compile(r"chunk-\d{6}\.json$")
_TEMP_FILE = re.compile(r"\.(chunk-\d{6}|job)\.json\..+\.tmp$")  # atomic_write_bytes' temporaries
DEFAULT_CHUNK_SIZE = 32
CHUNKS_IN_FLIGHT_PER_WORKER = 2
HEALTH_CHECK_S = 10.0

# A query: its id and, for queries given as images, the image's path (None: a stored record).
Item = tuple[str, "str | None"]


def job_folder(out: Path) -> Path:
    """Where the job writing `out` keeps its chunks."""
    out = Path(out)
    return out.parent / f".{out.name}.delfx-job"


@dataclass
class JobSummary:
    """What a run of a job did (part of search's and classify's summaries)."""

    executor: str
    queries: int
    chunks: int
    chunks_resumed: int = 0
    chunks_run: int = 0
    workers: int = 0
    nodes: int = 0  # machines the workers ran on (Ray node ids at start)
    workers_replaced: int = 0
    startup_seconds: float = 0.0  # connecting, starting the workers, loading what they hold
    recording_seconds: float = 0.0  # the driver's own work per chunk: writing its file
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        ran = self.queries * self.chunks_run / self.chunks if self.chunks else 0
        busy = self.seconds - self.startup_seconds
        data["queries_per_s"] = round(ran / busy, 3) if ran and busy > 0 else None
        return data


class InProcessPool:
    """Every chunk runs here, synchronously, on one processor (no Ray)."""

    name = "in-process"

    def __init__(self, make: Callable[[], Any]):
        self.make = make

    def start(self) -> None:
        pass

    def workers(self, count: int) -> list:
        return [self.make()]

    def describe(self, worker) -> dict[str, Any]:
        return {"pid": os.getpid(), "node_id": "in-process", **worker.describe()}

    def submit(self, worker, chunk: list[Item]):
        return _Pending(worker, chunk)

    def wait(self, handles: list, timeout: float) -> list:
        return handles[:1]

    def result(self, handle) -> list:
        # run when collected, one at a time: each chunk is recorded before the next runs
        return handle.worker.process(handle.chunk)

    def replace(self, worker):
        return worker

    def health(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(eq=False)  # hashed by identity: a handle
class _Pending:
    worker: Any
    chunk: list

class ChunkWorker:
    """The body of a query-job actor: `factory(spec, threads)` builds the processor once (it
    loads the index, the gallery, the models); `process` runs one chunk on it."""

    def __init__(self, factory: Callable[[dict, int], Any], spec: dict, threads: int):
        # TensorFlow (query images extracted here) reads these when it starts: a worker's
        # CPU share, and results that repeat from run to run
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        import cv2
        cv2.setNumThreads(threads)
        try:
            import faiss
            faiss.omp_set_num_threads(threads)
        except ImportError:
            pass
        self.processor = factory(spec, threads)

    def describe(self) -> dict[str, Any]:
        import ray
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                **self.processor.describe()}

    def process(self, chunk: list[Item]) -> list:
        return self.processor.process(chunk)


class RayPool(RayActors):
    """Query-job workers as Ray actors (a local instance on 127.0.0.1 unless `address`)."""

    name = "ray"

    def __init__(self, factory: Callable[[dict, int], Any], spec: dict, *,
                 address: str | None = None, cpus_per_worker: float = 1, verbosity: int = 0,
                 connected: bool = False):
        super().__init__(address=address, verbosity=verbosity, cpus_per_worker=cpus_per_worker,
                         gpus_per_worker=None)
        self.factory, self.spec, self.connected = factory, spec, connected
        self._actor = None

    def start(self) -> None:
        if not self.connected:  # else the caller connected (it started actors of its own)
            self.connect()
        import ray
        if self.gpus_per_worker is None:  # FAISS on a GPU when the cluster has them
            gpus = ray.cluster_resources().get("GPU", 0)
            self.gpus_per_worker = 1 if gpus >= 1 else 0
        self._actor = ray.remote(ChunkWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)

    def _new_worker(self):
        return self._actor.remote(self.factory, self.spec, max(1, int(self.cpus_per_worker)))

    def workers(self, count: int) -> list:
        import ray
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.cpus_per_worker:  # Ray would wait for such a worker forever
            raise DelfxError(f"the Ray cluster has {cpus:g} CPUs, a worker needs "
                             f"{self.cpus_per_worker:g}")
        return [self._new_worker() for _ in range(min(count, self.capacity()))]

    def submit(self, worker, chunk: list[Item]):
        return worker.process.remote(chunk)

    def result(self, handle) -> list:
        import ray
        try:
            return super().result(handle)
        except ray.exceptions.RayTaskError as exc:  # the chunk raised on a live worker
            lines = str(exc).strip().splitlines()
            raise DelfxError(f"a chunk failed on its worker: {lines[-1] if lines else exc}; "
                             f"the chunks done are kept: run again to resume") from None

    def replace(self, worker):
        self.kill(worker)
        return self._new_worker()


class JobFolder:
    """The chunks of one job on disk (see the module's docstring)."""

    def __init__(self, folder: Path, identity: str, chunks: Sequence[list[Item]]):
        self.folder, self.identity, self.chunks = Path(folder), identity, chunks

    def path(self, n: int) -> Path:
        return self.folder / f"chunk-{n:06d}.json"

    def open(self) -> set[int]:
        """Start or resume the job (the lock held); the numbers of the chunks already done."""
        own = self._own_files()
        if own is None:
            raise DelfxError(f"{self.folder} holds files delfx did not write; remove it or "
                             f"write the output elsewhere")
        try:
            previous = json.loads((self.folder / JOB_NAME).read_text())
            check_header(previous, JOB_FORMAT, {FORMAT_VERSION}, str(self.folder / JOB_NAME),
                         what="delfx query job")
            same = previous.get("identity") == self.identity
        except (OSError, ValueError, DelfxError):
            previous, same = None, False
        if not same:
            for name in own:
                if _CHUNK_FILE.match(name):
                    (self.folder / name).unlink(missing_ok=True)
            if previous is not None:
                log.info("%s: another job (other inputs or settings) was left here: starting "
                         "over", self.folder)
        for name in own:
            if _TEMP_FILE.match(name):
                (self.folder / name).unlink(missing_ok=True)
        atomic_write_json(self.folder / JOB_NAME, {
            **header(JOB_FORMAT, FORMAT_VERSION), "identity": self.identity,
            "chunks": len(self.chunks), "queries": sum(len(c) for c in self.chunks),
            "versions": library_versions()})
        return {n for n in range(len(self.chunks)) if self._load(n, quiet=False) is not None}

    def _own_files(self) -> list[str] | None:
        """The folder's file names when every one is delfx's own (None: a foreign one)."""
        names = [p.name for p in self.folder.iterdir()]
        known = [n for n in names if n in (JOB_NAME, LOCK_NAME) or _CHUNK_FILE.match(n)
                 or _TEMP_FILE.match(n)]
        return names if len(known) == len(names) else None

    def save(self, n: int, rows: list) -> None:
        text = json.dumps(rows, separators=(",", ":"))
        body = {**header(CHUNK_FORMAT, FORMAT_VERSION), "identity": self.identity, "chunk": n,
                "ids": [i for i, _ in self.chunks[n]], "rows_sha256": text_sha256(text)}
        # rows last, as the exact text hashed: the check needs no re-serialising
        data = json.dumps(body, separators=(",", ":"))[:-1] + ',"rows":' + text + "}"
        atomic_write_bytes(self.path(n), data.encode("utf-8"))

    def _load(self, n: int, quiet: bool = True) -> list | None:
        """Chunk n's rows, when its file is there and checks out."""
        path = self.path(n)
        if not path.is_file():
            return None
        problem = None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            check_header(data, CHUNK_FORMAT, {FORMAT_VERSION}, str(path), what="query chunk")
            rows = data.get("rows")
            if data.get("identity") != self.identity or data.get("chunk") != n:
                problem = "of another job"
            elif data.get("ids") != [i for i, _ in self.chunks[n]] or \
                    not isinstance(rows, list) or len(rows) != len(self.chunks[n]):
                problem = "other queries than planned"
            elif text_sha256(json.dumps(rows, separators=(",", ":"))) != data.get("rows_sha256"):
                problem = "rows altered after they were written"
        except (OSError, ValueError, DelfxError) as exc:
            problem = f"unreadable ({str(exc).splitlines()[0][:120]})"
        if problem is None:
            return rows
        if not quiet:
            log.warning("%s: %s: running that chunk again", path, problem)
        path.unlink(missing_ok=True)
        return None

    def rows(self) -> Iterator[tuple[str, Any]]:
        """(query id, row) of every query, in query order, each chunk checked as it is read."""
        for n, chunk in enumerate(self.chunks):
            rows = self._load(n)
            if rows is None:
                raise DelfxError(f"{self.path(n)}: missing or damaged while the output was "
                                 f"written (another process in {self.folder}?); run again")
            yield from zip((i for i, _ in chunk), rows)

    def remove(self) -> None:
        for name in self._own_files() or []:
            if name != LOCK_NAME:
                (self.folder / name).unlink(missing_ok=True)


def run_query_job(items: Sequence[Item], out: Path, identity: dict[str, Any], pool, *,
                  write: Callable[[Iterator[tuple[str, Any]]], None], what: str,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, workers: int | None = None,
                  max_retries: int = 2, progress: bool = True,
                  stall_timeout: float = 1800.0, started: float | None = None) -> JobSummary:
    """Run every query through `pool`'s workers, chunk by chunk, resuming what is recorded;
    then `write(rows in query order)` (the caller's atomic output) and delete the job folder.

    Args:
        identity: what decides the output (digests of the inputs, settings); chunk_size is
            added. Another identity than the folder's starts the job over.
        pool: InProcessPool or RayPool (not started yet).
        what: "search" or "classify", for progress lines.
        max_retries: retries of a chunk whose worker died, before the run stops (what is
            recorded stays for a resume).
        stall_timeout: with no chunk finished for this long, the run stops (resumable).
        started: when the caller's run began (time.monotonic()), for the summary's times.
    """
    if not items:
        raise DelfxError("no queries")
    start = started if started is not None else time.monotonic()
    chunks = [list(items[k:k + chunk_size]) for k in range(0, len(items), chunk_size)]
    digest = text_sha256(json.dumps({**identity, "chunk_size": chunk_size,
                                     "ids": text_sha256("\n".join(i for i, _ in items))},
                                    sort_keys=True, default=str))
    folder = job_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = JobSummary(pool.name, len(items), len(chunks))
    with FolderLock(folder, LOCK_NAME, f"delfx {what}"):
        job = JobFolder(folder, digest, chunks)
        done = job.open()
        summary.chunks_resumed = len(done)
        pending = [n for n in range(len(chunks)) if n not in done]
        if done:
            log.info("%s: %d of %d chunks already done: resuming", what, len(done), len(chunks))
        if pending:
            pool.start()
            try:
                pool_workers = pool.workers(min(workers or len(pending), len(pending)))
                # each worker loaded, or a clear error now
                described = [pool.describe(worker) for worker in pool_workers]
                summary.workers = len(pool_workers)
                summary.nodes = len({d.get("node_id") for d in described})
                summary.startup_seconds = time.monotonic() - start
                log.info("%s: %d queries in %d chunks on %d %s worker(s)", what,
                         sum(len(chunks[n]) for n in pending), len(pending), len(pool_workers),
                         pool.name)
                _drive(pool, pool_workers, job, pending, summary, max_retries, what, progress,
                       stall_timeout)
            finally:
                pool.stop()
        write(job.rows())
        job.remove()
    try:
        folder.rmdir()  # empty once the lock file is gone (released above)
    except OSError:
        pass  # another run took it meanwhile
    summary.seconds = time.monotonic() - start
    return summary


def _drive(pool, pool_workers, job: JobFolder, pending: list[int], summary: JobSummary,
           max_retries: int, what: str, progress_enabled: bool, stall_timeout: float) -> None:
    """Chunks to workers (CHUNKS_IN_FLIGHT_PER_WORKER each), each result recorded as it
    arrives; a dead worker is replaced and its chunks resubmitted."""
    queue = list(reversed(pending))  # popped from the end: in order
    in_flight: dict[Any, tuple[int, Any]] = {}
    load = {id(w): 0 for w in pool_workers}
    attempts: dict[int, int] = {}
    idle_since = last_check = time.monotonic()
    progress = Progress(sum(len(job.chunks[n]) for n in pending), what=what, unit="queries",
                        enabled=progress_enabled)
    try:
        while queue or in_flight:
            for worker in pool_workers:
                while queue and load[id(worker)] < CHUNKS_IN_FLIGHT_PER_WORKER:
                    n = queue.pop()
                    in_flight[pool.submit(worker, job.chunks[n])] = (n, worker)
                    load[id(worker)] += 1
            ready = pool.wait(list(in_flight), timeout=5.0)
            now = time.monotonic()
            if ready:
                idle_since = now
            elif now - last_check >= HEALTH_CHECK_S:
                last_check = now
                pool.health()  # raises ClusterLost
                if now - idle_since > stall_timeout:
                    raise ClusterLost(f"no chunk finished in {stall_timeout:.0f} s")
            for handle in ready:
                n, worker = in_flight.pop(handle)
                try:
                    rows = pool.result(handle)
                except WorkerDied as exc:
                    attempts[n] = attempts.get(n, 0) + 1
                    if attempts[n] > max_retries:
                        raise DelfxError(f"{what}: chunk {n} lost its worker {attempts[n]} "
                                         f"times ({exc}); the {summary.chunks_run} chunks done "
                                         f"are kept: run again to resume") from None
                    if worker in pool_workers:  # the first of its chunks to report it
                        log.warning("%s: a worker died (%s): replacing it", what, exc)
                        replacement = pool.replace(worker)
                        pool_workers[pool_workers.index(worker)] = replacement
                        load[id(replacement)] = 0
                        summary.workers_replaced += 1
                        for h, (m, w) in list(in_flight.items()):
                            if w is worker:  # its other chunks die with it: run them again
                                del in_flight[h]
                                queue.append(m)
                    queue.append(n)
                    continue
                load[id(worker)] -= 1
                recording = time.perf_counter()
                job.save(n, rows)
                summary.recording_seconds += time.perf_counter() - recording
                summary.chunks_run += 1
                progress.update(len(rows), 0)
    except ClusterLost as exc:
        raise DelfxError(f"{what}: {exc}; the {summary.chunks_run} chunks done are kept: run "
                         f"again to resume") from None
    finally:
        progress.close()
