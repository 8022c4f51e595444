"""The ``lilqueue`` command. Every option has a ``LILQUEUE_*`` environment variable."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import click

from lilqueue.adapters.base import QueueStats
from lilqueue.app import App
from lilqueue.config import import_path
from lilqueue.errors import ConfigError, LilqueueError, TaskError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
LOG_FORMATS = ("text", "json")


class Context:
    """What the group's options say; the App is built when a command needs it."""

    def __init__(self, config: str | None, app_path: str | None, backend: str | None) -> None:
        self.config, self.app_path, self.backend = config, app_path, backend
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = load_app(self.config, self.app_path, self.backend)
        return self._app


def load_app(config: str | None, app_path: str | None, backend: str | None) -> App:
    """The App named by ``--app`` (or the config's ``app``), else one built from the config.

    ``--config`` and ``--backend`` are exported as LILQUEUE_CONFIG / LILQUEUE_BACKEND
    first, so an App the user's module builds with ``lilqueue.App()`` sees them too.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if config:
        os.environ["LILQUEUE_CONFIG"] = config
    if backend:
        os.environ["LILQUEUE_BACKEND"] = backend
    from lilqueue.config import load_settings

    settings = load_settings()
    path = app_path or settings.app
    if not path:
        return App(settings=settings)
    obj = import_path(path, "--app" if app_path else "app")
    if callable(obj) and not isinstance(obj, App):
        obj = _call_factory(path, obj)
    if not isinstance(obj, App):
        raise ConfigError(f"--app {path!r} is a {type(obj).__name__}, not a lilqueue.App")
    return obj


def _call_factory(path: str, factory: Callable[[], object]) -> object:
    """``--app module:make_app``: call it with no arguments for the App."""
    try:
        return factory()
    except (LilqueueError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # the user's code (sys.exit too), or not a factory at all
        raise ConfigError(
            f"--app {path!r} is not a lilqueue.App, and calling it as a factory with no arguments "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc


class UsageProblem(click.ClickException):
    """A configuration or usage error (a bad key, URL, queue name or task): exit 2."""

    exit_code = 2


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn lilqueue errors into a one-line message: exit 2 for a configuration or usage
    error (ConfigError, TaskError), 1 for anything else (e.g. an unreachable backend)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, TaskError) as exc:
            raise UsageProblem(f"{type(exc).__name__}: {exc}") from exc
        except LilqueueError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
    return wrapper


class AliasGroup(click.Group):
    """Accepts the seed's flags: ``lilqueue [OPTIONS] --watch Q [WATCH OPTIONS]`` is ``watch Q``."""

    ALIASES: ClassVar[dict[str, str]] = {"--watch": "watch", "--send": "send", "--list": "list"}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            flag, eq, value = arg.partition("=")
            if flag in self.ALIASES:
                args = [*args[:i], self.ALIASES[flag], *([value] if eq else []), *args[i + 1 :]]
                break
            if not arg.startswith("-") or arg == "--":
                break
        return super().parse_args(ctx, args)


@click.group(cls=AliasGroup, context_settings=CONTEXT, invoke_without_command=True)
@click.option(
    "--config",
    "config",
    metavar="PATH",
    envvar="LILQUEUE_CONFIG",
    help="Config file [default: ./lilqueue.toml; env LILQUEUE_CONFIG].",
)
@click.option(
    "--app",
    "app_path",
    metavar="MODULE:ATTR",
    envvar="LILQUEUE_APP",
    help="Where queues and workers are registered [env LILQUEUE_APP].",
)
@click.option("--backend", metavar="URL", envvar="LILQUEUE_BACKEND", help="Backend URL or name [env LILQUEUE_BACKEND].")
@click.version_option(package_name="lilqueue")
@click.pass_context
def main(
    ctx: click.Context,
    config: str | None,
    app_path: str | None,
    backend: str | None,
) -> None:
    """lilqueue: run workers, send tasks and inspect queues on any backend.

    The seed's flags work too: --watch QUEUES, --send Q:T:M, --list.
    """
    ctx.obj = Context(config, app_path, backend)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))  # fmt: skip
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the record's structured fields (queue, task_id, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


