"""``beanstalkd://HOST:PORT[,HOST:PORT...]``: beanstalkd 1.12 through greenstalk, with server pools.

Everything is native: a queue is a tube (named exactly as the queue, after the
core's optional ``prefix``), priorities, delays (whole seconds, rounded up), TTR,
touch, release, bury, kick and per-tube stats are beanstalkd's own. What beanstalkd
lacks, and how this adapter supplies it:

Deliveries and the hot path
    A reserved job says neither its tube, priority, TTR nor how often it was handed
    out, so each reservation needs a ``stats-job``: ``Job.deliveries`` is the job's
    ``reserves`` count (it grows with every reservation, including those after a
    release for retry or a TTR lapse), less those handed back unstarted (below).
    beanstalkd 1.12 does not keep these counters across a restart: a job comes back
    from the binlog with the counts of its last binlog write, so a ready or delayed
    job's ``reserves`` (and every other ``stats-job`` count) starts again at 0, and
    attempt counts restart with the server. To keep
    that off the round-trip budget, the ``stats-job`` of the id the connection will
    probably get (the last reserved id + 1: one producer's jobs are numbered in the
    order they are taken) is sent in the same write as the ``reserve``; when the
    guess is wrong (several producers or tubes) the stats are asked for afterwards.
    A ``delete`` is written at once with MSG_MORE (Linux holds it in the kernel to
    leave in the same segment as the next command, within 200 ms at most, and at
    once before a reply is awaited or the connection closes), and its reply is read
    with the next command's. So a processed task costs one round trip and one
    wake-up of the server when the guess holds (a raw ``reserve`` + ``delete`` loop
    pays two of each), at most two when it does not.

Runs that never finished, and handing back unstarted
    ``Job.unfinished`` must count the deliveries since the last outcome that reached
    none (a worker died, a lease lapsed). ``stats-job`` only has totals: ``reserves -
    1 - releases - buries`` is every such delivery ever (closing a connection that
    holds a job hands it back counting nothing but its reservation; checked on 1.12).
    What a retry or a kick settled is kept in a *settle marker*: a ready job
    ``{"base", "skip"}`` alone in tube ``lilqueue-settled/T/ID``, written before the
    release or kick (so no worker can reserve the job before it), read on a later
    reservation only if the job was ever released or kicked (one more round trip for
    those), deleted with the job. ``unfinished = that total - base``. beanstalkd cannot
    take back a reservation, so ``unreserve`` releases the job and adds one to
    ``skip``; ``Job.deliveries = reserves - skip``. A marker is written only when a
    settle changes it: a task retried with nothing unfinished costs none. A marker
    another client spoils reads as 0 (never fewer attempts than there were). A marker
    that does not fit the job's ``stats-job`` (a ``skip`` above its ``releases``, a
    ``base`` above its unsettled runs: forged, or older than a restart that reset the
    counters) is ignored, logged and removed, so ``reserves - skip`` can only lag the
    server's count by the job's real hand-backs and a failing task cannot loop.

Hold reasons
    beanstalkd keeps nothing but the job on a buried job, and can only show the
    oldest buried job of a tube. So before burying job ``ID`` of tube ``T`` the
    adapter puts a small JSON *reason record* (``tube``, ``id``, ``reason``,
    ``held_at``, ``reserves``) as a ready job in its own tube
    ``lilqueue-held/T/<held_at ms>/ID`` (``T`` replaced by ``$<digest>`` when the
    name would pass beanstalkd's 200 bytes). ``list-tubes`` therefore lists every
    held task, in the order held, without reserving anything; the records live in
    the binlog like any job, so they survive a restart. A record is valid while job
    ``ID`` is buried in ``T`` and has been reserved exactly ``reserves`` times (a
    job can only be buried by the worker that reserved it; a bury writes the job,
    counts included, to the binlog, so a buried job keeps its ``reserves`` across a
    restart, while its ``buries`` is counted again); stale records (the
    job was kicked, deleted or re-held by another client) are deleted when met. Jobs
    buried by other clients have no record; the oldest one is still listed (with no
    reason) and kicked. Nobody watches the record tubes, so no worker takes them.
    Queue names starting with ``lilqueue-held/`` or ``lilqueue-settled/`` are refused.

Server pools
    Producers spread tasks round-robin over the servers and fail over to the next
    one when a server is unreachable (it is then skipped for a growing pause); only
    when every server fails is :class:`BackendConnectionError` raised. A put that
    fails mid-way may have been stored, so failover can duplicate a task, never lose
    one. Workers first take a ready job from any server (rotating the starting
    server for fairness), then wait on all of them at once (``select``); when one
    answers, the other waits are cancelled by closing those connections (beanstalkd
    hands back anything reserved on a closed connection at once), or, if their
    answer already came, the job is kept for the next call and touched first. Stats,
    held listings, kick and delete cover every server. Ids are beanstalkd's job ids
    for a single server and ``host:port/id`` in a pool, so they stay unique.

The TTR quirk of beanstalkd 1.12
    While the connection that reserved a job stays idle, the server often keeps the
    job reserved long past its TTR (upstream PR #334); any command on that
    connection, or closing it, makes it notice. So when this adapter holds a job
    past its TTR (a worker stuck in Python code), a small daemon thread sends a
    harmless ``list-tube-used`` on that connection, and the job goes back to the
    ready queue for another worker; the stuck worker's later ``delete`` is refused
    by the server, so the task is completed once. A process that cannot run that
    thread at all (stopped, or stuck in C code holding the GIL) is the supervisor's
    TTR watchdog's business: killing it closes the connection.

One adapter is one connection per server and must stay in one thread (greenstalk
is not thread-safe; the App makes one adapter per thread). Times are in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import parse_qsl

import greenstalk

from lilqueue.adapters.base import (
    Adapter,
    Capabilities,
    HeldJob,
    Job,
    Peeked,
    PeekState,
    QueueStats,
    native,
)
from lilqueue.adapters.support import options
from lilqueue.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ConfigError,
    TaskError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11300
DEFAULT_MAX_JOB_SIZE = 65_535
HELD_PREFIX = "lilqueue-held/"
SETTLED_PREFIX = "lilqueue-settled/"
#: the reason shown for a buried job that has no reason record
NO_RECORD = "held with no reason recorded (buried by another client, or by beanstalkd when out of memory)"
MAX_TUBE = 200
#: seconds after a lease's TTR before the nudger pokes its connection
NUDGE_MARGIN = 0.1
#: seconds between the nudger's looks while no lease is held (less than the smallest ttr)
IDLE_LOOK = 0.9
#: longest pause, in seconds, before an unreachable server is tried again
DOWN_CAP = 30.0
OPTIONS = ("servers", "connect_timeout", "io_timeout")
_TUBE = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9\-+/;.$_()]*\Z")
#: MSG_MORE (Linux): a pipelined delete leaves with the next command, in the same segment
_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)
#: what a broken or desynchronised connection raises (greenstalk asserts on bad framing)
_BROKEN = (OSError, AssertionError, ValueError, greenstalk.UnknownResponseError)


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    """One beanstalkd server of the pool."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def key(self) -> str:
        """``host:port``, the prefix of this server's task ids in a pool."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Client(greenstalk.Client[bytes]):
    """greenstalk's client plus a split send / receive, so replies can be pipelined."""

    #: a write sent with MSG_MORE is still held in the kernel
    corked = False

    def send(self, data: bytes, *, more: bool = False) -> None:
        """Write ``data``; ``more``: hold it back (MSG_MORE) to leave with the next write."""
        self._sock.sendall(data, _MSG_MORE if more else 0)
        self.corked = more

    def push(self) -> None:
        """Send now what MSG_MORE held back (setting TCP_NODELAY pushes pending frames)."""
        if self.corked:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.corked = False

    def reply(self, word: bytes) -> list[bytes]:
        """The values of the next reply line if it is ``word``; greenstalk's error otherwise."""
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("beanstalkd closed the connection")
        status, *values = line.split()
        if status == word:
            return values
        error = greenstalk.ERROR_RESPONSES.get(status)
        if error is not None:
            raise error(values)
        raise greenstalk.UnknownResponseError(status, values)

    def chunk(self, size: int) -> bytes:
        """The next ``size`` bytes of data and their CRLF."""
        data = self._reader.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("beanstalkd closed the connection in the middle of a reply")
        return bytes(data[:-2])


