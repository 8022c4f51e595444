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
