"""Huey's side of the Redis benchmark: ``huey_consumer bench.peers.redis_huey.huey -w 1 -k thread``."""

from __future__ import annotations

from typing import Any

from huey import RedisHuey  # type: ignore[import-untyped]

from bench.peers import redis_common

huey = RedisHuey("bench-huey", url=redis_common.URL)


@huey.task()  # type: ignore[untyped-decorator]
def noop(data: dict[str, Any]) -> None:
    redis_common.noop(data)


def enqueuer() -> Any:
    return noop
