"""The conformance suite against a real beanstalkd, started on a free port for this module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lilqueue.testing import ConformanceSuite
from tests.servers import Server, binary, free_port


@pytest.fixture(scope="module")
def beanstalkd_url() -> Iterator[str]:
    port = free_port()
    with Server([binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port)], port):
        yield f"beanstalkd://127.0.0.1:{port}"


class TestBeanstalkd(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, beanstalkd_url: str) -> str:
        return beanstalkd_url
