"""A small app for the SQS process tests (``--app tests.apps.sqs_app:app``).

Every run appends ``"<task name> <data i> <attempt> <pid> <phase> <epoch seconds>"``
to the file named by ``LILQUEUE_TEST_LOG`` with one ``write`` on an O_APPEND descriptor.

``LILQUEUE_SQS_MANY=STEM:COUNT`` declares COUNT more queues, ``STEM-000`` and on, each
with the workers ``echo`` and ``nap`` (sleeps ``data["s"]`` seconds, then records).
"""

from __future__ import annotations

import os
import time

import lilqueue

app = lilqueue.App()
watched = [app.queue(name, max_attempts=3, backoff=0) for name in ("sqs-one", "sqs-two", "sqs-three")]
parked = app.queue("sqs-parked", max_attempts=3, backoff=0)
lost = app.queue("sqs-lost", max_attempts=3, backoff=0)


def record(task: lilqueue.Task, phase: str) -> None:
    path = os.environ.get("LILQUEUE_TEST_LOG")
    if path:
        line = f"{task.name} {task.data.get('i', '-')} {task.attempts} {os.getpid()} {phase} {time.time():.6f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def echo(task: lilqueue.Task) -> None:
    record(task, "done")


def nap(task: lilqueue.Task) -> None:
    time.sleep(float(task.data.get("s", 0)))
    record(task, "done")


def many() -> list[lilqueue.QueueHandler]:
    stem, _, count = os.environ.get("LILQUEUE_SQS_MANY", "").partition(":")
    return [app.queue(f"{stem}-{n:03d}", max_attempts=3, backoff=0) for n in range(int(count or 0))]


for queue in [*watched, *many()]:
    queue.worker("echo")(echo)
    queue.worker("nap")(nap)


@parked.worker("park")
def park(task: lilqueue.Task) -> None:
    """Holds itself on the first run; succeeds once kicked."""
    if task.attempts == 1:
        record(task, "held")
        task.hold("parked by the test")
    else:
        record(task, "done")


@lost.worker("hang")
def hang(task: lilqueue.Task) -> None:
    """Hangs on the first run (the test kills the worker); succeeds on the next."""
    if task.attempts == 1:
        record(task, "start")
        time.sleep(3600)
    record(task, "done")


@lost.worker("stuck")
def stuck(task: lilqueue.Task) -> None:
    """Hangs on every run: the watchdog kills it each time, until it is held unrun."""
    record(task, "start")
    time.sleep(3600)
