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
import sys
import tempfile
from pathlib import Path

from bench.peers.redis_run import measure

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER = ["huey_consumer", "bench.peers.sqlite_huey.huey", "-w", "1", "-k", "thread", "-d", "0.001", "-m", "0.01"]


def main() -> None:
    path, n, latency_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    marks = Path(tempfile.mkdtemp(prefix="bench-sqlite-huey-"))
    os.environ.update(BENCH_SQLITE_PATH=path, BENCH_MARK_DIR=str(marks), BENCH_LAST=str(n - 1), PYTHONPATH=str(ROOT))
    from bench.peers import sqlite_huey

    send = sqlite_huey.enqueuer()
    print(json.dumps(measure(send, [str(BIN / WORKER[0]), *WORKER[1:]], dict(os.environ), marks, n, latency_n)))


if __name__ == "__main__":
    main()
