"""beanstalkd adapter configuration and connection errors (no server needed for most)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import lilqueue
from lilqueue.adapters import create_adapter
from lilqueue.adapters.beanstalkd import BeanstalkdAdapter, Server
from lilqueue.config import load_settings
from lilqueue.errors import BackendConnectionError, ConfigError
from tests.servers import free_port, full_backlog, silent_server


def keys(adapter: BeanstalkdAdapter) -> list[str]:
    return [conn.key for conn in adapter.conns]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("beanstalkd://10.0.0.1:11301", ["10.0.0.1:11301"]),
        ("beanstalkd://10.0.0.1", ["10.0.0.1:11300"]),
        ("beanstalkd://a:1,b:2, c", ["a:1", "b:2", "c:11300"]),
        ("beanstalkd://[::1]:11300,[fe80::1]", ["[::1]:11300", "[fe80::1]:11300"]),
        ("beanstalkd://", ["127.0.0.1:11300"]),
    ],
)
def test_urls(url: str, expected: list[str]) -> None:
    assert keys(BeanstalkdAdapter.from_config(url, {})) == expected


def test_url_options_and_servers_option() -> None:
    adapter = BeanstalkdAdapter.from_config("beanstalkd://h:1?connect_timeout=0.5&io_timeout=3", {})
    assert (adapter.conns[0].connect_timeout, adapter.conns[0].io_timeout) == (0.5, 3.0)
    adapter = BeanstalkdAdapter.from_config(None, {"servers": [{"host": "x"}, {"host": "y", "port": 7}]})
    assert keys(adapter) == ["x:11300", "y:7"] and adapter.pooled
    assert keys(BeanstalkdAdapter.from_config(None, {})) == ["127.0.0.1:11300"]


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (None, {"wat": 1}, "queue.beanstalkd.wat: unknown option"),
        ("beanstalkd://h:1?wat=2", {}, "queue.beanstalkd.wat: unknown option"),
        (None, {"connect_timeout": 0}, "queue.beanstalkd.connect_timeout: must be a finite number of seconds above 0"),
        (None, {"io_timeout": "soon"}, "queue.beanstalkd.io_timeout: must be a finite number of seconds above 0"),
        (None, {"servers": []}, "queue.beanstalkd.servers: must be a non-empty list"),
        (None, {"servers": [{"host": "a", "prot": 1}]}, r"queue.beanstalkd.servers\[0\].prot: unknown key"),
        (None, {"servers": [{"host": "a", "port": "x"}]}, r"queue.beanstalkd.servers\[0\].port: must be a port"),
        (None, {"servers": [{"host": ""}]}, r"queue.beanstalkd.servers\[0\].host"),
        (None, {"servers": [{"host": "a"}, {"host": "a", "port": 11300}]}, "listed twice"),
        ("beanstalkd://a:99999", {}, "queue.backend: beanstalkd URLs look like"),
        ("beanstalkd://a:1,a:1", {}, "listed twice"),
    ],
)
def test_bad_configuration_names_the_key(url: str | None, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BeanstalkdAdapter.from_config(url, options)


def test_the_config_file_names_the_servers(tmp_path: Path) -> None:
    path = tmp_path / "lilqueue.toml"
    path.write_text(
        '[queue]\nbackend = "beanstalkd"\n[queue.beanstalkd]\n'
        'servers = [{ host = "10.1.1.1", port = 11301 }, { host = "10.1.1.2" }]\nttr = 30\nconnect_timeout = 1\n'
    )
    settings = load_settings(path, env={})
    adapter = create_adapter(settings)
    assert isinstance(adapter, BeanstalkdAdapter) and keys(adapter) == ["10.1.1.1:11301", "10.1.1.2:11300"]
    assert settings.ttr == 30 and adapter.conns[0].connect_timeout == 1.0


def test_every_feature_is_native() -> None:
    caps = BeanstalkdAdapter.capabilities
    assert all(support.level == "native" for _, support in caps.rows())


def test_a_queue_name_beanstalkd_cannot_take_is_a_config_error() -> None:
    adapter = BeanstalkdAdapter([Server("127.0.0.1", free_port())])
    for name in ("-starts-with-dash", "has space", "é", "x" * 201, "lilqueue-held/x", "lilqueue-settled/y"):
        with pytest.raises(ConfigError, match="not a valid beanstalkd tube name"):
            adapter.put(name, b"{}", priority=1, delay=0, ttr=1)


def test_no_server_is_a_prompt_connection_error() -> None:
    app = lilqueue.App(settings=load_settings(backend=f"beanstalkd://127.0.0.1:{free_port()}", env={}))
    started = time.monotonic()
    with pytest.raises(BackendConnectionError, match=r"beanstalkd 127\.0\.0\.1"):
        app.queue("jobs").send("x", {})
    with pytest.raises(BackendConnectionError):
        app.queue("jobs").stats()
    assert time.monotonic() - started < 2
    app.close()


@pytest.mark.parametrize("key", ["connect_timeout", "io_timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "soon", "", "1e400"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(key: str, value: str) -> None:
    message = rf"queue\.beanstalkd\.{key}: must be a finite number of seconds above 0"
    with pytest.raises(ConfigError, match=message):
        BeanstalkdAdapter.from_config(f"beanstalkd://h:1?{key}={value}", {})
    with pytest.raises(ConfigError, match=message):
        BeanstalkdAdapter.from_config(None, {key: float(value) if value not in ("soon", "") else value})
    with pytest.raises(ConfigError, match=message):
        BeanstalkdAdapter.from_config(None, {key: True})


def test_the_default_timeouts() -> None:
    conn = BeanstalkdAdapter.from_config(None, {}).conns[0]
    assert (conn.connect_timeout, conn.io_timeout) == (3.0, 5.0)
    with pytest.raises(ConfigError, match=r"queue\.beanstalkd\.servers: unknown option"):
        BeanstalkdAdapter.from_config("beanstalkd://h:1?servers=x", {})


def test_a_producer_gives_up_on_a_silent_server_within_the_default_io_timeout() -> None:
    with silent_server() as port:
        app = lilqueue.App(settings=load_settings(backend=f"beanstalkd://127.0.0.1:{port}", env={}))
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):  # BackendTimeoutError is one
            app.queue("jobs").send("x", {})
        took = time.monotonic() - started
        app.close()
    assert 4.5 < took < 7, took


def test_a_producer_gives_up_on_a_connect_that_hangs_within_the_default_connect_timeout() -> None:
    with full_backlog() as port:
        app = lilqueue.App(settings=load_settings(backend=f"beanstalkd://127.0.0.1:{port}", env={}))
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):
            app.queue("jobs").send("x", {})
        took = time.monotonic() - started
        app.close()
    assert 2.5 < took < 5, took
