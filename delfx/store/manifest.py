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


_SHARD_FIELDS = {f.name for f in dataclasses.fields(ShardInfo)}


class _Checker:
    """Type checks of manifest fields, each failing with one line that names the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str):
        raise StoreError(f"{self.source}: malformed manifest ({where}: {what}); repair it from "
                         f"the shards with `delfx verify`, or extract again with --overwrite")

    def value(self, data: dict, key: str, kind: type, where: str = ""):
        label = f"{where}.{key}" if where else key
        if not isinstance(data, dict) or key not in data:
            self.fail(label, "missing")
        if not isinstance(data[key], kind):
            self.fail(label, f"{data[key]!r} is not a {kind.__name__}")
        return data[key]

    def mapping(self, data: dict, key: str) -> dict:
        return self.value(data, key, dict)

    def integer(self, data: dict, key: str, minimum: int, where: str = "") -> int:
        value = self.value(data, key, int, where)
        if isinstance(value, bool) or value < minimum:
            self.fail(f"{where}.{key}" if where else key, f"{value!r} is not an integer >= {minimum}")
        return value

    def text(self, data: dict, key: str, where: str = "") -> str:
        value = self.value(data, key, str, where)
        if not value:
            self.fail(f"{where}.{key}" if where else key, "empty")
        return value

    def digest(self, data: dict, key: str, where: str = "") -> str:
        value = self.text(data, key, where)
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            self.fail(f"{where}.{key}", f"{value!r} is not a sha256 hex digest")
        return value


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
    # v3: "l2" when the model writes unit-norm descriptors (readers then check every one they
    # read); None when it does not promise it, or for sets written before v3.
    descriptor_norm: str | None = None

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
                "descriptor_norm": self.descriptor_norm,
                "shards": [dataclasses.asdict(self.shards[i]) for i in sorted(self.shards)]}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "manifest") -> "Manifest":
        version = check_header(data, S.MANIFEST_FORMAT, S.SUPPORTED_SCHEMA_VERSIONS, source,
                               what="delfx manifest", version_key="schema_version",
                               error=StoreError, version_error=SchemaVersionError,
                               advice="upgrade delfx or re-extract")
        check = _Checker(source)
        num_shards = check.integer(data, "num_shards", 1)
        model = check.mapping(data, "model")
        records = check.value(data, "shards", list)
        shards: dict[int, ShardInfo] = {}
        for k, record in enumerate(records):
            where = f"shards[{k}]"
            if not isinstance(record, dict) or set(record) != _SHARD_FIELDS:
                raise StoreError(f"{source}: malformed manifest ({where} must have exactly the "
                                 f"fields {sorted(_SHARD_FIELDS)})")
            info = ShardInfo(**{name: check.integer(record, name, 0, where)
                                for name in _SHARD_FIELDS if name not in ("file", "sha256")},
                             file=check.text(record, "file", where),
                             sha256=check.digest(record, "sha256", where))
            if info.index >= num_shards or info.index in shards:
                raise StoreError(f"{source}: malformed manifest ({where}: shard index {info.index} "
                                 f"outside 0..{num_shards - 1} or recorded twice)")
            if info.num_ok + info.num_failed != info.num_images or (
                    info.num_features and not info.num_ok):
                raise StoreError(f"{source}: malformed manifest ({where}: counts disagree)")
            shards[info.index] = info
        global_model = data.get("global_model")
        if global_model is not None:
            check.text(global_model, "id", "global_model")
            check.text(global_model, "hash", "global_model")
            check.integer(global_model, "dim", 1, "global_model")
        norm = data.get("descriptor_norm")
        if norm not in (None, "l2"):
            raise StoreError(f"{source}: malformed manifest (descriptor_norm {norm!r})")
        dtype = check.text(data, "descriptor_dtype")
        if dtype not in S.DESCRIPTOR_DTYPES:
            raise StoreError(f"{source}: malformed manifest (descriptor_dtype {dtype!r})")
        return cls(num_shards=num_shards, model_id=check.text(model, "id", "model"),
                   model_hash=check.text(model, "hash", "model"),
                   config=check.value(data, "config", dict),
                   descriptor_dim=check.integer(data, "descriptor_dim", 1),
                   descriptor_dtype=dtype, shards=shards, created=check.text(data, "created"),
                   updated=check.text(data, "updated"),
                   versions=check.value(data, "versions", dict), schema_version=version,
                   global_model=global_model, descriptor_norm=norm)

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
        self.schema_version = S.SCHEMA_VERSION  # this delfx writes the current layout
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
