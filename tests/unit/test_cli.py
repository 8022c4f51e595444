"""The lilqueue command, in-process with click's runner, on a real SQLite file."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lilqueue.cli import main

APP = "tests.apps.core_app:app"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str | None]]:
    monkeypatch.delenv("LILQUEUE_CONFIG", raising=False)
    yield {"LILQUEUE_BACKEND": f"sqlite:///{tmp_path}/q.db", "LILQUEUE_APP": APP, "LILQUEUE_CONFIG": None}


def cli(env: dict[str, str | None], *args: str) -> Result:
    """One command, as a fresh process would run it (the app module imported anew)."""
    sys.modules.pop(APP.partition(":")[0], None)
    return CliRunner().invoke(main, list(args), env=env)


def test_send_splits_on_the_first_two_colons_only(env: dict[str, str | None]) -> None:
    out = cli(env, "send", "jobs:echo:hello: world:42")
    assert out.exit_code == 0, out.output
    held = cli(env, "stats", "jobs", "--json")
    assert json.loads(held.output)["jobs"]["ready"] == 1
    from lilqueue import App
    from lilqueue.config import load_settings

    app = App(settings=load_settings(backend=str(env["LILQUEUE_BACKEND"]), env={}))
    job = app.adapter.reserve(["jobs"], 0)
    assert job is not None and json.loads(job.body)["data"] == {"message": "hello: world:42"}


def test_seed_aliases(env: dict[str, str | None]) -> None:
    assert cli(env, "--send", "jobs:echo:hi").exit_code == 0
    listing = cli(env, "--list")
    assert "jobs" in listing.output and "echo -> tests.apps.core_app:echo" in listing.output
    assert cli(env, "--watch", "jobs", "--burst").exit_code == 0
    cli(env, "--send=jobs:echo:again")
    ran = cli({**env, "LILQUEUE_BURST": "1"}, "--watch=jobs")
    assert ran.exit_code == 0, ran.output
    assert json.loads(cli(env, "stats", "--json").output)["jobs"]["ready"] == 0


def test_stats_json_shape(env: dict[str, str | None]) -> None:
    cli(env, "send", "jobs:echo:x")
    cli(env, "send", "--delay", "60", "jobs:echo:y")
    data = json.loads(cli(env, "stats", "--json").output)
    assert data == {
        "jobs": {"ready": 1, "delayed": 1, "reserved": 0, "held": 0},
        "other": {"ready": 0, "delayed": 0, "reserved": 0, "held": 0},
    }
    text = cli(env, "stats", "jobs").output
    assert "ready" in text and "jobs" in text


def test_held_kick_delete(env: dict[str, str | None]) -> None:
    cli(env, "send", "jobs:nobody:x")
    cli(env, "send", "jobs:nobody:y")
    assert cli(env, "watch", "jobs", "--burst").exit_code == 0
    held = json.loads(cli(env, "held", "jobs", "--json").output)
    assert [sorted(h) for h in held] == [["data", "held_at", "id", "reason", "task"]] * 2
    assert held[0]["task"] == "nobody" and "no worker registered" in held[0]["reason"]
    assert "no worker registered" in cli(env, "held", "jobs").output
    assert cli(env, "kick", "jobs", "--id", held[0]["id"]).exit_code == 0
    assert cli(env, "kick", "jobs", "--id", held[0]["id"]).exit_code == 1
    assert cli(env, "delete", "jobs", "--id", held[1]["id"]).exit_code == 0
    assert json.loads(cli(env, "stats", "jobs", "--json").output)["jobs"] == {
        "ready": 1, "delayed": 0, "reserved": 0, "held": 0}  # fmt: skip
    assert "kicked 0" in cli(env, "kick", "jobs", "5").output


def test_capabilities(env: dict[str, str | None]) -> None:
    out = cli(env, "capabilities")
    assert "backend: sqlite" in out.output and "priority" in out.output and "native" in out.output
    data = json.loads(cli(env, "capabilities", "--json").output)
    assert data["features"]["blocking_reserve"]["level"] == "emulated"
    assert set(data["features"]) >= {"priority", "delay", "ttr", "touch", "retry", "hold", "kick", "stats"}


def test_bad_backend_is_a_clean_error(env: dict[str, str | None]) -> None:
    result = cli(env, "--backend", "kafka://x", "stats")
    assert result.exit_code == 2 and "unknown backend 'kafka'" in result.output


def test_bad_send_spec(env: dict[str, str | None]) -> None:
    result = cli(env, "send", "jobs-only")
    assert result.exit_code == 2 and "QUEUE:TASK:MESSAGE" in result.output


def test_help_names_environment_variables(env: dict[str, str | None]) -> None:
    text = cli(env, "watch", "--help").output
    for var in ("LILQUEUE_CONCURRENCY", "LILQUEUE_MAX_TASKS", "LILQUEUE_MAX_MEMORY", "LILQUEUE_BURST"):
        assert var in text
    assert "LILQUEUE_BACKEND" in cli(env, "--help").output