class _Counts(NamedTuple):
    """What a reserved job's ``stats-job`` and settle marker tell of its earlier deliveries."""

    #: earlier deliveries that never reached an outcome, ever: reserves - 1 - releases - buries
    unsettled: int = 0
    #: of those, how many a retry or a kick settled (the marker's ``base``)
    base: int = 0
    #: reservations handed back unstarted, which do not count (the marker's ``skip``)
    skip: int = 0
    #: the marker's job id, if it has one
    marker: int | None = None


class _Lease(NamedTuple):
    """``Job.receipt``: which connection (and which life of it) reserved which job."""

    conn: _Conn
    generation: int
    jid: int
    reserves: int
    counts: _Counts = _Counts()


class _Conn:
    """The connection to one server: connected lazily, re-connected after a failure.

    ``acks`` are the replies still owed for pipelined deletes; every exchange reads
    them after sending its own command. ``leases`` (job id -> monotonic time its TTR
    lapses) are what the nudger watches; ``lock`` serialises the owner thread and it.
    """

    def __init__(self, server: Server, index: int, connect_timeout: float, io_timeout: float) -> None:
        self.server = server
        self.key = server.key
        self.index = index
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.client: _Client | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.generation = 0
        self.acks = 0
        self.used = "default"
        self.watched: tuple[str, ...] = ("default",)
        self.max_job_size = DEFAULT_MAX_JOB_SIZE
        self.leases: dict[int, float] = {}
        self.leases_lock = threading.Lock()
        self.failures = 0
        self.down_until = 0.0
        #: the id of the job this connection will probably reserve next: the last one + 1,
        #: as a single producer's jobs are numbered in the order they are taken
        self.guess: int | None = None
        #: the longest reserve wait the socket's timeout allows for (io_timeout beyond it)
        self.waits_up_to = 0

    def __repr__(self) -> str:
        return f"<beanstalkd {self.key}>"

    # -- connecting and failing --------------------------------------------------

    def connect(self) -> _Client:
        """The live client, connecting first if needed (within ``connect_timeout``)."""
        if self.client is not None:
            return self.client
        try:
            sock = socket.create_connection((self.server.host, self.server.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise self.broken(exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            _bound(sock, self.io_timeout)
            client = _Client(sock, encoding=None)
            self.max_job_size = int(client.stats()["max-job-size"])
        except (*_BROKEN, greenstalk.Error) as exc:
            sock.close()
            raise self.broken(exc) from exc
        self.client, self.sock = client, sock
        self.used, self.watched, self.acks, self.waits_up_to = "default", ("default",), 0, 0
        self.healthy()
        return client

    def broken(self, exc: BaseException) -> BackendConnectionError:
        """Drop the connection after ``exc`` and pause this server; the error to raise."""
        self.drop()
        self.failures += 1
        self.down_until = time.monotonic() + min(DOWN_CAP, 0.5 * 2 ** min(self.failures - 1, 6))
        cls = BackendTimeoutError if isinstance(exc, TimeoutError) else BackendConnectionError
        return cls(f"beanstalkd {self.key}: {str(exc) or type(exc).__name__}")

    def drop(self) -> None:
        """Close the connection; the server hands back whatever it had reserved for us."""
        client, self.client, self.sock = self.client, None, None
        self.generation += 1
        self.acks = 0
        with self.leases_lock:
            self.leases.clear()
        if client is not None:
            try:
                client.close()
            except OSError:
                pass

    def healthy(self) -> None:
        self.failures, self.down_until = 0, 0.0

    def is_down(self, now: float) -> bool:
        return self.client is None and now < self.down_until

    # -- talking -------------------------------------------------------------------

    def settle(self, client: _Client) -> None:
        """Read the replies owed for pipelined deletes (NOT_FOUND: the lease had lapsed)."""
        if self.acks:
            client.push()
        while self.acks:
            self.acks -= 1
            try:
                client.reply(b"DELETED")
            except greenstalk.NotFoundError:
                log.debug("a pipelined delete on %s found no job (its lease had lapsed)", self.key)

    @contextlib.contextmanager
    def session(self) -> Iterator[_Client]:
        """Exclusive use of the settled connection; driver errors become lilqueue's."""
        with self.lock:
            client = self.connect()
            try:
                self.settle(client)
                yield client
            except _BROKEN as exc:
                raise self.broken(exc) from exc
            except greenstalk.Error as exc:
                raise BackendError(f"beanstalkd {self.key}: {type(exc).__name__} {exc}") from exc
            except BaseException:
                self.drop()  # interrupted mid-exchange (a signal): the replies are out of step
                raise

    def use(self, client: _Client, tube: str) -> None:
        if self.used != tube:
            client.use(tube)
            self.used = tube

    def watch_only(self, client: _Client, tubes: tuple[str, ...]) -> None:
        """Make the watch list exactly ``tubes`` (watch the new ones before ignoring)."""
        if self.watched == tubes:
            return
        for tube in tubes:
            if tube not in self.watched:
                client.watch(tube)
        for tube in self.watched:
            if tube not in tubes:
                client.ignore(tube)
        self.watched = tubes

    # -- settle markers (see the module doc) ------------------------------------------

    def peek_marker(self, client: _Client, tube: str) -> tuple[int, dict[str, Any]] | None:
        """The oldest ready job of ``tube`` (a settle marker's tube): its id and fields, or None."""
        client.send(b"use %b\r\npeek-ready\r\n" % tube.encode())
        client.reply(b"USING")
        self.used = tube
        try:
            jid, size = client.reply(b"FOUND")
        except greenstalk.NotFoundError:
            return None
        return int(jid), _loads(client.chunk(int(size)))

    def write_marker(self, client: _Client, tube: str, base: int, skip: int) -> None:
        """Leave exactly one marker ``{base, skip}`` in ``tube``, or none when both are 0."""
        for _ in range(100):  # a marker left by a race, or put there by another client
            found = self.peek_marker(client, tube)
            if found is None:
                break
            client.send(b"delete %d\r\n" % found[0])
            with contextlib.suppress(greenstalk.NotFoundError):
                client.reply(b"DELETED")
        if base or skip:
            body = json.dumps({"base": base, "skip": skip}).encode()
            client.send(b"put 0 0 3600 %d\r\n%b\r\n" % (len(body), body))
            client.reply(b"INSERTED")

    # -- leases, for the nudger ------------------------------------------------------

    def lease(self, jid: int, ttr: int) -> float:
        """Remember that job ``jid`` is ours for ``ttr`` seconds; when the nudger should look."""
        due = time.monotonic() + ttr + NUDGE_MARGIN
        with self.leases_lock:
            self.leases[jid] = due
        return due

    def unlease(self, jid: int) -> None:
        with self.leases_lock:
            self.leases.pop(jid, None)

    def next_due(self) -> float | None:
        with self.leases_lock:
            return min(self.leases.values(), default=None)

    def nudge(self, now: float) -> None:
        """Poke the server if a lease here has lapsed, so that it hands the job back."""
        with self.leases_lock:
            lapsed = [jid for jid, due in self.leases.items() if due <= now]
            for jid in lapsed:
                del self.leases[jid]
        if not lapsed or self.client is None:
            return
        with self.lock:
            client = self.client
            if client is None:
                return
            try:
                client.send(b"list-tube-used\r\n")
                self.settle(client)
                client.reply(b"USING")
            except (*_BROKEN, greenstalk.Error) as exc:
                log.debug("nudging %s failed: %s", self.key, exc)
                self.drop()
                return
        log.warning(
            "jobs %s on %s outlived their ttr; beanstalkd was told to hand them to another worker", lapsed, self.key
        )


class _Nudger(threading.Thread):
    """Makes beanstalkd 1.12 notice lapsed leases on idle connections (see the module doc)."""

    def __init__(self, conns: Sequence[_Conn]) -> None:
        super().__init__(name="lilqueue-beanstalkd-ttr", daemon=True)
        self.conns = conns
        self.wake = threading.Event()
        self.planned = math.inf
        self.stopped = False

    def due(self, when: float) -> None:
        """A lease lapses at ``when`` (monotonic): make sure we look by then."""
        if when < self.planned:
            self.planned = when
            self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()

    def run(self) -> None:
        while not self.stopped:
            dues = [d for c in self.conns if (d := c.next_due()) is not None]
            # With no lease, look again in IDLE_LOOK seconds anyway: a lease taken meanwhile
            # lapses later than that (ttr >= 1 s), so taking one never has to wake us up.
            self.planned = min(dues, default=time.monotonic() + IDLE_LOOK)
            self.wake.wait(max(0.0, self.planned - time.monotonic()))
            self.wake.clear()
            now = time.monotonic()
            for conn in self.conns:
                try:
                    conn.nudge(now)
                except Exception:  # never let the watcher die quietly
                    log.exception("the beanstalkd ttr nudger failed on %s", conn.key)


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    """Where a held job's reason record lives."""

    conn: _Conn
    tube: str  # the record's own tube
    held_ms: int
    jid: int


class BeanstalkdAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=native("beanstalkd priorities; kept on release and bury"),
        delay=native("whole seconds, rounded up"),
        ttr=native("beanstalkd TTR; idle connections holding a lapsed job are nudged (1.12 quirk)"),
        touch=native(),
        retry=native("release with the task's priority and a delay"),
        hold=native("bury; reason and time in a record tube per held task"),
        kick=native("kick-job, oldest held first"),
        stats=native("stats-tube, summed over the pool"),
        blocking_reserve=native("reserve-with-timeout (whole seconds); select() across a pool"),
        fifo=native("first in, first out within one priority on one server"),
        notes="durable when beanstalkd runs with a binlog (-b DIR); ids are host:port/id in a pool",
    )

    max_queue_name: ClassVar[int | None] = MAX_TUBE

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        connect_timeout: float = options.CONNECT_TIMEOUT,
        io_timeout: float = options.IO_TIMEOUT,
    ) -> None:
        if not servers:
            raise ConfigError("queue.beanstalkd.servers: give at least one server")
        self.conns = [_Conn(s, i, connect_timeout, io_timeout) for i, s in enumerate(servers)]
        self.by_key = {c.key: c for c in self.conns}
        self.pooled = len(self.conns) > 1
        self._next = random.randrange(len(self.conns))  # producers start at different servers
        self._stash: list[Job] = []
        self._nudger: _Nudger | None = None

    def __repr__(self) -> str:
        return f"<BeanstalkdAdapter {','.join(self.by_key)}>"

    @classmethod
    def queue_name_problem(cls, name: str) -> str | None:
        """lilqueue's rule, then beanstalkd's: ASCII letters, digits and ``-+/;.$_()``, not
        starting with ``-``; and not one of the adapter's own record and marker tubes."""
        problem = super().queue_name_problem(name)
        if problem is not None:
            return problem
        if not _TUBE.match(name):
            return "a beanstalkd tube name has only ASCII letters, digits and -+/;.$_() and does not start with '-'"
        if name.startswith((HELD_PREFIX, SETTLED_PREFIX)):
            return f"names starting with {HELD_PREFIX!r} or {SETTLED_PREFIX!r} are lilqueue's own tubes"
        return None

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> BeanstalkdAdapter:
        opts = dict(options)
        if url is not None:
            servers, query = _parse_url(url)
            opts.pop("servers", None)  # the URL names the servers
            opts.update(query)
        else:
            servers = _parse_servers(opts.pop("servers", [{}]))
        kwargs = {key: _timeout(key, value) for key, value in opts.items()}
        return cls(servers, **kwargs)

    # -- producing -----------------------------------------------------------------

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        tube = _tube(queue)
        command = b"put %d %d %d %d\r\n%b\r\n" % (priority, _seconds(delay), ttr, len(body), body)
        if not self.pooled:
            return str(self._put_on(self.conns[0], tube, command, len(body)))
        failures: list[BackendConnectionError] = []
        for conn in self._put_order():
            try:
                return self._id(conn, self._put_on(conn, tube, command, len(body)))
            except BackendConnectionError as exc:
                failures.append(exc)
        summary = "; ".join(str(e) for e in failures)
        raise BackendConnectionError(f"no beanstalkd server took the task ({summary})") from failures[-1]

    def _put_order(self) -> list[_Conn]:
        """Every server, starting with the next in turn; those in a failure pause last."""
        n = len(self.conns)
        start, self._next = self._next, (self._next + 1) % n
        ordered = [self.conns[(start + i) % n] for i in range(n)]
        now = time.monotonic()
        return [c for c in ordered if not c.is_down(now)] + [c for c in ordered if c.is_down(now)]

    def _put_on(self, conn: _Conn, tube: str, command: bytes, size: int) -> int:
        with conn.lock:
            client = conn.connect()
            if size > conn.max_job_size:
                raise TaskError(f"task body is {size} bytes; beanstalkd {conn.key} takes at most {conn.max_job_size}")
            try:
                switch = conn.used != tube
                client.send(b"use %b\r\n%b" % (tube.encode(), command) if switch else command)
                conn.settle(client)
                if switch:
                    client.reply(b"USING")
                    conn.used = tube
                (jid,) = client.reply(b"INSERTED")
            except _BROKEN as exc:
                raise conn.broken(exc) from exc
            except greenstalk.JobTooBigError as exc:
                raise TaskError(f"task body is {size} bytes; too big for beanstalkd {conn.key}") from exc
            except (greenstalk.DrainingError, greenstalk.OutOfMemoryError) as exc:
                raise BackendConnectionError(f"beanstalkd {conn.key} refuses new jobs: {type(exc).__name__}") from exc
            except greenstalk.BuriedError as exc:
                raise BackendError(f"beanstalkd {conn.key} is out of memory and buried the task") from exc
            except greenstalk.Error as exc:
                raise BackendError(f"beanstalkd {conn.key}: {type(exc).__name__} {exc}") from exc
            except BaseException:
                conn.drop()
                raise
        if conn.failures:
            conn.healthy()
        return int(jid)

    # -- reserving -------------------------------------------------------------------

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        tubes = _tubes(tuple(queues))
        if self._stash:
            return self._unstash()
        if not self.pooled:
            return self._reserve_on(self.conns[0], tubes, _seconds(timeout))
        return self._reserve_pool(tubes, timeout)

    def _reserve_on(self, conn: _Conn, tubes: tuple[str, ...], seconds: int) -> Job | None:
        """One ``reserve-with-timeout`` on one server, with its job's ``stats-job``."""
        with conn.lock:
            client = conn.connect()
            sock = conn.sock
            try:
                if conn.watched != tubes:
                    conn.watch_only(client, tubes)
                if sock is not None and seconds > conn.waits_up_to:
                    _bound(sock, seconds + conn.io_timeout)  # kept: the same wait comes again
                    conn.waits_up_to = seconds
                guess = conn.guess
                command = b"reserve-with-timeout %d\r\n" % seconds
                client.send(command + b"stats-job %d\r\n" % guess if guess else command)
                conn.settle(client)
                return self._reserved(conn, client, guess)
            except _BROKEN as exc:
                raise conn.broken(exc) from exc
            except greenstalk.Error as exc:
                raise BackendError(f"beanstalkd {conn.key}: {type(exc).__name__} {exc}") from exc
            except BaseException:
                conn.drop()  # interrupted mid-exchange (a signal): the replies are out of step
                raise

    def _reserved(self, conn: _Conn, client: _Client, guess: int | None = None) -> Job | None:
        """Read a reserve reply and its job's stats. Called holding ``conn.lock``.

        ``guess`` is the job id whose ``stats-job`` was sent right behind the reserve
        (see :meth:`_Conn.guess`); when it is the reserved job, its stats cost no
        extra round trip, otherwise they are asked for now.
        """
        try:
            jid_, size = client.reply(b"RESERVED")
        except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError) as exc:
            _job_stats(client, guess)  # the speculative stats of nothing: read and dropped
            if isinstance(exc, greenstalk.DeadlineSoonError):
                time.sleep(0.05)  # we hold a job about to lapse: let the caller come back
            return None
        jid = int(jid_)
        body = client.chunk(int(size))
        stats = _job_stats(client, guess)
        if stats is None or stats.get(b"id:") != jid_:
            client.send(b"stats-job %d\r\n" % jid)
            stats = _job_stats(client, jid)
            if stats is None:  # deleted by someone else already
                return None
        conn.guess = jid + 1
        return self._job(conn, client, jid, body, stats)

    def _job(self, conn: _Conn, client: _Client, jid: int, body: bytes, stats: dict[bytes, bytes]) -> Job:
        ttr = int(stats[b"ttr:"])
        self._nudge_by(conn, conn.lease(jid, ttr))
        tube, priority, reserves = stats[b"tube:"].decode(), int(stats[b"pri:"]), int(stats[b"reserves:"])
        counts = _counts(conn, client, tube, jid, stats)
        lease = _Lease(conn, conn.generation, jid, reserves, counts)
        if conn.failures:
            conn.healthy()
        deliveries = max(reserves - counts.skip, 1)
        unfinished = max(counts.unsettled - counts.base, 0)
        return Job(self._id(conn, jid), tube, body, priority, ttr, deliveries, lease, unfinished)

    def _nudge_by(self, conn: _Conn, due: float) -> None:
        nudger = self._nudger
        if nudger is None:
            nudger = self._nudger = _Nudger(self.conns)
            nudger.start()
        nudger.due(due)

    def _live(self) -> list[_Conn]:
        """The servers not in a failure pause, starting with the next in turn."""
        n, now = len(self.conns), time.monotonic()
        start, self._next = self._next, (self._next + 1) % n
        live = [c for i in range(n) if not (c := self.conns[(start + i) % n]).is_down(now)]
        if not live:
            raise BackendConnectionError(f"every beanstalkd server is unreachable ({', '.join(self.by_key)})")
        return live

    def _reserve_pool(self, tubes: tuple[str, ...], timeout: float) -> Job | None:
        """A ready job from any server; else wait on all of them at once."""
        live, errors = self._live(), []
        for conn in live:
            try:
                job = self._reserve_on(conn, tubes, 0)
            except BackendConnectionError as exc:
                errors.append(exc)
                continue
            if job is not None:
                return job
        if len(errors) == len(live):
            raise BackendConnectionError(f"no beanstalkd server reachable: {errors[-1]}") from errors[-1]
        if timeout <= 0:
            return None
        return self._wait_pool([c for c in live if c.client is not None], tubes, _seconds(timeout))

    def _wait_pool(self, conns: list[_Conn], tubes: tuple[str, ...], seconds: int) -> Job | None:
        """Wait on every server at once; the first job to come (others are kept or handed back)."""
        if not conns:
            return None
        waiting: dict[socket.socket, _Conn] = {}
        for conn in conns:
            if (sock := self._begin_wait(conn, tubes, seconds)) is not None:
                waiting[sock] = conn
        deadline = time.monotonic() + seconds + max(c.io_timeout for c in conns)
        found: Job | None = None
        while waiting and found is None and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(waiting), [], [], left)
            for sock in ready:
                job = self._end_wait(waiting.pop(sock))
                if job is not None and found is None:
                    found = job
                elif job is not None:
                    self._stash.append(job)
        self._cancel_waits(waiting)
        return found

    def _begin_wait(self, conn: _Conn, tubes: tuple[str, ...], seconds: int) -> socket.socket | None:
        """Send a blocking reserve to ``conn``; the socket to wait on (None if it failed)."""
        with conn.lock:
            client, sock = conn.client, conn.sock
            if client is None or sock is None:
                return None
            try:
                conn.settle(client)
                conn.watch_only(client, tubes)
                client.send(b"reserve-with-timeout %d\r\n" % seconds)
            except (*_BROKEN, greenstalk.Error) as exc:
                log.warning("beanstalkd %s: %s", conn.key, conn.broken(exc))
                return None
        return sock

    def _end_wait(self, conn: _Conn) -> Job | None:
        with conn.lock:
            client = conn.client
            if client is None:
                return None
            try:
                return self._reserved(conn, client)
            except (*_BROKEN, greenstalk.Error) as exc:
                log.warning("beanstalkd %s: %s", conn.key, conn.broken(exc))
                return None

    def _cancel_waits(self, waiting: dict[socket.socket, _Conn]) -> None:
        """Stop the waits still running: keep a job that already came, else hang up."""
        if not waiting:
            return
        ready, _, _ = select.select(list(waiting), [], [], 0)
        for sock in ready:
            job = self._end_wait(waiting.pop(sock))
            if job is not None:
                self._stash.append(job)
        for conn in waiting.values():
            with conn.lock:
                conn.drop()  # beanstalkd hands back anything it reserved for this wait

    def _unstash(self) -> Job | None:
        """A job reserved while waiting for another: touched first, as it waited."""
        while self._stash:
            job = self._stash.pop(0)
            try:
                if self._finish(job, b"touch %d\r\n" % job.receipt.jid, b"TOUCHED", keep=True):
                    self._nudge_by(job.receipt.conn, job.receipt.conn.lease(job.receipt.jid, job.ttr))
                    return job
            except BackendConnectionError:
                continue
        return None

    # -- finishing a reserved job ----------------------------------------------------

    def delete(self, job: Job) -> None:
        lease: _Lease = job.receipt
        conn = lease.conn
        with conn.lock:
            if conn.generation != lease.generation or conn.client is None:
                return  # that connection is gone, and the server handed the job back
            conn.unlease(lease.jid)
            command = b"delete %d\r\n" % lease.jid
            marker = lease.counts.marker
            if marker is not None:
                command += b"delete %d\r\n" % marker
            try:
                conn.client.send(command, more=True)  # the replies come with the next command's
            except _BROKEN as exc:
                raise conn.broken(exc) from exc
            conn.acks += 1 if marker is None else 2

    def flush(self) -> None:
        """Send now the deletes MSG_MORE held back in the kernel."""
        for conn in self.conns:
            with conn.lock:
                if conn.client is not None:
                    try:
                        conn.client.push()
                    except _BROKEN as exc:
                        raise conn.broken(exc) from exc

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        counts: _Counts = job.receipt.counts
        self._mark(job, counts.unsettled, counts.skip)  # a retry settles every unfinished run so far
        self._finish(job, b"release %d %d %d\r\n" % (job.receipt.jid, priority, _seconds(delay)), b"RELEASED")

    def unreserve(self, job: Job) -> None:
        """Release at once with its priority; the marker's ``skip`` grows by one, so that this
        reservation does not count (beanstalkd's own ``reserves`` cannot be taken back)."""
        counts: _Counts = job.receipt.counts
        self._mark(job, counts.base, counts.skip + 1)
        self._finish(job, b"release %d %d 0\r\n" % (job.receipt.jid, job.priority), b"RELEASED")

    def _mark(self, job: Job, base: int, skip: int) -> None:
        """Before settling a reserved job, make its settle marker say ``base`` and ``skip``."""
        lease: _Lease = job.receipt
        counts, conn = lease.counts, lease.conn
        unchanged = (base, skip) == (counts.base, counts.skip)
        if (unchanged and counts.marker is not None) or (not base and not skip and counts.marker is None):
            return
        if conn.generation != lease.generation:
            return  # that connection is gone: the job went back with it, unsettled
        with conn.session() as client:
            conn.write_marker(client, _marker_tube(job.queue, lease.jid), base, skip)

    def bury(self, job: Job, *, reason: str) -> None:
        lease: _Lease = job.receipt
        if lease.conn.generation != lease.generation:
            return
        record = self._write_record(lease, job.queue, reason)
        if not self._finish(job, b"bury %d %d\r\n" % (lease.jid, job.priority), b"BURIED"):
            self._delete_records([record])

    def touch(self, job: Job) -> None:
        if self._finish(job, b"touch %d\r\n" % job.receipt.jid, b"TOUCHED", keep=True):
            lease: _Lease = job.receipt
            self._nudge_by(lease.conn, lease.conn.lease(lease.jid, job.ttr))

    def _finish(self, job: Job, command: bytes, word: bytes, *, keep: bool = False) -> bool:
        """Send a command about a job we reserved; False when the lease was already lost."""
        lease: _Lease = job.receipt
        conn = lease.conn
        if conn.generation != lease.generation:
            return False
        with conn.session() as client:
            if conn.generation != lease.generation:
                return False
            if not keep:
                conn.unlease(lease.jid)
            client.send(command)
            try:
                client.reply(word)
            except greenstalk.NotFoundError:
                log.info("job %s was no longer reserved by this worker (its ttr had lapsed)", job.id)
                return False
            except greenstalk.BuriedError:
                log.error("beanstalkd %s ran out of memory and buried job %s", conn.key, job.id)
        return True

    # -- hold reasons -----------------------------------------------------------------

    def _write_record(self, lease: _Lease, tube: str, reason: str) -> _Record:
        conn, held_at = lease.conn, time.time()
        held_ms = int(held_at * 1000)
        record = _Record(conn, _held_stem(tube) + f"{held_ms}/{lease.jid}", held_ms, lease.jid)
        body = {"tube": tube, "id": lease.jid, "reason": reason, "held_at": held_at, "reserves": lease.reserves}
        data = _fit(body, conn.max_job_size)
        with conn.session() as client:
            conn.use(client, record.tube)
            client.put(data, priority=0, delay=0, ttr=3600)
        return record

    def _records(self, tube: str) -> list[_Record]:
        """Every reason record of ``tube`` on every reachable server, oldest first."""
        stem, found = _held_stem(tube), []
        for conn in self._reachable():
            with conn.session() as client:
                names = client.tubes()
            for name in names:
                if name.startswith(stem) and (parsed := _parse_record_tube(name[len(stem) :])):
                    found.append(_Record(conn, name, *parsed))
        return sorted(found, key=lambda r: (r.held_ms, r.conn.index, r.jid))

    def _read_record(self, record: _Record, tube: str) -> HeldJob | None:
        """The held job a record speaks for, or None (and a stale record is deleted)."""
        conn = record.conn
        with conn.session() as client:
            conn.use(client, record.tube)
            rec_job = _found(client.peek_ready)
            if rec_job is None:
                return None  # deleted meanwhile (kicked by another client)
            data = _loads(rec_job.body)
            info = _found(lambda: client.stats_job(record.jid))
            held = info is not None and info["state"] == "buried" and info["tube"] == tube
            job = _found(lambda: client.peek(record.jid)) if held else None
            if job is None or info is None or info["reserves"] != data.get("reserves"):
                self._delete_quietly(client, rec_job.id)
                return None
        reason, held_at = data.get("reason"), data.get("held_at")
        return HeldJob(
            self._id(conn, record.jid),
            tube,
            job.body,
            reason if isinstance(reason, str) else None,
            float(held_at) if isinstance(held_at, int | float) and math.isfinite(held_at) else record.held_ms / 1000,
        )

    def _delete_quietly(self, client: _Client, jid: int | None) -> None:
        if jid is None:
            return
        try:
            client.delete(jid)
        except greenstalk.NotFoundError:
            pass

    def _delete_records(self, records: Sequence[_Record]) -> None:
        for record in records:
            with record.conn.session() as client:
                record.conn.use(client, record.tube)
                try:
                    self._delete_quietly(client, client.peek_ready().id)
                except greenstalk.NotFoundError:
                    pass

    def _held_with_records(self, tube: str, limit: int) -> list[tuple[HeldJob, _Record | None]]:
        """Up to ``limit`` held jobs, oldest first; then any buried job that has no record."""
        found: list[tuple[HeldJob, _Record | None]] = []
        seen: set[str] = set()
        for record in self._records(tube):
            if len(found) >= limit:
                return found
            held = self._read_record(record, tube)
            if held is not None and held.id not in seen:  # (a second record for it: forged)
                found.append((held, record))
                seen.add(held.id)
        for conn in self._reachable():
            extra = self._peek_job(conn, tube, "held") if len(found) < limit else None
            if extra is not None and extra[1].id not in seen:
                found.append((HeldJob(extra[1].id, tube, extra[1].body, NO_RECORD, None), None))
        return found

    # -- operating -------------------------------------------------------------------

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        return [held for held, _ in self._held_with_records(_tube(queue), limit)]

    def kick(self, queue: str, count: int) -> int:
        tube, kicked = _tube(queue), 0
        while kicked < count:
            batch = self._held_with_records(tube, count - kicked)
            done = sum(self._act(tube, held.id, "kick", record) for held, record in batch)
            kicked += done
            if not done:
                break
        return kicked

    def kick_id(self, queue: str, id: str) -> bool:
        return self._act(_tube(queue), id, "kick")

    def delete_id(self, queue: str, id: str) -> bool:
        return self._act(_tube(queue), id, "delete")

    def _act(self, tube: str, id: str, action: str, record: _Record | None = None) -> bool:
        """Kick a held job, or delete one that is not reserved, once sure it is in ``tube``."""
        located = self._locate(id)
        if located is None:
            return False
        conn, jid = located
        with conn.session() as client:
            info = _found(lambda: client.stats_job(jid))
            if info is None or info["tube"] != tube or info["state"] == "reserved":
                return False
            if action == "kick" and info["state"] != "buried":
                return False
            if action == "kick":
                _mark_kicked(conn, client, tube, jid, info)
            try:
                client.kick_job(jid) if action == "kick" else client.delete(jid)
            except greenstalk.NotFoundError:
                return False
            if action == "delete" and info["releases"] + info["kicks"] > 0:
                conn.write_marker(client, _marker_tube(tube, jid), 0, 0)
        if info["state"] == "buried":
            records = [record] if record else [r for r in self._records(tube) if r.conn is conn and r.jid == jid]
            self._delete_records(records)
        return True

    def _locate(self, id: str) -> tuple[_Conn, int] | None:
        """The server and job id a task id names (a bare number only for a single server)."""
        key, _, number = id.rpartition("/")
        if not number.isdigit():
            return None
        if not key:
            return None if self.pooled else (self.conns[0], int(number))
        conn = self.by_key.get(key)
        return None if conn is None else (conn, int(number))

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        tube = _tube(queue)
        if state == "held":
            held = self._held_with_records(tube, 1)
            return Peeked(held[0][0].id, tube, held[0][0].body, self._priority(held[0][0].id)) if held else None
        found = [p for c in self._reachable() if (p := self._peek_job(c, tube, state)) is not None]
        return min(found, key=lambda p: p[0])[1] if found else None

    def _priority(self, id: str) -> int | None:
        located = self._locate(id)
        if located is None:
            return None
        conn, jid = located
        with conn.session() as client:
            info = _found(lambda: client.stats_job(jid))
        return None if info is None else info["pri"]

    def _peek_job(self, conn: _Conn, tube: str, state: PeekState) -> tuple[int, Peeked] | None:
        """The next job in ``state`` on one server, with the key that orders it across servers."""
        with conn.session() as client:
            conn.use(client, tube)
            peeker = {"ready": client.peek_ready, "delayed": client.peek_delayed, "held": client.peek_buried}[state]
            job = _found(peeker)
            info = None if job is None else _found(lambda: client.stats_job(job.id))
        if job is None or info is None:
            return None
        order = {"ready": info["pri"], "delayed": info["time-left"], "held": info["age"]}[state]
        return order, Peeked(self._id(conn, job.id), tube, job.body, info["pri"])

    def stats(self, queue: str) -> QueueStats:
        tube, totals, missing = _tube(queue), [0, 0, 0, 0], 0
        for conn in self.conns:
            try:
                with conn.session() as client:
                    try:
                        s = client.stats_tube(tube)
                    except greenstalk.NotFoundError:
                        continue  # no such tube there yet: nothing in it
            except BackendConnectionError:
                missing += 1
                continue
            counts = (s["current-jobs-ready"], s["current-jobs-delayed"], s["current-jobs-reserved"])
            for i, n in enumerate((*counts, s["current-jobs-buried"])):
                totals[i] += n
        if missing == len(self.conns):
            raise BackendConnectionError(f"every beanstalkd server is unreachable ({', '.join(self.by_key)})")
        ready, delayed, reserved, held = totals
        return QueueStats(ready, delayed, reserved, held, approximate=missing > 0)

    def _reachable(self) -> list[_Conn]:
        """The servers that answer (connecting as needed); connection error if none does."""
        reachable, error = [], None
        for conn in self.conns:
            try:
                with conn.lock:
                    conn.connect()
                reachable.append(conn)
            except BackendConnectionError as exc:
                error = exc
        if not reachable:
            raise BackendConnectionError(f"every beanstalkd server is unreachable ({error})") from error
        return reachable

    def close(self) -> None:
        if self._nudger is not None:
            self._nudger.stop()
            self._nudger = None
        for conn in self.conns:
            with conn.lock:
                if conn.client is not None and conn.sock is not None and conn.acks:
                    try:
                        _bound(conn.sock, min(1.0, conn.io_timeout))
                        conn.settle(conn.client)  # confirm pipelined deletes before hanging up
                    except (*_BROKEN, greenstalk.Error):
                        pass
                conn.drop()

    def _id(self, conn: _Conn, jid: int) -> str:
        return f"{conn.key}/{jid}" if self.pooled else str(jid)


