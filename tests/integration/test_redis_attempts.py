"""Delivery counts on Redis: ``Job.unfinished`` counts the runs since the last outcome that
never reached one, and ``unreserve`` hands a task back as if it had not been taken."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from lilqueue.adapters.base import Job
from lilqueue.adapters.redis import RedisAdapter
from lilqueue.testing import fresh_name, reserve_until
from tests.servers import free_port, redis_server


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    with redis_server(port, tmp_path_factory.mktemp("redis")):
        yield port


@pytest.fixture
def client(port: int) -> Iterator[redis.Redis]:
    r = redis.Redis(port=port)
    yield r
    r.close()


@pytest.fixture
def adapter(port: int) -> Iterator[RedisAdapter]:
    a = RedisAdapter.from_config(f"redis://127.0.0.1:{port}/0", {})
    yield a
    a.close()


def lapse(client: redis.Redis, job: Job) -> None:
    """The lease of ``job`` runs out now (its worker died or overran; nobody finished it)."""
    client.zadd(f"{job.queue}:reserved", {job.id: 0})


def take(adapter: RedisAdapter, q: str) -> tuple[int, int]:
    job = reserve_until(adapter, [q])
    return job.deliveries, job.unfinished


def test_runs_without_an_outcome_count_until_a_retry_hold_or_kick_settles_them(
    adapter: RedisAdapter, client: redis.Redis
) -> None:
    q = fresh_name("unfinished")
    adapter.put(q, b"x", priority=5, delay=0, ttr=60)
    seen = []
    for _ in range(3):
        job = reserve_until(adapter, [q])
        seen.append((job.deliveries, job.unfinished))
        lapse(client, job)
    assert seen == [(1, 0), (2, 1), (3, 2)]
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (4, 3)
    adapter.release(job, priority=5, delay=0)  # a retry settles them
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished, job.priority) == (5, 0, 5)
    lapse(client, job)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (6, 1)
    adapter.bury(job, reason="held")  # so does a hold, and the kick after it
    assert adapter.kick(q, 1) == 1
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (7, 0)
    lapse(client, job)
    assert take(adapter, q) == (8, 1)


def test_unreserve_leaves_deliveries_and_unfinished_as_they_were(adapter: RedisAdapter, client: redis.Redis) -> None:
    q = fresh_name("unreserve")
    adapter.put(q, b"first", priority=9, delay=0, ttr=60)
    adapter.put(q, b"second", priority=9, delay=0, ttr=60)
    job = reserve_until(adapter, [q])
    assert (job.body, job.deliveries, job.unfinished) == (b"first", 1, 0)
    adapter.unreserve(job)
    again = reserve_until(adapter, [q])
    assert (again.id, again.deliveries, again.unfinished, again.priority) == (job.id, 1, 0, 9)  # first still
    lapse(client, again)
    job = reserve_until(adapter, [q])
    assert (job.id, job.deliveries, job.unfinished) == (again.id, 2, 1)
    adapter.unreserve(job)
    adapter.unreserve(reserve_until(adapter, [q]))
    job = reserve_until(adapter, [q])
    assert (job.id, job.deliveries, job.unfinished) == (again.id, 2, 1)
    adapter.release(job, priority=9, delay=0)
    assert take(adapter, q) == (3, 0)


def test_a_late_worker_cannot_finish_a_task_handed_back_unstarted(adapter: RedisAdapter, client: redis.Redis) -> None:
    """unreserve does not count a delivery, yet the fence still moves: a worker whose lease
    lapsed before the task was handed out and back again changes nothing."""
    q = fresh_name("fence")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    stale = reserve_until(adapter, [q])
    lapse(client, stale)
    other = RedisAdapter.from_config(f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0", {})
    try:
        taken = reserve_until(other, [q])
        other.unreserve(taken)
        adapter.delete(stale)
        adapter.release(stale, priority=1, delay=0)
        adapter.flush()
        assert adapter.stats(q).ready == 1
        job = reserve_until(other, [q])
        assert (job.deliveries, job.unfinished) == (2, 1)
        other.delete(job)
    finally:
        other.close()
