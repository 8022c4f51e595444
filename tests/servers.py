"""Real servers for the tests: started on free ports, stopped afterwards.

With ``CI`` set, a server that cannot be found or started fails the test; on a
developer's machine it skips it (the brief: never a silent skip in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(why: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"required for CI: {why}")
    pytest.skip(why)


def binary(name: str) -> str:
    """The path of a server binary (PATH, then sbin directories), or unavailable()."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        unavailable(f"{name} is not installed (make test installs it: scripts/install-servers.sh)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Server:
    """A server process we own: start, kill -9, restart on the same port, stop."""

    def __init__(self, argv: Sequence[str], port: int, *, log: Path | None = None) -> None:
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Server:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            unavailable(f"{self.argv[0]} did not start on port {self.port}")
        return self

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Server:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_module(name: str) -> None:
    """Import check for an optional client library: unavailable() when it is missing."""
    try:
        __import__(name)
    except ImportError:
        unavailable(f"the Python package {name!r} is not installed (pip install 'lilqueue[all,dev]')")


@contextlib.contextmanager
def moto_sqs() -> Iterator[str]:
    """moto's standalone SQS server on a free port, with dummy AWS credentials in the
    environment (worker processes inherit them); yields its endpoint URL."""
    require_module("boto3")
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with Server([str(moto), "-H", "127.0.0.1", "-p", str(port)], port):
            yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose backlog is full: a new connection's SYN goes unanswered, connect() hangs."""
    with socket.socket() as listener, contextlib.ExitStack() as stack:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        time.sleep(0.05)
        yield port


def beanstalkd_server(port: int, *args: str) -> Server:
    """A beanstalkd of the test's own on ``port`` (``-b DIR`` etc. in ``args``)."""
    return Server([binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port), *args], port)


def redis_server(port: int, workdir: Path, *args: str) -> Server:
    """A redis-server of the test's own on ``port``, no snapshots, files in ``workdir``."""
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    return Server([*argv, "--dir", str(workdir), *args], port)


def gearmand_server(port: int) -> Server:
    """A gearmand of the test's own on ``port`` (no persistent queue)."""
    argv = [binary("gearmand"), "--listen=127.0.0.1", f"--port={port}", "--log-file=none", "--threads=2"]
    return Server(argv, port)
