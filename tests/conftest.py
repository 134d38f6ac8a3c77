"""Suite-wide: a test that hangs fails, and the suite always finishes.

pytest-timeout (configured in pyproject.toml: `timeout`, `timeout_method = "signal"`) raises in the test when its
time is up: the stacks of every thread are printed, the test fails, its `finally` blocks and fixtures clean up
(`subprocess.run` kills its child), and the run goes on. A signal only lands when the main thread gets back to the
interpreter; pytest's `faulthandler_timeout`, a little shorter, prints the stacks from C even if it never does.
This file adds the last resort: if the test is still running `BACKSTOP_GRACE` seconds after its timeout, the
stacks and the test's captured output are printed, the processes the run started are killed and the run exits
with status 1, rather than waiting for CI's own limit.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

BACKSTOP_GRACE = 60.0

_backstops: dict[str, threading.Timer] = {}


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; empty elsewhere), children before their own children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _give_up(item: pytest.Item, timeout: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    out = err = ""
    if capman is not None:
        try:
            capman.suspend_global_capture(in_=True)
            out, err = capman.read_global_capture()
        except Exception:  # noqa: BLE001 - the capture state is unknown here; the stacks matter more
            pass
    stream = sys.__stderr__
    stream.write(f"\n{'+' * 30} {item.nodeid} still running {BACKSTOP_GRACE:.0f} s after its {timeout:.0f} s "
                 f"timeout: the timeout signal could not interrupt it {'+' * 30}\n")
    for title, text in (("captured stdout", out), ("captured stderr", err)):
        if text:
            stream.write(f"{'~' * 30} {title} {'~' * 30}\n{text}\n")
    stream.flush()
    faulthandler.dump_traceback(file=stream, all_threads=True)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    stream.write(f"{'+' * 30} killed the processes this run started; exiting {'+' * 30}\n")
    stream.flush()
    os._exit(1)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> None:
    """Arm the backstop beside pytest-timeout's own timer (returning None lets pytest-timeout arm that too)."""
    if settings.timeout and settings.timeout > 0:
        timer = threading.Timer(settings.timeout + BACKSTOP_GRACE, _give_up, (item, settings.timeout))
        timer.daemon = True
        timer.start()
        _backstops[item.nodeid] = timer


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = _backstops.pop(item.nodeid, None)
    if timer is not None:
        timer.cancel()
