"""Celery's side of the Redis benchmark: ``celery -A bench.peers.redis_celery worker -P solo``."""

from __future__ import annotations

from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from bench.peers import redis_common

QUEUE = "bench-celery"
app = Celery("bench", broker=redis_common.URL)
app.conf.task_default_queue = QUEUE
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop(data: dict[str, Any]) -> None:
    redis_common.noop(data)


def enqueuer() -> Any:
    return noop.delay
