"""What a run says in a terminal: a progress line while it runs and a closing report, both fitted to the width.

`Progress` is what the local runtime hands its progress hook (records read, event-time position, how much of
the input is read when the sources know their size); `ProgressLine` draws it on one line of stderr, rewritten
in place; `table` and `fit_table` lay out tables to a width (`RunResult.report` uses them). Whether anything
is shown is decided by `Pipeline.run` (a terminal, `--quiet`), not here.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ..core.time import format_ns


@dataclass(frozen=True)
class Progress:
    """A running pipeline, as its progress hook sees it."""

    pipeline: str
    elapsed: float               # seconds since the run started
    records: int                 # records the sources have emitted
    event_time: int | None       # the furthest event time read (ns), if the sources have event time
    fraction: float | None       # of the input read, when every source knows its size (rows, bytes)
    done: bool = False

    @property
    def rate(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, from the share of the input read so far."""
        f = self.fraction
        if f is None or f <= 0 or self.done or self.elapsed < 0.5:
            return None
        return max(0.0, self.elapsed * (1 - f) / f)


def width(stream: TextIO | None = None) -> int:
    """The terminal's width (100 when it is not a terminal)."""
    return shutil.get_terminal_size((100, 24)).columns


def _human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _event_time(ns: int) -> str:
    text = format_ns(ns)
    return text[:19].replace("T", " ") if len(text) >= 19 else text


def progress_text(p: Progress, columns: int) -> str:
    """One line: name, records, rate, event-time position, share read, ETA; cut to `columns`.

    >>> progress_text(Progress("rooms", 2.0, 120_000, 1423072260 * 10**9, 0.25), 100)
    'rooms: 120,000 records · 60,000/s · event time 2015-02-04 17:51:00 · 25% · ETA 6.0 s'
    >>> progress_text(Progress("rooms", 2.0, 120_000, 1423072260 * 10**9, 0.25), 40)
    'rooms: 120,000 records · 60,000/s · eve…'
    """
    parts = [f"{p.pipeline}: {p.records:,} records", f"{p.rate:,.0f}/s"]
    if p.event_time is not None:
        parts.append(f"event time {_event_time(p.event_time)}")
    if p.fraction is not None:
        parts.append(f"{min(p.fraction, 1.0):.0%}")
    if p.eta is not None:
        parts.append(f"ETA {_human_seconds(p.eta)}")
    return fit(" · ".join(parts), columns)


def fit(line: str, columns: int) -> str:
    """`line` cut to `columns` characters, with an ellipsis where it was cut."""
    return line if len(line) <= columns else line[: max(columns - 1, 0)] + "…"


COMPILE_NOTICE = ("compiling numba kernels: cached for later runs on this machine, but for those of your own "
                  "steps and reducers (`microstream warmup` compiles the common ones ahead)")


class ProgressLine:
    """Draws `Progress` on one line of a terminal, rewritten in place at most every `every` seconds, after the run
    has lasted `after` seconds (short runs print nothing); `close()` clears it.

    Until `close()` it also says once, on a line of its own, when numba starts compiling a kernel (a cache miss:
    a cold machine, or a user-defined aggregate): that can take tens of seconds on a Pi during which the run
    shows nothing else."""

    def __init__(self, stream: TextIO | None = None, every: float = 0.2, after: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.every, self.after = every, after
        self._last = 0.0
        self._shown = False
        self._listener = _on_first_compile(self._compiling)

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.done or p.elapsed < self.after or now - self._last < self.every:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + progress_text(p, width(self.stream) - 1))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        self._clear()
        if self._listener is not None:
            stop_listening(self._listener)
            self._listener = None

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _compiling(self) -> None:
        self._clear()
        self.stream.write(COMPILE_NOTICE + "\n")
        self.stream.flush()


