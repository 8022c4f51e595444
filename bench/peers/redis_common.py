"""What every Redis peer's no-op task does: mark the first and last task, and latencies.

Set by the benchmark before the worker process starts: ``BENCH_REDIS_URL`` (the peer's
own database), ``BENCH_MARK_DIR`` (where marks go) and ``BENCH_LAST`` (the last ``i``).
A task ``{"i": 0}`` or ``{"i": BENCH_LAST}`` writes the time it started to
``MARK_DIR/<i>``; a task carrying ``"t"`` (its enqueue time) appends its enqueue->start
milliseconds to ``MARK_DIR/latency``. Any other task does nothing at all.
"""

from __future__ import annotations

import os
import time
from typing import Any

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MARK_DIR = os.environ.get("BENCH_MARK_DIR", "/tmp")
LAST = int(os.environ.get("BENCH_LAST", "-1"))


def noop(data: dict[str, Any]) -> None:
    i = data.get("i")
    if "t" in data:
        with open(os.path.join(MARK_DIR, "latency"), "a") as f:
            f.write(f"{(time.time() - data['t']) * 1000:.4f}\n")
    elif i == 0 or i == LAST:
        with open(os.path.join(MARK_DIR, str(i)), "w") as f:
            f.write(repr(time.time()))
