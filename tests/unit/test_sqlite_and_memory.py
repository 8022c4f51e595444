"""The embedded adapters at their edges: a file written by lilqueue 0.x, configuration
mistakes, ids and counts past 64 bits, text SQLite cannot store as given, attempt
accounting (``unfinished``, ``unreserve``) and names JSON must quote."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilqueue.adapters.base import Adapter
from lilqueue.adapters.memory import MemoryAdapter, broker
from lilqueue.adapters.sqlite import SQLiteAdapter
from lilqueue.errors import BackendConnectionError, BackendError, BackendTimeoutError, ConfigError

#: the table and indexes as lilqueue 0.x made them (before issue 11)
OLD_SCHEMA = """
CREATE TABLE lilqueue_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body BLOB NOT NULL,
    priority INTEGER NOT NULL, ttr INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL, deliveries INTEGER NOT NULL DEFAULT 0, reason TEXT, held_at REAL
);
CREATE INDEX lilqueue_jobs_take ON lilqueue_jobs (queue, priority, id) WHERE state < 2;
CREATE INDEX lilqueue_jobs_delayed ON lilqueue_jobs (queue, due) WHERE state = 0 AND due > 0;
CREATE INDEX lilqueue_jobs_held ON lilqueue_jobs (queue, held_at, id) WHERE state = 2;
"""


@pytest.fixture(params=["sqlite", "memory"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    if request.param == "sqlite":
        made: Adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    else:
        broker("edges").reset()
        made = MemoryAdapter("edges")
    yield made
    made.close()


def old_file(path: Path) -> None:
    """A 0.x file: rows ready at once (due -0.5, and 0 as the first 0.x wrote), delayed,
    reserved under a live lease and under a lapsed one, and held."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_SCHEMA)
    now = time.time()
    rows = [
        (b"ready", 5, 0, -0.5, 0, None),
        (b"ready, 0.1", 4, 0, 0, 0, None),
        (b"delayed", 1, 0, now + 3600, 0, None),
        (b"running", 1, 1, now + 3600, 1, None),
        (b"lapsed", 3, 1, now - 1, 1, None),
        (b"held", 1, 2, 0, 1, "kept"),
    ]
    sql = "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, state, due, deliveries, reason) "
    db.executemany(sql + "VALUES ('q', ?, ?, 60, ?, ?, ?, ?)", rows)
    db.close()


def test_a_file_of_an_earlier_version_is_upgraded_once_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    adapter = SQLiteAdapter(str(path))
    indexes = {r[0] for r in adapter.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"lilqueue_jobs_ready", "lilqueue_jobs_timed", "lilqueue_jobs_held"} <= indexes
    assert not {"lilqueue_jobs_take", "lilqueue_jobs_delayed"} & indexes
    assert adapter.stats("q").as_dict() == {"ready": 3, "delayed": 1, "reserved": 1, "held": 1}
    taken = []
    while (job := adapter.reserve(["q"], 0)) is not None:
        taken.append((job.body, job.deliveries, job.unfinished))
        adapter.delete(job)
    assert taken == [(b"lapsed", 2, 1), (b"ready, 0.1", 1, 0), (b"ready", 1, 0)]  # in priority order
    adapter.close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer busy elsewhere: opening an up-to-date file needs no lock
    SQLiteAdapter(str(path), busy_timeout=0.1).close()
    other.execute("ROLLBACK")
    other.close()


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("sqlite:////etc/passwd/q.db", ConfigError, "queue.sqlite.path"),
        ("sqlite:////proc/nope/q.db", BackendConnectionError, "/proc/nope/q.db"),
        ("sqlite:///q%00.db", ConfigError, "queue.sqlite.path"),
        ("sqlite:///q.db?busy_timeout=nan", ConfigError, "queue.sqlite.busy_timeout"),
        ("sqlite:///q.db?busy_timeout=inf", ConfigError, "queue.sqlite.busy_timeout"),
        ("sqlite:///q.db?poll_interval=0", ConfigError, "queue.sqlite.poll_interval"),
        ("sqlite:///q.db?poll_interval=-1", ConfigError, "queue.sqlite.poll_interval"),
        ("sqlite:///q.db?busy_timeout=soon", ConfigError, "queue.sqlite.busy_timeout"),
        ("sqlite:///q.db?table=1jobs", ConfigError, "queue.sqlite.table"),
        ("sqlite:///q.db?table=j%C3%B6bs", ConfigError, "queue.sqlite.table"),
        ("sqlite:///q.db?timeout=3", ConfigError, "queue.sqlite.timeout"),
        ("sqlite:///q.db?io_timeout=nan", ConfigError, "queue.sqlite.io_timeout"),
        ("sqlite:///q.db?io_timeout=", ConfigError, "queue.sqlite.io_timeout"),
        ("sqlite:///q.db?connect_timeout=0", ConfigError, "queue.sqlite.connect_timeout"),
        ("sqlite:///q.db?connect_timeout=-inf", ConfigError, "queue.sqlite.connect_timeout"),
    ],
)
def test_bad_paths_and_options_are_lilqueue_errors_naming_the_key(
    url: str, error: type[Exception], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a relative path would land if it were accepted
    with pytest.raises(error, match=says.replace(".", r"\.")):
        SQLiteAdapter.from_config(url, {})


def test_a_busy_timeout_of_true_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="busy_timeout"):
        SQLiteAdapter.from_config(None, {"path": str(tmp_path / "q.db"), "busy_timeout": True})


