"""Amazon SQS on moto's standalone server: lilqueue's adapter beside a raw boto3 loop.

moto is an emulator (about 70 requests a second here), so only the ratio of lilqueue
to the raw loop means anything, not the rates themselves. The raw loop is what one
sequential boto3 client does with nothing else: ``send_message`` per task;
``receive_message`` (one message) + ``delete_message`` per task; and for the latency,
a thread in a long poll while the main thread sends one timestamped message at a time.
"""

from __future__ import annotations

import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3

from bench.backends import free_port, wait_port

NAME = "sqs"
RAW = "boto3 (send; receive + delete)"
REGION = "us-east-1"


@contextmanager
def server() -> Iterator[str]:
    """moto on a free port, dummy credentials in the environment; yields the lilqueue URL."""
    binary = Path(sys.executable).with_name("moto_server")
    port = free_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port)
        yield f"sqs://{REGION}?endpoint_url=http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(url: str) -> Any:
    endpoint = parse_qs(urlsplit(url).query)["endpoint_url"][0]
    return boto3.session.Session().client("sqs", region_name=REGION, endpoint_url=endpoint)


def raw(url: str, n: int, latency_n: int = 100) -> dict[str, float | None]:
    """put/s, receive+delete/s and enqueue->start p50/p99 (ms) of a bare boto3 loop."""
    client = _client(url)
    queue_url = client.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    started = time.perf_counter()
    for i in range(n):
        client.send_message(QueueUrl=queue_url, MessageBody=f'{{"i": {i}}}')
    put = time.perf_counter() - started
    started, done = time.perf_counter(), 0
    while messages := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1).get("Messages"):
        client.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
        done += 1
    process = time.perf_counter() - started
    p50, p99 = _latency(url, min(n, latency_n))
    return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": p50, "p99_ms": p99}


def _latency(url: str, n: int, warmup: int = 10) -> tuple[float, float]:
    client = _client(url)
    queue_url = client.create_queue(QueueName=f"raw-lat-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    seen: queue.Queue[float] = queue.Queue()

    def work() -> None:
        worker = _client(url)
        got = 0
        while got < n + warmup:
            response = worker.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=5)
            for message in response.get("Messages", []):
                seen.put((time.time() - float(message["Body"])) * 1000)
                worker.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                got += 1

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    times: list[float] = []
    time.sleep(0.3)
    for _ in range(n + warmup):
        client.send_message(QueueUrl=queue_url, MessageBody=repr(time.time()))
        times.append(seen.get(timeout=30))
        time.sleep(0.002)
    thread.join(10)
    times = sorted(times[warmup:])
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]
