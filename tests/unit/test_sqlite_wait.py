"""The SQLite adapter's idle wait: inotify on Linux, data_version polling elsewhere."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lilqueue.adapters import sqlite
from lilqueue.adapters.sqlite import SQLiteAdapter


@pytest.mark.parametrize("inotify", [True, False])
def test_an_idle_reserve_wakes_for_another_connections_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inotify: bool
) -> None:
    if not inotify:
        monkeypatch.setattr(sqlite.WalWatch, "open", classmethod(lambda cls, wal: None))
    path = str(tmp_path / "q.db")
    worker, producer = SQLiteAdapter(path), SQLiteAdapter(path)
    got: list[float] = []

    def reserve() -> None:
        job = worker.reserve(["q"], 10)
        assert job is not None
        got.append(time.monotonic())

    thread = threading.Thread(target=reserve)
    thread.start()
    time.sleep(0.5)
    sent = time.monotonic()
    producer.put("q", b"{}", priority=1, delay=0, ttr=60)
    thread.join(10)
    assert got and got[0] - sent < 1.0
    assert (worker._wal is not None) is inotify
    worker.close()
    producer.close()


def test_a_delayed_task_wakes_the_wait_when_due(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    adapter.put("q", b"{}", priority=1, delay=1.0, ttr=60)
    started = time.monotonic()
    assert adapter.reserve(["q"], 5) is not None
    assert 0.8 < time.monotonic() - started < 3
    adapter.close()


def test_an_idle_reserve_takes_a_lapsed_lease_within_a_look(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    first, second = SQLiteAdapter(path), SQLiteAdapter(path)
    first.put("q", b"{}", priority=1, delay=0, ttr=1)
    assert first.reserve(["q"], 0) is not None  # and never finished
    started = time.monotonic()
    job = second.reserve(["q"], 5)
    assert job is not None and job.deliveries == 2
    assert 0.8 < time.monotonic() - started < 1 + sqlite.LEASE_LOOK + 0.5
    first.close()
    second.close()


def test_a_delete_is_committed_with_the_next_reservation(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    worker, other = SQLiteAdapter(path), SQLiteAdapter(path)
    for _ in range(3):
        worker.put("q", b"{}", priority=1, delay=0, ttr=60)
    job = worker.reserve(["q"], 0)
    assert job is not None
    worker.delete(job)
    assert other.stats("q").reserved == 1  # held back: not committed yet
    assert worker.reserve(["q"], 0) is not None  # commits it, with this reservation
    assert (other.stats("q").ready, other.stats("q").reserved) == (1, 1)
    worker.close()
    other.close()


def test_held_back_deletes_are_committed_by_any_call_flush_and_close(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    worker, other = SQLiteAdapter(path), SQLiteAdapter(path)
    for _ in range(3):
        worker.put("q", b"{}", priority=1, delay=0, ttr=60)
    for finish in (lambda a: a.stats("q"), lambda a: a.flush(), lambda a: a.close()):
        job = worker.reserve(["q"], 0)
        assert job is not None
        worker.delete(job)
        finish(worker)
        assert other.stats("q").reserved == 0
    other.close()


def test_a_delete_of_a_lapsed_lease_taken_elsewhere_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    first, second = SQLiteAdapter(path), SQLiteAdapter(path)
    first.put("q", b"{}", priority=1, delay=0, ttr=1)
    stale = first.reserve(["q"], 0)
    assert stale is not None
    time.sleep(1.1)
    fresh = second.reserve(["q"], 0)
    assert fresh is not None and fresh.deliveries == 2
    first.delete(stale)
    first.flush()  # fenced: the row is the second worker's now
    assert second.stats("q").reserved == 1
    second.delete(fresh)
    second.close()
    first.close()
    after = SQLiteAdapter(path)
    assert after.stats("q") == sqlite.QueueStats(0, 0, 0, 0)
    after.close()


def test_a_runner_that_stops_commits_its_last_delete(tmp_path: Path) -> None:
    import lilqueue
    from lilqueue.config import load_settings

    url = f"sqlite:///{tmp_path / 'q.db'}"
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    jobs = app.queue("jobs")
    jobs.worker("t")(lambda task: None)
    for _ in range(2):
        jobs.send("t", {})
    assert app.watch(["jobs"], max_tasks=2, install_signal_handlers=False) == 2
    other = SQLiteAdapter(str(tmp_path / "q.db"))
    assert other.stats(jobs.backend_name) == sqlite.QueueStats(0, 0, 0, 0)  # seen from another connection
    other.close()
    app.close()


def indexed(adapter: SQLiteAdapter, index: str, where: str) -> int:
    sql = f"SELECT COUNT(*) FROM lilqueue_jobs INDEXED BY lilqueue_jobs_{index} WHERE {where}"
    return int(adapter.db.execute(sql).fetchone()[0])


def test_the_ready_index_holds_only_takeable_rows(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    adapter.put("q", b"{}", priority=1, delay=0, ttr=60)
    adapter.put("q", b"{}", priority=1, delay=30, ttr=60)
    ready, timed = "state < 2 AND due < 0", "state < 2 AND due >= 0"
    assert (indexed(adapter, "ready", ready), indexed(adapter, "timed", timed)) == (1, 1)
    assert adapter.reserve(["q"], 0) is not None
    assert (indexed(adapter, "ready", ready), indexed(adapter, "timed", timed)) == (1, 1)  # a lease stays in _ready
    assert adapter.stats("q") == sqlite.QueueStats(0, 1, 1, 0)
    peeked = adapter.peek("q", "delayed")
    assert peeked is not None and peeked.id == "2"
    adapter.close()


def test_close_with_a_locked_file_keeps_the_task_for_its_ttr_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "q.db")
    worker, other = SQLiteAdapter(path, busy_timeout=0.1), SQLiteAdapter(path)
    worker.put("q", b"{}", priority=1, delay=0, ttr=60)
    job = worker.reserve(["q"], 0)
    assert job is not None
    worker.delete(job)
    other.db.execute("BEGIN IMMEDIATE")  # another writer holds the lock past busy_timeout
    worker.close()
    other.db.execute("COMMIT")
    assert "could not commit 1 held-back deletes" in caplog.text
    assert other.stats("q").reserved == 1  # back to a worker once its lease lapses
    other.close()
