"""Fixtures shared by the tests that run real worker processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import moto_sqs

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


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto SQS server on a free port for a module's tests (dummy AWS credentials in the environment)."""
    with moto_sqs() as endpoint:
        yield endpoint
