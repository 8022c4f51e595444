"""Hostile input on Gearman, put with the raw protocol client (never the adapter's put): the
shared corpus of bodies, then what only Gearman carries -- unique keys that are not lilqueue's
(out-of-range, negative, NaN priority or ttr; not UTF-8; empty; at the size limit), jobs in the
``@delayed`` function and epoch jobs from other clients -- and functions named with newlines,
tabs and a lone ``.``, which must not break ``stats`` for anyone."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from lilqueue.adapters.gearman import DELAYED_SUFFIX, GearmanAdapter
from lilqueue.adapters.gearman_protocol import Address, Admin, Command, Connection
from tests.hostile import CORPUS, check_hostile
from tests.integration.workers import run_cli
from tests.servers import Server, binary, free_port, require_module


def envelope(task: str) -> bytes:
    return json.dumps({"v": 1, "id": uuid.uuid4().hex, "task": task, "data": {}, "context": {}}).encode()


def hex32() -> bytes:
    return uuid.uuid4().hex.encode()


def gearman_level_hostiles(queue: str) -> list[tuple[str, bytes, bytes, bytes]]:
    """(function, unique, body, label): each must end held. 'fail' always raises, 'retry' asks
    for a retry: both re-put under the job's priority and ttr, which come from its unique key."""
    return [
        (queue, hex32() + b".9999999999.60", envelope("fail"), b"priority above 2**32-1 (looped 19,707 times)"),
        (queue, hex32() + b".99999999999999.60", envelope("retry"), b"priority of 14 digits"),
        (queue, hex32() + b".-1.60", envelope("fail"), b"negative priority"),
        (queue, hex32() + b".nan.nan", envelope("retry"), b"NaN priority and ttr"),
        (queue, hex32() + b".5.0", envelope("fail"), b"ttr 0"),
        (queue, hex32() + b".5.9999999999", envelope("fail"), b"ttr above 2**32-1"),
        (queue, hex32() + b".1e400.inf", envelope("fail"), b"1e400 and inf"),
        (queue, b"\xff\xfe\x80 not UTF-8", envelope("nosuch"), b"unique key not UTF-8"),
        (queue, b"", envelope("fail"), b"empty unique key (gearmand makes none)"),
        (queue, b"\\" * 64, envelope("retry"), b"64 backslashes: the longest unique key"),
        (queue, b"x\ny\tz\r.", envelope("nosuch"), b"control characters in the unique key"),
        (queue + DELAYED_SUFFIX, hex32() + b".5.60", envelope("nosuch"), b"a raw job in the delayed function"),
        (queue + DELAYED_SUFFIX, b"", b"\xff\xfe", b"garbage in the delayed function"),
    ]


def submit(client: Connection, function: str, unique: bytes, body: bytes) -> None:
    """SUBMIT_JOB_BG with any function name and unique key (surrogates stand for bytes that are not UTF-8)."""
    name = function.encode("utf-8", "surrogateescape")
    client.request(Command.SUBMIT_JOB_BG, name, unique, body, expect=Command.JOB_CREATED)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    require_module("redis")
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with Server(argv, port):
        yield port


@pytest.fixture(params=["sqlite", "redis"])
def held_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/held.db"
    return f"redis://127.0.0.1:{request.getfixturevalue('redis_port')}/0"


def test_the_hostile_corpus_and_gearman_level_garbage_are_held(
    gearmand: Server, held_store: str, tmp_path: Path
) -> None:
    queue = f"hostile-{uuid.uuid4().hex[:8]}"
    url = f"gearman://127.0.0.1:{gearmand.port}?held_store={quote(held_store, safe='')}&poll_interval=0.2"
    client = Connection(Address("127.0.0.1", gearmand.port))
    extras = gearman_level_hostiles(queue)
    for function, unique, body, _label in extras:
        submit(client, function, unique, body)
    epoch = str(int(time.time())).encode()  # another client's epoch job, due now, straight to the queue
    client.request(Command.SUBMIT_JOB_EPOCH, queue.encode(), b"", epoch, b"[" * 1000, expect=Command.JOB_CREATED)

    def put_raw(body: bytes) -> None:
        submit(client, queue, uuid.uuid4().hex.encode(), body)

    tried, held_count = check_hostile(url, queue, put_raw, tmp_path, extra=len(extras) + 1)
    client.close()
    assert (tried, held_count) == (len(CORPUS) + len(extras) + 1,) * 2
    print(f"\nGearman ({held_store.partition(':')[0]} held store): {tried} hostile inputs tried, {held_count} held")


ODD_FUNCTIONS = [
    "x\nmail-like",  # a fragment line, then a line that parses
    "a\n.\nb",  # a fake end of the listing
    "ends in a newline\n",
    "\nstarts with one",
    "tab\tin\tthe name",
    "cr\rin it",
    "spaces in the name",
    "\udcff\udcfe not UTF-8",
]


def test_functions_named_with_newlines_do_not_break_stats(
    gearmand: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 17: one such job used to break `stats` for every queue until gearmand restarted."""
    queue = f"stats-{uuid.uuid4().hex[:8]}"
    client = Connection(Address("127.0.0.1", gearmand.port))
    for name in ODD_FUNCTIONS:
        submit(client, name, b"", b"{}")
    submit(client, queue, b"", b"{}")
    client.close()
    admin = Admin(Address("127.0.0.1", gearmand.port))
    for _ in range(3):  # and the connection stays in step, command after command
        assert admin.status()[queue].total == 1
        assert admin.priority_status()[queue].normal == 1
        assert admin.version()
    admin.close()
    held = quote(f"sqlite:///{tmp_path}/held.db", safe="")
    url = f"gearman://127.0.0.1:{gearmand.port}?held_store={held}"
    monkeypatch.setenv("LILQUEUE_HOSTILE_QUEUE", queue)  # the app declares the queue named there
    stats = run_cli(url, "stats", queue, "--json", app="tests.apps.hostile_app:app")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)[queue] == {"ready": 1, "delayed": 0, "reserved": 0, "held": 0}


def test_a_function_name_that_forges_a_status_line_is_not_believed(gearmand: Server, tmp_path: Path) -> None:
    """Names that print whole lines for the queue: a prioritystatus line, a status line (both
    heads, so each listing has the queue once), and a tail ('x<LF>queue', real figures of
    another function). stats never shows the forged 900: the figures are left out, approximate."""
    queue = f"forged-{uuid.uuid4().hex[:8]}"
    other = f"plain-{uuid.uuid4().hex[:8]}"
    client = Connection(Address("127.0.0.1", gearmand.port))
    submit(client, queue, b"", b"{}")
    submit(client, other, b"", b"{}")
    for i in range(3):
        submit(client, f"{queue}\t900\t0\t0\t5\ny{i}", b"", b"{}")
        submit(client, f"{queue}\t900\t0\t5\nx{i}", b"", b"{}")
    client.close()
    held = quote(f"sqlite:///{tmp_path}/held.db", safe="")
    adapter = GearmanAdapter.from_config(f"gearman://127.0.0.1:{gearmand.port}?held_store={held}", {})
    stats = adapter.stats(queue)
    assert stats.approximate and stats.ready < 900
    plain = adapter.stats(other)
    assert (plain.ready, plain.approximate) == (1, False)
    adapter.close()
