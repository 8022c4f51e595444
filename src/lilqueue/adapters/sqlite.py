"""``sqlite:///PATH``: the embedded default. A durable queue in one file, no server.

All queues share one table. A row is *waiting*, *reserved* or *held* (``state``), and the
sign of its ``due`` says whether it waits for the clock:

- ``due < 0``: in the take index ``_ready`` (queue, priority, id). A waiting row ready at
  once has ``READY_AT_ONCE``; a reserved row has minus the epoch time its lease lapses,
  and is takeable again once that has passed (still reserved meanwhile, so the lapsed
  worker's delete or release lands until another worker takes the row).
- ``due >= 0``: a delayed row, ready at that epoch time, in the index ``_timed`` (due).

A reservation walks ``_ready`` alone, past at most the running rows, so its cost does not
grow with delayed tasks (100,000 tasks delayed an hour used to slow a drain from 17k to
59 tasks/s). Delayed rows whose time has come are moved to ``_ready`` by one UPDATE, run
by whichever worker notices first, for every queue (its commit wakes the others): a busy
worker looks at the head of ``_timed`` every ``TIMED_LOOK`` seconds and before it reports
nothing ready, an idle one sleeps until that head's time. A reservation and a delete touch
``_ready`` only, so a task costs the same two pages per commit as when it was the only index.
Any number of queues is one statement: each watched queue's head comes from its own walk
of ``_ready`` (a correlated subquery over ``json_each`` of the names).

A reservation is one ``UPDATE ... RETURNING``, which SQLite runs under its single write
lock, so processes sharing the file each get a row exactly once unless its lease lapses.
``deliveries`` counts reservations and fences a lapsed worker: its delete or release no
longer matches once another worker has taken the row. ``settled`` is ``deliveries`` at
the row's last outcome (retry, hold, kick), so ``deliveries - 1 - settled`` earlier
deliveries never reached one (``Job.unfinished``); an unreserve takes its delivery back.

Any client may write the table, so rows are read defensively: a body is read as a BLOB
whatever its type, text as bytes decoded leniently, and a row whose priority, ttr or
delivery count lilqueue cannot carry is held at once with a reason, never handed out.
A row lilqueue would never see otherwise is held too, with a reason naming what is wrong:
a ``state`` other than 0, 1 or 2 (3, -1, 1.5, text, NULL), or a waiting or reserved row
whose ``due`` is not a number, or lies beyond ``FAR`` (a delay that never falls due, a
lease that never lapses: +-inf, 1e300). Such rows are in the partial index ``_odd``,
empty in a healthy file, so finding them is one probe of an empty index; it rides on the
look for delayed rows (every ``TIMED_LOOK`` seconds while busy, before every "nothing
ready", and in ``stats``, ``held`` and ``peek``). The take itself only takes states 0
and 1, so a row with another state is never handed out meanwhile.

The hot path: a delete (the ack) is held back and committed in the same transaction as
this connection's next reservation, so a busy worker commits once per task, not twice.
Any other call on the adapter commits held-back deletes first, and so do an idle wait,
:meth:`SQLiteAdapter.flush` (the runner calls it when it stops and before after-task
hooks) and ``close``; a process that dies before that runs those tasks again once
their leases lapse, as if it had died just before the delete. Every statement, and
every fetch of its rows, runs inside one error translation (``_translated``): a full
disk or a locked file reaches the runner as a ``BackendConnectionError``, never as a
raw ``sqlite3`` error.

Idle workers wait for another connection's commit, a delay's due time, or
``LEASE_LOOK`` seconds (leases are not indexed by time): on Linux they sleep on an
inotify watch of the ``-wal`` file (no CPU at all while idle) and confirm with
``PRAGMA data_version``; elsewhere they read ``data_version`` (shared memory, no I/O)
every ``poll_interval`` seconds. Either way a task added by another process starts
within a millisecond or two.

Opening a file written by an earlier version upgrades it once, under the write lock:
the ``settled`` column is added, leases get their sign, and the earlier take/delayed
indexes are replaced (stop workers of the earlier version first: they would take
running rows for lapsed ones).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import re
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
from lilqueue.adapters.support import options
from lilqueue.errors import BackendConnectionError, BackendError, BackendTimeoutError, ConfigError, LilqueueError
from lilqueue.task import MAX_PRIORITY, MAX_SECONDS

log = logging.getLogger(__name__)

WAITING, RESERVED, HELD = 0, 1, 2
SYNCHRONOUS = ("off", "normal", "full", "extra")
#: the options that are a number of seconds (``busy_timeout``: the old name of ``io_timeout``)
SECONDS = ("connect_timeout", "io_timeout", "poll_interval", "busy_timeout")
#: ``due`` of a waiting row ready at once: below 0, so in the ``_ready`` index; and a REAL
#: with a fraction, which SQLite stores in 8 bytes like the lease time a reservation writes
#: over it: the row keeps its size, so SQLite overwrites it in place instead of rewriting
#: a big body's overflow pages (half the speed at 64 KB)
READY_AT_ONCE = -0.5
#: how often an idle reserve looks for lapsed leases (seconds; leases are not indexed by time)
LEASE_LOOK = 0.5
#: how often a busy reserve looks for delayed rows that fell due (seconds); an idle one
#: sleeps until the first is due, and one finding nothing ready always looks
TIMED_LOOK = 0.05
#: SQLite's result code for a lock it waited for in vain ("database is locked")
SQLITE_BUSY = 5
#: the largest count, id or limit bound as a parameter (SQLite integers are 64-bit)
MAX_INT = 2**62
#: a delivery count above this is not a count (the row was written by hand)
MAX_DELIVERIES = 2**31
#: a ``due`` beyond this (either sign; epoch seconds, the year 2514) is no time lilqueue
#: writes: a delay or a lease is at most ``MAX_SECONDS`` (2**32) from now
FAR = 2.0**34
#: the rows lilqueue never writes, which no take or count would see (index ``_odd``). No
#: ``IN (...)`` list: SQLite evaluates this on every write of ``state`` or ``due``, and a
#: list there made a drain three times slower; text and blobs compare above every number
_STATE_ODD = f"state IS NULL OR (state != {WAITING} AND state != {RESERVED} AND state != {HELD})"
_ODD = f"{_STATE_ODD} OR (state < {HELD} AND (due IS NULL OR due > {FAR!r})) OR (state = {RESERVED} AND due < {-FAR!r})"
#: why a row of ``_odd`` is held (SQL; text and blobs shown cut to 40 characters)
_ODD_REASON = (
    "'rejected: the SQLite row''s ' || CASE "
    f"WHEN {_STATE_ODD} "
    "THEN 'state must be 0 (waiting), 1 (reserved) or 2 (held), not ' || substr(quote(state), 1, 40) "
    "WHEN typeof(due) NOT IN ('integer', 'real') "
    "THEN 'due must be a number (epoch seconds), not ' || substr(quote(due), 1, 40) "
    "WHEN due >= 0 THEN 'due ' || quote(due) || ' is beyond any delay: it would never fall due' "
    "ELSE 'lease (due ' || quote(due) || ') would never lapse' END"
)

_TABLE = """
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
    held_at REAL,
    settled INTEGER NOT NULL DEFAULT 0
)"""
_INDEXES = {
    "ready": f"(queue, priority, id) WHERE state < {HELD} AND due < 0",
    "timed": f"(due) WHERE state < {HELD} AND due >= 0",
    "held": f"(queue, held_at, id) WHERE state = {HELD}",
    "odd": f"(id) WHERE {_ODD}",
}
#: indexes of earlier versions, replaced by ``_ready`` and ``_timed``
_OLD_INDEXES = ("take", "due", "delayed")
#: the columns a reservation returns (a body of any type read as bytes)
_JOB_COLUMNS = "id, queue, CAST(body AS BLOB), priority, ttr, deliveries, settled"
#: a row in ``_ready`` that may be taken at ``?1`` (now): waiting, or its lease has lapsed
_TAKEABLE = f"state < {HELD} AND due < 0 AND (state = {WAITING} OR (state = {RESERVED} AND due >= -?1))"


class SQLiteAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=native("ORDER BY priority, id"),
        delay=native("a 'due' time per row"),
        ttr=native("a lease: a reserved row is takeable again once its 'due' passes"),
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
        connect_timeout: float = options.CONNECT_TIMEOUT,
        io_timeout: float = options.IO_TIMEOUT,
        busy_timeout: float | None = None,
    ) -> None:
        """``connect_timeout``: how long opening the file may wait for another process's
        write lock (seconds); ``io_timeout`` (old name ``busy_timeout``): how long any
        later statement may. SQLite waits for nothing else."""
        self.path = path
        self.table = table
        self.poll_interval = poll_interval
        #: deletes held back to commit with the next reservation: (id, deliveries)
        self._acks: list[tuple[int, int]] = []
        self._wal: WalWatch | None = None
        self._takes: dict[tuple[str, ...], tuple[str, str]] = {}
        self._next_look = 0.0  # when a busy reserve next looks for delayed rows that fell due
        self.io_timeout = io_timeout if busy_timeout is None else busy_timeout
        self.db = self._open(synchronous, connect_timeout)
        self._translated = Translated(f"SQLite {path!r}", self.io_timeout)
        self._transaction = Transaction(self.db)
        t = table
        self._leased = f"id=? AND state={RESERVED} AND deliveries=?"  # still this worker's lease
        self._unhold = f"state={WAITING}, due={READY_AT_ONCE}, reason=NULL, held_at=NULL, settled=deliveries"
        self._delete_sql = f"DELETE FROM {t} WHERE {self._leased}"
        self._timed_sql = _look_statement(t)
        self._promote_sql = f"UPDATE {t} SET due={READY_AT_ONCE} WHERE state < {HELD} AND due >= 0 AND due <= ?"
        self._take_one = _take_statement(t, "?2")

    def _open(self, synchronous: str, connect_timeout: float) -> sqlite3.Connection:
        opening = Translated(f"cannot open SQLite queue {self.path!r}", connect_timeout)
        with opening:
            db = sqlite3.connect(
                os.fsencode(self.path), isolation_level=None, timeout=connect_timeout, check_same_thread=False
            )
        try:
            with opening:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={synchronous}")
                _prepare(db, self.table)
                db.execute(f"PRAGMA busy_timeout={max(1, round(self.io_timeout * 1000))}")
        except BackendError:
            db.close()
            raise
        return db

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
            opts.update(parse_qsl(query, keep_blank_values=True))
        kwargs: dict[str, Any] = {}
        for key, value in opts.items():
            kwargs[key] = _option(key, value)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ConfigError(f"queue.sqlite.path: must be a file path, not {path!r}")
        if path != ":memory:":
            _make_directory(path)
        return cls(path, **kwargs)

    # -- the hot path --------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        sql = f"INSERT INTO {self.table} (queue, body, priority, ttr, due) VALUES (?, ?, ?, ?, ?)"
        self._flush_first()
        with self._translated:
            cur = self.db.execute(sql, (queue, body, priority, ttr, _due(delay)))
        return str(cur.lastrowid)

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        deadline = time.monotonic() + timeout
        job = self._take(queues)
        while job is None and timeout > 0:
            version = self._data_version()  # read before the take, so no commit goes unseen
            job = self._take(queues)
            if job is None and not self._wait(version, deadline):
                return None
        return job

    def _take(self, queues: Sequence[str]) -> Job | None:
        """Claim the most urgent takeable row of ``queues``; hold (and skip) rows that are
        not lilqueue's to hand out."""
        sql, names = self._take_for(queues)
        while True:
            now = time.time()
            looked = now >= self._next_look
            row = self._claim(sql, (now, names), promote=looked and self._fell_due(now))
            if row is None and not looked and self._fell_due(now):  # look before saying "none"
                row = self._claim(sql, (now, names), promote=True)
            if row is None:
                return None
            problem = _row_problem(row)
            if problem is None:
                return _job(row)
            self._hold_row(row, problem)

    def _take_for(self, queues: Sequence[str]) -> tuple[str, str]:
        """The take statement for ``queues`` and its ?2 (a name, or a JSON list of names)."""
        if len(queues) == 1:
            return self._take_one, queues[0]
        key = tuple(queues)
        found = self._takes.get(key)
        if found is None:
            if len(self._takes) > 16:
                self._takes.clear()
            found = self._takes[key] = (_take_statement(self.table, "w.value"), json.dumps(key))
        return found

    def _claim(self, sql: str, params: tuple[float, str], *, promote: bool) -> Any:
        """Run the take, in one transaction with the held-back deletes and (``promote``)
        the UPDATE that moves delayed rows that fell due to ``_ready``."""
        if not self._acks and not promote:
            with self._translated:
                rows = self.db.execute(sql, params).fetchall()
            return rows[0] if rows else None
        acks, self._acks = self._acks, []
        try:
            with self._translated, self._transaction as db:
                db.executemany(self._delete_sql, acks)
                if promote:
                    db.execute(self._promote_sql, (params[0],))
                rows = db.execute(sql, params).fetchall()
        except BaseException:
            self._acks[:0] = acks  # not committed: still owed
            raise
        return rows[0] if rows else None

    def _next_timed(self) -> float | None:
        """The epoch time the first delayed row falls due, if any; and the rows of ``_odd``
        (another client's, that nothing else would see) are held, in the same look."""
        with self._translated:
            first, odd = self.db.execute(self._timed_sql).fetchone()
        if odd:
            self._hold_odd()
        return float(first) if isinstance(first, int | float) else None

    def _hold_odd(self) -> None:
        t = self.table
        sql = (
            f"UPDATE {t} INDEXED BY {t}_odd SET state={HELD}, reason={_ODD_REASON}, held_at=?, "
            f"settled=ifnull(deliveries, 0) WHERE {_ODD}"
        )
        held = self._changed(sql, (time.time(),))
        log.warning("held %d rows of %s with a state or due lilqueue never writes", held, t)

    def _fell_due(self, now: float) -> bool:
        """Whether a delayed row is due by ``now`` (and when to look again)."""
        due = self._next_timed()
        self._next_look = now + TIMED_LOOK if due is None or due <= now else min(due, now + TIMED_LOOK)
        return due is not None and due <= now

    def _hold_row(self, row: Sequence[Any], problem: str) -> None:
        """Hold a claimed row lilqueue cannot hand out (written by another client)."""
        id, queue, deliveries = row[0], row[1], row[5]
        reason = f"rejected: the SQLite row's {problem}"
        log.warning("holding job %s on %s: %s", id, queue, reason, extra={"queue": queue, "task_id": str(id)})
        sql = (
            f"UPDATE {self.table} SET state={HELD}, reason=?, held_at=?, settled=deliveries "
            f"WHERE id=? AND state={RESERVED} AND deliveries IS ?"
        )
        self._run(sql, (reason, time.time(), id, deliveries))

    def flush(self) -> None:
        """Commit the deletes held back for the next reservation now."""
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                with self._translated, self._transaction as db:
                    db.executemany(self._delete_sql, acks)
            except BaseException:
                self._acks[:0] = acks
                raise

    def _wait(self, version: int, deadline: float) -> bool:
        """Sleep until another connection commits, a delay falls due (in any queue: the take
        that follows makes it ready, and its commit wakes that queue's workers), it is time
        to look for lapsed leases (every ``LEASE_LOOK`` seconds), or ``deadline``. False once
        the deadline has passed."""
        self.flush()
        due = self._next_timed()
        wake = min(deadline, time.monotonic() + LEASE_LOOK)
        if due is not None:
            wake = min(wake, time.monotonic() + due - time.time())
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
        return int(self._run("PRAGMA data_version")[0][0])

    def delete(self, job: Job) -> None:
        """Held back to commit with the next reservation (or any other call, or ``flush``)."""
        self._acks.append((int(job.id), job.receipt))

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        sql = f"UPDATE {self.table} SET state={WAITING}, priority=?, due=?, settled=deliveries WHERE {self._leased}"
        self._run(sql, (priority, _due(delay), int(job.id), job.receipt))

    def unreserve(self, job: Job) -> None:
        """Ready again at once, and this delivery taken back: the next one counts the same."""
        sql = (
            f"UPDATE {self.table} SET state={WAITING}, due={READY_AT_ONCE}, deliveries=deliveries-1 "
            f"WHERE {self._leased}"
        )
        self._run(sql, (int(job.id), job.receipt))

    def bury(self, job: Job, *, reason: str) -> None:
        sql = f"UPDATE {self.table} SET state={HELD}, reason=?, held_at=?, settled=deliveries WHERE {self._leased}"
        self._run(sql, (_storable(reason), time.time(), int(job.id), job.receipt))

    def touch(self, job: Job) -> None:
        sql = f"UPDATE {self.table} SET due=-(? + ttr) WHERE {self._leased}"
        self._run(sql, (time.time(), int(job.id), job.receipt))

    # -- operating -----------------------------------------------------------------

    def kick(self, queue: str, count: int) -> int:
        t = self.table
        sql = (
            f"UPDATE {t} SET {self._unhold} WHERE id IN "
            f"(SELECT id FROM {t} WHERE queue=? AND state={HELD} ORDER BY held_at, id LIMIT ?)"
        )
        return self._changed(sql, (queue, _clamp(count)))

    def kick_id(self, queue: str, id: str) -> bool:
        sql = f"UPDATE {self.table} SET {self._unhold} WHERE id=? AND queue=? AND state={HELD}"
        row = _row_id(id)
        return row is not None and self._changed(sql, (row, queue)) == 1

    def delete_id(self, queue: str, id: str) -> bool:
        sql = f"DELETE FROM {self.table} WHERE id=? AND queue=? AND (state != {RESERVED} OR -due <= ?)"
        row = _row_id(id)
        return row is not None and self._changed(sql, (row, queue, time.time())) == 1

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        sql = (
            f"SELECT id, CAST(body AS BLOB), CAST(reason AS BLOB), held_at FROM {self.table} "
            f"WHERE queue=? AND state={HELD} ORDER BY held_at, id LIMIT ?"
        )
        self._next_timed()  # holds the rows nothing else would see first
        found = []
        for id, body, reason, held_at in self._run(sql, (queue, _clamp(limit))):
            found.append(HeldJob(str(id), queue, body, _text(reason), _number(held_at)))
        return found

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        t = self.table
        now = time.time()
        if self._fell_due(now) and state == "ready":  # the look holds odd rows, whatever the state
            self._run(self._promote_sql, (now,))
        where = {
            "ready": f"{_TAKEABLE} ORDER BY priority, id",
            "delayed": f"state < {HELD} AND due >= 0 AND state = {WAITING} AND due > ?1 ORDER BY due, id",
            "held": f"state = {HELD} ORDER BY held_at, id",
        }[state]
        sql = f"SELECT id, CAST(body AS BLOB), priority FROM {t} WHERE queue = ?2 AND {where} LIMIT 1"
        rows = self._run(sql, (now, queue))
        if not rows:
            return None
        id, body, priority = rows[0]
        return Peeked(str(id), queue, body, priority if type(priority) is int else None)

    def stats(self, queue: str) -> QueueStats:
        sql = (
            f"SELECT SUM((state = {WAITING} AND due <= ?2) OR (state = {RESERVED} AND -due <= ?2)), "
            f"SUM(state = {WAITING} AND due > ?2), SUM(state = {RESERVED} AND -due > ?2), SUM(state = {HELD}) "
            f"FROM {self.table} WHERE queue = ?1"
        )
        self._next_timed()  # holds the rows no count would see first
        ready, delayed, reserved, held = self._run(sql, (queue, time.time()))[0]
        return QueueStats(ready or 0, delayed or 0, reserved or 0, held or 0)

    def close(self) -> None:
        try:
            self.flush()
        except LilqueueError as exc:  # closing anyway: those tasks run again after their ttr
            log.warning("could not commit %d held-back deletes on close: %s", len(self._acks), exc)
        if self._wal is not None:
            self._wal.close()
        self.db.close()

    # -- running statements ----------------------------------------------------------

    def _flush_first(self) -> None:
        if self._acks:
            self.flush()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Commit held-back deletes, then run ``sql`` and fetch all its rows."""
        self._flush_first()
        with self._translated:
            return self.db.execute(sql, params).fetchall()

    def _changed(self, sql: str, params: Sequence[Any]) -> int:
        """Commit held-back deletes, then run the write ``sql``: how many rows it changed."""
        self._flush_first()
        with self._translated:
            return self.db.execute(sql, params).rowcount


class Translated:
    """The adapter's one error translation, around every statement and every fetch:
    sqlite3's errors (and text SQLite cannot take) become lilqueue's, chained. ``where``
    starts each message; ``waited`` is the lock wait a "database is locked" ran out of."""

    __slots__ = ("waited", "where")

    def __init__(self, where: str, waited: float) -> None:
        self.where = where
        self.waited = waited

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.OperationalError):
            if exc.sqlite_errorcode & 0xFF == SQLITE_BUSY:
                wait = f"another process held the write lock for more than {self.waited:g}s"
                raise BackendTimeoutError(f"{self.where}: {exc} ({wait})") from exc
            raise BackendConnectionError(f"{self.where}: {exc}") from exc  # full disk, I/O error, file gone
        if isinstance(exc, sqlite3.Error):
            raise BackendError(f"{self.where}: {exc}") from exc
        if isinstance(exc, UnicodeEncodeError):  # a name with a lone surrogate (from a non-UTF-8 argv, say)
            raise BackendError(f"{self.where}: text that is not valid Unicode: {exc}") from exc


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``db``, rolled back on any error (a failed
    COMMIT included: after a full disk SQLite may or may not have rolled back itself)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.db.execute("COMMIT")
        finally:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")


def _take_statement(table: str, queue: str) -> str:
    """One UPDATE claiming the most urgent takeable row of one queue (``queue`` is ``?2``)
    or of the queues named by the JSON list ``?2`` (``queue`` is ``w.value``).

    Each queue's candidate comes from its own walk of the ``_ready`` index, so the cost
    does not grow with the number of rows, only with the number of queues.
    """
    t = table
    head = (
        f"SELECT id FROM {t} INDEXED BY {t}_ready WHERE queue = {queue} AND {_TAKEABLE} ORDER BY priority, id LIMIT 1"
    )
    if queue != "?2":
        head = f"SELECT j.id FROM json_each(?2) AS w JOIN {t} AS j ON j.id = ({head}) ORDER BY j.priority, j.id LIMIT 1"
    return (
        f"UPDATE {t} SET state={RESERVED}, due=-(?1 + ttr), deliveries=deliveries+1 "
        f"WHERE id = ({head}) RETURNING {_JOB_COLUMNS}"
    )


def _look_statement(table: str) -> str:
    """Two index probes: the first delayed row's due, and whether ``_odd`` has a row."""
    t = table
    timed = f"SELECT MIN(due) FROM {t} WHERE state < {HELD} AND due >= 0"
    return f"SELECT ({timed}), EXISTS (SELECT 1 FROM {t} INDEXED BY {t}_odd WHERE {_ODD})"


