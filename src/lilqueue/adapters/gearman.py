"""``gearman://H:P[,H:P]``: Gearman (gearmand 1.1) as a job queue, on our own protocol client.

- A queue is a Gearman function of the same name. Tasks are background jobs.
- Priority: 0-340 go to the high band (``SUBMIT_JOB_HIGH_BG``), 341-682 to normal
  (``SUBMIT_JOB_BG``), 683 and above to low (``SUBMIT_JOB_LOW_BG``); first in, first
  out within a band. Every value is accepted; the exact value travels in the job's
  unique key (``<32 hex>.<priority>.<ttr>``, fresh per submit since gearmand merges
  jobs with equal keys), which is also the task id.
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
- Hold: gearmand cannot keep a job aside, so a held task is written, with its reason
  and time, to the *held store* -- an SQLite file (option ``held_store``, default
  ``sqlite:///lilqueue-gearman-held.db``) -- before its job is completed. ``held``,
  ``kick`` (re-submit) and ``delete`` work on that file. The same file keeps a ledger
  of the delayed jobs this adapter submitted (server, handle, due time), so that
  ``delete --id`` can cancel one (gearmand drops a cancelled job when it reaches the
  head of its queue) and ``stats`` stops counting it.
- Several servers: a task goes to one server (round robin, the next one if a server is
  down); a worker takes from all of them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
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
    Address,
    Admin,
    Assignment,
    Band,
    Command,
    Connection,
    parse_address,
    wait_readable,
)
from lilqueue.config import DEFAULT_PRIORITY, DEFAULT_TTR
from lilqueue.errors import BackendConnectionError, BackendError, ConfigError, UnsupportedError

log = logging.getLogger(__name__)

HIGH_MAX = 340
NORMAL_MAX = 682
DEFAULT_HELD_STORE = "sqlite:///lilqueue-gearman-held.db"
#: a kick that claimed a held task but did not finish re-submitting it gives it back after this
KICK_CLAIM_TIMEOUT = 60.0
#: how long a server that failed is left alone before the worker tries it again
SERVER_RETRY = 2.0
_UNIQUE = re.compile(r"^[0-9a-f]{32}\.(\d{1,10})\.(\d{1,10})$")
DELAYED_SUFFIX = "@delayed"
OPTIONS = ("servers", "held_store", "connect_timeout", "io_timeout", "poll_interval")


def band(priority: int) -> Band:
    """The Gearman band of a lilqueue priority: 0-340 high, 341-682 normal, 683+ low."""
    if priority <= HIGH_MAX:
        return "high"
    return "normal" if priority <= NORMAL_MAX else "low"


def new_unique(priority: int, ttr: int) -> str:
    """A fresh unique key carrying the exact priority and ttr (at most 54 bytes)."""
    return f"{uuid.uuid4().hex}.{priority}.{ttr}"


def parse_unique(unique: str) -> tuple[int, int]:
    """(priority, ttr) from a unique key this adapter made; the defaults for anyone else's."""
    match = _UNIQUE.match(unique)
    if match is None:
        return DEFAULT_PRIORITY, DEFAULT_TTR
    return int(match[1]), int(match[2])


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

    @property
    def ready(self) -> int:
        return self.high + self.normal + self.low


@dataclass(slots=True)
class _Receipt:
    conn: Connection
    generation: int
    handle: bytes


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


# -- the held store ----------------------------------------------------------------------

_STORE_SCHEMA = """
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
"""


@dataclass(frozen=True, slots=True)
class _HeldRow:
    seq: int
    queue: str
    id: str
    body: bytes
    priority: int
    ttr: int


