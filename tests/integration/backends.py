"""Every backend a real worker process can run on, as one context manager: a URL to a
server started for the test (SQLite needs none) on free ports, stopped afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tests.servers import Server, beanstalkd_server, free_port, gearmand_server, moto_sqs, redis_server

ALL = ("sqlite", "beanstalkd", "redis", "sqs", "gearman")


@contextlib.contextmanager
def backend_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL for ``kind``, its server running until the block ends."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db"
        return
    if kind == "sqs":
        with moto_sqs() as endpoint:
            yield f"sqs://us-east-1?endpoint_url={endpoint}&wait=1"
        return
    port = free_port()
    server, url = _server(kind, port, tmp_path)
    with server:
        yield url


def _server(kind: str, port: int, tmp_path: Path) -> tuple[Server, str]:
    if kind == "beanstalkd":
        return beanstalkd_server(port), f"beanstalkd://127.0.0.1:{port}"
    if kind == "redis":
        return redis_server(port, tmp_path), f"redis://127.0.0.1:{port}/0"
    if kind == "gearman":
        store = quote(f"sqlite:///{tmp_path}/held.db", safe="")
        return gearmand_server(port), f"gearman://127.0.0.1:{port}?held_store={store}&poll_interval=0.2"
    raise ValueError(f"unknown backend kind {kind!r}")
