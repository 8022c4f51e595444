"""The runner never crashes, never loops and never drops a task, whatever a task does or is.

On the in-memory backend (a real adapter, not a mock); the same paths run against every
server backend in tests/integration/test_*_hostile.py with real worker processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

import lilqueue
from lilqueue.config import RetryPolicy, load_settings
from lilqueue.errors import ConfigError, TaskError
from lilqueue.runner import Runner

from .conftest import drain


def reason(q: lilqueue.QueueHandler) -> str:
    (held,) = q.held()
    return held.reason or ""


def test_async_def_workers_are_awaited_with_the_same_outcomes(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=2, backoff=0)
    ran: list[tuple[str, int]] = []

    @q.worker("ok")
    async def ok(task: lilqueue.Task) -> None:
        await asyncio.sleep(0)
        ran.append(("ok", task.attempts))

    @q.worker("boom")
    async def boom(task: lilqueue.Task) -> None:
        await asyncio.sleep(0)
        ran.append(("boom", task.attempts))
        raise ValueError("async failure")

    q.send("ok")
    q.send("boom")
    drain(app)
    assert sorted(ran) == [("boom", 1), ("boom", 2), ("ok", 1)]
    assert "failed 2 of 2 attempts" in reason(q) and "ValueError: async failure" in reason(q)


def test_async_class_method_and_hooks(app: lilqueue.App) -> None:
    q = app.queue("q")
    seen: list[str] = []
    app.before_task(lambda t: seen.append("before"))

    class Mailer(lilqueue.Worker):
        async def send(self, task: lilqueue.Task) -> None:
            await asyncio.sleep(0)
            seen.append("sent")
            task.hold("async hold")

    q.add_worker("send", Mailer, method="send")
    q.send("send")
    drain(app)
    assert seen == ["before", "sent"] and reason(q) == "async hold"


def test_explicit_retry_on_the_last_attempt_holds_instead_of_looping(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=3, backoff=0)
    runs: list[int] = []

    @q.worker("poll")
    def poll(task: lilqueue.Task) -> None:
        runs.append(task.attempts)
        task.retry()

    q.send("poll")
    drain(app)
    assert runs == [1, 2, 3]
    assert "retry() asked on attempt 3, and max_attempts is 3" in reason(q)


@pytest.mark.parametrize("attempts", [5000, 10**12, 2**64])
def test_retry_delay_of_a_huge_attempt_count_is_the_cap(attempts: int) -> None:
    assert RetryPolicy(base=1, cap=600).delay(attempts) == 600
    assert RetryPolicy(base=0, cap=600).delay(attempts) == 0
    assert RetryPolicy(base=2**31, cap=2**31).delay(attempts) == 2**31


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, "1", True, 2**40])
def test_backoff_that_is_not_a_number_of_seconds_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="backoff"):
        load_settings(env={}, backoff=value)


def test_a_reason_with_a_lone_surrogate_is_stored_escaped(app: lilqueue.App) -> None:
    q = app.queue("q")
    q.worker("w")(lambda t: t.hold("bad \udc80 byte"))
    q.worker("x")(lambda t: (_ for _ in ()).throw(RuntimeError("msg \ud800")))
    q.send("w")
    drain(app)
    assert reason(q) == "bad \\udc80 byte"
    reason(q).encode("utf-8")


def test_a_retry_that_cannot_be_re_put_is_held_not_looped(app: lilqueue.App) -> None:
    app.settings.wire = "lilmuckers"  # carries only context['store']: the re-put fails to encode
    q = app.queue("q", backoff=0)
    runs: list[int] = []

    @q.worker("w")
    def w(task: lilqueue.Task) -> None:
        runs.append(task.attempts)
        task.context["locale"] = "fr"
        raise RuntimeError("fail")

    q.send("w")
    runner = Runner(app, ["q"], burst=True, install_signal_handlers=False)
    job = app.adapter.reserve(["q"], 0)
    assert job is not None
    runner._release = lambda job, task, delay: (_ for _ in ()).throw(TaskError("cannot re-encode"))  # type: ignore[method-assign]
    runner.process(job)
    assert (
        runs == [1]
        and "could not retry this task (the backend refused it back)" in reason(q)
        and "cannot re-encode" in reason(q)
    )


def test_a_job_whose_runs_never_finished_is_held_without_running(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=3)
    runs: list[int] = []
    q.worker("w")(lambda t: runs.append(t.attempts))
    q.send("w", ttr=7)
    job = app.adapter.reserve(["q"], 0)
    assert job is not None
    job.unfinished = 3
    notes = {(job.queue, job.id): "killed by the watchdog after 7 s"}
    runner = Runner(app, ["q"], install_signal_handlers=False, lapsed_note=lambda q, i: notes.get((q, i)))
    runner.process(job)
    assert runs == []
    text = reason(q)
    assert "ran past its ttr on 3 attempts without an outcome" in text
    assert "last: killed by the watchdog after 7 s" in text and "--auto-touch" in text and "(now 7s)" in text


def test_fewer_unfinished_runs_than_max_attempts_still_run(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=3)
    runs: list[int] = []
    q.worker("w")(lambda t: runs.append(t.attempts))
    q.send("w")
    job = app.adapter.reserve(["q"], 0)
    assert job is not None
    job.unfinished = 2
    Runner(app, ["q"], install_signal_handlers=False).process(job)
    assert runs == [1] and q.held() == []


def test_lilqueue_failing_on_a_job_holds_it_and_the_worker_goes_on(app: lilqueue.App) -> None:
    q = app.queue("q")
    ran: list[str] = []
    q.worker("w")(lambda t: ran.append(t.data["n"]))
    q.send("w", {"n": "first"})
    q.send("w", {"n": "second"})
    runner = Runner(app, ["q"], burst=True, install_signal_handlers=False)
    original = runner._task
    calls = iter([RecursionError("boom"), None])

    def flaky(*args: object) -> object:
        error = next(calls)
        if error is not None:
            raise error
        return original(*args)  # type: ignore[arg-type]

    runner._task = flaky  # type: ignore[method-assign,assignment]
    runner.run()
    assert ran == ["second"] and "lilqueue could not process this task: RecursionError('boom')" in reason(q)


@pytest.mark.parametrize("name", ["all", "a,b", "", " padded", "new\nline", "nul\x00", "lone\udc80"])
def test_queue_names_no_worker_can_watch_are_refused(app: lilqueue.App, name: str) -> None:
    with pytest.raises(ConfigError, match="cannot declare queue"):
        app.queue(name)
    with pytest.raises(TaskError, match="cannot add a task to queue"):
        app.add_task(name, app.create_task("t"))


def test_an_adapter_bug_in_reserve_is_backed_off_from_not_a_crash(app: lilqueue.App) -> None:
    q = app.queue("q")
    ran: list[int] = []
    q.worker("w")(lambda t: ran.append(t.attempts))
    q.send("w")
    broken = app.adapter

    def reserve(*args: object) -> None:
        raise OverflowError("an adapter bug on garbage")

    broken.reserve = reserve  # type: ignore[method-assign,assignment]
    assert drain(app) == 1 and ran == [1]  # reconnected (a fresh adapter) and carried on


def test_a_first_signal_while_stopping_at_a_limit_is_not_a_second_signal(app: lilqueue.App) -> None:
    import signal

    runner = Runner(app, ["q"] if app.queue("q") else [], install_signal_handlers=False)
    runner.stop("max tasks reached (1)")
    runner._on_signal(signal.SIGTERM, None)  # the first signal: no SystemExit
    assert runner.stopping and runner.signalled
    with pytest.raises(SystemExit) as exit:
        runner._on_signal(signal.SIGTERM, None)
    assert exit.value.code == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    "raised", [SystemExit(4), SystemExit(0), KeyboardInterrupt(), asyncio.CancelledError(), GeneratorExit()]
)
def test_whatever_a_worker_raises_is_its_failure_not_the_end_of_the_worker(
    app: lilqueue.App, raised: BaseException
) -> None:
    q = app.queue("q", max_attempts=2, backoff=0)
    q.send("w")
    q.send("ok")
    ran: list[str] = []

    @q.worker("w")
    def w(task: lilqueue.Task) -> None:
        raise raised

    q.worker("ok")(lambda t: ran.append("ok"))
    runner = Runner(app, ["q"], burst=True, install_signal_handlers=True)
    runner.run()
    assert ran == ["ok"] and "failed 2 of 2 attempts" in reason(q) and type(raised).__name__ in reason(q)


def test_async_cancelled_error_is_a_failure(app: lilqueue.App) -> None:
    q = app.queue("q", max_attempts=1)

    @q.worker("w")
    async def w(task: lilqueue.Task) -> None:
        raise asyncio.CancelledError()

    q.send("w")
    drain(app)
    assert "CancelledError" in reason(q)


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_a_generator_worker_is_a_failure_not_a_silent_success(app: lilqueue.App, kind: str) -> None:
    q = app.queue("q", max_attempts=1)
    body: list[int] = []

    def gen(task: lilqueue.Task) -> Iterator[None]:
        body.append(1)
        yield None

    async def agen(task: lilqueue.Task) -> AsyncIterator[None]:
        body.append(1)
        yield None

    q.worker("w")(gen if kind == "generator" else agen)
    q.send("w")
    drain(app)
    assert body == [] and "generator function: its body never ran" in reason(q)


def test_our_own_second_signal_still_stops_the_worker(app: lilqueue.App) -> None:
    import signal

    q = app.queue("q")
    runner = Runner(app, ["q"], burst=True, install_signal_handlers=False)

    @q.worker("w")
    def w(task: lilqueue.Task) -> None:
        runner._on_signal(signal.SIGTERM, None)
        runner._on_signal(signal.SIGTERM, None)  # the second: SystemExit from our handler

    q.send("w")
    with pytest.raises(SystemExit):
        runner.run()


@pytest.mark.parametrize("value", ["yes", 1, float("nan")])
def test_legacy_signatures_must_be_true_or_false(value: object) -> None:
    with pytest.raises(ConfigError, match="legacy_signatures: must be true or false"):
        load_settings(env={}, legacy_signatures=value)
    assert load_settings(env={}, legacy_signatures=False).legacy_signatures is False


@pytest.mark.parametrize("text", ["maybe", "1\n0", "\udc80"])
def test_legacy_signatures_from_the_environment(text: str) -> None:
    with pytest.raises(ConfigError, match="LILQUEUE_LEGACY_SIGNATURES: must be true or false"):
        load_settings(env={"LILQUEUE_LEGACY_SIGNATURES": text})
    assert load_settings(env={"LILQUEUE_LEGACY_SIGNATURES": " Yes "}).legacy_signatures is True
