"""Hostile input on SQS (issue 11, items 1, 2 and 4): the shared corpus sent with boto3,
and ``lilqueue-*`` message attributes any SQS client can set. Every item is held with a
reason naming what is wrong, never run with a guessed value; the worker never crashes.

SQS carries text only, and AWS refuses a body with characters outside XML's (NUL, most
control characters; invalid UTF-8 cannot even be a boto3 ``str``). A corpus body AWS
would refuse is sent the way lilqueue sends such bodies, base64 with the attribute
``lilqueue-encoding = base64``, so it reaches the worker too (moto takes some of them
raw, and a lone surrogate body it takes makes every later receive of the queue fail
with a 500: a moto bug that AWS, refusing the send, does not have).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from lilqueue.adapters.sqs import SQSAdapter
from lilqueue.testing import fresh_name
from tests.hostile import check_hostile
from tests.integration.workers import run_cli

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

Attributes = dict[str, "MessageAttributeValueTypeDef"]
CANARY = json.dumps({"v": 1, "task": "canary", "data": {"i": 99}})
#: characters AWS takes in a body or a String attribute
_XML_TEXT = set(range(0x20, 0xD800)) | {0x9, 0xA, 0xD} | set(range(0xE000, 0xFFFE)) | set(range(0x10000, 0x110000))


def text(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


#: (label, attributes, body): a canary envelope with one attribute no lilqueue producer writes
HOSTILE_ATTRIBUTES: list[tuple[str, Attributes, str]] = [
    ("priority nan", {"lilqueue-priority": text("nan")}, CANARY),
    ("priority inf", {"lilqueue-priority": text("inf")}, CANARY),
    ("priority -inf", {"lilqueue-priority": text("-inf")}, CANARY),
    ("priority 2**64", {"lilqueue-priority": text(str(2**64))}, CANARY),
    ("priority 1e400", {"lilqueue-priority": text("1e400")}, CANARY),
    ("priority negative", {"lilqueue-priority": text("-1")}, CANARY),
    ("priority text", {"lilqueue-priority": text("urgent")}, CANARY),
    ("priority 1.5", {"lilqueue-priority": text("1.5")}, CANARY),
    ("priority Binary", {"lilqueue-priority": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}, CANARY),
    ("priority Number nan", {"lilqueue-priority": {"DataType": "Number", "StringValue": "nan"}}, CANARY),
    ("ttr 1e400", {"lilqueue-ttr": text("1e400")}, CANARY),
    ("ttr 0", {"lilqueue-ttr": text("0")}, CANARY),
    ("ttr negative", {"lilqueue-ttr": text("-60")}, CANARY),
    ("ttr nan", {"lilqueue-ttr": text("nan")}, CANARY),
    ("ttr 2**32", {"lilqueue-ttr": text(str(2**32))}, CANARY),
    ("due inf", {"lilqueue-due": text("inf")}, CANARY),
    ("due nan", {"lilqueue-due": text("nan")}, CANARY),
    ("due -inf", {"lilqueue-due": text("-inf")}, CANARY),
    ("due 1e300", {"lilqueue-due": text("1e300")}, CANARY),
    ("due text", {"lilqueue-due": text("tomorrow")}, CANARY),
    ("base64 on a body that is not", {"lilqueue-encoding": text("base64")}, CANARY),
    ("base64 on a body of the wrong length", {"lilqueue-encoding": text("base64")}, "eyJ2Ijo"),
    ("an unknown encoding", {"lilqueue-encoding": text("gzip")}, CANARY),
    ("deliveries -1000", {"lilqueue-deliveries": text("-1000")}, CANARY),
    ("deliveries 10**30", {"lilqueue-deliveries": text(str(10**30))}, CANARY),
    ("deliveries garbage", {"lilqueue-deliveries": text("many")}, CANARY),
    ("deliveries inf", {"lilqueue-deliveries": text("inf")}, CANARY),
    ("unfinished -1", {"lilqueue-unfinished": text("-1")}, CANARY),
    ("unfinished nan", {"lilqueue-unfinished": text("nan")}, CANARY),
    ("id with a newline", {"lilqueue-id": text("forged\nline")}, CANARY),
    ("id of 10,000 characters", {"lilqueue-id": text("x" * 10_000)}, CANARY),
    ("id Binary", {"lilqueue-id": {"DataType": "Binary", "BinaryValue": b"id"}}, CANARY),
]


@pytest.fixture
def client(endpoint: str) -> SQSClient:
    return boto3.client("sqs", endpoint_url=endpoint)


def as_sent(body: bytes) -> tuple[str, Attributes]:
    """The body as text AWS takes: as it is, or base64 with ``lilqueue-encoding``."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and all(ord(c) in _XML_TEXT for c in decoded):
        return decoded, {}
    return base64.b64encode(body).decode("ascii"), {"lilqueue-encoding": text("base64")}


