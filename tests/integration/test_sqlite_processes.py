"""Real worker processes on the embedded SQLite backend: crashes, signals, garbage, races."""

from __future__ import annotations

import collections
import json
import select
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings
from lilqueue.testing import reserve_until

from .workers import lines, run_cli, spawn, stop, wait_until


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/queue.db"


@pytest.fixture
def app(url: str) -> Iterator[lilqueue.App]:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    app.queue("jobs")
    yield app
    app.close()


def test_cli_send_then_a_worker_process_runs_it(url: str, log: Path, procs: list[object]) -> None:
    sent = run_cli(url, "send", "jobs:echo:hello")
    assert sent.returncode == 0, sent.stderr
    worker = spawn(url, log, "--burst")
    procs.append(worker)
    code, out = stop(worker, sig=0)
    assert code == 0, out
    assert [r[0] for r in lines(log)] == ["echo"]
    assert '"ready": 0' in run_cli(url, "stats", "jobs", "--json").stdout


def test_kill_9_mid_task_runs_again_after_ttr_with_attempt_2(
    app: lilqueue.App, url: str, log: Path, procs: list[object]
) -> None:
    app.get_queue("jobs").send("sleep", {"i": 1, "seconds": 30}, ttr=2)
    first = spawn(url, log)
    procs.append(first)
    wait_until(lambda: lines(log), what="the task to start")
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    app.get_queue("jobs").send("echo", {"i": 2})  # a second task, so the new worker is busy meanwhile
    second = spawn(url, log)
    procs.append(second)
    wait_until(lambda: any(r[4] == "start" and r[2] == "2" for r in lines(log)), timeout=20, what="the rerun")
    rerun = [r for r in lines(log) if r[0] == "sleep" and r[4] == "start"]
    assert [r[2] for r in rerun] == ["1", "2"] and rerun[0][3] != rerun[1][3]


def test_sigterm_lets_the_running_task_finish_and_exits_0(
    app: lilqueue.App, url: str, log: Path, procs: list[object]
) -> None:
    q = app.get_queue("jobs")
    q.send("sleep", {"i": 1, "seconds": 1.5})
    q.send("echo", {"i": 2})
    worker = spawn(url, log)
    procs.append(worker)
    wait_until(lambda: lines(log), what="the task to start")
    code, out = stop(worker, signal.SIGTERM)
    assert code == 0, out
    assert [(r[0], r[4]) for r in lines(log)] == [("sleep", "start"), ("sleep", "done")]
    assert q.stats().ready == 1  # it stopped taking tasks: the echo is still there
    assert "SIGTERM received" in out


