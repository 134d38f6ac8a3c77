"""Shared test helpers: where the real datasets are, waiting for a condition, and small result utilities."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "sensors" / "data"

T = TypeVar("T")


def dataset(relative: str) -> Path:
    """A file of ../shared/data, falling back to the copy bundled with the examples; skip if neither."""
    for root in (SHARED_DATA, EXAMPLE_DATA):
        path = root / relative
        if path.exists():
            return path
        alt = root / Path(relative).name
        if alt.exists():
            return alt
    pytest.skip(f"dataset {relative} not available")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`microstream ARGS` in a fresh interpreter (from the repository's root unless `cwd`), its output captured."""
    return subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


def sorted_records(records: list[dict]) -> list[tuple]:
    return sorted(tuple(sorted(r.items())) for r in records)


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy, and return that: synchronise on the state you need, not
    on a sleep long enough on your machine. Fails the test, naming `what` and the last value, after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last: {value!r}")
        time.sleep(interval)


def ns(n: int) -> int:
    """`n` nanoseconds as a duration option takes them (a bare int is refused): for tests that work in ns."""
    from microstream.core.time import duration

    return duration(nanoseconds=n)


def sigint_as_in_a_shell() -> None:
    """`preexec_fn` for a command a test stops with Ctrl-C (SIGINT): a shell starts a foreground command with SIGINT
    at its default, but a child inherits an *ignored* SIGINT, and Python then never raises KeyboardInterrupt. The
    test process may have inherited or set that (a library run in-process by an earlier test in the same worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