# -- helpers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _tube(name: str) -> str:
    """``name`` if it can name a queue's tube; ConfigError otherwise."""
    problem = BeanstalkdAdapter.queue_name_problem(name)
    if problem is not None:
        raise ConfigError(f"queue {name!r}: not a valid beanstalkd tube name: {problem}")
    return name


def _bound(sock: socket.socket, seconds: float) -> None:
    """Make every send and receive on ``sock`` give up after ``seconds``.

    On Linux the kernel does it (``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on a blocking
    socket), which spares the ``poll()`` Python's own timeouts make before each call;
    a timeout then shows as a short read, i.e. a broken connection.
    """
    if sys.platform != "linux":
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


@functools.lru_cache(maxsize=256)
def _tubes(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_tube(name) for name in names)


def _seconds(value: float) -> int:
    """Whole seconds for beanstalkd, rounded up so a delay is never cut short."""
    return max(0, math.ceil(value))


def _job_stats(client: _Client, jid: int | None) -> dict[bytes, bytes] | None:
    """Read the reply to ``stats-job jid`` (nothing if ``jid`` is None): ``{b"key:": value}``."""
    if jid is None:
        return None
    try:
        (length,) = client.reply(b"OK")
    except greenstalk.NotFoundError:
        return None
    words = client.chunk(int(length)).split()  # "---", then "key:" "value" pairs; no value has a space
    return dict(zip(words[1::2], words[2::2], strict=True))


