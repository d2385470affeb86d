"""`delfx extract`: plan shards, resume, fan chunks out to workers, write shards, report.

The driver is the only writer: workers return records chunk by chunk and the driver appends
them to the shard's ShardWriter in order, then closes (fsync, sha256, rename) and records the
shard in the manifest. So output needs no shared filesystem on a cluster (only the inputs must
be readable by every node), a shard is complete or absent, and memory stays flat: at most
`2 * workers` chunks are in flight.
"""

from __future__ import annotations

import collections
import errno
import os
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.config import ExtractConfig
from delfx.artifacts import header
from delfx.errors import DelfxError
from delfx.extractor.executors import ClusterLost, WorkerDied
from delfx.extractor.plan import PLAN_NAME, REPORT_NAME, RunIdentity, RunLock, plan_shards
from delfx.inputs import ImageItem, input_stamp
from delfx.paths import atomic_write_json
from delfx.progress import Progress
from delfx.store import Manifest, ShardWriter, shard_file_name, verify
from delfx.store.schema import MANIFEST_NAME
from delfx.store.writer import PARTIAL_MARKER
from delfx.versions import library_versions

log = logging.getLogger(__name__)

CHUNKS_IN_FLIGHT_PER_WORKER = 2
# With no chunk finishing for this long, the executor's health is checked (every wait while
# nothing arrives costs one cheap check; a dead Ray is noticed within a few seconds).
HEALTH_CHECK_S = 10.0
REPORT_FORMAT = "delfx-extract-report"
_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass
class Summary:
    """What a run did (also written to extract_report.json)."""

    output: str
    model: dict[str, Any]
    executor: str
    images_total: int = 0
    images_processed: int = 0
    ok: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    features: int = 0
    shards_planned: int = 0
    shards_skipped: int = 0
    shards_written: int = 0
    shards_failed: dict[int, str] = field(default_factory=dict)
    workers_replaced: int = 0
    seconds: float = 0.0
    # of `seconds`: starting the executor and its workers (model loads) up to the first task,
    # and the driver's own writing (HDF5 appends, close: fsync + sha256 + rename, manifest)
    startup_seconds: float = 0.0
    writer_seconds: float = 0.0
    output_bytes: int = 0
    shard_nodes: dict[int, str] = field(default_factory=dict)

    @property
    def seconds_per_100(self) -> float | None:
        """Wall time per 100 processed images, start-up included."""
        return 100 * self.seconds / self.images_processed if self.images_processed else None

    @property
    def seconds_per_100_after_startup(self) -> float | None:
        """The marginal cost: wall time after start-up per 100 processed images."""
        if not self.images_processed:
            return None
        return 100 * max(self.seconds - self.startup_seconds, 0.0) / self.images_processed

    def to_json(self) -> dict[str, Any]:
        data = {**header(REPORT_FORMAT, 1), **dataclasses.asdict(self)}
        data["seconds_per_100_images"] = self.seconds_per_100
        data["seconds_per_100_images_after_startup"] = self.seconds_per_100_after_startup
        data["writer_share"] = self.writer_seconds / self.seconds if self.seconds else None
        data["features_per_ok_image"] = self.features / self.ok if self.ok else None
        data["versions"] = library_versions()
        return data


@dataclass
class _Shard:
    index: int
    chunks: list[list[ImageItem]]
    worker: Any
    writer: ShardWriter
    next_submit: int = 0
    next_write: int = 0
    in_flight: int = 0
    done: dict[int, list] = field(default_factory=dict)
    attempts: collections.Counter = field(default_factory=collections.Counter)
    # What the shard holds so far: counted into the summary only when the shard is complete,
    # so an abandoned shard's images are never reported as processed.
    written: list = field(default_factory=list)


