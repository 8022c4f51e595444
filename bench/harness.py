"""Measure lilqueue on one backend, beside that backend's raw client loop.

For each backend module in ``bench/backends`` (``NAME``, ``server()``, ``raw(url, n)``,
optionally ``peers(url, n)``): enqueue N no-op tasks ``{"i": n}`` one at a time from
this process; drain them with one worker process; then time 300 tasks one at a time,
enqueue to start. Rates are tasks per second; latencies are milliseconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import lilqueue
from lilqueue.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def worker(url: str, queue: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "bench.worker", url, queue, *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def measure(url: str, n: int, latency_n: int = 300) -> Row:
    """lilqueue's row: put/s, process/s (one worker process), p50/p99 enqueue->start, peak RSS."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue = app.queue(name)
    queue.stats()  # connect first
    started = time.perf_counter()
    for i in range(n):
        queue.send("noop", {"i": i})
    put_seconds = time.perf_counter() - started
    proc = worker(url, name, "--burst")
    out, _ = proc.communicate(timeout=3600)
    drained = json.loads(out.strip().splitlines()[-1])
    p50, p99 = latencies(app, f"{name}-lat", latency_n)
    app.close()
    return {
        "impl": "lilqueue",
        "put_per_s": n / put_seconds,
        "process_per_s": drained["processed"] / drained["seconds"],
        "processed": drained["processed"],
        "p50_ms": p50,
        "p99_ms": p99,
        "worker_rss_mb": drained["peak_rss_mb"],
    }


def latencies(app: lilqueue.App, name: str, n: int, warmup: int = 20) -> tuple[float | None, float | None]:
    """Send one task at a time and read back its enqueue->start time from the worker."""
    queue = app.queue(name)
    proc = worker(app.settings.backend, name, "--latency", str(n + warmup))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("latency worker did not start")
    seen: list[float] = []
    for _ in range(n + warmup):
        queue.send("ping", {"t": time.time()})
        seen.append(float(proc.stdout.readline()))
        time.sleep(0.002)  # let the worker go idle, as between real requests
    proc.wait(60)
    seen = seen[warmup:]
    return statistics.median(seen), percentile(seen, 0.99)


def run_backend(module: Any, n: int, latency_n: int) -> list[Row]:
    rows: list[Row] = []
    with module.server() as url:
        rows.append({"backend": module.NAME, **measure(url, n, latency_n)})
        rows.append({"backend": module.NAME, "impl": f"raw {getattr(module, 'RAW', 'client')}", **module.raw(url, n)})
        for peer in getattr(module, "peers", lambda url, n: [])(url, n):
            rows.append({"backend": module.NAME, "impl": peer.pop("name"), **peer})
    return rows
