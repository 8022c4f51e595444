"""The adapter contract: message-level operations, and the capabilities they declare.

An adapter moves opaque bodies (bytes) between producers and workers. Everything a
task means (names, data, retries, signatures) lives above it, in the core. Each
adapter module implements :class:`Adapter` for one backend and declares, once, in a
:class:`Capabilities` value, what the backend does natively, what the adapter
emulates (and how), and what it cannot do.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from lilqueue.errors import UnsupportedError

Level = Literal["native", "emulated", "none"]
FEATURES = (
    "priority",
    "delay",
    "ttr",
    "touch",
    "retry",
    "hold",
    "kick",
    "stats",
    "blocking_reserve",
    "fifo",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Support:
    """How one feature is provided: ``native``, ``emulated`` (with how) or ``none``."""

    level: Level
    how: str = ""

    def __bool__(self) -> bool:
        return self.level != "none"


def native(how: str = "") -> Support:
    return Support("native", how)


def emulated(how: str) -> Support:
    return Support("emulated", how)


def missing(why: str = "") -> Support:
    return Support("none", why)


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend does, per feature. Docs, the CLI and the conformance suite read this."""

    priority: Support
    delay: Support
    ttr: Support
    touch: Support
    retry: Support
    hold: Support
    kick: Support
    stats: Support
    blocking_reserve: Support
    fifo: Support = Support("native", "first in, first out within one priority")
    durable: bool = True
    notes: str = ""

    def rows(self) -> list[tuple[str, Support]]:
        """The features in their documented order, as (name, support) pairs."""
        return [(name, getattr(self, name)) for name in FEATURES]


@dataclasses.dataclass(slots=True)
class Job:
    """A message the backend has handed to this worker (reserved, under a lease).

    ``deliveries`` counts how many times the backend has handed out this message,
    1 on the first reservation. ``unfinished`` counts the earlier deliveries that never
    reached an outcome (the worker died, was killed by the watchdog, or its lease
    lapsed): a retry, a hold or a kick settles them, so it is 0 again after any of
    those. The runner holds a message without running it once ``unfinished`` reaches
    the worker's ``max_attempts``. ``receipt`` is the adapter's own handle.
    """

    id: str
    queue: str
    body: bytes
    priority: int
    ttr: int
    deliveries: int = 1
    receipt: Any = None
    unfinished: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class HeldJob:
    """A held ("buried") message, with why and when (epoch seconds) it was held."""

    id: str
    queue: str
    body: bytes
    reason: str | None
    held_at: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Peeked:
    """A message looked at without reserving it."""

    id: str
    queue: str
    body: bytes
    priority: int | None = None


