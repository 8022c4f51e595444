"""SQLite at scale (issue 11, items 15 and 16): a reservation's cost does not grow with
delayed tasks, and a worker can watch any number of queues.

The cost is counted, not timed: SQLite's progress handler counts the virtual-machine
steps of each reservation, which is exact and the same on a fast or a loaded machine.
The process tests add a generous time bound, many times what the fixed code needs and
a small part of what the code before it took (59 tasks/s with 100,000 delayed tasks;
an error with more than 500 queues).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import lilqueue
from lilqueue.adapters.sqlite import SQLiteAdapter
from lilqueue.config import load_settings

from .workers import ROOT, lines, spawn, stop

HOUR = 3600.0
BODY = b'{"v": 1, "task": "echo", "data": {}}'


def add_delayed(path: Path, queue: str, count: int, *, delay: float = HOUR) -> None:
    """``count`` tasks delayed by ``delay``, written in one transaction (fast to build)."""
    adapter = SQLiteAdapter(str(path))
    with adapter.db:
        adapter.db.execute("BEGIN")
        for _ in range(count):
            adapter.put(queue, BODY, priority=0, delay=delay, ttr=60)  # more urgent than any ready task
    adapter.close()


def reserve_steps(adapter: SQLiteAdapter, queues: list[str]) -> int:
    """SQLite VM steps of one reservation (the task is handed back untouched)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    adapter._next_look = 0.0  # look at _timed's head this time, as a busy worker does every TIMED_LOOK
    adapter.db.set_progress_handler(count, 1)
    job = adapter.reserve(queues, 0)
    adapter.db.set_progress_handler(None, 1)
    assert job is not None
    adapter.unreserve(job)
    return steps[0]


def test_a_reservation_costs_the_same_with_100k_delayed_tasks(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    adapter = SQLiteAdapter(str(path))
    adapter.put("jobs", BODY, priority=1024, delay=0, ttr=60)
    before = reserve_steps(adapter, ["jobs"])
    add_delayed(path, "jobs", 100_000)
    after = reserve_steps(adapter, ["jobs"])
    assert after <= before + 20, (before, after)  # was ~6 steps per delayed row: 600,000 more
    adapter.close()


def test_a_worker_process_drains_ready_tasks_past_100k_delayed_ones(
    tmp_path: Path, log: Path, procs: list[object]
) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    add_delayed(tmp_path / "q.db", "jobs", 100_000)
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue("jobs")
    for i in range(3000):
        queue.send("echo", {"i": i})
    app.close()
    started = time.monotonic()
    worker = spawn(url, log, "--burst")
    procs.append(worker)
    code, out = stop(worker, sig=0, timeout=120)
    took = time.monotonic() - started
    assert code == 0, out
    assert len(lines(log)) == 3000
    assert took < 30, took  # ~1 s here; at the 59 tasks/s before the fix: 51 s
    counts = SQLiteAdapter(str(tmp_path / "q.db")).stats("jobs")
    assert (counts.ready, counts.delayed) == (0, 100_000)


APP = """
import os
import lilqueue
from tests.apps.core_app import record

app = lilqueue.App()
for i in range(int(os.environ["MANY_QUEUES"])):
    app.queue(f"q{i}", max_attempts=3, backoff=0).worker("echo")(lambda task: record(task, "done"))
"""


def test_a_worker_process_watches_2000_queues(tmp_path: Path, log: Path, procs: list[object]) -> None:
    n, sent = 2000, 600
    (tmp_path / "many_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path}/q.db"
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    for i in range(sent):
        adapter.put(
            f"q{i * n // sent}", b'{"v": 1, "task": "echo", "data": {"i": %d}}' % i, priority=i, delay=0, ttr=60
        )
    adapter.close()
    env = {**os.environ, "LILQUEUE_TEST_LOG": str(log), "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    env |= {"MANY_QUEUES": str(n), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "lilqueue", "--app", "many_app:app", "--backend", url, "watch", "all", "--burst"]
    started = time.monotonic()
    worker = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    procs.append(worker)
    code, out = stop(worker, sig=0, timeout=120)
    assert code == 0 and "backend lost" not in out, out
    runs = collections.Counter(r[1] for r in lines(log))
    assert len(runs) == sent and set(runs.values()) == {1}
    assert [int(r[1]) for r in lines(log)] == list(range(sent))  # priority order across all the queues
    assert time.monotonic() - started < 60  # ~3 s here (2,000 queues cost ~2 ms a reservation)