def _row_problem(row: Sequence[Any]) -> str | None:
    """Why a claimed row cannot become a Job (its values were written by another client)."""
    priority, ttr, deliveries = row[3], row[4], row[5]
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        return f"priority must be an integer 0 <= p < 2**32, not {_show(priority)}"
    if type(ttr) is not int or not 1 <= ttr <= MAX_SECONDS:
        return f"ttr must be a whole number of seconds 1 <= t < 2**32, not {_show(ttr)}"
    if type(deliveries) is not int or not 1 <= deliveries <= MAX_DELIVERIES:
        return f"delivery count, this one included, must be an integer 1 <= n < 2**31, not {_show(deliveries)}"
    return None


def _job(row: Sequence[Any]) -> Job:
    id, queue, body, priority, ttr, deliveries, settled = row
    earlier = deliveries - 1
    unfinished = earlier - settled if type(settled) is int and 0 <= settled <= earlier else earlier
    return Job(str(id), queue, body, priority, ttr, deliveries, receipt=deliveries, unfinished=unfinished)


def _prepare(db: sqlite3.Connection, table: str) -> None:
    """Create the table and its indexes, or bring a file of an earlier version up to date.

    Checked without a lock first (every open does this), changed under the write lock.
    """
    if _up_to_date(db, table):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _up_to_date(db, table):
            _upgrade(db, table)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _up_to_date(db: sqlite3.Connection, table: str) -> bool:
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}
    sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
    indexes = {row[0] for row in db.execute(sql, (table,)).fetchall()}
    return "settled" in columns and {f"{table}_{name}" for name in _INDEXES} <= indexes


