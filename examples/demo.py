"""`make demo`: lilqueue's main job on the embedded SQLite default, start to finish.

Declares a queue whose workers succeed, fail once then succeed, and hold; adds
tasks; runs a burst worker over them; prints what happened, the queue stats and
the held tasks with their reasons. Uses ./demo/lilqueue.db, made fresh each run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import lilqueue

HERE = Path("demo")
shutil.rmtree(HERE, ignore_errors=True)
app = lilqueue.App(backend=f"sqlite:///{HERE}/lilqueue.db")


class Mailer(lilqueue.QueueHandler):
    """Shared by every worker of the 'mail' queue in one process."""

    label = "Outgoing mail"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: list[str] = []


mail = app.queue("mail", handler=Mailer, backoff=0.5)  # retry after 0.5 s, 1 s, ...


@mail.worker("send")
def send(task: lilqueue.Task) -> None:
    """Succeeds: the task is deleted."""
    assert isinstance(task.queue, Mailer)
    task.queue.sent.append(task.data["to"])
    say(f"send      #{task.id}: mailed {task.data['to']} (store {task.context.get('store')})")


@mail.worker("flaky")
def flaky(task: lilqueue.Task) -> None:
    """Fails on its first attempt; lilqueue retries it with backoff."""
    if task.attempts == 1:
        say(f"flaky     #{task.id}: attempt {task.attempts} raises ConnectionError")
        raise ConnectionError("SMTP server said 421, try again later")
    say(f"flaky     #{task.id}: attempt {task.attempts} succeeds")


@mail.worker("bounce")
def bounce(task: lilqueue.Task) -> None:
    """Holds the task for a human to look at."""
    say(f"bounce    #{task.id}: holding it")
    task.hold(f"mailbox {task.data['to']} does not exist")


def say(text: str) -> None:
    print(f"  {text}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    print(f"lilqueue demo on {app.settings.backend}\n")
    print("adding tasks:")
    for to in ("ana@example.com", "ben@example.com"):
        say(f"send   -> {mail.send('send', {'to': to}, context={'store': 'fr'})}")
    say(f"flaky  -> {mail.send('flaky', {'to': 'cy@example.com'})}")
    say(f"bounce -> {mail.send('bounce', {'to': 'nobody@example.invalid'}, priority=10)}  (priority 10 runs first)")
    say(f"send   -> {mail.send('send', {'to': 'later@example.com'}, delay=1)}  (delayed 1 s)")
    mail.app.adapter.put("mail", b"this is not JSON", priority=1024, delay=0, ttr=60)
    say("garbage written straight into the queue")
    print(f"\nstats before: {mail.stats().as_dict()}\n")

    print("running a burst worker (it stops when nothing is ready):")
    ran = app.watch(["mail"], burst=True)
    print(f"  -> ran {ran} tasks; the retry and the delayed task are not ready yet\n")
    time.sleep(1.1)
    print("a second burst, once they are due:")
    ran = app.watch(["mail"], burst=True)
    print(f"  -> ran {ran} tasks; mailed {mail.sent}\n")

    print(f"stats after:  {mail.stats().as_dict()}\n")
    print("held tasks (lilqueue held mail):")
    for held in mail.held():
        when = time.strftime("%H:%M:%S", time.localtime(held.held_at or 0))
        print(f"  #{held.id} {held.task or '<garbage>'} held at {when}: {held.reason}")
    print("\nnext: `.venv/bin/lilqueue --backend sqlite:///demo/lilqueue.db stats mail` (or held mail, kick mail 2)")
    app.close()


if __name__ == "__main__":
    main()
