"""Measure SqliteHuey in a fresh process: ``python -m bench.peers.sqlite_run PATH N LATENCY_N``.

As ``bench.peers.redis_run`` does for the Redis peers: enqueue N tasks ``{"i": n}`` one
at a time into the SQLite file PATH (put/s), start one consumer process with one worker
thread and time its first to its last task (process/s), then LATENCY_N timestamped
tasks one at a time. Huey polls SQLite: the consumer runs with ``-d 0.001 -m 0.01``
(look every millisecond, backing off to 10 ms while idle; its default backs off to
10 s) so the latency rows measure Huey rather than its idle back-off. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peers.redis_run import latencies, wait_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER = ["huey_consumer", "bench.peers.sqlite_huey.huey", "-w", "1", "-k", "thread", "-d", "0.001", "-m", "0.01"]


def main() -> None:
    path, n, latency_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    marks = Path(tempfile.mkdtemp(prefix="bench-sqlite-huey-"))
    os.environ.update(BENCH_SQLITE_PATH=path, BENCH_MARK_DIR=str(marks), BENCH_LAST=str(n - 1), PYTHONPATH=str(ROOT))
    from bench.peers import sqlite_huey

    send = sqlite_huey.enqueuer()
    started = time.perf_counter()
    for i in range(n):
        send({"i": i})
    put_seconds = time.perf_counter() - started
    argv = [str(BIN / WORKER[0]), *WORKER[1:]]
    with open(marks / "worker.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
