"""The unit tests' App: the in-memory backend (a real adapter, not a mock), a fresh store each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import lilqueue
from lilqueue.config import load_settings


@pytest.fixture
def app() -> Iterator[lilqueue.App]:
    app = lilqueue.App(settings=load_settings(backend=f"memory://{uuid.uuid4().hex}", env={}))
    yield app
    app.close()


def drain(app: lilqueue.App, queue: str = "q") -> int:
    return app.watch([queue], burst=True, install_signal_handlers=False)