def test_the_corpus_and_hostile_attributes_are_held_and_the_worker_lives(
    endpoint: str, client: SQSClient, tmp_path: Path
) -> None:
    queue = fresh_name("hostile")
    url = f"sqs://us-east-1?endpoint_url={endpoint}&wait=1"
    queue_url = client.create_queue(QueueName=queue)["QueueUrl"]
    encoded = 0
    for _label, attributes, body in HOSTILE_ATTRIBUTES:
        client.send_message(QueueUrl=queue_url, MessageBody=body, MessageAttributes=attributes)

    def put_raw(body: bytes) -> None:
        nonlocal encoded
        sent, attributes = as_sent(body)
        encoded += bool(attributes)
        client.send_message(QueueUrl=queue_url, MessageBody=sent, MessageAttributes=attributes)

    tried, held = check_hostile(url, queue, put_raw, tmp_path, extra=len(HOSTILE_ATTRIBUTES))
    assert tried == held
    print(f"sqs hostile: {tried} tried, {held} held ({encoded} corpus bodies sent base64; 0 refused by SQS)")


def test_a_bad_attribute_is_named_and_a_kick_runs_the_task_with_defaults(endpoint: str, client: SQSClient) -> None:
    queues = {fresh_name(): hostile for hostile in HOSTILE_ATTRIBUTES}  # one queue each, watched at once
    adapter = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url={endpoint}&wait=1", {})
    try:
        for queue, (_label, attributes, body) in queues.items():
            client.send_message(QueueUrl=adapter._url(queue), MessageBody=body, MessageAttributes=attributes)
        assert adapter.reserve(list(queues), 0) is None  # each held at once, never handed to a worker
        for queue, (label, attributes, body) in queues.items():
            (held,) = adapter.held(queue)
            (name,) = attributes
            assert held.reason is not None and name in held.reason and "Held without running" in held.reason, label
            assert held.body == body.encode(), label  # as it came, even where it claimed to be base64
            assert adapter.kick(queue, 1) == 1
        while (job := adapter.reserve(list(queues), 0)) is not None:
            label, _, body = queues.pop(job.queue)
            assert (job.priority, job.ttr, job.deliveries, job.unfinished) == (1024, 60, 1, 0), label
            assert job.body == body.encode(), label
            adapter.delete(job)
        assert queues == {}
    finally:
        adapter.close()


def test_good_attributes_from_other_clients_are_used(endpoint: str, client: SQSClient) -> None:
    queue = fresh_name()
    adapter = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url={endpoint}&wait=1", {})
    try:
        attributes: Attributes = {
            "lilqueue-priority": {"DataType": "Number", "StringValue": "700"},
            "lilqueue-ttr": text("30.0"),
            "lilqueue-deliveries": text("2"),
            "lilqueue-reason": {"DataType": "Binary", "BinaryValue": b"not read outside the held queue"},
            "other-client-attribute": {"DataType": "Binary", "BinaryValue": b"\x00"},
        }
        client.send_message(QueueUrl=adapter._url(queue), MessageBody=CANARY, MessageAttributes=attributes)
        job = adapter.reserve([queue], 0)
        assert job is not None and (job.priority, job.ttr, job.deliveries) == (700, 30, 3)
        adapter.delete(job)
    finally:
        adapter.close()


def test_a_reason_with_lone_surrogates_is_stored_escaped(endpoint: str) -> None:
    queue = fresh_name()
    adapter = SQSAdapter.from_config(f"sqs://us-east-1?endpoint_url={endpoint}&wait=1", {})
    try:
        adapter.put(queue, CANARY.encode(), priority=1024, delay=0, ttr=60)
        job = adapter.reserve([queue], 0)
        assert job is not None
        adapter.bury(job, reason="UnicodeError: '\udc80' and '\ud83d' in x" + "!" * 100_000)
        (held,) = adapter.held(queue)
        assert held.reason is not None and held.reason.startswith("UnicodeError: '\\udc80' and '\\ud83d' in x!!!")
        assert len(held.reason) <= 8192
    finally:
        adapter.close()


def test_hostile_messages_in_the_held_queue_are_listed_and_kicked(endpoint: str, client: SQSClient) -> None:
    queue = fresh_name()
    backend = f"sqs://us-east-1?endpoint_url={endpoint}&wait=1"
    held_url = client.create_queue(QueueName=queue + "__held")["QueueUrl"]
    odd: list[Attributes] = [
        {"lilqueue-held-at": text("inf"), "lilqueue-encoding": text("base64")},
        {"lilqueue-held-at": text("nan"), "lilqueue-priority": text("nan")},
        {"lilqueue-reason": {"DataType": "Binary", "BinaryValue": b"\xff"}, "lilqueue-held-at": text("-1e400")},
        {},
    ]
    for attributes in odd:
        client.send_message(QueueUrl=held_url, MessageBody=CANARY, MessageAttributes=attributes)
    for args in (["held", queue], ["held", queue, "--json"]):
        listing = run_cli(backend, *args, app="tests.apps.sqs_app:app")
        assert listing.returncode == 0, listing.stdout + listing.stderr
    assert len(json.loads(run_cli(backend, "held", queue, "--json", app="tests.apps.sqs_app:app").stdout)) == 4
    adapter = SQSAdapter.from_config(backend, {})
    try:
        assert adapter.kick(queue, 10) == 4
        assert adapter.stats(queue).ready == 4
    finally:
        adapter.close()
