"""Gearman against real gearmand processes: interop with the `gearman` CLI, crashed workers,
held tasks across restarts, several servers, delayed jobs, binary payloads."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import lilqueue
from lilqueue.adapters.gearman import DELAYED_SUFFIX, GearmanAdapter
from lilqueue.adapters.gearman_protocol import Address, Admin, Connection
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError
from tests.servers import Server, binary, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.gearman_app:app"
LILMUCKERS = '{"task":"test","store":"default","data":{"message":"hi"}}'


def start_gearmand() -> Server:
    port = free_port()
    argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    return Server(argv, port).start()


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    server = start_gearmand()
    yield server
    server.stop()


@pytest.fixture
def queue_name() -> str:
    return f"gm-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(gearmand: Server, tmp_path: Path) -> str:
    return gearman_url([gearmand.port], tmp_path / "held.db")


def gearman_url(ports: list[int], held: Path, poll: float = 0.2) -> str:
    servers = ",".join(f"127.0.0.1:{p}" for p in ports)
    return f"gearman://{servers}?held_store={quote(f'sqlite:///{held}', safe='')}&poll_interval={poll}"


def env_for(queue: str, log: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.update(GEARMAN_TEST_QUEUE=queue, LILQUEUE_TEST_LOG=str(log))
    env.pop("LILQUEUE_CONFIG", None)
    return env


def spawn_worker(url: str, queue: str, log: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "lilqueue", "--app", APP, "--backend", url, "watch", queue, *args]
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env_for(queue, log),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def cli(url: str, queue: str, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lilqueue", "--app", APP, "--backend", url, *args]
    return subprocess.run(argv, cwd=ROOT, env=env_for(queue, log), capture_output=True, text=True, timeout=60)


def records(log: Path) -> list[list[str]]:
    """[task, message, attempt, pid, phase, context...] per run."""
    return [line.split(" ", 5) for line in log.read_text().splitlines()] if log.exists() else []


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def gearman_cli(port: int, function: str, *flags: str, stdin: str) -> None:
    argv = [binary("gearman"), "-h", "127.0.0.1", "-p", str(port), "-f", function, "-b", *flags]
    subprocess.run(argv, input=stdin, text=True, check=True, timeout=30, capture_output=True)


def adapter_for(url: str) -> GearmanAdapter:
    adapter = lilqueue.App(settings=load_settings(backend=url, env={})).adapter
    assert isinstance(adapter, GearmanAdapter)
    return adapter


# -- interop ------------------------------------------------------------------------------


def test_a_lilmuckers_job_from_the_gearman_cli_runs_on_a_lilqueue_worker(
    gearmand: Server, url: str, queue_name: str, log: Path
) -> None:
    gearman_cli(gearmand.port, queue_name, stdin=LILMUCKERS + "\n")  # as `<<<` sends it
    done = cli(url, queue_name, log, "watch", queue_name, "--burst")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = records(log)
    assert run[:3] == ["test", "hi", "1"] and run[4] == "done"
    assert run[5] == "{'store': 'default'}"


def test_cli_band_flags_run_high_then_normal_then_low(gearmand: Server, url: str, queue_name: str, log: Path) -> None:
    def payload(message: str) -> str:
        return json.dumps({"task": "test", "store": "default", "data": {"message": message}})

    gearman_cli(gearmand.port, queue_name, "-L", stdin=payload("low"))
    gearman_cli(gearmand.port, queue_name, stdin=payload("normal"))
    gearman_cli(gearmand.port, queue_name, "-I", stdin=payload("high"))
    assert cli(url, queue_name, log, "watch", queue_name, "--burst").returncode == 0
    assert [r[1] for r in records(log)] == ["high", "normal", "low"]


def test_a_lilqueue_task_is_plain_json_for_any_gearman_worker(gearmand: Server, url: str, queue_name: str) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    try:
        task_id: str = app.queue(queue_name).send("mail", {"to": "é@example.com"}, priority=10)
    finally:
        app.close()
    peer = Connection(Address("127.0.0.1", gearmand.port))
    peer.can_do([queue_name])
    job = peer.grab()
    assert job is not None and job.unique.decode() == task_id
    body = json.loads(job.data)
    assert (body["task"], body["data"], body["priority"]) == ("mail", {"to": "é@example.com"}, 10)
    peer.work_complete(job.handle)
    peer.close()


def test_binary_and_utf8_bodies_round_trip(url: str, queue_name: str) -> None:
    adapter = adapter_for(url)
    bodies = [bytes(range(256)) * 40, "ünïcödé ✓ 🚀".encode(), b"\0", b""]
    for body in bodies:
        adapter.put(queue_name, body, priority=500, delay=0, ttr=60)
    got = []
    for _ in bodies:
        job = adapter.reserve([queue_name], 5)
        assert job is not None
        got.append(job.body)
        adapter.delete(job)
    assert got == bodies
    adapter.close()


# -- crashes and restarts ---------------------------------------------------------------


def test_a_worker_killed_mid_task_has_its_job_handed_to_another(
    url: str, queue_name: str, log: Path, procs: list[subprocess.Popen[str]]
) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    task_id: str = app.queue(queue_name).send("slow", {"i": 1, "seconds": 30})
    first = spawn_worker(url, queue_name, log)
    procs.append(first)
    wait_until(lambda: records(log), what="the first worker to start the task")
    running = int(records(log)[0][3])  # the process running the task (a supervisor's child or itself)
    os.killpg(first.pid, signal.SIGKILL)  # no supervisor left to start a replacement
    with contextlib.suppress(ProcessLookupError):
        os.kill(running, signal.SIGKILL)  # kill -9, mid-task
    first.communicate()
    handler: lilqueue.QueueHandler = app.queue(queue_name)
    wait_until(lambda: (handler.stats().ready, handler.stats().reserved) == (1, 0), what="gearmand to take it back")
    app.queue(queue_name).send("slow", {"i": 2, "seconds": 0})
    second = spawn_worker(url, queue_name, log)
    procs.append(second)
    wait_until(lambda: len(records(log)) > 1, what="the second worker")
    again = [r for r in records(log) if r[3] != str(running) and r[4] == "start" and r[1] == "1"]
    assert len(again) == 1 and again[0][2] == "2"  # the ledger counted the run that never finished
    assert app.queue(queue_name).stats().reserved == 1  # the old task, running again
    app.close()
    assert task_id


def test_held_tasks_survive_a_worker_restart_and_can_be_kicked(
    url: str, queue_name: str, log: Path, procs: list[subprocess.Popen[str]]
) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    handler: lilqueue.QueueHandler = app.queue(queue_name)
    handler.send("hold", {"i": 7, "reason": "address bounced"})
    worker = spawn_worker(url, queue_name, log)
    procs.append(worker)
    wait_until(lambda: handler.held(), what="the task to be held")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    app.close()

    listed = cli(url, queue_name, log, "held", queue_name, "--json")  # a new process, a new adapter
    assert listed.returncode == 0, listed.stderr
    (held,) = json.loads(listed.stdout)
    assert (held["task"], held["data"]["i"], held["reason"]) == ("hold", 7, "address bounced")
    assert abs(held["held_at"] - time.time()) < 60
    stats = json.loads(cli(url, queue_name, log, "stats", queue_name, "--json").stdout)
    assert stats[queue_name]["held"] == 1
    assert cli(url, queue_name, log, "kick", queue_name, "5").returncode == 0
    assert cli(url, queue_name, log, "watch", queue_name, "--burst").returncode == 0
    assert [r[4] for r in records(log)] == ["hold", "hold"]  # it ran again after the kick
    again = json.loads(cli(url, queue_name, log, "held", queue_name, "--json").stdout)
    assert len(again) == 1 and again[0]["id"] != held["id"]  # held again, as a new job
    assert cli(url, queue_name, log, "delete", queue_name, "--id", again[0]["id"]).returncode == 0
    assert json.loads(cli(url, queue_name, log, "held", queue_name, "--json").stdout) == []


def test_a_restarted_gearmand_is_reconnected(tmp_path: Path, queue_name: str) -> None:
    server = start_gearmand()
    try:
        adapter = GearmanAdapter.from_config(gearman_url([server.port], tmp_path / "h.db"), {})
        adapter.put(queue_name, b"before", priority=1, delay=0, ttr=60)
        assert adapter.reserve([queue_name], 5) is not None
        server.kill()
        server.start()  # while the adapter's connections sat idle: they are stale now
        adapter.put(queue_name, b"restarted", priority=1, delay=0, ttr=60)
        job = adapter.reserve([queue_name], 5)
        assert job is not None and job.body == b"restarted"
        server.kill()
        with pytest.raises(BackendConnectionError):
            adapter.reserve([queue_name], 0.5)
        with pytest.raises(BackendConnectionError):
            adapter.put(queue_name, b"nobody", priority=1, delay=0, ttr=60)
        server.start()
        time.sleep(2.1)  # SERVER_RETRY
        adapter.put(queue_name, b"after", priority=1, delay=0, ttr=60)
        job = adapter.reserve([queue_name], 5)
        assert job is not None and job.body == b"after"
        adapter.close()
    finally:
        server.stop()


# -- several servers ----------------------------------------------------------------------


def test_several_servers_share_the_work_and_survive_one_going_down(
    gearmand: Server, tmp_path: Path, queue_name: str
) -> None:
    second = start_gearmand()
    try:
        adapter = GearmanAdapter.from_config(gearman_url([gearmand.port, second.port], tmp_path / "h.db"), {})
        for i in range(6):
            adapter.put(queue_name, b"%d" % i, priority=500, delay=0, ttr=60)
        per_server = [Admin(Address("127.0.0.1", p)).status()[queue_name].total for p in (gearmand.port, second.port)]
        assert per_server == [3, 3]
        assert adapter.stats(queue_name).ready == 6
        taken = []
        for _ in range(6):
            job = adapter.reserve([queue_name], 5)
            assert job is not None
            taken.append(job.body)
            adapter.delete(job)
        assert sorted(taken) == [b"%d" % i for i in range(6)]

        second.kill()
        for i in range(4):  # every put still lands, on the server that is up
            adapter.put(queue_name, b"x%d" % i, priority=500, delay=0, ttr=60)
        stats = adapter.stats(queue_name)
        assert stats.ready == 4 and stats.approximate
        for _ in range(4):
            job = adapter.reserve([queue_name], 5)
            assert job is not None
            adapter.delete(job)
        adapter.close()
    finally:
        second.stop()


# -- delays and bands -------------------------------------------------------------------


def test_a_waiting_delayed_task_holds_back_nothing_and_runs_first_once_due(url: str, queue_name: str) -> None:
    adapter = adapter_for(url)
    adapter.put(queue_name, b"later", priority=2000, delay=1, ttr=60)
    adapter.put(queue_name, b"low now", priority=2000, delay=0, ttr=60)
    job = adapter.reserve([queue_name], 0.5)  # the low band is not held back by the epoch job
    assert job is not None and job.body == b"low now"
    adapter.delete(job)
    stats = adapter.stats(queue_name)
    assert (stats.ready, stats.delayed) == (0, 1)
    time.sleep(2.1)
    adapter.put(queue_name, b"high now", priority=0, delay=0, ttr=60)
    order = []
    for _ in range(2):
        job = adapter.reserve([queue_name], 2)
        assert job is not None
        order.append(job.body)
        adapter.delete(job)
    assert order == [b"later", b"high now"]  # fallen due: before the queue's ready tasks
    adapter.close()


def test_an_idle_worker_sleeps_instead_of_spinning(gearmand: Server, url: str, queue_name: str) -> None:
    adapter = adapter_for(url)
    # A peer's epoch job in the queue's own function holds back its low band: gearmand
    # wakes a sleeping worker at once, but GRAB_JOB finds nothing.
    Connection(Address("127.0.0.1", gearmand.port)).submit(queue_name, "peer", b"e", when=int(time.time()) + 60)
    adapter.put(queue_name, b"held back", priority=2000, delay=0, ttr=60)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    assert adapter.reserve([queue_name], 2) is None
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert time.monotonic() - started >= 1.9
    assert cpu < 0.3, f"reserve burnt {cpu:.2f}s of CPU in 2s"
    empty = f"{queue_name}-empty"
    before = resource.getrusage(resource.RUSAGE_SELF)
    assert adapter.reserve([empty], 1) is None
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime < 0.1
    adapter.close()


def test_band_stats_from_the_admin_protocol(gearmand: Server, url: str, queue_name: str) -> None:
    adapter = adapter_for(url)
    for p in (0, 341, 342, 682, 683, 2**32 - 1):  # the seed's band boundaries
        adapter.put(queue_name, b"x", priority=p, delay=0, ttr=60)
    adapter.put(queue_name, b"later", priority=0, delay=60, ttr=60)
    job = adapter.reserve([queue_name], 5)
    assert job is not None
    stats = adapter.band_stats(queue_name)
    assert (stats.high, stats.normal, stats.low, stats.running, stats.delayed) == (1, 2, 2, 1, 1)
    assert stats.workers == 1  # this adapter's worker connection
    workers = Admin(Address("127.0.0.1", gearmand.port)).workers()
    assert any({queue_name, queue_name + DELAYED_SUFFIX} <= set(w.functions) for w in workers)
    adapter.bury(job, reason="for stats")
    assert adapter.stats(queue_name).as_dict() == {"ready": 5, "delayed": 1, "reserved": 0, "held": 1}
    adapter.close()


def test_a_hold_that_cannot_be_stored_gives_the_job_back(gearmand: Server, tmp_path: Path, queue_name: str) -> None:
    adapter = GearmanAdapter.from_config(gearman_url([gearmand.port], tmp_path / "held.db"), {})
    adapter.put(queue_name, b"keep me", priority=1, delay=0, ttr=60)
    job = adapter.reserve([queue_name], 5)
    assert job is not None
    with contextlib.closing(sqlite3.connect(tmp_path / "held.db", isolation_level=None)) as db:  # refuses holds
        db.execute("CREATE TRIGGER no_holds BEFORE INSERT ON gearman_held BEGIN SELECT RAISE(ABORT, 'no'); END")
    with pytest.raises(BackendConnectionError, match="could not hold"):
        adapter.bury(job, reason="nowhere to put it")
    again = adapter.reserve([queue_name], 5)  # never dropped: gearmand hands it out again
    assert again is not None and again.body == b"keep me"
    assert (again.deliveries, again.unfinished) == (2, 1)  # the run whose hold was lost had no outcome
    adapter.delete(again)
    adapter.close()


def test_a_hung_task_is_stopped_by_the_watchdog_and_runs_on_a_fresh_worker(
    url: str, queue_name: str, log: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Gearman has no ttr: the supervisor's watchdog stands in for it."""
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    app.queue(queue_name).send("slow", {"i": 1, "seconds": 60}, ttr=2)
    worker = spawn_worker(url, queue_name, log)
    procs.append(worker)
    wait_until(lambda: len([r for r in records(log) if r[4] == "start"]) >= 2, timeout=20, what="a second start")
    starts = [r for r in records(log) if r[4] == "start"]
    assert starts[0][3] != starts[1][3]  # the hung process was killed and replaced; the job came back
    assert not [r for r in records(log) if r[4] == "done"]
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert "ran past its ttr" in out
    app.close()
