"""``gearman://H:P[,H:P]``: Gearman (gearmand 1.1) as a job queue, on our own protocol client.

- A queue is a Gearman function of the same name. Tasks are background jobs.
- Priority: as the seed computes it (``priority < 1024 / 3`` and ``< 2 * 1024 / 3``),
  0-341 go to the high band (``SUBMIT_JOB_HIGH_BG``), 342-682 to normal
  (``SUBMIT_JOB_BG``), 683 and above to low (``SUBMIT_JOB_LOW_BG``); first in, first
  out within a band. Every value is accepted; the exact value travels in the job's
  unique key (``<32 hex>.<priority>.<ttr>``, fresh per submit since gearmand merges
  jobs with equal keys), which is also the task id. Anyone else's key, or a part of
  ours out of range, reads as the defaults (1024, 60 s): any client can send any key.
- Delay: ``SUBMIT_JOB_EPOCH`` at ``ceil(now + delay)``, to the sibling function
  ``<queue>@delayed``. gearmand puts epoch jobs in the *normal* band whatever their
  priority, and while one waits there, the ready *low*-band jobs of the same function
  are not handed out (gearmand takes from the first non-empty band only, skipping its
  jobs that are not due). On a function of their own, waiting delayed jobs hold back
  nothing. Workers ask for ``<queue>@delayed`` before ``<queue>``, so a delayed task
  that has fallen due runs before the queue's ready tasks. Idle workers look again
  every ``poll_interval`` seconds: gearmand sends no NOOP when an epoch falls due.
- No TTR: a job stays with its worker while the worker's connection is open; if the
  connection drops (the worker died) gearmand hands the job to another worker. A hung
  worker is the runner's watchdog's business. ``touch`` therefore has nothing to extend.
  A job reserved but never started is handed back the same way (``unreserve`` closes
  the connection), uncounted.
- gearmand counts no deliveries, so the adapter keeps a *delivery ledger*: each grab
  adds one to the deliveries of the job, known by server, handle and unique key (gearmand
  hands the same job out again under the same handle; a new submission that reuses a
  unique key, as raw clients do to coalesce jobs, gets a new handle and a new count):
  ``Job.deliveries``. A job replayed from a persistent queue after a gearmand restart
  has a new handle, so its count starts again. ``Job.unfinished`` is the earlier
  deliveries that reached no outcome: every earlier one of the same Gearman job, since
  an outcome ends it (delete, hold and release complete the job, and the ledger forgets
  it). ``release`` re-submits under a new key that carries the deliveries on, all of
  them settled; a kick, or the runner's retry (which writes the attempts into the
  envelope), starts a new count. ``unreserve`` takes its delivery back.
- Hold: gearmand cannot keep a job aside, so a held task is written, with its reason
  and time, to the *held store* before its job is completed; ``held``, ``kick``
  (re-submit) and ``delete`` work there. The held store also keeps the delivery ledger
  and the delayed jobs this adapter submitted (server, handle, due time), so that
  ``delete --id`` can cancel one (gearmand drops a cancelled job when it reaches the
  head of its queue) and ``stats`` stops counting it. It is an SQLite file (option
  ``held_store``: a path or ``sqlite:///PATH``; default ``lilqueue-gearman-held.db``)
  or a Redis database (``redis://H:P/DB``) every worker of a deployment shares. A store
  that cannot be reached is a ``BackendConnectionError``: a grab then gives its job back.
- Several servers: a task goes to one server (round robin, the next one if a server is
  down); a worker takes from all of them.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    missing,
    native,
)
from lilqueue.adapters.gearman_protocol import (
    MAX_FUNCTION,
    Address,
    Admin,
    Assignment,
    Band,
    Command,
    Connection,
    parse_address,
    wait_readable,
)
from lilqueue.adapters.support import options
from lilqueue.adapters.support.options import CONNECT_TIMEOUT, IO_TIMEOUT
from lilqueue.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ConfigError,
    LilqueueError,
    UnsupportedError,
)

log = logging.getLogger(__name__)

#: the seed's bands: high while ``priority < 1024 / 3``, normal while ``< 2 * 1024 / 3``
HIGH_MAX = 341
NORMAL_MAX = 682
#: what a job whose unique key carries no (valid) priority or ttr gets (SPEC section 1)
DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 60
MAX_PRIORITY = 2**32 - 1
MAX_TTR = 2**32 - 1
DEFAULT_HELD_STORE = "lilqueue-gearman-held.db"
#: a kick that claimed a held task but did not finish re-submitting it gives it back after this
KICK_CLAIM_TIMEOUT = 60.0
#: how long a server that failed is left alone before the worker tries it again
SERVER_RETRY = 2.0
#: seconds a ledger entry outlives its last delivery (one whose settling was lost is swept then)
LEDGER_KEEP = 7 * 86400
#: the most settlings an SQLite held store keeps back, to write them in one statement
SETTLE_BATCH = 64
#: seconds the record of a delayed job outlives its due time
DELAYED_KEEP = 86400
#: the longest timeout an option may set, in seconds
MAX_TIMEOUT = 86400.0
_UNIQUE = re.compile(r"[0-9a-f]{32}\.([0-9]{1,10})\.([0-9]{1,10})")
DELAYED_SUFFIX = "@delayed"
#: what a server's stats for a queue are when its listings look forged
_FORGED = (-1,) * 6
OPTIONS = ("servers", "held_store", "connect_timeout", "io_timeout", "poll_interval")
_SECONDS = ("connect_timeout", "io_timeout", "poll_interval")


def band(priority: int) -> Band:
    """The Gearman band of a lilqueue priority: 0-341 high, 342-682 normal, 683+ low."""
    if priority <= HIGH_MAX:
        return "high"
    return "normal" if priority <= NORMAL_MAX else "low"


def new_unique(priority: int, ttr: int) -> str:
    """A fresh unique key carrying the exact priority and ttr (at most 54 bytes)."""
    return f"{uuid.uuid4().hex}.{priority}.{ttr}"


def parse_unique(unique: str) -> tuple[int, int]:
    """(priority, ttr) from a unique key this adapter made; the defaults for anyone else's,
    and for a part that is out of range (a job from another client may carry any key)."""
    match = _UNIQUE.fullmatch(unique)
    if match is None:
        return DEFAULT_PRIORITY, DEFAULT_TTR
    priority = int(match[1])
    ttr = int(match[2])
    if priority > MAX_PRIORITY:
        priority = DEFAULT_PRIORITY
    if not 1 <= ttr <= MAX_TTR:
        ttr = DEFAULT_TTR
    return priority, ttr


def ledger_key(queue: str, unique: bytes, server: Address, handle: bytes) -> bytes:
    """What the ledger counts a job's deliveries under: its queue, server, handle and unique key.

    gearmand keeps a job's handle when it hands the job out again (its worker died), and
    gives every new submission a new one, even one that reuses a unique key (raw clients
    coalesce jobs with fixed keys such as ``report-daily``): so a re-hand counts, a new
    job starts afresh. The unique key is there because gearmand numbers handles from 1
    again after a restart.
    """
    parts = (queue.encode("utf-8", "backslashreplace"), str(server).encode(), handle, unique)
    return b"\0".join(parts)


def _text(value: str) -> str:
    """Text any store takes: a lone surrogate (not UTF-8) written as its escape."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class BandStats:
    """What the admin protocol tells about one function, summed over the servers."""

    high: int
    normal: int
    low: int
    running: int
    workers: int
    delayed: int
    held: int
    servers_down: int = 0
    forged: int = 0  # servers whose figures for the queue looked forged, left out

    @property
    def ready(self) -> int:
        return self.high + self.normal + self.low


