"""RQ's side of the Redis benchmark: ``rq worker -w rq.worker.SimpleWorker`` runs ``noop``."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue

from bench.peers import redis_common

QUEUE = "bench-rq"


def noop(data: dict[str, Any]) -> None:
    redis_common.noop(data)


def enqueuer() -> Any:
    queue = Queue(QUEUE, connection=Redis.from_url(redis_common.URL))
    return lambda data: queue.enqueue(noop, data)
