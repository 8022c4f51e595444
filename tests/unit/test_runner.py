"""The runner's outcome logic, on the in-memory backend (a real adapter, not a mock)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import lilqueue
from lilqueue.config import load_settings

from .conftest import drain


def test_return_is_success(app: lilqueue.App) -> None:
    q = app.queue("q")
    q.worker("w")(lambda t: None)
    q.send("w")
    assert drain(app) == 1
    assert q.stats().as_dict() == {"ready": 0, "delayed": 0, "reserved": 0, "held": 0}


def test_explicit_success(app: lilqueue.App) -> None:
    q = app.queue("q")
    q.worker("w")(lambda t: t.success())
    q.send("w")
    drain(app)
    assert q.stats().held == 0 and q.stats().ready == 0


def test_retry_without_delay_uses_the_queue_backoff(app: lilqueue.App) -> None:
    q = app.queue("q", backoff=30)
    q.worker("w")(lambda t: t.retry())
    q.send("w")
    drain(app)
    assert q.stats().delayed == 1


def test_exception_backoff_grows_and_then_holds(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=2, backoff=0)
    failures: list[tuple[int, bool, str]] = []
    app.on_failure(lambda task, exc, tb, will_retry: failures.append((task.attempts, will_retry, tb)))

    @q.worker("w")
    def boom(task: lilqueue.Task) -> None:
        raise KeyError("missing")

    q.send("w")
    drain(app)
    assert [(a, r) for a, r, _ in failures] == [(1, True), (2, False)]
    assert "Traceback" in failures[0][2] and "KeyError: 'missing'" in failures[0][2]
    (held,) = q.held()
    assert "failed 2 of 2 attempts" in (held.reason or "") and "KeyError" in (held.reason or "")


def test_per_worker_max_attempts_overrides_the_queue(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=5, backoff=0)
    runs: list[int] = []

    @q.worker("w", max_attempts=1)
    def boom(task: lilqueue.Task) -> None:
        runs.append(task.attempts)
        raise RuntimeError("no")

    q.send("w")
    drain(app)
    assert runs == [1] and len(q.held()) == 1


def test_first_outcome_wins_and_a_second_is_an_error(app: lilqueue.App) -> None:
    q = app.queue("q")
    errors: list[Exception] = []

    @q.worker("w")
    def twice(task: lilqueue.Task) -> None:
        task.hold("first")
        try:
            task.success()
        except lilqueue.TaskError as exc:
            errors.append(exc)

    q.send("w")
    drain(app)
    assert errors and q.held()[0].reason == "first"


def test_exception_after_an_explicit_outcome_keeps_the_outcome(app: lilqueue.App) -> None:
    q = app.queue("q")

    @q.worker("w")
    def hold_then_raise(task: lilqueue.Task) -> None:
        task.hold("decided")
        raise RuntimeError("late")

    q.send("w")
    drain(app)
    assert [h.reason for h in q.held()] == ["decided"]


def test_outcomes_outside_a_worker_are_errors(app: lilqueue.App) -> None:
    task = app.create_task("w")
    for call in (task.success, task.retry, task.hold, task.touch):
        with pytest.raises(lilqueue.TaskError):
            call()


def test_class_worker_is_a_per_process_singleton(app: lilqueue.App) -> None:
    instances: list[Any] = []

    class Counter(lilqueue.Worker):
        def __init__(self) -> None:
            instances.append(self)
            self.seen = 0

        def count(self, task: lilqueue.Task) -> None:
            self.seen += 1

    q = app.queue("q")
    q.add_worker("c", Counter, method="count")
    for _ in range(3):
        q.send("c")
    drain(app)
    assert len(instances) == 1 and instances[0].seen == 3


def test_add_worker_checks_the_method(app: lilqueue.App) -> None:
    with pytest.raises(lilqueue.TaskError, match="no method 'nope'"):
        app.queue("q").add_worker("x", lilqueue.Worker, method="nope")


def test_context_is_captured_and_reapplied(app: lilqueue.App) -> None:
    current = {"store": "default"}
    seen: list[tuple[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def apply(context: dict[str, Any]) -> Iterator[None]:
        before = dict(current)
        current.update(context)
        try:
            yield
        finally:
            current.clear()
            current.update(before)

    app.context_provider(lambda: dict(current), apply)
    q = app.queue("q")
    q.worker("w")(lambda t: seen.append((current["store"], t.context)))
    current["store"] = "fr"
    q.send("w")
    q.send("w", context={"store": "de"})  # explicit context wins over the captured one
    current["store"] = "admin"
    drain(app)
    assert seen == [("fr", {"store": "fr"}), ("de", {"store": "de"})]
    assert current == {"store": "admin"}


def test_before_and_after_hooks(app: lilqueue.App) -> None:
    events: list[str] = []
    app.before_task(lambda t: events.append(f"before {t.name}"))
    app.after_task(lambda t: events.append(f"after {t.name} {t.outcome.kind if t.outcome else None}"))
    q = app.queue("q")
    q.worker("w")(lambda t: events.append("run"))
    q.send("w")
    drain(app)
    assert events == ["before w", "run", "after w success"]


def test_a_raising_failure_hook_does_not_stop_the_worker(app: lilqueue.App) -> None:
    def bad_hook(*args: Any) -> None:
        raise RuntimeError("hook broke")

    app.on_failure(bad_hook)
    q = app.queue("q", max_attempts=1)
    q.worker("w")(lambda t: 1 / 0)
    q.send("w")
    q.send("w")
    assert drain(app) == 2 and len(q.held()) == 2


def test_max_tasks_stops_the_runner(app: lilqueue.App) -> None:
    q = app.queue("q")
    q.worker("w")(lambda t: None)
    for _ in range(5):
        q.send("w")
    assert app.watch(["q"], max_tasks=2, install_signal_handlers=False) == 2
    assert q.stats().ready == 3


def test_watch_all_and_undeclared_queues(app: lilqueue.App) -> None:
    with pytest.raises(lilqueue.ConfigError, match="no queues are declared"):
        app.watch("all", burst=True)
    app.queue("a")
    with pytest.raises(lilqueue.ConfigError, match="'b' is not declared"):
        app.watch("a,b", burst=True)


@pytest.mark.parametrize(
    ("setter", "value"),
    [("set_priority", -1), ("set_priority", 2**32), ("set_priority", 1.5), ("set_delay", -1), ("set_ttr", 0)],
)
def test_bad_priority_delay_ttr_raise_before_sending(app: lilqueue.App, setter: str, value: Any) -> None:
    task = app.create_task("w")
    with pytest.raises(lilqueue.TaskError):
        getattr(task, setter)(value)


def test_bad_data_raises_before_sending(app: lilqueue.App) -> None:
    q = app.queue("q")
    with pytest.raises(lilqueue.TaskError, match="JSON-serialisable"):
        q.send("w", {"when": object()})
    with pytest.raises(lilqueue.TaskError, match="dict"):
        app.create_task("w", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert q.stats().ready == 0


def test_chained_setters_reach_the_backend(app: lilqueue.App) -> None:
    q = app.queue("q")
    task = app.create_task("w", {"a": 1}).set_priority(5).set_delay(0).set_ttr(9)
    task_id = q.add_task(task)
    job = app.adapter.reserve(["q"], 0)
    assert job is not None and (job.id, job.priority, job.ttr) == (task_id, 5, 9)


def test_prefix_maps_queue_names(app: lilqueue.App) -> None:
    prefixed = lilqueue.App(settings=load_settings(backend=app.settings.backend, prefix="shop-", env={}))
    q = prefixed.queue("mail")
    q.send("w")
    assert app.adapter.reserve(["shop-mail"], 0) is not None
