"""The wire envelope: one UTF-8 JSON object per task, never pickle.

lilqueue's own format (version 1)::

    {"v":1,"id":"<hex>","task":"send","data":{...},"context":{...},
     "attempts":0,"priority":1024,"ttr":60,"sig":"<hex>"}

``attempts`` counts the runs before this body was written (0 when first added);
the backend counts deliveries of the body itself. ``priority`` is 0 <= p < 2**32,
``ttr`` 1 <= t < 2**32 and ``attempts`` 0 <= a < 2**32: anything else is refused.

``sig`` is present only when a secret is set: it is the HMAC-SHA256 (hex) of the queue
name (the lilqueue name, without any prefix), a newline, and the exact bytes of the body
without the signature, i.e. ``queue + b"\n" + body[:-len(',"sig":"<64 hex>"}')] + b"}"``,
so a producer in any language signs what it sends and nobody has to re-serialise JSON
the same way. Binding the queue stops a captured body being replayed into another
queue; it does not stop a replay into the same queue (see docs/security.md).
``legacy_signatures`` also accepts the unbound form of lilqueue 0.1 (the body alone).

A decoded body is valid JSON text in the strict sense: no NaN or Infinity, no number
too large for a float, no lone surrogate, nesting a decoder can follow. Anything else
is a :class:`WireError` with the reason, so the runner holds it.

Lilmuckers_Queue's format, ``{"task": "...", "store": ..., "data": ...}``, is read too
(``store`` becomes ``context["store"]``; ``data`` may be any JSON value, as the seed's
workers accept) and written with ``wire = "lilmuckers"``. Written in that format, a
retried task carries ``"attempts"`` too (the seed's PHP ``importData`` ignores keys it
does not know), so its attempt count survives a re-put.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import re
from typing import Any, Literal

from lilqueue.errors import TaskError, WireError

VERSION = 1
Format = Literal["lilqueue", "lilmuckers"]
_SIG_PREFIX = b',"sig":"'
_SIG_LEN = len(_SIG_PREFIX) + 64 + 2  # prefix, hex digest, '"}'
_LILMUCKERS_KEYS = frozenset(("task", "store", "data", "attempts"))
_LILQUEUE_KEYS = frozenset(("v", "id", "task", "data", "context", "attempts", "priority", "ttr"))
_LIMIT = 2**32  # priority, ttr and attempts are below it
#: the deepest nesting of arrays and objects a body may have, the envelope included: the
#: same at the producer and the worker, and far from where Python's recursion gives out
MAX_DEPTH = 500
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_no_constant).decode
#: a number that may be too large for a float (1e400, or 309 digits before the point)
_HUGE_NUMBER = re.compile(rb"[eE]\+?0*[1-9]\d{2}|\d{309}")


@dataclasses.dataclass(slots=True)
class Envelope:
    """A decoded task body."""

    task: str
    data: Any  # a dict in lilqueue's format; any JSON value from the seed's
    context: dict[str, Any]
    id: str = ""
    attempts: int = 0
    priority: int | None = None
    ttr: int | None = None
    format: Format = "lilqueue"


def new_id() -> str:
    """A fresh envelope id: 128 random bits as 32 hex digits (as uuid4().hex, 4x cheaper)."""
    return os.urandom(16).hex()


def encode(envelope: Envelope, *, secret: bytes | None = None, wire: Format = "lilqueue", queue: str = "") -> bytes:
    """Serialise ``envelope`` (signed for ``queue`` when a secret is given).

    Raises :class:`TaskError` if it is not strict JSON (NaN, lone surrogates, nesting
    too deep, objects JSON has no form for).
    """
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
    return sign(body, secret, queue) if secret else body


def _encode_lilmuckers(envelope: Envelope) -> bytes:
    extra = set(envelope.context) - {"store"}
    if extra:
        raise TaskError(
            f"wire = 'lilmuckers' carries only context['store']; drop {sorted(extra)} or use the lilqueue wire format"
        )
    obj = {"task": envelope.task, "store": envelope.context.get("store"), "data": envelope.data}
    if envelope.attempts:
        obj["attempts"] = envelope.attempts
    return _dumps(obj)


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        body = _encoder.encode(obj).encode("utf-8")
    except RecursionError:
        raise TaskError(f"task data is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise TaskError(f"task data is not JSON-serialisable: {exc}") from exc
    if _too_deep(obj, body):
        raise TaskError(f"task data is nested too deeply (at most {MAX_DEPTH} levels)")
    return body


def _all_finite(obj: Any) -> bool:
    """Whether no float in ``obj`` is infinite (JSON has no such number)."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if type(value) is float and not math.isfinite(value):
            return False
        if type(value) is dict:
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
    return True


