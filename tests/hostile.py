"""A hostile corpus: bodies any client of a backend can put, each of which a worker must
hold with a reason, never run, never crash on, never loop on.

``check_hostile`` puts the corpus with a backend's own raw client, then a canary task
through lilqueue, runs a real ``lilqueue watch QUEUE --burst`` process and checks that
every hostile item is held with a reason, the canary ran, and the worker exited 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lilqueue
from lilqueue.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.hostile_app:app"


def _env(**fields: object) -> bytes:
    """A lilqueue envelope with ``fields`` replaced (``...`` as a value removes the key)."""
    obj: dict[str, object] = {"v": 1, "id": "ab" * 16, "task": "canary", "data": {}, "context": {}}
    obj.update({"attempts": 0, "priority": 1024, "ttr": 60})
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


DEEP = 1000
CORPUS: list[tuple[str, bytes]] = [
    # not JSON, not UTF-8, not an object
    ("empty body", b""),
    ("whitespace", b" " * 10_000),
    ("garbage bytes", bytes(range(256))),
    ("invalid UTF-8 in a string", b'{"v":1,"task":"canary","data":{"x":"\xff\xfe"}}'),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + _env()),
    ("encoded lone surrogate (CESU)", b'{"v":1,"task":"canary","data":{"x":"\xed\xb2\x80"}}'),
    ("JSON null", b"null"),
    ("JSON array", b"[1,2,3]"),
    ("JSON string", b'"canary"'),
    ("JSON number", b"12"),
    ("empty object", b"{}"),
    ("truncated envelope", _env()[:-5]),
    # deep nesting (RecursionError in the decoder)
    ("1000 nested lists", b"[" * DEEP + b"]" * DEEP),
    ("1000 nested objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("nested lists in data", b'{"v":1,"task":"canary","data":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"),
    ("nested lists in context", b'{"v":1,"task":"canary","context":{"x":' + b"[" * DEEP + b"]" * DEEP + b"}}"),
    # numbers JSON does not have, and numbers too big to hold
    ("NaN in data", b'{"v":1,"task":"canary","data":{"x":NaN}}'),
    ("Infinity in data", b'{"v":1,"task":"canary","data":{"x":Infinity}}'),
    ("-Infinity in context", b'{"v":1,"task":"canary","context":{"x":-Infinity}}'),
    ("5000-digit integer in data", b'{"v":1,"task":"canary","data":{"x":' + b"9" * 5000 + b"}}"),
    ("1e400 in data", b'{"v":1,"task":"canary","data":{"x":1e400}}'),
    # lone surrogates (valid JSON escapes, not valid text)
    ("lone surrogate in data", _raw('{"v":1,"task":"canary","data":{"x":"\\udc80"}}')),
    ("lone surrogate in a key", _raw('{"v":1,"task":"canary","data":{"\\ud800":1}}')),
    ("lone surrogate in task name", _raw('{"v":1,"task":"can\\udc80ary","data":{}}')),
    ("lone surrogate in context", _raw('{"v":1,"task":"canary","context":{"s":"\\udfff"}}')),
    ("lone surrogate in the seed format", _raw('{"task":"canary","store":"\\ud83d","data":{}}')),
    # every envelope field with a wrong type or out of range
    ("v true", _env(v=True)),
    ("v string", _env(v="1")),
    ("v 2", _env(v=2)),
    ("v null", _env(v=None)),
    ("v 1.0", _raw('{"v":1.0,"task":"canary"}')),
    ("id number", _env(id=5)),
    ("id object", _env(id={})),
    ("task number", _env(task=5)),
    ("task empty", _env(task="")),
    ("task null", _env(task=None)),
    ("task missing", _env(task=...)),
    ("task list", _env(task=["canary"])),
    ("data string", _env(data="x")),
    ("data number", _env(data=5)),
    ("data list", _env(data=[1])),
    ("context string", _env(context="x")),
    ("context list", _env(context=[1])),
    ("attempts negative", _env(attempts=-1)),
    ("attempts string", _env(attempts="1")),
    ("attempts float", _env(attempts=1.5)),
    ("attempts true", _env(attempts=True)),
    ("attempts 2**64", _env(attempts=2**64)),
    ("attempts 10**12 on a failing task", _env(task="fail", attempts=10**12)),
    ("attempts 5000 on a retrying task", _env(task="retry", attempts=5000)),
    ("attempts 10**12 on a retrying task", _env(task="retry", attempts=10**12)),
    ("priority negative", _env(priority=-1)),
    ("priority 2**32", _env(priority=2**32)),
    ("priority 2**70", _env(priority=2**70)),
    ("priority string", _env(priority="1")),
    ("priority float", _env(priority=1.5)),
    ("priority NaN", b'{"v":1,"task":"canary","priority":NaN}'),
    ("ttr 0", _env(ttr=0)),
    ("ttr negative", _env(ttr=-5)),
    ("ttr 2**32", _env(ttr=2**32)),
    ("ttr string", _env(ttr="60")),
    ("ttr 1e400", b'{"v":1,"task":"canary","ttr":1e400}'),
    ("sig number", _raw('{"v":1,"task":"canary","sig":5}')),
    ("unknown field", _env(extra=1)),
    ("duplicate keys", b'{"v":1,"task":"canary","task":"nosuch"}'),
    # names no worker answers to
    ("unknown task", _env(task="nosuch")),
    ("task name with a newline", _env(task="canary\nforged line")),
    ("task name with NUL", _env(task="canary\x00")),
    ("10,000-character task name", _env(task="c" * 10_000)),
    ("task name of control characters", _env(task="\x1b[2J\x1b[H")),
    ("seed format, unknown task", b'{"task":"nosuch","store":null,"data":{}}'),
    ("seed format, task number", b'{"task":5,"store":null,"data":{}}'),
    ("seed format, extra key", b'{"task":"canary","store":null,"data":{},"x":1}'),
]


def check_hostile(
    url: str, queue: str, put_raw: Callable[[bytes], None], tmp_path: Path, *, extra: int = 0
) -> tuple[int, int]:
    """Put CORPUS with ``put_raw``, then a canary; run a real burst worker; check the outcome.

    ``extra`` counts the backend-level hostile items the caller put before calling this,
    each of which must be held too. Returns (hostile items tried, held).
    """
    for _label, body in CORPUS:
        put_raw(body)
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    app.queue(queue).send("canary", {"i": 1})
    app.close()
    log = tmp_path / "canary.log"
    worker = _cli(url, queue, log, "watch", queue, "--burst", timeout=180)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert log.exists() and log.read_text().split("\n")[0] == "canary 1 1", worker.stdout + worker.stderr
    tried = len(CORPUS) + extra
    listing = _cli(url, queue, log, "held", queue, "--json", "--limit", "10000")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    held = json.loads(listing.stdout)
    assert all(isinstance(h["reason"], str) and h["reason"].strip() for h in held), held
    assert len(held) == tried, _missing(held)
    text = _cli(url, queue, log, "held", queue, "--limit", "10000")
    assert text.returncode == 0, text.stderr
    _assert_drained(url, queue, log)
    return tried, len(held)


def _assert_drained(url: str, queue: str, log: Path) -> None:
    stats = _cli(url, queue, log, "stats", queue, "--json")
    assert stats.returncode == 0, stats.stderr
    counts = json.loads(stats.stdout)[queue]
    assert counts["ready"] in (0, None) and counts["reserved"] in (0, None), counts


def _missing(held: list[dict[str, object]]) -> str:
    return f"{len(held)} held of {len(CORPUS)} corpus items (+extra): " + "; ".join(
        f"{h['task']!r}: {str(h['reason'])[:80]}" for h in held
    )


def _cli(url: str, queue: str, log: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LILQUEUE_TEST_LOG": str(log), "LILQUEUE_HOSTILE_QUEUE": queue}
    env.pop("LILQUEUE_CONFIG", None)
    argv = [sys.executable, "-m", "lilqueue", "--app", APP, "--backend", url, *args]
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
    )
