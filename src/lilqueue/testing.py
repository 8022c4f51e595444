"""The conformance suite: lilqueue's definition of a correct adapter.

Every adapter, built in or third party, runs the same tests; a test is skipped only
where the adapter's :class:`~lilqueue.Capabilities` declare the feature ``none``.
Subclass :class:`ConformanceSuite` in a test module and give it the backend URL::

    import pytest
    from lilqueue.testing import ConformanceSuite

    class TestMyBackend(ConformanceSuite):
        @pytest.fixture
        def backend_url(self) -> str:
            return "mybackend://127.0.0.1:1234"

Each test uses queues with fresh random names, so a shared server needs no cleanup.
Requires pytest.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lilqueue import wire
from lilqueue.adapters import create_adapter
from lilqueue.adapters.base import Adapter, Capabilities, Job
from lilqueue.app import App
from lilqueue.config import load_settings
from lilqueue.errors import ConfigError, TaskError
from lilqueue.handler import QueueHandler
from lilqueue.task import Task

#: how long the suite waits for anything a backend should do "promptly", in seconds
PATIENCE = 10.0


def fresh_name(stem: str = "q") -> str:
    """A queue name no other test uses."""
    return f"lq-{stem}-{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"condition not met within {timeout}s")


def reserve_until(adapter: Adapter, queues: list[str], timeout: float = PATIENCE) -> Job:
    """Reserve from ``queues`` (looping over short waits); fail the test if nothing comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = adapter.reserve(queues, min(1.0, max(deadline - time.monotonic(), 0.0)))
        if job is not None:
            return job
    pytest.fail(f"nothing reserved from {queues} within {timeout}s")


