"""A backend that goes away: workers reconnect and carry on, or give up when told; producers fail fast."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings
from tests.servers import Server, binary, free_port

from .workers import lines, spawn, stop, wait_until


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with Server([*argv, "--dir", str(tmp_path)], port) as server:
        yield server


def url(server: Server) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


def send(server: Server, i: int) -> None:
    with lilqueue.App(settings=load_settings(backend=url(server), env={})) as app:
        app.queue("jobs").send("echo", {"i": i})


def test_a_worker_reconnects_when_its_backend_comes_back(redis: Server, tmp_path: Path, procs: list[object]) -> None:
    log = tmp_path / "runs.log"
    worker = spawn(url(redis), log)
    procs.append(worker)
    send(redis, 1)
    wait_until(lambda: lines(log), what="the first task")
    redis.stop()
    time.sleep(3)
    assert worker.poll() is None, "the worker must wait for its backend, not exit"
    redis.start()
    send(redis, 2)
    wait_until(lambda: len(lines(log)) == 2, timeout=60, what="the task sent after the restart")
    code, out = stop(worker)
    assert code == 0 and "backend lost" in out


def test_a_worker_gives_up_after_reconnect_for(redis: Server, tmp_path: Path, procs: list[object]) -> None:
    worker = spawn(url(redis), tmp_path / "runs.log", "--reconnect-for", "2")
    procs.append(worker)
    time.sleep(1.5)
    redis.stop()
    started = time.monotonic()
    code, out = stop(worker, sig=0, timeout=60)
    assert code == 1, out
    assert time.monotonic() - started < 45
    assert "giving up" in out


def test_a_producer_gets_a_connection_error_promptly() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = lilqueue.App(settings=load_settings(backend=dead, env={}))
    started = time.monotonic()
    with pytest.raises(lilqueue.BackendConnectionError):
        app.queue("jobs").send("echo", {"i": 1})
    assert time.monotonic() - started < 15