def test_a_second_signal_stops_at_once(app: lilqueue.App, url: str, log: Path, procs: list[object]) -> None:
    app.get_queue("jobs").send("sleep", {"i": 1, "seconds": 30}, ttr=1)
    worker = spawn(url, log)
    procs.append(worker)
    wait_until(lambda: lines(log), what="the task to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    code, _ = stop(worker, signal.SIGINT, timeout=10)
    assert code != 0 and time.monotonic() - started < 5
    assert [r[4] for r in lines(log)] == ["start"]  # unfinished: it comes back after its ttr
    time.sleep(1.2)
    assert app.get_queue("jobs").stats().ready == 1


def test_garbage_rows_are_held_and_the_worker_keeps_going(
    app: lilqueue.App, url: str, log: Path, tmp_path: Path, procs: list[object]
) -> None:
    assert app.get_queue("jobs").stats().ready == 0  # creates the table
    db = sqlite3.connect(tmp_path / "queue.db")
    garbage: list[object] = [b"\x00\xff", b"not json", b"[]", b"{}", b'{"v":1,"task":"echo","data":"str"}', b"\xc3("]
    garbage += ["text, not a blob", 42, 1.5, '{"task": "echo", "store": 1, "data": {"i": "8"}, "x": 0}']
    now = time.time()
    with db:
        db.executemany(
            "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due) VALUES ('jobs', ?, 1, 60, ?)",
            [(g, now) for g in garbage],
        )
    db.close()
    app.get_queue("jobs").send("echo", {"i": 7})
    worker = spawn(url, log, "--burst")
    procs.append(worker)
    code, out = stop(worker, sig=0)
    assert code == 0, out
    assert [r[1] for r in lines(log)] == ["7"]
    held = app.get_queue("jobs").held()
    assert len(held) == len(garbage) and all(h.reason and h.reason.startswith("rejected:") for h in held)


def test_two_worker_processes_never_run_a_task_twice(
    app: lilqueue.App, url: str, log: Path, procs: list[object]
) -> None:
    q = app.get_queue("jobs")
    n = 300
    for i in range(n):
        q.send("sleep", {"i": i, "seconds": 0.01})
    workers = [spawn(url, log) for _ in range(2)]
    procs.extend(workers)
    done = lambda: [r for r in lines(log) if r[4] == "done"]  # noqa: E731
    wait_until(lambda: len(done()) >= n, timeout=60, what=f"{n} runs")
    time.sleep(0.3)
    for w in workers:
        assert stop(w)[0] == 0
    runs = collections.Counter(r[1] for r in done())
    assert len(runs) == n and set(runs.values()) == {1}
    assert len({r[3] for r in done()}) == 2  # both workers took part


def test_a_task_from_another_process_wakes_an_idle_worker(
    app: lilqueue.App, url: str, log: Path, procs: list[object]
) -> None:
    worker = spawn(url, log)
    procs.append(worker)
    time.sleep(1.0)  # idle, waiting
    started = time.monotonic()
    app.get_queue("jobs").send("echo", {"i": 1})
    wait_until(lambda: lines(log), timeout=10, what="the idle worker to pick it up")
    assert time.monotonic() - started < 2.0


def test_concurrency_2_burst_drains_and_exits_0(app: lilqueue.App, url: str, log: Path, procs: list[object]) -> None:
    q = app.get_queue("jobs")
    for i in range(200):
        q.send("echo", {"i": i})
    sup = spawn(url, log, "--concurrency", "2", "--burst")
    procs.append(sup)
    code, out = stop(sup, sig=0, timeout=60)
    assert code == 0, out
    runs = collections.Counter(r[1] for r in lines(log))
    assert len(runs) == 200 and set(runs.values()) == {1}


def test_max_tasks_recycles_the_worker_process(app: lilqueue.App, url: str, log: Path, procs: list[object]) -> None:
    q = app.get_queue("jobs")
    for i in range(10):
        q.send("echo", {"i": i})
    sup = spawn(url, log, "--max-tasks", "3", "--burst")
    procs.append(sup)
    code, out = stop(sup, sig=0, timeout=60)
    assert code == 0, out
    pids = collections.Counter(r[3] for r in lines(log))
    assert sorted(pids.values()) == [1, 3, 3, 3] and len(lines(log)) == 10


def test_json_logs_carry_the_task_fields(app: lilqueue.App, url: str, log: Path, procs: list[object]) -> None:
    app.get_queue("jobs").send("fail", {"i": 1})
    worker = spawn(url, log, "--burst", "--log-format", "json")
    procs.append(worker)
    code, out = stop(worker, sig=0)
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    failures = [r for r in records if r.get("task_name") == "fail"]
    assert failures, out
    assert {"queue", "task_id", "task_name", "attempt", "outcome", "level", "time"} <= set(failures[0])
    assert failures[0]["queue"] == "jobs" and failures[0]["attempt"] == 1


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 20.0) -> str:
    """The worker's output up to and including the first line containing ``text``."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"no {text!r} in:\n{seen}"
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            assert line, f"the worker exited before {text!r}:\n{seen}"
            seen += line
    return seen


def test_a_task_reserved_as_the_worker_stops_is_handed_back_uncounted(
    app: lilqueue.App, url: str, log: Path, tmp_path: Path, procs: list[object]
) -> None:
    """Issue 11 item 12: a task a stopping worker reserved but never started runs later
    with attempts 1, not 2. The task falls due (a 0.3 s delay) while the worker, told to
    stop, finishes its current reservation: it takes the task, then hands it back (and the
    next worker, or the last one, runs it)."""
    q = app.get_queue("jobs")
    exercised = 0
    for i in range(3):  # each try almost always exercises it: its reservation has ~1 s left
        worker = spawn(url, log)
        procs.append(worker)
        read_until(worker, "worker started")
        q.send("echo", {"i": i}, delay=0.3)
        worker.send_signal(signal.SIGTERM)
        code, out = stop(worker, sig=0)
        assert code == 0, out
        db = sqlite3.connect(tmp_path / "queue.db")
        sql = "SELECT state, deliveries, due FROM lilqueue_jobs WHERE id = ?"
        state, deliveries, due = db.execute(sql, (i + 1,)).fetchone()
        db.close()
        assert (state, deliveries) == (0, 0)
        exercised += due < 0  # taken (the take made it ready at once) and handed back
    assert exercised >= 1
    time.sleep(0.3)  # the last task is due (if its worker stopped before it was)
    drain = spawn(url, log, "--burst")
    procs.append(drain)
    code, out = stop(drain, sig=0)
    assert code == 0, out
    assert sorted((r[1], r[2]) for r in lines(log)) == [("0", "1"), ("1", "1"), ("2", "1")]  # (i, attempts): once each


def test_a_worker_killed_mid_task_leaves_an_unfinished_run(
    app: lilqueue.App, url: str, log: Path, tmp_path: Path, procs: list[object]
) -> None:
    """Issue 11 item 7: the next delivery knows one run never reached an outcome."""
    app.get_queue("jobs").send("sleep", {"i": 1, "seconds": 30}, ttr=1)
    worker = spawn(url, log)
    procs.append(worker)
    wait_until(lambda: lines(log), what="the task to start")
    worker.kill()
    worker.wait()
    job = reserve_until(app.adapter, ["jobs"], timeout=5)
    assert (job.deliveries, job.unfinished) == (2, 1)
    app.adapter.release(job, priority=job.priority, delay=0)  # an outcome: the runs are settled
    again = reserve_until(app.adapter, ["jobs"], timeout=5)
    assert (again.deliveries, again.unfinished) == (3, 0)
    app.adapter.delete(again)
