"""Redis options and URLs (garbage is a ConfigError naming the key, never a traceback),
producers against black-holed servers (they give up within the default timeouts), and
queue names that are odd but valid."""

from __future__ import annotations

import time

import pytest

import lilqueue
from lilqueue.adapters.redis import RedisAdapter
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError, ConfigError
from lilqueue.testing import reserve_until
from tests.servers import Server, binary, free_port, full_backlog, silent_server

from .workers import run_cli

BAD_SECONDS = ["nan", "inf", "-inf", "0", "-1", "soon", "", "1e400"]


@pytest.mark.parametrize("key", ["connect_timeout", "io_timeout", "timeout"])
@pytest.mark.parametrize("value", BAD_SECONDS)
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"queue\.redis\.{key}: must be a finite number of seconds above 0"):
        RedisAdapter.from_config(f"redis://127.0.0.1:6379/0?{key}={value}", {})
    with pytest.raises(ConfigError, match=rf"queue\.redis\.{key}"):
        RedisAdapter.from_config(None, {key: float(value) if value not in ("soon", "") else value})
    with pytest.raises(ConfigError, match=rf"queue\.redis\.{key}"):
        RedisAdapter.from_config(None, {key: True})


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("redis://[::1", {}, "queue.backend"),
        ("redis://h:99999/0", {}, "queue.backend"),
        ("redis://h:0/0", {}, "queue.redis.port"),
        ("redis://h/0?port=70000", {}, "queue.redis.port"),
        ("redis://h/0?protocol=x", {}, "queue.redis.protocol"),
        ("redis://h/abc", {}, "queue.redis.db"),
        ("redis://h?db=-1", {}, "queue.redis.db"),
        ("redis://h/99999999999999999999", {}, "queue.redis.db"),
        ("redis://h/0?pipeline_acks=maybe", {}, "queue.redis.pipeline_acks"),
        ("redis://h/0?%ff=1", {}, "unknown option"),
        ("redis://h/0?timeout=nan&io_timeout=1", {}, "queue.redis.timeout"),
        (None, {"host": "a b"}, "queue.redis.host"),
        (None, {"host": "a\x00b"}, "queue.redis.host"),
        (None, {"port": 1.5}, "queue.redis.port"),
        (None, {"db": float("nan")}, "queue.redis.db"),
        (None, {"db": 10**400}, "queue.redis.db"),
    ],
)
def test_url_and_option_garbage_is_a_config_error(url: str | None, options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RedisAdapter.from_config(url, options)


def test_the_defaults_and_the_old_name_of_io_timeout() -> None:
    adapter = RedisAdapter.from_config(None, {})
    assert adapter.timeout == 5.0 and adapter._link.conn.socket_connect_timeout == 3.0
    adapter = RedisAdapter.from_config("redis://h/0?timeout=2&connect_timeout=0.5", {})
    assert adapter.timeout == 2.0 and adapter._link.conn.socket_connect_timeout == 0.5
    assert RedisAdapter.from_config("redis://h/0", {"timeout": 9, "io_timeout": 1}).timeout == 1.0


def test_the_command_line_reports_a_bad_url_without_a_traceback() -> None:
    done = run_cli("redis://127.0.0.1:6379/0?timeout=nan", "stats", "jobs")
    assert done.returncode in (1, 2), done
    assert "queue.redis.timeout" in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_a_producer_gives_up_on_a_silent_server_within_the_default_io_timeout() -> None:
    with silent_server() as port:
        app = lilqueue.App(settings=load_settings(backend=f"redis://127.0.0.1:{port}/0", env={}))
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):  # BackendTimeoutError is one
            app.queue("jobs").send("echo", {})
        took = time.monotonic() - started
        app.close()
    assert 4.5 < took < 7, took


def test_a_producer_gives_up_on_a_connect_that_hangs_within_the_default_connect_timeout() -> None:
    with full_backlog() as port:
        app = lilqueue.App(settings=load_settings(backend=f"redis://127.0.0.1:{port}/0", env={}))
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):
            app.queue("jobs").send("echo", {})
        took = time.monotonic() - started
        app.close()
    assert 2.5 < took < 5, took


def test_queue_names_that_are_odd_but_valid_keep_to_their_own_keys(tmp_path: object) -> None:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    names = ["{", "}", "a", "a:job", "a:job:1", "a:ready", "with space", "ü-é", "x" * 255, "*", "?"]
    with Server(argv, port):
        adapter = RedisAdapter.from_config(f"redis://127.0.0.1:{port}/0", {})
        for name in names:
            assert RedisAdapter.queue_name_problem(name) is None
            adapter.put(name, name.encode(), priority=1, delay=0, ttr=60)
        for name in names:
            job = reserve_until(adapter, [name])
            assert (job.queue, job.body) == (name, name.encode())
            adapter.bury(job, reason=f"held in {name}")
        for name in names:
            assert [(h.body, h.reason) for h in adapter.held(name)] == [(name.encode(), f"held in {name}")]
            assert adapter.stats(name).as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 1}
            assert adapter.kick(name, 5) == 1
        assert adapter.reserve(names, 0) is not None
        adapter.close()
    for bad in ["", "a\nb", "nul\x00", "\udc80", "tab\there"]:
        assert RedisAdapter.queue_name_problem(bad) is not None
