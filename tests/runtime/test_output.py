"""A host's output capture: every complete line goes through to the log file; what is forwarded is bounded (lines
kept waiting, a rate, a line length) and what is not forwarded is counted."""

from __future__ import annotations

import io
import logging
import sys

from microstream.runtime.output import OutputCapture


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_go_through_and_are_kept_whole():
    cap = OutputCapture()
    inner = io.StringIO()
    out = cap.tap(inner, "stdout")
    out.write("par")
    out.write("tial\nsecond\nthird")
    assert cap.take() == ([["stdout", "partial"], ["stdout", "second"]], 0)  # "third" is not a line yet
    out.write("\n")
    assert cap.take() == ([["stdout", "third"]], 0)
    assert inner.getvalue() == "partial\nsecond\nthird\n"


def test_the_rate_limit_counts_what_it_drops_and_refills():
    clock = Clock()
    cap = OutputCapture(rate=10, burst=5, clock=clock)
    out = cap.tap(io.StringIO(), "stdout")
    for i in range(8):
        print(i, file=out)
    lines, dropped = cap.take()
    assert [text for _, text in lines] == ["0", "1", "2", "3", "4"] and dropped == 3
    clock.now = 0.3  # three tokens back
    for i in range(8, 12):
        print(i, file=out)
    lines, dropped = cap.take()
    assert [text for _, text in lines] == ["8", "9", "10"] and dropped == 1


def test_only_the_last_lines_wait_when_nobody_takes_them():
    cap = OutputCapture(keep=3, rate=1e9, burst=10**6)
    out = cap.tap(io.StringIO(), "stderr")
    for i in range(10):
        print(i, file=out)
    assert cap.take() == ([["stderr", "7"], ["stderr", "8"], ["stderr", "9"]], 7)


def test_long_lines_are_cut_with_a_note():
    cap = OutputCapture(max_line=10)
    print("x" * 25, file=cap.tap(io.StringIO(), "stdout"))
    (line,), _ = cap.take()
    assert line[1].startswith("x" * 10 + "... (15 more characters")


def test_installed_captures_print_and_logging_then_restores_the_streams():
    saved = sys.stdout, sys.stderr
    cap = OutputCapture()
    log = logging.getLogger("microstream-test-output")
    log.propagate = False  # as in a host, where nothing configured logging: its last resort writes to sys.stderr
    with cap.installed():
        print("hello from a map")
        log.warning("a warning")
    assert (sys.stdout, sys.stderr) == saved
    lines, _ = cap.take()
    assert ["stdout", "hello from a map"] in lines and ["stderr", "a warning"] in lines
