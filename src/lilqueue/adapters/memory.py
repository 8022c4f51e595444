"""``memory://[NAME]``: an in-process backend for users' own tests. Nothing persists.

It keeps every promise the real backends keep (priority, delay, TTR leases, touch,
hold with reason, kick, stats, peek, blocking reserve) so a test written against it
behaves the same on a server. Every ``App`` in the process using the same URL shares
one broker, whatever thread it runs in.

Attempt accounting matches the durable backends: ``deliveries`` counts reservations,
``settled`` is ``deliveries`` at the last outcome (retry, hold, kick), so a lease that
lapsed with no outcome shows up in ``Job.unfinished``; ``unreserve`` takes a delivery back.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

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
from lilqueue.errors import ConfigError

State = Literal["waiting", "reserved", "held"]


@dataclasses.dataclass(slots=True)
class _Message:
    id: int
    queue: str
    body: bytes
    priority: int
    ttr: int
    due: float  # waiting: when ready; reserved: when the lease lapses (monotonic seconds)
    state: State = "waiting"
    deliveries: int = 0
    settled: int = 0  # deliveries at the last outcome (retry, hold, kick)
    reason: str | None = None
    held_at: float | None = None
    version: int = 0  # bumped on every change; heap entries of older versions are stale

    def takeable(self, now: float) -> bool:
        return self.state != "held" and self.due <= now


class _Queue:
    """One queue's indexes: ready (priority, id) and timed (due: delays and leases) heaps.

    Entries are never removed in place: each carries the message's version, and an
    entry whose message has since changed (or gone) is skipped when it surfaces.
    """

    __slots__ = ("ready", "timed")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, int]] = []  # (priority, id, version)
        self.timed: list[tuple[float, int, int]] = []  # (due, id, version)


class MemoryBroker:
    """The shared state behind one ``memory://NAME`` URL."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: dict[int, _Message] = {}
        self.queues: dict[str, _Queue] = {}
        self.ids = itertools.count(1)

    def reset(self) -> None:
        """Forget every message (handy between tests)."""
        with self.cond:
            self.messages.clear()
            self.queues.clear()

    def index(self, msg: _Message, now: float) -> None:
        """File ``msg`` (after a change) under ready or timed; call with the lock held."""
        msg.version += 1
        q = self.queues.get(msg.queue) or self.queues.setdefault(msg.queue, _Queue())
        if msg.state == "waiting" and msg.due <= now:
            heapq.heappush(q.ready, (msg.priority, msg.id, msg.version))
        elif msg.state != "held":
            heapq.heappush(q.timed, (msg.due, msg.id, msg.version))

    def head(self, name: str, now: float) -> _Message | None:
        """The most urgent takeable message of queue ``name``, promoting what fell due."""
        q = self.queues.get(name)
        if q is None:
            return None
        while q.timed and q.timed[0][0] <= now:
            _, id, version = heapq.heappop(q.timed)
            msg = self.messages.get(id)
            if msg is not None and msg.version == version:
                heapq.heappush(q.ready, (msg.priority, msg.id, msg.version))
        while q.ready:
            _, id, version = q.ready[0]
            msg = self.messages.get(id)
            if msg is not None and msg.version == version:
                return msg
            heapq.heappop(q.ready)
        return None

    def next_due(self, name: str) -> float | None:
        q = self.queues.get(name)
        while q is not None and q.timed:
            _, id, version = q.timed[0]
            msg = self.messages.get(id)
            if msg is not None and msg.version == version:
                return msg.due
            heapq.heappop(q.timed)
        return None


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker(name: str = "") -> MemoryBroker:
    """The broker behind ``memory://NAME`` (created on first use)."""
    with _brokers_lock:
        return _brokers.setdefault(name, MemoryBroker())


