"""Hostile input on Redis: the shared corpus through a foreign producer's writes, and task
records, entries and keys no lilqueue producer writes. Everything is held with a reason,
never lost, never run with a guessed value; the worker never crashes or loops.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import lilqueue
from lilqueue.adapters.redis import RedisAdapter
from lilqueue.config import load_settings
from lilqueue.errors import BackendError
from lilqueue.testing import fresh_name, reserve_until
from tests.hostile import check_hostile
from tests.servers import free_port, redis_server

#: task-record fields a foreign client may get wrong, and values no script may trust
BAD_VALUES = {
    "pri": ("nan", "inf", "-1", str(2**32), "soon", "1.5"),
    "ttr": ("nan", "inf", "0", "-1", "1e400", ""),
    "n": ("inf", "nan", "-1", "x", "1.5", "1e300"),
    "u": ("2", "nan"),
    "s": ("9", "-inf"),
}
BAD_FIELDS = [(field, value) for field, values in BAD_VALUES.items() for value in values]


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    with redis_server(port, tmp_path_factory.mktemp("redis")):
        yield port


@pytest.fixture
def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def client(port: int) -> Iterator[redis.Redis]:
    r = redis.Redis(port=port)
    yield r
    r.close()


@pytest.fixture
def adapter(url: str) -> Iterator[RedisAdapter]:
    a = RedisAdapter.from_config(url, {})
    yield a
    a.close()


def foreign_put(client: redis.Redis, q: str, payload: bytes, **fields: object) -> str:
    """Add a task the way redis.py's docstring tells another client to (fields override)."""
    id = str(client.incr(f"{q}:seq"))
    record: dict[str, object] = {"body": payload, "pri": 1024, "ttr": 60, "n": 0}
    record.update(fields)
    with client.pipeline(transaction=True) as tx:
        tx.hset(f"{q}:job:{id}", mapping={k: v for k, v in record.items() if v is not None})  # type: ignore[misc]
        tx.zadd(f"{q}:ready", {id.zfill(16): 1024})
        tx.rpush(f"{q}:wake", 1)
        tx.ltrim(f"{q}:wake", 0, 0)
        tx.execute()
    return id


def expected_problem(field: str, value: str) -> str:
    """What the reason says about ``field`` = ``value`` in a record otherwise as foreign_put writes it."""
    if (field, value) == ("u", "2"):
        return "u 2 is more than n 0"
    if (field, value) == ("s", "9"):
        return "s 9 is more than n - u"
    return f"{field} '{value}' is not a whole number in range"


def canary(i: int) -> bytes:
    """A body that would run (and be logged) if a script leased it: proof it was not."""
    return json.dumps({"v": 1, "id": f"{i:032x}", "task": "canary", "data": {"i": i}, "context": {}}).encode()


def backend_level_items(client: redis.Redis, q: str) -> int:
    """Put every record, entry and key oddity into queue ``q``; how many items that is."""
    for i, (field, value) in enumerate(BAD_FIELDS):
        foreign_put(client, q, canary(100 + i), **{field: value})
    foreign_put(client, q, b"", body=None)  # no body field
    client.zadd(f"{q}:ready", {"0000000000009001": 3})  # an id with no task record
    client.zadd(f"{q}:ready", {"hello": 3, "a b\nc": 4})  # entries that are not ids
    client.zadd(f"{q}:ready", {b"\xff\x00": 5})
    client.set(f"{q}:job:9002", canary(201))  # a record that is a string, not a hash
    client.zadd(f"{q}:ready", {"0000000000009002": 6})
    client.rpush(f"{q}:job:9003", b"x")  # a record that is a list
    client.zadd(f"{q}:ready", {"0000000000009003": 7})
    client.zadd(f"{q}:delayed", {"9004": 0})  # a due delay with no task record
    client.hset(f"{q}:job:9005", mapping={"body": canary(202), "pri": 1, "ttr": "nan", "n": 1})
    client.zadd(f"{q}:reserved", {"9005": 0})  # a lapsed lease of a record with ttr nan
    client.hset(f"{q}:job:9006", mapping={"body": canary(203), "ttr": 60, "n": 0})
    client.zadd(f"{q}:ready", {"0000000000009006": float("inf")})  # no pri field, and the score is no priority
    return len(BAD_FIELDS) + 10  # the ten items after the loop


