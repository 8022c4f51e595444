"""The worker runtime with real processes on SQLite: watchdog, recycling, crashes, shutdown."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lilqueue
from lilqueue.config import load_settings

from .workers import lines, spawn, stop, wait_until


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/queue.db"


@pytest.fixture
def jobs(url: str) -> Iterator[lilqueue.QueueHandler]:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    yield app.queue("jobs")
    app.close()


def pids_of(log: Path, phase: str = "start") -> list[int]:
    return [int(r[3]) for r in lines(log) if r[4] == phase]


def test_kill_9_of_a_child_mid_task(jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]) -> None:
    jobs.send("sleep", {"i": 1, "seconds": 1}, ttr=3)
    sup = spawn(url, log, "--concurrency", "2")
    procs.append(sup)
    wait_until(lambda: pids_of(log), what="the task to start")
    os.kill(pids_of(log)[0], signal.SIGKILL)
    wait_until(lambda: pids_of(log, "done"), timeout=30, what="the task to run again and finish")
    starts = [r for r in lines(log) if r[4] == "start"]
    assert [r[2] for r in starts] == ["1", "2"] and starts[0][3] != starts[1][3]
    assert len(pids_of(log, "done")) == 1
    code, out = stop(sup)
    assert code == 0 and "restarting it" in out


def test_kill_9_of_the_supervisor_loses_nothing(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    for i in range(40):
        jobs.send("sleep", {"i": i, "seconds": 0.05}, ttr=3)
    sup = spawn(url, log, "--concurrency", "2")
    procs.append(sup)
    wait_until(lambda: len(pids_of(log, "done")) >= 5, what="some tasks to finish")
    children = set(pids_of(log))
    sup.kill()  # kill -9 the supervisor: its children notice and stop after their task
    sup.wait()
    wait_until(lambda: not any(_alive(p) for p in children), timeout=10, what="orphaned children to exit")
    second = spawn(url, log, "--burst")
    procs.append(second)
    time.sleep(3.5)  # anything cut off comes back after its ttr
    code, out = stop(second, sig=0, timeout=60)
    assert code == 0, out
    done = collections.Counter(r[1] for r in lines(log) if r[4] == "done")
    assert set(done) == {str(i) for i in range(40)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_a_hung_task_is_stopped_and_runs_again_once(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    jobs.send("hang", {"i": 1, "seconds": 60}, ttr=2)
    sup = spawn(url, log)
    procs.append(sup)
    wait_until(lambda: pids_of(log, "done"), timeout=20, what="the rerun to finish")
    time.sleep(2.5)
    records = lines(log)
    assert [(r[2], r[4]) for r in records] == [("1", "start"), ("2", "start"), ("2", "done")]
    assert records[0][3] != records[1][3]  # the hung process was replaced
    code, out = stop(sup)
    assert code == 0 and "ran past its ttr" in out


def test_touch_resets_the_watchdog(jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]) -> None:
    jobs.send("sleep", {"i": 1, "seconds": 4.5, "touch": True}, ttr=2)
    sup = spawn(url, log)
    procs.append(sup)
    wait_until(lambda: pids_of(log, "done"), timeout=20, what="the task to finish")
    assert [(r[2], r[4]) for r in lines(log)] == [("1", "start"), ("1", "done")]
    assert stop(sup)[0] == 0


def test_auto_touch_keeps_a_slow_task_alive(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    jobs.send("sleep", {"i": 1, "seconds": 4.5}, ttr=2)
    sup = spawn(url, log, "--auto-touch")
    procs.append(sup)
    wait_until(lambda: pids_of(log, "done"), timeout=20, what="the task to finish")
    assert [(r[2], r[4]) for r in lines(log)] == [("1", "start"), ("1", "done")]
    assert stop(sup)[0] == 0


def test_a_leaking_worker_is_recycled(jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]) -> None:
    for i in range(6):
        jobs.send("leak", {"i": i, "mb": 40})
    sup = spawn(url, log, "--max-memory", "90", "--burst")
    procs.append(sup)
    code, out = stop(sup, sig=0, timeout=60)
    assert code == 0, out
    records = lines(log)
    assert sorted(r[1] for r in records) == [str(i) for i in range(6)]
    assert len({r[3] for r in records}) >= 2 and "reached its limit" in out


def test_grace_bounds_the_wait_on_sigterm(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    jobs.send("sleep", {"i": 1, "seconds": 30}, ttr=60)
    sup = spawn(url, log, "--grace", "1")
    procs.append(sup)
    wait_until(lambda: pids_of(log), what="the task to start")
    started = time.monotonic()
    _, out = stop(sup, signal.SIGTERM, timeout=15)
    assert time.monotonic() - started < 8 and "grace period over" in out
    assert pids_of(log, "done") == []


def test_sigterm_to_a_supervised_worker_finishes_the_task(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    jobs.send("sleep", {"i": 1, "seconds": 1.5})
    jobs.send("echo", {"i": 2})
    sup = spawn(url, log, "--concurrency", "1", "--threads", "1")
    procs.append(sup)
    wait_until(lambda: pids_of(log), what="the task to start")
    code, out = stop(sup, signal.SIGTERM)
    assert code == 0, out
    assert [(r[0], r[4]) for r in lines(log)] == [("sleep", "start"), ("sleep", "done")]
    assert jobs.stats().ready == 1


def test_threads_share_the_work(jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]) -> None:
    for i in range(8):
        jobs.send("sleep", {"i": i, "seconds": 0.5})
    sup = spawn(url, log, "--threads", "4", "--burst")
    procs.append(sup)
    started = time.monotonic()
    code, out = stop(sup, sig=0, timeout=60)
    assert code == 0, out
    assert sorted(r[1] for r in lines(log) if r[4] == "done") == [str(i) for i in range(8)]
    assert time.monotonic() - started < 3.5  # 8 x 0.5 s on 4 threads, not 4 s in a row


def garbage() -> st.SearchStrategy[bytes]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    fields = st.sampled_from(["v", "task", "data", "context", "attempts", "id", "store", "sig", "ttr"])
    envelopes = st.dictionaries(fields, json_values, max_size=6)
    return st.one_of(
        st.binary(max_size=64),
        st.text(max_size=32).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        envelopes.map(lambda v: json.dumps(v).encode()),
    )


def test_10000_garbage_payloads_are_all_held_and_the_worker_survives(
    url: str, log: Path, tmp_path: Path, procs: list[object]
) -> None:
    bodies: list[bytes] = []

    @settings(max_examples=10_000, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(garbage())
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    assert len(bodies) >= 9_000
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    victims = app.queue("other")  # nothing in 'other' has a worker but "echo"
    victims.stats()
    db = sqlite3.connect(tmp_path / "queue.db")
    with db:
        db.executemany(
            "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due) VALUES ('other', ?, 1, 60, 0)",
            [(b,) for b in bodies],
        )
    db.close()
    victims.send("echo", {"i": "canary"}, priority=2)
    sup = spawn(url, log, "--burst", "--log-level", "error", queues="other")
    procs.append(sup)
    code, out = stop(sup, sig=0, timeout=240)
    assert code == 0, out[-2000:]
    assert [r[1] for r in lines(log)] == ["canary"] or all(r[0] == "echo" for r in lines(log))
    stats = victims.stats()
    ran = len(lines(log)) - 1  # garbage that happened to be a valid "echo" task ran, as it should
    assert stats.held == len(bodies) - ran and stats.ready == 0 and stats.reserved == 0
    assert all(h.reason for h in victims.held(limit=20_000))
    app.close()


def test_an_orphaned_worker_does_not_outlive_its_task_ttr(
    jobs: lilqueue.QueueHandler, url: str, log: Path, procs: list[object]
) -> None:
    jobs.send("hang", {"i": 1, "seconds": 120}, ttr=3)
    sup = spawn(url, log)
    procs.append(sup)
    wait_until(lambda: pids_of(log), what="the task to start")
    (child,) = pids_of(log)
    sup.kill()  # kill -9 the supervisor, and with it the watchdog
    sup.wait()
    wait_until(lambda: not _alive(child), timeout=10, what="the orphaned worker to give up its hung task")
