"""Delivery counts on beanstalkd: ``Job.unfinished`` from ``stats-job`` less what a retry or a
kick settled (kept in a settle marker), and ``unreserve`` taking back its reservation.

A worker that dies is simulated by closing its connection while it holds a job: beanstalkd
hands the job back at once and counts nothing but the reservation (checked below), which is
what a killed process or a lapsed lease leaves behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import pytest

from lilqueue.adapters.base import Job
from lilqueue.adapters.beanstalkd import BeanstalkdAdapter
from lilqueue.testing import fresh_name, reserve_until
from tests.servers import beanstalkd_server, free_port


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    with beanstalkd_server(port):
        yield port


@pytest.fixture
def adapter(port: int) -> Iterator[BeanstalkdAdapter]:
    a = BeanstalkdAdapter.from_config(f"beanstalkd://127.0.0.1:{port}", {})
    yield a
    a.close()


@pytest.fixture
def raw(port: int) -> Iterator[greenstalk.Client[bytes]]:
    client: greenstalk.Client[bytes] = greenstalk.Client(("127.0.0.1", port), encoding=None)
    yield client
    client.close()


def dies_holding(port: int, q: str) -> Job:
    """A worker takes the next task of ``q`` and dies before any outcome."""
    dying = BeanstalkdAdapter.from_config(f"beanstalkd://127.0.0.1:{port}", {})
    job = reserve_until(dying, [q])
    dying.close()
    return job


def marker_tubes(raw: greenstalk.Client[bytes], q: str) -> list[str]:
    """The settle-marker tubes of queue ``q`` that hold a marker."""
    names = [t for t in raw.tubes() if t.startswith(f"lilqueue-settled/{q}/")]
    return [t for t in names if raw.stats_tube(t)["total-jobs"] and raw.stats_tube(t)["current-jobs-ready"]]


def test_closing_a_connection_counts_only_the_reservation(raw: greenstalk.Client[bytes], port: int) -> None:
    """What the formula rests on (beanstalkd 1.12): no release, bury or timeout is counted."""
    q = fresh_name("close")
    raw.use(q)
    jid = raw.put(b"x")
    dies_holding(port, q)
    stats = raw.stats_job(jid)
    assert (stats["state"], stats["reserves"], stats["releases"], stats["timeouts"]) == ("ready", 1, 0, 0)


def test_unfinished_runs_count_until_a_retry_or_a_kick_settles_them(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], port: int
) -> None:
    q = fresh_name("unfinished")
    adapter.put(q, b"x", priority=7, delay=0, ttr=60)
    dies_holding(port, q)
    dies_holding(port, q)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (3, 2)
    adapter.release(job, priority=7, delay=0)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (4, 0)
    adapter.release(job, priority=7, delay=0)  # nothing new to settle: no marker is rewritten
    dies_holding(port, q)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (6, 1)
    adapter.bury(job, reason="its runs never finished")
    assert adapter.kick(q, 1) == 1
    job = dies_holding(port, q)
    assert (job.deliveries, job.unfinished, job.priority) == (7, 0, 7)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (8, 1)
    assert len(marker_tubes(raw, q)) == 1
    adapter.delete(job)
    adapter.flush()
    assert marker_tubes(raw, q) == []  # the marker goes with its task
    assert adapter.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}


def test_a_task_never_retried_or_kicked_costs_no_marker(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes]
) -> None:
    q = fresh_name("plain")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    job = reserve_until(adapter, [q])
    adapter.release(job, priority=1, delay=0)
    assert marker_tubes(raw, q) == []
    adapter.delete(reserve_until(adapter, [q]))


def test_unreserve_takes_back_its_reservation(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], port: int
) -> None:
    q = fresh_name("unreserve")
    adapter.put(q, b"x", priority=9, delay=0, ttr=60)
    job = reserve_until(adapter, [q])
    adapter.unreserve(job)
    again = dies_holding(port, q)
    assert (again.id, again.deliveries, again.unfinished, again.priority) == (job.id, 1, 0, 9)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (2, 1)
    adapter.unreserve(job)
    adapter.unreserve(reserve_until(adapter, [q]))
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (2, 1)
    assert raw.stats_job(int(job.id))["reserves"] == 5  # beanstalkd's own count goes on
    adapter.release(job, priority=9, delay=0)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (3, 0)
    adapter.delete(job)


def test_a_marker_another_client_spoiled_counts_as_none(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], port: int
) -> None:
    q = fresh_name("spoiled")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    dies_holding(port, q)
    job = reserve_until(adapter, [q])
    adapter.release(job, priority=1, delay=0)
    (tube,) = marker_tubes(raw, q)
    raw.use(tube)
    raw.delete(raw.peek_ready())
    raw.put(b'{"base": "nan", "skip": -5}')
    raw.put(b"not json")
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (3, 1)  # as if it had never been settled: never fewer
    adapter.release(job, priority=1, delay=0)  # rewrites the marker, dropping both
    raw.use(tube)
    assert raw.peek_ready().body == b'{"base": 1, "skip": 0}'
    job = reserve_until(adapter, [q])
    assert job.unfinished == 0
    adapter.delete(job)
    adapter.flush()
    assert marker_tubes(raw, q) == []


def test_deleting_a_held_task_by_id_removes_its_marker(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], port: int
) -> None:
    q = fresh_name("byid")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    dies_holding(port, q)
    job = reserve_until(adapter, [q])
    adapter.bury(job, reason="held")
    assert adapter.kick_id(q, job.id)
    job = reserve_until(adapter, [q])
    adapter.bury(job, reason="held again")
    assert len(marker_tubes(raw, q)) == 1
    assert adapter.delete_id(q, job.id)
    assert marker_tubes(raw, q) == []


def forge_marker(raw: greenstalk.Client[bytes], q: str, jid: str, base: int, skip: int) -> None:
    """Put a settle marker for job ``jid`` of ``q`` the way a hostile client could (ids are sequential)."""
    raw.use(f"lilqueue-settled/{q}/{jid}")
    raw.put(json.dumps({"base": base, "skip": skip}).encode())


def test_a_forged_skip_cannot_keep_a_failing_task_at_attempt_1(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: a marker skipping 4e9 reservations made a failing task run forever at attempt 1."""
    q = fresh_name("forgedskip")
    id = adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    forge_marker(raw, q, id, 0, 4_000_000_000)
    seen = []
    for _ in range(5):  # a task that fails every run: retried with no delay
        job = reserve_until(adapter, [q])
        seen.append(job.deliveries)
        adapter.release(job, priority=1, delay=0)
    assert seen == [1, 2, 3, 4, 5]
    assert marker_tubes(raw, q) == []  # removed when met...
    warnings = [r.getMessage() for r in caplog.records if "ignored and removed the settle marker" in r.getMessage()]
    assert len(warnings) == 1 and "4000000000" in warnings[0]  # ...and logged once
    adapter.delete(reserve_until(adapter, [q]))


