"""Durations and timestamps. Event time is int64 nanoseconds since the Unix epoch (UTC)."""

from __future__ import annotations

import datetime as _dt
import re
from typing import overload

import numpy as np

NS = 1
US = 1_000
MS = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

MIN_TIME = np.iinfo(np.int64).min
MAX_TIME = np.iinfo(np.int64).max


def duration(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0,
             milliseconds: float = 0, microseconds: float = 0, nanoseconds: float = 0) -> int:
    """Return a duration in nanoseconds; `duration(minutes=10) == 600_000_000_000`."""
    total = (days * DAY + hours * HOUR + minutes * MINUTE + seconds * SECOND + milliseconds * MS
             + microseconds * US + nanoseconds)
    return int(round(total))


_UNITS = {"ns": NS, "us": US, "ms": MS, "s": SECOND, "min": MINUTE, "h": HOUR, "d": DAY}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s|min|h|d)?\s*")


@overload
def to_ns(value: None, what: str = ...) -> None: ...
@overload
def to_ns(value: int | float | str | _dt.timedelta, what: str = ...) -> int: ...
def to_ns(value: int | float | str | _dt.timedelta | None, what: str = "duration") -> int | None:
    """Nanoseconds from an int (ns), a float (seconds), a timedelta or text such as "500ms", "2.5 s", "3h".

    >>> to_ns(1.5), to_ns("500ms"), to_ns("3h") == 3 * HOUR
    (1500000000, 500000000, True)
    """
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return int(round(value.total_seconds() * SECOND))
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if not m:
            from .errors import PipelineError

            raise PipelineError(None, f"cannot read {what} {value!r}",
                                "use seconds (2.5), a timedelta or text like '500ms', '10s', '3h'")
        return int(round(float(m.group(1)) * _UNITS[m.group(2) or "s"]))
    if isinstance(value, float):
        return int(round(value * SECOND))
    return int(value)


def format_ns(t: int) -> str:
    """ISO-8601 UTC text for an event time, e.g. '2015-02-04T17:50:00Z'."""
    if t in (MIN_TIME, MAX_TIME):
        return "-inf" if t == MIN_TIME else "+inf"
    text = str(np.datetime64(int(t), "ns"))
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return text + "Z"


def human_duration(ns: int) -> str:
    for unit, size in (("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", SECOND), ("ms", MS), ("us", US)):
        if ns >= size and ns % size == 0:
            return f"{ns // size} {unit}"
    return f"{ns} ns"


def now_ns() -> int:
    import time

    return time.time_ns()
