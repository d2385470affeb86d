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
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


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
        out.write_text(json.dumps({"benchmark": name, "machine": machine_facts(), **results},
                                  indent=2, sort_keys=True) + "\n")
        print(f"(JSON written to {out})", file=sys.stderr)
