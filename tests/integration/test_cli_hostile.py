"""The ``lilqueue`` command on hostile arguments and hostile queue contents: a clear
one-line error or an escaped listing, never a traceback, through real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lilqueue
from lilqueue.config import load_settings

from .workers import ROOT

APP = "tests.apps.core_app:app"


def cli(*args: str, backend: str | None = None, app: str | None = APP) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lilqueue", *(["--app", app] if app else [])]
    argv += [*(["--backend", backend] if backend else []), *args]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, errors="replace")


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/q.db"


def test_an_app_path_that_is_no_app_or_factory_is_a_clear_error(db: str) -> None:
    assert_clean_error(cli("list", backend=db, app="json:loads"), "json:loads", "not a lilqueue.App")
    assert_clean_error(cli("list", backend=db, app="json:JSONDecoder"), "not a lilqueue.App")
    assert_clean_error(cli("list", backend=db, app="no.such.module:app"), "cannot import")


@pytest.mark.parametrize("spec", ["all:echo:x", "a,b:echo:x", " jobs:echo:x"])
def test_send_to_a_queue_no_worker_can_watch_is_refused(db: str, spec: str) -> None:
    assert_clean_error(cli("send", spec, backend=db), "cannot add a task to queue")


@pytest.mark.parametrize(
    "args",
    [
        ("kick", "jobs", str(2**64)),
        ("held", "jobs", "--limit", str(2**64)),
        ("held", "jobs", "--limit", "nan"),
        ("kick", "jobs", "-5"),
    ],
)
def test_counts_out_of_range_are_usage_errors(db: str, args: tuple[str, ...]) -> None:
    result = cli(*args, backend=db)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("task_id", [str(2**64), str(-(2**64)), "1e9", "nan", "x\ny", "\udc80", ""])
def test_ids_that_cannot_exist_are_not_found(db: str, task_id: str) -> None:
    for command in ("kick", "delete"):
        result = cli(command, "jobs", "--id", task_id, backend=db)
        assert_clean_error(result)
        assert "no " in result.stderr and "task" in result.stderr, result.stderr


def test_held_listing_escapes_what_it_prints(db: str) -> None:
    app = lilqueue.App(settings=load_settings(backend=db, env={}))
    for name in ("echo\nforged 1  echo  held 2020-01-01", "\x1b[2Jclear", "tab\there\u2028"):
        body = json.dumps({"v": 1, "task": name, "data": {}}).encode()
        app.adapter.put("jobs", body, priority=1, delay=0, ttr=60)
    app.adapter.put("jobs", b"[" * 5000 + b"]" * 5000, priority=1, delay=0, ttr=60)
    app.close()
    assert cli("watch", "jobs", "--burst", backend=db).returncode == 0
    text = cli("held", "jobs", backend=db)
    assert text.returncode == 0, text.stderr
    headers = [line for line in text.stdout.splitlines() if not line.startswith("    ")]
    assert len(headers) == 4, text.stdout
    assert "echo\\nforged 1" in text.stdout and "\\x1b[2Jclear" in text.stdout and "tab\\there\\u2028" in text.stdout
    assert "\x1b" not in text.stdout and "\u2028" not in text.stdout
    listed = cli("held", "jobs", "--json", backend=db)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 4
