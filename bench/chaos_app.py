"""The app the chaos run's workers load: one task that records it ran (``CHAOS_LOG``)."""

from __future__ import annotations

import os

import lilqueue

app = lilqueue.App()
chaos = app.queue("chaos", max_attempts=100, backoff=0)
_log = os.environ.get("CHAOS_LOG", os.devnull)


@chaos.worker("work")
def work(task: lilqueue.Task) -> None:
    fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.data['i']} {os.getpid()} {task.envelope_id}\n".encode())
    finally:
        os.close(fd)
