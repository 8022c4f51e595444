"""SQS in-process, on moto's standalone server: counts that survive copies, and a poller
that never strands a message nor says "nothing ready" while a receive is in flight
(issue 11, items 7, 11 and 12)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from lilqueue.adapters import sqs_poller
from lilqueue.adapters.sqs import SQSAdapter
from lilqueue.testing import fresh_name, reserve_until


@pytest.fixture
def url(endpoint: str) -> str:
    return f"sqs://us-east-1?endpoint_url={endpoint}&wait=2"


@pytest.fixture
def adapters(url: str) -> Iterator[Any]:
    """``adapters()``: a new adapter on the server, closed after the test."""
    made: list[SQSAdapter] = []

    def make() -> SQSAdapter:
        made.append(SQSAdapter.from_config(url, {}))
        return made[-1]

    yield make
    for adapter in made:
        adapter.close()


def put(adapter: SQSAdapter, queue: str, *, ttr: int = 60) -> str:
    return adapter.put(queue, b"{}", priority=1024, delay=0, ttr=ttr)


def lapse_once(adapters: Any, queue: str) -> str:
    """Reserve the task on ``queue`` (ttr 1) and let its lease lapse: a run with no outcome."""
    dying = adapters()
    job = reserve_until(dying, [queue])
    assert (job.deliveries, job.unfinished) == (1, 0)
    dying.give_back()
    time.sleep(1.5)
    return job.id


def test_a_message_given_back_by_a_stopping_worker_keeps_its_counts(adapters: Any) -> None:
    first, second = fresh_name(), fresh_name()
    put(adapters(), second, ttr=1)
    task_id = lapse_once(adapters, second)
    put(adapters(), first)
    busy = adapters()
    job = reserve_until(busy, [first, second])  # the first queue wins; the second's message is received too
    assert job.queue == first
    busy.give_back()  # the runner stops
    assert busy.stats(second).reserved == 0  # nothing stranded: not even for the 60 s of a receive
    again = reserve_until(adapters(), [second], timeout=3)
    assert (again.id, again.deliveries, again.unfinished) == (task_id, 2, 1)  # the receive did not count


def test_unreserve_keeps_the_counts_of_a_task_that_never_started(adapters: Any) -> None:
    name = fresh_name()
    put(adapters(), name, ttr=1)
    task_id = lapse_once(adapters, name)
    worker = adapters()
    job = reserve_until(worker, [name])
    assert (job.id, job.deliveries, job.unfinished) == (task_id, 2, 1)
    worker.unreserve(job)  # the runner stops between reserving and starting
    again = reserve_until(adapters(), [name], timeout=3)
    assert (again.id, again.deliveries, again.unfinished) == (task_id, 2, 1)


def test_every_outcome_but_success_settles_the_unfinished_runs(adapters: Any) -> None:
    name = fresh_name()
    put(adapters(), name, ttr=1)
    lapse_once(adapters, name)
    worker = adapters()
    job = reserve_until(worker, [name])
    worker.release(job, priority=5, delay=0)  # a retry into another band is a copy too
    retried = reserve_until(worker, [name])
    assert (retried.priority, retried.deliveries, retried.unfinished) == (5, 3, 0)
    worker.release(retried, priority=5, delay=0)
    again = reserve_until(worker, [name])
    assert (again.deliveries, again.unfinished) == (4, 0)
    worker.delete(again)


def test_reserve_0_waits_for_a_long_poll_in_flight(adapters: Any) -> None:
    quiet, busy = fresh_name(), fresh_name()
    worker = adapters()
    assert worker.reserve([quiet, busy], 0.5) is None  # now every band is in a long poll (2 s)
    put(adapters(), busy)
    time.sleep(0.2)  # the long poll on `busy` has it, or is about to
    job = worker.reserve([quiet, busy], 0)  # a burst worker asks "anything ready?"
    assert job is not None and job.queue == busy  # not None: "drained" while a receive was in flight


def test_a_burst_drain_costs_requests_per_task_not_per_queue(adapters: Any) -> None:
    names = [fresh_name() for _ in range(20)]  # 100 SQS queues
    producer = adapters()
    for name in names:
        put(producer, name)
    worker = adapters()
    calls = 0
    receive = worker.receiver.receive_message

    def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return receive(**kwargs)

    worker.receiver.receive_message = counted
    drained = []
    while (job := worker.reserve(names, 0)) is not None:
        drained.append(job.queue)
        worker.delete(job)
    assert sorted(drained) == sorted(names)
    # a look at each of the 100, a look per task, then a look and a confirming look at each
    # of the 100 before "drained": not 100 per task
    assert calls <= 3 * 100 + 2 * len(names), calls


def test_long_polls_take_turns_when_queues_outnumber_threads(adapters: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs_poller, "LONG_THREADS", 4)
    monkeypatch.setattr(sqs_poller, "QUICK_THREADS", 2)
    names = [fresh_name() for _ in range(4)]  # 20 SQS queues, 4 long polls at a time, of 1 s each
    worker = adapters()
    assert worker.reserve(names, 1.0) is None
    put(adapters(), names[-1])
    started = time.monotonic()
    job = reserve_until(worker, names, timeout=10)
    assert job.queue == names[-1]
    assert time.monotonic() - started < 5 * 1 + 2  # a round: 20 slots / 4 threads x 1 s
    assert worker.stats(names[-1]).reserved == 1  # ours, and only ours
