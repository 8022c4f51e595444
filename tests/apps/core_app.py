"""A small app for tests that run real worker processes (``--app tests.apps.core_app:app``).

Every run appends ``"<task name> <envelope id> <attempt> <pid> <phase>"`` to the file
named by ``LILQUEUE_TEST_LOG``, with one ``write`` on an O_APPEND descriptor, so
lines from several processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

import lilqueue

app = lilqueue.App()
jobs = app.queue("jobs", max_attempts=3, backoff=0)
other = app.queue("other", max_attempts=3, backoff=0)


def record(task: lilqueue.Task, phase: str) -> None:
    path = os.environ.get("LILQUEUE_TEST_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{task.name} {task.data.get('i', '-')} {task.attempts} {os.getpid()} {phase}\n".encode())
        finally:
            os.close(fd)


@jobs.worker("echo")
@other.worker("echo")
def echo(task: lilqueue.Task) -> None:
    record(task, "done")


@jobs.worker("sleep")
def sleep(task: lilqueue.Task) -> None:
    """Sleeps ``data["seconds"]`` (touching every second if ``data["touch"]``)."""
    record(task, "start")
    deadline = time.monotonic() + float(task.data.get("seconds", 1))
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if task.data.get("touch"):
            task.touch()
    record(task, "done")


@jobs.worker("async_sleep")
async def async_sleep(task: lilqueue.Task) -> None:
    """An ``async def`` worker: awaits ``data["seconds"]`` of sleep."""
    record(task, "start")
    await asyncio.sleep(float(task.data.get("seconds", 1)))
    record(task, "done")


@jobs.worker("hang")
def hang(task: lilqueue.Task) -> None:
    """Hangs (without touching) on its first attempt, then finishes at once."""
    record(task, "start")
    if task.attempts == 1:
        time.sleep(float(task.data.get("seconds", 60)))
    record(task, "done")


@jobs.worker("fail")
def fail(task: lilqueue.Task) -> None:
    record(task, "fail")
    raise RuntimeError(f"failing on purpose, attempt {task.attempts}")


@jobs.worker("leak")
def leak(task: lilqueue.Task) -> None:
    """Keeps ``data["mb"]`` MB alive for the life of the process."""
    _leaked.append(bytearray(int(task.data.get("mb", 10)) * 1_048_576))
    record(task, "done")


_leaked: list[bytearray] = []
