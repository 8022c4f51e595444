"""Hostile input on SQLite: the shared corpus written straight into lilqueue's table with the
``sqlite3`` module, and rows no lilqueue producer writes (a column of the wrong type, a value
out of range, a count that overflows). Everything is held with a reason, never run with a
guessed value, never lost; the worker never crashes or loops.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from lilqueue.adapters.sqlite import READY_AT_ONCE, SQLiteAdapter
from tests.hostile import check_hostile

from .workers import run_cli

QUEUE = "hostile"
INSERT = "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due, deliveries, settled) VALUES (?, ?, ?, ?, ?, ?, ?)"
MAX_INT64 = 2**63 - 1

#: (column, value) pairs a foreign writer may get wrong, each on a row that would run otherwise
BAD_VALUES: list[tuple[str, object]] = [
    ("priority", "soon"),
    ("priority", 1.5),
    ("priority", -1),
    ("priority", 2**32),
    ("priority", MAX_INT64),
    ("priority", 1e300),
    ("ttr", 0),
    ("ttr", -5),
    ("ttr", 2**32),
    ("ttr", "sixty"),
    ("ttr", 1.5),
    ("ttr", 1e300),
    ("ttr", MAX_INT64),
    ("deliveries", -1000),
    ("deliveries", -1),
    ("deliveries", 2**31),
    ("deliveries", MAX_INT64),  # + 1 overflows to a REAL
    ("deliveries", 2.5),
    ("due", "tomorrow"),
    ("due", b"\x00"),
]


def canary(i: int) -> bytes:
    """A body that would run (and be logged) if the adapter handed it out: proof it did not."""
    return json.dumps({"v": 1, "id": f"{i:032x}", "task": "canary", "data": {"i": i}, "context": {}}).encode()


def row(body: object, **columns: object) -> tuple[object, ...]:
    """A row as a foreign producer following the docs writes it, with ``columns`` replaced."""
    values: dict[str, object] = {"priority": 1024, "ttr": 30, "due": READY_AT_ONCE, "deliveries": 0, "settled": 0}
    values.update(columns)
    return (QUEUE, body, values["priority"], values["ttr"], values["due"], values["deliveries"], values["settled"])


def backend_level_items(db: sqlite3.Connection) -> int:
    """Put every row-level oddity into the queue; how many rows that is."""
    rows = [row(canary(100 + i), **{column: value}) for i, (column, value) in enumerate(BAD_VALUES)]
    rows += [
        row(42),  # bodies of every other type: read as bytes, then refused by the wire decoder
        row(1.5),
        row("text, not JSON"),
        row(canary(200), deliveries=10**6),  # a million runs that never finished: held by the runner
        row(b"\x00 garbage", settled="x", deliveries=3),  # an outcome count that is not one
        row(b"\x00 garbage", due=0),  # a ready row as lilqueue 0.x wrote it
        row(b"\x00 garbage", due=time.time() - 5),  # a ready row as an epoch time in the past
    ]
    db.executemany(INSERT, rows)
    db.execute(
        "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due) VALUES (?, CAST(x'c328ff' AS TEXT), 1, 30, -0.5)",
        (QUEUE,),
    )  # text that is not UTF-8: sqlite3 could not even read it as str
    db.execute(
        "INSERT INTO lilqueue_jobs (id, queue, body, priority, ttr, due) VALUES (-5, ?, x'00', 1, 30, -0.5)", (QUEUE,)
    )  # a negative id
    db.execute(
        "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due, state, reason, held_at) "
        "VALUES (?, x'00', 1, 30, 0, 2, CAST(x'6f6f707320ff' AS TEXT), 'yesterday')",
        (QUEUE,),
    )  # already held, with a reason that is not UTF-8 and a time that is not one
    return len(rows) + 3


def refused_rows(db: sqlite3.Connection) -> None:
    """What the table's constraints refuse outright (so nothing can be lost to them)."""
    for body, priority in ((None, 1), (b"x", float("nan")), (b"x", None)):  # SQLite stores NaN as NULL
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(INSERT, row(body, priority=priority))