def _stem(prefix: str, tube: str) -> str:
    """The start of the names of ``tube``'s reason-record or settle-marker tubes: ``tube``
    itself, or a digest of it when the whole name would pass beanstalkd's 200 bytes."""
    stem = f"{prefix}{tube}/"
    if len(stem) + 35 > MAX_TUBE:  # room for "<13-digit ms>/<20-digit id>"
        stem = f"{prefix}${hashlib.sha256(tube.encode()).hexdigest()[:40]}/"
    return stem


def _held_stem(tube: str) -> str:
    return _stem(HELD_PREFIX, tube)


def _marker_tube(tube: str, jid: int) -> str:
    """The tube of job ``jid``'s settle marker."""
    return f"{_stem(SETTLED_PREFIX, tube)}{jid}"


def _counts(conn: _Conn, client: _Client, tube: str, jid: int, stats: dict[bytes, bytes]) -> _Counts:
    """Earlier deliveries of a job just reserved, from its stats and, if it was ever released
    or kicked, its settle marker (one more round trip then)."""
    reserves, releases, buries, kicks = (int(stats[key]) for key in (b"reserves:", b"releases:", b"buries:", b"kicks:"))
    unsettled = max(reserves - 1 - releases - buries, 0)
    if releases + kicks == 0:
        return _Counts(unsettled)
    marker_tube = _marker_tube(tube, jid)
    found = conn.peek_marker(client, marker_tube)
    if found is None:
        return _Counts(unsettled)
    base, skip = _count(found[1], "base"), _count(found[1], "skip")
    if base > unsettled or skip > releases:
        _drop_marker(conn, client, marker_tube, found[1], f"unsettled {unsettled}, releases {releases}")
        return _Counts(unsettled)
    return _Counts(unsettled, base, skip, found[0])


