"""Dramatiq's side of the Redis benchmark: ``dramatiq bench.peers.redis_dramatiq -p 1 -t 1``."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import redis_common

dramatiq.set_broker(RedisBroker(url=redis_common.URL))  # type: ignore[no-untyped-call]


@dramatiq.actor(queue_name="bench-dramatiq")
def noop(data: dict[str, Any]) -> None:
    redis_common.noop(data)


def enqueuer() -> Any:
    return noop.send
