"""Path helpers shared by every stage: manifest paths that cannot escape, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, TextIO

from delfx.errors import StoreError


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve `relative` (as written in a manifest) under `root`, refusing anything that escapes it.

    Manifests travel between machines and may come from someone else: an absolute path, a `..`
    component or a symlink pointing outside the feature-set folder must never be followed.
    """
    if not relative or "\\" in relative or "\x00" in relative:
        raise StoreError(f"refusing path {relative!r} from the manifest: not a plain relative path")
    posix = PurePosixPath(relative)
    if posix.is_absolute() or any(part in ("..", "") for part in posix.parts):
        raise StoreError(f"refusing path {relative!r} from the manifest: it escapes {root}")
    root_resolved = Path(root).resolve()
    resolved = (root_resolved / posix).resolve()
    if root_resolved != resolved and root_resolved not in resolved.parents:
        raise StoreError(f"refusing path {relative!r} from the manifest: it resolves outside {root}")
    return resolved


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else by the
    set-and-restore dance under a lock."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The file gets the permissions any file created by the user would (0666 minus the umask):
    mkstemp's private 0600 would hide a manifest from a group that can read the shards.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented, key-sorted JSON (stable diffs, human-readable)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def foreign_entries(directory: Path, known: set[str]) -> list[str]:
    """Names in `directory` that are not among `known` (a folder delfx may replace holds only
    files it wrote: anything else belongs to someone and must not be deleted with it)."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name not in known)


def write_directory_atomically(out_dir: Path, write: Callable[[Path], None],
                               before_replacing: Callable[[], None] | None = None) -> None:
    """Build a directory in a sibling temporary folder, then swap it in for `out_dir`.

    A reader never sees a half-written model directory: until the rename it sees the old one
    (or none). `before_replacing` runs just before a non-empty `out_dir` is replaced (e.g. to
    re-check that it may be overwritten: it may have been filled while `write` ran).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        old = None
        if out_dir.is_dir() and any(out_dir.iterdir()):
            if before_replacing is not None:
                before_replacing()
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
        elif out_dir.is_dir():
            out_dir.rmdir()
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_text_output(path: Path | None) -> Iterator[TextIO]:
    """A text handle for a command's output: stdout when `path` is None, else a temporary file
    beside `path` that replaces it only when the block ends without error (a failed or
    interrupted run leaves the old file, or none, never half a file)."""
    if path is None:
        yield sys.stdout
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
