"""Measure one Redis peer in a fresh process: ``python -m bench.peers.redis_run PEER URL N LATENCY_N``.

PEER is ``rq``, ``celery``, ``dramatiq`` or ``huey`` (module ``bench.peers.redis_<PEER>``).
Empties the database of URL, enqueues N tasks ``{"i": n}`` one at a time (put/s), starts
one worker process of the peer and times its first to its last task (process/s), then
sends LATENCY_N timestamped tasks one at a time, each after the last has started
(p50/p99 ms, enqueue to start). Prints one JSON object.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKERS = {
    "rq": ["rq", "worker", "-w", "rq.worker.SimpleWorker", "-u", "{url}", "bench-rq"],
    "celery": ["celery", "-A", "bench.peers.redis_celery", "worker", "-P", "solo", "-c", "1",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
    "dramatiq": ["dramatiq", "bench.peers.redis_dramatiq", "-p", "1", "-t", "1"],
    "huey": ["huey_consumer", "bench.peers.redis_huey.huey", "-w", "1", "-k", "thread"],
}  # fmt: skip
ENV = {"dramatiq": {"dramatiq_queue_prefetch": "32"}}  # as measured in issue 7


def wait_file(path: Path, timeout: float, lines: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).count("\n") + (not text.endswith("\n")) >= lines and text:
            return text
        time.sleep(0.0005)
    raise TimeoutError(f"{path} not written within {timeout}s")


def main() -> None:
    peer, url, n, latency_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    marks = Path(tempfile.mkdtemp(prefix=f"bench-{peer}-"))
    os.environ.update(BENCH_REDIS_URL=url, BENCH_MARK_DIR=str(marks), BENCH_LAST=str(n - 1), PYTHONPATH=str(ROOT))
    redis.Redis.from_url(url).flushdb()
    send = importlib.import_module(f"bench.peers.redis_{peer}").enqueuer()
    argv = [str(BIN / WORKERS[peer][0]), *(a.format(url=url) for a in WORKERS[peer][1:])]
    print(json.dumps(measure(send, argv, {**os.environ, **ENV.get(peer, {})}, marks, n, latency_n)), flush=True)


def measure(
    send: Callable[[dict[str, Any]], object], argv: list[str], env: dict[str, str], marks: Path, n: int, latency_n: int
) -> dict[str, float]:
    """Enqueue n tasks with ``send`` (put/s), run the peer's worker ``argv`` and time its first to
    its last task (process/s, from the marks its tasks write), then p50/p99 of latency_n more."""
    started = time.perf_counter()
    for i in range(n):
        send({"i": i})
    put_seconds = time.perf_counter() - started
    with open(marks / "worker.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = float(wait_file(marks / "0", 120))
        last = float(wait_file(marks / str(n - 1), 1800))
        times = latencies(send, marks / "latency", latency_n)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    row = {"put_per_s": n / put_seconds, "process_per_s": (n - 1) / (last - first)}
    if times:
        row |= {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))]}
    return row


def latencies(send: object, path: Path, n: int, warmup: int = 20) -> list[float]:
    if n <= 0:
        return []
    for k in range(n + warmup):
        send({"i": -1, "t": time.time()})  # type: ignore[operator]
        wait_file(path, 30, lines=k + 1)
        time.sleep(0.002)
    return sorted(float(v) for v in path.read_text().split()[warmup:])


if __name__ == "__main__":
    main()
