"""Configuration: TOML, environment, arguments, backend URLs; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import lilqueue
from lilqueue.adapters import adapter_class
from lilqueue.config import DEFAULT_BACKEND, RetryPolicy, load_settings
from lilqueue.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lilqueue.toml"
    path.write_text(text)
    return path


def test_defaults_are_embedded_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.backend == DEFAULT_BACKEND and s.backend_name == "sqlite"
    assert (s.priority, s.delay, s.ttr) == (1024, 0, 60)
    assert s.retry == RetryPolicy(3, 1.0, 600.0)


def test_seed_shaped_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
app = "myproject.jobs:app"
[queue]
backend = "beanstalkd"
prefix = "shop-"
[queue.beanstalkd]
servers = [{ host = "127.0.0.1", port = 11300 }]
priority = 100
delay = 5
ttr = 30
[queue.amazonsqs]
region = "eu-west-1"
""",
    )
    s = load_settings(path, env={})
    assert (s.app, s.backend_name, s.prefix) == ("myproject.jobs:app", "beanstalkd", "shop-")
    assert (s.priority, s.delay, s.ttr) == (100, 5, 30)
    assert s.backend_options == {"servers": [{"host": "127.0.0.1", "port": 11300}]}


def test_amazonsqs_section_serves_the_sqs_url(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\nbackend = "sqs://eu-west-1"\n[queue.amazonsqs]\nwait = 5\n')
    assert load_settings(path, env={}).backend_options == {"wait": 5}


def test_environment_overrides_file_and_arguments_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\nbackend = "memory://"\nprefix = "a"\n')
    env = {"LILQUEUE_BACKEND": "sqlite:///x.db", "LILQUEUE_PREFIX": "b", "LILQUEUE_SECRET": "s"}
    s = load_settings(path, env=env)
    assert (s.backend, s.prefix, s.secret) == ("sqlite:///x.db", "b", b"s")
    s = load_settings(path, env=env, backend="memory://x", prefix="c")
    assert (s.backend, s.prefix) == ("memory://x", "c")


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\nbackend = "memory://"\n')
    assert load_settings(env={"LILQUEUE_CONFIG": str(path)}).backend == "memory://"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("bogus = 1\n", "'bogus'"),
        ("[queue]\nbackend = 5\n", "queue.backend"),
        ('[queue]\nwire = "xml"\n', "queue.wire"),
        ('[queue]\nbackend = "beanstalkd"\n[queue.beanstalkd]\nttr = 0\n', "queue.beanstalkd.ttr"),
        ('[queue]\nbackend = "beanstalkd"\n[queue.beanstalkd]\npriority = -1\n', "queue.beanstalkd.priority"),
        ("[queue]\nmax_attempts = 0\n", "max_attempts"),
        ('[queue]\nbackoff = "fast"\n', "backoff"),
        ('[queues.mail]\nlable = "x"\n', "queues.mail: unknown key 'lable'"),
        ('[queues.mail.workers.send]\nmethod = "x"\n', "queues.mail.workers.send"),
        ('[queue.adapters.mine]\nklass = "x"\n', "queue.adapters.mine"),
        ('[queue]\nsecret = "s"\nwire = "lilmuckers"\n', "secret"),
        ("[queue\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", "\\[").replace(".", "\\.")):
        load_settings(write(tmp_path, text), env={})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_unknown_backend_names_it() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'kafka'"):
        adapter_class(load_settings(backend="kafka://h:1", env={}))


def test_bad_adapter_option_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"queue\.sqlite\.colour"):
        _ = lilqueue.App(settings=load_settings(backend="sqlite:///:memory:?colour=red", env={})).adapter


def test_bad_sqlite_url() -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///relative\.db"):
        _ = lilqueue.App(settings=load_settings(backend="sqlite://", env={})).adapter


def test_queues_and_workers_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfgjobs.py").write_text(
        "import lilqueue\n"
        "class Mailer(lilqueue.QueueHandler):\n    label = 'from class'\n"
        "class MailWorker(lilqueue.Worker):\n    def send(self, task):\n        task.queue.sent = task.data\n"
        "def ping(task):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(
        tmp_path,
        """
[queue]
backend = "memory://cfg"
[queues.mail]
label = "Outgoing mail"
handler = "cfgjobs:Mailer"
max_attempts = 5
[queues.mail.workers.send]
class = "cfgjobs:MailWorker"
method = "send"
[queues.mail.workers.ping]
function = "cfgjobs:ping"
""",
    )
    app = lilqueue.App(config=path)
    mail = app.get_queue("mail")
    assert type(mail).__name__ == "Mailer" and mail.label == "Outgoing mail"
    assert set(mail.workers) == {"send", "ping"} and mail.retry.max_attempts == 5
    mail.send("send", {"x": 1})
    app.watch("mail", burst=True, install_signal_handlers=False)
    assert mail.sent == {"x": 1}  # type: ignore[attr-defined]


def test_worker_import_error_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[queues.mail.workers.send]\nclass = "no_such_module:W"\n')
    with pytest.raises(ConfigError, match=r"queues\.mail\.workers\.send\.class"):
        lilqueue.App(config=path)


def test_third_party_adapter_by_class_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[queue]\nbackend = "mine://x"\n[queue.adapters.mine]\nclass = "lilqueue.adapters.memory:MemoryAdapter"\n',
    )
    app = lilqueue.App(config=path)
    assert type(app.adapter).__name__ == "MemoryAdapter"


def test_retry_policy_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, base=2.0, cap=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_third_party_adapter_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "lilqueue_fake-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lilqueue-fake\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lilqueue.adapters]\nfake = lilqueue.adapters.memory:MemoryAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert adapter_class(load_settings(backend="fake://x", env={})).__name__ == "MemoryAdapter"
