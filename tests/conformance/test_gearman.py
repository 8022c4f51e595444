"""The conformance suite on a real gearmand, within the Gearman adapter's declared capabilities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from lilqueue.testing import ConformanceSuite
from tests.servers import Server, binary, free_port


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    port = free_port()
    argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    with Server(argv, port) as server:
        yield server


class TestGearman(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, gearmand: Server, tmp_path: Path) -> str:
        held = quote(f"sqlite:///{tmp_path}/held.db", safe="")
        return f"gearman://127.0.0.1:{gearmand.port}?held_store={held}&poll_interval=0.2"
