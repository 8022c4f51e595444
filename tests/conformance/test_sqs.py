"""The conformance suite on Amazon SQS, served by moto's standalone server over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lilqueue.testing import ConformanceSuite
from tests.servers import moto_sqs


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    """A moto server on a free port, with dummy credentials in the environment."""
    with moto_sqs() as endpoint:
        yield endpoint


class TestSQS(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, sqs_endpoint: str) -> str:
        return f"sqs://us-east-1?endpoint_url={sqs_endpoint}"