@dataclass(slots=True)
class _Receipt:
    conn: Connection
    generation: int
    handle: bytes
    key: bytes  # the job's ledger key


class _Server:
    """One gearmand: a client connection (submit), a worker connection, an admin connection."""

    def __init__(self, address: Address, connect_timeout: float, io_timeout: float) -> None:
        self.address = address
        self.client = Connection(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
        self.worker = Connection(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
        self.admin = Admin(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
        self.functions: tuple[str, ...] = ()
        self.generation = 0  # bumped when the worker connection is (re)opened
        self.down_until = 0.0

    def close(self) -> None:
        self.client.close()
        self.worker.close()
        self.admin.close()


# -- the held store -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HeldRow:
    """A held task claimed for a kick; ``token`` tells this copy from a later one of the same id."""

    queue: str
    id: str
    body: bytes
    priority: int
    ttr: int
    token: str


class HeldStore(abc.ABC):
    """What gearmand does not keep, kept where every process of a deployment sees it.

    - Held tasks, with reason and time. A held task being kicked is *claimed* first (one
      kicker wins), re-submitted, then forgotten; a claim older than
      :data:`KICK_CLAIM_TIMEOUT` (a kicker that died) is void, so the task shows as held
      again rather than being lost.
    - The delayed jobs this adapter submitted (server, handle, due time), for
      ``delete --id`` and ``stats``.
    - The delivery ledger: deliveries per job, until the job is settled.

    Every method raises :class:`BackendConnectionError` when the store cannot be reached,
    and takes any ``str`` (lone surrogates are stored as their escapes).
    """

    url: str
    _unsettled: list[bytes]

    @abc.abstractmethod
    def hold(self, queue: str, id: str, body: bytes, priority: int, ttr: int, reason: str) -> None:
        """Keep a task (the same queue and id replace an earlier copy: it is the same job)."""

    @abc.abstractmethod
    def held(self, queue: str, limit: int) -> list[HeldJob]:
        """Up to ``limit`` held tasks not claimed by a kick, oldest first."""

    @abc.abstractmethod
    def count(self, queue: str) -> int:
        """How many held tasks are not claimed by a kick."""

    @abc.abstractmethod
    def claim(self, queue: str, limit: int, id: str | None = None) -> list[_HeldRow]:
        """Claim up to ``limit`` held tasks (or the one with ``id``) for a kick, oldest first."""

    @abc.abstractmethod
    def unclaim(self, rows: Sequence[_HeldRow]) -> None:
        """Give claimed tasks back to the held list (their kick failed)."""

    @abc.abstractmethod
    def forget(self, row: _HeldRow) -> None:
        """Remove a kicked task (unless it was held again since: another token)."""

    @abc.abstractmethod
    def delete(self, queue: str, id: str) -> bool:
        """Remove a held task not claimed by a kick; False if there is none."""

    @abc.abstractmethod
    def note_delayed(self, queue: str, id: str, server: str, handle: bytes, due: float) -> None:
        """Remember a delayed job this adapter submitted."""

    @abc.abstractmethod
    def cancel_delayed(self, queue: str, id: str) -> tuple[str, bytes] | None:
        """Mark a delayed job cancelled, once; (server, handle) the first time."""

    @abc.abstractmethod
    def uncancel_delayed(self, queue: str, id: str) -> None:
        """Undo :meth:`cancel_delayed` (gearmand did not take the cancel)."""

    @abc.abstractmethod
    def cancelled_waiting(self, queue: str, grace: float) -> int:
        """Cancelled delayed jobs that gearmand still counts (until ``grace`` s past their due time)."""

    @abc.abstractmethod
    def deliver(self, key: bytes) -> tuple[int, int]:
        """Count one more delivery of the job ``key``; return (deliveries so far, how many of
        the earlier ones reached no outcome)."""

    @abc.abstractmethod
    def carry(self, key: bytes, deliveries: int) -> None:
        """Add ``deliveries``, all settled, to the count of the job ``key`` (just submitted:
        a worker may have counted a delivery of it already)."""

    @abc.abstractmethod
    def undeliver(self, key: bytes) -> None:
        """Take back the last delivery of ``key`` (handed back unstarted)."""

    def settle(self, key: bytes) -> None:
        """The job ``key`` reached an outcome: forget its deliveries.

        Held back, to go with a later :meth:`deliver` or :meth:`flush` (the adapter flushes
        when idle and when it stops): one write per task, not two. A settling lost with its
        process leaves an entry no one asks for (a completed job's key), swept
        :data:`LEDGER_KEEP` later.
        """
        self._unsettled.append(key)

    @abc.abstractmethod
    def flush(self) -> None:
        """Write the settlings held back (see :meth:`settle`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Write the settlings held back if it can, and release the connection; the store
        reconnects if used again."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gearman_held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    ttr INTEGER NOT NULL,
    reason TEXT,
    held_at REAL NOT NULL,
    claimed_at REAL,
    UNIQUE (queue, id)
);
CREATE INDEX IF NOT EXISTS gearman_held_order ON gearman_held (queue, held_at, seq);
CREATE TABLE IF NOT EXISTS gearman_delayed (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    server TEXT NOT NULL,
    handle BLOB NOT NULL,
    due REAL NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS gearman_delayed_due ON gearman_delayed (queue, due);
CREATE TABLE IF NOT EXISTS gearman_ledger (
    key BLOB PRIMARY KEY,
    deliveries INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0,
    seen REAL NOT NULL
) WITHOUT ROWID;
"""
_VISIBLE = "(claimed_at IS NULL OR claimed_at < ?)"
#: an entry that is not two counts (anyone may write the file) is taken as no entry
_SOUND = (
    "(typeof(deliveries) = 'integer' AND typeof(settled) = 'integer' "
    "AND deliveries BETWEEN 0 AND 1000000000 AND settled BETWEEN 0 AND 1000000000)"
)
_DELIVER = (
    "INSERT INTO gearman_ledger (key, deliveries, seen) VALUES (?, 1, ?) ON CONFLICT (key) DO UPDATE SET "
    f"deliveries = CASE WHEN {_SOUND} THEN deliveries + 1 ELSE 1 END, "
    f"settled = CASE WHEN {_SOUND} THEN settled ELSE 0 END, seen = excluded.seen RETURNING deliveries, settled"
)


class SqliteHeldStore(HeldStore):
    """The held store in one SQLite file (WAL): shared by the processes of one machine.

    The ledger's writes are not synced to disk one by one (``synchronous=NORMAL``: a
    power cut may forget the last counts); a hold is (``FULL``): the held row is the
    task's only copy once its Gearman job is completed. A statement waits for a lock
    ``busy_timeout`` seconds (the adapter's ``io_timeout``), then raises
    :class:`BackendTimeoutError`.
    """

    def __init__(self, path: str, *, busy_timeout: float = IO_TIMEOUT) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._swept = 0.0
        self._unsettled = []

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, unreadable, full: may pass
            locked = "locked" in str(exc) or "busy" in str(exc)
            kind = BackendTimeoutError if locked else BackendConnectionError
            raise kind(f"Gearman held store {self.path!r}: {what}: {exc}") from exc
        except OSError as exc:
            raise BackendConnectionError(f"Gearman held store {self.path!r}: {what}: {exc}") from exc
        except (sqlite3.Error, UnicodeError, OverflowError) as exc:
            raise BackendError(f"Gearman held store {self.path!r}: {what}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        """The file is opened (and created) on first use: a producer that never delays never touches it."""
        if self._db is not None:
            return self._db
        with self._translated("cannot open it"):
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SQLITE_SCHEMA)
            except BaseException:
                db.close()
                raise
        self._db = db
        return db

    def close(self) -> None:
        with contextlib.suppress(LilqueueError):
            self.flush()
        db = self._db
        self._db = None
        if db is not None:
            db.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        db = self._open()
        with self._translated("read or write"):
            return db.execute(sql, params).fetchall()

    def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        db = self._open()
        with self._translated("write"):
            return db.execute(sql, params).rowcount

    def hold(self, queue: str, id: str, body: bytes, priority: int, ttr: int, reason: str) -> None:
        db = self._open()
        row = (queue, _text(id), body, priority, ttr, _text(reason), time.time())
        with self._translated("hold"):
            db.execute("PRAGMA synchronous=FULL")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO gearman_held (queue, id, body, priority, ttr, reason, held_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            finally:
                db.execute("PRAGMA synchronous=NORMAL")

    def held(self, queue: str, limit: int) -> list[HeldJob]:
        sql = (
            f"SELECT id, body, reason, held_at FROM gearman_held WHERE queue=? AND {_VISIBLE} "
            "ORDER BY held_at, seq LIMIT ?"
        )
        rows = self._rows(sql, (queue, time.time() - KICK_CLAIM_TIMEOUT, limit))
        return [HeldJob(_str(i), queue, _bytes(b), _reason(r), _when(h)) for i, b, r, h in rows]

    def count(self, queue: str) -> int:
        sql = f"SELECT COUNT(*) FROM gearman_held WHERE queue=? AND {_VISIBLE}"
        return int(self._rows(sql, (queue, time.time() - KICK_CLAIM_TIMEOUT))[0][0])

    def claim(self, queue: str, limit: int, id: str | None = None) -> list[_HeldRow]:
        now = time.time()
        which = "AND id=?" if id is not None else ""
        sql = (
            f"UPDATE gearman_held SET claimed_at=? WHERE seq IN (SELECT seq FROM gearman_held "
            f"WHERE queue=? {which} AND {_VISIBLE} ORDER BY held_at, seq LIMIT ?) "
            "RETURNING seq, id, body, priority, ttr, held_at"
        )
        params = (now, queue, *((id,) if id is not None else ()), now - KICK_CLAIM_TIMEOUT, limit)
        rows = sorted(self._rows(sql, params), key=lambda r: (_when(r[5]) or 0.0, r[0]))
        return [_HeldRow(queue, _str(i), _bytes(b), *_order(p, ttr), str(seq)) for seq, i, b, p, ttr, _ in rows]

    def unclaim(self, rows: Sequence[_HeldRow]) -> None:
        for row in rows:
            self._change("UPDATE gearman_held SET claimed_at=NULL WHERE seq=?", (int(row.token),))

    def forget(self, row: _HeldRow) -> None:
        self._change("DELETE FROM gearman_held WHERE seq=?", (int(row.token),))

    def delete(self, queue: str, id: str) -> bool:
        sql = f"DELETE FROM gearman_held WHERE queue=? AND id=? AND {_VISIBLE}"
        return self._change(sql, (queue, id, time.time() - KICK_CLAIM_TIMEOUT)) == 1

    def note_delayed(self, queue: str, id: str, server: str, handle: bytes, due: float) -> None:
        self._change(
            "INSERT OR REPLACE INTO gearman_delayed (queue, id, server, handle, due) VALUES (?, ?, ?, ?, ?)",
            (queue, id, server, handle, due),
        )

    def cancelled_waiting(self, queue: str, grace: float) -> int:
        now = time.time()
        self._change("DELETE FROM gearman_delayed WHERE due < ?", (now - DELAYED_KEEP,))  # long gone: forget
        sql = "SELECT COUNT(*) FROM gearman_delayed WHERE queue=? AND cancelled=1 AND due > ?"
        return int(self._rows(sql, (queue, now - grace))[0][0])

    def cancel_delayed(self, queue: str, id: str) -> tuple[str, bytes] | None:
        sql = "UPDATE gearman_delayed SET cancelled=1 WHERE queue=? AND id=? AND cancelled=0 RETURNING server, handle"
        rows = self._rows(sql, (queue, id))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def uncancel_delayed(self, queue: str, id: str) -> None:
        self._change("UPDATE gearman_delayed SET cancelled=0 WHERE queue=? AND id=?", (queue, id))

    def deliver(self, key: bytes) -> tuple[int, int]:
        """One statement (SQLite's cost is per write, not per row): the settlings go in
        batches of :data:`SETTLE_BATCH`, or first if this key is among them."""
        now = time.time()
        if len(self._unsettled) >= SETTLE_BATCH or key in self._unsettled:
            self.flush()
        if now - self._swept > 3600:  # entries whose settling was lost with its process
            self._change("DELETE FROM gearman_ledger WHERE seen < ?", (now - LEDGER_KEEP,))
            self._swept = now
        deliveries, settled = self._rows(_DELIVER, (key, now))[0]
        return _counts(int(deliveries), int(settled))

    def flush(self) -> None:
        unsettled = self._unsettled[:SETTLE_BATCH]
        while unsettled:
            marks = ",".join("?" * len(unsettled))
            self._change(f"DELETE FROM gearman_ledger WHERE key IN ({marks})", unsettled)
            del self._unsettled[: len(unsettled)]
            unsettled = self._unsettled[:SETTLE_BATCH]

    def carry(self, key: bytes, deliveries: int) -> None:
        sql = (
            "INSERT INTO gearman_ledger (key, deliveries, settled, seen) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO "
            "UPDATE SET deliveries = deliveries + excluded.deliveries, settled = settled + excluded.settled"
        )
        self._change(sql, (key, deliveries, deliveries, time.time()))

    def undeliver(self, key: bytes) -> None:
        self._change("UPDATE gearman_ledger SET deliveries = deliveries - 1 WHERE key=? AND deliveries > 0", (key,))


# Redis: under the prefix P, per queue Q: P held:Q (hash id -> record), P order:Q (zset id by
# held_at), P claims:Q (hash id -> claimed_at); P delayed:Q\0ID (string, expires a day after
# due), P cancelled:Q (zset id by due); P ledger:KEY (counter, expires LEDGER_KEEP after its
# last delivery; a hash: d deliveries, s settled). A record is the token (32 hex), a JSON header line, then the body.
_PICK = """
local stale, limit, out, start = tonumber(ARGV[1]), tonumber(ARGV[2]), {}, 0
local function take(id)
  if tonumber(redis.call('HGET', KEYS[3], id) or '0') >= stale then return end
  local rec = redis.call('HGET', KEYS[2], id)
  if not rec then return end
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], id, ARGV[4]) end
  table.insert(out, id)
  table.insert(out, rec)
end
if ARGV[3] ~= '' then
  take(ARGV[3])
  return out
end
while #out < 2 * limit do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + 99)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if #out < 2 * limit then take(id) end
  end
  start = start + 100
end
return out
"""
_COUNT = """
local n = redis.call('ZCARD', KEYS[1])
local claims = redis.call('HGETALL', KEYS[3])
for i = 2, #claims, 2 do
  if tonumber(claims[i]) >= tonumber(ARGV[1]) then n = n - 1 end
end
return n
"""
_DROP = """
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if not rec then return 0 end
if ARGV[2] ~= '' and string.sub(rec, 1, 32) ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' and tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') >= tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""
_DELIVER_LUA = """
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
local function count(field)
  local v = redis.call('HGET', KEYS[1], field)
  if not v then return 0 end
  if v ~= '0' and not (string.match(v, '^[1-9]%d*$') and #v <= 9) then return nil end
  return tonumber(v)
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local settled = count('s')
if count('d') == nil or settled == nil then
  redis.call('DEL', KEYS[1])
  settled = 0
end
local deliveries = redis.call('HINCRBY', KEYS[1], 'd', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {deliveries, settled}
"""
_CANCEL = """
local v = redis.call('GET', KEYS[1])
if not v or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return false end
redis.call('ZADD', KEYS[2], string.match(v, '^([^\\n]*)'), ARGV[1])
return v
"""


class RedisHeldStore(HeldStore):
    """The held store in a Redis database (redis-py), shared by every machine of a deployment.

    Each change is one transaction or Lua script. Connecting waits ``connect_timeout``
    and a reply ``io_timeout`` seconds at most.
    """

    prefix = "lilqueue:gearman:"

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT, io_timeout: float = IO_TIMEOUT) -> None:
        self.url = url
        try:
            import redis
        except ImportError:
            raise ConfigError(
                "queue.gearman.held_store: a Redis held store needs redis-py: pip install 'lilqueue[redis]'"
            ) from None
        try:
            self.redis = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=io_timeout)
        except ValueError as exc:
            raise ConfigError(f"queue.gearman.held_store: {exc} in {url!r}") from None
        self._unsettled = []
        self._scripts = {name: self.redis.register_script(text) for name, text in self._SCRIPTS.items()}

    _SCRIPTS: ClassVar[dict[str, str]] = {
        "pick": _PICK,
        "count": _COUNT,
        "drop": _DROP,
        "cancel": _CANCEL,
        "deliver": _DELIVER_LUA,
    }

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        import redis.exceptions as rex

        try:
            yield
        except rex.TimeoutError as exc:
            raise BackendTimeoutError(f"Gearman held store {self.url}: {what}: {exc}") from exc
        except rex.ConnectionError as exc:
            raise BackendConnectionError(f"Gearman held store {self.url}: {what}: {exc}") from exc
        except (rex.RedisError, UnicodeError) as exc:
            raise BackendError(f"Gearman held store {self.url}: {what}: {exc}") from exc

    def _keys(self, queue: str) -> list[str]:
        return [f"{self.prefix}order:{queue}", f"{self.prefix}held:{queue}", f"{self.prefix}claims:{queue}"]

    def _run(self, script: str, keys: Sequence[str | bytes], *args: str | bytes | float) -> Any:
        with self._translated(script):
            return self._scripts[script](keys=keys, args=args)

    def close(self) -> None:
        with contextlib.suppress(LilqueueError):
            self.flush()
        self.redis.close()

    def hold(self, queue: str, id: str, body: bytes, priority: int, ttr: int, reason: str) -> None:
        now = time.time()
        header = json.dumps({"priority": priority, "ttr": ttr, "reason": _text(reason), "held_at": now})
        record = os.urandom(16).hex().encode() + header.encode() + b"\n" + body
        order, records, claims = self._keys(queue)
        with self._translated("hold"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(records, _text(id), record)
            pipe.zadd(order, {_text(id): now})
            pipe.hdel(claims, _text(id))
            pipe.execute()

    def _picked(self, queue: str, limit: int, id: str = "", claim: bool = False) -> list[tuple[str, bytes]]:
        now = time.time()
        flat = self._run("pick", self._keys(queue), now - KICK_CLAIM_TIMEOUT, limit, id, repr(now) if claim else "")
        return [(flat[i].decode("utf-8", "replace"), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    def held(self, queue: str, limit: int) -> list[HeldJob]:
        """A record that does not read (anyone may write the database) is listed as it is,
        with a reason saying so: ``delete --id`` removes it."""
        result = []
        for id, record in self._picked(queue, limit):
            try:
                _, header, body = _record(record)
            except ValueError as exc:
                result.append(HeldJob(id, queue, record, f"unreadable held record ({exc}): delete it by id", None))
                continue
            result.append(HeldJob(id, queue, body, _reason(header.get("reason")), _when(header.get("held_at"))))
        return result

    def count(self, queue: str) -> int:
        return int(self._run("count", self._keys(queue), time.time() - KICK_CLAIM_TIMEOUT))

    def claim(self, queue: str, limit: int, id: str | None = None) -> list[_HeldRow]:
        """Records that do not read are given back at once and skipped (logged): they stay
        listed by :meth:`held`."""
        rows, unreadable = [], []
        for held_id, record in self._picked(queue, limit, id or "", claim=True):
            try:
                token, header, body = _record(record)
            except ValueError as exc:
                log.warning("held task %r in %r not kicked: unreadable held record (%s)", held_id, queue, exc)
                unreadable.append(_HeldRow(queue, held_id, b"", DEFAULT_PRIORITY, DEFAULT_TTR, ""))
                continue
            rows.append(_HeldRow(queue, held_id, body, *_order(header.get("priority"), header.get("ttr")), token))
        self.unclaim(unreadable)
        return rows

    def unclaim(self, rows: Sequence[_HeldRow]) -> None:
        for row in rows:
            with self._translated("unclaim"):
                self.redis.hdel(self._keys(row.queue)[2], row.id)

    def forget(self, row: _HeldRow) -> None:
        self._run("drop", self._keys(row.queue), row.id, row.token, "")

    def delete(self, queue: str, id: str) -> bool:
        return int(self._run("drop", self._keys(queue), _text(id), "", time.time() - KICK_CLAIM_TIMEOUT)) == 1

    def _delayed_keys(self, queue: str, id: str) -> list[str]:
        return [f"{self.prefix}delayed:{queue}\0{_text(id)}", f"{self.prefix}cancelled:{queue}"]

    def note_delayed(self, queue: str, id: str, server: str, handle: bytes, due: float) -> None:
        value = f"{due!r}\n{server}\n".encode() + handle
        with self._translated("note a delayed job"):
            self.redis.set(self._delayed_keys(queue, id)[0], value, exat=int(due + DELAYED_KEEP))

    def cancel_delayed(self, queue: str, id: str) -> tuple[str, bytes] | None:
        value = self._run("cancel", self._delayed_keys(queue, id), _text(id))
        if value is None:
            return None
        _, server, handle = bytes(value).split(b"\n", 2)
        return server.decode(), handle

    def uncancel_delayed(self, queue: str, id: str) -> None:
        with self._translated("uncancel a delayed job"):
            self.redis.zrem(self._delayed_keys(queue, id)[1], _text(id))

    def cancelled_waiting(self, queue: str, grace: float) -> int:
        now = time.time()
        cancelled = self._delayed_keys(queue, "")[1]
        with self._translated("count cancelled delayed jobs"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zremrangebyscore(cancelled, "-inf", now - DELAYED_KEEP)
            pipe.zcount(cancelled, f"({now - grace!r}", "+inf")
            return int(pipe.execute()[1])

    def _ledger(self, key: bytes) -> bytes:
        return self.prefix.encode() + b"ledger:" + key

    def deliver(self, key: bytes) -> tuple[int, int]:
        """One script: the settlings held back go first; an entry that is not two counts
        (anyone may write the database) is taken as no entry."""
        unsettled = list(self._unsettled)
        keys = [self._ledger(key), *map(self._ledger, unsettled)]
        deliveries, settled = self._run("deliver", keys, LEDGER_KEEP)
        del self._unsettled[: len(unsettled)]
        return _counts(int(deliveries), int(settled))

    def flush(self) -> None:
        unsettled = list(self._unsettled)
        if unsettled:
            with self._translated("settle"):
                self.redis.delete(*map(self._ledger, unsettled))
            del self._unsettled[: len(unsettled)]

    def carry(self, key: bytes, deliveries: int) -> None:
        with self._translated("carry deliveries on"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrby(self._ledger(key), "d", deliveries)
            pipe.hincrby(self._ledger(key), "s", deliveries)
            pipe.expire(self._ledger(key), LEDGER_KEEP)
            pipe.execute()

    def undeliver(self, key: bytes) -> None:
        with self._translated("take back a delivery"):
            self.redis.hincrby(self._ledger(key), "d", -1)


def _counts(deliveries: int, settled: int) -> tuple[int, int]:
    """(deliveries, unfinished) from the ledger's counts; never below (1, 0)."""
    deliveries = max(deliveries, 1)
    return deliveries, max(deliveries - 1 - max(settled, 0), 0)


def _record(record: bytes) -> tuple[str, dict[str, Any], bytes]:
    """(token, header, body) of a held record in Redis; ValueError if it does not read."""
    token, (header, newline, body) = record[:32], record[32:].partition(b"\n")
    if not re.fullmatch(rb"[0-9a-f]{32}", token) or not newline:
        raise ValueError("no token and header")
    try:
        fields = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"header: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("the header is not an object")
    return token.decode("ascii"), fields, body


def _str(value: Any) -> str:
    """A held row's text column, whatever was written there."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else str(value)


def _bytes(value: Any) -> bytes:
    """A held row's body column, whatever was written there."""
    if isinstance(value, bytes):
        return value
    return _str(value).encode("utf-8", "backslashreplace")


def _reason(value: Any) -> str | None:
    return None if value is None else _str(value)


def _when(value: Any) -> float | None:
    """A held time, if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _order(priority: Any, ttr: Any) -> tuple[int, int]:
    """(priority, ttr) of a held record; the defaults for a part that is not a whole number in range."""
    ok_priority = isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority <= MAX_PRIORITY
    ok_ttr = isinstance(ttr, int) and not isinstance(ttr, bool) and 1 <= ttr <= MAX_TTR
    return (priority if ok_priority else DEFAULT_PRIORITY), (ttr if ok_ttr else DEFAULT_TTR)


def open_store(url: str, *, connect_timeout: float = CONNECT_TIMEOUT, io_timeout: float = IO_TIMEOUT) -> HeldStore:
    """The held store at ``url``: a path, ``sqlite:///PATH``, or ``redis://H:P/DB`` (``rediss://``).

    Raises ConfigError naming ``queue.gearman.held_store``; connects on first use only.
    """
    where = "queue.gearman.held_store"
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{where}: must be a path, sqlite:///PATH or redis://HOST:PORT/DB, not {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return SqliteHeldStore(url, busy_timeout=io_timeout)
    if scheme.lower() in ("redis", "rediss"):
        return RedisHeldStore(url, connect_timeout=connect_timeout, io_timeout=io_timeout)
    path = unquote(rest.partition("?")[0])
    if scheme.lower() != "sqlite" or not path.startswith("/") or path == "/":
        raise ConfigError(
            f"{where}: must be a path, sqlite:///relative.db, sqlite:////abs/path.db or redis://HOST:PORT/DB, "
            f"not {url!r}"
        )
    return SqliteHeldStore(path[1:], busy_timeout=io_timeout)


# -- the adapter ------------------------------------------------------------------------


class GearmanAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=emulated("three bands: 0-341 high, 342-682 normal, 683+ low (the seed's); FIFO within a band"),
        delay=native("SUBMIT_JOB_EPOCH to '<queue>@delayed', whole seconds rounded up; due ones run first"),
        ttr=missing("Gearman has no lease: a job comes back only when its worker's connection drops"),
        touch=emulated("a no-op: there is no lease to extend while the worker stays connected"),
        retry=emulated("re-submitted with attempts + 1 and the retry delay"),
        hold=emulated("kept with reason and time in the held store (an SQLite file or Redis)"),
        kick=emulated("re-submitted from the held store"),
        stats=emulated("admin 'prioritystatus' and 'status'; held from the held store"),
        blocking_reserve=native("PRE_SLEEP / NOOP; looks again every poll_interval for epochs falling due"),
        fifo=native("first in, first out within a band"),
        durable=False,
        notes="jobs survive a gearmand restart only with a persistent queue (gearmand -q ...); "
        "deliveries are counted in the held store's ledger",
    )
    #: a function name (MAX_FUNCTION bytes) must hold '<queue>@delayed'
    max_queue_name: ClassVar[int | None] = MAX_FUNCTION - len(DELAYED_SUFFIX)

    def __init__(
        self,
        servers: Sequence[Address],
        *,
        held_store: str = DEFAULT_HELD_STORE,
        connect_timeout: float = CONNECT_TIMEOUT,
        io_timeout: float = IO_TIMEOUT,
        poll_interval: float = 0.5,
    ) -> None:
        if not servers:
            raise ConfigError("queue.gearman.servers: at least one server is needed")
        self.servers = [_Server(a, connect_timeout, io_timeout) for a in servers]
        self.poll_interval = poll_interval
        self.store = open_store(held_store, connect_timeout=connect_timeout, io_timeout=io_timeout)
        start = random.randrange(len(self.servers))  # short-lived producers do not all pick the first
        self._next_server = itertools.cycle([*range(start, len(self.servers)), *range(start)])
        self._wasted_wakes = 0
        self._grab_start = 0

    def __repr__(self) -> str:
        return f"<GearmanAdapter {','.join(str(s.address) for s in self.servers)} held_store={self.store.url!r}>"

    @classmethod
    def queue_name_problem(cls, name: str) -> str | None:
        """The base rules (no control characters, at most 247 bytes so that
        ``<name>@delayed`` fits a function name), and no name ending in ``@delayed``:
        that is the function of another queue's delayed tasks."""
        problem = super().queue_name_problem(name)
        if problem is None and name.endswith(DELAYED_SUFFIX):
            return f"a Gearman queue name must not end in {DELAYED_SUFFIX!r} (the function of delayed tasks)"
        return problem

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> GearmanAdapter:
        opts = dict(options)
        servers: list[Address] = []
        if url is not None:
            servers, query = _parse_url(url)
            opts.update(query)
        if "servers" in opts:
            listed = _servers_option(opts.pop("servers"))
            servers = servers or listed
        if not servers:
            servers = [Address("127.0.0.1")]
        kwargs = {key: _option(key, value) for key, value in opts.items()}
        return cls(servers, **kwargs)

    # -- producing ----------------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        unique = new_unique(priority, ttr)
        self._put(queue, unique, body, priority, delay)
        return unique

    def _put(self, queue: str, unique: str, body: bytes, priority: int, delay: float) -> tuple[_Server, bytes]:
        """Submit; the server that took the job and its handle."""
        when = math.ceil(time.time() + delay) if delay > 0 else None
        function = queue if when is None else queue + DELAYED_SUFFIX
        server, handle = self._submit(function, unique, body, band(priority), when)
        if when is not None:
            self._note_delayed(queue, unique, server, handle, when)
        return server, handle

    def _note_delayed(self, queue: str, unique: str, server: _Server, handle: bytes, when: int) -> None:
        """The job is in gearmand already: a store that fails only costs ``delete --id`` this job."""
        try:
            self.store.note_delayed(queue, unique, str(server.address), handle, when)
        except LilqueueError as exc:
            log.warning("delayed task %s submitted, but the held store did not note it: %s", unique, exc)

    def _submit(self, queue: str, unique: str, body: bytes, band: Band, when: int | None) -> tuple[_Server, bytes]:
        """Submit to the next server in turn, trying the others if it is down.

        BackendTimeoutError when every server timed out, else BackendConnectionError.
        """
        failures: list[BackendConnectionError] = []
        for _ in range(len(self.servers)):
            server = self.servers[next(self._next_server)]
            try:
                return server, self._submit_to(server, queue, unique, body, band, when)
            except BackendConnectionError as exc:
                failures.append(exc)
        timeouts = all(isinstance(exc, BackendTimeoutError) for exc in failures)
        kind = BackendTimeoutError if timeouts else BackendConnectionError
        raise kind("no Gearman server took the job: " + "; ".join(map(str, failures))) from failures[-1]

    @staticmethod
    def _submit_to(server: _Server, queue: str, unique: str, body: bytes, band: Band, when: int | None) -> bytes:
        """Submit on the server's client connection; once more on a new one if the old one had gone
        stale (gearmand restarted; not after a timeout). The same unique key makes gearmand merge
        a job that did land."""
        stale = server.client.connected
        try:
            return server.client.submit(queue, unique, body, band=band, when=when)
        except BackendTimeoutError:
            raise
        except BackendConnectionError:
            if not stale:
                raise
        return server.client.submit(queue, unique, body, band=band, when=when)

    # -- consuming ----------------------------------------------------------------------

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        """Grab from every server in turn; when none has a job, sleep (PRE_SLEEP) until NOOP.

        Also wakes every ``poll_interval`` (an epoch job falling due sends no NOOP). When
        NOOPs keep coming with nothing to grab (gearmand wakes a sleeper at once while
        low-band jobs are held back behind a waiting epoch job), it backs off, doubling
        from 10 ms up to ``poll_interval``, instead of spinning.
        """
        deadline = time.monotonic() + timeout
        names = {q + DELAYED_SUFFIX: q for q in queues} | {q: q for q in queues}
        # gearmand consults a worker's functions in the reverse order of its CAN_DOs: so the
        # first queue first, and in each queue '<queue>@delayed' first (a task fallen due
        # is not starved by a busy queue)
        functions = tuple(f for q in reversed(dict.fromkeys(queues)) for f in (q, q + DELAYED_SUFFIX))
        woken = False
        while True:
            job = self._grab_any(functions, names)
            if job is not None:
                self._wasted_wakes = 0
                return job
            self.flush()  # idle: the settlings held back for the next grab go now
            self._wasted_wakes = min(self._wasted_wakes + 1, 12) if woken else 0
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._wasted_wakes >= 2:
                time.sleep(min(left, self.poll_interval, 0.01 * 2 ** (self._wasted_wakes - 2)))
                left = deadline - time.monotonic()
            woken = self._sleep(max(min(left, self.poll_interval), 0.0))

    def _live(self, start: int = 0) -> Iterator[_Server]:
        """The servers not recently failed, beginning with the ``start``-th."""
        now = time.monotonic()
        n = len(self.servers)
        return (s for i in range(n) if (s := self.servers[(start + i) % n]).down_until <= now)

    def _grab_any(self, functions: tuple[str, ...], names: Mapping[str, str]) -> Job | None:
        tried = failed = 0
        errors: list[str] = []
        self._grab_start = (self._grab_start + 1) % len(self.servers)  # no server starves the others
        for server in self._live(self._grab_start):
            tried += 1
            try:
                assignment = self._grab_from(server, functions)
            except BackendError as exc:  # unreachable, or a garbled stream: reconnect later
                failed += 1
                errors.append(str(exc))
                self._mark_down(server, exc)
                continue
            if assignment is not None:
                return self._job(server, assignment, names)
        if tried == failed:
            why = "; ".join(errors) or "every server failed recently"
            raise BackendConnectionError(f"no Gearman server reachable: {why}")
        return None

    def _job(self, server: _Server, assignment: Assignment, names: Mapping[str, str]) -> Job:
        """The Job for an assignment, its delivery counted in the ledger first.

        If the store cannot be reached, the job goes back to gearmand (the worker
        connection is closed) and the error is raised: it never runs uncounted while the
        store is out. A store that answers but refuses to count runs the job as a first
        delivery (logged): handing it back would loop it through backoffs for ever.
        """
        unique = assignment.unique
        id = unique.decode("utf-8", "backslashreplace") if unique else assignment.handle.decode("ascii", "replace")
        queue = names.get(assignment.function, assignment.function)
        key = ledger_key(queue, unique, server.address, assignment.handle)
        try:
            deliveries, unfinished = self.store.deliver(key)
        except BackendConnectionError as exc:
            server.worker.close()
            raise BackendConnectionError(f"job {id} handed back: the held store cannot count it: {exc}") from exc
        except LilqueueError as exc:
            log.warning("job %s runs uncounted: the held store refused to count its delivery: %s", id, exc)
            deliveries, unfinished = 1, 0
        priority, ttr = parse_unique(id)
        receipt = _Receipt(server.worker, server.generation, assignment.handle, key)
        return Job(id, queue, assignment.data, priority, ttr, deliveries, receipt, unfinished)

    def _grab_from(self, server: _Server, functions: tuple[str, ...]) -> Assignment | None:
        """GRAB_JOB_UNIQ; once more on a new connection if the old one had gone stale (not after a timeout)."""
        stale = server.worker.connected
        try:
            return self._worker(server, functions).grab()
        except BackendTimeoutError:
            raise
        except BackendConnectionError:
            if not stale:
                raise
        return self._worker(server, functions).grab()

    def _worker(self, server: _Server, functions: tuple[str, ...]) -> Connection:
        conn = server.worker
        if not conn.connected:
            conn.connect()
            server.generation += 1
            server.functions = ()
        if server.functions != functions:
            conn.can_do(functions, reset=bool(server.functions))
            server.functions = functions
        return conn

    def _mark_down(self, server: _Server, exc: BaseException) -> None:
        server.worker.close()
        server.functions = ()
        server.down_until = time.monotonic() + SERVER_RETRY
        if len(self.servers) > 1:
            log.warning("gearmand %s unreachable, trying the others: %s", server.address, exc)

    def _sleep(self, timeout: float) -> bool:
        """PRE_SLEEP on every live worker connection; wait for a NOOP. True if woken by one."""
        conns = []
        for server in self._live():
            if server.worker.connected:
                try:
                    server.worker.pre_sleep()
                    conns.append(server.worker)
                except BackendConnectionError as exc:
                    self._mark_down(server, exc)
        woken = False
        for conn in wait_readable(conns, timeout):
            with contextlib.suppress(BackendConnectionError):  # the next grab reports a dead server
                while (packet := conn.receive(0)) is not None:
                    woken = woken or packet.command == Command.NOOP
        return woken

    # -- outcomes --------------------------------------------------------------------

    def _receipt(self, job: Job) -> _Receipt:
        receipt = job.receipt
        if not isinstance(receipt, _Receipt):
            raise BackendError(f"job {job.id} was not reserved by this Gearman adapter")
        server = next((s for s in self.servers if s.worker is receipt.conn), None)
        if not receipt.conn.connected or server is None or server.generation != receipt.generation:
            raise BackendConnectionError(
                f"the connection that took job {job.id} is gone; gearmand hands the job to another worker"
            )
        return receipt

    def _settle(self, job: Job, receipt: _Receipt) -> None:
        """Forget the job's deliveries once it is completed (written with the next grab)."""
        self.store.settle(receipt.key)

    def flush(self) -> None:
        """Write the ledger's held-back settlings now. If the store fails they stay until
        swept (``LEDGER_KEEP``): nobody asks for a completed job's key again."""
        try:
            self.store.flush()
        except LilqueueError as exc:
            log.warning("the held store did not take the ledger's settlings (swept later): %s", exc)

    def delete(self, job: Job) -> None:
        """WORK_COMPLETE: gearmand forgets the job; then so does the ledger."""
        receipt = self._receipt(job)
        receipt.conn.work_complete(receipt.handle)
        self._settle(job, receipt)

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        """Re-submit the same body (after ``delay``), then complete the old job.

        The new job's ledger entry then goes on from this job's deliveries, all of them
        settled (this one has its outcome: a retry). The carry adds to the entry, so a
        worker that grabbed the new job first still counts right; a carry the store
        refuses only restarts the new job's count (logged).
        """
        receipt = self._receipt(job)
        unique = new_unique(priority, job.ttr)
        server, handle = self._put(job.queue, unique, job.body, priority, delay)
        try:
            self.store.carry(ledger_key(job.queue, unique.encode(), server.address, handle), job.deliveries)
        except LilqueueError as exc:
            log.warning("job %s retried as %s, but its deliveries were not carried on: %s", job.id, unique, exc)
        receipt.conn.work_complete(receipt.handle)
        self._settle(job, receipt)

    def unreserve(self, job: Job) -> None:
        """Hand a job back unstarted and uncounted: the ledger takes back its delivery, then
        the connection that took it is closed (gearmand's only way to take a job back).

        The job keeps its place, id, priority and deliveries (a re-submit would lose them).
        """
        receipt = self._receipt(job)
        try:
            self.store.undeliver(receipt.key)
        finally:
            receipt.conn.close()

    def bury(self, job: Job, *, reason: str) -> None:
        """Write the task to the held store, then complete its job (never the other way round).

        If the held store fails, the worker connection is dropped so that gearmand hands
        the job out again (Gearman has no other way to give a job back).
        """
        receipt = self._receipt(job)
        try:
            self.store.hold(job.queue, job.id, job.body, job.priority, job.ttr, reason)
        except LilqueueError as exc:
            receipt.conn.close()
            raise BackendConnectionError(f"could not hold job {job.id}, so gearmand gets it back: {exc}") from exc
        receipt.conn.work_complete(receipt.handle)
        self._settle(job, receipt)

    def touch(self, job: Job) -> None:
        """Nothing to extend: the job is ours while the connection that took it is open."""
        self._receipt(job)

    # -- operating ---------------------------------------------------------------------

    def kick(self, queue: str, count: int) -> int:
        return self._kick(self.store.claim(queue, count))

    def kick_id(self, queue: str, id: str) -> bool:
        return self._kick(self.store.claim(queue, 1, id)) == 1

    def _kick(self, rows: list[_HeldRow]) -> int:
        for done, row in enumerate(rows):
            try:
                self.put(row.queue, row.body, priority=row.priority, delay=0, ttr=row.ttr)
            except BaseException:
                self.store.unclaim(rows[done:])
                raise
            self.store.forget(row)
        return len(rows)

    def delete_id(self, queue: str, id: str) -> bool:
        """Remove a held task, or cancel a delayed one this adapter submitted.

        A ready task cannot be found in gearmand by id: False.
        """
        if self.store.delete(queue, id):
            return True
        entry = self.store.cancel_delayed(queue, id)
        server = None if entry is None else next((s for s in self.servers if str(s.address) == entry[0]), None)
        if entry is None or server is None:
            return False
        try:
            return server.admin.cancel(entry[1])
        except BaseException:
            self.store.uncancel_delayed(queue, id)
            raise

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        return self.store.held(queue, limit)

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        """Only held tasks can be looked at: gearmand does not show a waiting job's data."""
        if state != "held":
            raise UnsupportedError(f"Gearman cannot peek at {state} tasks")
        held = self.store.held(queue, 1)
        return Peeked(held[0].id, queue, held[0].body) if held else None

    def band_stats(self, queue: str) -> BandStats:
        """Per band waiting, running and workers from every reachable server, plus delayed and held.

        ``delayed`` counts only the delayed jobs this adapter's held store knows of. A
        server whose listings look forged for this queue (see :meth:`_figures`) adds
        nothing, and counts in ``forged``.
        """
        totals = [0] * 6  # high, normal, low, workers, delayed, running
        down = forged = 0
        for server in self.servers:
            figures = self._figures(server, queue)
            if figures is None:
                down += 1
            elif figures == _FORGED:
                forged += 1
            else:
                totals = [a + b for a, b in zip(totals, figures, strict=True)]
        if down == len(self.servers):
            raise BackendConnectionError(f"no Gearman server reachable for the stats of {queue!r}")
        high, normal, low, workers, delayed, running = totals
        delayed = max(delayed - self.store.cancelled_waiting(queue, grace=self.poll_interval + 5), 0)
        return BandStats(high, normal, low, running, workers, delayed, self.store.count(queue), down, forged)

    @staticmethod
    def _figures(server: _Server, queue: str) -> tuple[int, int, int, int, int, int] | None:
        """(high, normal, low, workers, delayed, running) of one server; None if it is down, or
        if a function name forged a line for the queue: gearmand prints names raw, so a name
        holding newlines and tabs can print a whole status line. Such a line is left out of
        one of the two listings at least (see ``gearman_protocol._table``), so a function
        suspect in either, or listed in one only, is not believed: :data:`_FORGED`."""
        later = queue + DELAYED_SUFFIX
        try:
            prio = server.admin.priority_status()
            suspect = server.admin.suspect
            status = server.admin.status()
        except BackendConnectionError as exc:
            log.warning("gearmand %s: no stats: %s", server.address, exc)
            return None
        if any(n in suspect or n in server.admin.suspect or (n in prio) != (n in status) for n in (queue, later)):
            log.warning("gearmand %s: stats of %r look forged by a function's name: left out", server.address, queue)
            return _FORGED
        p = prio.get(queue)
        d = prio.get(later)
        high, normal, low, workers = (p.high, p.normal, p.low, p.workers) if p else (0, 0, 0, 0)
        delayed = d.high + d.normal + d.low if d else 0
        running = sum(s.running for name, s in status.items() if name in (queue, later))
        return high, normal, low, workers, delayed, running

    def stats(self, queue: str) -> QueueStats:
        """Ready (waiting in the three bands), delayed (waiting in ``<queue>@delayed``, which
        includes any fallen due but not yet taken), reserved (running) and held."""
        s = self.band_stats(queue)
        return QueueStats(s.ready, s.delayed, s.running, s.held, approximate=s.servers_down + s.forged > 0)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.store.close()


# -- configuration ------------------------------------------------------------------------


def _parse_url(url: str) -> tuple[list[Address], dict[str, Any]]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "gearman":
        raise ConfigError(f"queue.backend: Gearman URLs look like gearman://host:port[,host:port], not {url!r}")
    netloc, _, query = rest.partition("?")
    netloc = netloc.rstrip("/")
    servers = []
    for part in filter(None, netloc.split(",")):
        try:
            servers.append(parse_address(unquote(part)))
        except ValueError as exc:
            raise ConfigError(f"queue.backend: {exc} in {url!r}") from None
    return servers, {key: _query_value(key, text) for key, text in parse_qsl(query, keep_blank_values=True)}


def _servers_option(value: Any) -> list[Address]:
    where = "queue.gearman.servers"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of {{host = ..., port = ...}} tables")
    servers = []
    for i, spec in enumerate(value):
        if isinstance(spec, str):
            try:
                servers.append(parse_address(spec))
            except ValueError as exc:
                raise ConfigError(f"{where}[{i}]: {exc}") from None
            continue
        if not isinstance(spec, dict) or set(spec) - {"host", "port"} or not isinstance(spec.get("host", ""), str):
            raise ConfigError(f'{where}[{i}]: expected {{host = "...", port = N}}, not {spec!r}')
        port = spec.get("port", 4730)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}[{i}].port: must be 1-65535, not {port!r}")
        servers.append(Address(spec.get("host") or "127.0.0.1", port))
    return servers


def _option(key: str, value: Any) -> Any:
    """One ``[queue.gearman]`` option (or URL query value, already a number where it should be)."""
    where = f"queue.gearman.{key}"
    if key == "held_store":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a path, sqlite:///PATH or redis://HOST:PORT/DB, not {value!r}")
        return value
    if key in _SECONDS:
        return _seconds(where, value)
    raise ConfigError(f"{where}: unknown option (expected {', '.join(OPTIONS)})")


def _seconds(where: str, value: Any) -> float:
    """A finite number of seconds, > 0 and at most a day (NaN, infinities, 0, text refused)."""
    return options.seconds(where, value, most=MAX_TIMEOUT)


def _query_value(key: str, text: str) -> Any:
    """A URL query value: the seconds options as numbers (``nan``, ``inf`` are then refused)."""
    if key not in _SECONDS:
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"queue.gearman.{key}: must be a number of seconds, not {text!r}") from None
