"""The wire envelope: one UTF-8 JSON object per task, never pickle.

lilqueue's own format (version 1)::

    {"v":1,"id":"<hex>","task":"send","data":{...},"context":{...},
     "attempts":0,"priority":1024,"ttr":60,"sig":"<hex>"}

``attempts`` counts the runs before this body was written (0 when first added);
the backend counts deliveries of the body itself. ``sig`` is present only when a
secret is set: it is the HMAC-SHA256 (hex) of the exact bytes of the body without
it, i.e. ``body[:-len(',"sig":"<64 hex>"}')] + b"}"``, so a producer in any
language signs what it sends and nobody has to re-serialise JSON the same way.

Lilmuckers_Queue's format, ``{"task": "...", "store": ..., "data": {...}}``, is
read too (``store`` becomes ``context["store"]``) and written with
``wire = "lilmuckers"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from typing import Any, Literal

from lilqueue.errors import TaskError, WireError

VERSION = 1
Format = Literal["lilqueue", "lilmuckers"]
_SIG_PREFIX = b',"sig":"'
_SIG_LEN = len(_SIG_PREFIX) + 64 + 2  # prefix, hex digest, '"}'
_LILMUCKERS_KEYS = frozenset(("task", "store", "data"))
_LILQUEUE_KEYS = frozenset(("v", "id", "task", "data", "context", "attempts", "priority", "ttr"))
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_decode = json.JSONDecoder().decode


@dataclasses.dataclass(slots=True)
class Envelope:
    """A decoded task body."""

    task: str
    data: dict[str, Any]
    context: dict[str, Any]
    id: str = ""
    attempts: int = 0
    priority: int | None = None
    ttr: int | None = None
    format: Format = "lilqueue"


def new_id() -> str:
    """A fresh envelope id: 128 random bits as 32 hex digits (as uuid4().hex, 4x cheaper)."""
    return os.urandom(16).hex()


def encode(envelope: Envelope, *, secret: bytes | None = None, wire: Format = "lilqueue") -> bytes:
    """Serialise ``envelope``; raise :class:`TaskError` if it is not JSON-serialisable."""
    if wire == "lilmuckers":
        return _encode_lilmuckers(envelope)
    obj = {
        "v": VERSION,
        "id": envelope.id,
        "task": envelope.task,
        "data": envelope.data,
        "context": envelope.context,
        "attempts": envelope.attempts,
        "priority": envelope.priority,
        "ttr": envelope.ttr,
    }
    body = _dumps(obj)
    return sign(body, secret) if secret else body


def _encode_lilmuckers(envelope: Envelope) -> bytes:
    extra = set(envelope.context) - {"store"}
    if extra:
        raise TaskError(
            f"wire = 'lilmuckers' carries only context['store']; drop {sorted(extra)} or use the lilqueue wire format"
        )
    return _dumps({"task": envelope.task, "store": envelope.context.get("store"), "data": envelope.data})


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return _encoder.encode(obj).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TaskError(f"task data is not JSON-serialisable: {exc}") from exc


def sign(body: bytes, secret: bytes) -> bytes:
    """Append the HMAC-SHA256 signature of ``body`` (a JSON object) to it."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
    return body[:-1] + _SIG_PREFIX + digest + b'"}'


def _verify(body: bytes, secret: bytes) -> None:
    tail = body[-_SIG_LEN:]
    if len(body) <= _SIG_LEN or not tail.startswith(_SIG_PREFIX) or not tail.endswith(b'"}'):
        raise WireError("missing signature (a secret is set, so every task must be signed)")
    unsigned = body[:-_SIG_LEN] + b"}"
    expected = hmac.new(secret, unsigned, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(expected, tail[len(_SIG_PREFIX) : -2]):
        raise WireError("bad signature")


def decode(body: bytes, *, secret: bytes | None = None) -> Envelope:
    """Parse a body into an :class:`Envelope`; raise :class:`WireError` with the reason."""
    if secret:
        _verify(body, secret)
    try:
        obj = _decode(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WireError(f"payload is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise WireError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(f"payload is JSON {type(obj).__name__}, not a task envelope object")
    if "v" in obj:
        return _from_lilqueue(obj)
    if "task" in obj and set(obj) <= _LILMUCKERS_KEYS:
        return _from_lilmuckers(obj)
    raise WireError(f"payload is not a task envelope (keys: {sorted(obj)[:10]})")


def _from_lilqueue(obj: dict[str, Any]) -> Envelope:
    if obj["v"] != VERSION:
        raise WireError(f"unknown envelope version {obj['v']!r} (this lilqueue reads {VERSION})")
    obj.pop("sig", None)
    if not _LILQUEUE_KEYS.issuperset(obj):
        raise WireError(f"unknown envelope fields {sorted(set(obj) - _LILQUEUE_KEYS)}")
    get = obj.get
    task, data, context, id = get("task"), get("data", {}), get("context", {}), get("id", "")
    attempts, priority, ttr = get("attempts", 0), get("priority"), get("ttr")
    if (  # the envelope every lilqueue producer writes: checked in one go
        type(task) is str
        and task
        and type(data) is dict
        and type(context) is dict
        and type(id) is str
        and type(attempts) is int
        and attempts >= 0
        and (priority is None or type(priority) is int)
        and (ttr is None or type(ttr) is int)
    ):
        return Envelope(task, data, context, id, attempts, priority, ttr)
    if type(attempts) is not int or attempts < 0:
        raise WireError(f"envelope 'attempts' must be a non-negative integer, not {attempts!r}")
    return Envelope(
        task=_task_name(task),
        data=_mapping("data", data),
        context=_mapping("context", context),
        id=_text("id", id),
        attempts=attempts,
        priority=_optional_int("priority", priority),
        ttr=_optional_int("ttr", ttr),
    )


def _from_lilmuckers(obj: dict[str, Any]) -> Envelope:
    store = obj.get("store")
    return Envelope(
        task=_task_name(obj["task"]),
        data=_mapping("data", obj.get("data", {})),
        context={} if store is None else {"store": store},
        format="lilmuckers",
    )


def _task_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise WireError(f"task name must be a non-empty string, not {value!r:.80}")
    return value


def _mapping(field: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value == [] or value is None:  # PHP's json_encode(array()) and null
        return {}
    raise WireError(f"envelope {field!r} must be an object, not {type(value).__name__}")


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise WireError(f"envelope {field!r} must be a string, not {type(value).__name__}")
    return value


def _optional_int(field: str, value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    raise WireError(f"envelope {field!r} must be an integer, not {value!r:.40}")
