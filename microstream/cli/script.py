"""Loading a user's pipeline script: run it as `__main__` with `Pipeline.run` replaced (dry runs, cluster
submission), report its errors at the user's line, and the exit codes every command shares. Also the types of
command-line values (`zmq_address`, `seconds`, `count`, `port`), checked as the command line is read: a bad one is a
usage error (exit 2, with the verb's usage), not a traceback or a surprise later (`--nodes -1`, `--timeout -5`,
`--coordinator pi01:7077`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import runpy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import MicrostreamError, OperatorError, PipelineError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _script_error(exc: BaseException, script: Path) -> str:
    """The error and the line of the user's script it came from, not a traceback from inside microstream."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) == str(script.resolve())]
    where = f"{script.name}:{mine[-1].lineno}: " if mine else ""
    line = f"\n    {mine[-1].line}" if mine and mine[-1].line else ""
    text = str(exc).replace(f" (at {where[:-2]})", "") if where else str(exc)  # said once, in front
    return f"{where}{type(exc).__name__}: {text}{line}"


def run_script(script: Path, runner: Callable[..., Any] | None = None,
               capture: list[Any] | None = None, *, quiet: bool = False, must_run: bool = True) -> int:
    """Execute a pipeline script as `__main__`; `runner` replaces `Pipeline.run` (dry runs, cluster); `quiet`
    silences the runs' progress and reports. A script that runs no pipeline is a usage error (exit 2) when
    `must_run`: it surely forgot `p.run()`, or guards it with a `__name__` test that is not `"__main__"`."""
    from ..runtime.local import runs, set_quiet, set_runner

    if not script.exists():
        print(f"microstream: no such script: {script}", file=sys.stderr)
        return EXIT_USAGE
    token = set_runner(runner) if runner is not None else None
    quiet_token = set_quiet(quiet)
    runs_before = runs()
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Captured:
        pass
    except PipelineError as exc:
        print(f"microstream: pipeline error: {_script_error(exc, script)}", file=sys.stderr)
        return EXIT_USAGE
    except OperatorError as exc:
        print(f"microstream: job failed: {_script_error(exc, script)}", file=sys.stderr)
        return EXIT_FAILED
    except MicrostreamError as exc:
        print(f"microstream: {_script_error(exc, script)}", file=sys.stderr)
        return EXIT_FAILED
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - report the user's error at its line
        print(f"microstream: error in {script.name}: {_script_error(exc, script)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        sys.path.remove(str(script.resolve().parent))
        if token is not None:
            token.var.reset(token)
        quiet_token.var.reset(quiet_token)
    if must_run and runs() == runs_before:
        print(f"microstream: {script.name} ran no pipeline: it never called p.run() (a script builds a pipeline "
              "and ends with p.run())", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


class _Captured(Exception):  # noqa: N818 - control flow, never shown
    """Raised by the capturing runner: the script built its pipeline; stop before it runs."""


def _capture_pipelines(found: list[Any]) -> Callable[..., Any]:
    def runner(pipeline: Any, **_: Any) -> Any:
        found.append(pipeline)
        raise _Captured

    return runner


def pipelines_of(script: Path) -> tuple[int, list[Any]]:
    """Run `script` up to its first `pipeline.run()` and return (exit code, the pipelines it built), without
    running them (`describe`, `graph`, `plan`)."""
    found: list[Any] = []
    code = run_script(script, _capture_pipelines(found), must_run=False)
    if code == EXIT_OK and not found:
        print(f"microstream: {script.name} built no pipeline: it never called p.run() (a script builds a pipeline "
              "and ends with p.run())", file=sys.stderr)
        return EXIT_USAGE, []
    return code, found


# -- types of command-line values --------------------------------------------------------------------------

_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5}|\*)|ipc://\S+")


def zmq_address(text: str) -> str:
    """A ZeroMQ address as --coordinator and --bind take it (tcp://HOST:PORT); ZeroMQ refuses another one with a
    traceback.

    >>> zmq_address("tcp://pi01:7077")
    'tcp://pi01:7077'
    """
    if not _ENDPOINT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: write tcp://HOST:PORT, e.g. tcp://pi01:7077")
    return text


def seconds(text: str) -> float:
    """A duration in seconds, more than 0 (a timeout, an interval).

    >>> seconds("2.5")
    2.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more (agents to start).

    >>> count("3")
    3
    """
    return _whole(text, 0, None, "give a number 0 or more")


def port(text: str) -> int:
    """A TCP or UDP port, 0 (any free port) to 65535.

    >>> port("7077")
    7077
    """
    return _whole(text, 0, 65535, "a port is 0 (any free one) to 65535")


def _whole(text: str, low: int, high: int | None, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r}: {rule}")
    return value
