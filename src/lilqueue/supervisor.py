"""``lilqueue watch``: worker child processes, a TTR watchdog, recycling and shutdown.

The supervisor forks ``concurrency`` children; each builds its own backend connections
and runs ``threads`` :class:`lilqueue.runner.Runner` loops. It then watches them:

- **TTR watchdog.** Each runner writes, to memory shared with the supervisor, the
  monotonic time by which its task must finish or touch (a little before its lease
  lapses at the backend). A child past that deadline is killed (SIGKILL) and replaced,
  so a hung task never runs twice at once: its lease lapses and another worker takes it.
  This also covers backends whose server does not enforce ttr (Gearman has none;
  beanstalkd 1.12 leaves a job reserved while its connection sits idle).
- **Recycling.** A child that reaches ``max_tasks`` or ``max_memory`` finishes its task
  and exits with :data:`EXIT_RECYCLE`; a fresh one replaces it at once.
- **Crashes.** A child that dies otherwise is restarted after a capped, growing pause.
- **Shutdown.** SIGTERM or SIGINT: the children stop reserving, finish their running
  tasks within ``grace`` seconds (then are killed), and the supervisor exits 0. A second
  signal kills them at once. Children run in their own process group, so a Ctrl-C at a
  terminal reaches the supervisor only, and they exit if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from lilqueue.errors import BackendConnectionError, ConfigError

if TYPE_CHECKING:
    from lilqueue.app import App
    from lilqueue.runner import Runner

log = logging.getLogger(__name__)
EXIT_DONE = 0
EXIT_RECYCLE = 3
EXIT_GAVE_UP = 4  # the backend stayed unreachable past --reconnect-for
RESTART_CAP = 30.0
HEALTHY_AFTER = 2.0  # a child that ran this long before dying restarts after the shortest pause
TICK = 0.05
_SLOT = struct.Struct("d")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_LABEL = 512  # bytes of a runner's label
_NOTE = 1024  # bytes of a watchdog note
_NOTES = 64  # notes kept


class Heartbeats:
    """Memory shared across fork between the supervisor and its runners.

    Per runner: a deadline (monotonic seconds, 0 = idle) and a label naming the running
    task (queue, id, name, ttr). And a small ring of notes the watchdog leaves about the
    jobs it stopped, read by whichever runner gets such a job next.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.labels = _SLOT.size * count
        self.notes = self.labels + _LABEL * count
        self.mem = mmap.mmap(-1, self.notes + _NOTE * _NOTES + _SLOT.size)

    def setter(self, slot: int) -> _Beat:
        return _Beat(self.mem, slot * _SLOT.size)

    def describer(self, slot: int) -> Callable[[str], None]:
        """Writes runner ``slot``'s label: ``queue\tid\tname\tttr``."""
        offset = self.labels + slot * _LABEL

        def describe(text: str) -> None:
            self.mem[offset : offset + _LABEL] = _fixed(text, _LABEL)

        return describe

    def get(self, slot: int) -> float:
        return float(_SLOT.unpack_from(self.mem, slot * _SLOT.size)[0])

    def label(self, slot: int) -> list[str]:
        offset = self.labels + slot * _LABEL
        return _unfixed(self.mem[offset : offset + _LABEL]).split("\t")

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self.mem, slot * _SLOT.size, 0.0)

    def leave_note(self, queue: str, id: str, note: str) -> None:
        """Remember, for the next runner that reserves job ``id``, what happened to it."""
        end = self.notes + _NOTE * _NOTES
        index = int(_SLOT.unpack_from(self.mem, end)[0])
        offset = self.notes + (index % _NOTES) * _NOTE
        self.mem[offset : offset + _NOTE] = _fixed(f"{queue}\t{id}\t{note}", _NOTE)
        _SLOT.pack_into(self.mem, end, float(index + 1))

    def note(self, queue: str, id: str) -> str | None:
        """The latest note left about job ``id`` of ``queue``, if any."""
        found = None
        for i in range(_NOTES):
            offset = self.notes + i * _NOTE
            parts = _unfixed(self.mem[offset : offset + _NOTE]).split("\t", 2)
            if len(parts) == 3 and parts[0] == queue and parts[1] == id:
                found = parts[2]
        return found


def _fixed(text: str, size: int) -> bytes:
    data = text.encode("utf-8", "backslashreplace")[: size - 1]
    return data + b"\0" * (size - len(data))


