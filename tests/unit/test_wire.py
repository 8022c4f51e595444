"""The wire envelope: lilqueue's format, Lilmuckers payloads, signatures, garbage."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lilqueue import wire
from lilqueue.errors import TaskError, WireError

SECRET = b"k3y"


def envelope(**kw: object) -> wire.Envelope:
    base: dict[str, object] = {"task": "send", "data": {"to": "a@b"}, "context": {"store": "fr"}, "id": "abc"}
    base.update(kw)
    return wire.Envelope(**base)  # type: ignore[arg-type]


def test_roundtrip_keeps_every_field() -> None:
    env = envelope(attempts=2, priority=7, ttr=30, data={"text": "héllo ✓", "n": [1, 2.5, None]})
    body = wire.encode(env)
    assert json.loads(body)["v"] == wire.VERSION
    assert wire.decode(body) == env


def test_body_is_compact_utf8_json() -> None:
    body = wire.encode(envelope(data={"t": "é"}))
    assert "é".encode() in body and b": " not in body


def test_unserialisable_data_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="JSON-serialisable"):
        wire.encode(envelope(data={"when": object()}))
    with pytest.raises(TaskError):
        wire.encode(envelope(data={"x": float("nan")}))


def test_lilmuckers_payload_is_read() -> None:
    env = wire.decode(b'{"task":"test","store":"default","data":{"message":"hello"}}')
    assert (env.task, env.data, env.context, env.format) == (
        "test",
        {"message": "hello"},
        {"store": "default"},
        "lilmuckers",
    )


def test_lilmuckers_php_empty_array_and_null_store() -> None:
    env = wire.decode(b'{"task":"test","store":null,"data":[]}')
    assert (env.data, env.context) == ({}, {})


def test_lilmuckers_wire_writes_exactly_the_seed_format() -> None:
    body = wire.encode(envelope(context={"store": "fr"}), wire="lilmuckers")
    assert json.loads(body) == {"task": "send", "store": "fr", "data": {"to": "a@b"}}


def test_lilmuckers_wire_refuses_to_drop_context() -> None:
    with pytest.raises(TaskError, match="only context\\['store'\\]"):
        wire.encode(envelope(context={"store": "fr", "locale": "fr_FR"}), wire="lilmuckers")


def test_signed_roundtrip() -> None:
    body = wire.encode(envelope(), secret=SECRET)
    assert b'"sig":"' in body
    assert wire.decode(body, secret=SECRET).task == "send"


def test_signature_covers_the_exact_bytes() -> None:
    body = wire.encode(envelope(), secret=SECRET)
    tampered = body.replace(b"a@b", b"x@y")
    with pytest.raises(WireError, match="bad signature"):
        wire.decode(tampered, secret=SECRET)


def test_wrong_key_and_missing_signature() -> None:
    with pytest.raises(WireError, match="bad signature"):
        wire.decode(wire.encode(envelope(), secret=b"other"), secret=SECRET)
    with pytest.raises(WireError, match="missing signature"):
        wire.decode(wire.encode(envelope()), secret=SECRET)
    with pytest.raises(WireError, match="missing signature"):
        wire.decode(b'{"task":"test","store":null,"data":{}}', secret=SECRET)


def test_signature_is_hmac_sha256_of_queue_newline_unsigned_body() -> None:
    unsigned = wire.encode(envelope())
    signed = wire.encode(envelope(), secret=SECRET, queue="mail")
    digest = hmac.new(SECRET, b"mail\n" + unsigned, hashlib.sha256).hexdigest()
    assert signed == unsigned[:-1] + b',"sig":"' + digest.encode() + b'"}'
    assert wire.decode(signed, secret=SECRET, queue="mail").task == "send"


def test_a_signed_body_replayed_into_another_queue_is_refused() -> None:
    signed = wire.encode(envelope(), secret=SECRET, queue="mail")
    with pytest.raises(WireError, match=r"bad signature.*'billing'"):
        wire.decode(signed, secret=SECRET, queue="billing")


def test_unbound_signatures_of_0_1_are_read_only_with_legacy_signatures() -> None:
    unsigned = wire.encode(envelope())
    digest = hmac.new(SECRET, unsigned, hashlib.sha256).hexdigest()
    old = unsigned[:-1] + b',"sig":"' + digest.encode() + b'"}'
    with pytest.raises(WireError, match="bad signature"):
        wire.decode(old, secret=SECRET, queue="mail")
    assert wire.decode(old, secret=SECRET, queue="mail", legacy=True).task == "send"


def test_php_empty_arrays_and_nulls_in_the_lilqueue_format_are_empty_objects() -> None:
    env = wire.decode(b'{"v": 1, "task": "x", "data": [], "context": null}')
    assert (env.task, env.data, env.context, env.id, env.attempts) == ("x", {}, {}, "", 0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{nope", "not valid JSON"),
        (b"[1]", "JSON list"),
        (b'{"a": 1}', "not a task envelope"),
        (b'{"v": 2, "task": "x"}', "unknown envelope version"),
        (b'{"v": 1, "task": ""}', "non-empty string"),
        (b'{"v": 1, "task": "x", "data": 3}', "'data' must be an object"),
        (b'{"v": 1, "task": "x", "attempts": -1}', "'attempts' must be an integer 0 <= a"),
        (b'{"v": 1, "task": "x", "evil": 1}', "unknown envelope fields"),
        (b'{"v": 1, "task": "x", "ttr": "60"}', "'ttr' must be an integer"),
        (b'{"task": "x", "store": 1, "data": {}, "more": 1}', "not a task envelope"),
        (b'{"v": 1, "task": "x", "priority": true}', "'priority' must be an integer"),
        (b'{"v": 1, "task": "x", "attempts": true}', "'attempts' must be an integer"),
        (b'{"v": true, "task": "x"}', "unknown envelope version True"),
        (b'{"v": 1.0, "task": "x"}', "unknown envelope version 1.0"),
        (b'{"v": 1, "task": "x", "priority": 4294967296}', "'priority' must be an integer 0 <= n < 2\\*\\*32"),
        (b'{"v": 1, "task": "x", "ttr": 0}', "'ttr' must be an integer 1 <= n"),
        (b'{"v": 1, "task": "x", "data": {"n": NaN}}', "NaN is not JSON"),
        (b'{"v": 1, "task": "x", "data": {"n": -Infinity}}', "-Infinity is not JSON"),
        (b'{"v": 1, "task": "x", "data": {"n": 1e999}}', "too large for a float"),
        (b'{"v": 1, "task": "x", "data": {"s": "\\udc80"}}', "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"task": "x", "store": null, "data": {}, "attempts": -3}', "'attempts' must be an integer"),
        (b'{"v": 1, "task": "x", "id": 7}', "'id' must be a string"),
        (b'{"v": 1, "task": "x", "context": "c"}', "'context' must be an object"),
    ],
)
def test_garbage_is_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        wire.decode(body)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_wire_error(body: bytes) -> None:
    try:
        env = wire.decode(body)
    except WireError:
        return
    assert isinstance(env.task, str) and env.task
    assert env.format == "lilmuckers" or isinstance(env.data, dict)


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20), lambda c: st.lists(c, max_size=3)
        ),
        max_size=5,
    )
)
def test_any_json_data_roundtrips_signed(data: dict[str, object]) -> None:
    env = envelope(data=data)
    assert wire.decode(wire.encode(env, secret=SECRET), secret=SECRET).data == data


def test_seed_data_may_be_any_json_and_attempts_survive_a_lilmuckers_reput() -> None:
    env = wire.decode(b'{"task":"x","store":"default","data":[1,2,3]}')
    assert env.data == [1, 2, 3] and env.attempts == 0
    again = wire.decode(wire.encode(wire.Envelope("x", [1, 2, 3], {}, attempts=2), wire="lilmuckers"))
    assert (again.data, again.attempts, again.format) == ([1, 2, 3], 2, "lilmuckers")
    first = json.loads(wire.encode(wire.Envelope("x", {"a": 1}, {"store": "s"}), wire="lilmuckers"))
    assert first == {"task": "x", "store": "s", "data": {"a": 1}}  # exactly the seed's on a first send


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


def test_data_nested_too_deeply_is_a_task_error_at_the_producer() -> None:
    with pytest.raises(TaskError, match="nested too deeply"):
        wire.encode(envelope(data={"deep": _nested(100_000)}))
    assert wire.decode(wire.encode(envelope(data={"deep": _nested(50)}))).data == {"deep": _nested(50)}


@pytest.mark.parametrize("depth", [wire.MAX_DEPTH - 2, wire.MAX_DEPTH - 1, 700, 980, 985])
def test_producer_and_worker_agree_on_how_deep_is_too_deep(depth: int) -> None:
    """envelope (1) + data (1) + ``depth`` nested lists: accepted by both, or refused by both."""
    data = {"deep": _nested(depth - 1)}  # _nested(n) is n + 1 lists deep
    raw = b'{"v":1,"task":"t","data":{"deep":' + b"[" * depth + b"]" * depth + b"}}"
    try:
        body = wire.encode(envelope(data=data))
    except TaskError:
        with pytest.raises(WireError, match="nested too deeply"):
            wire.decode(raw)
        assert depth + 2 > wire.MAX_DEPTH
        return
    assert depth + 2 <= wire.MAX_DEPTH
    assert wire.decode(body).data == data and wire.decode(raw).data == {"deep": _nested(depth - 1)}


@pytest.mark.parametrize("value", ["\udc80", float("nan"), float("inf")])
def test_producer_refuses_what_json_cannot_carry(value: object) -> None:
    with pytest.raises(TaskError):
        wire.encode(envelope(data={"x": value}))


def test_every_hostile_corpus_body_decodes_or_raises_wire_error() -> None:
    from tests.hostile import CORPUS

    for label, body in CORPUS:
        try:
            env = wire.decode(body)
        except WireError as exc:
            assert str(exc), label
            continue
        assert env.task not in ("canary",) or env.attempts >= 5000, label


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=30,
)


@given(
    data=st.dictionaries(st.text(max_size=12), _json_values, max_size=6),
    context=st.dictionaries(st.text(max_size=12), _json_values, max_size=3),
    attempts=st.integers(0, 2**32 - 1),
    priority=st.none() | st.integers(0, 2**32 - 1),
    ttr=st.none() | st.integers(1, 2**32 - 1),
    task=st.text(min_size=1, max_size=30),
    queue=st.text(max_size=20),
)
def test_wire_roundtrip_any_valid_envelope(
    data: dict[str, object],
    context: dict[str, object],
    attempts: int,
    priority: int | None,
    ttr: int | None,
    task: str,
    queue: str,
) -> None:
    env = wire.Envelope(task, data, context, wire.new_id(), attempts, priority, ttr)
    assert wire.decode(wire.encode(env)) == env
    assert wire.decode(wire.encode(env, secret=SECRET, queue=queue), secret=SECRET, queue=queue) == env
