"""The worker side of a benchmark: a separate process, as in production.

``python -m bench.worker URL QUEUE --burst``: connect, print "ready", wait for a line on
stdin (so that several workers start together), drain the queue (no-op tasks), then
print ``{"processed", "started", "ended", "seconds", "cpu", "peak_rss_mb"}`` as JSON
(``started``/``ended`` are epoch seconds, comparable across processes; ``cpu`` is this
process's user + system CPU seconds while draining).
``python -m bench.worker URL QUEUE --latency N``: print "ready", then for each of N
tasks print the milliseconds from its enqueue (``data["t"]``) to its start.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import lilqueue
from lilqueue.config import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--latency", type=int, default=0)
    args = parser.parse_args()
    app = lilqueue.App(settings=load_settings(backend=args.url, env={}))
    queue = app.queue(args.queue)
    if args.latency:
        latency(app, queue, args.latency)
    else:
        drain(app, queue)


def drain(app: lilqueue.App, queue: lilqueue.QueueHandler) -> None:
    queue.worker("noop")(lambda task: None)
    app.adapter.stats(queue.backend_name)  # connect before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    started, clock, cpu = time.time(), time.perf_counter(), time.process_time()
    processed = app.watch([queue.name], burst=True, install_signal_handlers=False)
    seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
    peak = peak_rss_mb()
    record = {"processed": processed, "started": started, "ended": started + seconds, "seconds": seconds, "cpu": cpu}
    print(json.dumps({**record, "peak_rss_mb": round(peak, 1)}), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which starts afresh at exec.

    (``ru_maxrss`` does not: a child the harness spawned with vfork would report the
    harness's own peak when that was higher.)
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency(app: lilqueue.App, queue: lilqueue.QueueHandler, n: int) -> None:
    def ping(task: lilqueue.Task) -> None:
        sys.stdout.write(f"{(time.time() - task.data['t']) * 1000:.4f}\n")
        sys.stdout.flush()

    queue.worker("ping")(ping)
    app.adapter.stats(queue.backend_name)
    print("ready", flush=True)
    app.watch([queue.name], max_tasks=n, install_signal_handlers=False)


if __name__ == "__main__":
    main()
