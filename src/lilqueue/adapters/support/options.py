"""Option values for adapters: one validator per kind, each error naming its key.

Values come from a ``[queue.<backend>]`` table (TOML types) or a URL's query (text), so
numbers are read from either. Every backend takes the same two timeouts, with the
same defaults: ``connect_timeout`` (seconds to open a connection) and ``io_timeout``
(seconds one request waits for its reply; a blocking reserve waits its own time on top).
"""

from __future__ import annotations

import math
from typing import Any

from lilqueue.errors import ConfigError

CONNECT_TIMEOUT = 3.0
IO_TIMEOUT = 5.0


def seconds(where: str, value: Any, *, most: float | None = None) -> float:
    """A finite number of seconds above 0 (at most ``most``): NaN, infinities, 0,
    negatives, booleans and text that is not a number raise ConfigError naming ``where``."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if math.isfinite(number) and number > 0 and (most is None or number <= most):
        return number
    limit = "" if most is None else f" and at most {most:g}"
    raise ConfigError(f"{where}: must be a finite number of seconds above 0{limit}, not {value!r:.60}")
