"""Durations and timestamps. Event time is int64 nanoseconds since the Unix epoch (UTC).

**The duration contract.** Every option that takes a duration (window sizes, `max_delay`, `lateness`,
`every=`, timeouts, `checkpoint_every`) accepts the same forms, converted by `to_ns`:

- text with a unit: `"10s"`, `"5min"`, `"1h30min"`, `"500ms"`, `"2.5 s"` (units `ns us ms s m/min h d w`
  and their long names);
- a float: seconds (`2.5`);
- a `datetime.timedelta` (or `numpy.timedelta64`, `pandas.Timedelta`);
- `ms.duration(minutes=10)`, a `Duration`: an int of nanoseconds that carries its unit.

A bare `int` is refused, because nothing says whether `5` is seconds or nanoseconds (before this contract it was
nanoseconds: `lateness=5` was 5 ns). Zero needs no unit.

**Event-time columns** are int64 nanoseconds; `event_times` converts seconds, milliseconds or microseconds
(`time_unit=`), floats, `datetime64` of any unit and datetime/`pandas.Timestamp` objects, vectorised, and
`suspect_time_unit` finds integer columns that look like epoch seconds or milliseconds taken for nanoseconds.
"""

from __future__ import annotations

import datetime as _dt
import re
import warnings
from typing import Any, overload

import numpy as np

from .errors import PipelineError, suggest

NS = 1
US = 1_000
MS = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

MIN_TIME = np.iinfo(np.int64).min
MAX_TIME = np.iinfo(np.int64).max


class Duration(int):
    """A duration in nanoseconds that says so: what `ms.duration(...)` returns.

    It is an `int` (add it to event times, compare it, divide by it) that duration options accept, where a bare
    int is refused. Arithmetic between durations, and scaling by a number, keeps it a `Duration`; a
    timestamp plus a duration is a plain int (a timestamp).

    >>> m = duration(minutes=1)
    >>> m, isinstance(2 * m, Duration), isinstance(-m, Duration), isinstance(m + 5, Duration)
    (60000000000, True, True, False)
    """

    __slots__ = ()

    def __neg__(self) -> Duration:
        return Duration(-int(self))

    def __pos__(self) -> Duration:
        return self

    def __abs__(self) -> Duration:
        return Duration(abs(int(self)))

    def __add__(self, other: Any) -> Any:
        out = int.__add__(self, other)
        return Duration(out) if isinstance(other, Duration) and out is not NotImplemented else out

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        out = int.__sub__(self, other)
        return Duration(out) if isinstance(other, Duration) and out is not NotImplemented else out

    def __rsub__(self, other: Any) -> Any:
        out = int.__rsub__(self, other)
        return Duration(out) if isinstance(other, Duration) and out is not NotImplemented else out

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, bool) or not isinstance(other, (int, float, np.integer, np.floating)):
            return NotImplemented
        if isinstance(other, Duration):
            return int(self) * int(other)
        return Duration(round(int(self) * other))

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> Any:
        if isinstance(other, Duration):
            return int(self) // int(other)          # how many times: a count
        out = int.__floordiv__(self, other)
        return Duration(out) if out is not NotImplemented else out

    def __mod__(self, other: Any) -> Any:
        out = int.__mod__(self, other)
        return Duration(out) if isinstance(other, Duration) and out is not NotImplemented else out

    def __reduce__(self) -> tuple[Any, ...]:
        return (Duration, (int(self),))


def duration(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0,
             milliseconds: float = 0, microseconds: float = 0, nanoseconds: float = 0) -> Duration:
    """A duration in nanoseconds, as a `Duration` that duration options accept.

    >>> duration(minutes=10)
    600000000000
    >>> duration(hours=1, minutes=30) == to_ns("1h30min")
    True
    """
    total = (days * DAY + hours * HOUR + minutes * MINUTE + seconds * SECOND + milliseconds * MS
             + microseconds * US + nanoseconds)
    return Duration(int(round(total)))


_UNITS = {
    "ns": NS, "nanosecond": NS, "nanoseconds": NS,
    "us": US, "µs": US, "microsecond": US, "microseconds": US,
    "ms": MS, "millisecond": MS, "milliseconds": MS,
    "s": SECOND, "sec": SECOND, "secs": SECOND, "second": SECOND, "seconds": SECOND,
    "m": MINUTE, "min": MINUTE, "mins": MINUTE, "minute": MINUTE, "minutes": MINUTE,
    "h": HOUR, "hr": HOUR, "hrs": HOUR, "hour": HOUR, "hours": HOUR,
    "d": DAY, "day": DAY, "days": DAY,
    "w": WEEK, "week": WEEK, "weeks": WEEK,
}
_PART = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]+)", re.IGNORECASE)
_KEYWORD_UNITS = ("days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds")