def _upgrade(db: sqlite3.Connection, table: str) -> None:
    t = table
    db.execute(_TABLE.format(t=t))
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({t})").fetchall()}
    if "settled" not in columns:  # before issue 11: no outcome recorded, none assumed
        db.execute(f"ALTER TABLE {t} ADD COLUMN settled INTEGER NOT NULL DEFAULT 0")
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (f"{t}_ready",)).fetchone()
    if exists is None:
        for old in _OLD_INDEXES:
            db.execute(f"DROP INDEX IF EXISTS {t}_{old}")
        db.execute(f"UPDATE {t} SET due={READY_AT_ONCE} WHERE state < {HELD} AND due = 0")  # ready, in 0.x files
        db.execute(f"UPDATE {t} SET due=-due WHERE state = {RESERVED} AND due > 0")  # leases get their sign
    for name, columns_where in _INDEXES.items():
        db.execute(f"CREATE INDEX IF NOT EXISTS {t}_{name} ON {t} {columns_where}")


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


def _make_directory(path: str) -> None:
    """Create the file's directory: a path through a file is a config error; anything
    else (permissions, a missing mount, a full disk) a backend that cannot be reached."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"queue.sqlite.path: {path!r} goes through a file, not a directory: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise BackendConnectionError(f"cannot create the directory of SQLite queue {path!r}: {exc}") from exc


def _option(key: str, value: Any) -> Any:
    where = f"queue.sqlite.{key}"
    if key == "table":
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ConfigError(f"{where}: must be a plain identifier (letters, digits, _), not {value!r}")
        return value
    if key == "synchronous":
        if str(value).lower() not in SYNCHRONOUS:
            raise ConfigError(f"{where}: must be one of {', '.join(SYNCHRONOUS)}, not {value!r}")
        return str(value).lower()
    if key in SECONDS:
        return options.seconds(where, value)
    known = ", ".join(("path", "table", "synchronous", *SECONDS))
    raise ConfigError(f"{where}: unknown option (expected {known})")


def _due(delay: float) -> float:
    """The ``due`` of a waiting message: ``READY_AT_ONCE``, or its epoch time if delayed."""
    return time.time() + delay if delay > 0 else READY_AT_ONCE


def _storable(text: str) -> str:
    """``text`` as SQLite can store it: a lone surrogate becomes its escape, never an error."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: object) -> str | None:
    """Text read as a BLOB (so no bytes another client wrote can fail to decode)."""
    if value is None:
        return None
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clamp(count: int) -> int:
    """A count or limit SQLite can bind: negative is none (not "all"), huge is "all"."""
    return max(0, min(int(count), MAX_INT))


def _row_id(id: str) -> int | None:
    """The row id ``id`` names (another client may have written a negative one), or None
    for anything that cannot be one (not a plain integer, or beyond SQLite's 64 bits)."""
    digits = id[1:] if isinstance(id, str) and id.startswith("-") else id
    if not (isinstance(digits, str) and digits.isascii() and digits.isdigit() and len(digits) <= 19):
        return None
    number = int(id)
    return number if -(2**63) <= number < 2**63 else None