def _too_deep(obj: Any, body: bytes) -> bool:
    """Whether ``obj`` nests arrays and objects deeper than MAX_DEPTH (counted only when
    the body has that many brackets at all, so ordinary tasks pay two byte counts)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if type(value) is dict:
            stack.extend((item, depth + 1) for item in value.values())
        elif type(value) is list:
            stack.extend((item, depth + 1) for item in value)
    return False


def sign(body: bytes, secret: bytes, queue: str = "") -> bytes:
    """Append the HMAC-SHA256 signature of ``queue``, a newline and ``body`` to ``body``."""
    digest = _digest(secret, queue.encode("utf-8") + b"\n" + body)
    return body[:-1] + _SIG_PREFIX + digest + b'"}'


def _digest(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")


def _verify(body: bytes, secret: bytes, queue: str, legacy: bool) -> None:
    tail = body[-_SIG_LEN:]
    if len(body) <= _SIG_LEN or not tail.startswith(_SIG_PREFIX) or not tail.endswith(b'"}'):
        raise WireError("missing signature (a secret is set, so every task must be signed)")
    unsigned = body[:-_SIG_LEN] + b"}"
    given = tail[len(_SIG_PREFIX) : -2]
    bound = queue.encode("utf-8", "backslashreplace") + b"\n" + unsigned
    if hmac.compare_digest(_digest(secret, bound), given):
        return
    if legacy and hmac.compare_digest(_digest(secret, unsigned), given):
        return
    raise WireError(f"bad signature (not signed with this secret for queue {queue!r})")


def decode(body: bytes, *, secret: bytes | None = None, queue: str = "", legacy: bool = False) -> Envelope:
    """Parse a body into an :class:`Envelope`; raise :class:`WireError` with the reason.

    With ``secret``, the body must be signed for ``queue`` (or, with ``legacy``, in the
    unbound form of lilqueue 0.1).
    """
    if secret:
        _verify(body, secret, queue, legacy)
    obj = _parse(body)
    if not isinstance(obj, dict):
        raise WireError(f"payload is JSON {type(obj).__name__}, not a task envelope object")
    if "v" in obj:
        return _from_lilqueue(obj)
    if "task" in obj and set(obj) <= _LILMUCKERS_KEYS:
        return _from_lilmuckers(obj)
    raise WireError(f"payload is not a task envelope (keys: {_keys(obj)})")


def _parse(body: bytes) -> Any:
    try:
        obj = _decode(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WireError(f"payload is not UTF-8: {exc}") from None
    except RecursionError:
        raise WireError("payload is nested too deeply") from None
    except ValueError as exc:
        raise WireError(f"payload is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        _check_text(obj)
    if _HUGE_NUMBER.search(body) is not None and not _all_finite(obj):
        raise WireError("payload is not valid JSON: a number is too large for a float")
    if _too_deep(obj, body):
        raise WireError(f"payload is nested too deeply (at most {MAX_DEPTH} levels)")
    return obj


def _check_text(obj: Any) -> None:
    """Refuse lone surrogates (``\\udc80``): JSON escapes that are not text."""
    try:
        _encoder.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("payload has a lone surrogate (a \\uD800-\\uDFFF escape that is not half of a pair)") from None
    except RecursionError:
        raise WireError("payload is nested too deeply") from None


def _keys(obj: dict[str, Any]) -> str:
    return repr(sorted(obj)[:10])[:200].encode("ascii", "backslashreplace").decode()


def _from_lilqueue(obj: dict[str, Any]) -> Envelope:
    if type(obj["v"]) is not int or obj["v"] != VERSION:
        raise WireError(f"unknown envelope version {obj['v']!r:.40} (this lilqueue reads {VERSION})")
    if type(obj.pop("sig", "")) is not str:
        raise WireError("envelope 'sig' must be a string")
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
        and 0 <= attempts < _LIMIT
        and (priority is None or (type(priority) is int and 0 <= priority < _LIMIT))
        and (ttr is None or (type(ttr) is int and 0 < ttr < _LIMIT))
    ):
        return Envelope(task, data, context, id, attempts, priority, ttr)
    return Envelope(
        task=_task_name(task),
        data=_mapping("data", data),
        context=_mapping("context", context),
        id=_text("id", id),
        attempts=_attempts(attempts),
        priority=_optional_int("priority", priority, 0),
        ttr=_optional_int("ttr", ttr, 1),
    )


def _from_lilmuckers(obj: dict[str, Any]) -> Envelope:
    store = obj.get("store")
    return Envelope(
        task=_task_name(obj["task"]),
        data=_seed_data(obj.get("data", {})),
        context={} if store is None else {"store": store},
        attempts=_attempts(obj.get("attempts", 0)),
        format="lilmuckers",
    )


def _seed_data(value: Any) -> Any:
    """The seed's workers take any JSON as data; PHP's empty ``array()`` and null read as {}."""
    return {} if value == [] or value is None else value


def _attempts(value: Any) -> int:
    if type(value) is not int or not 0 <= value < _LIMIT:
        raise WireError(f"envelope 'attempts' must be an integer 0 <= a < 2**32, not {value!r:.40}")
    return value


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


def _optional_int(field: str, value: Any, low: int) -> int | None:
    if value is None or (type(value) is int and low <= value < _LIMIT):
        return value
    raise WireError(f"envelope {field!r} must be an integer {low} <= n < 2**32, not {value!r:.40}")
