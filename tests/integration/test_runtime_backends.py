"""The TTR watchdog and kill -9 recovery on every server backend, with real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings

from .backends import backend_url
from .workers import lines, spawn, stop, wait_until

BACKENDS = ["beanstalkd", "redis", "sqs"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def jobs(url: str) -> Iterator[lilqueue.QueueHandler]:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    yield app.queue("jobs")
    app.close()


def test_a_hung_task_is_stopped_and_runs_again_once(
    jobs: lilqueue.QueueHandler, url: str, tmp_path: Path, procs: list[object]
) -> None:
    log = tmp_path / "runs.log"
    jobs.send("hang", {"i": 1, "seconds": 60}, ttr=2)
    sup = spawn(url, log)
    procs.append(sup)
    wait_until(lambda: [r for r in lines(log) if r[4] == "done"], timeout=40, what="the rerun to finish")
    records = lines(log)
    assert [(r[2], r[4]) for r in records] == [("1", "start"), ("2", "start"), ("2", "done")]
    assert records[0][3] != records[1][3]
    code, out = stop(sup)
    assert code == 0 and "ran past its ttr" in out


def test_kill_9_of_a_worker_process_mid_task(
    jobs: lilqueue.QueueHandler, url: str, tmp_path: Path, procs: list[object]
) -> None:
    log = tmp_path / "runs.log"
    jobs.send("sleep", {"i": 1, "seconds": 1}, ttr=3)
    sup = spawn(url, log, "--concurrency", "2")
    procs.append(sup)
    wait_until(lambda: lines(log), what="the task to start")
    os.kill(int(lines(log)[0][3]), signal.SIGKILL)
    wait_until(lambda: [r for r in lines(log) if r[4] == "done"], timeout=40, what="the task to run again")
    starts = [r for r in lines(log) if r[4] == "start"]
    assert [r[2] for r in starts] == ["1", "2"] and starts[0][3] != starts[1][3]
    assert stop(sup)[0] == 0
