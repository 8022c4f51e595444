"""SQLite: lilqueue's embedded default beside a raw sqlite3 loop doing the same work."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

NAME = "sqlite"
RAW = "sqlite3 (INSERT; UPDATE..RETURNING claim + DELETE)"


@contextmanager
def server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lilqueue-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def raw(url: str, n: int) -> dict[str, float | None]:
    """The same inserts, claims and deletes lilqueue does, with nothing else."""
    db = sqlite3.connect(url.partition(":///")[2] + ".raw", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, body BLOB, priority INT, "
        "ttr INT, state INT DEFAULT 0, due REAL, deliveries INT DEFAULT 0)"
    )
    db.execute("CREATE INDEX jobs_take ON jobs (queue, priority, id) WHERE state < 2")
    started = time.perf_counter()
    for i in range(n):
        db.execute(
            "INSERT INTO jobs (queue, body, priority, ttr, due) VALUES (?, ?, 1024, 60, ?)",
            ("q", b'{"i": %d}' % i, time.time()),
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
