"""Progress of a long job: a tqdm bar on a terminal, else a log line now and then (stderr)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """tqdm bar on a terminal; otherwise a log line every `interval` seconds."""

    def __init__(self, total: int, *, what: str, unit: str, interval: float = 10.0,
                 enabled: bool = True):
        self.total, self.done, self.failed = total, 0, 0
        self.what, self.unit = what, unit
        self.start = self.last = time.monotonic()
        self.interval = interval
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, count: int, failed: int) -> None:
        self.done += count
        self.failed += failed
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(count)
            self.bar.set_postfix(failed=self.failed)
        elif time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("%s: %d/%d %s (%.1f/s), %d failed, ETA %.0fs", self.what, self.done,
                     self.total, self.unit, rate, self.failed, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
