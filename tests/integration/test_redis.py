"""The Redis adapter against real redis-server processes: restarts, kill -9, garbage, outages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import lilqueue
from lilqueue.adapters.redis import RedisAdapter
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError, ConfigError
from lilqueue.testing import fresh_name, reserve_until, wait_for
from tests.servers import Server, binary, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.server_app:app"
SUFFIXES = {"seq", "ready", "delayed", "reserved", "held", "wake"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--dir", str(tmp_path)]  # fmt: skip
    with Server(argv, port) as running:
        yield running


@pytest.fixture
def url(server: Server) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
def client(server: Server) -> Iterator[redis.Redis]:
    r = redis.Redis(port=server.port)
    yield r
    r.close()


@pytest.fixture
def adapters(url: str) -> Iterator[list[RedisAdapter]]:
    made: list[RedisAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def connect(adapters: list[RedisAdapter], url: str, **options: object) -> RedisAdapter:
    adapter = RedisAdapter.from_config(url, options)
    adapters.append(adapter)
    return adapter


def spawn(url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LILQUEUE_")}
    env["LILQUEUE_TEST_LOG"] = str(log)
    argv = [sys.executable, "-m", "lilqueue", "--app", APP, "--backend", url, "watch", "jobs", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def runs(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out.decode(errors="replace")


# -- durability ----------------------------------------------------------------------


def one_task_in_each_state(a: RedisAdapter, q: str) -> tuple[str, str, str, str]:
    """Ids of a ready, a delayed (3 s), a leased (ttr 2 s) and a held task in queue ``q``."""
    ready = a.put(q, b"ready", priority=5, delay=0, ttr=60)
    delayed = a.put(q, b"delayed", priority=5, delay=3, ttr=60)
    leased = a.put(q, b"leased", priority=1, delay=0, ttr=2)
    held = a.put(q, b"held", priority=2, delay=0, ttr=60)
    assert reserve_until(a, [q]).id == leased
    job = reserve_until(a, [q])
    assert job.id == held
    a.bury(job, reason="look at me")
    return ready, delayed, leased, held


def assert_taken_in_time(b: RedisAdapter, q: str, ids: tuple[str, str, str], started: float) -> None:
    """The ready task at once, the leased one after its ttr (2 s), the delayed one after 3 s."""
    ready, delayed, leased = ids
    job = reserve_until(b, [q])
    assert (job.id, job.deliveries) == (ready, 1)
    b.delete(job)
    back = reserve_until(b, [q])
    assert (back.id, back.body, back.deliveries) == (leased, b"leased", 2)
    assert time.monotonic() - started >= 1.5  # not before its ttr
    later = reserve_until(b, [q])
    assert (later.id, later.body) == (delayed, b"delayed")
    assert time.monotonic() - started >= 2.5


def test_a_restart_keeps_ready_delayed_reserved_and_held_tasks(
    server: Server, url: str, adapters: list[RedisAdapter], tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    worker = spawn(url, log)  # a worker process that lives through the restart
    try:
        app = lilqueue.App(settings=load_settings(backend=url, env={}))
        app.queue("jobs").send("echo", {"i": 1})
        wait_for(lambda: len(runs(log)) == 1)

        a, q = connect(adapters, url), fresh_name("restart")
        ready, delayed, leased, held = one_task_in_each_state(a, q)
        started = time.monotonic()

        server.restart()  # the idle connection of `a` was closed: it reconnects by itself
        assert a.stats(q).as_dict() == {"ready": 1, "delayed": 1, "reserved": 1, "held": 1}
        (kept,) = a.held(q)
        assert (kept.id, kept.body, kept.reason) == (held, b"held", "look at me")
        assert kept.held_at is not None and abs(kept.held_at - time.time()) < 30

        assert_taken_in_time(connect(adapters, url), q, (ready, delayed, leased), started)

        app.queue("jobs").send("echo", {"i": 2})  # the worker process reconnected
        wait_for(lambda: len(runs(log)) == 2)
        app.close()
    finally:
        code, out = stop(worker)
    assert code == 0, out


def test_kill_9_of_a_worker_mid_task_comes_back_after_its_ttr_with_attempt_2(url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    app.queue("jobs").send("hang", {"i": 7}, ttr=2)
    first = spawn(url, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: runs(log))
        first.kill()  # SIGKILL mid-task: no chance to release it
        first.wait(10)
        second = spawn(url, log)
        wait_for(lambda: len(runs(log)) == 3)
    finally:
        first.kill()
        code, out = stop(second) if second else (0, "")
        app.close()
    (name1, i1, attempt1, pid1, phase1, t1), (_, _, attempt2, pid2, phase2, t2), last = runs(log)
    assert (name1, i1, attempt1, phase1) == ("hang", "7", "1", "start")
    assert (attempt2, phase2, last[2], last[4]) == ("2", "start", "2", "done")
    assert pid1 != pid2 and float(t2) - float(t1) >= 1.5  # back only after its ttr
    assert code == 0, out


# -- bad data ------------------------------------------------------------------------


def test_garbage_written_straight_into_the_keys_is_held_with_a_reason(url: str, client: redis.Redis) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue(fresh_name("garbage"))
    ran: list[dict[str, object]] = []
    queue.worker("echo")(lambda t: ran.append(t.data))
    q = queue.backend_name
    client.hset(f"{q}:job:900", mapping={"body": b"\xff not json", "pri": 5, "ttr": 60, "n": 0})
    client.zadd(f"{q}:ready", {"0000000000000900": 5})
    client.zadd(f"{q}:ready", {"hello": 1})  # an entry that is not a task id
    client.zadd(f"{q}:delayed", {"902": 0})  # a due delayed entry without a task record
    # A PHP/Lilmuckers client's payload with nonsense priority and ttr fields: held, then kicked, it runs.
    body = b'{"task":"echo","store":"default","data":{"i":903}}'
    client.hset(f"{q}:job:903", mapping={"body": body, "pri": "soon", "ttr": "later", "n": "x"})
    client.zadd(f"{q}:ready", {"0000000000000903": 7})
    client.rpush(f"{q}:wake", "not a token")
    try:
        app.watch([queue.name], burst=True, install_signal_handlers=False)
        assert ran == []
        held = {h.id: h for h in queue.held()}
        assert len(held) == 4 and {"900", "902", "903"} < set(held)
        assert "rejected" in (held["900"].reason or "") and held["900"].body == b"\xff not json"
        assert "no task record" in (held["902"].reason or "")
        (new,) = set(held) - {"900", "902", "903"}  # "hello" is held under a fresh id
        assert "'hello'" in (held[new].reason or "") and "not a task id" in (held[new].reason or "")
        assert all(
            f"{word} '{text}'" in (held["903"].reason or "") for word, text in [("pri", "soon"), ("ttr", "later")]
        )
        assert queue.kick_id("903")
        app.watch([queue.name], burst=True, install_signal_handlers=False)
        assert ran == [{"i": 903}]
        assert queue.stats().as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 3}
        assert queue.delete(new) and queue.stats().held == 2
    finally:
        app.close()


# -- outages -------------------------------------------------------------------------


def test_a_producer_gets_a_connection_error_at_once_when_redis_is_down() -> None:
    app = lilqueue.App(settings=load_settings(backend=f"redis://127.0.0.1:{free_port()}/0", env={}))
    started = time.monotonic()
    with pytest.raises(BackendConnectionError):
        app.queue("jobs").send("echo", {})
    assert time.monotonic() - started < 2
    app.close()


def test_an_unanswered_connect_fails_within_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the backlog is full, SYNs go unanswered
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for s in fillers:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        adapter = RedisAdapter.from_config(f"redis://127.0.0.1:{port}/0", {"connect_timeout": 0.5})
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):
            adapter.put("q", b"x", priority=1, delay=0, ttr=60)
        assert time.monotonic() - started < 3
        for s in fillers:
            s.close()


def test_a_worker_blocked_in_reserve_hears_of_a_dead_server(server: Server, url: str) -> None:
    adapter = RedisAdapter.from_config(url, {})
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            adapter.reserve([fresh_name()], 30)
        except BackendConnectionError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.kill()
    waiter.join(10)
    assert errors and time.monotonic() - started < 5


# -- leases, blocking, keys ----------------------------------------------------------------


def test_a_lapsed_worker_cannot_touch_the_new_holders_reservation(url: str, adapters: list[RedisAdapter]) -> None:
    a, b, q = connect(adapters, url), connect(adapters, url), fresh_name("fence")
    a.put(q, b"x", priority=1, delay=0, ttr=1)
    stale = reserve_until(a, [q])
    fresh = reserve_until(b, [q])
    assert (fresh.id, fresh.deliveries) == (stale.id, 2)
    a.delete(stale)
    a.release(stale, priority=1, delay=0)
    a.bury(stale, reason="too late")
    a.touch(stale)
    assert a.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 1, "held": 0}
    b.delete(fresh)  # pipelined: b's next command reads its reply
    assert b.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}


def test_strict_priority_across_queues(url: str, adapters: list[RedisAdapter]) -> None:
    a, names = connect(adapters, url), [fresh_name(s) for s in "xyz"]
    for name, priorities in zip(names, ([30, 5], [10, 5], [0, 40]), strict=True):
        for p in priorities:
            a.put(name, f"{name}/{p}".encode(), priority=p, delay=0, ttr=60)
    order = []
    while (job := a.reserve(names, 0)) is not None:
        order.append((job.priority, job.body))
        a.delete(job)
    assert [p for p, _ in order] == [0, 5, 5, 10, 30, 40]
    assert order[1][1] == f"{names[0]}/5".encode()  # a tie goes to the first queue named


def test_an_idle_reserve_blocks_instead_of_polling(url: str, client: redis.Redis) -> None:
    a, q = RedisAdapter.from_config(url, {}), fresh_name("idle")
    client.config_resetstat()
    started = time.monotonic()
    assert a.reserve([q], 2.0) is None
    assert time.monotonic() - started >= 1.9
    stats = client.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_blpop"))
    assert calls <= 6, stats
    a.close()


def test_keys_are_named_from_the_prefixed_queue_and_nothing_else_is_written(url: str, client: redis.Redis) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, prefix="shop1.", env={}))
    queue: lilqueue.QueueHandler = app.queue(fresh_name("keys"))
    queue.worker("h")(lambda t: t.hold("kept"))
    queue.send("h", {})
    queue.send("h", {}, delay=30)
    app.watch([queue.name], burst=True, install_signal_handlers=False)
    queue.kick(1)
    stem = f"shop1.{queue.name}:"
    keys = {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")}
    assert keys and all(k.startswith(stem) for k in keys), keys
    assert {k[len(stem) :].split(":")[0] for k in keys} <= SUFFIXES | {"job"}
    app.close()


def test_options_and_urls() -> None:
    adapter = RedisAdapter.from_config("redis://:pw@10.1.2.3:6390/4?protocol=2&timeout=3", {"pipeline_acks": False})
    assert adapter.where == "redis://10.1.2.3:6390/4" and adapter.timeout == 3 and not adapter.pipeline_acks
    with pytest.raises(ConfigError, match=r"queue\.redis\.colour"):
        RedisAdapter.from_config(None, {"colour": "red"})
    with pytest.raises(ConfigError, match=r"queue\.redis\.protocol"):
        RedisAdapter.from_config("redis://h/0?protocol=4", {})
    with pytest.raises(ConfigError, match=r"queue\.redis\.db"):
        RedisAdapter.from_config("redis://h/zero", {})


def test_another_client_can_add_a_task_with_the_documented_recipe(url: str, client: redis.Redis) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue(fresh_name("php"))
    seen: list[lilqueue.Task] = []
    queue.worker("send")(seen.append)
    q = queue.backend_name
    waiter = threading.Thread(target=lambda: app.watch([queue.name], max_tasks=1, install_signal_handlers=False))
    waiter.start()
    time.sleep(0.3)  # the worker is blocked in BLPOP: the recipe's token must wake it
    started = time.monotonic()
    id = str(client.incr(f"{q}:seq"))
    with client.pipeline(transaction=True) as tx:
        payload = b'{"task":"send","store":"fr","data":{"to":"a@example.com"}}'
        tx.hset(f"{q}:job:{id}", mapping={"body": payload, "pri": 1024, "ttr": 60, "n": 0})
        tx.zadd(f"{q}:ready", {id.zfill(16): 1024})
        tx.rpush(f"{q}:wake", 1)
        tx.ltrim(f"{q}:wake", 0, 0)
        tx.execute()
    waiter.join(10)
    assert time.monotonic() - started < 0.5
    assert [(t.id, t.data, t.context) for t in seen] == [(id, {"to": "a@example.com"}, {"store": "fr"})]
    app.close()


def test_a_worker_blocked_on_several_queues_wakes_for_any_of_them(url: str, adapters: list[RedisAdapter]) -> None:
    worker, producer = connect(adapters, url), connect(adapters, url)
    names = [fresh_name(s) for s in "abc"]
    got: list[tuple[float, str | None]] = []
    waiter = threading.Thread(
        target=lambda: got.append((time.monotonic(), getattr(worker.reserve(names, 10), "queue", None)))
    )
    waiter.start()
    time.sleep(0.5)
    put_at = time.monotonic()
    producer.put(names[2], b"x", priority=1, delay=0, ttr=60)
    waiter.join(10)
    assert got and got[0][1] == names[2] and got[0][0] - put_at < 0.2


def test_a_pipelined_ack_is_applied_promptly_on_close(url: str, client: redis.Redis) -> None:
    adapter, q = RedisAdapter.from_config(url, {}), fresh_name("ack")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    adapter.delete(reserve_until(adapter, [q]))
    started = time.monotonic()
    adapter.close()  # pushes out the ack held back for the next request, reads its reply
    assert time.monotonic() - started < 0.1
    assert client.zcard(f"{q}:reserved") == 0 and not client.keys(f"{q}:job:*")


def test_a_task_finished_across_a_redis_restart_is_deleted(
    server: Server, url: str, adapters: list[RedisAdapter]
) -> None:
    a, q = connect(adapters, url), fresh_name("across")
    a.put(q, b"x", priority=1, delay=0, ttr=60)
    job = reserve_until(a, [q])
    server.restart()  # while the task "runs"; the lease is in the append-only file
    a.delete(job)  # the closed connection is noticed and replaced, not written into
    b = connect(adapters, url)
    assert b.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}


def test_flush_settles_the_pipelined_acks_at_once(tmp_path: Path) -> None:
    """What the runner calls when it stops: no ack waits for a next request that never comes."""
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    with Server(argv, port):
        app = lilqueue.App(settings=load_settings(backend=f"redis://127.0.0.1:{port}/0", env={}))
        q: lilqueue.QueueHandler = app.queue(fresh_name())
        q.send("w", {})
        job = app.adapter.reserve([q.backend_name], 1)
        assert job is not None
        app.adapter.delete(job)
        app.adapter.flush()
        other = lilqueue.App(settings=load_settings(backend=f"redis://127.0.0.1:{port}/0", env={}))
        assert other.queue(q.name).stats().reserved == 0
        app.close()
        other.close()
