"""Each thread's adapter: reused after its thread ends, capped, closed when broken, by
``App.close()``, or when the backend has no leases; never touched by a forked child.

Real adapters throughout: SQLite files (a closed one refuses to run SQL) and the
in-memory backend, subclassed only to record ``close()`` calls or to fail a flush.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import lilqueue
from lilqueue.adapters.base import Adapter, missing
from lilqueue.adapters.memory import MemoryAdapter
from lilqueue.adapters.sqlite import SQLiteAdapter
from lilqueue.config import load_settings
from lilqueue.connections import MAX_IDLE
from lilqueue.errors import BackendConnectionError

HERE = __name__


class Counted(MemoryAdapter):
    """The in-memory backend, recording which instances were flushed and closed (in this process)."""

    closed: ClassVar[list[Adapter]] = []
    flushed: ClassVar[list[Adapter]] = []

    def flush(self) -> None:
        Counted.flushed.append(self)

    def close(self) -> None:
        Counted.closed.append(self)


class Leaseless(Counted):
    """As Gearman: no ttr, so a job comes back only when its connection closes."""

    capabilities = dataclasses.replace(MemoryAdapter.capabilities, ttr=missing("no leases"))


class FailingFlush(Counted):
    def flush(self) -> None:
        raise BackendConnectionError("the server went away")


class FailingClose(Counted):
    def close(self) -> None:
        super().close()
        raise OSError(f"disk gone ({len(Counted.closed)})")


class SlowFlush(Counted):
    """Its flush waits for ``go``: a test can close the app while a thread's end flushes."""

    flushing = threading.Event()
    go = threading.Event()

    def flush(self) -> None:
        SlowFlush.flushing.set()
        SlowFlush.go.wait(10)


def no_closes_yet() -> None:
    Counted.closed.clear()
    Counted.flushed.clear()


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    no_closes_yet()


def app_on(backend: str, adapter: type[Adapter] | None = None) -> lilqueue.App:
    settings = load_settings(backend=backend, env={})
    if adapter is not None:
        settings.adapters[settings.backend_name] = f"{HERE}:{adapter.__name__}"
    return lilqueue.App(settings=settings)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[lilqueue.App]:
    app = app_on(f"sqlite:///{tmp_path / 'q.db'}")
    yield app
    app.close()


def in_thread(target: Callable[[], Any]) -> Any:
    """Run ``target`` in a new thread that ends before this returns; return its result."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    thread.join()
    return result[0]


def closed(adapter: Adapter) -> bool:
    assert isinstance(adapter, SQLiteAdapter)
    try:
        adapter.db.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


class Holder:
    """A thread that takes the app's adapter and keeps it (its thread alive) until ended."""

    def __init__(self, app: lilqueue.App) -> None:
        taken: list[Adapter] = []
        self.done = threading.Event()

        def run() -> None:
            taken.append(app.adapter)
            self.done.wait(10)

        self.thread = threading.Thread(target=run)
        self.thread.start()
        while not taken:
            time.sleep(0.001)
        self.adapter = taken[0]

    def end(self) -> Adapter:
        self.done.set()
        self.thread.join()
        return self.adapter


def test_a_threads_adapter_is_reused_by_the_next_thread(app: lilqueue.App) -> None:
    first = in_thread(lambda: app.adapter)
    assert app._connections.counts() == (0, 1)
    assert in_thread(lambda: app.adapter) is first
    assert not closed(first)
    assert in_thread(lambda: app.queue("q").send("t", {})) and app.queue("q").stats().ready == 1


def test_a_thread_keeps_its_own_adapter_and_lock(app: lilqueue.App) -> None:
    adapter, lock = app.adapter, app.adapter_lock
    assert app.adapter is adapter and app.adapter_lock is lock
    other = Holder(app)
    assert other.adapter is not adapter
    assert app._connections.counts() == (2, 0)
    other.end()
    assert app._connections.counts() == (1, 1)


def test_the_idle_adapters_are_capped_and_the_rest_closed(app: lilqueue.App) -> None:
    holders = [Holder(app) for _ in range(MAX_IDLE + 3)]
    adapters = [h.end() for h in holders]
    assert app._connections.counts() == (0, MAX_IDLE)
    assert sum(closed(a) for a in adapters) == 3


