"""`delfx verify` and `delfx inspect`: check a feature set against its manifest, and summarise it."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import StoreError
from delfx.store import schema as S
from delfx.store.manifest import Manifest
from delfx.digests import file_sha256
from delfx.store.reader import ShardReader
from delfx.store.writer import PARTIAL_MARKER

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Problems make a feature set unusable (verify fails); warnings are worth knowing."""

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_shards: set[int] = field(default_factory=set)
    shards_checked: int = 0
    missing: list[int] = field(default_factory=list)  # planned shards not completed yet

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damage(self) -> list[str]:
        """The problems that are not merely shards still to be extracted."""
        waiting = {f"shard {i}: not completed (no record in the manifest)" for i in self.missing}
        return [p for p in self.problems if p not in waiting]

    def problem(self, message: str, shard: int | None = None) -> None:
        self.problems.append(message)
        if shard is not None:
            self.bad_shards.add(shard)


def _check_shard(root: Path, manifest: Manifest, index: int, report: VerifyReport,
                 checksum: bool) -> list[str]:
    """Check one recorded shard; return its image ids when it is readable."""
    record = manifest.shards[index]
    try:
        path = manifest.shard_path(root, index)
    except StoreError as exc:
        report.problem(f"shard {index}: {exc}", index)
        return []
    name = record.file
    if not path.is_file():
        report.problem(f"shard {index} ({name}): file is missing", index)
        return []
    size = path.stat().st_size
    if size != record.bytes:
        report.problem(f"shard {index} ({name}): size {size} bytes, manifest says {record.bytes} "
                       f"(truncated or replaced)", index)
        return []
    if checksum and file_sha256(path) != record.sha256:
        report.problem(f"shard {index} ({name}): sha256 differs from the manifest "
                       f"(the file was altered after it was written)", index)
        return []
    try:
        with ShardReader(path) as reader:
            expected = {"images": record.num_images, "features": record.num_features,
                        "ok": record.num_ok, "failed": record.num_failed}
            found = {"images": len(reader), "features": reader.num_features,
                     "ok": int((reader.status == S.STATUS_OK).sum()),
                     "failed": int((reader.status != S.STATUS_OK).sum())}
            for key in expected:
                if expected[key] != found[key]:
                    report.problem(f"shard {index} ({name}): {found[key]} {key}, manifest says "
                                   f"{expected[key]}", index)
            if (reader.model_id, reader.model_hash) != (manifest.model_id, manifest.model_hash):
                report.problem(f"shard {index} ({name}): model {reader.model_id} "
                               f"({reader.model_hash[:12]}), manifest says {manifest.model_id} "
                               f"({manifest.model_hash[:12]})", index)
            if (reader.shard_index, reader.num_shards) != (index, manifest.num_shards):
                report.problem(f"shard {index} ({name}): file says shard {reader.shard_index} of "
                               f"{reader.num_shards}", index)
            if (reader.descriptor_dim, reader.descriptor_dtype.name) != (
                    manifest.descriptor_dim, manifest.descriptor_dtype):
                report.problem(f"shard {index} ({name}): descriptors {reader.descriptor_dim}-d "
                               f"{reader.descriptor_dtype.name}, manifest says "
                               f"{manifest.descriptor_dim}-d {manifest.descriptor_dtype}", index)
            if reader.global_model != manifest.global_model:
                report.problem(f"shard {index} ({name}): global descriptors "
                               f"{reader.global_model}, manifest says {manifest.global_model}",
                               index)
            return list(reader.image_ids)
    except StoreError as exc:
        report.problem(f"shard {index} ({name}): {exc}", index)
        return []