class HeldStore:
    """Held tasks (with reason and time) and the delayed-job ledger, in one SQLite file.

    A held row being kicked is *claimed* first (one kicker wins), re-submitted, then
    removed; a claim older than :data:`KICK_CLAIM_TIMEOUT` (a kicker that died) is void,
    so the task shows as held again rather than being lost.
    """

    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        """The file is opened (and created) on first use: a producer that never delays never touches it."""
        if self._db is None:
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_STORE_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise BackendConnectionError(f"cannot open the Gearman held store {self.path!r}: {exc}") from exc
            self._db = db
        return self._db

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        db = self._open()
        try:
            return db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise BackendConnectionError(f"Gearman held store {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BackendError(f"Gearman held store {self.path!r}: {exc}") from exc

    _VISIBLE = "(claimed_at IS NULL OR claimed_at < ?)"

    def hold(self, queue: str, id: str, body: bytes, priority: int, ttr: int, reason: str) -> None:
        """Keep a task (the same queue and id replace an earlier copy: it is the same job)."""
        self._run(
            "INSERT OR REPLACE INTO gearman_held (queue, id, body, priority, ttr, reason, held_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (queue, id, body, priority, ttr, reason, time.time()),
        )

    def held(self, queue: str, limit: int) -> list[HeldJob]:
        sql = (
            f"SELECT id, body, reason, held_at FROM gearman_held WHERE queue=? AND {self._VISIBLE} "
            "ORDER BY held_at, seq LIMIT ?"
        )
        rows = self._run(sql, (queue, time.time() - KICK_CLAIM_TIMEOUT, limit))
        return [HeldJob(i, queue, bytes(b), r, h) for i, b, r, h in rows]

    def count(self, queue: str) -> int:
        sql = f"SELECT COUNT(*) FROM gearman_held WHERE queue=? AND {self._VISIBLE}"
        return int(self._run(sql, (queue, time.time() - KICK_CLAIM_TIMEOUT)).fetchone()[0])

    def claim(self, queue: str, limit: int, id: str | None = None) -> list[_HeldRow]:
        """Claim up to ``limit`` held tasks (or the one with ``id``) for a kick, oldest first."""
        now = time.time()
        which = "AND id=?" if id is not None else ""
        sql = (
            f"UPDATE gearman_held SET claimed_at=? WHERE seq IN (SELECT seq FROM gearman_held "
            f"WHERE queue=? {which} AND {self._VISIBLE} ORDER BY held_at, seq LIMIT ?) "
            "RETURNING seq, id, body, priority, ttr, held_at"
        )
        params = (now, queue, *((id,) if id is not None else ()), now - KICK_CLAIM_TIMEOUT, limit)
        rows = sorted(self._run(sql, params).fetchall(), key=lambda r: (r[5], r[0]))
        return [_HeldRow(seq, queue, i, bytes(body), p, ttr) for seq, i, body, p, ttr, _ in rows]

    def unclaim(self, rows: Sequence[_HeldRow]) -> None:
        for row in rows:
            self._run("UPDATE gearman_held SET claimed_at=NULL WHERE seq=?", (row.seq,))

    def forget(self, seq: int) -> None:
        self._run("DELETE FROM gearman_held WHERE seq=?", (seq,))

    def delete(self, queue: str, id: str) -> bool:
        sql = f"DELETE FROM gearman_held WHERE queue=? AND id=? AND {self._VISIBLE}"
        return self._run(sql, (queue, id, time.time() - KICK_CLAIM_TIMEOUT)).rowcount == 1

    # -- the delayed ledger -----------------------------------------------------------

    def note_delayed(self, queue: str, id: str, server: Address, handle: bytes, due: float) -> None:
        self._run(
            "INSERT OR REPLACE INTO gearman_delayed (queue, id, server, handle, due) VALUES (?, ?, ?, ?, ?)",
            (queue, id, str(server), handle, due),
        )

    def cancelled_waiting(self, queue: str, grace: float) -> int:
        """Cancelled delayed jobs that gearmand still counts (until ``grace`` s past their due time)."""
        now = time.time()
        self._run("DELETE FROM gearman_delayed WHERE due < ?", (now - 86400,))  # long gone: forget
        sql = "SELECT COUNT(*) FROM gearman_delayed WHERE queue=? AND cancelled=1 AND due > ?"
        return int(self._run(sql, (queue, now - grace)).fetchone()[0])

    def cancel_delayed(self, queue: str, id: str) -> tuple[str, bytes] | None:
        """Mark a delayed job cancelled, once; (server, handle) the first time."""
        sql = "UPDATE gearman_delayed SET cancelled=1 WHERE queue=? AND id=? AND cancelled=0 RETURNING server, handle"
        row = self._run(sql, (queue, id)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def uncancel_delayed(self, queue: str, id: str) -> None:
        self._run("UPDATE gearman_delayed SET cancelled=0 WHERE queue=? AND id=?", (queue, id))


# -- the adapter ------------------------------------------------------------------------


class GearmanAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=emulated("three bands: 0-340 high, 341-682 normal, 683+ low; FIFO within a band"),
        delay=native("SUBMIT_JOB_EPOCH to '<queue>@delayed', whole seconds rounded up; due ones run first"),
        ttr=missing("Gearman has no lease: a job comes back only when its worker's connection drops"),
        touch=emulated("a no-op: there is no lease to extend while the worker stays connected"),
        retry=emulated("re-submitted with attempts + 1 and the retry delay"),
        hold=emulated("kept with reason and time in the held store (an SQLite file)"),
        kick=emulated("re-submitted from the held store"),
        stats=emulated("admin 'prioritystatus' and 'status'; held from the held store"),
        blocking_reserve=native("PRE_SLEEP / NOOP; looks again every poll_interval for epochs falling due"),
        fifo=native("first in, first out within a band"),
        durable=False,
        notes="jobs survive a gearmand restart only with a persistent queue (gearmand -q ...)",
    )

    def __init__(
        self,
        servers: Sequence[Address],
        *,
        held_store: str = "lilqueue-gearman-held.db",
        connect_timeout: float = 5.0,
        io_timeout: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        if not servers:
            raise ConfigError("queue.gearman.servers: at least one server is needed")
        self.servers = [_Server(a, connect_timeout, io_timeout) for a in servers]
        self.poll_interval = poll_interval
        self.store = HeldStore(held_store)
        start = random.randrange(len(self.servers))  # short-lived producers do not all pick the first
        self._next_server = itertools.cycle([*range(start, len(self.servers)), *range(start)])
        self._wasted_wakes = 0
        self._grab_start = 0

    def __repr__(self) -> str:
        return f"<GearmanAdapter {','.join(str(s.address) for s in self.servers)} held_store={self.store.path!r}>"

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
        when = math.ceil(time.time() + delay) if delay > 0 else None
        function = queue if when is None else queue + DELAYED_SUFFIX
        server, handle = self._submit(function, unique, body, band(priority), when)
        if when is not None:
            self.store.note_delayed(queue, unique, server.address, handle, when)
        return unique

    def _submit(self, queue: str, unique: str, body: bytes, band: Band, when: int | None) -> tuple[_Server, bytes]:
        """Submit to the next server in turn, trying the others if it is down."""
        failures: list[str] = []
        for _ in range(len(self.servers)):
            server = self.servers[next(self._next_server)]
            try:
                return server, self._submit_to(server, queue, unique, body, band, when)
            except BackendConnectionError as exc:
                failures.append(str(exc))
        raise BackendConnectionError("no Gearman server took the job: " + "; ".join(failures))

    @staticmethod
    def _submit_to(server: _Server, queue: str, unique: str, body: bytes, band: Band, when: int | None) -> bytes:
        """Submit on the server's client connection; once more on a new one if the old one had gone
        stale (gearmand restarted). The same unique key makes gearmand merge a job that did land."""
        stale = server.client.connected
        try:
            return server.client.submit(queue, unique, body, band=band, when=when)
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
                unique = assignment.unique or assignment.handle.decode("utf-8", "replace")
                priority, ttr = parse_unique(assignment.unique)
                receipt = _Receipt(server.worker, server.generation, assignment.handle)
                queue = names.get(assignment.function, assignment.function)
                return Job(unique, queue, assignment.data, priority, ttr, 1, receipt)
        if tried == failed:
            why = "; ".join(errors) or "every server failed recently"
            raise BackendConnectionError(f"no Gearman server reachable: {why}")
        return None

    def _grab_from(self, server: _Server, functions: tuple[str, ...]) -> Assignment | None:
        """GRAB_JOB_UNIQ; once more on a new connection if the old one had gone stale."""
        stale = server.worker.connected
        try:
            return self._worker(server, functions).grab()
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

    def _conn(self, job: Job) -> tuple[Connection, bytes]:
        receipt = job.receipt
        if not isinstance(receipt, _Receipt):
            raise BackendError(f"job {job.id} was not reserved by this Gearman adapter")
        server = next((s for s in self.servers if s.worker is receipt.conn), None)
        if not receipt.conn.connected or server is None or server.generation != receipt.generation:
            raise BackendConnectionError(
                f"the connection that took job {job.id} is gone; gearmand hands the job to another worker"
            )
        return receipt.conn, receipt.handle

    def delete(self, job: Job) -> None:
        """WORK_COMPLETE: gearmand forgets the job."""
        conn, handle = self._conn(job)
        conn.work_complete(handle)

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        """Re-submit the same body (after ``delay``), then complete the old job."""
        conn, handle = self._conn(job)
        self.put(job.queue, job.body, priority=priority, delay=delay, ttr=job.ttr)
        conn.work_complete(handle)

    def bury(self, job: Job, *, reason: str) -> None:
        """Write the task to the held store, then complete its job (never the other way round).

        If the held store fails, the worker connection is dropped so that gearmand hands
        the job out again (Gearman has no other way to give a job back).
        """
        conn, handle = self._conn(job)
        try:
            self.store.hold(job.queue, job.id, job.body, job.priority, job.ttr, reason)
        except BackendError as exc:
            conn.close()
            raise BackendConnectionError(f"could not hold job {job.id}, so gearmand gets it back: {exc}") from exc
        conn.work_complete(handle)

    def touch(self, job: Job) -> None:
        """Nothing to extend: the job is ours while the connection that took it is open."""
        self._conn(job)

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
            self.store.forget(row.seq)
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

        ``delayed`` counts only the delayed jobs this adapter's held store knows of.
        """
        high = normal = low = running = workers = delayed = down = 0
        later = queue + DELAYED_SUFFIX
        for server in self.servers:
            try:
                prio = server.admin.priority_status()
                status = server.admin.status()
            except BackendConnectionError as exc:
                down += 1
                log.warning("gearmand %s: no stats: %s", server.address, exc)
                continue
            if (p := prio.get(queue)) is not None:
                high, normal, low, workers = high + p.high, normal + p.normal, low + p.low, workers + p.workers
            if (d := prio.get(later)) is not None:
                delayed += d.high + d.normal + d.low
            running += sum(s.running for name, s in status.items() if name in (queue, later))
        if down == len(self.servers):
            raise BackendConnectionError(f"no Gearman server reachable for the stats of {queue!r}")
        delayed = max(delayed - self.store.cancelled_waiting(queue, grace=self.poll_interval + 5), 0)
        return BandStats(high, normal, low, running, workers, delayed, self.store.count(queue), down)

    def stats(self, queue: str) -> QueueStats:
        """Ready (waiting in the three bands), delayed (waiting in ``<queue>@delayed``, which
        includes any fallen due but not yet taken), reserved (running) and held."""
        s = self.band_stats(queue)
        return QueueStats(s.ready, s.delayed, s.running, s.held, approximate=s.servers_down > 0)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.store.close()


# -- configuration ------------------------------------------------------------------------


def _parse_url(url: str) -> tuple[list[Address], dict[str, str]]:
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
    return servers, dict(parse_qsl(query, keep_blank_values=True))


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
    where = f"queue.gearman.{key}"
    if key == "held_store":
        return _held_store_path(where, value)
    if key in ("connect_timeout", "io_timeout", "poll_interval"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if isinstance(value, bool) or not 0 < number < 86400:
            raise ConfigError(f"{where}: must be a positive number of seconds, not {value!r}")
        return number
    raise ConfigError(f"{where}: unknown option (expected {', '.join(OPTIONS)})")


def _held_store_path(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("sqlite:///") or value == "sqlite:///":
        raise ConfigError(
            f"{where}: must be an SQLite URL like sqlite:///relative.db or sqlite:////abs/path.db, not {value!r}"
        )
    return unquote(value.removeprefix("sqlite:///").partition("?")[0])
