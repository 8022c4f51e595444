"""SQLite on a full disk (issue 11, item 5): every call of the adapter raises lilqueue's
``BackendConnectionError``, never a raw ``sqlite3`` error, so a worker backs off and goes
on once there is room again, instead of crash-restarting. Nothing stored is lost.

The disk is a real one: a 1 MB tmpfs mounted for the test (this needs root, as in CI),
filled with a file until the kernel says ENOSPC, so SQLite meets the error where it
would in production (writing the WAL, usually at COMMIT, usually inside a fetch).
"""

from __future__ import annotations

import collections
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.adapters.base import Job
from lilqueue.adapters.sqlite import SQLiteAdapter
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError

from .workers import lines, spawn, stop, wait_until


class Disk:
    """A small tmpfs that can be filled up and emptied again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        """Write until the kernel refuses even one byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        size = 65536
        try:
            while size:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    size //= 2
        finally:
            os.close(fd)

    def empty(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    root = tmp_path / "small"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield Disk(root)
    subprocess.run(["umount", "-l", str(root)], check=False)


def calls(adapter: SQLiteAdapter, job: Job) -> dict[str, Callable[[], object]]:
    """Every adapter call a worker or an operator makes, on a held, a reserved and a ready task."""

    def ack_then(then: Callable[[], object]) -> Callable[[], object]:
        def both() -> object:
            adapter.delete(job)  # held back: committed by the call after it
            return then()

        return both

    return {
        "put": lambda: adapter.put("q", b"{}", priority=1, delay=0, ttr=60),
        "reserve": lambda: adapter.reserve(["q"], 0),
        "reserve, several queues": lambda: adapter.reserve(["q", "other"], 0),
        "delete and reserve": ack_then(lambda: adapter.reserve(["q"], 0)),
        "delete and flush": ack_then(adapter.flush),
        "release": lambda: adapter.release(job, priority=1, delay=5),
        "unreserve": lambda: adapter.unreserve(job),
        "bury": lambda: adapter.bury(job, reason="full \udc80"),
        "touch": lambda: adapter.touch(job),
        "kick": lambda: adapter.kick("q", 10),
        "kick_id": lambda: adapter.kick_id("q", "1"),
        "delete_id": lambda: adapter.delete_id("q", "3"),
    }


def test_every_adapter_call_on_a_full_disk_raises_backend_connection_error(disk: Disk) -> None:
    path = str(disk.root / "q.db")
    adapter = SQLiteAdapter(path)
    for i in range(4):
        adapter.put("q", b'{"i": %d}' % i, priority=i, delay=0, ttr=60)
    held = adapter.reserve(["q"], 0)
    assert held is not None
    adapter.bury(held, reason="kept for kick")
    job = adapter.reserve(["q"], 0)
    assert job is not None
    reader = SQLiteAdapter(path)  # an operator's connection (the worker's owes the deletes it could not commit)
    disk.fill()
    failed = []
    for name, call in calls(adapter, job).items():
        try:
            call()
        except BackendConnectionError as exc:
            assert "full" in str(exc), (name, exc)
            failed.append(name)
        # any other exception (sqlite3.OperationalError above all) fails the test here
    assert failed == list(calls(adapter, job)), failed  # every write refused, none half-done
    assert reader.stats("q").as_dict() == {"ready": 2, "delayed": 0, "reserved": 1, "held": 1}  # reads still work
    assert [h.id for h in reader.held("q")] == [held.id] and reader.peek("q", "ready") is not None
    disk.empty()
    assert adapter.reserve(["q"], 0) is not None  # room again: the same adapter goes on, its deletes committed
    assert reader.stats("q").as_dict() == {"ready": 1, "delayed": 0, "reserved": 1, "held": 1}
    reader.close()
    adapter.close()


def test_a_worker_backs_off_on_a_full_disk_and_runs_everything_once_there_is_room(
    disk: Disk, log: Path, procs: list[object]
) -> None:
    url = f"sqlite:///{disk.root}/q.db"
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue("jobs")
    for i in range(20):
        queue.send("echo", {"i": i}, delay=1.5)  # due once the disk is full
    worker = spawn(url, log)
    procs.append(worker)
    time.sleep(0.5)  # the worker is up, its WAL open
    disk.fill()
    with pytest.raises(BackendConnectionError, match="full"):
        queue.send("echo", {"i": 99})  # the producer is told, in lilqueue's terms
    app.close()
    time.sleep(3.0)  # the tasks fell due meanwhile: the worker met the full disk, and backed off
    assert worker.poll() is None, "the worker died on a full disk"
    assert not lines(log)
    disk.empty()
    wait_until(lambda: len(lines(log)) >= 20, timeout=30, what="the tasks to run once there is room")
    code, out = stop(worker)
    assert code == 0, out
    assert "disk is full" in out and "reconnecting" in out, out
    assert "Traceback" not in out, out
    runs = collections.Counter(r[1] for r in lines(log))
    assert len(runs) == 20 and set(runs.values()) == {1}
    assert os.path.exists(disk.root / "q.db")