@contextlib.contextmanager
def compile_notice(stream: TextIO | None = None) -> Iterator[None]:
    """Inside the block, say `COMPILE_NOTICE` once on `stream` (stderr) if numba compiles a kernel: for a command
    that places or builds without a progress line (`microstream plan`), silent for tens of seconds otherwise.

    >>> import io
    >>> out = io.StringIO()
    >>> with compile_notice(out): pass
    >>> out.getvalue()
    ''
    """
    stream = stream or sys.stderr

    def say() -> None:
        stream.write(COMPILE_NOTICE + "\n")
        stream.flush()

    listener = _on_first_compile(say)
    try:
        yield
    finally:
        stop_listening(listener)


def listen_to_compiles(callback: Callable[[Any], None]) -> Any:
    """Register a listener that calls `callback(event)` each time numba starts compiling (numba sends no event
    for a kernel loaded from its cache); `stop_listening(it)` unregisters it."""
    from numba.core import event

    class _Listener(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            callback(ev)

        def on_end(self, ev: event.Event) -> None:
            pass

    listener = _Listener()
    event.register("numba:compile", listener)
    return listener


def stop_listening(listener: Any) -> None:
    from numba.core import event

    event.unregister("numba:compile", listener)


def _on_first_compile(callback: Callable[[], None]) -> Any:
    """`listen_to_compiles` calling `callback` at the first compilation only."""
    fired: list[bool] = []

    def first(_: Any) -> None:
        if not fired:
            fired.append(True)
            callback()

    return listen_to_compiles(first)


def table(header: list[str], rows: list[list[str]], columns: int) -> list[str]:
    """Two-space-indented columns; numbers right-aligned; the first and last column cut to fit `columns`."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    over = 2 + sum(widths) + 2 * (len(widths) - 1) - columns
    if over > 0 and len(widths) > 2:          # a long file path: cut it from the left
        widths[-1] = max(widths[-1] - over, 8)
        over = 2 + sum(widths) + 2 * (len(widths) - 1) - columns
    if over > 0:                               # long operator names
        widths[0] = max(widths[0] - over, 8)
    out = []
    for row in [header, *rows]:
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            if len(cell) > w:
                cell = "…" + cell[-(w - 1):] if i == len(widths) - 1 and i > 1 else cell[: w - 1] + "…"
            cells.append(cell.rjust(w) if i == 1 else cell.ljust(w))
        out.append(fit(("  " + "  ".join(cells)).rstrip(), columns))
    return out


def fit_table(text: str, columns: int) -> str:
    """A table whose lines run past `columns` (such as `Pipeline.describe()`), its long last column wrapped at
    ", " onto lines indented to where that column starts; when that column starts too far right (past half the
    width), it moves whole onto the next lines, indented by four spaces. A piece with no ", " to break at breaks
    at a space, never inside a word unless a word is wider than the line."""
    lines = text.splitlines()
    if not lines or all(len(line) <= columns for line in lines):
        return text
    header = lines[0]
    last = header.rfind("  ") + 2 if "  " in header else 0
    out: list[str] = []
    if 0 < last <= columns // 2:
        for line in lines:
            out += _wrap(line, last, columns)
        return "\n".join(out)
    for line in lines:
        if len(line) <= columns:
            out.append(line)
            continue
        head, tail = (line[:last].rstrip(), line[last:]) if last and line[last - 2:last] == "  " else (line, "")
        out += _wrap(head, 4, columns)
        if tail.strip():
            out += _wrap(" " * 4 + tail, 4, columns)
    return "\n".join(out)


def _wrap(line: str, indent: int, columns: int) -> list[str]:
    """`line` cut to `columns`: at ", " (the comma kept), else at a space, else (a word too wide) anywhere; the
    lines after the first indented by `indent` spaces."""
    out = []
    while len(line) > columns:
        cut = line.rfind(", ", indent, columns - 1)
        if cut > indent:
            out.append(line[: cut + 1])
            line = " " * indent + line[cut + 2:]
            continue
        cut = line.rfind(" ", indent + 1, columns + 1)
        if cut > indent and line[indent:cut].strip():
            out.append(line[:cut].rstrip())
            line = " " * indent + line[cut:].lstrip()
            continue
        out.append(line[:columns])
        line = " " * indent + line[columns:]
    out.append(line)
    return out
