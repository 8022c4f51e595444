"""Profile lilqueue's worker hot path on one backend: ``python -m bench.profile BACKEND [-n N]``.

Starts the backend's bench server, enqueues N no-op tasks, then drains them in this
process (the runner in burst mode, as ``bench.worker`` does), first plain to time it
(wall and CPU microseconds per task), then under cProfile; prints the functions with
the most own time, per task. ``--payload BYTES`` pads each task's data.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import time
import uuid

import lilqueue
from lilqueue.config import load_settings


def fill(app: lilqueue.App, name: str, n: int, payload: int) -> lilqueue.QueueHandler:
    queue = app.queue(name)
    queue.worker("noop")(lambda task: None)
    pad = "x" * payload
    for i in range(n):
        queue.send("noop", {"i": i, "pad": pad} if payload else {"i": i})
    return queue


def drain(app: lilqueue.App, queue: lilqueue.QueueHandler) -> tuple[int, float, float]:
    app.adapter.stats(queue.backend_name)
    wall, cpu = time.perf_counter(), time.process_time()
    done = app.watch([queue.name], burst=True, install_signal_handlers=False)
    return done, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("backend")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--payload", type=int, default=0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    module = importlib.import_module(f"bench.backends.{args.backend}")
    with module.server() as url:
        app = lilqueue.App(settings=load_settings(backend=url, env={}))
        queue = fill(app, f"prof-{uuid.uuid4().hex[:8]}", args.n, args.payload)
        done, wall, cpu = drain(app, queue)
        print(
            f"plain: {done} tasks, {done / wall:,.0f}/s, {wall / done * 1e6:.1f} us wall, {cpu / done * 1e6:.1f} us CPU"
        )
        queue = fill(app, f"prof-{uuid.uuid4().hex[:8]}", args.n, args.payload)
        profiler = cProfile.Profile()
        profiler.enable()
        done, wall, cpu = drain(app, queue)
        profiler.disable()
        print(f"profiled: {done} tasks, {wall / done * 1e6:.1f} us wall per task")
        app.close()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
