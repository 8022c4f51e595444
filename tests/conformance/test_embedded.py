"""The conformance suite on the two embedded backends: memory and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from lilqueue.testing import ConformanceSuite


class TestMemory(ConformanceSuite):
    @pytest.fixture
    def backend_url(self) -> str:
        return "memory://conformance"


class TestSQLite(ConformanceSuite):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/queue.db"