def _unfixed(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


class _Beat:
    __slots__ = ("mem", "offset")

    def __init__(self, mem: mmap.mmap, offset: int) -> None:
        self.mem, self.offset = mem, offset

    def __call__(self, deadline: float) -> None:
        _SLOT.pack_into(self.mem, self.offset, deadline)


class Supervisor:
    """Keeps ``concurrency`` worker processes (of ``threads`` runners each) going on ``queues``."""

    def __init__(
        self,
        app: App,
        queues: str | Iterable[str],
        *,
        concurrency: int = 1,
        threads: int = 1,
        burst: bool = False,
        max_tasks: int | None = None,
        max_memory: float | None = None,
        grace: float = 30.0,
        auto_touch: bool = False,
        reconnect_for: float = 300.0,
    ) -> None:
        self.app = app
        self.queues = queues if isinstance(queues, str) else list(queues)
        app.resolve_queues(self.queues)  # an undeclared queue fails here, in the parent
        self.concurrency, self.threads = concurrency, threads
        self.burst = burst
        self.max_tasks, self.max_memory = max_tasks, max_memory
        self.grace = grace
        self.auto_touch = auto_touch
        self.reconnect_for = reconnect_for
        self.beats = Heartbeats(concurrency * threads)
        self.children: dict[int, int] = {}  # pid -> slot
        self.born: dict[int, float] = {}  # slot -> when its current child started
        self.failures = [0] * concurrency
        self.restart_at: dict[int, float] = {}  # slot -> when to restart it
        self.watchdog_killed: set[int] = set()  # slots whose child the watchdog killed
        self.signals = 0
        self.kill_at: float | None = None
        self.worst = 0

    # -- the supervisor --------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with burst, until every child has drained); the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.app.close()  # children must not share the parent's connections
        log.info("supervisor %d: %d process(es) x %d thread(s) on %s", os.getpid(), self.concurrency,
                 self.threads, self.queues)  # fmt: skip
        try:
            for slot in range(self.concurrency):
                self._spawn(slot)
            while self.children or (self.restart_at and not self.signals):
                self._tick()
            return self.worst
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _tick(self) -> None:
        self._reap()
        now = time.monotonic()
        self._watchdog(now)
        for slot, when in list(self.restart_at.items()):
            if when <= now and not self.signals:
                del self.restart_at[slot]
                self._spawn(slot)
        if self.kill_at is not None and now >= self.kill_at:
            log.warning("grace period over: killing %d worker process(es)", len(self.children))
            self._signal_children(signal.SIGKILL)
            self.kill_at = None
        time.sleep(TICK)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is not None:
                self._exited(pid, slot, os.waitstatus_to_exitcode(status))

    def _exited(self, pid: int, slot: int, code: int) -> None:
        for t in range(self.threads):
            self.beats.clear(slot * self.threads + t)
        if self.signals:
            log.info("worker process %d exited (%d)", pid, code)
            if code not in (EXIT_DONE, -signal.SIGKILL, -signal.SIGTERM):  # SIGTERM: before it could run
                self.worst = 1
            return
        if code == EXIT_GAVE_UP:
            log.error("worker process %d gave up on the backend; stopping", pid)
            self.worst = 1
            self.signals += 1
            self.restart_at.clear()
            self._signal_children(signal.SIGTERM)
            self.kill_at = time.monotonic() + self.grace
        elif code == EXIT_RECYCLE:
            log.info("worker process %d reached its limit; replacing it", pid)
            self.failures[slot] = 0
            self._spawn(slot)
        elif code == EXIT_DONE and self.burst:
            log.info("worker process %d drained its queues", pid)
        elif code == -signal.SIGKILL and slot in self.watchdog_killed:
            self.watchdog_killed.discard(slot)
            self._spawn(slot)
        elif code == -signal.SIGKILL:  # the OOM killer or an operator, not a crash loop
            log.warning("worker process %d was killed (SIGKILL); restarting it", pid)
            self.restart_at[slot] = time.monotonic() + 0.1
        else:
            if time.monotonic() - self.born.get(slot, 0.0) > HEALTHY_AFTER:
                self.failures[slot] = 0  # it had been running fine: not a crash loop
            self.failures[slot] += 1
            pause = min(RESTART_CAP, 0.1 * 4 ** (self.failures[slot] - 1))
            log.error("worker process %d exited with %d; restarting it in %.1fs", pid, code, pause)
            self.restart_at[slot] = time.monotonic() + pause

    def _watchdog(self, now: float) -> None:
        for pid, slot in list(self.children.items()):
            for t in range(self.threads):
                deadline = self.beats.get(slot * self.threads + t)
                if deadline and now > deadline:
                    self._kill_overdue(pid, slot * self.threads + t)
                    self.watchdog_killed.add(slot)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break

    def _kill_overdue(self, pid: int, runner: int) -> None:
        queue, id, name, ttr = (self.beats.label(runner) + ["?"] * 4)[:4]
        fields = {"pid": pid, "queue": queue, "task_id": id, "task_name": name}
        message = f"task {name} (id {id}, queue {queue}) ran past its ttr of {ttr}s without touching"
        log.error(
            "worker process %d: %s; killing the process (the task comes back when its lease lapses)",
            pid,
            message,
            extra=fields,
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        self.beats.leave_note(queue, id, f"killed by the watchdog after {ttr} s (its ttr) at {when}")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.restart_at.clear()
        if self.signals == 1:
            log.info("%s: stopping; running tasks may finish within %.0fs", signal.Signals(signum).name, self.grace)
            self._signal_children(signal.SIGTERM)
            self.kill_at = time.monotonic() + self.grace
        else:
            log.warning("%s again: killing worker processes now", signal.Signals(signum).name)
            self._signal_children(signal.SIGKILL)
            self.worst = 128 + signum

    def _signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # -- a child -----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        """Fork a worker process. Stop signals are blocked across the fork and until the
        child is one of ``children``: our handler, run then, signals it too; the child
        looks at what is pending once its own handlers are set."""
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                self._be_child(slot, parent)
            self.children[pid] = slot
            self.born[slot] = time.monotonic()
        finally:
            if os.getpid() == parent:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        log.info("started worker process %d", pid, extra={"pid": pid})

    def _be_child(self, slot: int, parent: int) -> NoReturn:  # pragma: no cover - in the child
        code = 1
        try:
            code = self._child(slot, parent)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
                logging.shutdown()
            os._exit(code)

    def _child(self, slot: int, parent: int) -> int:
        from lilqueue.runner import Runner

        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor, which stops us gently
        for s in _STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        if _STOP_SIGNALS & signal.sigpending():  # the supervisor was stopping as we were born
            return EXIT_DONE
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        _die_with_parent(parent)
        runners = [
            Runner(
                self.app, self.queues, burst=self.burst, max_tasks=self.max_tasks, max_memory=self.max_memory,
                install_signal_handlers=(t == 0), auto_touch=self.auto_touch, reconnect_for=self.reconnect_for,
                heartbeat=self.beats.setter(slot * self.threads + t),
                describe=self.beats.describer(slot * self.threads + t), lapsed_note=self.beats.note,
            )
            for t in range(self.threads)
        ]  # fmt: skip
        guard = threading.Thread(target=self._orphan_guard, args=(parent, runners), name="lilqueue-orphan-guard")
        guard.daemon = True
        guard.start()
        try:
            _run_together(runners)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except (BackendConnectionError, ConfigError) as exc:
            log.error("worker process %d: %s", os.getpid(), exc)
            return EXIT_GAVE_UP
        except BaseException:
            log.exception("worker process %d crashed", os.getpid())
            return 1
        recycled = any(r.stop_reason.startswith("max ") for r in runners)
        return EXIT_RECYCLE if recycled else EXIT_DONE

    def _orphan_guard(self, parent: int, runners: list[Runner]) -> None:
        """If the supervisor dies, stop gently, but within ``grace`` and before any task's ttr."""
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("worker process %d: the supervisor is gone; stopping", os.getpid())
        runners[0].stop("the supervisor is gone")
        limit = time.monotonic() + self.grace
        while time.monotonic() < limit:
            deadlines = [r.heartbeat_deadline for r in runners if r.heartbeat_deadline]
            if deadlines and time.monotonic() > min(deadlines):
                break
            time.sleep(0.1)
        log.error("worker process %d: giving up on its running task(s); they come back after their ttr", os.getpid())
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(1)


def _run_together(runners: list[Runner]) -> None:
    """Run the first runner on this (main) thread and the rest on their own; stop as one."""
    main, others = runners[0], runners[1:]
    original_stop = main.stop

    def stop_all(reason: str = "asked to stop") -> None:
        original_stop(reason)
        for r in others:
            r.stop(reason)

    main.stop = stop_all  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=r.run, name=f"lilqueue-runner-{i + 1}", daemon=True) for i, r in enumerate(others)
    ]
    for t in threads:
        t.start()
    try:
        main.run()
    finally:
        stop_all(main.stop_reason or "stopping")
        for t in threads:
            t.join()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send us SIGTERM when the supervisor dies (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
