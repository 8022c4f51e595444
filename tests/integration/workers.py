"""Real worker processes for integration tests: `python -m lilqueue ... watch`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.core_app:app"


def spawn(backend: str, log: Path, *args: str, app: str = APP, queues: str = "jobs") -> subprocess.Popen[str]:
    """Start `lilqueue watch QUEUES ARGS` in its own process group; output goes to a pipe."""
    env = {**os.environ, "LILQUEUE_TEST_LOG": str(log), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("LILQUEUE_CONFIG", None)
    argv = [sys.executable, "-m", "lilqueue", "--app", app, "--backend", backend, "watch", queues, *args]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def run_cli(backend: str, *args: str, app: str = APP) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "lilqueue", "--app", app, "--backend", backend, *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def lines(log: Path) -> list[list[str]]:
    """The records the workers wrote: [task, i, attempt, pid, phase]."""
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.strip()]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str]:
    """Signal the worker, wait for it, and return (exit code, output)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout}s:\n{out}") from None
    return proc.returncode, out


def kill_group(procs: Sequence[subprocess.Popen[str]]) -> None:
    """kill -9 each process, its process group, and its children (which have groups of their own)."""
    for proc in procs:
        if proc.poll() is None:
            victims = [proc.pid, *_children(proc.pid)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
