"""The app the beanstalkd and Redis integration tests run in real worker processes.

``python -m lilqueue --app tests.apps.server_app:app --backend beanstalkd://... watch jobs``.
Each run appends ``"<task> <data i> <attempt> <pid> <phase> <epoch seconds>"`` to the
file named by ``LILQUEUE_TEST_LOG``, one ``write`` on an O_APPEND descriptor.
"""

from __future__ import annotations

import os
import time

import lilqueue

app = lilqueue.App()
jobs: lilqueue.QueueHandler = app.queue("jobs", max_attempts=3, backoff=0)


def record(task: lilqueue.Task, phase: str) -> None:
    path = os.environ.get("LILQUEUE_TEST_LOG")
    if path:
        line = f"{task.name} {task.data.get('i', '-')} {task.attempts} {os.getpid()} {phase} {time.time():.3f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@jobs.worker("echo")
def echo(task: lilqueue.Task) -> None:
    record(task, "done")


@jobs.worker("hang")
def hang(task: lilqueue.Task) -> None:
    """Hangs for ``data["seconds"]`` (default 60) on its first attempt; returns at once after."""
    record(task, "start")
    if task.attempts == 1:
        time.sleep(float(task.data.get("seconds", 60)))
    record(task, "done")


@jobs.worker("review")
def review(task: lilqueue.Task) -> None:
    """Holds the task for a human, with a reason."""
    record(task, "held")
    task.hold(f"needs review: {task.data.get('why', 'unknown')}")
