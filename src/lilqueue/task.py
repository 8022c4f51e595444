"""Task: what a producer adds and a worker receives, with the worker's outcomes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from lilqueue.errors import TaskError

if TYPE_CHECKING:
    from lilqueue.handler import QueueHandler

MAX_PRIORITY = 2**32 - 1
MAX_SECONDS = 2**32 - 1
OutcomeKind = Literal["success", "retry", "hold"]


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker decided: success, retry after ``delay`` seconds, or hold for ``reason``."""

    kind: OutcomeKind
    delay: float | None = None
    reason: str | None = None


def check_priority(value: Any) -> int:
    """Return ``value`` if it is a valid priority (0 <= p < 2**32), else raise TaskError."""
    if type(value) is not int or not 0 <= value <= MAX_PRIORITY:
        raise TaskError(f"priority must be an integer 0 <= p < 2**32 (lower runs first), not {value!r}")
    return value


def check_delay(value: Any) -> float:
    """Return ``value`` if it is a valid delay in seconds, else raise TaskError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SECONDS:
        raise TaskError(f"delay must be a number of seconds 0 <= d < 2**32, not {value!r}")
    return value


def check_ttr(value: Any) -> int:
    """Return ``value`` if it is a valid time-to-run in whole seconds, else raise TaskError."""
    if type(value) is not int or not 1 <= value <= MAX_SECONDS:
        raise TaskError(f"ttr must be a whole number of seconds 1 <= t < 2**32, not {value!r}")
    return value


class Task:
    """A unit of work: a name, JSON data, and the context it was created in.

    Producers build one with :meth:`lilqueue.App.create_task` and optionally chain
    :meth:`set_priority`, :meth:`set_delay` and :meth:`set_ttr`. Workers receive one
    with ``id``, ``queue`` and ``attempts`` (1 on the first run) filled in, and may
    decide its outcome with :meth:`success`, :meth:`retry` or :meth:`hold`, or ask
    for more time with :meth:`touch`.
    """

    __slots__ = (
        "_toucher",
        "attempts",
        "context",
        "data",
        "delay",
        "envelope_id",
        "id",
        "name",
        "outcome",
        "priority",
        "queue",
        "ttr",
    )

    def __init__(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        delay: float | None = None,
        ttr: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TaskError(f"task name must be a non-empty string, not {name!r}")
        if data is not None and not isinstance(data, dict):
            raise TaskError(f"task data must be a dict, not {type(data).__name__}")
        if context is not None and not isinstance(context, dict):
            raise TaskError(f"task context must be a dict, not {type(context).__name__}")
        self.name = name
        #: a dict for tasks lilqueue produced; from the seed's PHP format, any JSON value
        self.data: Any = data if data is not None else {}
        self.context: dict[str, Any] = context if context is not None else {}
        self.priority = None if priority is None else check_priority(priority)
        self.delay = None if delay is None else check_delay(delay)
        self.ttr = None if ttr is None else check_ttr(ttr)
        self.id: str | None = None
        self.envelope_id = ""
        self.queue: QueueHandler | None = None
        self.attempts = 0
        self.outcome: Outcome | None = None
        self._toucher: Callable[[Task], None] | None = None

    def __repr__(self) -> str:
        return f"<Task {self.name!r} id={self.id!r} attempts={self.attempts}>"

    # -- producer side ---------------------------------------------------------

    def set_priority(self, priority: int) -> Task:
        """Set the priority (0 <= p < 2**32, lower runs first). Chainable."""
        self.priority = check_priority(priority)
        return self

    def set_delay(self, delay: float) -> Task:
        """Set the delay in seconds before the task becomes ready. Chainable."""
        self.delay = check_delay(delay)
        return self

    def set_ttr(self, ttr: int) -> Task:
        """Set the time to run, in seconds, before another worker may take it. Chainable."""
        self.ttr = check_ttr(ttr)
        return self

    # -- worker side -------------------------------------------------------------

    def success(self) -> None:
        """Finish the task: it is deleted from the queue."""
        self._decide(Outcome("success"))

    def retry(self, delay: float | None = None) -> None:
        """Put the task back, ready after ``delay`` seconds (default: the queue's backoff)."""
        self._decide(Outcome("retry", delay=None if delay is None else check_delay(delay)))

    def hold(self, reason: str | None = None) -> None:
        """Park the task for inspection; it does not run again until kicked."""
        self._decide(Outcome("hold", reason=reason))

    def touch(self) -> None:
        """Still working: extend the reservation by another ``ttr`` seconds.

        Raises :class:`TaskError` outside a worker, and
        :class:`lilqueue.UnsupportedError` where the backend cannot touch.
        """
        if self._toucher is None:
            raise TaskError("touch() is for a task a worker is running")
        self._toucher(self)

    def _decide(self, outcome: Outcome) -> None:
        if self._toucher is None:
            raise TaskError(f"{outcome.kind}() is for a task a worker is running")
        if self.outcome is not None:
            raise TaskError(f"this task's outcome is already {self.outcome.kind}()")
        self.outcome = outcome
