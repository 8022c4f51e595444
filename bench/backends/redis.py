"""Redis: lilqueue's adapter beside a raw redis-py loop and beside RQ, Celery, Dramatiq, Huey.

All on one redis-server of our own (no persistence), each in its own database. The raw
loop is what one sequential redis-py client does with nothing else: ``LPUSH`` per task;
``BRPOP`` per task; and for the latency, a thread blocked in ``BRPOP`` while the main
thread pushes one timestamped message at a time. Each peer runs with one worker process
(``bench.peers.redis_run``): RQ's SimpleWorker, Celery ``-P solo``, Dramatiq with one
process, one thread and prefetch 32, Huey with one worker thread; tasks ``{"i": n}`` enqueued one at a
time, process/s timed from the first task's start to the last task's start.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench.backends import free_port

NAME = "redis"
RAW = "redis-py (LPUSH; BRPOP)"
ROOT = Path(__file__).resolve().parents[2]
PEERS = {
    "rq": ("RQ (SimpleWorker)", 1),
    "celery": ("Celery (-P solo)", 2),
    "dramatiq": ("Dramatiq (1 process, 1 thread, prefetch 32)", 3),
    "huey": ("Huey (1 worker thread)", 4),
}
PEER_LATENCY_N = 200


@contextmanager
def server() -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence); yields the lilqueue URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", workdir]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 15
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {port}") from None
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _db(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}"


def raw(url: str, n: int, latency_n: int = 300) -> dict[str, float | None]:
    """put/s, BRPOP/s and enqueue->start p50/p99 (ms) of a bare redis-py loop."""
    client = redis.Redis.from_url(_db(url, 5))
    key = f"raw-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    for i in range(n):
        client.lpush(key, b'{"i": %d}' % i)
    put = time.perf_counter() - started
    started, done = time.perf_counter(), 0
    while done < n and client.brpop([key], timeout=1) is not None:
        done += 1
    process = time.perf_counter() - started
    client.close()
    p50, p99 = _latency(_db(url, 5), latency_n)
    return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": p50, "p99_ms": p99}


def _latency(url: str, n: int, warmup: int = 20) -> tuple[float, float]:
    key = f"raw-lat-{uuid.uuid4().hex[:8]}"
    seen: queue.Queue[float] = queue.Queue()

    def work() -> None:
        worker = redis.Redis.from_url(url)
        for _ in range(n + warmup):
            popped = worker.brpop([key], timeout=10)
            assert popped is not None
            seen.put((time.time() - float(popped[1])) * 1000)
        worker.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    client = redis.Redis.from_url(url)
    time.sleep(0.2)
    times: list[float] = []
    for _ in range(n + warmup):
        client.lpush(key, repr(time.time()))
        times.append(seen.get(timeout=10))
        time.sleep(0.002)
    thread.join(10)
    client.close()
    times = sorted(times[warmup:])
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def peers(url: str, n: int) -> list[dict[str, Any]]:
    """RQ, Celery, Dramatiq and Huey, each with one worker process, on this Redis."""
    rows = []
    for peer, (name, db) in PEERS.items():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "bench.peers.redis_run", peer, _db(url, db), str(n), str(PEER_LATENCY_N)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            rows.append({"name": f"{name}: failed", "error": done.stderr.strip().splitlines()[-1:]})
            continue
        rows.append({"name": name, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows
