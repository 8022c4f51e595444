"""The app the Gearman integration tests run in real worker processes.

``--app tests.apps.gearman_app:app``; the queue is named by ``GEARMAN_TEST_QUEUE``
(default ``gm``) so each test can use a fresh Gearman function. Every run appends
``"<task> <message or i> <attempt> <pid> <phase>"`` to ``LILQUEUE_TEST_LOG`` with one
``write`` on an O_APPEND descriptor.
"""

from __future__ import annotations

import os
import time

import lilqueue

app = lilqueue.App()
queue: lilqueue.QueueHandler = app.queue(os.environ.get("GEARMAN_TEST_QUEUE", "gm"), max_attempts=3, backoff=0)


def record(task: lilqueue.Task, phase: str) -> None:
    path = os.environ.get("LILQUEUE_TEST_LOG")
    if path:
        what = str(task.data.get("message", task.data.get("i", "-"))).replace(" ", "_")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{task.name} {what} {task.attempts} {os.getpid()} {phase} {task.context}\n".encode())
        finally:
            os.close(fd)


@queue.worker("test")
def test(task: lilqueue.Task) -> None:
    """The task name Lilmuckers_Queue's README uses."""
    record(task, "done")


@queue.worker("slow")
def slow(task: lilqueue.Task) -> None:
    record(task, "start")
    time.sleep(float(task.data.get("seconds", 30)))
    record(task, "done")


@queue.worker("hold")
def hold(task: lilqueue.Task) -> None:
    record(task, "hold")
    task.hold(task.data.get("reason", "needs a human"))


@queue.worker("fail")
def fail(task: lilqueue.Task) -> None:
    record(task, "fail")
    raise RuntimeError("this worker always fails")