def test_the_hostile_corpus_and_backend_level_items_are_held(url: str, client: redis.Redis, tmp_path: Path) -> None:
    q = fresh_name("hostile")
    extra = backend_level_items(client, q)

    def put_raw(body: bytes) -> None:
        foreign_put(client, q, body)

    tried, held = check_hostile(url, q, put_raw, tmp_path, extra=extra)
    assert tried == held
    assert (tmp_path / "canary.log").read_text().splitlines() == ["canary 1 1"]  # nothing hostile ran
    print(f"redis hostile: {tried} tried, {held} held")


def test_each_bad_field_is_named_in_the_reason_and_a_kick_runs_it_with_safe_values(
    adapter: RedisAdapter, client: redis.Redis
) -> None:
    for field, value in BAD_FIELDS:
        q = fresh_name(field)
        id = foreign_put(client, q, b"body", **{field: value})
        assert adapter.reserve([q], 0) is None, (field, value)
        (held,) = adapter.held(q)
        assert held.id == id and held.body == b"body", (field, value)
        assert expected_problem(field, value) in (held.reason or ""), held
        assert adapter.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 1}
        assert adapter.kick(q, 1) == 1
        job = reserve_until(adapter, [q])
        assert (job.id, job.body, job.unfinished) == (id, b"body", 0), (field, value)
        assert 0 <= job.priority < 2**32 and 1 <= job.ttr < 2**32 and job.deliveries >= 1, job
        adapter.delete(job)
        adapter.flush()
        assert adapter.stats(q).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}, (field, value)


def test_a_nan_ttr_no_longer_makes_a_task_vanish(adapter: RedisAdapter, client: redis.Redis) -> None:
    """Issue 11 item 9: the take script popped the task, then ZADD failed and nothing rolled back."""
    q = fresh_name("nan")
    id = foreign_put(client, q, b"x", ttr="nan")
    assert adapter.reserve([q], 0) is None
    assert [h.id for h in adapter.held(q)] == [id]
    assert client.hget(f"{q}:job:{id}", "ttr") == b"60"  # replaced, so a kick can run it


