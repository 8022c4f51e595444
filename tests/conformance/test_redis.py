"""The conformance suite, in full, on a Redis server of our own, over RESP2 and RESP3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lilqueue.testing import ConformanceSuite
from tests.servers import Server, binary, free_port


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    with Server(argv, port):
        yield port


class TestRedisResp3(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, redis_port: int) -> str:
        return f"redis://127.0.0.1:{redis_port}/0?protocol=3"


class TestRedisResp2(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, redis_port: int) -> str:
        return f"redis://127.0.0.1:{redis_port}/1?protocol=2"
