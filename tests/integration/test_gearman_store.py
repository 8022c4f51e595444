"""The Gearman held store (held tasks, delayed jobs, the delivery ledger) on SQLite and on a
real redis-server, and a Gearman adapter whose workers share a Redis held store."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from lilqueue.adapters import gearman
from lilqueue.adapters.gearman import GearmanAdapter, HeldStore, open_store
from lilqueue.adapters.gearman_protocol import Address, Admin, Connection
from lilqueue.errors import BackendConnectionError, BackendTimeoutError
from tests.integration.workers import run_cli, wait_until
from tests.servers import Server, binary, free_port, require_module


def start_redis(port: int) -> Server:
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Server(argv, port).start()


def start_gearmand() -> Server:
    port = free_port()
    argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    return Server(argv, port).start()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Server]:
    require_module("redis")
    server = start_redis(free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    server = start_gearmand()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/held.db"
    server: Server = request.getfixturevalue("redis_server")
    url = f"redis://127.0.0.1:{server.port}/1"
    store = open_store(url)
    assert isinstance(store, gearman.RedisHeldStore)
    store.redis.flushdb()  # the tests of this module share the server
    store.close()
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[HeldStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_holds_are_listed_oldest_first_with_any_reason(store: HeldStore) -> None:
    store.hold("mail", "a", b"\x00body a\xff", 5, 60, "first")
    store.hold("mail", "b\udc80", b"body b", 6, 61, "lone \udc80 surrogate, and \ud800 another")
    store.hold("other", "c", b"body c", 7, 62, "elsewhere")
    held = store.held("mail", 10)
    assert [(h.id, h.body, h.reason) for h in held] == [
        ("a", b"\x00body a\xff", "first"),
        ("b\\udc80", b"body b", "lone \\udc80 surrogate, and \\ud800 another"),
    ]
    assert held[0].held_at is not None and abs(held[0].held_at - time.time()) < 60
    assert [h.id for h in store.held("mail", 1)] == ["a"]
    assert (store.count("mail"), store.count("other"), store.count("none")) == (2, 1, 0)


def test_a_kick_claims_then_forgets_and_a_failed_one_gives_back(store: HeldStore) -> None:
    for i in range(3):
        store.hold("mail", f"t{i}", b"%d" % i, i, 60 + i, "why")
    (row,) = store.claim("mail", 1)
    assert (row.id, row.body, row.priority, row.ttr) == ("t0", b"0", 0, 60)
    assert [h.id for h in store.held("mail", 10)] == ["t1", "t2"] and store.count("mail") == 2
    assert not store.delete("mail", "t0")  # claimed: not deleted under a kicker's feet
    store.unclaim([row])
    assert store.count("mail") == 3
    (again,) = store.claim("mail", 1, "t2")
    store.hold("mail", "t2", b"held again", 2, 62, "a later copy")  # held again while being kicked
    store.forget(again)  # forgets the claimed copy only
    assert [h.body for h in store.held("mail", 10)] == [b"0", b"1", b"held again"]
    assert store.delete("mail", "t1") and not store.delete("mail", "t1")
    assert store.claim("mail", 5, "nope") == []


def test_a_claim_of_a_kicker_that_died_lapses(store: HeldStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.hold("mail", "t", b"x", 1, 60, "why")
    assert len(store.claim("mail", 5)) == 1 and store.count("mail") == 0
    monkeypatch.setattr(gearman, "KICK_CLAIM_TIMEOUT", -1.0)  # as if the claim were old
    assert store.count("mail") == 1 and [h.id for h in store.held("mail", 5)] == ["t"]


def test_the_delayed_ledger_cancels_once(store: HeldStore) -> None:
    due = time.time() + 60
    store.note_delayed("mail", "d1", "127.0.0.1:4730", b"H:x:1", due)
    assert store.cancelled_waiting("mail", 5) == 0
    assert store.cancel_delayed("mail", "d1") == ("127.0.0.1:4730", b"H:x:1")
    assert store.cancel_delayed("mail", "d1") is None
    assert store.cancel_delayed("mail", "nope") is None
    assert store.cancelled_waiting("mail", 5) == 1
    store.uncancel_delayed("mail", "d1")
    assert store.cancelled_waiting("mail", 5) == 0


def test_the_delivery_ledger(store: HeldStore) -> None:
    key = b"mail\0" + bytes(range(256))  # any bytes: a unique key from any client
    assert store.deliver(key) == (1, 0)
    assert store.deliver(key) == (2, 1)  # the first delivery reached no outcome
    store.undeliver(key)  # handed back unstarted
    assert store.deliver(key) == (2, 1)
    store.settle(key)
    assert store.deliver(key) == (1, 0)
    store.carry(b"mail\0next", 3)  # a release: deliveries go on, all settled
    assert store.deliver(b"mail\0next") == (4, 0)
    assert store.deliver(b"mail\0next") == (5, 1)
    assert store.deliver(b"mail\0raced") == (1, 0)  # a worker took the retried job before the carry
    store.carry(b"mail\0raced", 3)
    assert store.deliver(b"mail\0raced") == (5, 1)  # carried on, and that delivery still counts


def test_two_processes_share_one_store(store_url: str) -> None:
    first = open_store(store_url)
    second = open_store(store_url)
    first.hold("mail", "t", b"x", 1, 60, "why")
    assert first.deliver(b"k") == (1, 0)
    assert [h.id for h in second.held("mail", 5)] == ["t"]
    assert second.deliver(b"k") == (2, 1)
    first.close()
    second.close()


def test_settlings_are_written_later_in_one_go(store_url: str) -> None:
    """A settle is held back (one write per task, not two): until the worker's next writes
    or flush, another process still sees the count; a held-back key delivered again is right."""
    worker = open_store(store_url)
    other = open_store(store_url)
    assert worker.deliver(b"a") == (1, 0)
    worker.settle(b"a")
    assert other.deliver(b"a") == (2, 1)  # not written yet
    worker.settle(b"a")
    assert worker.deliver(b"a") == (1, 0)  # the same key again: its settling goes first
    keys = [b"k%d" % i for i in range(gearman.SETTLE_BATCH + 1)]
    for key in keys:
        worker.deliver(key)
        worker.settle(key)
    assert other.deliver(keys[0]) == (1, 0)  # a full batch went with a delivery
    worker.flush()
    assert other.deliver(keys[-1]) == (1, 0)
    worker.settle(b"a")
    worker.close()  # writes what it held back
    assert other.deliver(b"a") == (1, 0)
    other.close()


# -- a Gearman adapter on a Redis held store --------------------------------------------------


def gearman_url(gearmand: Server, store: str) -> str:
    return f"gearman://127.0.0.1:{gearmand.port}?held_store={quote(store, safe='')}&poll_interval=0.2"


def test_workers_on_two_machines_count_the_same_deliveries(redis_server: Server, gearmand: Server) -> None:
    url = gearman_url(gearmand, f"redis://127.0.0.1:{redis_server.port}/0")
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    first = GearmanAdapter.from_config(url, {})
    second = GearmanAdapter.from_config(url, {})
    first.put(queue, b"job", priority=1, delay=0, ttr=60)
    job = first.reserve([queue], 5)
    assert job is not None and (job.deliveries, job.unfinished) == (1, 0)
    first.close()  # the first machine's worker died mid-task
    again = second.reserve([queue], 5)
    assert again is not None and (again.id, again.deliveries, again.unfinished) == (job.id, 2, 1)
    second.bury(again, reason="held on the second machine \udc80")
    (held,) = GearmanAdapter.from_config(url, {}).held(queue)
    assert (held.id, held.reason) == (job.id, "held on the second machine \\udc80")
    second.close()


def test_a_held_store_that_is_down_hands_the_job_back(gearmand: Server) -> None:
    redis_server = start_redis(free_port())
    url = gearman_url(gearmand, f"redis://127.0.0.1:{redis_server.port}/0?")
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    adapter = GearmanAdapter.from_config(url, {"connect_timeout": 1, "io_timeout": 1})
    try:
        adapter.put(queue, b"job", priority=1, delay=0, ttr=60)
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(BackendConnectionError, match="handed back"):
            adapter.reserve([queue], 5)
        assert time.monotonic() - started < 3
        redis_server.start()
        job = adapter.reserve([queue], 5)
        assert job is not None and job.body == b"job"
        assert (job.deliveries, job.unfinished) == (1, 0)  # the grab the store missed did not run
        adapter.delete(job)
    finally:
        adapter.close()
        redis_server.stop()


def test_a_drained_worker_leaves_no_ledger_entries(gearmand: Server, tmp_path: Path) -> None:
    adapter = GearmanAdapter.from_config(gearman_url(gearmand, f"sqlite:///{tmp_path}/held.db"), {})
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        adapter.put(queue, b"%d" % i, priority=1, delay=0, ttr=60)
    while (job := adapter.reserve([queue], 0)) is not None:
        if job.body == b"3":
            adapter.bury(job, reason="kept")
        else:
            adapter.delete(job)
    with contextlib.closing(sqlite3.connect(tmp_path / "held.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM gearman_ledger").fetchone() == (0,)  # flushed when idle
    adapter.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_reused_unique_key_is_a_new_job_for_every_worker(
    kind: str, request: pytest.FixtureRequest, gearmand: Server, tmp_path: Path
) -> None:
    """A raw client coalescing on a fixed unique key (``report-daily``) submits a new job each
    day; four workers (``watch -c 4``), each holding its settlings back, take one each: every
    one is a first delivery. A re-hand of one job (its worker died) still counts."""
    if kind == "redis":
        server: Server = request.getfixturevalue("redis_server")
        store = f"redis://127.0.0.1:{server.port}/2"
    else:
        store = f"sqlite:///{tmp_path}/held.db"
    url = gearman_url(gearmand, store)
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    workers = [GearmanAdapter.from_config(url, {}) for _ in range(5)]
    client = Connection(Address("127.0.0.1", gearmand.port))
    admin = Admin(Address("127.0.0.1", gearmand.port))
    for worker in workers[:4]:
        client.submit(queue, "report-daily", b"run")
        job = worker.reserve([queue], 5)
        assert job is not None and (job.id, job.deliveries, job.unfinished) == ("report-daily", 1, 0)
        worker.delete(job)
        wait_until(lambda: admin.status()[queue].total == 0)  # else the next submit joins this job
    client.submit(queue, "report-daily", b"run")
    job = workers[0].reserve([queue], 5)
    assert job is not None and (job.deliveries, job.unfinished) == (1, 0)
    workers[0].close()  # died mid-task: gearmand hands the same job (same handle) out again
    again = workers[4].reserve([queue], 5)
    assert again is not None and (again.id, again.deliveries, again.unfinished) == ("report-daily", 2, 1)
    workers[4].delete(again)
    client.close()
    admin.close()
    for worker in workers:
        worker.close()


# -- garbage in the store (anyone may write it) -----------------------------------------------


def spoil_ledger(store: HeldStore, key: bytes) -> None:
    """Write entries for ``key`` that are not two counts."""
    if isinstance(store, gearman.RedisHeldStore):
        store.redis.hset(store._ledger(key), "d", "x")
        return
    assert isinstance(store, gearman.SqliteHeldStore)
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        db.execute("INSERT OR REPLACE INTO gearman_ledger VALUES (?, 'x', x'ff', 0)", (key,))


def test_a_garbage_ledger_entry_counts_as_none(store: HeldStore) -> None:
    store.deliver(b"first")  # creates the schema
    for key, garbage in [(b"k1", "d"), (b"k2", "-1"), (b"k3", "1e3"), (b"k4", "99999999999999999999")]:
        spoil_ledger(store, key)
        if isinstance(store, gearman.RedisHeldStore) and garbage != "d":
            store.redis.hset(store._ledger(key), "s", garbage)
        assert store.deliver(key) == (1, 0), garbage
        assert store.deliver(key) == (2, 1)
    if isinstance(store, gearman.RedisHeldStore):
        store.redis.set(store._ledger(b"k5"), "a string, not a hash")
        assert store.deliver(b"k5") == (1, 0)


def spoil_held(store: HeldStore, queue: str) -> None:
    """A held record that does not read, next to a good one."""
    if isinstance(store, gearman.RedisHeldStore):
        order, records, _ = store._keys(queue)
        store.redis.hset(records, "bad", b"not a record")
        store.redis.zadd(order, {"bad": 1.0})
        return
    assert isinstance(store, gearman.SqliteHeldStore)
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        db.execute(
            "INSERT INTO gearman_held (queue, id, body, priority, ttr, reason, held_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (queue, b"bad", "text body", "x", -5, b"\xff reason", "never"),
        )


def test_garbage_held_records_are_listed_with_a_reason_and_never_crash_a_kick(store: HeldStore) -> None:
    store.hold("mail", "good", b"body", 5, 60, "why")
    spoil_held(store, "mail")
    held = {h.id: h for h in store.held("mail", 10)}
    assert set(held) == {"good", "bad"} and held["bad"].reason and held["good"].reason == "why"
    rows = store.claim("mail", 10)
    if isinstance(store, gearman.RedisHeldStore):
        assert [r.id for r in rows] == ["good"]  # the unreadable one is skipped, not left claimed
        assert store.count("mail") == 1 and [h.id for h in store.held("mail", 10)] == ["bad"]
        assert store.delete("mail", "bad")
    else:
        bad = next(r for r in rows if r.id == "bad")  # a row that reads, with the defaults where it does not
        assert (bad.body, bad.priority, bad.ttr) == (b"text body", gearman.DEFAULT_PRIORITY, gearman.DEFAULT_TTR)


def test_a_garbage_ledger_entry_does_not_loop_the_job(redis_server: Server, gearmand: Server) -> None:
    url = gearman_url(gearmand, f"redis://127.0.0.1:{redis_server.port}/3")
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    adapter = GearmanAdapter.from_config(url, {})
    assert isinstance(adapter.store, gearman.RedisHeldStore)
    client = Connection(Address("127.0.0.1", gearmand.port))
    handle = client.submit(queue, "k1", b"run")
    spoil_ledger(adapter.store, gearman.ledger_key(queue, b"k1", Address("127.0.0.1", gearmand.port), handle))
    job = adapter.reserve([queue], 5)
    assert job is not None and (job.id, job.deliveries, job.unfinished) == ("k1", 1, 0)
    adapter.delete(job)
    client.submit(queue, "k2", b"run")
    adapter.store.redis.config_set("maxmemory", 1)  # a store that answers, and refuses every write
    try:
        job = adapter.reserve([queue], 5)  # runs uncounted (logged), never handed back for ever
        assert job is not None and (job.id, job.deliveries, job.unfinished) == ("k2", 1, 0)
    finally:
        adapter.store.redis.config_set("maxmemory", 0)
    adapter.delete(job)
    client.close()
    adapter.close()


def test_held_and_kick_on_garbage_records_from_the_cli(redis_server: Server, gearmand: Server) -> None:
    url = gearman_url(gearmand, f"redis://127.0.0.1:{redis_server.port}/4")
    queue = f"gm-{uuid.uuid4().hex[:8]}"
    store = open_store(f"redis://127.0.0.1:{redis_server.port}/4")
    spoil_held(store, queue)
    listed = run_cli(url, "held", queue)
    assert listed.returncode == 0 and "unreadable held record" in listed.stdout, listed.stderr
    kicked = run_cli(url, "kick", queue)
    assert kicked.returncode == 0 and "Traceback" not in kicked.stderr, kicked.stderr
    assert store.count(queue) == 1  # still held, not left claimed
    store.close()


def test_a_locked_sqlite_store_times_out_within_io_timeout(gearmand: Server, tmp_path: Path) -> None:
    url = gearman_url(gearmand, f"sqlite:///{tmp_path}/held.db")
    adapter = GearmanAdapter.from_config(url, {"io_timeout": 0.5})
    assert adapter.store.count("mail") == 0  # creates the file
    with contextlib.closing(sqlite3.connect(tmp_path / "held.db", isolation_level=None)) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError, match="locked"):
            adapter.store.hold("mail", "t", b"x", 1, 60, "why")
        assert 0.4 < time.monotonic() - started < 2.0
        locker.execute("ROLLBACK")
    adapter.store.hold("mail", "t", b"x", 1, 60, "why")
    assert adapter.store.count("mail") == 1
    adapter.close()
