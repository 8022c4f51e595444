"""SQS with real worker processes, on moto's standalone server over HTTP.

The seed's SQS gotchas, each as a test that would fail on the seed: a worker watching
several queues polled them in turn (``wait`` seconds each), hold was a no-op (the task
looped), and a lost worker's task relied on a fixed visibility timeout.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings
from lilqueue.handler import HeldTask
from tests.integration.workers import kill_group, lines, spawn, stop, wait_until
from tests.servers import moto_sqs

APP = "tests.apps.sqs_app:app"


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    """A moto server on a free port, with dummy credentials in the environment (workers inherit them)."""
    with moto_sqs() as endpoint:
        yield f"sqs://us-east-1?endpoint_url={endpoint}&wait=5"


@pytest.fixture
def producer(backend: str) -> Iterator[lilqueue.App]:
    app = lilqueue.App(settings=load_settings(backend=backend, env={}))
    yield app
    app.close()


def records(log: Path, phase: str) -> list[list[str]]:
    return [r for r in lines(log) if r[4] == phase]


def test_a_task_on_the_last_of_three_watched_queues_starts_promptly(
    backend: str, producer: lilqueue.App, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    worker = spawn(backend, log, app=APP, queues="sqs-one,sqs-two,sqs-three")
    try:
        producer.queue("sqs-one").send("echo", {"i": 0})
        wait_until(lambda: records(log, "done"), 30, "the worker to start")
        time.sleep(1.5)  # idle: every queue is now in a long poll of `wait` (5) seconds
        latencies = []
        for i, name in enumerate(["sqs-three", "sqs-two", "sqs-three"], start=1):
            sent = time.time()
            producer.queue(name).send("echo", {"i": i})
            wait_until(lambda i=i: any(r[1] == str(i) for r in records(log, "done")), 10, f"task {i}")
            started = next(float(r[5]) for r in records(log, "done") if r[1] == str(i))
            latencies.append(started - sent)
            time.sleep(1.0)
        # the seed waited up to `wait` seconds on each queue in turn: up to 10 s for the third
        assert max(latencies) < 1.0, latencies
    finally:
        stop(worker)


def test_a_held_task_does_not_come_back_until_kicked(backend: str, producer: lilqueue.App, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    parked = producer.queue("sqs-parked")
    worker = spawn(backend, log, app=APP, queues="sqs-parked")
    try:
        task_id = parked.send("park", {"i": 1}, ttr=1)
        wait_until(lambda: records(log, "held"), 30, "the task to run and hold itself")
        (held,) = _wait_for_held(parked)
        assert (held.id, held.task, held.reason) == (task_id, "park", "parked by the test")
        time.sleep(4)  # four times its ttr: on the seed it would have run again by now, in a loop
        assert len(lines(log)) == 1
        assert parked.stats().held == 1
        assert parked.kick(5) == 1
        wait_until(lambda: records(log, "done"), 15, "the kicked task to run")
        (run,) = records(log, "done")
        assert run[2] == "2"  # attempts keep counting across hold and kick
        assert parked.held() == []
    finally:
        stop(worker)


def test_a_killed_workers_task_comes_back_after_its_ttr(backend: str, producer: lilqueue.App, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    first = spawn(backend, log, app=APP, queues="sqs-lost")
    second = None
    try:
        producer.queue("sqs-lost").send("hang", {"i": 1}, ttr=3)
        wait_until(lambda: records(log, "start"), 30, "the first worker to take the task")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.time()
        second = spawn(backend, log, app=APP, queues="sqs-lost")
        wait_until(lambda: records(log, "done"), 30, "the task to come back")
        (start,) = records(log, "start")
        (done,) = records(log, "done")
        assert done[2] == "2" and done[3] != start[3]  # attempt 2, in the other worker
        lease = float(done[5]) - float(start[5])
        assert 2.5 <= lease < 3 + 4, (lease, killed)  # its own ttr (3 s), not the 60 s default
    finally:
        kill_group([first])
        if second is not None:
            stop(second)


def test_a_task_whose_runs_never_finish_is_held_unrun_after_max_attempts(
    backend: str, producer: lilqueue.App, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    lost = producer.queue("sqs-lost")
    task_id = lost.send("stuck", {"i": 1}, ttr=1)
    worker = spawn(backend, log, app=APP, queues="sqs-lost")
    try:
        (held,) = _wait_for_held(lost, 60)
        assert held.id == task_id and held.reason is not None
        assert "ran past its ttr on 3 attempts" in held.reason, held.reason
        assert [r[2] for r in records(log, "start")] == ["1", "2", "3"]  # the watchdog killed each; no 4th run
    finally:
        stop(worker)


def _wait_for_held(queue: lilqueue.QueueHandler, timeout: float = 10) -> list[HeldTask]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = queue.held()
        if held:
            return held
        time.sleep(0.1)
    raise AssertionError("nothing held")