def test_reset_adapter_closes_the_threads_adapter_instead_of_reusing_it(app: lilqueue.App) -> None:
    broken = app.adapter
    app.reset_adapter()
    assert closed(broken)
    assert app._connections.counts() == (0, 0)
    assert app.adapter is not broken
    assert app._connections.counts() == (1, 0)


def test_close_closes_every_threads_adapter_and_the_idle_ones(app: lilqueue.App) -> None:
    mine = app.adapter
    idle = in_thread(lambda: app.adapter)
    busy = Holder(app)
    app.close()
    assert closed(mine) and closed(idle) and closed(busy.adapter)
    assert busy.end() and app._connections.counts() == (0, 0)  # its thread ending later is harmless
    assert app.queue("q").send("t", {}) and app.queue("q").stats().ready == 1  # usable again
    assert app.adapter is not mine


def test_a_backend_without_leases_gets_its_adapters_closed_not_reused() -> None:
    app = app_on(f"leaseless://{uuid.uuid4().hex}", Leaseless)
    first = in_thread(lambda: app.adapter)
    assert Counted.closed == [first]
    assert in_thread(lambda: app.adapter) is not first
    assert app._connections.counts() == (0, 0)


def test_an_adapter_whose_flush_fails_when_its_thread_ends_is_closed() -> None:
    app = app_on(f"failing://{uuid.uuid4().hex}", FailingFlush)
    first = in_thread(lambda: app.adapter)
    assert Counted.closed == [first]
    assert app._connections.counts() == (0, 0)


def test_an_adapter_whose_thread_ends_during_close_is_closed_not_kept() -> None:
    app = app_on(f"slowflush://{uuid.uuid4().hex}", SlowFlush)
    taken: list[Adapter] = []
    thread = threading.Thread(target=lambda: taken.append(app.adapter))
    thread.start()
    assert SlowFlush.flushing.wait(10)  # the thread has ended; its adapter is being made idle
    app.close()
    SlowFlush.go.set()
    thread.join()
    assert Counted.closed == taken
    assert app._connections.counts() == (0, 0)


def test_close_raises_the_first_error_after_closing_every_adapter() -> None:
    app = app_on(f"failingclose://{uuid.uuid4().hex}", FailingClose)
    holders = [Holder(app), Holder(app)]
    with pytest.raises(OSError, match=r"disk gone \(1\)"):
        app.close()
    assert {id(h.end()) for h in holders} == set(map(id, Counted.closed))


def test_many_threads_and_a_close_at_once_leave_nothing_open() -> None:
    app = app_on(f"counted://{uuid.uuid4().hex}", Counted)
    made: list[Adapter] = []

    def produce() -> None:
        for _ in range(20):
            made.append(in_thread(lambda: app.adapter))

    workers = [threading.Thread(target=produce) for _ in range(8)]
    for worker in workers:
        worker.start()
    app.close()
    for worker in workers:
        worker.join()
    app.close()
    assert app._connections.counts() == (0, 0)
    assert set(map(id, made)) <= set(map(id, Counted.closed))


def test_a_forked_child_neither_uses_nor_closes_the_parents_adapters() -> None:
    app = app_on(f"counted://{uuid.uuid4().hex}", Counted)
    mine = app.adapter
    idle = in_thread(lambda: app.adapter)
    busy = Holder(app)  # in use by another thread, which the child will not have
    no_closes_yet()  # idle's thread ended: it was flushed, here in the parent
    pid = os.fork()
    if pid == 0:
        os._exit(_child_checks(app, [mine, idle, busy.adapter]))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    busy.end()
    assert Counted.closed == [] and app.adapter is mine
    assert app._connections.counts() == (1, 1)
    app.close()


def _child_checks(app: lilqueue.App, parents: list[Adapter | None]) -> int:
    """In the forked child: 0 if the parent's adapters are neither reused, flushed nor closed."""
    try:
        fresh = {id(app.adapter), id(in_thread(lambda: app.adapter))}
        touched = {id(a) for a in [*Counted.closed, *Counted.flushed]}
        theirs = {id(a) for a in parents}
        return 0 if app._connections.counts() == (1, 1) and not (theirs & (fresh | touched)) else 1
    except BaseException:
        return 2
