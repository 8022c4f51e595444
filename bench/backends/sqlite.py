"""SQLite: lilqueue's embedded default beside a raw sqlite3 loop doing the same work, and
beside Huey's SqliteHuey (one consumer process, one worker thread; ``bench.peers.sqlite_run``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NAME = "sqlite"
PEER_LATENCY_N = 200
RAW = "sqlite3 (INSERT; UPDATE..RETURNING claim + DELETE)"


@contextmanager
def server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lilqueue-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def raw(url: str, n: int, *, payload: int = 0) -> dict[str, float | None]:
    """The same inserts, claims and deletes lilqueue does, with nothing else.

    ``payload``: pad each body with that many bytes (in a table of its own).
    """
    db = sqlite3.connect(url.partition(":///")[2] + f".raw{payload or ''}", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, body BLOB, priority INT, "
        "ttr INT, state INT DEFAULT 0, due REAL, deliveries INT DEFAULT 0)"
    )
    db.execute("CREATE INDEX jobs_take ON jobs (queue, priority, id) WHERE state < 2")
    pad = b', "pad": "%s"' % (b"x" * payload) if payload else b""
    started = time.perf_counter()
    for i in range(n):
        db.execute(
            "INSERT INTO jobs (queue, body, priority, ttr, due) VALUES (?, ?, 1024, 60, ?)",
            ("q", b'{"i": %d%s}' % (i, pad), time.time()),
        )
    put = time.perf_counter() - started
    claim = (
        "UPDATE jobs SET state=1, due=?1 + ttr, deliveries=deliveries+1 WHERE id = (SELECT id FROM jobs "
        "WHERE queue IN (?2) AND state < 2 AND due <= ?1 ORDER BY priority, id LIMIT 1) RETURNING id, body"
    )
    started = time.perf_counter()
    done = 0
    while (row := db.execute(claim, (time.time(), "q")).fetchone()) is not None:
        db.execute("DELETE FROM jobs WHERE id=? AND state=1", (row[0],))
        done += 1
    process = time.perf_counter() - started
    db.close()
    return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": None, "p99_ms": None}


def peers(url: str, n: int) -> list[dict[str, Any]]:
    """Huey's SqliteHuey with one consumer process (one worker thread), in a file of its own."""
    path = url.partition(":///")[2] + ".huey"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "bench.peers.sqlite_run", path, str(n), str(PEER_LATENCY_N)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    name = "Huey SqliteHuey (1 worker thread)"
    if done.returncode != 0:
        return [{"name": f"{name}: failed", "error": done.stderr.strip().splitlines()[-1:]}]
    return [{"name": name, **json.loads(done.stdout.strip().splitlines()[-1])}]