# Files of an output folder that only delfx extract writes: --overwrite deletes these, and only
# these (a shard name is recognised exactly, partial files included).
_OWN_FILE = re.compile(r"shard-\d{5}-of-\d{5}\.h5(\.partial-\d+)?$")
_OWN_NAMES = {MANIFEST_NAME, PLAN_NAME, REPORT_NAME}
_START_OVER = "use --overwrite to start over (it deletes only delfx's own files), or another folder"


def _precheck(out_dir: Path, plan: list[list[ImageItem]], config: ExtractConfig,
              overwrite: bool) -> None:
    """What can be refused before any worker starts: a damaged manifest or plan, another plan or
    config than the folder's (a refusal costs milliseconds, not a Ray start and a model load)."""
    if overwrite:
        return
    try:
        previous = RunIdentity.load(out_dir)
        if (out_dir / MANIFEST_NAME).exists():
            Manifest.load(out_dir)
    except DelfxError as exc:
        raise DelfxError(str(exc) if "--overwrite" in str(exc) else f"{exc}; {_START_OVER}") from None
    if previous is None and (out_dir / MANIFEST_NAME).exists():
        raise DelfxError(f"{out_dir} holds features without a plan.json (not written by "
                         f"delfx extract?); {_START_OVER}")
    if previous is not None:
        mine = RunIdentity.of({"id": "", "hash": ""}, {}, plan, config.to_dict())
        differences = previous.plan_differences(mine)
        if differences:
            raise DelfxError(f"{out_dir} was extracted with different settings; refusing to "
                             f"resume ({'; '.join(differences)}); {_START_OVER}")


def _prepare_output(out_dir: Path, identity: RunIdentity, model: dict, overwrite: bool,
                    descriptor_dim: int, config: ExtractConfig, plan: list[list[ImageItem]],
                    stamps: dict[str, tuple[int, int]]) -> tuple[Manifest, set[int]]:
    """Refuse a mismatched resume; return the manifest and the shards already complete."""
    if overwrite:
        for path in out_dir.iterdir():
            if path.is_file() and (path.name in _OWN_NAMES or _OWN_FILE.match(path.name)):
                path.unlink(missing_ok=True)
    previous = RunIdentity.load(out_dir)
    if previous is None and (out_dir / MANIFEST_NAME).exists():
        raise DelfxError(f"{out_dir} holds features without a plan.json (not written by "
                         f"delfx extract?); {_START_OVER}")
    if previous is not None:
        differences = previous.differences(identity)
        if differences:
            raise DelfxError(f"{out_dir} was extracted with different settings; refusing to "
                             f"resume ({'; '.join(differences)}); {_START_OVER}")
    for leftover in out_dir.glob(f"*{PARTIAL_MARKER}*"):  # we hold the lock: nobody writes these
        if _OWN_FILE.match(leftover.name):
            leftover.unlink(missing_ok=True)
    identity.save(out_dir)
    if (out_dir / MANIFEST_NAME).exists():
        manifest = Manifest.load(out_dir)
        if manifest.global_model != model.get("global"):
            raise DelfxError(f"{out_dir} holds global descriptors {manifest.global_model}, this "
                             f"run makes {model.get('global')}; refusing to mix them; "
                             f"{_START_OVER}")
        report = verify(out_dir)
        for index in sorted(report.bad_shards & set(manifest.shards)):
            log.warning("shard %d is damaged and will be extracted again", index)
            _forget(manifest, out_dir, index, identity.num_shards)
        for index, changed in _changed_inputs(out_dir, manifest, plan, stamps).items():
            log.warning("shard %d: %d input image(s) changed since it was extracted (e.g. %s): "
                        "extracting it again", index, len(changed), ", ".join(changed[:3]))
            _forget(manifest, out_dir, index, identity.num_shards)
        manifest.save(out_dir)
    else:
        manifest = Manifest(num_shards=identity.num_shards, model_id=model["id"],
                            model_hash=model["hash"], config=config.to_recorded(model["output_config"]),
                            descriptor_dim=descriptor_dim, descriptor_dtype=config.descriptor_dtype,
                            global_model=model.get("global"),
                            descriptor_norm="l2" if model.get("unit_norm") else None)
        manifest.save(out_dir)
    return manifest, set(manifest.shards)


