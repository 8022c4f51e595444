"""The wire envelope: lilqueue's format, Lilmuckers payloads, signatures, garbage."""

from __future__ import annotations

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


def test_signature_is_hmac_sha256_of_the_unsigned_body() -> None:
    import hashlib
    import hmac

    unsigned = wire.encode(envelope())
    signed = wire.encode(envelope(), secret=SECRET)
    digest = hmac.new(SECRET, unsigned, hashlib.sha256).hexdigest()
    assert signed == unsigned[:-1] + b',"sig":"' + digest.encode() + b'"}'


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
        (b'{"v": 1, "task": "x", "attempts": -1}', "non-negative"),
        (b'{"v": 1, "task": "x", "evil": 1}', "unknown envelope fields"),
        (b'{"v": 1, "task": "x", "ttr": "60"}', "'ttr' must be an integer"),
        (b'{"task": "x", "store": 1, "data": {}, "more": 1}', "not a task envelope"),
        (b'{"v": 1, "task": "x", "priority": true}', "'priority' must be an integer"),
        (b'{"v": 1, "task": "x", "attempts": true}', "non-negative"),
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
    assert isinstance(env.task, str) and isinstance(env.data, dict)


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
