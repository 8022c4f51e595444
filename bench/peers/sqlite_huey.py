"""Huey's side of the SQLite benchmark: ``huey_consumer bench.peers.sqlite_huey.huey -w 1 -k thread``.

SqliteHuey on the file ``BENCH_SQLITE_PATH``, WAL as Huey's default, with
``synchronous=NORMAL`` as lilqueue's SQLite default (Huey's default leaves SQLite's
FULL, an fsync per commit, which would be no fair comparison).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from huey import SqliteHuey  # type: ignore[import-untyped]
from huey.storage import SqliteStorage  # type: ignore[import-untyped]

from bench.peers import redis_common

PATH = os.environ.get("BENCH_SQLITE_PATH", "/tmp/bench-huey.db")


class NormalSyncStorage(SqliteStorage):  # type: ignore[misc]
    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


huey = SqliteHuey("bench-huey", filename=PATH, storage_class=NormalSyncStorage)


@huey.task()  # type: ignore[untyped-decorator]
def noop(data: dict[str, Any]) -> None:
    redis_common.noop(data)


def enqueuer() -> Any:
    return noop