def _forget(manifest: Manifest, out_dir: Path, index: int, num_shards: int) -> None:
    """Drop a recorded shard (to extract it again): its record, then its file (ours by name)."""
    del manifest.shards[index]
    manifest.save(out_dir)
    (out_dir / shard_file_name(index, num_shards)).unlink(missing_ok=True)


def _changed_inputs(out_dir: Path, manifest: Manifest, plan: list[list[ImageItem]],
                    stamps: dict[str, tuple[int, int]]) -> dict[int, list[str]]:
    """Complete shards whose input files changed (size or mtime) since they were written, with
    the ids that changed. Shards of schema < 3 carry no stamps: they are kept, with a warning."""
    from delfx.store import ShardReader
    changed, unstamped = {}, []
    for index in sorted(manifest.shards):
        with ShardReader(manifest.shard_path(out_dir, index)) as reader:
            if reader.input_stamps is None:
                unstamped.append(index)
                continue
            sizes, mtimes = reader.input_stamps
            ids = [image_id for image_id, size, mtime in zip(reader.image_ids, sizes, mtimes)
                   if stamps.get(image_id, (-2, -2)) != (int(size), int(mtime))]
        if ids:
            changed[index] = ids
    if unstamped:
        log.warning("shards %s were written by an older delfx and record no input stamps: an "
                    "image changed since then is not noticed there (--overwrite re-extracts)",
                    unstamped[:10])
    return changed


