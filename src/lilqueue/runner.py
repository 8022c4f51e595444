"""The worker loop: reserve -> decode -> dispatch -> apply the outcome. And signals."""

from __future__ import annotations

import inspect
import logging
import os
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from types import FrameType
from typing import TYPE_CHECKING, Any

from lilqueue import wire
from lilqueue.adapters.base import Adapter, Job
from lilqueue.config import RetryPolicy
from lilqueue.errors import BackendConnectionError, BackendError, ConfigError, LilqueueError, TaskError, WireError
from lilqueue.task import Outcome, Task

if TYPE_CHECKING:
    import asyncio

    from lilqueue.app import App
    from lilqueue.handler import QueueHandler

log = logging.getLogger(__name__)
TaskHook = Callable[[Task], object]
FailureHook = Callable[[Task, BaseException, str, bool], object]
#: (backend queue name, job id) -> what the watchdog last did to that job, if it knows
LapsedNote = Callable[[str, str], "str | None"]
MAX_REASON = 16_384
SUCCESS = Outcome("success")
#: the watchdog stops a task this many seconds before its lease lapses at the backend
WATCHDOG_MARGIN = 0.25
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float:
    """This process's resident memory now, in MB (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE / 1_048_576
    except (OSError, IndexError, ValueError):
        return 0.0


class Runner:
    """Runs the workers of some queues in this process until stopped.

    ``burst``: stop once no watched task is ready. ``max_tasks`` / ``max_memory`` (MB):
    stop after the task that reaches the limit. ``poll``: the longest single wait for a
    task in seconds, which bounds how long a stop request waits while idle.
    ``reconnect_for``: how long to keep reconnecting to a lost backend before giving up.
    ``auto_touch``: touch the running task every ttr/2 from a background thread.
    ``heartbeat(deadline)``: told the monotonic time by which the running task must finish
    or touch (0 when idle); the supervisor's watchdog reads it. ``describe(text)``: told
    which task is running (queue, id, name, ttr), for the watchdog's log line.
    ``lapsed_note(queue, id)``: what the watchdog last did to a job, for the reason a
    task is held with once its runs keep ending without an outcome.
    """

    def __init__(
        self,
        app: App,
        queues: str | Iterable[str] = "all",
        *,
        burst: bool = False,
        max_tasks: int | None = None,
        max_memory: float | None = None,
        install_signal_handlers: bool = True,
        poll: float = 1.0,
        reconnect_for: float = 300.0,
        auto_touch: bool = False,
        heartbeat: Callable[[float], object] | None = None,
        describe: Callable[[str], object] | None = None,
        lapsed_note: LapsedNote | None = None,
    ) -> None:
        self.app = app
        self.handlers = app.resolve_queues(queues)
        self.names = [h.backend_name for h in self.handlers]
        self.burst = burst
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.install_signal_handlers = install_signal_handlers
        self.poll = poll
        self.reconnect_for = reconnect_for
        self.auto_touch = auto_touch
        self.heartbeat = heartbeat
        self.describe = describe
        self.lapsed_note = lapsed_note
        self.heartbeat_deadline = 0.0
        self.event_loop: asyncio.AbstractEventLoop | None = None  # for async def workers
        #: the worker thread's connection and its lock, for touches from the auto-touch thread
        self.touch_via: tuple[Adapter, threading.RLock] | None = None
        self.current: tuple[Job, Task] | None = None  # what is running, for task.touch()
        self.processed = 0
        self.acked = False  # a delete went to the adapter since its last flush
        self.stopping = False
        self.signalled = False
        self.stop_reason = ""

    # -- lifecycle -----------------------------------------------------------------

    def stop(self, reason: str = "asked to stop") -> None:
        """Stop taking tasks; the running task (if any) finishes first."""
        if not self.stopping:
            self.stopping, self.stop_reason = True, reason

    def run(self) -> int:
        """Run until stopped, drained (burst) or at a limit; return how many tasks ran."""
        with ExitStack() as stack:
            if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
                stack.callback(self._restore_signals, self._install_signals())
            log.info("worker started", extra={"queues": self.names, "pid": os.getpid()})
            try:
                self._loop()
            finally:
                self._flush()
                self._give_back()
                if self.event_loop is not None:
                    self.event_loop.close()
                    self.event_loop = None
            log.info("worker stopped: %s", self.stop_reason or "done", extra={"processed": self.processed})
        return self.processed

    def _loop(self) -> None:
        timeout = 0.0 if self.burst else self.poll
        lost_since: float | None = None
        while not self.stopping:
            try:
                job = self.app.adapter.reserve(self.names, timeout)
            except BackendError as exc:  # lost, or refusing (e.g. a key of the wrong type): back off
                lost_since = self._backend_lost(exc, lost_since)
                continue
            except ConfigError:  # bad settings do not get better by waiting
                raise
            except Exception as exc:  # an adapter's bug must not crash-loop the worker: back off too
                log.exception("reserving from %s failed unexpectedly", self.names)
                lost_since = self._backend_lost(exc, lost_since)
                continue
            lost_since = None
            if job is None:
                if self.burst:
                    self.stop("burst: no task is ready")
                continue
            if self.stopping:  # a signal came while we were reserving: hand it back untouched
                self._release_unstarted(job)
                break
            self.process(job)
            self.processed += 1
            self._check_limits()

    def _flush(self) -> None:
        """Push out acks the adapter held back for its next request (see ``Adapter.flush``)."""
        if not self.acked:
            return
        self.acked = False
        try:
            self.app.adapter.flush()
        except LilqueueError as exc:
            log.error("could not send held-back acks (those tasks come back after their ttr): %s", exc)
            self._after_failed_ack(exc)

    def _give_back(self) -> None:
        """Return what the adapter took ahead of time (poll threads) before it was asked."""
        try:
            self.app.adapter.give_back()
        except LilqueueError as exc:
            log.warning("could not give back prefetched tasks (they come back after their ttr): %s", exc)

    def _release_unstarted(self, job: Job) -> None:
        try:
            self.app.adapter.unreserve(job)
        except LilqueueError as exc:
            log.warning("could not release job %s (it comes back after its ttr): %s", job.id, exc)

    def _backend_lost(self, exc: BaseException, since: float | None) -> float:
        now = time.monotonic()
        since = now if since is None else since
        if now - since > self.reconnect_for:
            raise BackendConnectionError(f"backend failing for {self.reconnect_for:.0f}s; giving up: {exc}") from exc
        self.app.reset_adapter()
        wait = min(30.0, 0.5 * 2 ** min(int(now - since).bit_length(), 6)) * random.uniform(0.5, 1.0)
        log.warning("backend lost or failing (%s); reconnecting in %.1fs", exc, wait, extra={"queues": self.names})
        self._sleep(wait)
        return since

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))

    def _check_limits(self) -> None:
        if self.max_tasks is not None and self.processed >= self.max_tasks:
            self.stop(f"max tasks reached ({self.max_tasks})")
        elif self.max_memory is not None and (rss := current_rss_mb()) >= self.max_memory:
            self.stop(f"max memory reached ({rss:.0f} MB >= {self.max_memory} MB)")

    # -- signals -------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signalled:
            raise SystemExit(128 + signum)  # the second signal: stop at once
        self.signalled = True  # a stop for --max-tasks before it is not a first signal
        self.stop(f"{name} received")

    # -- one task --------------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Decode, dispatch and finish one reserved job.

        Never raises for anything about the job: whatever goes wrong in decoding it,
        deciding its outcome or storing that outcome ends with the job held with a reason
        (or, where the backend cannot be told, left to come back after its ttr).
        """
        if self.heartbeat is None:
            self._guarded(job)
            return
        if self.describe is not None:
            self.describe(f"{job.queue}\t{job.id}\t?\t{job.ttr}")
        self._beat(time.monotonic() + job.ttr - WATCHDOG_MARGIN)
        try:
            self._guarded(job)
        finally:
            self._beat(0.0)

    def _guarded(self, job: Job) -> None:
        try:
            self._process(job)
        except Exception as exc:  # lilqueue's own failure on this job: hold it
            log.exception("lilqueue failed on job %s of %s; holding it", job.id, job.queue)
            self.current = None
            self._bury(job, f"lilqueue could not process this task: {exc!r}")

    def _beat(self, deadline: float) -> None:
        self.heartbeat_deadline = deadline
        if self.heartbeat is not None:
            self.heartbeat(deadline)

    def _process(self, job: Job) -> None:
        handler = self.app.queue_for_backend_name(job.queue)
        name = handler.name if handler is not None else job.queue
        s = self.app.settings
        try:
            env = wire.decode(job.body, secret=s.secret, queue=name, legacy=s.legacy_signatures)
        except WireError as exc:
            self._bury(job, f"rejected: {exc}")
            return
        if handler is None or (spec := handler.workers.get(env.task)) is None:
            self._bury(job, f"no worker registered for task {env.task!r} on queue {name!r}")
            return
        if job.unfinished >= spec.retry.max_attempts:
            self._bury(job, self._lapsed_reason(job))
            return
        task = self._task(job, env, handler)
        func = spec.callable(self.app)
        started = time.monotonic()
        error: BaseException | None = None
        try:
            if self.auto_touch or self.app.context_appliers or self.app.before_task_hooks:
                self._call_wrapped(func, task, job.ttr)
            elif (result := func(task)) is not None:
                self._settle(result)
        except BaseException as exc:  # noqa: BLE001 - a worker's failure is data, whatever it raised
            self._reraise_stop(exc)
            error = exc
        outcome = SUCCESS if error is None and task.outcome is None else self._outcome(task, error, spec.retry)
        self._finish(job, task, outcome)
        self._after(task, outcome, time.monotonic() - started, error)

    def _lapsed_reason(self, job: Job) -> str:
        runs = job.unfinished
        last = self.lapsed_note(job.queue, job.id) if self.lapsed_note is not None else None
        last = last or "the worker process died or the lease lapsed (no watchdog here saw it)"
        return (
            f"not run: its worker died or ran past its ttr on {runs} attempt{'s' if runs != 1 else ''} "
            f"without an outcome; last: {last}. If the task is slow rather than stuck, call task.touch() "
            f"while it works, run the worker with --auto-touch, or give it a longer ttr (now {job.ttr}s); "
            f"then kick it"
        )

    def _call_wrapped(self, func: Callable[[Task], object], task: Task, ttr: int) -> None:
        """Call the worker inside auto-touch, the context appliers and the before-task hooks."""
        with ExitStack() as stack:
            if self.auto_touch:  # a lease belongs to the connection that took it: touch through it
                self.touch_via = (self.app.adapter, self.app.adapter_lock)
                stack.enter_context(AutoTouch(task, ttr))
            for apply in self.app.context_appliers:
                stack.enter_context(apply(task.context))
            for hook in self.app.before_task_hooks:
                hook(task)
            result = func(task)
            if result is not None:
                self._settle(result)

    def _settle(self, result: object) -> None:
        """An ``async def`` worker's coroutine runs to completion on this runner's own event
        loop; a generator is refused (its body would never run: the task is not done)."""
        if inspect.isawaitable(result):
            if self.event_loop is None:
                import asyncio

                self.event_loop = asyncio.new_event_loop()
            self.event_loop.run_until_complete(result)
        elif inspect.isgenerator(result) or inspect.isasyncgen(result):
            raise TypeError("the worker is a generator function: its body never ran (return, do not yield)")

    def _reraise_stop(self, exc: BaseException) -> None:
        """What a worker raises is its failure, unless it is this runner being stopped: our
        second signal (SystemExit), or Ctrl-C where the embedding program keeps SIGINT."""
        if isinstance(exc, SystemExit) and self.signalled:
            raise exc
        if isinstance(exc, KeyboardInterrupt) and not self.install_signal_handlers:
            raise exc

    def _task(self, job: Job, env: wire.Envelope, handler: QueueHandler) -> Task:
        task = Task.__new__(Task)
        task.name, task.data, task.context = env.task, env.data, env.context
        task.priority, task.delay, task.ttr = job.priority, None, job.ttr
        task.id, task.envelope_id, task.queue = job.id, env.id, handler
        task.attempts = env.attempts + job.deliveries
        task.outcome = None
        if self.describe is not None:
            self.describe(f"{job.queue}\t{job.id}\t{env.task}\t{job.ttr}")
        task._toucher = self._touch
        self.current = (job, task)
        return task

    def _touch(self, task: Task) -> None:
        """``task.touch()``, for the task this runner is running."""
        if self.current is None or self.current[1] is not task:
            raise TaskError("touch() is for a task a worker is running, not one that has finished")
        job = self.current[0]
        adapter, lock = self.touch_via or (self.app.adapter, self.app.adapter_lock)
        with lock:
            adapter.touch(job)
        if self.heartbeat is not None:
            self._beat(time.monotonic() + job.ttr - WATCHDOG_MARGIN)

    def _outcome(self, task: Task, error: BaseException | None, policy: RetryPolicy) -> Outcome:
        decided = task.outcome
        if decided is not None:
            if error is not None:
                log.warning("worker raised after deciding %s(): %r", decided.kind, error, extra=_fields(task))
            if decided.kind == "retry" and task.attempts >= policy.max_attempts:
                reason = f"retry() asked on attempt {task.attempts}, and max_attempts is {policy.max_attempts}"
                return Outcome("hold", reason=reason)
            if decided.kind == "retry" and decided.delay is None:
                return Outcome("retry", delay=policy.delay(task.attempts))
            return decided
        if error is None:
            return SUCCESS
        text = "".join(traceback.format_exception(error))
        will_retry = task.attempts < policy.max_attempts
        self._report_failure(task, error, text, will_retry)
        if will_retry:
            return Outcome("retry", delay=policy.delay(task.attempts))
        reason = f"failed {task.attempts} of {policy.max_attempts} attempts: {text}"
        return Outcome("hold", reason=reason[:MAX_REASON])

    def _report_failure(self, task: Task, error: BaseException, text: str, will_retry: bool) -> None:
        log.warning(
            "task %s failed on attempt %d (%s): %r",
            task.name, task.attempts, "will retry" if will_retry else "holding", error,
            extra=_fields(task, outcome="retry" if will_retry else "hold"),
        )  # fmt: skip
        for hook in self.app.failure_hooks:
            try:
                hook(task, error, text, will_retry)
            except Exception:
                log.exception("on_failure hook %r raised", hook)

    def _finish(self, job: Job, task: Task, outcome: Outcome) -> None:
        """Apply ``outcome``. If the backend is lost, the job comes back after its ttr; if
        anything else stops a retry or success from being stored, the job is held instead
        (a retry that cannot be re-put must never come straight back and loop)."""
        adapter = self.app.adapter
        try:
            if outcome.kind == "success":
                adapter.delete(job)
                self.acked = True
            elif outcome.kind == "retry":
                self._release(job, task, outcome.delay or 0.0)
            else:
                adapter.bury(job, reason=_clean(outcome.reason or "held by the worker"))
        except BackendConnectionError as exc:
            what = f"could not apply {outcome.kind} to task {job.id} (it comes back after its ttr)"
            log.error("%s: %s", what, exc, extra=_fields(task, outcome=outcome.kind))
            self._after_failed_ack(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a re-put the backend refuses: hold, never loop
            if outcome.kind == "hold":
                log.error("could not hold task %s (it comes back after its ttr): %r", job.id, exc)
                self._after_failed_ack(exc)
                return
            self._bury(job, _UNSTORED[outcome.kind] + repr(exc))

    def _after_failed_ack(self, exc: BaseException) -> None:
        """Reconnect after a lost connection, or where only a closed connection gives a job back."""
        if isinstance(exc, BackendConnectionError) or self.app.capabilities.ttr.level == "none":
            self.app.reset_adapter()

    def _release(self, job: Job, task: Task, delay: float) -> None:
        """Retry: the backend's own release, or (emulated) a re-put carrying the attempt count."""
        adapter = self.app.adapter
        if adapter.capabilities.retry.level == "native":
            adapter.release(job, priority=job.priority, delay=delay)
            return
        task.delay = delay
        queue = task.queue.name if task.queue is not None else ""
        body, priority, _, ttr = self.app.encode(task, attempts=task.attempts, queue=queue)
        adapter.put(job.queue, body, priority=priority, delay=delay, ttr=ttr)
        adapter.delete(job)

    def _bury(self, job: Job, reason: str) -> None:
        reason = _clean(reason)
        log.warning(
            "holding job %s on %s: %s", job.id, job.queue, reason, extra={"queue": job.queue, "task_id": job.id}
        )
        try:
            self.app.adapter.bury(job, reason=reason)
        except Exception as exc:  # noqa: BLE001 - the backend's or the adapter's: never crash the worker
            log.error("could not hold job %s (it comes back after its ttr): %r", job.id, exc)
            self._after_failed_ack(exc)

    def _after(self, task: Task, outcome: Outcome, duration: float, error: BaseException | None) -> None:
        task.outcome, self.current = outcome, None
        if self.app.after_task_hooks:
            self._flush()  # a slow hook must not hold back this task's ack
        if log.isEnabledFor(logging.INFO) and (outcome.kind != "success" or log.isEnabledFor(logging.DEBUG)):
            level = logging.DEBUG if outcome.kind == "success" else logging.INFO
            log.log(level, "task %s %s in %.3fs", task.name, outcome.kind, duration,
                    extra=_fields(task, outcome=outcome.kind, duration=round(duration, 6)))  # fmt: skip
        for hook in self.app.after_task_hooks:
            try:
                hook(task)
            except Exception:
                log.exception("after_task hook %r raised", hook)


class AutoTouch:
    """While a task runs, touch it every ``ttr / 2`` seconds from a background thread.

    The trade-off: a task that hangs for ever keeps its lease for ever, since nothing
    can tell a hang from slow work; only a dead worker process gives the task back.
    """

    def __init__(self, task: Task, ttr: int) -> None:
        self.task, self.every = task, max(ttr / 2, 0.5)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lilqueue-autotouch-{task.id}", daemon=True)

    def __enter__(self) -> AutoTouch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            try:
                self.task.touch()
            except LilqueueError as exc:
                log.warning("auto-touch of task %s failed: %s", self.task.id, exc, extra=_fields(self.task))


_UNSTORED = {
    "success": "ran successfully, but could not be deleted (delete it, or kick it to run it again): ",
    "retry": "could not retry this task (the backend refused it back): ",
}


def _clean(reason: object) -> str:
    """A hold reason any backend can store: text, no lone surrogates, at most MAX_REASON."""
    text = reason if isinstance(reason, str) else repr(reason)
    return text[:MAX_REASON].encode("utf-8", "backslashreplace").decode("utf-8")


def _fields(task: Task, **more: Any) -> dict[str, Any]:
    queue = task.queue.name if task.queue is not None else None
    return {"queue": queue, "task_id": task.id, "task_name": task.name, "attempt": task.attempts, **more}
