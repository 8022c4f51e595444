"""Fixtures shared by the tests that run real worker processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .workers import kill_group


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Where the test apps' workers record each run."""
    return tmp_path / "runs.log"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes a test started: killed (with their children) afterwards."""
    started: list[subprocess.Popen[str]] = []
    yield started
    kill_group(started)
