"""A stop signal that lands while the supervisor is forking a worker still stops that
worker at once (it used to run on, unsignalled, for the whole grace period)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .workers import ROOT

SCRIPT = """
import os, signal, sys
import lilqueue
from lilqueue.supervisor import Supervisor

app = lilqueue.App(backend=sys.argv[1])
app.queue("jobs")
real_fork, forks = os.fork, []


def fork():
    forks.append(1)
    if len(forks) == 2:  # SIGTERM for the supervisor just as it forks its second worker
        os.kill(os.getpid(), signal.SIGTERM)
    return real_fork()


os.fork = fork
sys.exit(Supervisor(app, "jobs", concurrency=2, grace=60).run())
"""


def test_sigterm_as_a_worker_is_forked_stops_that_worker_too(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path}/q.db"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took < 30, f"a worker ran on into the grace period ({took:.1f}s):\n{result.stderr}"
