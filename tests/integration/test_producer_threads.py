"""Producers in short-lived threads, on every backend: connections follow the live threads.

A web server that runs each request in a thread of its own used to leave one open
connection (and one adapter) per request ever served. Here 1,000 producer threads, and
1,000 requests to a real ``ThreadingHTTPServer`` in a process of its own, must leave
the open file descriptors where they were, lose no task, and ``App.close()`` must close
what is kept for the next threads. Run as a module, this file is that web server.
"""

from __future__ import annotations

import gc
import http.client
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

import lilqueue
from lilqueue.adapters.base import Adapter
from lilqueue.config import load_settings
from lilqueue.connections import MAX_IDLE
from tests.servers import Server, binary, free_port, moto_sqs

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["memory", "sqlite", "beanstalkd", "redis", "sqs", "gearman"]
REQUESTS = 1_000
#: moto spends ~10 ms of CPU on each SendMessage: 1,000 would take 20 s or more a test.
#: Before the fix, 300 SQS producer threads kept 300 boto3 clients (2.4 GB).
SQS_REQUESTS = 200
WIDTH = 4  # producer threads alive at once
SLACK = 2  # file descriptors a run may differ by (a log file, a socket in TIME_WAIT's way...)


def _server(argv: list[str], port: int) -> Server:
    return Server(argv, port).start()


@pytest.fixture(scope="module", params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A backend URL; one server per backend for this module."""
    name: str = request.param
    tmp = tmp_path_factory.mktemp(name)
    port = free_port()
    if name == "memory":
        yield f"memory://{uuid.uuid4().hex}"
    elif name == "sqlite":
        yield f"sqlite:///{tmp / 'q.db'}"
    elif name == "sqs":
        with moto_sqs() as endpoint:
            yield f"sqs://us-east-1?endpoint_url={endpoint}&wait=1"
    elif name == "beanstalkd":
        with _server([binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port)], port):
            yield f"beanstalkd://127.0.0.1:{port}"
    elif name == "redis":
        argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)]
        with _server(argv, port):
            yield f"redis://127.0.0.1:{port}/0"
    else:
        argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
        with _server(argv, port):
            held = quote(f"sqlite:///{tmp / 'held.db'}", safe="")
            yield f"gearman://127.0.0.1:{port}?held_store={held}"


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def live_adapters() -> int:
    gc.collect()
    return sum(isinstance(o, Adapter) for o in gc.get_objects())


def in_threads(count: int, target: Callable[[int], object]) -> list[BaseException]:
    """Call ``target(i)`` for each i in its own new thread, WIDTH at a time; the errors raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    for start in range(0, count, WIDTH):
        batch = [threading.Thread(target=run, args=(i,)) for i in range(start, min(start + WIDTH, count))]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
    return errors


def requests_for(url: str) -> int:
    return SQS_REQUESTS if url.startswith("sqs:") else REQUESTS


def wait_ready(queue: lilqueue.QueueHandler, expected: int) -> int | None:
    """The queue's ready count once it is ``expected`` (SQS's counts lag a moment) or 10 s passed."""
    deadline = time.monotonic() + 10
    while (count := queue.stats().ready) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def test_a_thousand_short_lived_producer_threads_keep_the_fds_flat(url: str) -> None:
    first, others = open_fds(), live_adapters()  # others: what earlier tests left for the gc
    app = lilqueue.App(settings=load_settings(backend=url, env={}))
    queue: lilqueue.QueueHandler = app.queue(f"pt-{uuid.uuid4().hex[:8]}")
    assert in_threads(2 * WIDTH, lambda i: queue.send("t", {"i": i})) == []  # imports, connections
    before = open_fds()
    count = requests_for(url)
    started = time.monotonic()
    assert in_threads(count, lambda i: queue.send("t", {"i": i})) == []
    took = time.monotonic() - started
    after = open_fds()
    assert after <= before + SLACK, f"{before} fds before {count} producer threads, {after} after"
    assert live_adapters() - others <= WIDTH, "adapters of ended threads are kept"
    in_use, idle = app._connections.counts()
    assert in_use == 0 and idle <= WIDTH
    assert wait_ready(queue, count + 2 * WIDTH) == count + 2 * WIDTH  # nothing lost
    app.close()
    assert app._connections.counts() == (0, 0)
    assert open_fds() <= first + SLACK, "App.close() left connections open"
    print(f"{url.partition(':')[0]}: {count} threads in {took:.1f}s, fds {before} -> {after}")


# -- a web server with a thread per request, in a process of its own ------------------------


def serve(url: str, queue_name: str) -> None:
    """Answer each POST by sending one task, a GET with the number of adapters alive;
    print the port, then serve until killed."""
    queue: lilqueue.QueueHandler = lilqueue.App(settings=load_settings(backend=url, env={})).queue(queue_name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer(200, str(live_adapters()).encode())

        def do_POST(self) -> None:
            try:
                self.answer(200, queue.send("hit", {"path": self.path}).encode())
            except Exception as exc:
                self.answer(500, repr(exc).encode())

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def call(port: int, method: str, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    return body


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))


def settled_fds(pid: int, threads: int) -> int:
    """The server's fds once its request threads have ended (they end just after replying)."""
    deadline = time.monotonic() + 10
    while threads_of(pid) > threads and time.monotonic() < deadline:
        time.sleep(0.02)
    return open_fds(pid)


def test_a_thread_per_request_web_server_keeps_its_fds_flat(url: str) -> None:
    name = f"web-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "tests.integration.test_producer_threads", url, name]
    web = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert web.stdout is not None
        port = int(web.stdout.readline())
        idle_threads = threads_of(web.pid)
        warm = in_threads(3 * WIDTH, lambda i: call(port, "POST", f"/warm/{i}"))  # as many adapters as later
        assert warm == []
        before = settled_fds(web.pid, idle_threads)
        count = requests_for(url)
        for i in range(count):
            call(port, "POST", f"/{i}")
        after = settled_fds(web.pid, idle_threads)
        adapters = int(call(port, "GET", "/adapters"))
    finally:
        web.kill()
        web.communicate(timeout=10)
    assert after <= before + SLACK, f"the web server had {before} fds before {count} requests, {after} after"
    assert adapters <= MAX_IDLE, f"the web server keeps {adapters} adapters after {count} requests"
    print(f"{url.partition(':')[0]}: web server fds {before} -> {after}, {adapters} adapters after {count} requests")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
