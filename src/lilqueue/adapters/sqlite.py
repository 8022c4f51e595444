"""``sqlite:///PATH``: the embedded default. A durable queue in one file, no server.

All queues share one table. A message is *waiting* (ready once ``due`` has passed;
``due`` is ``READY_AT_ONCE``, below 0, for a message ready at once), *reserved* (its
lease lapses at ``due``) or *held*. A reservation is one ``UPDATE ... RETURNING`` statement, which SQLite runs under
its single write lock, so processes sharing the file each get a message exactly once
unless its lease lapses. ``deliveries`` counts reservations and fences a lapsed worker:
its delete or release no longer matches once another worker has taken the message.

The hot path: a delete (the ack) is held back and committed in the same transaction as
this connection's next reservation, so a busy worker commits once per task, not twice.
Any other call on the adapter commits held-back deletes first, and so do an idle wait,
:meth:`SQLiteAdapter.flush` (the runner calls it when it stops and before after-task
hooks) and ``close``; a process that dies before that runs those tasks again once
their leases lapse, as if it had died just before the delete. Only delayed messages
(``due > 0`` while waiting) are indexed by due time, so a reservation and a delete
touch no due index.

Idle workers wait for another connection's commit: on Linux they sleep on an inotify
watch of the ``-wal`` file (no CPU at all while idle) and confirm with
``PRAGMA data_version``; elsewhere they read ``data_version`` (shared memory, no I/O)
every ``poll_interval`` seconds. Either way a task added by another process starts
within a millisecond or two.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

from lilqueue.adapters.base import (
    Adapter,
    Capabilities,
    HeldJob,
    Job,
    Peeked,
    PeekState,
    QueueStats,
    emulated,
    native,
)
from lilqueue.errors import BackendConnectionError, BackendError, ConfigError, LilqueueError

log = logging.getLogger(__name__)

WAITING, RESERVED, HELD = 0, 1, 2
SYNCHRONOUS = ("off", "normal", "full", "extra")
#: ``due`` of a waiting message ready at once: below 0, so outside the index of delayed
#: messages, and a REAL with a fraction, which SQLite stores in 8 bytes like the lease
#: time a reservation writes over it: the row keeps its size, so SQLite overwrites it in
#: place instead of rewriting a big body's overflow pages (half the speed at 64 KB)
READY_AT_ONCE = -0.5
#: how often an idle reserve looks for lapsed leases (seconds; leases are not indexed by due)
LEASE_LOOK = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    ttr INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    held_at REAL
);
CREATE INDEX IF NOT EXISTS {t}_take ON {t} (queue, priority, id) WHERE state < 2;
DROP INDEX IF EXISTS {t}_due;
CREATE INDEX IF NOT EXISTS {t}_delayed ON {t} (queue, due) WHERE state = 0 AND due > 0;
CREATE INDEX IF NOT EXISTS {t}_held ON {t} (queue, held_at, id) WHERE state = 2;
"""


class SQLiteAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=native("ORDER BY priority, id"),
        delay=native("a 'due' time per row"),
        ttr=native("a lease: reserved rows past 'due' are taken again"),
        touch=native("moves the lease's 'due'"),
        retry=native(),
        hold=native("state 'held' with reason and time in the row"),
        kick=native(),
        stats=native("exact counts"),
        blocking_reserve=emulated("sleeps on inotify of the WAL file (Linux), else polls PRAGMA data_version"),
        notes="one file, several processes; WAL journal",
    )

    def __init__(
        self,
        path: str,
        *,
        table: str = "lilqueue_jobs",
        synchronous: str = "normal",
        poll_interval: float = 0.002,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.table = table
        self.poll_interval = poll_interval
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.executescript(_SCHEMA.format(t=table))
        except sqlite3.Error as exc:
            raise BackendConnectionError(f"cannot open SQLite queue {path!r}: {exc}") from exc
        self._take_sql: dict[int, str] = {}
        self._wal: WalWatch | None = None
        self._leased = f"id=? AND state={RESERVED} AND deliveries=?"  # still this worker's lease
        self._unhold = f"state={WAITING}, due={READY_AT_ONCE}, reason=NULL, held_at=NULL"
        self._delete_sql = f"DELETE FROM {table} WHERE {self._leased}"
        #: deletes held back to commit with the next reservation: (id, deliveries)
        self._acks: list[tuple[int, int]] = []

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> SQLiteAdapter:
        opts = dict(options)
        path = opts.pop("path", "lilqueue.db")
        if url is not None:
            rest = url.partition("://")[2]
            if not rest.startswith("/") or rest == "/":
                raise ConfigError(
                    f"queue.backend: SQLite URLs look like sqlite:///relative.db or sqlite:////abs.db, not {url!r}"
                )
            rest, _, query = rest[1:].partition("?")
            path = unquote(rest)
            opts.update(parse_qsl(query))
        kwargs: dict[str, Any] = {}
        for key, value in opts.items():
            kwargs[key] = _option(key, value)
        if not isinstance(path, str) or not path:
            raise ConfigError("queue.sqlite.path: must be a file path")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(path, **kwargs)

    # -- the hot path --------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        sql = f"INSERT INTO {self.table} (queue, body, priority, ttr, due) VALUES (?, ?, ?, ?, ?)"
        cur = self._run(sql, (queue, body, priority, ttr, _due(delay)))
        return str(cur.lastrowid)

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        deadline = time.monotonic() + timeout
        job = self._take(queues)
        while job is None and timeout > 0:
            version = self._data_version()  # read before the take, so no commit goes unseen
            job = self._take(queues)
            if job is None and not self._wait(queues, version, deadline):
                return None
        return job

    def _take(self, queues: Sequence[str]) -> Job | None:
        sql = self._take_sql.get(len(queues))
        if sql is None:
            sql = self._take_sql[len(queues)] = self._take_statement(len(queues))
        params = (time.time(), *queues)
        row = self._run(sql, params).fetchone() if not self._acks else self._ack_and_take(sql, params)
        if row is None:
            return None
        id, queue, body, priority, ttr, deliveries = row
        return Job(str(id), queue, _bytes(body), priority, ttr, deliveries, deliveries)

    def _take_statement(self, count: int) -> str:
        """One UPDATE claiming the most urgent ready row of ``count`` queues (?2, ?3, ...).

        Each queue's candidate comes from its own walk of the (queue, priority, id)
        index, so the cost does not grow with the number of ready rows.
        """
        t = self.table
        heads = " UNION ALL ".join(
            f"SELECT * FROM (SELECT id, priority FROM {t} INDEXED BY {t}_take WHERE queue = ?{i + 2} "
            f"AND state < {HELD} AND due <= ?1 ORDER BY priority, id LIMIT 1)"
            for i in range(count)
        )
        pick = heads if count == 1 else f"SELECT id, priority FROM ({heads}) ORDER BY priority, id LIMIT 1"
        return (
            f"UPDATE {t} SET state={RESERVED}, due=?1 + ttr, deliveries=deliveries+1 "
            f"WHERE id = (SELECT id FROM ({pick})) RETURNING id, queue, body, priority, ttr, deliveries"
        )

    def _ack_and_take(self, sql: str, params: Sequence[Any]) -> Any:
        """Commit the held-back deletes and the next reservation in one transaction."""
        acks, self._acks = self._acks, []
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(self._delete_sql, acks)
                rows = db.execute(sql, params).fetchall()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException as exc:
            self._acks[:0] = acks  # not committed: still owed
            if isinstance(exc, sqlite3.OperationalError):
                raise BackendConnectionError(f"SQLite {self.path!r}: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise BackendError(f"SQLite {self.path!r}: {exc}") from exc
            raise
        return rows[0] if rows else None

    def flush(self) -> None:
        """Commit the deletes held back for the next reservation now."""
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                self.db.executemany(self._delete_sql, acks)
            except sqlite3.Error as exc:
                self._acks[:0] = acks
                cls = BackendConnectionError if isinstance(exc, sqlite3.OperationalError) else BackendError
                raise cls(f"SQLite {self.path!r}: {exc}") from exc

    def _wait(self, queues: Sequence[str], version: int, deadline: float) -> bool:
        """Sleep until another connection commits, a delay falls due, it is time to look for
        lapsed leases (every ``LEASE_LOOK`` seconds), or ``deadline``."""
        heads = " UNION ALL ".join(
            f"SELECT MIN(due) AS due FROM {self.table} WHERE queue = ?{i + 1} AND state = {WAITING} AND due > 0"
            for i in range(len(queues))
        )
        next_due = self._run(f"SELECT MIN(due) FROM ({heads})", queues).fetchone()[0]
        wake = min(deadline, time.monotonic() + LEASE_LOOK)
        if next_due is not None:
            wake = min(wake, time.monotonic() + next_due - time.time())
        if self._wal is None and self.path != ":memory:":
            self._wal = WalWatch.open(self.path + "-wal")
        while (now := time.monotonic()) < wake:
            if self._wal is not None:
                self._wal.wait(min(1.0, wake - now))
            else:
                time.sleep(min(self.poll_interval, wake - now))
            if self._data_version() != version:
                return True
        return now < deadline  # woken by a due time, not the deadline: look again

    def _data_version(self) -> int:
        return int(self._run("PRAGMA data_version").fetchone()[0])

    def delete(self, job: Job) -> None:
        """Held back to commit with the next reservation (or any other call, or ``flush``)."""
        self._acks.append((int(job.id), job.receipt))

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        sql = f"UPDATE {self.table} SET state={WAITING}, priority=?, due=? WHERE {self._leased}"
        self._run(sql, (priority, _due(delay), int(job.id), job.receipt))

    def bury(self, job: Job, *, reason: str) -> None:
        sql = f"UPDATE {self.table} SET state={HELD}, reason=?, held_at=? WHERE {self._leased}"
        self._run(sql, (reason, time.time(), int(job.id), job.receipt))

    def touch(self, job: Job) -> None:
        sql = f"UPDATE {self.table} SET due=? + ttr WHERE {self._leased}"
        self._run(sql, (time.time(), int(job.id), job.receipt))

    # -- operating -----------------------------------------------------------------

    def kick(self, queue: str, count: int) -> int:
        t = self.table
        sql = (
            f"UPDATE {t} SET {self._unhold} WHERE id IN "
            f"(SELECT id FROM {t} WHERE queue=? AND state={HELD} ORDER BY held_at, id LIMIT ?)"
        )
        return self._run(sql, (queue, count)).rowcount

    def kick_id(self, queue: str, id: str) -> bool:
        sql = f"UPDATE {self.table} SET {self._unhold} WHERE id=? AND queue=? AND state={HELD}"
        return self._run(sql, (_int(id), queue)).rowcount == 1

    def delete_id(self, queue: str, id: str) -> bool:
        sql = f"DELETE FROM {self.table} WHERE id=? AND queue=? AND (state != {RESERVED} OR due <= ?)"
        return self._run(sql, (_int(id), queue, time.time())).rowcount == 1

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        sql = (
            f"SELECT id, body, reason, held_at FROM {self.table} "
            f"WHERE queue=? AND state={HELD} ORDER BY held_at, id LIMIT ?"
        )
        return [HeldJob(str(i), queue, _bytes(b), r, h) for i, b, r, h in self._run(sql, (queue, limit))]

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        t = self.table
        where = {
            "ready": f"state < {HELD} AND due <= ?2 ORDER BY priority, id",
            "delayed": f"state = {WAITING} AND due > 0 AND due > ?2 ORDER BY due, id",
            "held": f"state = {HELD} ORDER BY held_at, id",
        }[state]
        sql = f"SELECT id, body, priority FROM {t} WHERE queue = ?1 AND {where} LIMIT 1"
        row = self._run(sql, (queue, time.time()) if "?2" in where else (queue,)).fetchone()
        return None if row is None else Peeked(str(row[0]), queue, _bytes(row[1]), row[2])

    def stats(self, queue: str) -> QueueStats:
        sql = (
            f"SELECT SUM(state < {HELD} AND due <= ?2), SUM(state = {WAITING} AND due > ?2), "
            f"SUM(state = {RESERVED} AND due > ?2), SUM(state = {HELD}) FROM {self.table} WHERE queue = ?1"
        )
        ready, delayed, reserved, held = self._run(sql, (queue, time.time())).fetchone()
        return QueueStats(ready or 0, delayed or 0, reserved or 0, held or 0)

    def close(self) -> None:
        try:
            self.flush()
        except LilqueueError as exc:  # closing anyway: those tasks run again after their ttr
            log.warning("could not commit %d held-back deletes on close: %s", len(self._acks), exc)
        if self._wal is not None:
            self._wal.close()
        self.db.close()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        if self._acks:
            self.flush()
        try:
            return self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise BackendConnectionError(f"SQLite {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite {self.path!r}: {exc}") from exc


class WalWatch:
    """An inotify watch on the WAL file: ``wait`` returns when another process writes to it."""

    IN_MODIFY = 0x2

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, wal: str) -> WalWatch | None:
        """A watch on ``wal``, or None where inotify is not available (then we poll)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(wal), cls.IN_MODIFY) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def wait(self, timeout: float) -> None:
        """Sleep until the file is written to, or ``timeout`` seconds."""
        if select.select([self.fd], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 4096):
                    pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _option(key: str, value: Any) -> Any:
    where = f"queue.sqlite.{key}"
    if key == "table":
        if not isinstance(value, str) or not value.replace("_", "").isalnum():
            raise ConfigError(f"{where}: must be a plain identifier, not {value!r}")
        return value
    if key == "synchronous":
        if str(value).lower() not in SYNCHRONOUS:
            raise ConfigError(f"{where}: must be one of {', '.join(SYNCHRONOUS)}, not {value!r}")
        return str(value).lower()
    if key in ("poll_interval", "busy_timeout"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if number <= 0:
            raise ConfigError(f"{where}: must be a positive number of seconds, not {value!r}")
        return number
    raise ConfigError(f"{where}: unknown option (expected path, table, synchronous, poll_interval, busy_timeout)")


def _due(delay: float) -> float:
    """The ``due`` of a waiting message: ``READY_AT_ONCE``, or its epoch time if delayed."""
    return time.time() + delay if delay > 0 else READY_AT_ONCE


def _bytes(body: object) -> bytes:
    """A body as bytes, even if another writer stored text or a number in the column."""
    return body if isinstance(body, bytes) else str(body).encode("utf-8", "surrogateescape")


def _int(id: str) -> int:
    try:
        return int(id)
    except ValueError:
        return -1