@main.command()
@click.argument("queues", default="all")
@click.option(
    "--concurrency",
    "-c",
    envvar="LILQUEUE_CONCURRENCY",
    type=click.IntRange(1),
    default=1,
    help="Worker processes [env LILQUEUE_CONCURRENCY].",
)
@click.option(
    "--threads",
    envvar="LILQUEUE_THREADS",
    type=click.IntRange(1),
    default=1,
    help="Runner threads per process, for I/O-bound workers [env LILQUEUE_THREADS].",
)
@click.option(
    "--max-tasks",
    envvar="LILQUEUE_MAX_TASKS",
    type=click.IntRange(1),
    help="Replace a worker process after N tasks [env LILQUEUE_MAX_TASKS].",
)
@click.option(
    "--max-memory",
    envvar="LILQUEUE_MAX_MEMORY",
    type=click.FloatRange(1),
    metavar="MB",
    help="Replace a worker process past MB of RSS [env LILQUEUE_MAX_MEMORY].",
)
@click.option(
    "--burst", envvar="LILQUEUE_BURST", is_flag=True, help="Exit 0 once no watched task is ready [env LILQUEUE_BURST]."
)
@click.option(
    "--grace",
    envvar="LILQUEUE_GRACE",
    type=click.FloatRange(0),
    default=30.0,
    metavar="SECONDS",
    help="On SIGTERM, how long running tasks may take to finish [env LILQUEUE_GRACE].",
)
@click.option(
    "--auto-touch",
    envvar="LILQUEUE_AUTO_TOUCH",
    is_flag=True,
    help="Touch running tasks every ttr/2: slow tasks keep their lease, hung ones too [env LILQUEUE_AUTO_TOUCH].",
)
@click.option(
    "--reconnect-for",
    envvar="LILQUEUE_RECONNECT_FOR",
    type=click.FloatRange(0),
    default=300.0,
    metavar="SECONDS",
    help="Give up (exit 1) after the backend is gone this long [env LILQUEUE_RECONNECT_FOR].",
)
@click.option(
    "--log-level",
    envvar="LILQUEUE_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    help="[env LILQUEUE_LOG_LEVEL]",
)
@click.option(
    "--log-format",
    envvar="LILQUEUE_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS),
    default="text",
    help="[env LILQUEUE_LOG_FORMAT]",
)
@click.pass_obj
@fail_cleanly
def watch(obj: Context, queues: str, log_level: str = "info", log_format: str = "text", **options: Any) -> None:
    """Run workers on QUEUES: 'all' or a comma list.

    A supervisor process runs --concurrency worker processes, replaces any whose task
    runs past its ttr without touching (the TTR watchdog), recycles them at --max-tasks
    or --max-memory, and restarts crashed ones.
    """  # fmt: skip
    _configure_logging(log_level, log_format)
    obj.app.check_backend()  # a bad URL or option stops here, with exit 2, not in every worker
    from lilqueue.supervisor import Supervisor

    sys.exit(Supervisor(obj.app, queues, **options).run())


@main.command()
@click.argument("spec", metavar="QUEUE:TASK:MESSAGE")
@click.option("--priority", type=click.IntRange(0, 2**32 - 1), help="Lower runs first.")
@click.option("--delay", type=click.FloatRange(0), help="Seconds before it is ready.")
@click.option("--ttr", type=click.IntRange(1), help="Seconds it may run.")
@click.pass_obj
@fail_cleanly
def send(
    obj: Context, spec: str, priority: int | None = None, delay: float | None = None, ttr: int | None = None
) -> None:
    """Add task TASK to QUEUE with data {"message": MESSAGE}; MESSAGE may contain ':'."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise click.BadParameter(f"expected QUEUE:TASK:MESSAGE, got {spec!r}", param_hint="QUEUE:TASK:MESSAGE")
    queue, name, message = parts
    app = obj.app
    task = app.create_task(name, {"message": message})
    if priority is not None:
        task.set_priority(priority)
    if delay is not None:
        task.set_delay(delay)
    if ttr is not None:
        task.set_ttr(ttr)
    task_id = app.add_task(queue, task)
    click.echo(f"sent {name!r} to {queue!r} as {task_id}")


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@fail_cleanly
def list_queues(obj: Context, as_json: bool = False) -> None:
    """The declared queues, their labels and workers."""
    queues = obj.app.queues
    rows: dict[str, dict[str, Any]] = {name: {"label": q.label, "handler": _qualname(type(q)), "workers": {
        task: _worker_name(spec.target, spec.method) for task, spec in q.workers.items()}}
        for name, q in queues.items()}  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no queues declared (use --app, or [queues] in lilqueue.toml)")
    for name, row in rows.items():
        click.echo(f"{name}" + (f"  ({row['label']})" if row["label"] else ""))
        for task, target in row["workers"].items():
            click.echo(f"  {task} -> {target}")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _worker_name(target: Any, method: str) -> str:
    return _qualname(target) + (f".{method}" if method else "")


@main.command()
@click.argument("queues", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@fail_cleanly
def stats(obj: Context, queues: str | None = None, as_json: bool = False) -> None:
    """Ready, delayed, reserved and held counts per queue (unknown where the backend cannot tell)."""
    app = obj.app
    names = _names(queues) if queues and queues != "all" else list(app.queues)
    result = {name: _handler(app, name).stats() for name in names}
    if as_json:
        click.echo(json.dumps({name: s.as_dict() for name, s in result.items()}, indent=2))
        return
    if not names:
        click.echo("no queues declared; name them: lilqueue stats QUEUE[,QUEUE]")
        return
    width = max(len(n) for n in names)
    click.echo(f"{'queue':<{width}}  {'ready':>8} {'delayed':>8} {'reserved':>8} {'held':>8}")
    for name, s in result.items():
        cells = " ".join(f"{_count(v, s):>8}" for v in s.as_dict().values())
        click.echo(f"{_printable(name):<{width}}  {cells}")
    if any(s.approximate for s in result.values()):
        click.echo("~ approximate: the backend only estimates these counts")


def _count(value: int | None, s: QueueStats) -> str:
    if value is None:
        return "unknown"
    return f"~{value}" if s.approximate else str(value)


def _names(queues: str) -> list[str]:
    return [n.strip() for n in queues.split(",") if n.strip()]


@main.command()
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1, 2**31 - 1), default=100, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@fail_cleanly
def held(obj: Context, queue: str, limit: int = 100, as_json: bool = False) -> None:
    """The held tasks of QUEUE, with id, name, reason and when."""
    tasks = _handler(obj.app, queue).held(limit)
    if as_json:
        click.echo(_json([t.as_dict() for t in tasks]))
        return
    if not tasks:
        click.echo(f"no held tasks in {queue!r}")
    for t in tasks:
        name = _printable(t.task) if t.task is not None else f"<not a task: {t.body[:60]!r}>"
        click.echo(f"{_printable(t.id)}  {name}  held {_when(t.held_at)}")
        for line in (t.reason or "no reason given").rstrip().splitlines():
            click.echo(f"    {_printable(line)}")


def _when(held_at: float | None) -> str:
    try:
        return dt.datetime.fromtimestamp(held_at).isoformat(sep=" ", timespec="seconds") if held_at else "unknown"
    except (OverflowError, OSError, ValueError):
        return f"unknown ({held_at!r})"


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _printable(text: str) -> str:
    """``text`` with control characters, line separators and lone surrogates escaped,
    so a value from a queue can neither forge a line nor stop the listing."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def _json(value: object) -> str:
    """Indented JSON where it can be; compact where nesting is too deep for the indenter."""
    try:
        return json.dumps(value, indent=2, default=str)
    except RecursionError:
        return json.dumps(value, default=str)