def hold_one(adapter: Adapter, reason: str) -> str:
    adapter.put("q", b"{}", priority=1, delay=0, ttr=60)
    job = adapter.reserve(["q"], 0)
    assert job is not None
    adapter.bury(job, reason=reason)
    return job.id


@pytest.mark.parametrize("id", [str(2**63), str(2**70), "-" + str(2**70), "\u0663", "5_0", " 1", "+1", "1.0", ""])
def test_ids_that_name_no_row_are_not_found(adapter: Adapter, id: str) -> None:
    hold_one(adapter, "kept")
    assert adapter.kick_id("q", id) is False
    assert adapter.delete_id("q", id) is False
    assert adapter.stats("q").held == 1


def test_counts_and_limits_past_64_bits_or_below_0(adapter: Adapter) -> None:
    for _ in range(3):
        hold_one(adapter, "kept")
    assert adapter.held("q", -1) == [] and adapter.kick("q", -1) == 0  # SQLite's LIMIT -1 would be "all"
    assert len(adapter.held("q", 2**70)) == 3
    assert adapter.kick("q", 2**70) == 3


def test_a_reason_with_lone_surrogates_is_stored_escaped(adapter: Adapter) -> None:
    hold_one(adapter, "boom \udc80 \ud83d")
    (held,) = adapter.held("q")
    assert held.reason is not None and held.reason.startswith("boom ")
    held.reason.encode("utf-8")  # storable and printable as it is


def test_unreserve_gives_back_a_delivery_and_leaves_unfinished_runs_counted(adapter: Adapter) -> None:
    adapter.put("q", b"{}", priority=1, delay=0, ttr=1)
    assert adapter.reserve(["q"], 0) is not None  # a worker that dies with it
    time.sleep(1.1)
    second = adapter.reserve(["q"], 0)
    assert second is not None and (second.deliveries, second.unfinished) == (2, 1)
    adapter.unreserve(second)
    third = adapter.reserve(["q"], 0)
    assert third is not None and (third.id, third.deliveries, third.unfinished) == (second.id, 2, 1)


@pytest.mark.parametrize("names", [['a"b', "c\\d"], ["é", "🙂", "x y"], ["dup", "dup"], [f"q{i}" for i in range(700)]])
def test_several_queues_with_names_json_must_quote(adapter: Adapter, names: list[str]) -> None:
    for i, name in enumerate(names):
        adapter.put(name, name.encode(), priority=len(names) - i, delay=0, ttr=60)
    taken = []
    while (job := adapter.reserve(names, 0)) is not None:
        taken.append(job.queue)
        adapter.delete(job)
    assert taken == list(reversed(names)) if len(set(names)) == len(names) else taken == names


def test_a_name_sqlite_cannot_bind_is_a_backend_error(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    with pytest.raises(BackendError, match="not valid Unicode"):
        adapter.reserve(["bad\udc80"], 0)
    with pytest.raises(BackendError, match="not valid Unicode"):
        adapter.stats("bad\udc80")
    adapter.close()


def test_text_another_client_stored_is_read_leniently(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(str(tmp_path / "q.db"))
    adapter.db.execute(
        "INSERT INTO lilqueue_jobs (queue, body, priority, ttr, due, state, reason, held_at) "
        "VALUES ('q', CAST(x'c328ff' AS TEXT), 1, 60, 0, 2, CAST(x'6f6f707320ff' AS TEXT), 'yesterday')"
    )
    (held,) = adapter.held("q")
    assert (held.body, held.reason, held.held_at) == (b"\xc3(\xff", "oops \\xff", None)
    peeked = adapter.peek("q", "held")
    assert peeked is not None and peeked.body == b"\xc3(\xff"
    adapter.close()


def test_a_producer_on_a_locked_file_gives_up_after_io_timeout(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    producer = SQLiteAdapter(str(path))  # the defaults: io_timeout 5 s
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a bulk import, say)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="write lock for more than 5s"):
        producer.put("q", b"{}", priority=1, delay=0, ttr=60)
    assert 4.5 < time.monotonic() - started < 7
    other.execute("ROLLBACK")
    producer.put("q", b"{}", priority=1, delay=0, ttr=60)  # and works once the lock is gone
    producer.close()
    other.close()


def test_opening_a_file_that_must_be_upgraded_waits_connect_timeout_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="cannot open SQLite queue"):
        SQLiteAdapter.from_config(f"sqlite:///{path}?connect_timeout=0.3&io_timeout=60", {})
    assert time.monotonic() - started < 2
    other.execute("ROLLBACK")
    other.close()
    SQLiteAdapter(str(path)).close()
