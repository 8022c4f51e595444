"""Runs that never reach an outcome count, on every backend, with real worker processes.

A task that always overruns its ttr is stopped by the watchdog each time; after
``max_attempts`` such runs the next worker to reserve it holds it without running it,
with a reason that says what happened and what to do. ``async def`` workers are awaited
under the same watchdog.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings

from .backends import ALL, backend_url
from .workers import lines, spawn, stop, wait_until


@pytest.mark.parametrize("kind", ALL)
def test_a_task_that_always_overruns_its_ttr_is_held_after_max_attempts(
    kind: str, tmp_path: Path, log: Path, procs: list[object]
) -> None:
    with backend_url(kind, tmp_path) as url:
        app = lilqueue.App(settings=load_settings(backend=url, env={}))
        jobs = app.queue("jobs")
        jobs.send("sleep", {"i": 1, "seconds": 4}, ttr=1)
        sup = spawn(url, log, "--concurrency", "2")
        procs.append(sup)
        wait_until(lambda: jobs.held(), timeout=60, what="the task to be held")
        time.sleep(1.5)  # nothing runs it again
        starts = [r[2] for r in lines(log) if r[4] == "start"]
        assert starts == ["1", "2", "3"], lines(log)
        (held,) = jobs.held()
        reason = held.reason or ""
        assert "its worker died or ran past its ttr on 3 attempts without an outcome" in reason, reason
        assert "last: killed by the watchdog after 1 s" in reason and "--auto-touch" in reason, reason
        code, out = stop(sup)
        app.close()
    assert code == 0, out
    assert "task sleep (id " in out and "queue jobs) ran past its ttr of 1s" in out, out


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_async_workers_run_to_the_end_and_the_watchdog_stops_a_hung_one(
    kind: str, tmp_path: Path, log: Path, procs: list[object]
) -> None:
    with backend_url(kind, tmp_path) as url:
        app = lilqueue.App(settings=load_settings(backend=url, env={}))
        jobs = app.queue("jobs")
        jobs.send("async_sleep", {"i": 1, "seconds": 0.3})
        jobs.send("async_sleep", {"i": 2, "seconds": 60}, ttr=2)
        sup = spawn(url, log, "--concurrency", "1")
        procs.append(sup)
        wait_until(lambda: [r for r in lines(log) if r[:2] == ["async_sleep", "1"] and r[4] == "done"])
        wait_until(lambda: len([r for r in lines(log) if r[1] == "2"]) >= 2, timeout=30, what="the rerun")
        code, out = stop(sup, timeout=10)
        app.close()
    runs = [(r[1], r[2], r[4]) for r in lines(log)]
    assert runs[:2] == [("1", "1", "start"), ("1", "1", "done")], runs
    assert ("2", "1", "start") in runs and ("2", "2", "start") in runs and ("2", "1", "done") not in runs
    assert "ran past its ttr" in out and code in (0, -9, 137), out