def _handler(app: App, queue: str) -> Any:
    """The declared handler, or an ad-hoc one for an undeclared queue (operators may not have --app)."""
    from lilqueue.handler import QueueHandler

    declared = app.queues.get(queue)
    if declared is not None:
        return declared
    problem = app.queue_name_problem(queue)
    if problem is not None:
        raise ConfigError(f"queue {queue!r}: {problem}")
    return QueueHandler(app, queue)


@main.command()
@click.argument("queue")
@click.argument("count", type=click.IntRange(1, 2**31 - 1), default=1)
@click.option("--id", "task_id", help="Kick only this task.")
@click.pass_obj
@fail_cleanly
def kick(obj: Context, queue: str, count: int = 1, task_id: str | None = None) -> None:
    """Make COUNT held tasks of QUEUE (or the one with --id) ready again."""
    handler = _handler(obj.app, queue)
    if task_id is not None:
        if not handler.kick_id(task_id):
            raise click.ClickException(f"no held task {task_id!r} in {queue!r}")
        click.echo(f"kicked {task_id}")
    else:
        click.echo(f"kicked {handler.kick(count)}")


@main.command()
@click.argument("queue")
@click.option("--id", "task_id", required=True, help="The task to remove.")
@click.pass_obj
@fail_cleanly
def delete(obj: Context, queue: str, task_id: str) -> None:
    """Remove one task from QUEUE."""
    if not _handler(obj.app, queue).delete(task_id):
        raise click.ClickException(f"no task {task_id!r} in {queue!r} (or it is running)")
    click.echo(f"deleted {task_id}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@fail_cleanly
def capabilities(obj: Context, as_json: bool = False) -> None:
    """What the configured backend does natively, emulates, or cannot do."""
    app = obj.app
    caps = app.capabilities
    if as_json:
        rows = {name: {"level": s.level, "how": s.how} for name, s in caps.rows()}
        click.echo(
            json.dumps({"backend": app.settings.backend_name, "durable": caps.durable, "features": rows}, indent=2)
        )
        return
    click.echo(f"backend: {app.settings.backend_name}" + ("" if caps.durable else "  (not durable)"))
    for name, s in caps.rows():
        click.echo(f"  {name:<17} {s.level:<9} {s.how}".rstrip())
    if caps.notes:
        click.echo(f"  note: {caps.notes}")


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point for tests: ``run(["stats", "--json"])``."""
    main.main(args=list(argv) if argv is not None else None, prog_name="lilqueue")