PeekState = Literal["ready", "delayed", "held"]


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts per state; ``None`` where the backend cannot tell (never shown as 0)."""

    ready: int | None
    delayed: int | None
    reserved: int | None
    held: int | None
    approximate: bool = False

    def as_dict(self) -> dict[str, int | None]:
        return {
            "ready": self.ready,
            "delayed": self.delayed,
            "reserved": self.reserved,
            "held": self.held,
        }


class Adapter(abc.ABC):
    """One backend connection (per process, per thread unless ``thread_safe``).

    Times are in seconds. Every method raises :class:`lilqueue.BackendConnectionError`
    (chained from the driver's own error) when the backend cannot be reached.
    """

    capabilities: ClassVar[Capabilities]
    #: True when one instance may be shared by several threads.
    thread_safe: ClassVar[bool] = False
    #: The largest body the backend accepts, in bytes (None: no practical limit).
    max_body: ClassVar[int | None] = None
    #: The longest queue name (as the backend names it, prefix included), in UTF-8 bytes:
    #: lilqueue's own limit, lowered by adapters whose backend has a smaller one.
    max_queue_name: ClassVar[int | None] = 255

    @classmethod
    def queue_name_problem(cls, name: str) -> str | None:
        """Why ``name`` cannot name a queue on this backend, or None if it can.

        The base rule refuses what no backend carries safely: an empty name, control
        characters (newline, NUL, ...), text that is not valid UTF-8 (a lone surrogate)
        and names over :attr:`max_queue_name` bytes. Adapters extend it with their
        backend's own rules (call ``super()`` first).
        """
        if not isinstance(name, str) or not name:
            return "a queue name must be a non-empty string"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            return "a queue name must not contain control characters (newline, tab, NUL, ...)"
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            return "a queue name must be valid Unicode text (it has a lone surrogate)"
        if cls.max_queue_name is not None and size > cls.max_queue_name:
            return f"a queue name may be at most {cls.max_queue_name} bytes here ({size} given)"
        return None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, url: str | None, options: Mapping[str, Any]) -> Adapter:
        """Build from a backend URL and the ``[queue.<backend>]`` options.

        Raises :class:`lilqueue.ConfigError` naming any bad key.
        """

    @abc.abstractmethod
    def put(self, queue: str, body: bytes, *, priority: int, delay: float, ttr: int) -> str:
        """Add a message; return its backend-unique id once the backend has it."""

    @abc.abstractmethod
    def reserve(self, queues: Sequence[str], timeout: float) -> Job | None:
        """Take the most urgent ready message of ``queues``, waiting up to ``timeout``."""

    @abc.abstractmethod
    def delete(self, job: Job) -> None:
        """Finish a reserved message: it is gone."""

    @abc.abstractmethod
    def release(self, job: Job, *, priority: int, delay: float) -> None:
        """Put a reserved message back, ready again after ``delay``."""

    def unreserve(self, job: Job) -> None:
        """Hand back a message reserved but never started (the worker is stopping).

        It is ready again at once, with its priority, and this delivery does not count:
        the next run sees the same ``deliveries`` and ``unfinished`` as this one would
        have. The default releases it; adapters whose release counts a delivery override.
        """
        self.release(job, priority=job.priority, delay=0)

    def give_back(self) -> None:  # noqa: B027 - a no-op is the right default
        """Return at once every message taken from the backend but not yet handed out by
        :meth:`reserve` (prefetched by a poll thread, say). Called when a runner stops."""

    @abc.abstractmethod
    def bury(self, job: Job, *, reason: str) -> None:
        """Hold a reserved message for inspection, remembering why and when."""

    def touch(self, job: Job) -> None:
        """Extend the reservation of ``job`` by its ttr."""
        raise UnsupportedError(f"{type(self).__name__} cannot touch a task")

    def kick(self, queue: str, count: int) -> int:
        """Make up to ``count`` held messages of ``queue`` ready; return how many."""
        raise UnsupportedError(f"{type(self).__name__} cannot kick held tasks")

    def kick_id(self, queue: str, id: str) -> bool:
        """Make the held message ``id`` ready; False when no such held message."""
        raise UnsupportedError(f"{type(self).__name__} cannot kick held tasks")

    def delete_id(self, queue: str, id: str) -> bool:
        """Remove the message ``id`` in any state but reserved; False if not found."""
        raise UnsupportedError(f"{type(self).__name__} cannot delete by id")

    def held(self, queue: str, limit: int = 100) -> list[HeldJob]:
        """The held messages of ``queue``, oldest first."""
        raise UnsupportedError(f"{type(self).__name__} cannot list held tasks")

    def peek(self, queue: str, state: PeekState) -> Peeked | None:
        """The next message in ``state`` without reserving it."""
        raise UnsupportedError(f"{type(self).__name__} cannot peek")

    def stats(self, queue: str) -> QueueStats:
        """Counts for ``queue``; ``None`` for what the backend cannot tell."""
        return QueueStats(None, None, None, None)

    def flush(self) -> None:  # noqa: B027 - a no-op is the right default
        """Send or commit now what ``delete`` held back to go with the next request.

        An adapter may pipeline a delete (the ack) with its next request; the runner
        calls this when it stops and before its after-task hooks, so that no ack waits
        on anything but the next reservation.
        """

    def close(self) -> None:  # noqa: B027 - a no-op is the right default
        """Release connections. The adapter may not be used afterwards."""