class ConformanceSuite:
    """The tests every adapter passes. Override the ``backend_url`` fixture."""

    @pytest.fixture
    def backend_url(self) -> str:
        raise NotImplementedError("override the backend_url fixture")

    @pytest.fixture
    def app(self, backend_url: str) -> Iterator[App]:
        app = App(settings=load_settings(backend=backend_url, env={}))
        yield app
        app.close()

    @pytest.fixture
    def caps(self, app: App) -> Capabilities:
        return app.capabilities

    @pytest.fixture
    def queue(self, app: App) -> QueueHandler:
        return app.queue(fresh_name(), max_attempts=3, backoff=0)

    @pytest.fixture
    def other(self, app: App) -> Iterator[Adapter]:
        """A second, independent connection to the same backend."""
        adapter = create_adapter(app.settings)
        yield adapter
        adapter.close()

    @staticmethod
    def needs(caps: Capabilities, *features: str) -> None:
        for feature in features:
            if getattr(caps, feature).level == "none":
                pytest.skip(f"the backend declares {feature}: none")

    @staticmethod
    def drain(app: App, queue: QueueHandler) -> int:
        return app.watch([queue.name], burst=True, install_signal_handlers=False)

    @staticmethod
    def drain_until(app: App, queue: QueueHandler, done: Callable[[], Any], timeout: float = PATIENCE) -> None:
        """Run burst workers until ``done()``; for backends where "ready" shows up late."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"queue {queue.name} not drained within {timeout}s")
            app.watch([queue.name], burst=True, install_signal_handlers=False)
            time.sleep(0.05)

    # -- the basics --------------------------------------------------------------

    def test_roundtrip(self, app: App, queue: QueueHandler) -> None:
        seen: list[Task] = []
        queue.worker("echo")(seen.append)
        data = {"to": "a@example.com", "text": "héllo ✓", "n": [1, 2.5, None, True]}
        task_id = queue.send("echo", data, context={"store": "fr"})
        assert isinstance(task_id, str) and task_id
        self.drain_until(app, queue, lambda: seen)
        (task,) = seen
        assert (task.name, task.data, task.context) == ("echo", data, {"store": "fr"})
        assert task.id == task_id and task.attempts == 1 and task.queue is queue

    def test_nothing_ready_returns_none(self, app: App, queue: QueueHandler) -> None:
        assert app.adapter.reserve([queue.backend_name], 0) is None

    def test_priority_order(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "priority")
        order: list[int] = []
        queue.worker("p")(lambda t: order.append(t.data["p"]))
        # low, high, normal, low, high bands; within a band, sent in order, as a banded backend keeps it
        for p in (1000, 0, 500, 2000, 10):
            queue.send("p", {"p": p}, priority=p)
        wait_for(lambda: queue.stats().ready in (None, 5))
        self.drain_until(app, queue, lambda: len(order) == 5)
        assert order == sorted(order)

    def test_fifo_within_priority(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "fifo")
        order: list[int] = []
        queue.worker("f")(lambda t: order.append(t.data["i"]))
        for i in range(8):
            queue.send("f", {"i": i}, priority=100)
        self.drain_until(app, queue, lambda: len(order) == 8)
        assert order == list(range(8))

    def test_reserve_across_queues(self, app: App, caps: Capabilities) -> None:
        names = [fresh_name(s) for s in "abc"]
        seen: list[str] = []
        for name in names:
            app.queue(name).worker("w")(lambda t: seen.append(t.data["q"]))
        for name in names:
            app.get_queue(name).send("w", {"q": name})
        deadline = time.monotonic() + PATIENCE
        while len(seen) < 3 and time.monotonic() < deadline:
            app.watch(names, burst=True, install_signal_handlers=False)
        assert sorted(seen) == sorted(names)

    def test_blocking_reserve_wakes_for_a_new_task(self, app: App, queue: QueueHandler, other: Adapter) -> None:
        got: list[Job | None] = []
        waiter = threading.Thread(target=lambda: got.append(other.reserve([queue.backend_name], PATIENCE)))
        waiter.start()
        time.sleep(0.3)
        queue.send("w", {"x": 1})
        waiter.join(PATIENCE + 5)
        assert got and got[0] is not None
        other.delete(got[0])

    # -- delay, ttr, touch -------------------------------------------------------

    def test_delay(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "delay")
        started = time.monotonic()
        queue.send("d", {}, delay=2)
        assert app.adapter.reserve([queue.backend_name], 0.5) is None
        job = reserve_until(app.adapter, [queue.backend_name])
        assert time.monotonic() - started >= 1.5
        app.adapter.delete(job)

    def test_ttr_lapse_redelivers(self, app: App, queue: QueueHandler, other: Adapter, caps: Capabilities) -> None:
        self.needs(caps, "ttr")
        task_id = queue.send("t", {}, ttr=1)
        first = reserve_until(app.adapter, [queue.backend_name])
        assert first.id == task_id and first.deliveries == 1
        second = reserve_until(other, [queue.backend_name])  # the first worker "died"
        assert second.id == task_id and second.deliveries == 2
        other.delete(second)

    def test_attempts_after_ttr_lapse(self, app: App, queue: QueueHandler, other: Adapter, caps: Capabilities) -> None:
        self.needs(caps, "ttr")
        seen: list[int] = []
        queue.worker("t")(lambda t: seen.append(t.attempts))
        queue.send("t", {}, ttr=1)
        reserve_until(other, [queue.backend_name])  # taken, never finished
        self.drain_until(app, queue, lambda: seen)
        assert seen == [2]

    def test_unfinished_counts_runs_that_reached_no_outcome(self, app: App, queue: QueueHandler) -> None:
        """A worker that dies leaves a run with no outcome; a retry settles it (and so would a
        hold or a kick): ``unfinished`` is what the runner holds a task on."""
        queue.send("t", {}, ttr=1)
        dying = create_adapter(app.settings)
        first = reserve_until(dying, [queue.backend_name])
        assert (first.deliveries, first.unfinished) == (1, 0)
        dying.close()  # the worker died mid-task
        second = reserve_until(app.adapter, [queue.backend_name])
        assert (second.id, second.deliveries, second.unfinished) == (first.id, 2, 1)
        app.adapter.release(second, priority=second.priority, delay=0)  # an outcome: retry
        third = reserve_until(app.adapter, [queue.backend_name])
        assert (third.deliveries, third.unfinished) == (3, 0)
        app.adapter.delete(third)

    def test_hold_and_kick_settle_unfinished_runs(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "hold", "kick")
        queue.send("t", {}, ttr=1)
        dying = create_adapter(app.settings)
        reserve_until(dying, [queue.backend_name])
        dying.close()
        job = reserve_until(app.adapter, [queue.backend_name])
        assert job.unfinished == 1
        app.adapter.bury(job, reason="its runs never finished")
        assert wait_for(lambda: queue.kick(1))
        kicked = reserve_until(app.adapter, [queue.backend_name])
        assert kicked.unfinished == 0
        app.adapter.delete(kicked)

    def test_unreserve_does_not_count_a_delivery(self, app: App, queue: QueueHandler) -> None:
        queue.send("t", {})
        job = reserve_until(app.adapter, [queue.backend_name])
        app.adapter.unreserve(job)  # a stopping worker hands back what it never started
        again = reserve_until(app.adapter, [queue.backend_name])
        assert (again.id, again.deliveries, again.unfinished) == (job.id, 1, 0)
        app.adapter.delete(again)

    @pytest.mark.parametrize("name", ["new\nline", "nul\x00", "tab\tname", "lone\udc80", "x" * 100_000])
    def test_queue_names_the_backend_cannot_carry_are_refused(self, app: App, name: str) -> None:
        with pytest.raises(ConfigError, match="cannot declare queue"):
            app.queue(name)
        with pytest.raises(TaskError, match="cannot add a task to queue"):
            app.add_task(name, Task("t"))

    def test_touch_extends_the_lease(self, app: App, queue: QueueHandler, other: Adapter, caps: Capabilities) -> None:
        self.needs(caps, "ttr", "touch")
        queue.send("t", {}, ttr=2)
        job = reserve_until(app.adapter, [queue.backend_name])
        for _ in range(3):
            time.sleep(1.0)
            app.adapter.touch(job)
        assert other.reserve([queue.backend_name], 0.5) is None  # 3.5 s > ttr, still ours
        app.adapter.delete(job)

    def test_touch_from_a_worker(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "touch")
        queue.worker("slow")(lambda t: t.touch())
        queue.send("slow", {})
        self.drain(app, queue)
        assert queue.stats().held in (0, None)

    # -- outcomes ------------------------------------------------------------------

    def test_retry_with_delay(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "retry", "delay")
        attempts: list[int] = []

        def flaky(task: Task) -> None:
            attempts.append(task.attempts)
            if task.attempts == 1:
                task.retry(delay=2)

        queue.worker("r")(flaky)
        queue.send("r", {})
        self.drain_until(app, queue, lambda: attempts)
        assert attempts == [1]
        assert app.adapter.reserve([queue.backend_name], 0.5) is None  # not before its delay
        self.drain_until(app, queue, lambda: len(attempts) == 2)
        assert attempts == [1, 2]

    def test_exceptions_retry_then_hold_with_the_error(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "retry", "hold")
        attempts: list[int] = []

        def broken(task: Task) -> None:
            attempts.append(task.attempts)
            raise ValueError(f"boom on attempt {task.attempts}")

        queue.worker("b")(broken)
        queue.send("b", {"k": "v"})
        self.drain_until(app, queue, lambda: len(attempts) == 3)
        assert attempts == [1, 2, 3]
        held = wait_for(lambda: queue.held())
        assert len(held) == 1 and held[0].task == "b" and held[0].data == {"k": "v"}
        assert "ValueError: boom on attempt 3" in (held[0].reason or "")
        assert "failed 3 of 3 attempts" in (held[0].reason or "")

    def test_attempts_count_up_to_success(self, app: App, caps: Capabilities) -> None:
        self.needs(caps, "retry")
        queue: QueueHandler = app.queue(fresh_name(), max_attempts=5, backoff=0)
        attempts: list[int] = []

        def third_time_lucky(task: Task) -> None:
            attempts.append(task.attempts)
            if task.attempts < 3:
                raise RuntimeError("not yet")

        queue.worker("x")(third_time_lucky)
        queue.send("x", {})
        self.drain_until(app, queue, lambda: len(attempts) == 3)
        time.sleep(0.2)
        self.drain(app, queue)
        assert attempts == [1, 2, 3]

    def test_hold_with_reason_then_kick(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "hold")
        runs: list[int] = []

        def picky(task: Task) -> None:
            runs.append(task.attempts)
            if len(runs) == 1:
                task.hold("address bounced")

        queue.worker("h")(picky)
        task_id = queue.send("h", {"to": "x@y"})
        self.drain_until(app, queue, lambda: runs)
        (held,) = wait_for(lambda: queue.held())
        assert (held.task, held.data, held.reason) == ("h", {"to": "x@y"}, "address bounced")
        assert held.held_at is not None and abs(held.held_at - time.time()) < 120
        self.drain(app, queue)
        assert runs == [1]  # a held task does not run again by itself
        if caps.kick.level == "none":
            return
        assert queue.kick(5) == 1
        self.drain_until(app, queue, lambda: len(runs) == 2)
        assert queue.held() == [] and task_id

    def test_kick_one_by_id(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "hold", "kick")
        queue.worker("h")(lambda t: t.hold(f"hold {t.data['i']}") if t.attempts == 1 else None)
        for i in range(3):
            queue.send("h", {"i": i})
        self.drain_until(app, queue, lambda: len(queue.held()) == 3)
        held = queue.held()
        target = held[1]
        assert queue.kick_id(target.id)
        assert not queue.kick_id(target.id)
        assert not queue.kick_id("no-such-id")
        remaining = wait_for(lambda: (h := queue.held()) and len(h) == 2 and h)
        assert target.id not in {h.id for h in remaining}

    def test_delete_by_id(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "delay")
        task_id = queue.send("d", {}, delay=30)
        assert queue.delete(task_id)
        assert not queue.delete(task_id)
        if caps.stats.level != "none":
            wait_for(lambda: queue.stats().delayed in (0, None))

    # -- stats and peek ----------------------------------------------------------------

    def test_stats(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "stats")
        queue.send("s", {})
        queue.send("s", {})
        if caps.delay.level != "none":
            queue.send("s", {}, delay=60)
        stats = wait_for(lambda: (s := queue.stats()) and s.ready == 2 and s)
        assert stats.reserved in (0, None)
        if caps.delay.level != "none":
            assert stats.delayed in (1, None)
        if caps.hold.level != "none":
            queue.worker("s")(lambda t: t.hold("for stats"))
            self.drain(app, queue)
            wait_for(lambda: (s := queue.stats()) and s.held in (2, None) and s.ready in (0, None))

    def test_peek(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        try:
            assert queue.peek("ready") is None
        except Exception as exc:
            if type(exc).__name__ == "UnsupportedError":
                pytest.skip("the backend cannot peek")
            raise
        task_id = queue.send("p", {"i": 1}, priority=5)
        peeked = wait_for(lambda: queue.peek("ready"))
        assert (peeked.id, peeked.name, peeked.data) == (task_id, "p", {"i": 1})
        if caps.delay.level != "none":
            later = queue.send("p", {"i": 2}, delay=60)
            assert wait_for(lambda: queue.peek("delayed")).id == later

    # -- bad input: held with a reason, never run, never a crashed worker ---------------

    def test_garbage_is_held_with_a_reason(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "hold")
        ran: list[Task] = []
        queue.worker("echo")(ran.append)
        bodies = [
            *(b"\xff\xfe not utf-8", b"{not json", b"[1, 2, 3]", b'"text"', b'{"no": "task"}'),
            *(b'{"v": 99, "task": "echo"}', b'{"v": 1, "task": 5}', b'{"v": 1, "task": "echo", "data": 7}'),
        ]
        for body in bodies:
            app.adapter.put(queue.backend_name, body, priority=1024, delay=0, ttr=60)
        queue.send("echo", {"ok": True})
        self.drain_until(app, queue, lambda: ran and len(queue.held(50)) == len(bodies))
        assert [t.data for t in ran] == [{"ok": True}]
        held = queue.held(50)
        assert all(h.reason for h in held)
        assert {h.body for h in held} == set(bodies)

    def test_unknown_task_is_held(self, app: App, queue: QueueHandler, caps: Capabilities) -> None:
        self.needs(caps, "hold")
        queue.send("nobody-handles-this", {"a": 1})
        self.drain_until(app, queue, lambda: queue.held())
        (held,) = queue.held()
        assert held.task == "nobody-handles-this"
        assert "no worker registered for task 'nobody-handles-this'" in (held.reason or "")

    def test_lilmuckers_payload_runs(self, app: App, queue: QueueHandler) -> None:
        seen: list[Task] = []
        queue.worker("test")(seen.append)
        body = b'{"task":"test","store":"default","data":{"message":"hello"}}'
        app.adapter.put(queue.backend_name, body, priority=1024, delay=0, ttr=60)
        self.drain_until(app, queue, lambda: seen)
        assert (seen[0].data, seen[0].context) == ({"message": "hello"}, {"store": "default"})

    def test_signatures(self, backend_url: str, caps: Capabilities) -> None:
        self.needs(caps, "hold")
        signed = App(settings=load_settings(backend=backend_url, secret="s3cret", env={}))
        plain = App(settings=load_settings(backend=backend_url, env={}))
        name = fresh_name("sig")
        ran: list[dict[str, Any]] = []
        q: QueueHandler = signed.queue(name, max_attempts=1)
        q.worker("w")(lambda t: ran.append(t.data))
        q.send("w", {"who": "signed"})
        plain.queue(name).send("w", {"who": "unsigned"})
        forged = wire.sign(plain.encode(Task("w", {"who": "forged"}))[0], b"wrong key")
        plain.adapter.put(q.backend_name, forged, priority=1024, delay=0, ttr=60)
        try:
            self.drain_until(signed, q, lambda: ran and len(q.held()) == 2)
            assert ran == [{"who": "signed"}]
            reasons = sorted(h.reason or "" for h in q.held())
            assert "bad signature" in reasons[0] and "missing signature" in reasons[1]
        finally:
            signed.close()
            plain.close()