def verify(root: Path, *, checksum: bool = True, only: set[int] | None = None) -> VerifyReport:
    """Check every shard against the manifest: presence, size, sha256, schema, counts, model.

    Args:
        root: the feature-set folder.
        checksum: re-hash every shard (reads every byte; turn off for a quick structural check).
        only: check just these shards (and do not report the missing ones).
    """
    root = Path(root)
    report = VerifyReport(root)
    try:
        manifest = Manifest.load(root)
    except StoreError as exc:
        report.problem(str(exc))
        return report
    for index in manifest.missing_shards if only is None else []:
        report.problem(f"shard {index}: not completed (no record in the manifest)", index)
        report.missing.append(index)
    owner: dict[str, int] = {}
    for index in sorted(manifest.shards):
        if only is not None and index not in only:
            continue
        ids = _check_shard(root, manifest, index, report, checksum)
        report.shards_checked += 1
        for image_id in ids:
            if image_id in owner:
                report.problem(f"image {image_id!r} is stored in shards {owner[image_id]} and "
                               f"{index}", index)
            owner.setdefault(image_id, index)
    recorded = {record.file for record in manifest.shards.values()}
    for path in sorted(root.glob("*.h5*")):
        if PARTIAL_MARKER in path.name:
            report.warnings.append(f"{path.name}: leftover of an interrupted write (ignored; "
                                   f"safe to delete when no extraction is running)")
        elif path.name not in recorded:
            report.warnings.append(f"{path.name}: not in the manifest (ignored)")
    return report


def require_intact(root: Path, shards: set[int] | None = None) -> None:
    """Refuse to build on shards that fail `verify` (sha256 against the manifest included):
    what an index or a classifier is built from must be what was written."""
    report = verify(root, only=shards)
    problems = report.damage
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(f"{root}: {problems[0]}{more}; run delfx verify, and extract the "
                         f"damaged shards again")


def inspect(root: Path, *, checksum: bool = True, failed: bool = False) -> dict[str, Any]:
    """Summary of a feature set: images ok/failed by reason, features per image, bytes, model.
    With `failed`, also "failed_images": each failed image's id, reason and message (shard
    order; damaged shards are left out, as from every figure)."""
    root = Path(root)
    manifest = Manifest.load(root)
    integrity = verify(root, checksum=checksum)
    reasons: collections.Counter[str] = collections.Counter()
    counts, failures = [], []
    for index in sorted(set(manifest.shards) - integrity.bad_shards):  # damaged: not read
        with ShardReader(manifest.shard_path(root, index)) as reader:
            ok = reader.status == S.STATUS_OK
            counts.append(reader.counts[ok])
            reasons.update(r for r, good in zip(reader.reasons, ok) if not good)
            if failed:
                failures += [{"id": i, "reason": r, "message": m, "shard": index}
                             for i, r, m, good in zip(reader.image_ids, reader.reasons,
                                                      reader.messages, ok) if not good]
    per_image = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    totals = manifest.totals()
    stats = ({"min": int(per_image.min()), "median": float(np.median(per_image)),
              "mean": float(per_image.mean()), "max": int(per_image.max())}
             if len(per_image) else None)
    return {
        "root": str(root),
        "model": {"id": manifest.model_id, "hash": manifest.model_hash},
        "config": manifest.config,
        "descriptor": {"dim": manifest.descriptor_dim, "dtype": manifest.descriptor_dtype},
        "shards": {"planned": manifest.num_shards, "complete": len(manifest.shards),
                   "missing": manifest.missing_shards},
        "images": {"total": totals["images"], "ok": totals["ok"], "failed": totals["failed"],
                   "failed_by_reason": dict(sorted(reasons.items()))},
        "features": {"total": totals["features"], "per_ok_image": stats},
        "bytes": {"total": totals["bytes"],
                  "per_image": totals["bytes"] / totals["images"] if totals["images"] else None},
        "global": manifest.global_model,
        "integrity": {"checked_sha256": checksum, "ok": not integrity.damage,
                      "problems": integrity.damage, "warnings": integrity.warnings},
        "schema_version": manifest.schema_version,
        "versions": manifest.versions,
        "created": manifest.created,
        "updated": manifest.updated,
        **({"failed_images": failures} if failed else {}),
    }
