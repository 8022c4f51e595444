"""App: settings -> adapter; the queue registry; creating and adding tasks."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from lilqueue import wire
from lilqueue.adapters import adapter_class, create_adapter
from lilqueue.adapters.base import Adapter, Capabilities
from lilqueue.config import Settings, import_path, load_settings, retry_policy
from lilqueue.connections import Connections
from lilqueue.errors import BackendError, ConfigError, TaskError
from lilqueue.handler import QueueHandler, Worker
from lilqueue.task import Task, check_delay, check_priority, check_ttr

if TYPE_CHECKING:
    from lilqueue.runner import FailureHook, TaskHook

H = TypeVar("H", bound=QueueHandler)
W = TypeVar("W", bound=Worker)
ContextCapture = Callable[[], dict[str, Any]]
ContextApply = Callable[[dict[str, Any]], AbstractContextManager[object]]
_apps: weakref.WeakSet[App] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child uses (and closes) none of the parent's connections: see connections.py."""
    for app in list(_apps):
        app._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)


class App:
    """A lilqueue application: one backend, its queues and their workers.

    ``App()`` reads ``./lilqueue.toml`` (or ``$LILQUEUE_CONFIG``) and ``LILQUEUE_*``
    variables; with nothing configured it uses the embedded SQLite file
    ``./lilqueue.db``. Keyword arguments override both. Nothing connects until the
    first operation that needs the backend.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        secret: str | bytes | None = None,
        wire: wire.Format | None = None,
        prefix: str | None = None,
        settings: Settings | None = None,
        **retry: Any,
    ) -> None:
        self.settings = settings or load_settings(
            config, backend=backend, secret=secret, wire=wire, prefix=prefix, **retry
        )
        self._queues: dict[str, QueueHandler] = {}
        self._by_backend_name: dict[str, QueueHandler] = {}
        self._local = threading.local()
        self._connections = Connections(functools.partial(create_adapter, self.settings))
        self._workers: dict[type[Worker], Worker] = {}
        self._captures: list[ContextCapture] = []
        self._appliers: list[ContextApply] = []
        self.before_task_hooks: list[TaskHook] = []
        self.after_task_hooks: list[TaskHook] = []
        self.failure_hooks: list[FailureHook] = []
        self._declare_configured_queues()
        _apps.add(self)

    def __repr__(self) -> str:
        return f"<lilqueue.App backend={self.settings.backend!r} queues={list(self._queues)}>"

    # -- the backend -------------------------------------------------------------

    @property
    def adapter(self) -> Adapter:
        """This thread's connection to the backend, made (or reused) on first use.

        It goes back to the app when the thread ends: kept for the next new thread
        (a few at most) or closed. See :mod:`lilqueue.connections`.
        """
        adapter: Adapter | None = getattr(self._local, "adapter", None)
        return adapter if adapter is not None else self._connect()

    def _connect(self) -> Adapter:
        adapter, slot = self._connections.take()
        self._local.slot = slot  # dropped when the thread ends: the adapter goes back
        self._local.lock = threading.RLock()
        self._local.adapter = adapter
        return adapter

    def _forget_connections(self) -> None:
        """In a forked child: the parent's connections are not ours to use (or close)."""
        self._connections = Connections(functools.partial(create_adapter, self.settings))
        self._local = threading.local()

    @property
    def adapter_lock(self) -> threading.RLock:
        """Serialises this thread's adapter between the worker and its auto-touch thread."""
        _ = self.adapter
        lock: threading.RLock = self._local.lock
        return lock

    def reset_adapter(self) -> None:
        """Drop this thread's connection (after a connection error); the next use reconnects."""
        adapter: Adapter | None = getattr(self._local, "adapter", None)
        self._local.adapter = None
        if adapter is not None:
            self._connections.discard(adapter)  # closed, never reused: it is broken
        self._local.slot = None

    def check_backend(self) -> None:
        """Build (and close) one adapter, so a bad backend URL or option raises
        :class:`ConfigError` now; a backend that is merely unreachable is not an error here."""
        try:
            create_adapter(self.settings).close()
        except BackendError:
            pass

    @property
    def capabilities(self) -> Capabilities:
        """What the configured backend does natively, emulates, or cannot do."""
        return adapter_class(self.settings).capabilities

    def close(self) -> None:
        """Close every connection this process opened (every thread's, and the idle ones).

        The app stays usable: the next operation connects again. Raises the first
        error an adapter's ``close`` raised, after closing the others.
        """
        try:
            self._connections.close()
        finally:
            self._local = threading.local()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queues and workers --------------------------------------------------------

    def queue(self, name: str, handler: type[H] | None = None, *, label: str | None = None, **retry: Any) -> H:
        """Declare queue ``name`` (idempotent); return its handler instance.

        ``handler`` is a :class:`QueueHandler` subclass; ``max_attempts``, ``backoff``
        and ``backoff_max`` set the queue's retry policy.
        """
        existing = self._queues.get(name)
        if existing is not None and (handler is None or type(existing) is handler):
            if label is not None:
                existing.label = label
            return existing  # type: ignore[return-value]
        problem = self.queue_name_problem(name)
        if problem is not None:
            raise ConfigError(f"cannot declare queue {name!r}: {problem}")
        cls: type[QueueHandler] = handler or QueueHandler
        policy = retry_policy(retry, f"queues.{name}", self.settings.retry) if retry else None
        instance = cls(self, name, label=label, retry=policy)
        if existing is not None:
            instance.workers.update(existing.workers)
        self._queues[name] = instance
        self._by_backend_name[instance.backend_name] = instance
        return instance  # type: ignore[return-value]

    def queue_name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot name a queue of this app on its backend, or None if it can.

        lilqueue's own rules (``all`` and ``,`` mean something to ``watch``) and the
        backend's (length, characters), applied to the name with the configured prefix.
        """
        if not isinstance(name, str) or not name:
            return "a queue name must be a non-empty string"
        if "," in name or name == "all" or name != name.strip():
            return "a queue name must not contain ',', be 'all', or start or end with white space"
        try:
            cls = adapter_class(self.settings)
        except ConfigError:  # a bad backend is reported when it is first used, with its key
            return Adapter.queue_name_problem(self.settings.prefix + name)
        return cls.queue_name_problem(self.settings.prefix + name)

    def get_queue(self, name: str) -> QueueHandler:
        """The handler of a declared queue; ConfigError if it is not declared."""
        try:
            return self._queues[name]
        except KeyError:
            raise ConfigError(
                f"queue {name!r} is not declared (declared: {', '.join(self._queues) or 'none'})"
            ) from None

    @property
    def queues(self) -> dict[str, QueueHandler]:
        """The declared queues by name."""
        return dict(self._queues)

    def queue_for_backend_name(self, backend_name: str) -> QueueHandler | None:
        return self._by_backend_name.get(backend_name)

    def resolve_queues(self, names: str | Iterable[str]) -> list[QueueHandler]:
        """``"all"``, a comma list, or names -> handlers; ConfigError for an undeclared one."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        names = list(names)
        if names == ["all"]:
            if not self._queues:
                raise ConfigError("no queues are declared: nothing to watch (declare them in --app or [queues])")
            return list(self._queues.values())
        if not names:
            raise ConfigError("no queue named to watch")
        return [self.get_queue(n) for n in names]

    def worker_instance(self, cls: type[W]) -> W:
        """The per-process singleton of a Worker class."""
        instance = self._workers.get(cls)
        if instance is None:
            instance = self._workers[cls] = cls()
        return instance  # type: ignore[return-value]

    def _declare_configured_queues(self) -> None:
        for name, qc in self.settings.queues.items():
            handler = import_path(qc.handler, f"queues.{name}.handler") if qc.handler else None
            if handler is not None and not (isinstance(handler, type) and issubclass(handler, QueueHandler)):
                raise ConfigError(f"queues.{name}.handler: {qc.handler!r} is not a QueueHandler subclass")
            queue = self.queue(name, handler, label=qc.label, **qc.retry)
            for task_name, wc in qc.workers.items():
                where = f"queues.{name}.workers.{task_name}"
                target = import_path(wc.path, f"{where}.{'class' if wc.method else 'function'}")
                retry = {} if wc.max_attempts is None else {"max_attempts": wc.max_attempts}
                if wc.method and not (isinstance(target, type) and hasattr(target, wc.method)):
                    raise ConfigError(f"{where}.method: {wc.path!r} has no method {wc.method!r}")
                if not wc.method and not callable(target):
                    raise ConfigError(f"{where}.function: {wc.path!r} is not callable")
                queue.add_worker(task_name, target, wc.method or "run", **retry)

    # -- context (the seed's "store") ----------------------------------------------

    def context_provider(self, capture: ContextCapture, apply: ContextApply | None = None) -> None:
        """Capture context automatically when tasks are created, and re-apply it around workers.

        ``capture()`` returns a dict merged under each task's explicit context;
        ``apply(context)`` returns a context manager entered around the worker call.
        """
        self._captures.append(capture)
        if apply is not None:
            self._appliers.append(apply)

    @property
    def context_appliers(self) -> Sequence[ContextApply]:
        return self._appliers

    # -- hooks (error reporting) ---------------------------------------------------

    def on_failure(self, callback: FailureHook) -> FailureHook:
        """Call ``callback(task, exc, traceback_text, will_retry)`` when a worker raises."""
        self.failure_hooks.append(callback)
        return callback

    def before_task(self, callback: TaskHook) -> TaskHook:
        """Call ``callback(task)`` before each worker call."""
        self.before_task_hooks.append(callback)
        return callback

    def after_task(self, callback: TaskHook) -> TaskHook:
        """Call ``callback(task)`` after each worker call, once its outcome is decided."""
        self.after_task_hooks.append(callback)
        return callback

    # -- producing -----------------------------------------------------------------

    def create_task(self, name: str, data: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Task:
        """A new task; ``context`` is merged over what the context providers capture."""
        if self._captures:
            captured: dict[str, Any] = {}
            for capture in self._captures:
                captured.update(capture())
            context = {**captured, **(context or {})}
        return Task(name, data, context)

    def add_task(self, queue: str, task: Task) -> str:
        """Send ``task`` to ``queue``; return its backend id. TaskError before sending if invalid."""
        if queue not in self._queues and (problem := self.queue_name_problem(queue)) is not None:
            raise TaskError(f"cannot add a task to queue {queue!r}: {problem}")
        body, priority, delay, ttr = self.encode(task, queue=queue)
        adapter = self.adapter
        limit = adapter.max_body
        if limit is not None and len(body) > limit:
            raise TaskError(f"task body is {len(body)} bytes; the {self.settings.backend_name} limit is {limit}")
        with self._local.lock:
            task.id = adapter.put(self.settings.prefix + queue, body, priority=priority, delay=delay, ttr=ttr)
        return task.id

    def encode(self, task: Task, attempts: int = 0, *, queue: str = "") -> tuple[bytes, int, float, int]:
        """The body, priority, delay and ttr a task is sent with to ``queue`` (validated)."""
        s = self.settings
        priority = s.priority if task.priority is None else check_priority(task.priority)
        delay = s.delay if task.delay is None else check_delay(task.delay)
        ttr = s.ttr if task.ttr is None else check_ttr(task.ttr)
        if not task.envelope_id:
            task.envelope_id = wire.new_id()
        env = wire.Envelope(task.name, task.data, task.context, task.envelope_id, attempts, priority, ttr)
        return wire.encode(env, secret=s.secret, wire=s.wire, queue=queue), priority, delay, ttr

    # -- running -------------------------------------------------------------------

    def watch(
        self,
        queues: str | Iterable[str] = "all",
        *,
        burst: bool = False,
        max_tasks: int | None = None,
        max_memory: int | None = None,
        install_signal_handlers: bool = True,
        auto_touch: bool = False,
    ) -> int:
        """Run a worker in this process on ``queues``; return how many tasks it ran.

        ``burst``: return once no watched task is ready. ``max_memory`` is in MB.
        Signal handlers are installed only from the main thread.
        """
        from lilqueue.runner import Runner

        runner = Runner(
            self,
            queues,
            burst=burst,
            max_tasks=max_tasks,
            max_memory=max_memory,
            install_signal_handlers=install_signal_handlers,
            auto_touch=auto_touch,
        )
        return runner.run()
