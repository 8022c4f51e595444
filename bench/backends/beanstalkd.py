"""beanstalkd: lilqueue's adapter beside a raw greenstalk loop on the same server.

The raw loop is what one sequential greenstalk client does with nothing else: ``put``
per task; ``reserve`` + ``delete`` per task; and for the latency, a worker thread
blocked in ``reserve`` while the main thread puts one timestamped job at a time.
"""

from __future__ import annotations

import queue
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import greenstalk

from bench.backends import free_port, wait_port

NAME = "beanstalkd"
RAW = "greenstalk (put; reserve + delete)"
#: beanstalkd's -z: room for the 64 KB payload rows (the default limit is 65,535 bytes)
MAX_JOB_SIZE = 1 << 20


@contextmanager
def server() -> Iterator[str]:
    """A beanstalkd of our own on a free port (no binlog, jobs up to 1 MB); yields the lilqueue URL."""
    binary = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
    port = free_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-z", str(MAX_JOB_SIZE)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"beanstalkd://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].split(",")[0].rstrip("/").rpartition(":")
    return host, int(port)


def raw(url: str, n: int, latency_n: int = 300, *, payload: int = 0) -> dict[str, float | None]:
    """put/s, reserve+delete/s and enqueue->start p50/p99 (ms) of a bare greenstalk loop.

    ``payload``: pad each body with that many bytes (and skip the latency run).
    """
    tube = f"raw-{uuid.uuid4().hex[:8]}"
    pad = b', "pad": "%s"' % (b"x" * payload) if payload else b""
    with greenstalk.Client(_address(url), encoding=None, use=tube, watch=tube) as client:
        started = time.perf_counter()
        for i in range(n):
            client.put(b'{"i": %d%s}' % (i, pad), priority=1024, ttr=60)
        put = time.perf_counter() - started
        started, done = time.perf_counter(), 0
        while True:
            try:
                job = client.reserve(0)
            except greenstalk.TimedOutError:
                break
            client.delete(job)
            done += 1
        process = time.perf_counter() - started
    if payload:
        return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": None, "p99_ms": None}
    p50, p99 = _latency(url, latency_n)
    return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": p50, "p99_ms": p99}


def _latency(url: str, n: int, warmup: int = 20) -> tuple[float, float]:
    tube = f"raw-lat-{uuid.uuid4().hex[:8]}"
    seen: queue.Queue[float] = queue.Queue()

    def work() -> None:
        with greenstalk.Client(_address(url), encoding=None, watch=tube) as worker:
            for _ in range(n + warmup):
                job = worker.reserve(10)
                seen.put((time.time() - float(job.body)) * 1000)
                worker.delete(job)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    times: list[float] = []
    with greenstalk.Client(_address(url), encoding=None, use=tube) as client:
        time.sleep(0.2)
        for _ in range(n + warmup):
            client.put(repr(time.time()).encode(), priority=1024, ttr=60)
            times.append(seen.get(timeout=10))
            time.sleep(0.002)
    thread.join(10)
    times = sorted(times[warmup:])
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]
