"""The app the hostile-input tests run in a real worker process.

The queue is named by ``LILQUEUE_HOSTILE_QUEUE`` (default ``hostile``). Its one worker,
``canary``, appends ``"canary <data i> <attempt>"`` to the file named by
``LILQUEUE_TEST_LOG``: the test's proof that the worker survived everything before it.
"""

from __future__ import annotations

import os

import lilqueue

app = lilqueue.App()
queue = app.queue(os.environ.get("LILQUEUE_HOSTILE_QUEUE", "hostile"), max_attempts=3, backoff=0)


@queue.worker("canary")
def canary(task: lilqueue.Task) -> None:
    path = os.environ["LILQUEUE_TEST_LOG"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"canary {task.data.get('i', '-')} {task.attempts}\n")


@queue.worker("fail")
def fail(task: lilqueue.Task) -> None:
    """Always raises (hostile envelopes name it with huge attempt counts)."""
    raise RuntimeError("this worker always fails")


@queue.worker("retry")
def retry(task: lilqueue.Task) -> None:
    """Asks for a retry (hostile envelopes name it with huge attempt counts)."""
    task.retry()
