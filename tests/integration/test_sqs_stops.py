"""SQS: a stopping worker strands nothing its poll threads took (issue 11, items 11 and 12).

Real worker processes on moto's standalone server. "Stranded" is what SQS counts as
not visible (``reserved``) while no worker runs it: each test reads the counts right
after the worker exits, well inside the 60 s a received message stays hidden.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

import lilqueue
from lilqueue.config import load_settings
from tests.integration.workers import lines, spawn, stop, wait_until

APP = "tests.apps.sqs_app:app"


@pytest.fixture
def backend(endpoint: str) -> str:
    return f"sqs://us-east-1?endpoint_url={endpoint}&wait=5"


@pytest.fixture
def many(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], list[str]]]:
    """``many(n)``: n fresh queue names the worker app declares (through LILQUEUE_SQS_MANY)."""

    def declare(count: int) -> list[str]:
        stem = f"lq-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("LILQUEUE_SQS_MANY", f"{stem}:{count}")
        return [f"{stem}-{n:03d}" for n in range(count)]

    yield declare


@pytest.fixture
def producer(backend: str) -> Iterator[lilqueue.App]:
    app = lilqueue.App(settings=load_settings(backend=backend, env={}))
    yield app
    app.close()


def reserved(endpoint: str, names: list[str]) -> int:
    """Messages SQS counts as not visible in the queues ``names`` (the default band: the
    tests' tasks have the default priority, and a hand-back stays in its band)."""
    client = boto3.client("sqs", endpoint_url=endpoint)

    def count(name: str) -> int:
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
        found = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        return int(found["Attributes"]["ApproximateNumberOfMessagesNotVisible"])

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(count, names))


def finish(worker: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for a burst worker to exit by itself: (exit code, output)."""
    out, _ = worker.communicate(timeout=timeout)
    return worker.returncode, out


def done(log: Path) -> dict[str, list[str]]:
    """The attempts each task (by its data ``i``) ran with."""
    runs: dict[str, list[str]] = {}
    for record in lines(log):
        if record[4] == "done":
            runs.setdefault(record[1], []).append(record[2])
    return runs


def test_burst_over_two_queues_runs_both_and_strands_nothing(
    endpoint: str,
    backend: str,
    producer: lilqueue.App,
    many: Callable[[int], list[str]],
    log: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    names = many(2)
    for i, name in enumerate(names):
        producer.queue(name).send("echo", {"i": i})
    worker = spawn(backend, log, "--burst", app=APP, queues=",".join(names))
    procs.append(worker)
    code, out = finish(worker, 60)
    assert code == 0, out
    assert reserved(endpoint, names) == 0
    assert done(log) == {"0": ["1"], "1": ["1"]}


def test_a_recycled_worker_gives_back_what_its_poll_threads_took(
    endpoint: str,
    backend: str,
    producer: lilqueue.App,
    many: Callable[[int], list[str]],
    log: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    names = many(2)
    for i, name in enumerate(names):
        producer.queue(name).send("echo", {"i": i})
    worker = spawn(backend, log, "--max-tasks", "1", app=APP, queues=",".join(names))
    procs.append(worker)  # each process runs one task, then a fresh one replaces it
    wait_until(lambda: len(done(log)) == 2, 20, "both tasks, in two worker processes")
    runs = [r for r in lines(log) if r[4] == "done"]
    assert [r[2] for r in runs] == ["1", "1"] and runs[0][3] != runs[1][3]  # uncounted, in another process
    assert (
        float(runs[1][5]) - float(runs[0][5]) < 10
    )  # given back at the recycle (after its long polls), not 60 s later
    assert reserved(endpoint, names) == 0


@pytest.mark.slow
def test_sigterm_while_busy_on_many_queues_strands_nothing_and_counts_nothing(
    endpoint: str,
    backend: str,
    producer: lilqueue.App,
    many: Callable[[int], list[str]],
    log: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    names = many(60)  # 300 SQS queues: more than the poller's long-poll threads, so they take turns
    for i, name in enumerate(names):
        producer.queue(name).send("nap", {"i": i, "s": 0.05})
    worker = spawn(backend, log, app=APP, queues=",".join(names))
    procs.append(worker)
    wait_until(lambda: len(done(log)) >= 5, 60, "the worker to run a few tasks")
    code, out = stop(worker, sig=signal.SIGTERM, timeout=30)  # meanwhile its poll threads took many more
    assert code == 0, out
    assert reserved(endpoint, names) == 0
    ran = len(done(log))
    assert ran < len(names), "the worker ran everything before the signal: nothing was tested"
    rest = spawn(backend, log, "--burst", app=APP, queues=",".join(names))
    procs.append(rest)
    code, out = finish(rest, 120)
    assert code == 0, out
    runs = done(log)
    assert sorted(runs, key=int) == [str(i) for i in range(len(names))]
    assert all(attempts == ["1"] for attempts in runs.values()), runs  # given back uncounted, run once


@pytest.mark.slow
def test_a_worker_watching_210_queues_starts_a_task_on_the_last_promptly(
    endpoint: str,
    backend: str,
    producer: lilqueue.App,
    many: Callable[[int], list[str]],
    log: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    names = many(210)  # 1,050 SQS queues
    worker = spawn(backend, log, app=APP, queues=",".join(names))
    procs.append(worker)
    producer.queue(names[0]).send("echo", {"i": 0})
    wait_until(lambda: "0" in done(log), 90, "the worker to start and run a first task")
    time.sleep(3)  # idle: every slot in its turn of long polls
    sent = time.time()
    producer.queue(names[-1]).send("echo", {"i": 1})
    wait_until(lambda: "1" in done(log), 30, "the task on the last queue")
    started = next(float(r[5]) for r in lines(log) if r[1] == "1")
    assert started - sent < 10.0  # moto answers ~190 requests/s: a round over 1,050 queues takes ~6 s
    assert reserved(endpoint, names[-1:]) == 0
    code, out = stop(worker, timeout=30)
    assert code == 0, out
    assert reserved(endpoint, names) == 0
