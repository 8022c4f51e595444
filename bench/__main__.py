"""`python -m bench [--backends sqlite,beanstalkd,...] [-n 10000]`: print and save the table."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import sys
from pathlib import Path
from typing import Any

from bench import backends
from bench.harness import run_backend

RESULTS = Path(__file__).resolve().parent / "results"
SLOW = {"sqs": 300}  # moto answers ~70 requests/s: fewer tasks


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(backends.__path__))


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "cores": os.cpu_count(), "cpu": cpu, "system": platform.platform()}


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'backend':<11} {'implementation':<44} {'put/s':>9} {'process/s':>10} "
    head += f"{'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['backend']:<11} {r['impl'][:44]:<44} {fmt(r.get('put_per_s')):>9} {fmt(r.get('process_per_s')):>10} "
            f"{fmt(r.get('p50_ms')):>7} {fmt(r.get('p99_ms')):>7} {fmt(r.get('worker_rss_mb')):>7}"
        )
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        lil = next(r for r in mine if r["impl"] == "lilqueue")
        for other in mine:
            if other is lil or not other.get("process_per_s"):
                continue
            parts = [f"process {lil['process_per_s'] / other['process_per_s']:.0%}"]
            if other.get("put_per_s"):
                parts.append(f"put {lil['put_per_s'] / other['put_per_s']:.0%}")
            lines.append(f"{backend}: lilqueue vs {other['impl']}: " + ", ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--backends", default=",".join(available()), help="comma list (default: all)")
    parser.add_argument("-n", type=int, default=10_000, help="tasks per run")
    parser.add_argument("--latency", type=int, default=300, help="one-at-a-time tasks for p50/p99")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.backends.split(","):
        module = importlib.import_module(f"bench.backends.{name}")
        n = min(args.n, SLOW.get(name, args.n))
        print(f"… {name}: {n} tasks", file=sys.stderr, flush=True)
        rows.extend(run_backend(module, n, min(args.latency, n)))
    print(table(rows))
    print()
    print("\n".join(ratios(rows)))
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        when = dt.datetime.now(dt.UTC)
        record = {"date": when.isoformat(timespec="seconds"), "machine": machine(), "n": args.n, "rows": rows}
        path = RESULTS / f"{when:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nsaved {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
