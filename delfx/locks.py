"""A folder held by one delfx run at a time (extraction's output, a query job's folder)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path

from delfx.errors import DelfxError

log = logging.getLogger(__name__)


class FolderLock:
    """One run per folder: an exclusive `flock` on a lock file naming its holder.

    The kernel drops the lock when its holder dies, however it dies, so a lock of a dead run is
    free at once and two runs can never both take it (no read-then-replace race). The file
    records pid, host and start time for the message a second run gets. On NFS, Linux maps
    flock onto POSIX locks, which the server arbitrates between hosts.
    """

    def __init__(self, root: Path, name: str, what: str):
        self.path = Path(root) / name
        self.what = what  # who holds such locks, for the refusal ("delfx extract")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        import fcntl
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, started "
                       f"{holder.get('started')}") if holder else "holder unknown"
                raise DelfxError(f"another {self.what} is writing to {self.path.parent} "
                                 f"({who}); wait for it to finish") from None
            # A releasing holder unlinks the file: if ours was unlinked meanwhile, retry on the
            # new one (two runs must never hold locks on two different files).
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._holder(fd)
            if previous and previous.get("pid") != me["pid"]:
                log.info("lock of an earlier run (pid %s on %s, started %s) is free: taking it",
                         previous.get("pid"), previous.get("host"), previous.get("started"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self._fd = fd
            return self
        raise DelfxError(f"could not take the lock {self.path}")

    @staticmethod
    def _holder(fd: int) -> dict | None:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before closing: see the inode check above
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