class MemoryAdapter(Adapter):
    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=native(),
        delay=native(),
        ttr=native("leases lapse after ttr; the task is handed out again"),
        touch=native(),
        retry=native(),
        hold=native("with reason and time"),
        kick=native(),
        stats=native(),
        blocking_reserve=native("threading.Condition"),
        durable=False,
        notes="in-process only; for tests",
    )
    thread_safe: ClassVar[bool] = True

    def __init__(self, name: str = "") -> None:
        self.broker = broker(name)

    @classmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> MemoryAdapter:
        if options:
            raise ConfigError(f"queue.memory.{sorted(options)[0]}: the memory backend takes no options")
        name = (url or "memory://").partition("://")[2]
        return cls(name.strip("/"))

    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        b = self.broker
        with b.cond:
            now = time.monotonic()
            msg = _Message(next(b.ids), queue, body, priority, ttr, now + delay)
            b.messages[msg.id] = msg
            b.index(msg, now)
            b.cond.notify_all()
        return str(msg.id)

    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        b = self.broker
        deadline = time.monotonic() + timeout
        with b.cond:
            while True:
                now = time.monotonic()
                heads = [m for m in (b.head(q, now) for q in queues) if m is not None]
                if heads:
                    return self._lease(min(heads, key=lambda m: (m.priority, m.id)), now)
                if now >= deadline:
                    return None
                dues = [d for d in (b.next_due(q) for q in queues) if d is not None]
                b.cond.wait(min([deadline, *dues]) - now)

    def _lease(self, msg: _Message, now: float) -> Job:
        msg.state, msg.due = "reserved", now + msg.ttr
        msg.deliveries += 1
        self.broker.index(msg, now)
        unfinished = msg.deliveries - 1 - msg.settled
        return Job(str(msg.id), msg.queue, msg.body, msg.priority, msg.ttr, msg.deliveries, msg.deliveries, unfinished)

    def _mine(self, job: Job) -> _Message | None:
        """The message if ``job`` still holds its lease (not lapsed and taken by another)."""
        msg = self.broker.messages.get(int(job.id))
        if msg is None or msg.state != "reserved" or msg.deliveries != job.receipt:
            return None
        return msg

    def delete(self, job: Job) -> None:
        with self.broker.cond:
            if self._mine(job) is not None:
                del self.broker.messages[int(job.id)]

    def release(self, job: Job, *, priority: int, delay: float) -> None:
        with self.broker.cond:
            if (msg := self._mine(job)) is not None:
                now = time.monotonic()
                msg.state, msg.priority, msg.due = "waiting", priority, now + delay
                msg.settled = msg.deliveries
                self.broker.index(msg, now)
                self.broker.cond.notify_all()

    def unreserve(self, job: Job) -> None:
        """Ready again at once, and this delivery taken back: the next one counts the same."""
        with self.broker.cond:
            if (msg := self._mine(job)) is not None:
                now = time.monotonic()
                msg.state, msg.due = "waiting", now
                msg.deliveries -= 1
                self.broker.index(msg, now)
                self.broker.cond.notify_all()

    def bury(self, job: Job, *, reason: str) -> None:
        with self.broker.cond:
            if (msg := self._mine(job)) is not None:
                msg.state, msg.held_at = "held", time.time()
                msg.reason = _storable(reason)
                msg.settled = msg.deliveries
                self.broker.index(msg, time.monotonic())

    def touch(self, job: Job) -> None:
        with self.broker.cond:
            if (msg := self._mine(job)) is not None:
                msg.due = time.monotonic() + msg.ttr
                self.broker.index(msg, time.monotonic())

    def _held(self, queue: str) -> list[_Message]:
        held = [m for m in self.broker.messages.values() if m.queue == queue and m.state == "held"]
        return sorted(held, key=lambda m: (m.held_at or 0, m.id))

    def kick(self, queue: str, count: int) -> int:
        with self.broker.cond:
            held = self._held(queue)[: max(count, 0)]
            for msg in held:
                self._unhold(msg)
                self.broker.index(msg, msg.due)
            self.broker.cond.notify_all()
        return len(held)

    def kick_id(self, queue: str, id: str) -> bool:
        with self.broker.cond:
            msg = self.broker.messages.get(_int(id))
            if msg is None or msg.queue != queue or msg.state != "held":
                return False
            self._unhold(msg)
            self.broker.index(msg, msg.due)
            self.broker.cond.notify_all()
        return True

    @staticmethod
    def _unhold(msg: _Message) -> None:
        msg.state, msg.due, msg.reason, msg.held_at = "waiting", time.monotonic(), None, None
        msg.settled = msg.deliveries

    def delete_id(self, queue: str, id: str) -> bool:
        with self.broker.cond:
            msg = self.broker.messages.get(_int(id))
            if msg is None or msg.queue != queue:
                return False
            del self.broker.messages[msg.id]
        return True

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        with self.broker.cond:
            oldest = self._held(queue)[: max(limit, 0)]
        return [HeldJob(str(m.id), m.queue, m.body, m.reason, m.held_at) for m in oldest]

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        with self.broker.cond:
            now = time.monotonic()
            mine = [m for m in self.broker.messages.values() if m.queue == queue]
            if state == "held":
                found = self._held(queue)[:1]
            elif state == "ready":
                found = sorted((m for m in mine if m.takeable(now)), key=lambda m: (m.priority, m.id))[:1]
            else:
                found = sorted((m for m in mine if m.state == "waiting" and m.due > now), key=lambda m: m.due)[:1]
            return Peeked(str(found[0].id), queue, found[0].body, found[0].priority) if found else None

    def stats(self, queue: str) -> QueueStats:
        with self.broker.cond:
            now = time.monotonic()
            counts = {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}
            for m in self.broker.messages.values():
                if m.queue == queue:
                    counts[_state_name(m, now)] += 1
        return QueueStats(counts["ready"], counts["delayed"], counts["reserved"], counts["held"])


def _state_name(m: _Message, now: float) -> str:
    if m.state == "held":
        return "held"
    if m.state == "reserved":
        return "reserved" if m.due > now else "ready"
    return "ready" if m.due <= now else "delayed"


def _int(id: str) -> int:
    """The message id ``id`` names, or -1 (none) for anything that is not one."""
    return int(id) if isinstance(id, str) and id.isascii() and id.isdigit() else -1


def _storable(text: str) -> str:
    """``text`` as the durable backends store it: a lone surrogate becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
