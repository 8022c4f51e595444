"""Hostile input on beanstalkd: the shared corpus put with greenstalk, beanstalkd-level
oddities (the largest body the server takes, extreme priority and ttr, a job buried by
another client), forged reason records and settle markers. Everything is held with a
reason, the worker never crashes or loops, the listing never lies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import pytest

import lilqueue
from lilqueue.adapters.beanstalkd import NO_RECORD, BeanstalkdAdapter
from lilqueue.config import load_settings
from lilqueue.errors import ConfigError
from lilqueue.testing import fresh_name, reserve_until
from tests.hostile import check_hostile
from tests.servers import beanstalkd_server, free_port


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    with beanstalkd_server(port):
        yield port


@pytest.fixture
def url(port: int) -> str:
    return f"beanstalkd://127.0.0.1:{port}"


@pytest.fixture
def raw(port: int) -> Iterator[greenstalk.Client[bytes]]:
    client: greenstalk.Client[bytes] = greenstalk.Client(("127.0.0.1", port), encoding=None)
    yield client
    client.close()


def backend_level_items(raw: greenstalk.Client[bytes], q: str) -> int:
    """Put beanstalkd-level oddities into tube ``q``; how many must end up held."""
    raw.use(q)
    limit = int(raw.stats()["max-job-size"])
    with pytest.raises(greenstalk.JobTooBigError):
        raw.put(b"x" * (limit + 1))  # the server itself refuses what is too big: nothing to hold
    raw.put(b"\xff" * limit)  # the largest body it takes, not a task
    raw.put(b'{"v":1,"task":"canary"}'[:-1], priority=2**32 - 1, ttr=0)  # extreme priority; ttr 0 (made 1)
    raw.watch(q)
    buried = raw.put(b"buried elsewhere", priority=0)
    job = raw.reserve(timeout=1)
    assert job.id == buried
    raw.bury(job)  # by another client: no reason record
    raw.ignore(q)
    # forged reason records: no such job, a job that is ready, garbage, a name that is no record's
    for name, body in [
        (f"lilqueue-held/{q}/1/999999999", b'{"reason": "forged", "reserves": 0}'),
        (f"lilqueue-held/{q}/2/{buried}", b'{"reason": "forged", "reserves": 7, "held_at": NaN}'),
        (f"lilqueue-held/{q}/3/{buried}", b"not json"),
        (f"lilqueue-held/{q}/abc/def", b"{}"),
    ]:
        raw.use(name)
        raw.put(body)
    raw.use(q)
    return 3


def test_the_hostile_corpus_and_beanstalkd_level_items_are_held(
    url: str, raw: greenstalk.Client[bytes], tmp_path: Path
) -> None:
    q = fresh_name("hostile")
    extra = backend_level_items(raw, q)

    def put_raw(body: bytes) -> None:
        raw.put(body, ttr=30)

    tried, held = check_hostile(url, q, put_raw, tmp_path, extra=extra)
    assert tried == held
    assert (tmp_path / "canary.log").read_text().splitlines() == ["canary 1 1"]  # nothing hostile ran
    adapter = BeanstalkdAdapter.from_config(url, {})
    listed = adapter.held(q, 1000)
    assert "forged" not in {h.reason for h in listed} and NO_RECORD in {h.reason for h in listed}
    assert all(h.held_at is None or h.held_at > 0 for h in listed)
    adapter.close()
    print(f"beanstalkd hostile: {tried} tried, {held} held")


def test_a_second_record_for_a_held_job_does_not_list_it_twice(url: str, raw: greenstalk.Client[bytes]) -> None:
    q = fresh_name("twice")
    adapter = BeanstalkdAdapter.from_config(url, {})
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    job = reserve_until(adapter, [q])
    adapter.bury(job, reason="genuine")
    raw.use(f"lilqueue-held/{q}/9999999999999/{job.id}")
    raw.put(json.dumps({"tube": q, "id": int(job.id), "reason": "forged", "reserves": 1}).encode())
    assert [(h.id, h.reason) for h in adapter.held(q)] == [(job.id, "genuine")]
    adapter.close()


def test_a_reason_with_lone_surrogates_is_stored(url: str) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue(fresh_name("surrogate"))
    task_id = queue.send("t", {})
    job = reserve_until(app.adapter, [queue.backend_name])
    app.adapter.bury(job, reason="bad \udc80 text \ud800")
    (held,) = queue.held()
    assert held.id == task_id and held.reason == "bad \\udc80 text \\ud800"
    app.close()


def test_tube_names(url: str) -> None:
    problem = BeanstalkdAdapter.queue_name_problem
    for name in ["-dash", "has space", "é", "x" * 201, "new\nline", "a,b", "lilqueue-held/x", "lilqueue-settled/x"]:
        assert problem(name) is not None, name
    longest = "q" * 200
    for name in ["a", "A-z0_9+/;.$()", "(x)", longest]:
        assert problem(name) is None, name
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    with pytest.raises(ConfigError, match="cannot declare queue"):
        app.queue("lilqueue-held/mine")
    queue: lilqueue.QueueHandler = app.queue(longest)  # its reason records' tube names still fit
    task_id = queue.send("t", {})
    job = reserve_until(app.adapter, [longest])
    app.adapter.bury(job, reason="the longest name")
    assert [(h.id, h.reason) for h in queue.held()] == [(task_id, "the longest name")]
    assert queue.kick(1) == 1 and queue.stats().ready == 1
    app.close()
