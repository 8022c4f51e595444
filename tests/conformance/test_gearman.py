"""The conformance suite on a real gearmand, within the Gearman adapter's declared capabilities:
once with the held store (and delivery ledger) in an SQLite file, once in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from lilqueue.adapters.gearman import RedisHeldStore, open_store
from lilqueue.testing import ConformanceSuite
from tests.servers import Server, binary, free_port, require_module


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Server]:
    require_module("redis")
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with Server(argv, port) as server:
        yield server


class TestGearman(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, gearmand: Server, tmp_path: Path) -> str:
        held = quote(f"sqlite:///{tmp_path}/held.db", safe="")
        return f"gearman://127.0.0.1:{gearmand.port}?held_store={held}&poll_interval=0.2"


class TestGearmanWithARedisHeldStore(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, gearmand: Server, redis_server: Server) -> str:
        held = f"redis://127.0.0.1:{redis_server.port}/0"
        store = open_store(held)
        assert isinstance(store, RedisHeldStore)
        store.redis.flushdb()  # each test starts with an empty store
        store.close()
        return f"gearman://127.0.0.1:{gearmand.port}?held_store={quote(held, safe='')}&poll_interval=0.2"