def run_extraction(items: list[ImageItem], config: ExtractConfig, out_dir: Path, num_shards: int,
                   executor, *, overwrite: bool = False, chunk_size: int = 16,
                   max_retries: int = 2, workers: int | None = None,
                   progress: bool = True, stall_timeout: float = 1800.0) -> Summary:
    """Extract `items` into `num_shards` shards under `out_dir`, resuming what is complete.

    Args:
        config: the extraction config; the executor receives it (resolved) from here only.
        executor: RayExecutor or InProcessExecutor (not started yet).
        chunk_size: images per task; a dead worker costs at most the chunks it held.
        max_retries: retries of a chunk whose worker died, before its shard is marked failed.
        workers: number of workers (default: as many as the cluster holds, at most one per shard).
        stall_timeout: with no chunk finished for this many seconds, the run stops (shards left
            for a resume), even if Ray looks healthy.
    Returns:
        the run summary; shards_failed is non-empty when some shards could not be finished.
    """
    from delfx.extractor.models import resolve_model
    if not items:
        raise DelfxError("no images to extract")
    out_dir = Path(out_dir)
    # `auto` decided once, here, and recorded as the concrete model; a model that cannot run
    # here is refused before the output folder exists
    config = resolve_model(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if executor.global_model is not None:  # refuse a wrong folder before starting any worker
        from delfx.globalnet.model import load_global_model
        load_global_model(executor.global_model)
    plan = plan_shards(items, num_shards)
    _precheck(out_dir, plan, config, overwrite)
    start = time.monotonic()
    stamps = {item.image_id: input_stamp(item.path) for item in items}
    log.debug("stat'ed %d inputs in %.1f s", len(items), time.monotonic() - start)
    with RunLock(out_dir):
        executor.start(config)
        try:
            pool = executor.workers(workers or num_shards)
            described = [executor.describe(worker) for worker in pool]
            hashes = {d["hash"] for d in described}
            if len(hashes) != 1:
                raise DelfxError(f"workers built different models ({sorted(hashes)}): are the "
                                 f"same delfx and library versions installed on every node?")
            model = described[0]
            identity = RunIdentity.of(model, model["output_config"], plan, config.to_dict())
            manifest, complete = _prepare_output(out_dir, identity, model, overwrite,
                                                 model["descriptor_dim"], config, plan, stamps)
            log.info("model %s (%s); %d of %d shards already complete", model["id"],
                     model["hash"][:12], len(complete), num_shards)
            summary = Summary(str(out_dir), {"id": model["id"], "hash": model["hash"]},
                              executor.name, images_total=len(items), shards_planned=num_shards,
                              shards_skipped=len(complete),
                              startup_seconds=time.monotonic() - start)
            pending = collections.deque(i for i in range(num_shards) if i not in complete)
            try:
                _drive(executor, pool, plan, pending, manifest, out_dir, summary, config,
                       model["descriptor_dim"], chunk_size, max_retries, progress, stamps,
                       stall_timeout)
            except OSError as exc:  # the output device: full, read-only, gone...
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise DelfxError(f"cannot write to {out_dir}: {reason}; the "
                                 f"{summary.shards_written} shard(s) finished in this run are "
                                 f"kept, no partial file is left"
                                 f"{': free space, then run again to resume' if exc.errno in _FULL else ''}"
                                 ) from None
        finally:
            executor.stop()
    summary.seconds = time.monotonic() - start
    summary.output_bytes = sum(p.stat().st_size for p in out_dir.glob("shard-*.h5"))
    atomic_write_json(out_dir / REPORT_NAME, summary.to_json())
    return summary


def _drive(executor, pool, plan, pending, manifest, out_dir, summary, config, descriptor_dim,
           chunk_size, max_retries, progress_enabled, stamps, stall_timeout) -> None:
    """Run the pending shards to completion; a lost cluster ends the run with those shards
    failed (the summary says so, the next run resumes them)."""
    idle = list(pool)
    active: dict[int, _Shard] = {}
    in_flight: dict[Any, tuple[_Shard, int, Any]] = {}  # handle -> (shard, chunk, worker)
    progress = Progress(sum(len(plan[i]) for i in pending), what="extract", unit="images",
                        enabled=progress_enabled)
    last_result = last_check = time.monotonic()
    try:
        _run(executor, plan, pending, manifest, out_dir, summary, config, descriptor_dim,
             chunk_size, max_retries, progress, stamps, stall_timeout, idle, active, in_flight,
             [last_result, last_check])
    except ClusterLost as exc:
        log.error("%s: stopping; the shards not finished are left for a resume", exc)
        for index in sorted(set(active) | set(pending)):
            summary.shards_failed[index] = f"not finished: {exc}"
        for shard in active.values():
            shard.writer.abort()
    except BaseException:
        for shard in active.values():
            shard.writer.abort()  # a half-written shard must never look complete
        raise
    finally:
        progress.close()


def _run(executor, plan, pending, manifest, out_dir, summary, config, descriptor_dim, chunk_size,
         max_retries, progress, stamps, stall_timeout, idle, active, in_flight, clocks) -> None:
    """The loop of `_drive`: shards to idle workers, chunks in flight, results written in
    order; `clocks` = [last result, last health check] (monotonic s)."""
    while pending or active:
        while idle and pending:
            index = pending.popleft()
            shard_items = plan[index]
            chunks = [shard_items[k:k + chunk_size] for k in range(0, len(shard_items), chunk_size)]
            opened = time.perf_counter()
            writer = ShardWriter(out_dir / shard_file_name(index, manifest.num_shards),
                                 descriptor_dim=descriptor_dim,
                                 descriptor_dtype=config.descriptor_dtype,
                                 model_id=manifest.model_id, model_hash=manifest.model_hash,
                                 config=manifest.config, shard_index=index,
                                 num_shards=manifest.num_shards,
                                 global_model=manifest.global_model)
            summary.writer_seconds += time.perf_counter() - opened
            try:
                active[index] = _Shard(index, chunks, idle.pop(), writer)
            except BaseException:  # not yet in `active`, so nothing else would remove it
                writer.abort()
                raise
        for shard in list(active.values()):
            if not shard.chunks:
                _finish(shard, manifest, out_dir, summary, executor, idle, active)
                continue
            while shard.next_submit < len(shard.chunks) and shard.in_flight < CHUNKS_IN_FLIGHT_PER_WORKER:
                handle = executor.submit(shard.worker, shard.chunks[shard.next_submit])
                in_flight[handle] = (shard, shard.next_submit, shard.worker)
                shard.next_submit += 1
                shard.in_flight += 1
        if not in_flight:
            continue
        ready = executor.wait(list(in_flight), timeout=5.0)
        now = time.monotonic()
        if ready:
            clocks[0] = now
        elif now - clocks[1] >= HEALTH_CHECK_S:
            clocks[1] = now
            executor.health()  # raises ClusterLost
            if now - clocks[0] > stall_timeout:
                raise ClusterLost(f"no chunk finished in {stall_timeout:.0f} s "
                                  f"(--stall-timeout)")
        for handle in ready:
            shard, k, worker = in_flight.pop(handle)
            shard.in_flight -= 1
            try:
                records = executor.result(handle)
            except WorkerDied as exc:
                _retry(executor, shard, k, worker, exc, in_flight, max_retries, summary,
                       active, idle)
                continue
            if shard.index not in active:  # the shard failed meanwhile
                continue
            shard.done[k] = records
            while shard.next_write in shard.done:
                batch = shard.done.pop(shard.next_write)
                writing = time.perf_counter()
                for record in batch:
                    shard.writer.add(record, stamps.get(record.image_id, (-1, -1)))
                    shard.written.append(record.summary_row())
                summary.writer_seconds += time.perf_counter() - writing
                progress.update(len(batch), sum(1 for r in batch if not r.ok))
                shard.next_write += 1
            if shard.next_write == len(shard.chunks):
                _finish(shard, manifest, out_dir, summary, executor, idle, active)


def _count(summary: Summary, rows: list[tuple[bool, str, int]]) -> None:
    """Add a completed shard's (ok, reason, features) rows to the summary."""
    for ok, reason, features in rows:
        summary.images_processed += 1
        if ok:
            summary.ok += 1
            summary.features += features
        else:
            summary.failed_by_reason[reason] = summary.failed_by_reason.get(reason, 0) + 1


def _finish(shard: _Shard, manifest, out_dir, summary, executor, idle, active) -> None:
    closing = time.perf_counter()
    info = shard.writer.close()
    manifest.record(out_dir, info)
    summary.writer_seconds += time.perf_counter() - closing
    summary.shards_written += 1
    _count(summary, shard.written)
    try:
        summary.shard_nodes[shard.index] = executor.describe(shard.worker, timeout=30)["node_id"]
    except Exception:  # informational only
        pass
    idle.append(shard.worker)
    del active[shard.index]
    log.debug("shard %d complete: %d images", shard.index, info.num_images)


def _retry(executor, shard: _Shard, k: int, dead, exc: Exception, in_flight, max_retries,
           summary, active, idle) -> None:
    """Chunk k's worker died: replace the worker (once) and resubmit, or give the shard up."""
    if shard.index not in active:
        return
    if shard.worker is dead:  # other chunks of the same dead worker find it replaced already
        log.warning("worker died on shard %d (%s); replacing it", shard.index, exc)
        shard.worker = executor.replace(dead)
        summary.workers_replaced += 1
    shard.attempts[k] += 1
    if shard.attempts[k] > max_retries:
        log.error("shard %d failed after %d retries: %s", shard.index, max_retries, exc)
        summary.shards_failed[shard.index] = str(exc)
        shard.writer.abort()
        for handle, (other, _, _) in list(in_flight.items()):
            if other is shard:
                del in_flight[handle]
        idle.append(shard.worker)
        del active[shard.index]
        return
    handle = executor.submit(shard.worker, shard.chunks[k])
    in_flight[handle] = (shard, k, shard.worker)
    shard.in_flight += 1
