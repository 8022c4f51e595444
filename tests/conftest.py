"""Fixtures shared by the conformance and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, free_port, gearmand_server


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    """A gearmand of the module's own on a free port."""
    with gearmand_server(free_port()) as server:
        yield server
