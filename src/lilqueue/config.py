"""Settings from a TOML file, ``LILQUEUE_*`` environment variables and arguments.

Later sources win: built-in defaults < the TOML file < the environment < arguments
given to :class:`lilqueue.App` or the CLI. Every error names the key it is about.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lilqueue.errors import ConfigError, LilqueueError
from lilqueue.task import check_delay, check_priority, check_ttr
from lilqueue.wire import Format

DEFAULT_CONFIG = "lilqueue.toml"
DEFAULT_BACKEND = "sqlite:///lilqueue.db"
DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 60

#: backend name -> "module:Class"; aliases point at the same class.
BUILTIN_ADAPTERS: dict[str, str] = {
    "memory": "lilqueue.adapters.memory:MemoryAdapter",
    "sqlite": "lilqueue.adapters.sqlite:SQLiteAdapter",
    "beanstalkd": "lilqueue.adapters.beanstalkd:BeanstalkdAdapter",
    "sqs": "lilqueue.adapters.sqs:SQSAdapter",
    "amazonsqs": "lilqueue.adapters.sqs:SQSAdapter",
    "gearman": "lilqueue.adapters.gearman:GearmanAdapter",
    "redis": "lilqueue.adapters.redis:RedisAdapter",
    "amqp": "lilqueue.adapters.amqp:AMQPAdapter",
    "postgresql": "lilqueue.adapters.postgresql:PostgreSQLAdapter",
    "mysql": "lilqueue.adapters.mysql:MySQLAdapter",
    "memcached": "lilqueue.adapters.memcached:MemcachedAdapter",
}
#: the pip extra that brings each backend's client
EXTRAS = {"sqs": "sqs", "amazonsqs": "sqs", "postgresql": "postgresql"}


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``base * 2**(attempt-1)`` seconds, at most ``cap``."""

    max_attempts: int = 3
    base: float = 1.0
    cap: float = 600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait before the run after ``attempts`` failed ones (any count: the
        doubling stops at the cap, so 10**12 attempts cost no more than 2)."""
        doublings = min(max(attempts - 1, 0), 1023)  # 2.0**1024 overflows; a float product goes to inf
        return min(self.cap, self.base * 2.0**doublings)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    path: str
    method: str = "run"
    max_attempts: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QueueConfig:
    label: str | None = None
    handler: str | None = None
    workers: dict[str, WorkerConfig] = dataclasses.field(default_factory=dict)
    retry: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class Settings:
    """Everything an :class:`lilqueue.App` is configured with."""

    backend: str = DEFAULT_BACKEND
    backend_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    backend_tables: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    app: str | None = None
    secret: bytes | None = None
    legacy_signatures: bool = False
    wire: Format = "lilqueue"
    prefix: str = ""
    priority: int = DEFAULT_PRIORITY
    delay: float = 0
    ttr: int = DEFAULT_TTR
    retry: RetryPolicy = RetryPolicy()
    queues: dict[str, QueueConfig] = dataclasses.field(default_factory=dict)
    adapters: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str = "defaults"

    @property
    def backend_name(self) -> str:
        """The backend's registry name: a URL's scheme, or the name itself."""
        return backend_scheme(self.backend)


def backend_scheme(backend: str) -> str:
    name, sep, _ = backend.partition("://")
    return (name if sep else backend).split("+", 1)[0].lower()


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read defaults, then the TOML file, then ``LILQUEUE_*`` variables, then ``overrides``.

    ``config`` is the file path (default ``$LILQUEUE_CONFIG`` or ``./lilqueue.toml``,
    which may be absent). Raises :class:`ConfigError` naming the bad key.
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = config or env.get("LILQUEUE_CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {os.fspath(path)!r} (--config / LILQUEUE_CONFIG) not found")
    path = path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    if path is not None:
        _apply_file(settings, Path(path))
    _apply_env(settings, env)
    _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "argument")
    settings.backend_options = _select_backend_options(settings.backend_name, settings.backend_tables)
    _take_backend_defaults(settings)
    return settings


def _apply_file(settings: Settings, path: Path) -> None:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    settings.source = str(path)
    unknown = set(doc) - {"app", "queue", "queues"}
    if unknown:
        raise ConfigError(f"{_where(path)}: unknown key {sorted(unknown)[0]!r} (expected app, [queue], [queues])")
    if "app" in doc:
        settings.app = _string("app", doc["app"])
    queue = _table("queue", doc.get("queue", {}))
    scalars = {k: v for k, v in queue.items() if not isinstance(v, dict)}
    _apply(settings, scalars, f"{_where(path)}: queue")
    tables = {k: v for k, v in queue.items() if isinstance(v, dict)}
    for name, spec in _table("queue.adapters", tables.pop("adapters", {})).items():
        spec = _table(f"queue.adapters.{name}", spec)
        if set(spec) != {"class"}:
            raise ConfigError(f"queue.adapters.{name}: expected exactly one key, 'class'")
        settings.adapters[name] = _string(f"queue.adapters.{name}.class", spec["class"])
    settings.backend_tables = tables
    for name, spec in _table("queues", doc.get("queues", {})).items():
        settings.queues[name] = _queue_config(name, _table(f"queues.{name}", spec))


def _where(path: Path) -> str:
    return str(path)


def _select_backend_options(name: str, tables: dict[str, Any]) -> dict[str, Any]:
    aliases = {n for n, target in BUILTIN_ADAPTERS.items() if target == BUILTIN_ADAPTERS.get(name)} | {name}
    options: dict[str, Any] = {}
    for alias in sorted(aliases):
        options.update(tables.get(alias, {}))
    return options


def _take_backend_defaults(settings: Settings) -> None:
    opts = settings.backend_options
    where = f"queue.{settings.backend_name}"
    for key, check in (("priority", check_priority), ("delay", check_delay), ("ttr", check_ttr)):
        if key in opts:
            setattr(settings, key, _checked(f"{where}.{key}", opts.pop(key), check))


def _queue_config(name: str, spec: dict[str, Any]) -> QueueConfig:
    where = f"queues.{name}"
    allowed = {"label", "handler", "workers", "max_attempts", "backoff", "backoff_max"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected one of {sorted(allowed)})")
    workers = {}
    for task, wspec in _table(f"{where}.workers", spec.get("workers", {})).items():
        workers[task] = _worker_config(f"{where}.workers.{task}", _table(f"{where}.workers.{task}", wspec))
    retry: dict[str, Any] = {k: spec[k] for k in ("max_attempts", "backoff", "backoff_max") if k in spec}
    retry_policy(retry, where)  # validate now, build later
    return QueueConfig(
        label=_string(f"{where}.label", spec["label"]) if "label" in spec else None,
        handler=_string(f"{where}.handler", spec["handler"]) if "handler" in spec else None,
        workers=workers,
        retry=retry,
    )


def _worker_config(where: str, spec: dict[str, Any]) -> WorkerConfig:
    unknown = set(spec) - {"class", "function", "method", "max_attempts"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected class/method or function)")
    if ("class" in spec) == ("function" in spec):
        raise ConfigError(f"{where}: give either 'class' (with 'method') or 'function'")
    if "function" in spec and "method" in spec:
        raise ConfigError(f"{where}.method: only with 'class'")
    path = _string(f"{where}.class", spec.get("class") or spec["function"])
    attempts = spec.get("max_attempts")
    if attempts is not None and (type(attempts) is not int or attempts < 1):
        raise ConfigError(f"{where}.max_attempts: must be an integer >= 1, not {attempts!r}")
    method = _string(f"{where}.method", spec.get("method", "run")) if "class" in spec else ""
    return WorkerConfig(path=path, method=method, max_attempts=attempts)


def retry_policy(spec: Mapping[str, Any], where: str, base: RetryPolicy = RetryPolicy()) -> RetryPolicy:
    """Build a :class:`RetryPolicy` from ``max_attempts``/``backoff``/``backoff_max`` keys."""
    attempts = spec.get("max_attempts", base.max_attempts)
    if type(attempts) is not int or attempts < 1:
        raise ConfigError(f"{where}.max_attempts: must be an integer >= 1, not {attempts!r}")
    backoff = _seconds(f"{where}.backoff", spec.get("backoff", base.base))
    cap = _seconds(f"{where}.backoff_max", spec.get("backoff_max", base.cap))
    return RetryPolicy(max_attempts=attempts, base=backoff, cap=cap)


def _apply_env(settings: Settings, env: Mapping[str, str]) -> None:
    names = {
        "backend": "LILQUEUE_BACKEND",
        "app": "LILQUEUE_APP",
        "secret": "LILQUEUE_SECRET",
        "wire": "LILQUEUE_WIRE",
        "prefix": "LILQUEUE_PREFIX",
        "legacy_signatures": "LILQUEUE_LEGACY_SIGNATURES",
    }
    values: dict[str, Any] = {key: env[var] for key, var in names.items() if env.get(var)}
    if "legacy_signatures" in values:
        values["legacy_signatures"] = _env_flag("LILQUEUE_LEGACY_SIGNATURES", values["legacy_signatures"])
    _apply(settings, values, "environment")


def _apply(settings: Settings, values: Mapping[str, Any], where: str) -> None:
    """Apply top-level keys (``backend``, ``secret``, ``wire``, ...) from one source."""
    retry_keys = {"max_attempts", "backoff", "backoff_max"}
    known = {"backend", "app", "secret", "wire", "prefix", "legacy_signatures"} | retry_keys
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (expected one of {sorted(known)})")
        if key == "backend":
            settings.backend = _backend(f"{where}.backend", value)
        elif key == "secret":
            settings.secret = _secret(f"{where}.secret", value)
        elif key == "wire":
            if value not in ("lilqueue", "lilmuckers"):
                raise ConfigError(f"{where}.wire: must be 'lilqueue' or 'lilmuckers', not {value!r}")
            settings.wire = value
        elif key == "legacy_signatures":
            if type(value) is not bool:
                raise ConfigError(f"{where}.legacy_signatures: must be true or false, not {value!r:.60}")
            settings.legacy_signatures = value
        elif key in retry_keys:
            settings.retry = retry_policy({key: value}, where, settings.retry)
        else:
            setattr(settings, key, _string(f"{where}.{key}", value))
    if settings.secret and settings.wire == "lilmuckers":
        raise ConfigError(f"{where}: 'secret' cannot be used with wire = 'lilmuckers' (that format has no signature)")


def _backend(where: str, value: Any) -> str:
    text = _string(where, value).strip()
    if not text:
        raise ConfigError(f"{where}: must not be empty")
    return text


def _secret(where: str, value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value or None
    return _string(where, value).encode("utf-8") or None


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, not {type(value).__name__} {value!r:.60}")
    return str(value)


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table, not {type(value).__name__}")
    return value


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**32:
        raise ConfigError(f"{where}: must be a number of seconds 0 <= s < 2**32, not {value!r:.60}")
    return float(value)


def _env_flag(name: str, value: str) -> bool:
    flags = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    try:
        return flags[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name}: must be true or false, not {value!r:.60}") from None


def _checked(where: str, value: Any, check: Any) -> Any:
    try:
        return check(value)
    except LilqueueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def import_path(path: str, where: str) -> Any:
    """Import ``"package.module:attr"`` (or ``package.module.attr``); ConfigError naming ``where``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: {path!r} is not an import path like 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: {module_name!r} has no attribute {attr!r}") from None
    return obj
