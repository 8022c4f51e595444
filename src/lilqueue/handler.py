"""QueueHandler (one per queue and process) and the Worker base class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lilqueue import wire
from lilqueue.adapters.base import PeekState, QueueStats
from lilqueue.config import RetryPolicy
from lilqueue.errors import LilqueueError, TaskError
from lilqueue.task import Task

if TYPE_CHECKING:
    from lilqueue.app import App

WorkerFunc = Callable[[Task], object]
F = TypeVar("F", bound=WorkerFunc)


class Worker:
    """Base class for class-based workers. One instance per process (a singleton).

    Register with ``queue.add_worker("task", MyWorker, method="send")``; the method
    receives the :class:`Task`.
    """

    def run(self, task: Task) -> object:
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")


@dataclasses.dataclass(slots=True)
class WorkerSpec:
    """A registered worker: a function, or a Worker class and method name."""

    target: WorkerFunc | type[Worker]
    method: str = ""
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    _bound: WorkerFunc | None = None

    def callable(self, app: App) -> WorkerFunc:
        """The function to call, creating the class's per-process instance on first use."""
        if self._bound is None:
            if isinstance(self.target, type):
                bound: WorkerFunc = getattr(app.worker_instance(self.target), self.method)
                self._bound = bound
            else:
                self._bound = self.target
        return self._bound


@dataclasses.dataclass(frozen=True, slots=True)
class HeldTask:
    """A held task as ``lilqueue held`` shows it; ``task``/``data`` are None for garbage."""

    id: str
    task: str | None
    data: dict[str, Any] | None
    reason: str | None
    held_at: float | None
    body: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "data": self.data, "reason": self.reason, "held_at": self.held_at}


class QueueHandler:
    """A named queue: its workers, and the resources they share.

    Subclass it to hold what the queue's workers share (clients, caches); lilqueue
    makes one instance per process and queue, reachable as ``task.queue``.
    """

    label: str = ""

    def __init__(self, app: App, name: str, *, label: str | None = None, retry: RetryPolicy | None = None) -> None:
        self.app = app
        self.name = name
        if label is not None:
            self.label = label
        self.retry = retry or app.settings.retry
        self.workers: dict[str, WorkerSpec] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- declaring workers -------------------------------------------------------

    def worker(self, task_name: str | None = None, **retry: Any) -> Callable[[F], F]:
        """Decorator: register a function as the worker for ``task_name`` (default: its name).

        ``max_attempts``, ``backoff`` and ``backoff_max`` override the queue's retry policy.
        """

        def register(func: F) -> F:
            self._register(task_name or func.__name__, WorkerSpec(func, retry=self._policy(retry)))
            return func

        return register

    def add_worker(self, task_name: str, worker: type[Worker] | WorkerFunc, method: str = "run", **retry: Any) -> None:
        """Register a worker: a :class:`Worker` subclass and method name, or a function."""
        if isinstance(worker, type):
            if not hasattr(worker, method):
                raise TaskError(f"{worker.__name__} has no method {method!r} for task {task_name!r}")
            spec = WorkerSpec(worker, method, self._policy(retry))
        else:
            spec = WorkerSpec(worker, retry=self._policy(retry))
        self._register(task_name, spec)

    def _register(self, task_name: str, spec: WorkerSpec) -> None:
        if not isinstance(task_name, str) or not task_name:
            raise TaskError(f"task name must be a non-empty string, not {task_name!r}")
        self.workers[task_name] = spec

    def _policy(self, retry: dict[str, Any]) -> RetryPolicy:
        from lilqueue.config import retry_policy

        return retry_policy(retry, f"queues.{self.name}", self.retry) if retry else self.retry

    # -- producing ---------------------------------------------------------------

    def add_task(self, task: Task) -> str:
        """Send ``task`` to this queue; return its backend-unique id.

        Raises :class:`TaskError` (nothing sent) for bad data, priority, delay or ttr.
        """
        return self.app.add_task(self.name, task)

    def send(
        self,
        task_name: str,
        data: dict[str, Any] | None = None,
        *,
        context: dict[str, Any] | None = None,
        priority: int | None = None,
        delay: float | None = None,
        ttr: int | None = None,
    ) -> str:
        """Create and add a task in one call; return its id."""
        task = self.app.create_task(task_name, data, context)
        if priority is not None:
            task.set_priority(priority)
        if delay is not None:
            task.set_delay(delay)
        if ttr is not None:
            task.set_ttr(ttr)
        return self.add_task(task)

    # -- operating ---------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        """This queue's name on the backend (the configured ``prefix`` plus its name)."""
        return self.app.settings.prefix + self.name

    def stats(self) -> QueueStats:
        """Ready, delayed, reserved and held counts (None where the backend cannot tell)."""
        return self.app.adapter.stats(self.backend_name)

    def held(self, limit: int = 100) -> list[HeldTask]:
        """The held tasks, oldest first, with the reason each was held."""
        return [
            self._held_task(h.id, h.body, h.reason, h.held_at) for h in self.app.adapter.held(self.backend_name, limit)
        ]

    def _held_task(self, id: str, body: bytes, reason: str | None, held_at: float | None) -> HeldTask:
        try:
            env = wire.decode(body)
        except LilqueueError:
            return HeldTask(id, None, None, reason, held_at, body)
        return HeldTask(id, env.task, env.data, reason, held_at, body)

    def kick(self, count: int = 1) -> int:
        """Make up to ``count`` held tasks ready again; return how many were."""
        return self.app.adapter.kick(self.backend_name, count)

    def kick_id(self, id: str) -> bool:
        """Make the held task ``id`` ready again; False if there is no such held task."""
        return self.app.adapter.kick_id(self.backend_name, id)

    def delete(self, id: str) -> bool:
        """Remove the task ``id`` (ready, delayed or held); False if not found."""
        return self.app.adapter.delete_id(self.backend_name, id)

    def peek(self, state: PeekState = "ready") -> Task | None:
        """The next task in ``state`` ("ready", "delayed" or "held"), not reserved."""
        peeked = self.app.adapter.peek(self.backend_name, state)
        if peeked is None:
            return None
        env = wire.decode(peeked.body)
        task = Task(env.task, env.data, env.context, priority=peeked.priority)
        task.id, task.envelope_id, task.queue, task.attempts = peeked.id, env.id, self, env.attempts
        return task
