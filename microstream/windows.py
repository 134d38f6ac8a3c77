"""Window specifications: tumbling, sliding and session windows over event time."""

from __future__ import annotations

from dataclasses import dataclass

from .core.time import duration, human_duration


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


def _ns(value: int | None, kw: dict[str, float], what: str) -> int:
    if value is not None and kw:
        raise TypeError(f"give the {what} either as nanoseconds or as keyword units, not both")
    ns = int(value) if value is not None else duration(**kw)
    if ns <= 0:
        raise ValueError(f"the {what} must be positive, got {ns} ns")
    return ns


def tumbling(size_ns: int | None = None, *, offset: int = 0, **units: float) -> WindowSpec:
    """Fixed, non-overlapping windows: `tumbling(minutes=10)`.

    >>> tumbling(seconds=10).size
    10000000000
    """
    size = _ns(size_ns, units, "window size")
    return WindowSpec("tumbling", size, size, offset)


def sliding(size: dict[str, float] | int, every: dict[str, float] | int, *, offset: int = 0) -> WindowSpec:
    """Overlapping windows of `size`, one starting every `every`: `sliding({"hours": 8}, {"hours": 1})`.

    >>> w = sliding({"minutes": 10}, {"minutes": 5}); (w.size, w.slide)
    (600000000000, 300000000000)
    """
    size_ns = size if isinstance(size, int) else _ns(None, size, "window size")
    every_ns = every if isinstance(every, int) else _ns(None, every, "slide")
    if every_ns > size_ns:
        raise ValueError("a sliding window's slide must not exceed its size (records would fall between)")
    return WindowSpec("sliding", size_ns, every_ns, offset)


def session(gap_ns: int | None = None, **units: float) -> WindowSpec:
    """Windows that close after `gap` with no record for the key: `session(minutes=5)`.

    >>> session(minutes=5).kind
    'session'
    """
    return WindowSpec("session", _ns(gap_ns, units, "session gap"), 0, 0)
