"""`delfx extract`: plan shards, resume, fan chunks out to workers, write shards, report.

The driver is the only writer: workers return records chunk by chunk and the driver appends
them to the shard's ShardWriter in order, then closes (fsync, sha256, rename) and records the
shard in the manifest. So output needs no shared filesystem on a cluster (only the inputs must
be readable by every node), a shard is complete or absent, and memory stays flat: at most
`2 * workers` chunks are in flight.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.config import ExtractConfig
from delfx.artifacts import header
from delfx.errors import DelfxError
from delfx.extractor.executors import WorkerDied
from delfx.extractor.plan import REPORT_NAME, RunIdentity, RunLock, plan_shards
from delfx.inputs import ImageItem
from delfx.paths import atomic_write_json
from delfx.store import Manifest, ShardWriter, shard_file_name, verify
from delfx.store.schema import MANIFEST_NAME
from delfx.store.writer import PARTIAL_MARKER
from delfx.versions import library_versions

log = logging.getLogger(__name__)

CHUNKS_IN_FLIGHT_PER_WORKER = 2
REPORT_FORMAT = "delfx-extract-report"


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
    output_bytes: int = 0
    shard_nodes: dict[int, str] = field(default_factory=dict)

    @property
    def seconds_per_100(self) -> float | None:
        return 100 * self.seconds / self.images_processed if self.images_processed else None

    def to_json(self) -> dict[str, Any]:
        data = {**header(REPORT_FORMAT, 1), **dataclasses.asdict(self)}
        data["seconds_per_100_images"] = self.seconds_per_100
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


def _prepare_output(out_dir: Path, identity: RunIdentity, model: dict, overwrite: bool,
                    descriptor_dim: int, config: ExtractConfig) -> tuple[Manifest, set[int]]:
    """Refuse a mismatched resume; return the manifest and the shards already complete."""
    if overwrite:
        for path in list(out_dir.glob("shard-*.h5*")) + [out_dir / MANIFEST_NAME, out_dir / "plan.json",
                                                         out_dir / REPORT_NAME]:
            path.unlink(missing_ok=True)
    previous = RunIdentity.load(out_dir)
    if previous is None and (out_dir / MANIFEST_NAME).exists():
        raise DelfxError(f"{out_dir} holds features without a plan.json (not written by "
                         f"delfx extract?); use --overwrite or another folder")
    if previous is not None:
        differences = previous.differences(identity)
        if differences:
            raise DelfxError(f"{out_dir} was extracted with different settings; refusing to "
                             f"resume ({'; '.join(differences)}); use --overwrite or another folder")
    for leftover in out_dir.glob(f"*{PARTIAL_MARKER}*"):  # we hold the lock: nobody writes these
        leftover.unlink(missing_ok=True)
    identity.save(out_dir)
    if (out_dir / MANIFEST_NAME).exists():
        manifest = Manifest.load(out_dir)
        if manifest.global_model != model.get("global"):
            raise DelfxError(f"{out_dir} holds global descriptors {manifest.global_model}, this "
                             f"run makes {model.get('global')}; refusing to mix them; use "
                             f"--overwrite or another folder")
        report = verify(out_dir)
        for index in sorted(report.bad_shards & set(manifest.shards)):
            log.warning("shard %d is damaged and will be extracted again", index)
            del manifest.shards[index]
            (out_dir / shard_file_name(index, identity.num_shards)).unlink(missing_ok=True)
        manifest.save(out_dir)
    else:
        manifest = Manifest(num_shards=identity.num_shards, model_id=model["id"],
                            model_hash=model["hash"], config=config.to_recorded(model["output_config"]),
                            descriptor_dim=descriptor_dim, descriptor_dtype=config.descriptor_dtype,
                            global_model=model.get("global"))
        manifest.save(out_dir)
    return manifest, set(manifest.shards)


class _Progress:
    """tqdm bar on a terminal; otherwise a log line every `interval` seconds."""

    def __init__(self, total: int, interval: float = 10.0, enabled: bool = True):
        self.total, self.done, self.failed = total, 0, 0
        self.start = self.last = time.monotonic()
        self.interval = interval
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)

    def update(self, images: int, failed: int) -> None:
        self.done += images
        self.failed += failed
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(images)
            self.bar.set_postfix(failed=self.failed)
        elif time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("extract: %d/%d images (%.1f/s), %d failed, ETA %.0fs", self.done,
                     self.total, rate, self.failed, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_extraction(items: list[ImageItem], config: ExtractConfig, out_dir: Path, num_shards: int,
                   executor, *, overwrite: bool = False, chunk_size: int = 16,
                   max_retries: int = 2, workers: int | None = None,
                   progress: bool = True) -> Summary:
    """Extract `items` into `num_shards` shards under `out_dir`, resuming what is complete.

    Args:
        config: the extraction config; the executor receives it (resolved) from here only.
        executor: RayExecutor or InProcessExecutor (not started yet).
        chunk_size: images per task; a dead worker costs at most the chunks it held.
        max_retries: retries of a chunk whose worker died, before its shard is marked failed.
        workers: number of workers (default: as many as the cluster holds, at most one per shard).
    Returns:
        the run summary; shards_failed is non-empty when some shards could not be finished.
    """
    from delfx.extractor.models import resolve_model
    if not items:
        raise DelfxError("no images to extract")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = resolve_model(config)  # `auto` decided once, here, and recorded as the concrete model
    if executor.global_model is not None:  # refuse a wrong folder before starting any worker
        from delfx.globalnet.model import load_global_model
        load_global_model(executor.global_model)
    plan = plan_shards(items, num_shards)
    start = time.monotonic()
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
            identity = RunIdentity.of(model, model["output_config"], plan)
            manifest, complete = _prepare_output(out_dir, identity, model, overwrite,
                                                 model["descriptor_dim"], config)
            log.info("model %s (%s); %d of %d shards already complete", model["id"],
                     model["hash"][:12], len(complete), num_shards)
            summary = Summary(str(out_dir), {"id": model["id"], "hash": model["hash"]},
                              executor.name, images_total=len(items), shards_planned=num_shards,
                              shards_skipped=len(complete))
            pending = collections.deque(i for i in range(num_shards) if i not in complete)
            _drive(executor, pool, plan, pending, manifest, out_dir, summary, config,
                   model["descriptor_dim"], chunk_size, max_retries, progress)
        finally:
            executor.stop()
    summary.seconds = time.monotonic() - start
    summary.output_bytes = sum(p.stat().st_size for p in out_dir.glob("shard-*.h5"))
    atomic_write_json(out_dir / REPORT_NAME, summary.to_json())
    return summary


def _drive(executor, pool, plan, pending, manifest, out_dir, summary, config, descriptor_dim,
           chunk_size, max_retries, progress_enabled) -> None:
    idle = list(pool)
    active: dict[int, _Shard] = {}
    in_flight: dict[Any, tuple[_Shard, int, Any]] = {}  # handle -> (shard, chunk, worker)
    progress = _Progress(sum(len(plan[i]) for i in pending), enabled=progress_enabled)
    try:
        while pending or active:
            while idle and pending:
                index = pending.popleft()
                shard_items = plan[index]
                chunks = [shard_items[k:k + chunk_size] for k in range(0, len(shard_items), chunk_size)]
                writer = ShardWriter(out_dir / shard_file_name(index, manifest.num_shards),
                                     descriptor_dim=descriptor_dim,
                                     descriptor_dtype=config.descriptor_dtype,
                                     model_id=manifest.model_id, model_hash=manifest.model_hash,
                                     config=manifest.config, shard_index=index,
                                     num_shards=manifest.num_shards,
                                     global_model=manifest.global_model)
                active[index] = _Shard(index, chunks, idle.pop(), writer)
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
            for handle in executor.wait(list(in_flight), timeout=5.0):
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
                    for record in batch:
                        shard.writer.add(record)
                        _count(summary, record)
                    progress.update(len(batch), sum(1 for r in batch if not r.ok))
                    shard.next_write += 1
                if shard.next_write == len(shard.chunks):
                    _finish(shard, manifest, out_dir, summary, executor, idle, active)
    except BaseException:
        for shard in active.values():
            shard.writer.abort()  # a half-written shard must never look complete
        raise
    finally:
        progress.close()


def _count(summary: Summary, record) -> None:
    summary.images_processed += 1
    if record.ok:
        summary.ok += 1
        summary.features += record.num_features
    else:
        summary.failed_by_reason[record.reason] = summary.failed_by_reason.get(record.reason, 0) + 1


def _finish(shard: _Shard, manifest, out_dir, summary, executor, idle, active) -> None:
    info = shard.writer.close()
    manifest.record(out_dir, info)
    summary.shards_written += 1
    try:
        summary.shard_nodes[shard.index] = executor.describe(shard.worker)["node_id"]
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
