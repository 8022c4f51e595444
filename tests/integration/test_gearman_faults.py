"""Faults on Gearman with real worker processes: runs that never reach an outcome are counted
by the delivery ledger (gearmand counts nothing) until the task is held; a failing task in
the seed's wire format ends held; a producer facing a black-holed server times out."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

import lilqueue
from lilqueue.adapters.gearman import GearmanAdapter
from lilqueue.adapters.gearman_protocol import Address, Connection
from lilqueue.config import load_settings
from lilqueue.errors import BackendTimeoutError
from tests.integration.workers import lines, run_cli, spawn, stop, wait_until
from tests.servers import Server

APP = "tests.apps.gearman_app:app"


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"gm-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("GEARMAN_TEST_QUEUE", name)  # the app declares the queue named there
    monkeypatch.delenv("LILQUEUE_CONFIG", raising=False)
    return name


@pytest.fixture
def url(gearmand: Server, tmp_path: Path) -> str:
    held = quote(f"sqlite:///{tmp_path}/held.db", safe="")
    return f"gearman://127.0.0.1:{gearmand.port}?held_store={held}&poll_interval=0.2"


def held(url: str, queue: str) -> list[dict[str, object]]:
    listed = run_cli(url, "held", queue, "--json", app=APP)
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, object]] = json.loads(listed.stdout)
    return result


def test_a_task_past_its_ttr_every_time_ends_held_not_looping(
    url: str, queue: str, log: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Issue 11, item 7 on Gearman: ttr 1, sleeps 3 s, under `watch -c 2`. The watchdog kills each
    run; gearmand hands the job out again; the ledger counts the runs: 3, then held unrun."""
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    app.queue(queue).send("slow", {"i": 1, "seconds": 3}, ttr=1)
    app.close()
    worker = spawn(url, log, "-c", "2", app=APP, queues=queue)
    procs.append(worker)
    wait_until(lambda: held(url, queue), timeout=30, what="the task to be held")
    code, out = stop(worker)
    starts = [r for r in lines(log) if r[4] == "start"]
    assert [r[2] for r in starts] == ["1", "2", "3"], out  # attempts counted by the ledger
    assert len({r[3] for r in starts}) == 3  # three processes, each killed by the watchdog
    assert not [r for r in lines(log) if r[4] == "done"]
    (task,) = held(url, queue)
    assert "on 3 attempts" in str(task["reason"]) and "watchdog" in str(task["reason"]), task["reason"]
    assert code == 0 and "ran past its ttr" in out


def test_a_failing_task_in_the_seed_format_ends_held(
    gearmand: Server, url: str, queue: str, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 8: with wire = "lilmuckers" every retry is a re-submit of the seed's format;
    it carries the attempts, so the task is held after max_attempts (3) instead of retrying forever."""
    monkeypatch.setenv("LILQUEUE_WIRE", "lilmuckers")
    monkeypatch.setenv("LILQUEUE_TEST_LOG", str(log))
    body = b'{"task":"fail","store":"default","data":{"message":"boom"}}'  # as the PHP module sends it
    Connection(Address("127.0.0.1", gearmand.port)).submit(queue, uuid.uuid4().hex, body)
    done = run_cli(url, "watch", queue, "--burst", app=APP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r[2] for r in lines(log) if r[4] == "fail"] == ["1", "2", "3"]
    (task,) = held(url, queue)
    assert str(task["reason"]).startswith("failed 3 of 3 attempts"), task["reason"]
    assert task["task"] == "fail" and task["data"] == {"message": "boom"}


def black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose listen queue is full: a connect to it hangs (its SYN is dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    time.sleep(0.1)
    return server, fillers


def test_a_producer_facing_a_black_hole_times_out_within_the_bounds(tmp_path: Path) -> None:
    """Issue 11, item 14: connect_timeout bounds connecting, io_timeout bounds an answer."""
    server, fillers = black_hole()
    port = server.getsockname()[1]
    url = f"gearman://127.0.0.1:{port}?connect_timeout=1&held_store={quote(str(tmp_path / 'h.db'), safe='')}"
    adapter = GearmanAdapter.from_config(url, {})
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="timed out"):
        adapter.put("mail", b"x", priority=1, delay=0, ttr=60)
    assert 0.9 < time.monotonic() - started < 2.5
    adapter.close()
    for sock in (server, *fillers):
        sock.close()


def test_a_server_that_accepts_but_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"gearman://127.0.0.1:{server.getsockname()[1]}?io_timeout=1&held_store={tmp_path / 'h.db'}"
        adapter = GearmanAdapter.from_config(url, {})
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError, match="no answer"):
            adapter.put("mail", b"x", priority=1, delay=0, ttr=60)
        assert 0.9 < time.monotonic() - started < 2.5  # once: a timeout is not retried on a new connection
        adapter.close()
