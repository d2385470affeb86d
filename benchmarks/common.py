"""Helpers shared by the benchmarks: timing with repeats, machine facts, report output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on (recorded next to every figure)."""
    from delfx.versions import library_versions
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "gpu": _gpu_present(), "versions": library_versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            # Other work on the machine skews absolute times (ratios within a run survive it).
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "memory_gib": _memory_gib()}


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return round(pages * page_size / 2**30, 1)


def _gpu_present() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "x")) and Path("/dev/nvidia0").exists()


def timed(fn: Callable[[], Any], repeats: int = 3, setup: Callable[[], Any] | None = None
          ) -> dict[str, float]:
    """Median and spread (min, max) of wall time over `repeats` runs of fn()."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, Paths: what the stages' results may hold besides plain types."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def run_measured(cmd: list[str], **popen_kwargs: Any) -> dict[str, Any]:
    """Run a command to completion: exit code, wall time, and the child's own peak memory.

    os.wait4 rather than Popen.wait, because it hands back the child's resource usage (its
    peak RSS alone, not the maximum over every child this process ever had).
    """
    import subprocess
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen_kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_code": proc.returncode, "wall_s": time.perf_counter() - start,
            # Linux reports ru_maxrss in KiB (macOS in bytes).
            "peak_rss_bytes": usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
            "cpu_s": usage.ru_utime + usage.ru_stime}


def rss_bytes() -> dict[str, int]:
    """Current and peak resident memory of this process (Linux /proc; zeros elsewhere).

    VmHWM belongs to the process's own address space, so unlike the ru_maxrss a parent reads
    with wait4 it does not start at the parent's peak when the parent was large at fork time.
    """
    out = {"rss": 0, "peak_rss": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["peak_rss"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def recall(approx: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Recall of approximate (nq, k) ids against exact (nq, k) ids (-1: no neighbour), for the
    FAISS stages (synthetic and real descriptors).

    Returns:
        recall_at_1: share of queries whose approximate top-1 is the exact top-1;
        recall_at_10: mean |approx top-k ∩ exact top-k| / k;
        nn_in_top10: share of queries whose exact top-1 is anywhere in the approximate top-k.
    """
    k = exact.shape[1]
    overlap = [len(np.intersect1d(a[a >= 0], e)) / k for a, e in zip(approx, exact)]
    return {"recall_at_1": float(np.mean(approx[:, 0] == exact[:, 0])),
            "recall_at_10": float(np.mean(overlap)),
            "nn_in_top10": float(np.mean((approx == exact[:, :1]).any(axis=1)))}


def child_env() -> dict[str, str]:
    """The environment of a benchmark child process: this one's, with the project importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def emit(name: str, results: dict[str, Any], table: list[tuple[str, str]], out: Path | None) -> None:
    """Print a readable table to stdout and, when asked, write JSON with stable keys."""
    print(f"\n## {name}")
    width = max(len(k) for k, _ in table)
    for key, value in table:
        print(f"{key.ljust(width)}  {value}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        # The printed table travels with the figures so `python -m benchmarks report` can render
        # any stage's section without knowing its keys.
        document = {"benchmark": name, "machine": machine_facts(), **results,
                    "table": [[key, value] for key, value in table]}
        out.write_text(json.dumps(document, indent=2, sort_keys=True, default=_jsonable) + "\n")
        print(f"(JSON written to {out})", file=sys.stderr)


def load_text(load_average: dict[str, list[float]], extra: str = "") -> str:
    """'1.20 before, 1.80 after (1-min, 2 cores)' for a report row."""
    return (f"{load_average['before'][0]:.2f} before, {load_average['after'][0]:.2f} after "
            f"(1-min, {os.cpu_count()} cores{extra})")


def learned_unavailable() -> str | None:
    """Why the learned models cannot run here (the torch extra is missing), or None."""
    from delfx.errors import DelfxError
    from delfx.extractor.torch_support import import_torch
    try:
        import_torch()
    except DelfxError as exc:
        return str(exc)
    return None
