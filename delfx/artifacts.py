"""The header of every file delfx writes besides the shards, and the one check every reader runs.

Each JSON artifact (plan.json, index.json, global.json, a classifier's config.json and
labels.json, calibrations, train-delf and exported model metadata) and each small HDF5 file
(PCA, index mapping) starts with the same two keys:

    {"format": "delfx-index", "format_version": 1, ...}

`format` says what the file is (so a classifier folder is never read as an index), and
`format_version` which layout of it (a reader refuses versions it does not know, with a line
that says what to do). delfx 0.1.0 wrote `version` instead of `format_version` in some of
them; readers accept that spelling too. The feature store (manifest.json and the shards) is the
one exception: its version is the store schema's, `schema_version` (docs/FORMAT.md).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Collection, Mapping

from delfx.errors import DelfxError

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
LEGACY_VERSION_KEY = "version"  # delfx 0.1.0's spelling in some artifacts


def header(format_name: str, version: int) -> dict[str, Any]:
    """The two keys every artifact starts with."""
    return {FORMAT_KEY: format_name, VERSION_KEY: int(version)}


def check_header(data: Any, format_name: str, supported: Collection[int], source: str, *,
                 what: str, version_key: str = VERSION_KEY,
                 error: type[DelfxError] = DelfxError,
                 version_error: type[DelfxError] | None = None,
                 advice: str = "upgrade delfx or rebuild it") -> int:
    """The artifact's format version, after checking `data` is a `format_name` of a known version.

    Args:
        data: the parsed JSON object, or HDF5 attributes (any mapping).
        source: where it came from (a path), for the message.
        what: what it should be, in words ("delfx index").
        version_key: the key of the version (`schema_version` for the feature store).
        error: the exception type raised for a foreign file; `version_error` (default: the
            same) for an unknown version.
    """
    if not isinstance(data, Mapping) or data.get(FORMAT_KEY) != format_name:
        found = data.get(FORMAT_KEY) if isinstance(data, Mapping) else type(data).__name__
        raise error(f"{source}: not a {what} (format {found!r}, expected {format_name!r})")
    version = data.get(version_key)
    if version is None and version_key == VERSION_KEY:
        version = data.get(LEGACY_VERSION_KEY)
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or \
            int(version) not in supported:
        label = version_key.replace("_", " ")  # "format version", "schema version"
        shown = int(version) if isinstance(version, numbers.Integral) and \
            not isinstance(version, bool) else repr(version)
        raise (version_error or error)(
            f"{source}: {what} {label} {shown} is not supported by this delfx "
                    f"(supported: {sorted(supported)}); {advice}")
    return int(version)


def read_json_artifact(path: str | Path, format_name: str, supported: Collection[int], *,
                       what: str, advice: str = "upgrade delfx or rebuild it") -> dict[str, Any]:
    """Parse a JSON artifact and check its header; one-line DelfxError for every way it can fail."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DelfxError(f"{path.parent}: not a {what} (no {path.name})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DelfxError(f"{path}: unreadable {what} ({exc})") from None
    check_header(data, format_name, supported, str(path), what=what, advice=advice)
    return data


def has_format(path: str | Path, format_names: Collection[str]) -> bool:
    """Whether the JSON file at `path` is an artifact of one of `format_names` (any version)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, Mapping) and data.get(FORMAT_KEY) in format_names