def _drop_marker(conn: _Conn, client: _Client, marker_tube: str, fields: Mapping[str, Any], counted: str) -> None:
    """Remove a settle marker that does not fit its job's ``stats-job`` (forged by another client,
    or older than a restart that reset the counters), so it is ignored, and logged, once."""
    log.warning(
        "beanstalkd %s: ignored and removed the settle marker in %s (%s does not fit the job's %s)",
        conn.key,
        marker_tube,
        json.dumps(fields)[:200],
        counted,
    )
    conn.write_marker(client, marker_tube, 0, 0)


def _mark_kicked(conn: _Conn, client: _Client, tube: str, jid: int, info: Mapping[str, Any]) -> None:
    """Before kicking a held job: its marker's base becomes every unfinished run so far."""
    unsettled = max(info["reserves"] - info["releases"] - info["buries"], 0)
    marker_tube = _marker_tube(tube, jid)
    found = conn.peek_marker(client, marker_tube) if info["releases"] + info["kicks"] > 0 else None
    skip = _count(found[1], "skip") if found else 0
    if skip > info["releases"]:  # forged, or older than a restart: as in _counts, it does not count
        skip = 0
    if unsettled or skip or found:
        conn.write_marker(client, marker_tube, unsettled, skip)


def _count(fields: Mapping[str, Any], key: str) -> int:
    """A count from a marker's fields (0 for anything else another client may have put there)."""
    value = fields.get(key)
    return value if type(value) is int and 0 <= value < 2**32 else 0


