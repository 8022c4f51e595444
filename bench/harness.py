"""Measure lilqueue on one backend, beside that backend's raw client loop.

For each backend module in ``bench/backends`` (``NAME``, ``server()``, ``raw(url, n)``
(optionally with a ``payload`` keyword), optionally ``peers(url, n)``, ``VERSIONS()``):
enqueue N no-op tasks ``{"i": n}`` one at a time from this process; drain them with one
worker process; then time 300 tasks one at a time, enqueue to start. Then the same
drain with ``concurrency`` worker processes started together, and with tasks padded to
each of ``payloads`` bytes. Rates are tasks per second; latencies are milliseconds;
RSS is the peak of one worker process; worker CPU is the workers' user + system CPU
per task processed, in microseconds.
"""

from __future__ import annotations

import inspect
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
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )


def data(i: int, payload: int) -> dict[str, Any]:
    """Task ``i``'s data: ``{"i": i}``, padded to about ``payload`` bytes of JSON when asked."""
    return {"i": i, "pad": "x" * payload} if payload else {"i": i}


def drain(url: str, name: str, concurrency: int) -> dict[str, Any]:
    """Drain queue ``name`` with ``concurrency`` worker processes started together."""
    procs = [worker(url, name, "--burst") for _ in range(concurrency)]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bench worker did not start")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.communicate(timeout=3600)[0].strip().splitlines()[-1]) for proc in procs]
    processed = sum(r["processed"] for r in results)
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    cpu, peak = sum(r["cpu"] for r in results), max(r["peak_rss_mb"] for r in results)
    return {"processed": processed, "seconds": seconds, "cpu": cpu, "peak_rss_mb": peak}


def measure(url: str, n: int, latency_n: int = 300, *, payload: int = 0, concurrency: int = 1) -> Row:
    """lilqueue's row: put/s, process/s (``concurrency`` worker processes), p50/p99
    enqueue->start (when ``latency_n``), peak RSS of a worker process."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue = app.queue(name)
    queue.stats()  # connect first
    started = time.perf_counter()
    for i in range(n):
        queue.send("noop", data(i, payload))
    put_seconds = time.perf_counter() - started
    drained = drain(url, name, concurrency)
    if drained["processed"] != n:
        raise RuntimeError(f"{drained['processed']} of {n} tasks processed")
    p50, p99 = latencies(app, f"{name}-lat", latency_n) if latency_n else (None, None)
    app.close()
    impl = "lilqueue" + (f", {concurrency} worker processes" if concurrency > 1 else "")
    impl += f", {payload // 1024} KB payload" if payload else ""
    return {
        "impl": impl,
        "n": n,
        "payload": payload,
        "concurrency": concurrency,
        "put_per_s": n / put_seconds,
        "process_per_s": drained["processed"] / drained["seconds"],
        "processed": drained["processed"],
        "p50_ms": p50,
        "p99_ms": p99,
        "worker_rss_mb": drained["peak_rss_mb"],
        "worker_cpu_us": drained["cpu"] / max(drained["processed"], 1) * 1e6,
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


def run_backend(
    module: Any, n: int, latency_n: int, *, concurrency: int = 2, payloads: tuple[int, ...] = (), payload_n: int = 0
) -> list[Row]:
    """lilqueue beside the raw loop (and peers), then with more processes and bigger payloads."""
    rows: list[Row] = []
    backend = {"backend": module.NAME}
    with module.server() as url:
        rows.append(backend | measure(url, n, latency_n))
        rows.append(backend | {"impl": f"raw {getattr(module, 'RAW', 'client')}", **module.raw(url, n)})
        for peer in getattr(module, "peers", lambda url, n: [])(url, n):
            rows.append(backend | {"impl": peer.pop("name"), **peer})
        if concurrency > 1:
            rows.append(backend | measure(url, n, 0, concurrency=concurrency))
        raw_takes_payload = "payload" in inspect.signature(module.raw).parameters
        for payload in payloads:
            count = payload_n or n
            rows.append(backend | measure(url, count, 0, payload=payload))
            if raw_takes_payload:
                row = module.raw(url, count, payload=payload)
                rows.append(backend | {"impl": f"raw, {payload // 1024} KB payload", "payload": payload, **row})
    return rows
