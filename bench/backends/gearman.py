"""Gearman: lilqueue's adapter beside a raw loop on the same protocol client.

The raw loop is what one sequential client and worker can do with
``lilqueue.adapters.gearman_protocol`` alone: ``SUBMIT_JOB_LOW_BG`` per put (the band of
lilqueue's default priority); ``GRAB_JOB_UNIQ`` + ``WORK_COMPLETE`` per task; and for the
latency, a worker thread sleeping in ``PRE_SLEEP`` until gearmand's ``NOOP``. lilqueue's
row pays for its delivery ledger too (one write per task to the held store, an SQLite file
in the bench's temporary directory); the raw loop counts nothing.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from bench.backends import free_port, wait_port
from lilqueue.adapters.gearman_protocol import Address, Command, Connection, parse_address

NAME = "gearman"
RAW = "own client (SUBMIT_JOB_LOW_BG; GRAB_JOB_UNIQ + WORK_COMPLETE)"


@contextmanager
def server() -> Iterator[str]:
    """A gearmand of our own on a free port; yields the lilqueue URL (held store in a temp dir)."""
    gearmand = shutil.which("gearmand") or "/usr/sbin/gearmand"
    port = free_port()
    argv = [gearmand, "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    with tempfile.TemporaryDirectory(prefix="lilqueue-bench-gearman-") as tmp:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            held = quote(f"sqlite:///{tmp}/held.db", safe="")
            yield f"gearman://127.0.0.1:{port}?held_store={held}"
        finally:
            proc.terminate()
            proc.wait(10)


def _address(url: str) -> Address:
    return parse_address(url.partition("://")[2].partition("?")[0].split(",")[0].rstrip("/"))


def raw(url: str, n: int) -> dict[str, float | None]:
    address = _address(url)
    function = f"raw-{uuid.uuid4().hex[:8]}"
    client = Connection(address)
    started = time.perf_counter()
    for i in range(n):
        client.submit(function, f"{uuid.uuid4().hex}.1024.60", b'{"i": %d}' % i, band="low")
    put = time.perf_counter() - started

    worker = Connection(address)
    worker.can_do([function])
    started = time.perf_counter()
    done = 0
    while (job := worker.grab()) is not None:
        worker.work_complete(job.handle)
        done += 1
    process = time.perf_counter() - started
    worker.close()

    p50, p99 = _latency(address, client, 300)
    client.close()
    return {"put_per_s": n / put, "process_per_s": done / process, "p50_ms": p50, "p99_ms": p99}


def _latency(address: Address, client: Connection, n: int, warmup: int = 20) -> tuple[float, float]:
    """Enqueue -> start, one task at a time, to a worker thread asleep in PRE_SLEEP."""
    function = f"lat-{uuid.uuid4().hex[:8]}"
    seen: list[float] = []
    got = threading.Semaphore(0)
    ready = threading.Event()

    def work() -> None:
        worker = Connection(address)
        worker.can_do([function])
        ready.set()
        while len(seen) < n + warmup:
            job = worker.grab()
            if job is None:
                worker.pre_sleep()
                while (packet := worker.receive(5)) is not None and packet.command != Command.NOOP:
                    pass
                continue
            seen.append((time.time() - float(job.data)) * 1000)
            worker.work_complete(job.handle)
            got.release()
        worker.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    ready.wait(5)
    for _ in range(n + warmup):
        client.submit(function, uuid.uuid4().hex, repr(time.time()).encode(), band="low")
        got.acquire(timeout=10)
        time.sleep(0.002)  # let the worker go idle, as the harness does
    thread.join(10)
    kept = sorted(seen[warmup:])
    return statistics.median(kept), kept[min(len(kept) - 1, int(0.99 * len(kept)))]