def _parse_record_tube(rest: str) -> tuple[int, int] | None:
    """``(held_ms, job id)`` from the part of a record tube's name after the stem."""
    ms, _, jid = rest.partition("/")
    return (int(ms), int(jid)) if ms.isdigit() and jid.isdigit() else None


def _fit(record: dict[str, Any], limit: int) -> bytes:
    """The record as UTF-8 JSON, its reason shortened until it fits in ``limit`` bytes (what
    UTF-8 cannot carry, such as a lone surrogate, is escaped as ``\\udc80``)."""
    reason = str(record["reason"]).encode("utf-8", "backslashreplace").decode("utf-8")
    data = json.dumps({**record, "reason": reason}, ensure_ascii=False).encode()
    while len(data) > limit and len(reason) > 1:
        reason = reason[: max(0, len(reason) - (len(data) - limit) - 64)] + "…"
        data = json.dumps({**record, "reason": reason}, ensure_ascii=False).encode()
    return data


def _found(call: Callable[[], T]) -> T | None:
    """``call()``, or None when beanstalkd answers NOT_FOUND."""
    try:
        return call()
    except greenstalk.NotFoundError:
        return None


def _loads(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse_url(url: str) -> tuple[list[Server], dict[str, str]]:
    """``beanstalkd://H:P,H:P?connect_timeout=2`` -> servers and options."""
    rest = url.partition("://")[2]
    hosts, _, query = rest.partition("?")
    hosts = hosts.rstrip("/")
    if not hosts:
        return [Server(DEFAULT_HOST)], dict(parse_qsl(query, keep_blank_values=True))
    servers = [_parse_hostport(part.strip(), url) for part in hosts.split(",")]
    _check_unique(servers, "queue.backend")
    return servers, dict(parse_qsl(query, keep_blank_values=True))


def _parse_hostport(text: str, url: str) -> Server:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or (port and not port.isdigit()) or not 0 < int(port or DEFAULT_PORT) < 65536:
        raise ConfigError(f"queue.backend: beanstalkd URLs look like beanstalkd://HOST:PORT[,HOST:PORT], not {url!r}")
    return Server(host, int(port or DEFAULT_PORT))


def _parse_servers(value: Any) -> list[Server]:
    where = "queue.beanstalkd.servers"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list like [{{ host = '127.0.0.1', port = 11300 }}]")
    servers = []
    for i, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}[{i}]: must be a table with host and port, not {spec!r}")
        unknown = set(spec) - {"host", "port"}
        if unknown:
            raise ConfigError(f"{where}[{i}].{sorted(unknown)[0]}: unknown key (expected host, port)")
        host, port = spec.get("host", DEFAULT_HOST), spec.get("port", DEFAULT_PORT)
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{where}[{i}].host: must be a host name, not {host!r}")
        if type(port) is not int or not 0 < port < 65536:
            raise ConfigError(f"{where}[{i}].port: must be a port number, not {port!r}")
        servers.append(Server(host, port))
    _check_unique(servers, where)
    return servers


def _check_unique(servers: list[Server], where: str) -> None:
    keys = [s.key for s in servers]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}: a server is listed twice ({', '.join(keys)})")


def _timeout(key: str, value: Any) -> float:
    """A finite number of seconds above 0 for ``key`` (NaN, inf, 0, negatives, text refused)."""
    where = f"queue.beanstalkd.{key}"
    if key not in OPTIONS or key == "servers":
        raise ConfigError(f"{where}: unknown option (expected connect_timeout, io_timeout; servers in the host part)")
    return options.seconds(where, value)