def test_a_forged_base_cannot_cancel_the_count_of_runs_that_never_finished(
    adapter: BeanstalkdAdapter, raw: greenstalk.Client[bytes], port: int
) -> None:
    q = fresh_name("forgedbase")
    id = adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    forge_marker(raw, q, id, 4_000_000_000, 0)
    adapter.release(reserve_until(adapter, [q]), priority=1, delay=0)
    dies_holding(port, q)
    dies_holding(port, q)
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (4, 2)
    assert marker_tubes(raw, q) == []
    adapter.release(job, priority=1, delay=0)  # a retry settles them: an honest marker now
    job = reserve_until(adapter, [q])
    assert (job.deliveries, job.unfinished) == (5, 0)
    adapter.delete(job)


def test_a_marker_larger_than_the_counts_left_by_a_restart_is_ignored(tmp_path: Path) -> None:
    """beanstalkd 1.12 resets a ready job's stats-job counts on a binlog restart (checked here):
    the marker written before it no longer fits, and counts never go negative or loop."""
    port = free_port()
    (tmp_path / "binlog").mkdir()
    with beanstalkd_server(port, "-b", str(tmp_path / "binlog")) as server:
        adapter = BeanstalkdAdapter.from_config(f"beanstalkd://127.0.0.1:{port}", {})
        q = fresh_name("restart")
        adapter.put(q, b"x", priority=1, delay=0, ttr=60)
        dies_holding(port, q)
        dies_holding(port, q)
        adapter.unreserve(reserve_until(adapter, [q]))
        job = reserve_until(adapter, [q])
        assert (job.deliveries, job.unfinished) == (3, 2)
        adapter.release(job, priority=1, delay=0)  # the marker: base 2, skip 1
        adapter.close()
        server.restart()
        raw: greenstalk.Client[bytes] = greenstalk.Client(("127.0.0.1", port), encoding=None)
        assert raw.stats_job(int(job.id))["reserves"] == 0  # attempt counts restart with the server
        seen = []
        for _ in range(3):
            job = reserve_until(adapter, [q])
            seen.append((job.deliveries, job.unfinished))
            adapter.release(job, priority=1, delay=0)
        assert seen == [(1, 0), (2, 0), (3, 0)]
        assert marker_tubes(raw, q) == []
        adapter.delete(reserve_until(adapter, [q]))
        adapter.close()
        raw.close()
