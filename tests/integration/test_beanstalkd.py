"""beanstalkd with real servers and real worker processes: pools, binlog, raw clients, kills, TTR."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenstalk
import pytest

import lilqueue
from lilqueue.config import load_settings
from tests.servers import Server, binary, free_port

from .workers import lines, spawn, stop, wait_until

APP = "tests.apps.server_app:app"


def beanstalkd(tmp_path: Path, name: str, binlog: bool = False) -> Server:
    """A beanstalkd of our own on a free port (with a binlog in ``tmp_path/name`` if asked)."""
    port = free_port()
    argv = [binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port)]
    if binlog:
        (tmp_path / name).mkdir()
        argv += ["-b", str(tmp_path / name)]
    return Server(argv, port, log=tmp_path / f"{name}.log")


def url_of(*servers: Server) -> str:
    return "beanstalkd://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


def app_for(url: str, **settings: Any) -> lilqueue.App:
    return lilqueue.App(settings=load_settings(backend=url, env={}, **settings))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with beanstalkd(tmp_path, "single") as s:
        yield s


def done_items(log: Path) -> collections.Counter[str]:
    return collections.Counter(r[1] for r in lines(log) if r[4] == "done")


# -- server pools --------------------------------------------------------------------


def test_a_pool_with_a_killed_server_loses_nothing_acknowledged(tmp_path: Path, log: Path, procs: list[object]) -> None:
    a, b = beanstalkd(tmp_path, "a", binlog=True).start(), beanstalkd(tmp_path, "b", binlog=True).start()
    try:
        url = url_of(a, b)
        worker = spawn(url, log, app=APP)
        procs.append(worker)
        producer = app_for(url)
        jobs: lilqueue.QueueHandler = producer.queue("jobs")
        acknowledged: dict[int, str] = {}
        for i in range(300):
            if i == 100:
                a.kill()  # kill -9, mid-run
            if i == 200:
                a.start()  # back on its binlog: what it had acknowledged is there again
            acknowledged[i] = jobs.send("echo", {"i": i})
            time.sleep(0.002)
        servers = collections.Counter(task_id.rpartition("/")[0] for task_id in acknowledged.values())
        assert set(servers) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, servers
        before_kill = {acknowledged[i].rpartition("/")[0] for i in range(100)}
        assert len(before_kill) == 2, "the producer spreads tasks over both servers"
        wait_until(lambda: set(done_items(log)) >= {str(i) for i in acknowledged}, timeout=60, what="every task")
        producer.close()
        code, out = stop(worker)
        assert code == 0, out
    finally:
        a.stop()
        b.stop()


def test_a_pool_reserves_from_every_server_and_reports_them_all(tmp_path: Path) -> None:
    with beanstalkd(tmp_path, "a") as a, beanstalkd(tmp_path, "b") as b:
        app = app_for(url_of(a, b))
        jobs: lilqueue.QueueHandler = app.queue("jobs", max_attempts=1)
        jobs.worker("review")(lambda t: t.hold(f"hold {t.data['i']}"))
        ids = [jobs.send("review", {"i": i}) for i in range(6)]
        assert {i.rpartition("/")[0] for i in ids} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
        assert jobs.stats().ready == 6
        assert app.watch(["jobs"], burst=True, install_signal_handlers=False) == 6
        held = jobs.held()
        assert sorted(h.id for h in held) == sorted(ids)
        assert sorted(h.reason or "" for h in held) == [f"hold {i}" for i in range(6)]
        assert jobs.stats().held == 6
        assert jobs.kick(4) == 4 and jobs.stats().ready == 4 and jobs.stats().held == 2
        assert jobs.kick_id(jobs.held()[0].id) and jobs.stats().held == 1
        assert jobs.delete(jobs.held()[0].id) and jobs.stats().held == 0
        a.stop()
        stats = jobs.stats()  # one server down: what the other one has, marked approximate
        assert stats.approximate and stats.ready is not None and stats.ready < 5
        app.close()


def test_a_pool_producer_fails_only_when_every_server_is_down(tmp_path: Path) -> None:
    a, b = beanstalkd(tmp_path, "a").start(), beanstalkd(tmp_path, "b").start()
    app = app_for(url_of(a, b))
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    jobs.send("echo", {"i": 0})
    a.kill()
    assert all(jobs.send("echo", {"i": i}).startswith(f"127.0.0.1:{b.port}/") for i in range(5))
    b.kill()
    started = time.monotonic()
    with pytest.raises(lilqueue.BackendConnectionError):
        jobs.send("echo", {"i": 9})
    assert time.monotonic() - started < 5
    app.close()


def test_a_waiting_pool_worker_wakes_for_a_task_on_any_server(tmp_path: Path) -> None:
    with beanstalkd(tmp_path, "a") as a, beanstalkd(tmp_path, "b") as b:
        app = app_for(url_of(a, b))
        tube: str = app.queue("jobs").backend_name
        for server in (a, b, a):
            got: list[lilqueue.adapters.base.Job | None] = []
            waiter = threading.Thread(target=lambda got=got: got.append(app.adapter.reserve([tube], 10)))
            waiter.start()
            time.sleep(0.3)
            started = time.monotonic()
            with greenstalk.Client(("127.0.0.1", server.port), encoding=None, use=tube) as raw:
                jid = raw.put(b"{}")
            waiter.join(15)
            assert got and got[0] is not None and time.monotonic() - started < 2
            assert got[0].id == f"127.0.0.1:{server.port}/{jid}" and got[0].deliveries == 1
            app.adapter.delete(got[0])
            app.close()


# -- durability -------------------------------------------------------------------------


def test_a_binlog_restart_keeps_ready_delayed_and_held_tasks_with_their_reasons(tmp_path: Path) -> None:
    with beanstalkd(tmp_path, "binlog", binlog=True) as server:
        url = url_of(server)
        app = app_for(url)
        jobs: lilqueue.QueueHandler = app.queue("jobs", max_attempts=1)
        ran: list[int] = []
        jobs.worker("review")(lambda t: t.hold(f"needs review: {t.data['why']}"))
        jobs.worker("echo")(lambda t: ran.append(t.data["i"]))
        held_id = jobs.send("review", {"i": 3, "why": "odd amount"}, priority=7)
        app.watch(["jobs"], burst=True, install_signal_handlers=False)
        ready_id = jobs.send("echo", {"i": 1})
        delayed_id = jobs.send("echo", {"i": 2}, delay=120)
        (before,) = jobs.held()
        app.close()

        server.kill()  # a crash; then beanstalkd comes back on its binlog
        server.start()

        stats = jobs.stats()
        assert (stats.ready, stats.delayed, stats.reserved, stats.held) == (1, 1, 0, 1)
        (after,) = jobs.held()
        assert (after.id, after.task, after.data) == (held_id, "review", {"i": 3, "why": "odd amount"})
        assert after.reason == "needs review: odd amount" == before.reason
        assert after.held_at == pytest.approx(before.held_at, abs=0.01)
        peeked = jobs.peek("delayed")
        assert peeked is not None and peeked.id == delayed_id
        peeked = jobs.peek("held")
        assert peeked is not None and (peeked.id, peeked.priority) == (held_id, 7)
        peeked = jobs.peek("ready")
        assert peeked is not None and peeked.id == ready_id
        app.watch(["jobs"], burst=True, install_signal_handlers=False)
        assert ran == [1]
        assert jobs.kick_id(held_id) and jobs.held() == []
        app.close()


# -- other clients on the same tubes -------------------------------------------------------


def test_raw_greenstalk_garbage_and_lilmuckers_payloads(server: Server) -> None:
    url = url_of(server)
    app = app_for(url)
    jobs: lilqueue.QueueHandler = app.queue("jobs", max_attempts=1)
    seen: list[lilqueue.Task] = []
    jobs.worker("echo")(seen.append)
    garbage = [b"\x00\xff not utf-8", b"{not json", b"[1, 2]", b'{"task": "nobody"}']
    lilmuckers = json.dumps({"task": "echo", "store": "default", "data": {"message": "hello"}}).encode()
    with greenstalk.Client(("127.0.0.1", server.port), encoding=None, use=jobs.backend_name) as raw:
        garbage_ids = {str(raw.put(body, priority=100)) for body in garbage}
        raw.put(lilmuckers, priority=100)
    app.watch(["jobs"], burst=True, install_signal_handlers=False)
    assert [(t.data, t.context, t.attempts) for t in seen] == [({"message": "hello"}, {"store": "default"}, 1)]
    held = jobs.held()
    assert {h.id for h in held} == garbage_ids and all(h.reason for h in held)
    assert {h.body for h in held} == set(garbage)
    assert "no worker registered for task 'nobody'" in next(h.reason or "" for h in held if h.task == "nobody")
    with greenstalk.Client(("127.0.0.1", server.port), encoding=None, use=jobs.backend_name) as raw:
        oldest = raw.peek_buried()
        assert raw.stats_job(oldest)["pri"] == 100  # held with the task's own priority
    app.close()


def test_lilmuckers_wire_is_readable_by_a_raw_client(server: Server) -> None:
    app = app_for(url_of(server), wire="lilmuckers")
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    jobs.send("send", {"to": "a@example.com"}, context={"store": "fr"})
    with greenstalk.Client(("127.0.0.1", server.port), encoding=None, watch=jobs.backend_name) as raw:
        job = raw.reserve(5)
        assert json.loads(job.body) == {"task": "send", "store": "fr", "data": {"to": "a@example.com"}}
        raw.delete(job)
    app.close()


def test_a_body_over_the_server_limit_is_a_task_error(tmp_path: Path) -> None:
    port = free_port()
    with Server([binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port), "-z", "2000"], port):
        app = app_for(f"beanstalkd://127.0.0.1:{port}")
        jobs: lilqueue.QueueHandler = app.queue("jobs")
        with pytest.raises(lilqueue.TaskError, match="at most 2000"):
            jobs.send("echo", {"blob": "x" * 3000})
        assert jobs.stats().ready == 0
        jobs.send("echo", {"blob": "x" * 100})
        assert jobs.stats().ready == 1
        app.close()


# -- workers that die or hang ----------------------------------------------------------------


def test_kill_9_of_a_worker_mid_task_redelivers_with_attempts_2(server: Server, log: Path, procs: list[object]) -> None:
    url = url_of(server)
    app = app_for(url)
    app.queue("jobs").send("hang", {"i": 1, "seconds": 60}, ttr=60)
    worker = spawn(url, log, app=APP)
    procs.append(worker)
    wait_until(lambda: [r for r in lines(log) if r[4] == "start"], what="the task to start")
    first = lines(log)[0]
    os.kill(int(first[3]), signal.SIGKILL)  # the process running the task
    # its connection closes, so beanstalkd hands the job back at once, long before its ttr
    wait_until(lambda: done_items(log), timeout=20, what="the task to run again")
    starts = [r for r in lines(log) if r[4] == "start"]
    assert [r[2] for r in starts] == ["1", "2"] and starts[0][3] != starts[1][3]
    assert float(starts[1][5]) - float(starts[0][5]) < 30
    assert done_items(log) == {"1": 1}
    code, out = stop(worker)
    assert code == 0, out
    app.close()


def test_a_hung_worker_past_its_ttr_runs_again_elsewhere_and_completes_once(
    server: Server, log: Path, procs: list[object]
) -> None:
    """beanstalkd 1.12 leaves a job reserved while its connection idles (upstream PR #334).

    One worker process (``--concurrency 1``) hangs in its task's first attempt. The
    supervisor's TTR watchdog kills it; the closed connection gives the job back; the
    replacement process runs it. It is completed once, and the hung run never finishes.
    """
    url = url_of(server)
    app = app_for(url)
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    jobs.send("hang", {"i": 1, "seconds": 30}, ttr=2)
    worker = spawn(url, log, "--concurrency", "1", app=APP)
    procs.append(worker)
    wait_until(lambda: done_items(log), timeout=20, what="the task to run again after its ttr")
    starts = [r for r in lines(log) if r[4] == "start"]
    assert [r[2] for r in starts] == ["1", "2"] and starts[0][3] != starts[1][3]
    hung = int(starts[0][3])
    wait_until(lambda: not _alive(hung), timeout=5, what="the hung process to be gone")
    time.sleep(1.0)
    assert done_items(log) == {"1": 1}
    stats = jobs.stats()
    assert (stats.ready, stats.reserved, stats.delayed, stats.held) == (0, 0, 0, 0)
    code, out = stop(worker)
    assert code == 0, out
    app.close()


def test_an_idle_connection_holding_a_lapsed_job_is_nudged(server: Server) -> None:
    """The adapter's own answer to the quirk, without any watchdog: the process is alive
    but its connection sits idle past the ttr; another worker still gets the job."""
    app = app_for(url_of(server))
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    task_id = jobs.send("echo", {"i": 1}, ttr=1)
    first = app.adapter.reserve([jobs.backend_name], 1)
    assert first is not None and first.id == task_id
    started = time.monotonic()
    with greenstalk.Client(("127.0.0.1", server.port), encoding=None, watch=jobs.backend_name) as other:
        job = None
        while job is None and time.monotonic() - started < 10:
            try:
                job = other.reserve(1)  # the polling pattern that used to wait forever
            except greenstalk.TimedOutError:
                continue
        assert job is not None and str(job.id) == task_id
        assert time.monotonic() - started < 4
        assert other.stats_job(job)["reserves"] == 2
        other.delete(job)
    app.adapter.delete(first)  # refused by the server (no longer ours): nothing happens
    assert jobs.stats().ready == 0
    app.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_server_that_stops_answering_is_a_bounded_connection_error(server: Server) -> None:
    app = app_for(url_of(server) + "?io_timeout=0.5&connect_timeout=0.5")
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    jobs.send("echo", {"i": 1})
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # the kernel still accepts and buffers; nothing answers
    try:
        for call in (lambda: jobs.send("echo", {"i": 2}), jobs.stats, lambda: app.adapter.reserve(["jobs"], 0)):
            started = time.monotonic()
            with pytest.raises(lilqueue.BackendConnectionError):
                call()
            assert time.monotonic() - started < 3
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert jobs.stats().ready in (1, 2)  # the put that timed out may have landed
    app.close()


def test_long_reasons_and_long_queue_names_keep_their_hold_records(server: Server) -> None:
    app = app_for(url_of(server))
    adapter = app.adapter
    long_queue = "q" + "x" * 180  # the record tube's name would pass 200 bytes: a digest stands in
    for tube, reason in ((long_queue, "why"), ("jobs", "é" * 40_000)):  # 80,000 bytes of reason
        adapter.put(tube, b"{}", priority=5, delay=0, ttr=60)
        job = adapter.reserve([tube], 1)
        assert job is not None
        adapter.bury(job, reason=reason)
        (held,) = adapter.held(tube)
        assert held.id == job.id and held.reason is not None
        assert held.reason == reason or (held.reason.endswith("…") and reason.startswith(held.reason[:-1]))
        assert adapter.kick(tube, 5) == 1 and adapter.held(tube) == []
    app.close()


def test_reserving_again_while_holding_a_job_about_to_lapse(server: Server) -> None:
    app = app_for(url_of(server))
    adapter = app.adapter
    adapter.put("jobs", b"{}", priority=5, delay=0, ttr=1)
    held = adapter.reserve(["jobs"], 1)
    assert held is not None
    started = time.monotonic()
    assert adapter.reserve(["jobs"], 0) is None  # beanstalkd says DEADLINE_SOON: nothing, promptly
    assert time.monotonic() - started < 1
    again = None
    while again is None and time.monotonic() - started < 5:
        again = adapter.reserve(["jobs"], 1)  # the lapsed job comes back, to this very connection
    assert again is not None and again.id == held.id and again.deliveries == 2
    adapter.delete(again)
    app.close()


def test_a_retried_task_keeps_its_priority_and_counts_its_attempts(server: Server) -> None:
    app = app_for(url_of(server))
    jobs: lilqueue.QueueHandler = app.queue("jobs", max_attempts=5, backoff=0)
    runs: list[tuple[int, int | None]] = []

    def flaky(task: lilqueue.Task) -> None:
        runs.append((task.attempts, task.priority))  # the priority the job came back with
        if task.attempts < 3:
            raise RuntimeError("not yet")

    jobs.worker("flaky")(flaky)
    jobs.send("flaky", {}, priority=42)
    deadline = time.monotonic() + 10
    while len(runs) < 3 and time.monotonic() < deadline:
        app.watch(["jobs"], burst=True, install_signal_handlers=False)
    assert runs == [(1, 42), (2, 42), (3, 42)]
    app.close()


def test_auto_touch_keeps_a_long_task_from_another_thread(server: Server, log: Path, procs: list[object]) -> None:
    """``--auto-touch`` touches from its own thread while the task runs: the lease holds."""
    url = url_of(server)
    app = app_for(url)
    app.queue("jobs").send("hang", {"i": 1, "seconds": 4.5}, ttr=2)
    worker = spawn(url, log, "--auto-touch", app=APP)
    procs.append(worker)
    wait_until(lambda: done_items(log), timeout=20, what="the long task to finish")
    assert [(r[2], r[4]) for r in lines(log)] == [("1", "start"), ("1", "done")]
    code, out = stop(worker)
    assert code == 0, out
    assert app.queue("jobs").stats().ready == 0
    app.close()


def test_a_held_back_delete_reaches_the_server_on_flush_and_on_close(server: Server) -> None:
    app = app_for(url_of(server))
    jobs: lilqueue.QueueHandler = app.queue("jobs")
    for _ in range(2):
        jobs.send("t", {})
    with greenstalk.Client(("127.0.0.1", server.port), encoding=None) as raw:

        def reserved() -> int:
            try:
                return int(raw.stats_tube(jobs.backend_name)["current-jobs-reserved"])
            except greenstalk.NotFoundError:  # a tube with no jobs and no watcher is gone
                return 0

        for finish in (app.adapter.flush, app.close):
            job = app.adapter.reserve([jobs.backend_name], 1)
            assert job is not None and reserved() == 1
            app.adapter.delete(job)  # held in the kernel (MSG_MORE) for the next command
            finish()
            deadline = time.monotonic() + 0.1  # well within Linux's 200 ms for a held-back write
            while reserved() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert reserved() == 0
        with pytest.raises(greenstalk.NotFoundError):
            raw.stats_tube(jobs.backend_name)  # both jobs deleted
