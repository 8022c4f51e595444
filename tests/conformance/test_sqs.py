"""The conformance suite on Amazon SQS, served by moto's standalone server over HTTP."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilqueue.testing import ConformanceSuite
from tests.servers import Server, free_port

pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    """A moto server on a free port, with dummy credentials in the environment."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with Server([str(moto), "-H", "127.0.0.1", "-p", str(port)], port):
            yield f"http://127.0.0.1:{port}"


class TestSQS(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, sqs_endpoint: str) -> str:
        return f"sqs://us-east-1?endpoint_url={sqs_endpoint}"
