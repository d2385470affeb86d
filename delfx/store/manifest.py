"""The manifest of a feature set: which shards exist, their checksums, and what made them."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.artifacts import check_header
from delfx.errors import SchemaVersionError, StoreError
from delfx.paths import atomic_write_json, resolve_inside
from delfx.store import schema as S
from delfx.versions import library_versions


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a completed shard."""

    index: int
    file: str
    sha256: str
    bytes: int
    num_images: int
    num_ok: int
    num_failed: int
    num_features: int


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """`manifest.json`: rewritten atomically each time a shard completes.

    A feature set is complete when every planned shard (0 .. num_shards-1) has a record.
    """

    num_shards: int
    model_id: str
    model_hash: str
    config: dict[str, Any]
    descriptor_dim: int
    descriptor_dtype: str
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    versions: dict[str, str] = field(default_factory=library_versions)
    schema_version: int = S.SCHEMA_VERSION
    global_model: dict[str, Any] | None = None  # v2: {"id", "hash", "dim"} of images/global

    @property
    def complete(self) -> bool:
        return sorted(self.shards) == list(range(self.num_shards))

    @property
    def missing_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if i not in self.shards]

    def totals(self) -> dict[str, int]:
        records = self.shards.values()
        return {"images": sum(r.num_images for r in records),
                "ok": sum(r.num_ok for r in records),
                "failed": sum(r.num_failed for r in records),
                "features": sum(r.num_features for r in records),
                "bytes": sum(r.bytes for r in records),
                "shards_complete": len(self.shards)}

    def to_json(self) -> dict[str, Any]:
        return {"format": S.MANIFEST_FORMAT, "schema_version": self.schema_version,
                "model": {"id": self.model_id, "hash": self.model_hash}, "config": self.config,
                "descriptor_dim": self.descriptor_dim, "descriptor_dtype": self.descriptor_dtype,
                "num_shards": self.num_shards, "created": self.created, "updated": self.updated,
                "versions": self.versions, "totals": self.totals(), "global_model": self.global_model,
                "shards": [dataclasses.asdict(self.shards[i]) for i in sorted(self.shards)]}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "manifest") -> "Manifest":
        version = check_header(data, S.MANIFEST_FORMAT, S.SUPPORTED_SCHEMA_VERSIONS, source,
                               what="delfx manifest", version_key="schema_version",
                               error=StoreError, version_error=SchemaVersionError,
                               advice="upgrade delfx or re-extract")
        try:
            shards = {int(r["index"]): ShardInfo(**r) for r in data["shards"]}
            manifest = cls(num_shards=int(data["num_shards"]), model_id=data["model"]["id"],
                           model_hash=data["model"]["hash"], config=data["config"],
                           descriptor_dim=int(data["descriptor_dim"]),
                           descriptor_dtype=data["descriptor_dtype"], shards=shards,
                           created=data["created"], updated=data["updated"],
                           versions=data["versions"], schema_version=version,
                           global_model=data.get("global_model"))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{source}: malformed manifest ({exc!r})") from None
        for index, record in shards.items():
            if not 0 <= index < manifest.num_shards:
                raise StoreError(f"{source}: shard index {index} outside 0..{manifest.num_shards - 1}")
        return manifest

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        path = Path(root) / S.MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{root}: no {S.MANIFEST_NAME} (not a delfx feature set, or "
                             f"extraction has not completed a shard yet)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from None
        return cls.from_json(data, str(path))

    def save(self, root: Path) -> None:
        self.updated = _now()
        atomic_write_json(Path(root) / S.MANIFEST_NAME, self.to_json())

    def record(self, root: Path, info: ShardInfo) -> None:
        """Record a completed shard and save atomically."""
        if not 0 <= info.index < self.num_shards:
            raise StoreError(f"shard index {info.index} outside 0..{self.num_shards - 1}")
        self.shards[info.index] = info
        self.save(root)

    def shard_path(self, root: Path, index: int) -> Path:
        """Path of a recorded shard, guaranteed to lie inside `root`."""
        return resolve_inside(Path(root), self.shards[index].file)
