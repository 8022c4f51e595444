"""Print the README's capability table from each adapter's Capabilities (the one source).

`python scripts/capability_table.py` prints it; `--check README.md` fails if the README's
copy (between the capability-table markers) differs; `--write README.md` updates it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lilqueue.adapters import adapter_class
from lilqueue.adapters.base import FEATURES
from lilqueue.config import BUILTIN_ADAPTERS, load_settings
from lilqueue.errors import ConfigError

BEGIN, END = "<!-- capability-table:begin -->", "<!-- capability-table:end -->"
MARK = {"native": "native", "emulated": "emulated", "none": "—"}


def table() -> str:
    names = [n for n in dict.fromkeys(BUILTIN_ADAPTERS) if n != "amazonsqs"]
    rows = []
    for name in names:
        try:
            caps = adapter_class(load_settings(backend=name, env={})).capabilities
        except ConfigError:
            continue  # not built yet
        cells = [MARK[getattr(caps, f).level] for f in FEATURES]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if caps.durable else 'no'} |")
    head = "| backend | " + " | ".join(f.replace("_", " ") for f in FEATURES) + " | durable |"
    rule = "|---" * (len(FEATURES) + 2) + "|"
    notes = ["", "How each emulation works (from the same data):", ""]
    for name in names:
        try:
            caps = adapter_class(load_settings(backend=name, env={})).capabilities
        except ConfigError:
            continue
        hows = [f"{f.replace('_', ' ')}: {s.how}" for f, s in caps.rows() if s.level != "native" and s.how]
        if hows:
            notes.append(f"- **{name}**: " + "; ".join(hows) + ".")
    return "\n".join([head, rule, *rows, *notes])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", type=Path)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    generated = f"{BEGIN}\n{table()}\n{END}"
    path = args.check or args.write
    if path is None:
        print(generated)
        return 0
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    if args.check:
        if text[start:end] != generated:
            print(f"{path}: the capability table is stale; run scripts/capability_table.py --write {path}")
            return 1
        return 0
    path.write_text(text[:start] + generated + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
