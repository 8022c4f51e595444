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

from .workers import run_cli, spawn, stop, wait_until

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


#: lilqueue's table as another program might have created it first: state and due may be NULL
NULLABLE_TABLE = """CREATE TABLE lilqueue_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body BLOB NOT NULL,
    priority INTEGER NOT NULL, ttr INTEGER NOT NULL, state INTEGER DEFAULT 0, due REAL,
    deliveries INTEGER NOT NULL DEFAULT 0, reason TEXT, held_at REAL, settled INTEGER NOT NULL DEFAULT 0)"""
FAR_AWAY = 2.0**34 + 1
#: (state, due, what the hold reason must name): rows no take, count or listing would see
UNSEEN: list[tuple[object, object, str]] = [
    (3, READY_AT_ONCE, "state must be 0"),
    (-1, READY_AT_ONCE, "state must be 0"),
    (1.5, READY_AT_ONCE, "state must be 0"),
    ("x", READY_AT_ONCE, "state must be 0"),
    (b"\x01", 5.0, "state must be 0"),
    (None, READY_AT_ONCE, "state must be 0"),
    (2**40, -(2.0**40), "state must be 0"),
    (1, float("-inf"), "would never lapse"),
    (1, -1e300, "would never lapse"),
    (1, -FAR_AWAY, "would never lapse"),
    (1, float("inf"), "never fall due"),
    (1, 1e300, "never fall due"),
    (1, float("nan"), "due must be a number"),  # SQLite stores NaN as NULL
    (1, None, "due must be a number"),
    (0, None, "due must be a number"),
    (0, float("inf"), "never fall due"),
    (0, FAR_AWAY, "never fall due"),
    (0, "soon", "due must be a number"),
]


def unseen_rows(db: sqlite3.Connection) -> int:
    sql = "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, state, due, deliveries) VALUES (?, ?, 1, 30, ?, ?, 1)"
    db.executemany(sql, [(QUEUE, canary(400 + i), state, due) for i, (state, due, _) in enumerate(UNSEEN)])
    return len(UNSEEN)


def test_rows_in_a_state_or_due_lilqueue_never_writes_are_held_by_a_burst_worker(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(NULLABLE_TABLE)
    SQLiteAdapter(str(path)).close()  # lilqueue adopts the table and adds its indexes
    extra = unseen_rows(db)

    def put_raw(body: bytes) -> None:
        db.execute(INSERT, row(body))

    tried, held = check_hostile(f"sqlite:///{path}", QUEUE, put_raw, tmp_path, extra=extra)
    assert tried == held
    assert (tmp_path / "canary.log").read_text().splitlines() == ["canary 1 1"]
    assert db.execute("SELECT COUNT(*) FROM lilqueue_jobs WHERE state IS NOT 2").fetchone() == (0,)
    db.close()
    adapter = SQLiteAdapter(str(path))
    by_body = {h.body: h.reason or "" for h in adapter.held(QUEUE, 10000)}
    adapter.close()
    for i, (state, due, says) in enumerate(UNSEEN):
        assert says in by_body[canary(400 + i)], (state, due, by_body[canary(400 + i)])


def test_stats_and_held_count_unseen_rows_without_a_worker(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(NULLABLE_TABLE)
    adapter = SQLiteAdapter(str(path))
    count = unseen_rows(db)
    assert adapter.stats(QUEUE).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": count}
    assert len(adapter.held(QUEUE, 1000)) == count
    adapter.put(QUEUE, canary(1), priority=1, delay=0, ttr=30)
    job = adapter.reserve([QUEUE], 0)
    assert job is not None and job.body == canary(1)
    adapter.close()
    db.close()


def test_a_busy_drain_never_hands_out_an_unseen_row(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    adapter = SQLiteAdapter(str(path))
    db = sqlite3.connect(path, isolation_level=None)
    for i in range(200):
        adapter.put(QUEUE, canary(i), priority=1, delay=0, ttr=30)
    job = adapter.reserve([QUEUE], 0)  # busy: the next look is TIMED_LOOK away
    odd = "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, state, due) VALUES (?, x'00', 0, 30, -1, -0.5)"
    db.execute(odd, (QUEUE,))  # priority 0: first in the take index
    taken = 0
    while job is not None:
        assert job.body != b"\x00", "a row in state -1 was handed out"
        adapter.delete(job)
        taken += 1
        job = adapter.reserve([QUEUE], 0)
    assert taken == 200
    (held,) = adapter.held(QUEUE)
    assert held.body == b"\x00" and "state must be 0" in (held.reason or "")
    adapter.close()
    db.close()


def test_an_idle_worker_holds_an_unseen_row_and_keeps_running(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    url = f"sqlite:///{path}"
    SQLiteAdapter(str(path)).close()
    log = tmp_path / "canary.log"
    worker = spawn(url, log, app="tests.apps.hostile_app:app", queues=QUEUE)  # the app's default queue
    db = sqlite3.connect(path, isolation_level=None)
    try:
        time.sleep(1.0)  # idle by now, asleep on the WAL file
        lease = "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, state, due) VALUES (?, x'00', 0, 30, 1, ?)"
        db.execute(lease, (QUEUE, float("-inf")))  # a lease that never lapses
        wait_until(lambda: db.execute("SELECT state FROM lilqueue_jobs").fetchone() == (2,), 10, "the row held")
        adapter = SQLiteAdapter(str(path))
        adapter.put(QUEUE, canary(7), priority=1, delay=0, ttr=30)
        wait_until(lambda: log.exists() and log.read_text() == "canary 7 1\n", 10, "the canary to run")
        adapter.close()
    finally:
        db.close()
        code, output = stop(worker)
    assert code == 0 and "Traceback" not in output, output


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
