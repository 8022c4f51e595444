"""``--concurrency`` / ``--max-tasks`` / ``--max-memory``: worker child processes, recycled.

The supervisor forks N children; each builds its own backend connection and runs a
:class:`lilqueue.runner.Runner`. A child that reaches ``max_tasks`` or ``max_memory``
finishes its task and exits with :data:`EXIT_RECYCLE`; the supervisor starts a fresh
one. A child that crashes is restarted after a capped, growing pause. On SIGTERM or
SIGINT the supervisor passes the signal on and waits for the children to finish
their tasks; a second signal kills them at once (their tasks come back after ttr).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lilqueue.app import App

log = logging.getLogger(__name__)
EXIT_DONE = 0
EXIT_RECYCLE = 3
RESTART_CAP = 30.0


class Supervisor:
    """Keeps ``concurrency`` worker processes running on ``queues``."""

    def __init__(
        self,
        app: App,
        queues: str | Iterable[str],
        *,
        concurrency: int = 1,
        burst: bool = False,
        max_tasks: int | None = None,
        max_memory: float | None = None,
    ) -> None:
        self.app = app
        self.queues = queues if isinstance(queues, str) else list(queues)
        app.resolve_queues(self.queues)  # fail in the parent for an undeclared queue
        self.concurrency = concurrency
        self.burst = burst
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.children: dict[int, int] = {}  # pid -> slot
        self.failures = [0] * concurrency
        self.stopping = 0

    def run(self) -> int:
        """Run until stopped (or, with burst, until every child has drained); the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.app.close()  # children must not share the parent's connections
        try:
            for slot in range(self.concurrency):
                self._spawn(slot)
            return self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os._exit(self._child())
        self.children[pid] = slot
        log.info("started worker process %d (slot %d)", pid, slot, extra={"pid": pid})

    def _child(self) -> int:
        from lilqueue.runner import Runner

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        code = 1
        try:
            runner = Runner(
                self.app, self.queues, burst=self.burst, max_tasks=self.max_tasks, max_memory=self.max_memory
            )
            runner.run()
            code = EXIT_RECYCLE if runner.stop_reason.startswith("max ") else EXIT_DONE
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker process %d crashed", os.getpid())
        finally:
            logging.shutdown()
        return code

    def _watch(self) -> int:
        worst = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            worst = self._after_exit(pid, slot, code, worst)
        return worst

    def _after_exit(self, pid: int, slot: int, code: int, worst: int) -> int:
        if self.stopping:
            log.info("worker process %d exited (%d)", pid, code)
            return worst if code in (EXIT_DONE, -signal.SIGTERM, -signal.SIGKILL) else max(worst, 1)
        if code == EXIT_RECYCLE:
            log.info("worker process %d reached its limit; replacing it", pid)
            self.failures[slot] = 0
        elif code == EXIT_DONE and self.burst:
            return worst
        else:
            self.failures[slot] += 1
            pause = min(RESTART_CAP, 0.5 * 2 ** (self.failures[slot] - 1))
            log.error("worker process %d exited with %d; restarting in %.1fs", pid, code, pause)
            self._pause(pause)
            if self.stopping:
                return max(worst, 1)
        self._spawn(slot)
        return worst

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        forward: Any = signal.SIGKILL if self.stopping > 1 else signum
        log.info("%s: %s worker processes", signal.Signals(signum).name, "killing" if self.stopping > 1 else "stopping")
        for pid in list(self.children):
            try:
                os.kill(pid, forward)
            except ProcessLookupError:
                pass