def _parse_text(text: str) -> int | None:
    body = text.strip()
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    total, pos = 0.0, 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            return None
        unit = _UNITS.get(m.group(2).lower()) if m.group(2) != "M" else None
        if unit is None:
            return None
        total += float(m.group(1)) * unit
        pos = m.end()
    if pos == 0 or body[pos:].strip():
        return None
    return sign * int(round(total))


def _refuse(operator: str | None, problem: str, fix: str) -> PipelineError:
    return PipelineError(operator, problem, fix)


def _int_fix(what: str, n: int) -> str:
    return (f"write {what}={n}.0 or {what}='{n}s' (seconds), a timedelta or ms.duration(...); "
            f"'{n}ns' if you meant nanoseconds")


@overload
def to_ns(value: None, what: str = ..., *, operator: str | None = ..., fix: str | None = ...) -> None: ...
@overload
def to_ns(value: Any, what: str = ..., *, operator: str | None = ..., fix: str | None = ...) -> int: ...
def to_ns(value: Any, what: str = "duration", *, operator: str | None = None,
          fix: str | None = None) -> int | None:
    """Nanoseconds (a plain int) from a duration in any of the contract's forms; None stays None.

    `what` names the option in messages; `fix` replaces the advice given for a bare int (`{n}` is the int).

    >>> to_ns(1.5), to_ns("500ms"), to_ns("3h") == 3 * HOUR, to_ns(_dt.timedelta(minutes=5)) == 5 * MINUTE
    (1500000000, 500000000, True, True)
    >>> to_ns(duration(seconds=2)), to_ns("1h30min") == to_ns("90 minutes"), to_ns(0)
    (2000000000, True, 0)
    >>> to_ns(5, "lateness")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    microstream.core.errors.PipelineError: lateness=5 has no unit (a bare int could be seconds or nanoseconds)
      fix: write lateness=5.0 or lateness='5s' (seconds), a timedelta or ms.duration(...); '5ns' if you meant ...
    """
    if value is None:
        return None
    if isinstance(value, Duration):
        return int(value)
    if isinstance(value, _dt.timedelta):
        as_np = getattr(value, "to_timedelta64", None)  # pandas.Timedelta keeps nanoseconds
        if as_np is not None:
            return int(np.asarray(as_np()).astype("timedelta64[ns]").astype(np.int64))
        return (value.days * 86_400 + value.seconds) * SECOND + value.microseconds * US
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            raise _refuse(operator, f"{what} is NaT (not a time)", "give a duration such as '10s'")
        return int(value.astype("timedelta64[ns]").astype(np.int64))
    if isinstance(value, str):
        ns = _parse_text(value)
        if ns is None:
            number = value.strip().lstrip("+-").replace(".", "", 1).isdigit()
            problem = f"{what}={value!r} has no unit" if number else f"cannot read {what}={value!r} as a duration"
            hint = f"write '{value.strip()}s' for seconds" if number else "write it like '500ms', '10s', '5min', '3h'"
            raise _refuse(operator, problem, f"{hint}, or give float seconds or a timedelta")
        return ns
    if isinstance(value, bool):
        raise _refuse(operator, f"{what}={value} is not a duration", "give a duration such as '10s'")
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise _refuse(operator, f"{what}={value} is not a finite duration", "give a duration such as '10s'")
        return int(round(float(value) * SECOND))
    if isinstance(value, (int, np.integer)):
        n = int(value)
        if n == 0:
            return 0
        advice = fix.format(n=n) if fix else _int_fix(what, n)
        raise _refuse(operator, f"{what}={n} has no unit (a bare int could be seconds or nanoseconds)", advice)
    raise _refuse(operator, f"{what}={value!r} ({type(value).__name__}) is not a duration",
                  "give text such as '10s' or '5min', float seconds, a timedelta or ms.duration(...)")


def duration_arg(text: str) -> float:
    """An argparse `type` for command-line durations: `"10s"`, `"5min"`, `"1h"`, or a number of seconds (the
    options say `S` in their help); returns seconds.

    >>> duration_arg("5min"), duration_arg("2.5"), duration_arg("10")
    (300.0, 2.5, 10.0)
    """
    import argparse

    try:
        return float(text)
    except ValueError:
        pass
    ns = _parse_text(text)
    if ns is None:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a duration; write seconds (2.5) or text such "
                                         "as '500ms', '10s', '5min'")
    return ns / SECOND


