"""What a cluster host's user code prints, forwarded to whoever submitted the job.

A host's stdout and stderr go to its log file in the agent's work directory. `OutputCapture` tees them: every
complete line still goes to the file, and is also kept for forwarding to the agent (which passes it to the
coordinator, which passes it to the submitter and to `microstream logs`). Forwarding is bounded, so a job that
prints in a tight loop cannot flood the control path: at most `keep` lines wait to be sent (the oldest go first),
a token bucket lets through `rate` lines a second on average (bursts of `burst`), a line longer than `max_line`
characters is cut, and what is dropped is counted and reported with the next lines.

    >>> import io
    >>> cap = OutputCapture(rate=2, burst=2, clock=lambda: 0.0)
    >>> out = cap.tap(io.StringIO(), "stdout")
    >>> print("one", "two", sep="\\n", file=out); print("three", file=out)
    >>> cap.take()
    ([['stdout', 'one'], ['stdout', 'two']], 1)
    >>> cap.take()
    ([], 0)
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TextIO

KEEP = 1000         # lines a host keeps waiting to be forwarded (the oldest are dropped first)
RATE = 100.0        # lines a second a host forwards on average ...
BURST = 1000        # ... with bursts of this many
MAX_LINE = 2000     # characters of one line forwarded (the log file has all of it)


class OutputCapture:
    """Complete lines written to the streams it taps, bounded and rate-limited, for `take` to forward."""

    def __init__(self, keep: int = KEEP, rate: float = RATE, burst: int = BURST, max_line: int = MAX_LINE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_line, self.clock = rate, burst, max_line, clock
        self._pending: deque[list[str]] = deque(maxlen=keep)
        self._tokens = float(burst)
        self._at = clock()
        self._dropped = 0
        self._lock = threading.Lock()  # user code may print from its own threads

    def add(self, stream: str, line: str) -> None:
        """One complete line (without its newline) written to `stream` ('stdout' or 'stderr')."""
        if len(line) > self.max_line:
            line = line[:self.max_line] + f"... ({len(line) - self.max_line} more characters in the host's log file)"
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1:
                self._dropped += 1
                return
            self._tokens -= 1
            if len(self._pending) == self._pending.maxlen:
                self._dropped += 1  # the link is slower than the printing: the oldest line goes
            self._pending.append([stream, line])

    def take(self) -> tuple[list[list[str]], int]:
        """The lines waiting ([stream, text] each) and how many were dropped since the last take."""
        with self._lock:
            lines, dropped = list(self._pending), self._dropped
            self._pending.clear()
            self._dropped = 0
        return lines, dropped

    def tap(self, inner: TextIO, stream: str) -> TextIO:
        """A text stream that writes through to `inner` and hands each complete line to this capture."""
        return _Tap(inner, stream, self)  # type: ignore[return-value]  # a TextIOBase: all print needs

    @contextlib.contextmanager
    def installed(self) -> Iterator[OutputCapture]:
        """Tap `sys.stdout` and `sys.stderr` while the block runs (print, logging's handlers, warnings)."""
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.tap(saved[0], "stdout"), self.tap(saved[1], "stderr")
        try:
            yield self
        finally:
            for tap in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    tap.flush()
            sys.stdout, sys.stderr = saved


class _Tap(io.TextIOBase):
    def __init__(self, inner: TextIO, stream: str, capture: OutputCapture) -> None:
        self.inner, self.stream, self.capture = inner, stream, capture
        self._partial = ""

    def write(self, text: str) -> int:
        self.inner.write(text)
        if "\n" in text:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self.capture.add(self.stream, line)
            self.inner.flush()  # the log file is read while the host runs
        else:
            self._partial += text
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
