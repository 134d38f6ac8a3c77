"""Window specifications: tumbling, sliding and session windows over event time.

Every size, slide, gap and offset is a duration in the one contract of `microstream.core.time.to_ns`: text
(`"10min"`), float seconds, a `timedelta`, `ms.duration(...)`, or (for one duration) unit keywords such as
`minutes=10`. A bare int is refused: `ms.tumbling(10)` would have been 10 nanoseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core.calls import public, user_line
from .core.errors import PipelineError, suggest
from .core.time import Duration, duration, human_duration, to_ns


@dataclass(frozen=True)
class WindowSpec:
    """A window shape. Build one with `tumbling`, `sliding` or `session`."""

    kind: str          # "tumbling" | "sliding" | "session"
    size: int          # ns; for sessions, the gap
    slide: int         # ns; == size for tumbling, 0 for sessions
    offset: int = 0    # ns; shifts window boundaries (e.g. align days to a time zone)

    def describe(self) -> str:
        if self.kind == "tumbling":
            return f"tumbling {human_duration(self.size)}"
        if self.kind == "sliding":
            return f"sliding {human_duration(self.size)} every {human_duration(self.slide)}"
        return f"session gap {human_duration(self.size)}"


_UNIT_KEYWORDS = ("days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds")


def _units(call: str, units: Mapping[str, Any]) -> int | None:
    """Nanoseconds from unit keywords (`minutes=10`), or None when there are none."""
    if not units:
        return None
    for key in units:
        if key not in _UNIT_KEYWORDS:
            close = suggest(key, [*_UNIT_KEYWORDS, *(("offset", "every") if call == "sliding" else ("offset",))])
            raise PipelineError(None, f"ms.{call}() has no option '{key}'{_at()}" +
                                (f"; did you mean {close}=?" if close else ""),
                                ("e.g. ms.sliding('8h', '1h') or ms.sliding(hours=8, every='1h'); "
                                 if call == "sliding" else f"give the duration as text (ms.{call}('10min')) or ")
                                + f"with units: {', '.join(_UNIT_KEYWORDS)}")
        value = units[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(None, f"ms.{call}({key}={value!r}): a unit keyword takes a number",
                                f"e.g. ms.{call}({key}=10)")
    return int(duration(**units))


def _at() -> str:
    line = user_line()
    return f" (at {line})" if line else ""


def _span(call: str, value: Any, units: Mapping[str, Any], what: str) -> int:
    """A positive duration in ns from a positional value or unit keywords, never both."""
    from_units = _units(call, units)
    if value is not None and from_units is not None:
        raise PipelineError(None, f"ms.{call}() got the {what} twice, as {value!r} and as {dict(units)}",
                            f"give one: ms.{call}('10min') or ms.{call}(minutes=10)")
    if value is None and from_units is None:
        raise PipelineError(None, f"ms.{call}() needs a {what}", f"e.g. ms.{call}('10min') or ms.{call}(minutes=10)")
    if isinstance(value, Mapping):  # the older form, sliding({"hours": 8}, ...)
        ns = _units(call, value)
    elif _bare_int(value):
        raise PipelineError(None, f"ms.{call}({value}): the {what} has no unit (a bare int could be seconds or "
                                  "nanoseconds)",
                            f"write ms.{call}(seconds={value}) or ms.{call}('{value}s'); "
                            f"ms.{call}('{value}ns') if you meant nanoseconds")
    elif value is not None:
        ns = to_ns(value, what)
    else:
        ns = from_units
    if ns is None or ns <= 0:
        given = value if value is not None else dict(units)
        raise PipelineError(None, f"ms.{call}(): the {what} must be positive, got {given!r}",
                            f"e.g. ms.{call}('10min')")
    return ns


def _bare_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, Duration)) and value != 0


def _offset(call: str, offset: Any) -> int:
    return to_ns(offset, "offset", fix=f"write offset='{{n}}s' or offset={{n}}.0 (seconds), e.g. "
                                       f"ms.{call}(days=1, offset='-1h')") or 0


@public(call="ms.tumbling")
def tumbling(size: Any = None, /, *, offset: Any = 0, **units: float) -> WindowSpec:
    """Fixed, non-overlapping windows, aligned to the epoch: `tumbling("10min")`, `tumbling(minutes=10)`,
    `tumbling(600.0)` (float seconds) or `tumbling(timedelta(minutes=10))`.

    `offset` (a duration, may be negative) shifts the boundaries, e.g. local days in CET:
    `tumbling(days=1, offset="-1h")`. Unit keywords: `days hours minutes seconds milliseconds microseconds
    nanoseconds`.

    >>> tumbling(seconds=10).size, tumbling("10s").size
    (10000000000, 10000000000)
    >>> tumbling(10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    microstream.core.errors.PipelineError: ms.tumbling(10): the window size has no unit (a bare int could be ...)
      fix: write ms.tumbling(seconds=10) or ms.tumbling('10s'); ms.tumbling('10ns') if you meant nanoseconds
    """
    ns = _span("tumbling", size, units, "window size")
    return WindowSpec("tumbling", ns, ns, _offset("tumbling", offset))


@public(call="ms.sliding")
def sliding(size: Any = None, every: Any = None, *, offset: Any = 0, **units: float) -> WindowSpec:
    """Overlapping windows of `size`, one starting every `every`: `sliding("8h", "1h")`, or
    `sliding(hours=8, every="1h")`; each record is in `size / every` windows. Both take the same forms as
    `tumbling` (text, float seconds, a timedelta, `ms.duration`); `offset` shifts the boundaries.

    >>> w = sliding("10min", "5min"); (w.size, w.slide)
    (600000000000, 300000000000)
    >>> sliding(hours=8, every="1h").describe()
    'sliding 8 h every 1 h'
    """
    size_ns = _span("sliding", size, units, "window size")
    if every is None:
        raise PipelineError(None, "ms.sliding() needs every=, how often a window starts",
                            "e.g. sliding('8h', '1h') or sliding(hours=8, every='1h')")
    every_ns = _span("sliding", every, {}, "slide (every)")
    if every_ns > size_ns:
        raise PipelineError(None, f"ms.sliding(): the slide ({human_duration(every_ns)}) must not exceed the size "
                                  f"({human_duration(size_ns)}), or records would fall between windows",
                            "for windows that do not overlap, use tumbling()")
    return WindowSpec("sliding", size_ns, every_ns, _offset("sliding", offset))


@public(call="ms.session")
def session(gap: Any = None, /, **units: float) -> WindowSpec:
    """Per key, a window that closes after `gap` with no record: `session("5min")`, `session(minutes=5)`,
    `session(2.005)` (float seconds) or `session(timedelta(minutes=5))`.

    >>> session(minutes=5).kind, session(2.005).size
    ('session', 2005000000)
    """
    return WindowSpec("session", _span("session", gap, units, "session gap"), 0, 0)
