"""What an extraction run writes besides shards: the shard plan, the resume check, the lock.

Images go to shards by a hash of their id, so the plan depends only on the set of ids and the
shard count: a re-run plans the same shards, and adding images later touches only the shards
they hash to. `plan.json` records the plan (per-shard image count and a digest of the ids), the
model and the config; a resume against another model, config or input is refused with what
differs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delfx.artifacts import header, read_json_artifact
from delfx.digests import text_sha256
from delfx.errors import DelfxError
from delfx.inputs import ImageItem
from delfx.locks import FolderLock
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
    # The resolved extraction config as asked for (model `auto` already decided): compared
    # before any worker starts, so a resume that must be refused is refused at once. None in
    # plans of delfx 0.1.0.
    requested: dict[str, Any] | None = None

    @classmethod
    def of(cls, model: dict[str, Any], config: dict[str, Any], shards: list[list[ImageItem]],
           requested: dict[str, Any] | None = None) -> "RunIdentity":
        return cls(model["id"], model["hash"], config, len(shards),
                   [{"index": i, "num_images": len(s), "ids_sha256": ids_digest(s)}
                    for i, s in enumerate(shards)], requested)

    def to_json(self) -> dict[str, Any]:
        return {**header(PLAN_FORMAT, PLAN_VERSION),
                "model": {"id": self.model_id, "hash": self.model_hash}, "config": self.config,
                "num_shards": self.num_shards, "shards": self.shards,
                "requested_config": self.requested}

    @classmethod
    def load(cls, root: Path) -> "RunIdentity | None":
        path = Path(root) / PLAN_NAME
        if not path.is_file():
            return None
        advice = "use --overwrite to start over"
        data = read_json_artifact(path, PLAN_FORMAT, {PLAN_VERSION}, what="delfx extraction plan",
                                  advice=advice)
        try:
            identity = cls(data["model"]["id"], data["model"]["hash"], data["config"],
                           int(data["num_shards"]), data["shards"], data.get("requested_config"))
            for shard in identity.shards:
                int(shard["index"]), int(shard["num_images"]), str(shard["ids_sha256"])
            if not isinstance(identity.config, dict):
                raise TypeError("config is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise DelfxError(f"{path}: unreadable plan ({exc!r}); {advice}") from None
        return identity

    def save(self, root: Path) -> None:
        atomic_write_json(Path(root) / PLAN_NAME, self.to_json())

    def differences(self, other: "RunIdentity") -> list[str]:
        """Everything that differs: plan, requested config, model and its output config."""
        out = []
        if (self.model_id, self.model_hash) != (other.model_id, other.model_hash):
            out.append(f"model: {self.model_id} ({self.model_hash[:12]}) then, "
                       f"{other.model_id} ({other.model_hash[:12]}) now")
        out += _config_differences(self.config, other.config)
        return out + self.plan_differences(other)

    def plan_differences(self, other: "RunIdentity") -> list[str]:
        """What differs without knowing the model: shards, input ids, the config asked for."""
        out = []
        if self.requested is not None and other.requested is not None:
            out += _config_differences(self.requested, other.requested)
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


def _config_differences(before: dict, now: dict) -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        then, current = before.get(key, "<unset>"), now.get(key, "<unset>")
        if then != current:
            out.append(f"{key}: {then!r} then, {current!r} now")
    return out


class RunLock(FolderLock):
    """One extraction per output folder (delfx.locks.FolderLock on .delfx-extract.lock)."""

    def __init__(self, root: Path):
        super().__init__(root, LOCK_NAME, "delfx extract")
