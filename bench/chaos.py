"""The chaos run (not part of CI): tasks through `--concurrency 2` while we break things.

    python -m bench.chaos --backend redis --tasks 100000

A producer adds TASKS tasks while a supervised worker pool (`lilqueue watch chaos
--concurrency 2`) runs them; every KILL_EVERY seconds one worker process is killed
with SIGKILL, and half-way through the backend server is restarted (Redis with its
append-only file, beanstalkd with its binlog; SQLite has no server to restart). Then
it prints how many tasks were added, completed, lost (must be 0) and run twice, each
double run with its reason.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from tests.servers import Server, binary, free_port

import lilqueue
from lilqueue.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def start_backend(kind: str, tmp: Path, stack: ExitStack) -> tuple[str, Server | None]:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/chaos.db", None
    port = free_port()
    if kind == "redis":
        argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp)]  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
    elif kind == "beanstalkd":
        (tmp / "binlog").mkdir()
        argv = [binary("beanstalkd"), "-l", "127.0.0.1", "-p", str(port), "-b", str(tmp / "binlog")]
        url = f"beanstalkd://127.0.0.1:{port}"
    else:
        raise SystemExit(f"unknown backend {kind!r}")
    server = stack.enter_context(Server(argv, port))
    return url, server


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Producer(threading.Thread):
    def __init__(self, url: str, total: int) -> None:
        super().__init__(daemon=True)
        self.url, self.total = url, total
        self.added = 0
        self.retries = 0

    def run(self) -> None:
        app = lilqueue.App(settings=load_settings(backend=self.url, env={}))
        queue = app.queue("chaos")
        i = 0
        while i < self.total:
            try:
                queue.send("work", {"i": i}, ttr=5)
            except lilqueue.BackendConnectionError:
                self.retries += 1  # not acknowledged: not counted as added; send it again
                app.reset_adapter()
                time.sleep(0.2)
                continue
            i += 1
            self.added = i
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "redis", "beanstalkd"])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lilqueue-chaos-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        url, server = start_backend(args.backend, tmp, stack)
        log = tmp / "runs.log"
        env = {**os.environ, "CHAOS_LOG": str(log), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "lilqueue", "--app", "bench.chaos_app:app", "--backend", url,
                "watch", "chaos", "--concurrency", str(args.concurrency), "--log-level", "error"]  # fmt: skip
        pool = subprocess.Popen(argv, cwd=ROOT, env=env)
        producer = Producer(url, args.tasks)
        started = time.monotonic()
        producer.start()
        kills: list[tuple[float, int]] = []
        restarted = server is None
        next_kill = time.monotonic() + args.kill_every
        last_progress, last_done = time.monotonic(), 0
        while True:
            time.sleep(0.2)
            done = len(set(_runs(log)))
            if done != last_done:
                last_progress, last_done = time.monotonic(), done
            if not producer.is_alive() and done >= producer.added:
                break
            if time.monotonic() - last_progress > 90:
                print("no progress for 90 s: stopping", file=sys.stderr)
                break
            if not restarted and done >= args.tasks // 2:
                print(f"[{time.monotonic() - started:6.1f}s] restarting {args.backend}", file=sys.stderr)
                server.restart()  # type: ignore[union-attr]
                restarted = True
            if time.monotonic() >= next_kill and done < args.tasks * 0.95:
                pids = children(pool.pid)
                if pids:
                    victim = random.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    kills.append((time.monotonic(), victim))
                next_kill = time.monotonic() + args.kill_every
        elapsed = time.monotonic() - started
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
        report(args, producer, log, kills, elapsed)


def _runs(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[0]) for line in log.read_text().splitlines() if line.strip()]


def _reason(runs: list[tuple[int, str]], killed: set[int]) -> str:
    """Why task ``i`` ran more than once, from its runs' (pid, envelope id)."""
    if len({envelope for _, envelope in runs}) > 1:
        return "added twice: the producer re-sent an add whose reply was lost in the restart (not a double run)"
    if runs[0][0] in killed:
        return "its worker was killed (SIGKILL) after running it, before the delete reached the backend"
    return "run twice by live workers (a bug)"


def report(
    args: argparse.Namespace, producer: Producer, log: Path, kills: list[tuple[float, int]], elapsed: float
) -> None:
    runs: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        i, pid, envelope = line.split()
        runs[int(i)].append((int(pid), envelope))
    killed = {pid for _, pid in kills}
    twice = {i: r for i, r in runs.items() if len(r) > 1}
    reasons = collections.Counter(_reason(r, killed) for r in twice.values())
    lost = [i for i in range(producer.added) if i not in runs]
    restart = "no server to restart" if args.backend == "sqlite" else "backend restarted once"
    print(f"chaos run on {args.backend}: {elapsed:.0f} s, --concurrency {args.concurrency}, "
          f"{len(kills)} worker processes killed, {restart}")  # fmt: skip
    print(f"  added:     {producer.added} (add_task retried {producer.retries} times while the backend was down)")
    print(f"  completed: {len(runs)}")
    print(f"  lost:      {len(lost)}" + (f"  e.g. {lost[:10]}" if lost else ""))
    print(f"  run twice: {len(twice)}")
    for reason, count in reasons.items():
        print(f"    {count}: {reason}")


if __name__ == "__main__":
    main()