def other_queues(db: sqlite3.Connection) -> int:
    """Rows in queues named oddly: no worker of QUEUE may take them, and they must stay."""
    odd: list[object] = [QUEUE.encode(), QUEUE + "\n", QUEUE.upper(), " " + QUEUE, 5]
    db.executemany(INSERT, [(q, canary(300), 1, 30, READY_AT_ONCE, 0, 0) for q in odd])
    return len(odd)


def test_the_hostile_corpus_and_row_level_items_are_held(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteAdapter(str(path)).close()  # the table, as lilqueue makes it
    db = sqlite3.connect(path, isolation_level=None)
    refused_rows(db)
    extra = backend_level_items(db)
    strangers = other_queues(db)

    def put_raw(body: bytes) -> None:
        db.execute(INSERT, row(body))

    tried, held = check_hostile(f"sqlite:///{path}", QUEUE, put_raw, tmp_path, extra=extra)
    assert tried == held
    assert (tmp_path / "canary.log").read_text().splitlines() == ["canary 1 1"]  # nothing hostile ran
    untouched = db.execute("SELECT COUNT(*) FROM lilqueue_jobs WHERE queue IS NOT ? AND deliveries = 0", (QUEUE,))
    assert untouched.fetchone()[0] == strangers
    db.close()
    print(f"sqlite hostile: {tried} tried, {held} held")


def test_each_bad_value_is_named_in_the_reason(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    adapter.db.executemany(INSERT, [row(canary(i), **{c: v}) for i, (c, v) in enumerate(BAD_VALUES)])
    assert adapter.reserve([QUEUE], 0) is None  # every one held on the way, none handed out
    held = sorted(adapter.held(QUEUE, 1000), key=lambda h: int(h.id))  # in the order they were put
    for (column, value), h in zip(BAD_VALUES, held, strict=True):
        assert h.reason is not None and h.reason.startswith("rejected: the SQLite row's"), h
        assert (column if column != "deliveries" else "delivery count") in h.reason, (column, value, h.reason)
    assert adapter.stats(QUEUE).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": len(BAD_VALUES)}
    adapter.close()


def test_a_kicked_row_with_a_bad_value_is_held_again_not_run(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    adapter.db.execute(INSERT, row(canary(1), priority="soon"))
    assert adapter.reserve([QUEUE], 0) is None
    assert adapter.kick(QUEUE, 10) == 1
    assert adapter.reserve([QUEUE], 0) is None
    (held,) = adapter.held(QUEUE)
    assert "priority" in (held.reason or "")
    adapter.close()


def test_operating_commands_survive_the_odd_rows(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteAdapter(str(path)).close()
    db = sqlite3.connect(path, isolation_level=None)
    backend_level_items(db)
    db.close()
    url = f"sqlite:///{path}"
    app = "tests.apps.hostile_app:app"
    worker = run_cli(url, "watch", QUEUE, "--burst", app=app)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    for args in (("stats", "--json"), ("held", QUEUE), ("held", QUEUE, "--json"), ("kick", QUEUE, "--id", "-5")):
        done = run_cli(url, *args, app=app)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stdout, done.stderr)
    for verb in ("kick", "delete"):
        done = run_cli(url, verb, QUEUE, "--id", str(2**70), app=app)
        assert "Traceback" not in done.stderr and done.returncode != 0, (verb, done.stderr)


@pytest.mark.parametrize(
    ("url", "says", "code"),
    [
        ("sqlite:////etc/passwd/q.db", "queue.sqlite.path", 2),  # a configuration error
        ("sqlite:////proc/nope/q.db", "cannot create the directory", 1),  # a backend that cannot be reached
        ("sqlite:///q.db?busy_timeout=nan", "queue.sqlite.busy_timeout", 2),
    ],
)
def test_a_bad_sqlite_url_is_a_one_line_error_not_a_traceback(url: str, says: str, code: int) -> None:
    for args in (("stats", "jobs"), ("send", "jobs:echo:x")):
        done = run_cli(url, *args)
        assert done.returncode == code and says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
