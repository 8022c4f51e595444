"""Backend adapters, found by name: built in, from ``[queue.adapters]``, or by entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from lilqueue.adapters.base import Adapter
from lilqueue.config import BUILTIN_ADAPTERS, EXTRAS, Settings, import_path
from lilqueue.errors import ConfigError

ENTRY_POINT_GROUP = "lilqueue.adapters"


def adapter_class(settings: Settings) -> type[Adapter]:
    """The adapter class for ``settings.backend``; ConfigError naming the key if none fits."""
    name = settings.backend_name
    if name in settings.adapters:
        return _check(import_path(settings.adapters[name], f"queue.adapters.{name}.class"), name)
    if name in BUILTIN_ADAPTERS:
        return _builtin(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return _check(ep.load(), name)
        except ImportError as exc:
            raise ConfigError(
                f"queue.backend: adapter {name!r} (entry point {ep.value}) failed to import: {exc}"
            ) from exc
    known = sorted(set(BUILTIN_ADAPTERS) | set(settings.adapters))
    raise ConfigError(f"queue.backend: unknown backend {name!r} in {settings.backend!r} (known: {', '.join(known)})")


def _builtin(name: str) -> type[Adapter]:
    module, _, attr = BUILTIN_ADAPTERS[name].partition(":")
    try:
        mod = __import__(module, fromlist=[attr])
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigError(f"queue.backend: the {name!r} adapter is not part of this lilqueue yet") from None
        extra = EXTRAS.get(name, name)
        raise ConfigError(
            f"queue.backend: backend {name!r} needs {exc.name!r}: pip install 'lilqueue[{extra}]'"
        ) from exc
    return _check(getattr(mod, attr), name)


def _check(obj: Any, name: str) -> type[Adapter]:
    if not (isinstance(obj, type) and issubclass(obj, Adapter)):
        raise ConfigError(f"queue.adapters.{name}.class: {obj!r} is not a lilqueue Adapter subclass")
    return obj


def create_adapter(settings: Settings) -> Adapter:
    """Build the configured adapter (one per process and thread)."""
    cls = adapter_class(settings)
    url = settings.backend if "://" in settings.backend else None
    return cls.from_config(url, dict(settings.backend_options))
