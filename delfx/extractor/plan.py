"""What an extraction run writes besides shards: the shard plan, the resume check, the lock.

Images go to shards by a hash of their id, so the plan depends only on the set of ids and the
shard count: a re-run plans the same shards, and adding images later touches only the shards
they hash to. `plan.json` records the plan (per-shard image count and a digest of the ids), the
model and the config; a resume against another model, config or input is refused with what
differs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delfx.artifacts import header, read_json_artifact
from delfx.digests import text_sha256
from delfx.errors import DelfxError
from delfx.inputs import ImageItem
from delfx.paths import atomic_write_json

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
PLAN_FORMAT, PLAN_VERSION = "delfx-extract-plan", 1
LOCK_NAME = ".delfx-extract.lock"
REPORT_NAME = "extract_report.json"


def shard_of(image_id: str, num_shards: int) -> int:
    """Stable shard of an image: the first 8 bytes of sha256(id), modulo the shard count."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def plan_shards(items: list[ImageItem], num_shards: int) -> list[list[ImageItem]]:
    """Split items into `num_shards` lists, each sorted by image id."""
    if num_shards < 1:
        raise DelfxError(f"--shards must be >= 1, got {num_shards}")
    shards: list[list[ImageItem]] = [[] for _ in range(num_shards)]
    for item in items:
        shards[shard_of(item.image_id, num_shards)].append(item)
    for shard in shards:
        shard.sort(key=lambda item: item.image_id)
    return shards


def ids_digest(items: list[ImageItem]) -> str:
    return text_sha256("\n".join(i.image_id for i in items))


@dataclass
class RunIdentity:
    """What must match for a run to resume another: model, output config, shard plan."""

    model_id: str
    model_hash: str
    config: dict[str, Any]
    num_shards: int
    shards: list[dict[str, Any]]  # [{index, num_images, ids_sha256}]

    @classmethod
    def of(cls, model: dict[str, Any], config: dict[str, Any], shards: list[list[ImageItem]]
           ) -> "RunIdentity":
        return cls(model["id"], model["hash"], config, len(shards),
                   [{"index": i, "num_images": len(s), "ids_sha256": ids_digest(s)}
                    for i, s in enumerate(shards)])

    def to_json(self) -> dict[str, Any]:
        return {**header(PLAN_FORMAT, PLAN_VERSION),
                "model": {"id": self.model_id, "hash": self.model_hash}, "config": self.config,
                "num_shards": self.num_shards, "shards": self.shards}

    @classmethod
    def load(cls, root: Path) -> "RunIdentity | None":
        path = Path(root) / PLAN_NAME
        if not path.is_file():
            return None
        advice = "use --overwrite to start over"
        data = read_json_artifact(path, PLAN_FORMAT, {PLAN_VERSION}, what="delfx extraction plan",
                                  advice=advice)
        try:
            return cls(data["model"]["id"], data["model"]["hash"], data["config"],
                       int(data["num_shards"]), data["shards"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DelfxError(f"{path}: unreadable plan ({exc!r}); {advice}") from None

    def save(self, root: Path) -> None:
        atomic_write_json(Path(root) / PLAN_NAME, self.to_json())

    def differences(self, other: "RunIdentity") -> list[str]:
        out = []
        if (self.model_id, self.model_hash) != (other.model_id, other.model_hash):
            out.append(f"model: {self.model_id} ({self.model_hash[:12]}) then, "
                       f"{other.model_id} ({other.model_hash[:12]}) now")
        for key in sorted(set(self.config) | set(other.config)):
            before, now = self.config.get(key, "<unset>"), other.config.get(key, "<unset>")
            if before != now:
                out.append(f"{key}: {before!r} then, {now!r} now")
        if self.num_shards != other.num_shards:
            out.append(f"shards: {self.num_shards} then, {other.num_shards} now")
        else:
            changed = [a["index"] for a, b in zip(self.shards, other.shards)
                       if a["ids_sha256"] != b["ids_sha256"]]
            if changed:
                before = sum(s["num_images"] for s in self.shards)
                now = sum(s["num_images"] for s in other.shards)
                out.append(f"input images: {before} then, {now} now (shards {changed[:10]} differ)")
        return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """One extraction per output folder: a lock file that names its holder.

    A lock left by a dead process on this host is recognised and taken over; a lock from
    another host cannot be checked, so it is refused with instructions.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and not _pid_alive(int(holder["pid"])):
                    log.warning("taking over a stale lock of dead process %s (started %s)",
                                holder["pid"], holder.get("started"))
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, started "
                       f"{holder.get('started')}") if holder else "an unreadable lock"
                raise DelfxError(f"another delfx extract is writing to {self.path.parent} ({who}); "
                                 f"if that run is dead, delete {self.path}") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise DelfxError(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
