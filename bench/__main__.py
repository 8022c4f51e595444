"""`python -m bench [--backends sqlite,beanstalkd,...] [-n 10000]`: print and save the table."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import backends
from bench.harness import run_backend

RESULTS = Path(__file__).resolve().parent / "results"
SLOW = {"sqs": 300}  # moto answers ~70 requests/s: fewer tasks
#: the command that prints each server's version
SERVERS = {"beanstalkd": ["beanstalkd", "-v"], "redis": ["redis-server", "--version"], "gearman": ["gearmand", "-V"]}
CLIENTS = ("greenstalk", "redis", "boto3", "moto", "huey", "rq", "celery", "dramatiq")


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


def versions(names: list[str]) -> dict[str, Any]:
    """lilqueue's, the servers' and the client libraries' versions."""
    found: dict[str, Any] = {"lilqueue": metadata.version("lilqueue"), "python": platform.python_version()}
    servers: dict[str, str] = {}
    for name in names:
        if name == "sqlite":
            servers[name] = f"SQLite {sqlite3.sqlite_version}"
        elif name in SERVERS and (binary := shutil.which(SERVERS[name][0]) or _sbin(SERVERS[name][0])):
            done = subprocess.run([binary, *SERVERS[name][1:]], capture_output=True, text=True, timeout=10)
            servers[name] = (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""
    found["servers"] = servers
    clients = {}
    for dist in CLIENTS:
        try:
            clients[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    found["clients"] = clients
    return found


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'backend':<11} {'implementation':<50} {'put/s':>9} {'process/s':>10} "
    head += f"{'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7} {'CPU us':>7}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['backend']:<11} {r['impl'][:50]:<50} {fmt(r.get('put_per_s')):>9} {fmt(r.get('process_per_s')):>10} "
            f"{fmt(r.get('p50_ms')):>7} {fmt(r.get('p99_ms')):>7} {fmt(r.get('worker_rss_mb')):>7} "
            f"{fmt(r.get('worker_cpu_us')):>7}"
        )
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as the README shows it."""
    out = [
        "| backend | implementation | put/s | process/s | p50 ms | p99 ms | worker RSS MB | worker CPU µs/task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["backend"], r["impl"], *(fmt(r.get(k)) for k in ("put_per_s", "process_per_s", "p50_ms", "p99_ms"))]
        out.append("| " + " | ".join([*cells, fmt(r.get("worker_rss_mb")), fmt(r.get("worker_cpu_us"))]) + " |")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """lilqueue's one-process row against every other row of its backend with the same payload."""
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        for lil in (r for r in mine if r["impl"].startswith("lilqueue") and r.get("concurrency", 1) == 1):
            payload = lil.get("payload", 0)
            for other in mine:
                if other is lil or not other.get("process_per_s") or other.get("payload", 0) != payload:
                    continue
                if other["impl"].startswith("lilqueue"):
                    if other.get("concurrency", 1) > 1:
                        scale = other["process_per_s"] / lil["process_per_s"]
                        lines.append(f"{backend}: {other['impl']}: {scale:.2f}x one process")
                    continue
                parts = [f"process {lil['process_per_s'] / other['process_per_s']:.0%}"]
                if other.get("put_per_s"):
                    parts.append(f"put {lil['put_per_s'] / other['put_per_s']:.0%}")
                lines.append(f"{backend}: {lil['impl']} vs {other['impl']}: " + ", ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--backends", default=",".join(available()), help="comma list (default: all)")
    parser.add_argument("-n", type=int, default=10_000, help="tasks per run")
    parser.add_argument("--latency", type=int, default=300, help="one-at-a-time tasks for p50/p99")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes of the scaling row (1: none)")
    parser.add_argument("--payloads", default="1024,65536", help="comma list of payload sizes in bytes ('' for none)")
    parser.add_argument("--payload-n", type=int, default=0, help="tasks per payload row (default: -n)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    payloads = tuple(int(p) for p in args.payloads.split(",") if p)
    names = args.backends.split(",")
    rows: list[dict[str, Any]] = []
    for name in names:
        module = importlib.import_module(f"bench.backends.{name}")
        n = min(args.n, SLOW.get(name, args.n))
        print(f"… {name}: {n} tasks", file=sys.stderr, flush=True)
        payload_n = min(args.payload_n or n, n)
        rows.extend(
            run_backend(
                module, n, min(args.latency, n), concurrency=args.concurrency, payloads=payloads, payload_n=payload_n
            )
        )
    print(table(rows))
    print()
    print("\n".join(ratios(rows)))
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        when = dt.datetime.now(dt.UTC)
        record = {
            "date": when.isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(names),
            "n": args.n,
            "latency_n": args.latency,
            "concurrency": args.concurrency,
            "payloads": list(payloads),
            "rows": rows,
            "ratios": ratios(rows),
            "markdown": markdown(rows),
        }
        path = RESULTS / f"{when:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(f"\nsaved {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
