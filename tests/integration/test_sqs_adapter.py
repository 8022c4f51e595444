"""The SQS adapter in-process, on moto's standalone server: what the conformance suite
does not reach (configuration, errors, bands across queues, long delays, give-back)."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from lilqueue.adapters import create_adapter, sqs_poller
from lilqueue.adapters import sqs as sqs_module
from lilqueue.adapters.sqs import BANDS, SQSAdapter, band_of
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError, BackendTimeoutError, ConfigError
from lilqueue.testing import fresh_name, reserve_until
from tests.integration.workers import run_cli
from tests.servers import free_port


@pytest.fixture
def url(endpoint: str) -> str:
    return f"sqs://us-east-1?endpoint_url={endpoint}&wait=2"


@pytest.fixture
def adapter(url: str) -> Iterator[SQSAdapter]:
    made = SQSAdapter.from_config(url, {})
    yield made
    made.close()


def put(adapter: SQSAdapter, queue: str, body: bytes = b"{}", *, priority: int = 1024, delay: float = 0) -> str:
    return adapter.put(queue, body, priority=priority, delay=delay, ttr=60)


# -- configuration -------------------------------------------------------------------------


def test_url_and_named_config(endpoint: str, tmp_path: Path) -> None:
    made = SQSAdapter.from_config(f"amazonsqs://eu-west-1?endpoint_url={endpoint}&wait=7", {})
    assert (made.client.meta.region_name, made.wait) == ("eu-west-1", 7)
    config = tmp_path / "lilqueue.toml"
    config.write_text(
        f'[queue]\nbackend = "amazonsqs"\n[queue.amazonsqs]\nregion = "eu-central-1"\nwait = 3\n'
        f'endpoint_url = "{endpoint}"\nttr = 30\n[queue.amazonsqs.attributes]\nMessageRetentionPeriod = 86400\n'
    )
    settings = load_settings(config, env={})
    named = create_adapter(settings)
    assert isinstance(named, SQSAdapter) and settings.ttr == 30
    assert (named.client.meta.region_name, named.wait, named.attributes) == (
        "eu-central-1", 3, {"MessageRetentionPeriod": "86400"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("sqs://us-east-1?bogus=1", {}, "queue.amazonsqs.bogus"),
        (None, {"region": "us-east-1", "servers": []}, "queue.amazonsqs.servers"),
        ("sqs://us-east-1?wait=30", {}, "queue.amazonsqs.wait"),
        (None, {"wait": "soon"}, "queue.amazonsqs.wait"),
        (None, {"attributes": ["x"]}, "queue.amazonsqs.attributes"),
        (None, {"connect_timeout": 0}, "queue.amazonsqs.connect_timeout"),
        ("sqs://us-east-1?connect_timeout=nan", {}, "queue.amazonsqs.connect_timeout"),
        ("sqs://us-east-1?connect_timeout=inf", {}, "queue.amazonsqs.connect_timeout"),
        ("sqs://us-east-1?connect_timeout=-1", {}, "queue.amazonsqs.connect_timeout"),
        (None, {"connect_timeout": True}, "queue.amazonsqs.connect_timeout"),
        ("sqs://us-east-1?io_timeout=nan", {}, "queue.amazonsqs.io_timeout"),
        ("sqs://us-east-1?io_timeout=0", {}, "queue.amazonsqs.io_timeout"),
        ("sqs://us-east-1?io_timeout=", {}, "queue.amazonsqs.io_timeout"),
        (None, {"io_timeout": "soon"}, "queue.amazonsqs.io_timeout"),
        (None, {"io_timeout": float("inf")}, "queue.amazonsqs.io_timeout"),
        ("sqs://us-east-1?wait=nan", {}, "queue.amazonsqs.wait"),
        ("sqs://us-east-1?wait=inf", {}, "queue.amazonsqs.wait"),
        ("sqs://us-east-1?wait=2.5", {}, "queue.amazonsqs.wait"),
        ("sqs://us-east-1?wait=0", {}, "queue.amazonsqs.wait"),
        ("sqs://us-east-1?wait=1e400", {}, "queue.amazonsqs.wait"),
        ("sqs://us%20east", {}, "queue.amazonsqs.region"),
        (None, {"region": "eu-west-1\n"}, "queue.amazonsqs.region"),
        (None, {"region": 5}, "queue.amazonsqs.region"),
        ("sqs://us-east-1?endpoint_url=localhost:4566", {}, "queue.amazonsqs.endpoint_url"),
        ("sqs://us-east-1?endpoint_url=http://[::1", {}, "queue.amazonsqs.endpoint_url"),
        (None, {"endpoint_url": 4566}, "queue.amazonsqs.endpoint_url"),
        ("sqs://us-east-1/a/path", {}, "queue.backend"),
    ],
)
def test_bad_config_names_the_key(url: str | None, options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SQSAdapter.from_config(url, options)


def test_timeouts_default_to_the_shared_bounds_and_are_configurable(endpoint: str) -> None:
    made = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url={endpoint}", {})
    config = made.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3.0, 5.0)
    assert made.receiver.meta.config.read_timeout == 5.0 + made.wait  # a long poll waits its own time on top
    tuned = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url={endpoint}&connect_timeout=1.5&io_timeout=2", {})
    assert (tuned.client.meta.config.connect_timeout, tuned.client.meta.config.read_timeout) == (1.5, 2.0)
    made.close()
    tuned.close()


def test_a_silent_endpoint_times_out_within_the_io_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        made = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url=http://127.0.0.1:{port}&io_timeout=0.5", {})
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            made.put("q", b"{}", priority=1024, delay=0, ttr=60)
        took = time.monotonic() - started
        made.close()
    assert 0.5 <= took < 0.5 * sqs_module.ATTEMPTS + 1.5, took


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("mail", None),
        ("Mail_box-2", None),
        ("a" * 72, None),  # with "__urgent", SQS's 80
        ("a" * 73, "at most 72"),
        ("mail.fifo", "letters, digits"),
        ("mail box", "letters, digits"),
        ("caf\u00e9", "letters, digits"),
        ("mail\n", "control"),
        ("", "non-empty"),
        ("mail__held", "__held"),
        ("mail__urgent", "__urgent"),
        ("mail__low", "__low"),
    ],
)
def test_queue_names_follow_sqs_rules(name: str, refused: str | None) -> None:
    problem = SQSAdapter.queue_name_problem(name)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


def test_an_unreachable_endpoint_fails_fast_as_a_connection_error() -> None:
    made = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url=http://127.0.0.1:{free_port()}", {"wait": 1})
    started = time.monotonic()
    with pytest.raises(BackendConnectionError) as raised:
        made.put("q", b"{}", priority=1024, delay=0, ttr=60)
    assert time.monotonic() - started < 15
    assert raised.value.__cause__ is not None  # chained from botocore's error
    with pytest.raises(BackendConnectionError):
        made.reserve(["q"], 0)
    made.close()


# -- queues ---------------------------------------------------------------------------------


def test_queues_are_made_on_first_use_and_their_urls_cached(adapter: SQSAdapter, endpoint: str) -> None:
    calls: list[str] = []
    create = adapter.client.create_queue
    adapter.client.create_queue = lambda **kw: calls.append(kw["QueueName"]) or create(**kw)  # type: ignore[method-assign]
    name = fresh_name()
    put(adapter, name)
    put(adapter, name)
    put(adapter, name, priority=0)
    assert calls == [name, name + "__urgent"]
    attributes = boto3.client("sqs", endpoint_url=endpoint).get_queue_attributes(
        QueueUrl=adapter._url(name), AttributeNames=["MessageRetentionPeriod"]
    )["Attributes"]
    assert attributes["MessageRetentionPeriod"] == str(sqs_module.RETENTION)


def test_an_existing_queue_with_other_attributes_is_used(url: str, endpoint: str) -> None:
    name = fresh_name()
    boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName=name, Attributes={"VisibilityTimeout": "99"})
    made = SQSAdapter.from_config(url, {"attributes": {"VisibilityTimeout": 10}})
    try:
        task_id = put(made, name)
        job = reserve_until(made, [name])
        assert job.id == task_id
        made.delete(job)
    finally:
        made.close()


# -- reserving -------------------------------------------------------------------------------


def test_bands_cover_every_priority_once() -> None:
    assert BANDS[0].low == 0 and BANDS[-1].high == 2**32 - 1
    assert all(a.high + 1 == b.low for a, b in itertools.pairwise(BANDS))
    assert band_of(1024).suffix == ""  # the default priority uses the queue's own name
    assert [band_of(p).name for p in (0, 99, 100, 511, 512, 1024, 1025, 65_536)] == [
        "urgent", "urgent", "high", "high", "normal", "normal", "low", "bulk",
    ]  # fmt: skip


def test_the_most_urgent_band_wins_across_queues(adapter: SQSAdapter) -> None:
    first, second = fresh_name(), fresh_name()
    put(adapter, first, b'"normal on the first"', priority=1024)
    put(adapter, second, b'"urgent on the second"', priority=5)
    put(adapter, first, b'"low on the first"', priority=5000)
    order = []
    for _ in range(3):
        job = reserve_until(adapter, [first, second])
        order.append((job.queue, job.body, job.priority))
        adapter.delete(job)
    assert order == [
        (second, b'"urgent on the second"', 5),
        (first, b'"normal on the first"', 1024),
        (first, b'"low on the first"', 5000),
    ]


def test_a_message_fetched_while_busy_is_given_back_uncounted(
    adapter: SQSAdapter, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqs_poller, "KEEP", 0.5)
    busy, other_queue = fresh_name(), fresh_name()
    put(adapter, busy)
    put(adapter, other_queue)
    job = reserve_until(adapter, [busy, other_queue])  # the quick looks fetch both; one is kept
    time.sleep(1.5)  # "running" longer than KEEP: the kept one goes back
    other = SQSAdapter.from_config(url, {})
    try:
        second = reserve_until(other, [busy, other_queue])
        assert second.queue != job.queue
        assert second.deliveries == 1  # not 2: this worker never ran it
    finally:
        other.close()


def test_a_delay_longer_than_sqs_allows_hops_until_due(adapter: SQSAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs_module, "MAX_DELAY", 1)  # SQS's 900 s, shrunk to keep the test short
    name = fresh_name()
    started = time.monotonic()
    task_id = put(adapter, name, delay=3.2)
    assert adapter.reserve([name], 2.0) is None  # surfaced at 1 s and 2 s, re-delayed each time
    job = reserve_until(adapter, [name])
    assert time.monotonic() - started >= 2.7
    assert (job.id, job.deliveries) == (task_id, 1)
    adapter.delete(job)


def test_delete_by_id(adapter: SQSAdapter) -> None:
    name = fresh_name()
    ready = put(adapter, name)
    assert not adapter.delete_id(name, ready)  # declared: SQS cannot remove a ready message unseen
    later = put(adapter, name, delay=2)
    assert adapter.delete_id(name, later) and not adapter.delete_id(name, later)
    job = reserve_until(adapter, [name])
    assert job.id == ready
    adapter.bury(job, reason="parked")
    assert adapter.reserve([name], 3.0) is None  # the deleted delayed task never surfaces
    assert adapter._tags(name) == {}  # its tombstone is gone with it
    assert adapter.delete_id(name, ready) and adapter.held(name) == []


def test_stats_are_approximate_in_the_cli(adapter: SQSAdapter, url: str) -> None:
    put(adapter, "sqs-one")
    put(adapter, "sqs-one", delay=60)
    stats = adapter.stats("sqs-one")
    assert stats.approximate and (stats.ready, stats.delayed, stats.held) == (1, 1, 0)
    result = run_cli(url, "stats", "sqs-one", app="tests.apps.sqs_app:app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "~1" in result.stdout and "approximate" in result.stdout


def test_a_queue_deleted_behind_our_back_is_made_again(adapter: SQSAdapter, url: str, endpoint: str) -> None:
    name = fresh_name()
    put(adapter, name)
    adapter.delete(reserve_until(adapter, [name]))
    boto3.client("sqs", endpoint_url=endpoint).delete_queue(QueueUrl=adapter._url(name))
    with pytest.raises(BackendConnectionError, match="deleted"):  # the runner reconnects on this
        adapter.reserve([name], 0)
    task_id = put(adapter, name)  # the producer makes it again
    fresh = SQSAdapter.from_config(url, {})
    try:
        assert reserve_until(fresh, [name]).id == task_id
    finally:
        fresh.close()


def test_a_reason_sqs_cannot_carry_is_held_all_the_same(adapter: SQSAdapter) -> None:
    # AWS refuses characters outside XML's set in bodies and attributes (moto takes them):
    # a refused hold would leave the task to come back after its ttr, again and again.
    name = fresh_name()
    put(adapter, name, b"\x00\xff binary body")
    job = reserve_until(adapter, [name])
    adapter.bury(job, reason="ValueError: bad \x00 byte \x1b[31m in the message")
    (held,) = adapter.held(name)
    assert held.body == b"\x00\xff binary body"
    assert held.reason == "ValueError: bad \ufffd byte \ufffd[31m in the message"