# -- event-time columns ---------------------------------------------------------------------------------------

TIME_UNITS = {"s": SECOND, "ms": MS, "us": US, "ns": NS}

# Real sensor data is stamped between these years; a column whose values would land there if they counted
# seconds (or ms, or us) rather than nanoseconds is almost surely in that unit.
_REAL_FROM = 631_152_000 * SECOND    # 1990-01-01
_REAL_TO = 4_102_444_800 * SECOND    # 2100-01-01


def check_time_unit(unit: str | None, operator: str | None) -> None:
    if unit is not None and unit not in TIME_UNITS:
        close = suggest(str(unit), list(TIME_UNITS))
        raise _refuse(operator, f"time_unit={unit!r} is not a unit of event time",
                      f"use one of {list(TIME_UNITS)}" + (f"; did you mean '{close}'?" if close else ""))


def suspect_time_unit(values: np.ndarray) -> str | None:
    """The unit ('s', 'ms' or 'us') that integer event times taken for nanoseconds seem to be counted in, or None.

    Values that, read in a coarser unit, all fall between 1990 and 2100 are suspect, unless they are round
    relative nanosecond times as tests and simulations make them: whole seconds in the band of epoch seconds
    (0.6 to 4.1 s after 1970), whole minutes in that of milliseconds, whole hours in that of microseconds.

    >>> suspect_time_unit(np.array([1_700_000_000, 1_700_000_001])), suspect_time_unit(np.array([1_700_000_000_000]))
    ('s', 'ms')
    >>> suspect_time_unit(np.array([1_700_000_000 * 10**9])), suspect_time_unit(np.array([0, 5 * 10**9]))
    (None, None)
    """
    v = np.asarray(values)
    if v.dtype.kind not in "iu" or len(v) == 0:
        return None
    lo, hi = int(v.min()), int(v.max())
    for unit, round_step in (("s", SECOND), ("ms", MINUTE), ("us", HOUR)):
        f = TIME_UNITS[unit]
        if lo * f >= _REAL_FROM and hi * f < _REAL_TO:
            return None if bool((v % round_step == 0).all()) else unit
    return None


def time_unit_fix(column: str, unit: str) -> str:
    return (f"pass time_unit='{unit}' to convert it (or convert the column to nanoseconds yourself); "
            f"time_unit='ns' if these really are nanoseconds")


def event_times(values: Any, unit: str | None = None) -> np.ndarray:
    """int64 nanoseconds since the epoch from a time column, vectorised.

    Integers and floats count `unit` ('s', 'ms', 'us' or 'ns'; None means 'ns' for integers); `datetime64`
    columns carry their own unit (and naive ones are UTC); objects may be `datetime`s (naive: UTC; aware:
    converted) or `pandas.Timestamp`s. Floats are converted without losing sub-microsecond digits to rounding.

    >>> event_times(np.array([1.5, 2.25]), "s").tolist()
    [1500000000, 2250000000]
    >>> event_times(np.array(["2024-01-01T00:00:01"], "datetime64[s]")).tolist()
    [1704067201000000000]
    >>> event_times(np.array([1_700_000_000_123]), "ms").tolist()
    [1700000000123000000]
    """
    v = np.asarray(values)
    kind = v.dtype.kind
    if kind == "M":
        return v.astype("datetime64[ns]").view(np.int64)
    if kind in "iub":
        factor = TIME_UNITS[unit or "ns"]
        out = v.astype(np.int64, copy=False)
        return out * factor if factor != 1 else out
    if kind == "f":
        factor = TIME_UNITS[unit or "ns"]
        whole = np.floor(v)
        return whole.astype(np.int64) * factor + np.round((v - whole) * factor).astype(np.int64)
    if kind == "O":
        return _objects_to_ns(v)
    raise TypeError(f"cannot read {v.dtype} values as event times")


def _objects_to_ns(v: np.ndarray) -> np.ndarray:
    if len(v) and hasattr(v[0], "tz_convert"):  # pandas Timestamps: pandas converts them, keeping ns and zones
        import pandas as pd

        return pd.to_datetime(v, utc=True).as_unit("ns").asi8.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no explicit representation of timezones": we want UTC
        return v.astype("datetime64[ns]").view(np.int64)


def is_time_like(dtype: np.dtype) -> bool:
    """A dtype `event_times` can read without a unit (datetime64) or with one (integers, floats)."""
    return dtype.kind in "Mifu"


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