def test_keys_of_another_type_in_a_queue_are_refused_before_anything_is_written(
    adapter: RedisAdapter, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = fresh_name("good"), fresh_name("bad")
    adapter.put(bad, b"kept", priority=1, delay=0, ttr=60)
    client.rename(f"{bad}:ready", f"{bad}:saved")
    client.set(f"{bad}:ready", "junk")
    before = {k: client.type(k) for k in client.keys(f"{bad}:*")}
    for call in (
        lambda: adapter.put(bad, b"x", priority=1, delay=0, ttr=60),
        lambda: adapter.reserve([bad], 0),
        lambda: adapter.stats(bad),
        lambda: adapter.kick(bad, 1),
        lambda: adapter.peek(bad, "ready"),
        lambda: adapter.delete_id(bad, "1"),
    ):
        with pytest.raises(BackendError, match=f"{bad}:ready is a string, not a zset"):
            call()
    assert {k: client.type(k) for k in client.keys(f"{bad}:*")} == before
    assert client.get(f"{bad}:seq") == b"1"  # the refused put took no id
    adapter.put(good, b"ok", priority=1, delay=0, ttr=60)
    job = adapter.reserve([bad, good], 0)  # a broken queue beside a good one: the good one is served
    assert job is not None and job.body == b"ok"
    adapter.delete(job)
    assert adapter.reserve([bad, good], 0) is None  # and an idle reserve does not fail, but warns
    assert adapter.reserve([bad, good], 0) is None
    warnings = [r.getMessage() for r in caplog.records if "skipping queues" in r.getMessage()]
    assert len(warnings) == 1 and f"{bad}:ready is a string" in warnings[0], warnings  # once a minute
    client.set(f"{good}:held", "junk")
    id = foreign_put(client, good, b"later", ttr="nan")
    with pytest.raises(BackendError, match=f"{good}:held is a string"):
        adapter.reserve([good], 0)  # a record that must be held cannot be: it stays as it was
    assert client.zscore(f"{good}:ready", id.zfill(16)) == 1024 and client.hget(f"{good}:job:{id}", "ttr") == b"nan"
    adapter.put(good, b"urgent", priority=0, delay=0, ttr=60)
    with pytest.raises(BackendError, match=f"{good}:held is a string"):
        adapter.reserve([good], 0)  # nor is a task leased that could not be held if it failed
    client.delete(f"{good}:held")
    job = reserve_until(adapter, [good])
    assert job.body == b"urgent"
    client.set(f"{good}:held", "junk")  # spoiled while the task runs
    with pytest.raises(BackendError, match=f"{good}:held is a string"):
        adapter.bury(job, reason="x")  # refused before anything changed: still leased
    client.delete(f"{good}:held")
    adapter.bury(job, reason="x")
    assert adapter.reserve([good], 0) is None
    assert sorted(h.id for h in adapter.held(good)) == sorted([job.id, id])


def test_a_spoiled_held_key_leases_nothing_so_a_failing_task_cannot_loop(
    adapter: RedisAdapter, client: redis.Redis
) -> None:
    """Issue 11: with ``SET Q:held x`` the take leased tasks its bury then refused; the lease
    lapsed, and a failing task ran again and again past max_attempts."""
    q, other = fresh_name("heldspoil"), fresh_name("fine")
    id = adapter.put(q, b"fails", priority=1, delay=0, ttr=1)
    client.set(f"{q}:held", "not a zset")
    for _ in range(3):
        with pytest.raises(BackendError, match=f"{q}:held is a string, not a zset"):
            adapter.reserve([q], 0)
    assert client.zcard(f"{q}:reserved") == 0 and client.hget(f"{q}:job:{id}", "n") == b"0"  # never leased
    adapter.put(other, b"ok", priority=5, delay=0, ttr=60)
    job = adapter.reserve([q, other], 0)  # the good queue beside it is still served
    assert job is not None and job.body == b"ok"
    adapter.delete(job)
    client.delete(f"{q}:held")
    job = reserve_until(adapter, [q])
    assert (job.id, job.deliveries, job.unfinished) == (id, 1, 0)
    adapter.bury(job, reason="failed")
    assert [h.reason for h in adapter.held(q)] == ["failed"]


def test_a_counter_that_is_not_a_number_refuses_a_put_and_writes_nothing(
    adapter: RedisAdapter, client: redis.Redis
) -> None:
    q = fresh_name("seq")
    client.set(f"{q}:seq", "abc")
    with pytest.raises(BackendError, match=f"{q}:seq is not a task counter"):
        adapter.put(q, b"x", priority=1, delay=0, ttr=60)
    assert sorted(client.keys(f"{q}:*")) == [f"{q}:seq".encode()]


def test_a_put_never_writes_into_a_record_it_did_not_make(adapter: RedisAdapter, client: redis.Redis) -> None:
    q = fresh_name("ahead")
    client.hset(f"{q}:job:1", mapping={"body": b"someone else's", "pri": 1})
    id = adapter.put(q, b"mine", priority=5, delay=0, ttr=60)
    assert id == "2" and client.hget(f"{q}:job:1", "body") == b"someone else's"


def test_a_wake_key_of_another_type_is_replaced(adapter: RedisAdapter, client: redis.Redis) -> None:
    q = fresh_name("wake")
    client.set(f"{q}:wake", "junk")
    assert adapter.reserve([q], 0.3) is None  # the blocking wait met it: removed, no busy loop
    assert client.type(f"{q}:wake") in (b"none", b"list")
    client.hset(f"{q}:wake", "a", "b")
    adapter.put(q, b"x", priority=1, delay=0, ttr=60)  # a put replaces it too
    assert client.type(f"{q}:wake") == b"list"
    assert reserve_until(adapter, [q]).body == b"x"


def test_held_listing_survives_what_other_clients_write(adapter: RedisAdapter, client: redis.Redis) -> None:
    q = fresh_name("listing")
    client.hset(f"{q}:job:7", mapping={"body": b"b", "reason": b"\xff\xfe not utf-8", "at": "nan"})
    client.zadd(f"{q}:held", {"7": 1, "8": 2})
    client.zadd(f"{q}:held", {b"\xff": 3})
    client.set(f"{q}:job:8", "a string")
    rows = {h.id: h for h in adapter.held(q)}
    assert rows["7"].reason == "\\xff\\xfe not utf-8" and rows["7"].held_at is None
    assert "is a string, not a task hash" in (rows["8"].reason or "")
    assert "\\xff" in rows


def test_a_reason_with_lone_surrogates_is_stored(url: str, client: redis.Redis) -> None:
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue(fresh_name("surrogate"))
    job_id = queue.send("t", {})
    job = reserve_until(app.adapter, [queue.backend_name])
    app.adapter.bury(job, reason="bad \udc80 text \ud800")
    (held,) = queue.held()
    assert held.id == job_id and held.reason == "bad \\udc80 text \\ud800"
    app.close()
