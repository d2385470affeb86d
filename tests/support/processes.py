"""The processes a test started, and how tests signal them: only those and their descendants,
never a process found by name (it may belong to someone else's run)."""

from __future__ import annotations

import signal
import time


def descendants(pid: int) -> list:
    """The processes a test started (`pid`) and everything they started: the only ones a test
    may signal (never a process found by name: it may belong to someone else's run)."""
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def busy_worker(proc, title: str, timeout: float = 240):
    """Our own Ray worker while it runs a task: Ray titles it `title` (e.g.
    `ray::ExtractWorker.process`)."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before a worker could be killed"
        for child in descendants(proc.pid):
            try:
                if title in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker of this run ({title}) started a task in time")


def kill_tree(proc) -> None:
    """SIGKILL a driver we started and every process it started (Ray's daemons outlive a
    killed driver, re-parented to init); wait until all of them are gone."""
    import psutil
    family = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while family and time.monotonic() < deadline:
        more = []
        for p in family:
            more += descendants(p.pid)  # started by them meanwhile (a restarted worker)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family + more, timeout=5)
        family = alive + [p for p in more if p not in alive and p.is_running()]
