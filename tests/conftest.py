"""Fixtures shared by the conformance and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, binary, free_port


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    """A gearmand of the module's own on a free port."""
    port = free_port()
    argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    with Server(argv, port) as server:
        yield server
