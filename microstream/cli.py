"""The `microstream` command line.

    microstream run script.py [--describe] [--graph out.svg]
    microstream describe script.py
    microstream graph script.py -o pipeline.svg   (or .dot)

Exit codes: 0 success, 1 the job failed while running, 2 the pipeline or the command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MicrostreamError, OperatorError, PipelineError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _script_error(exc: BaseException, script: Path) -> str:
    """The error and the line of the user's script it came from, not a traceback from inside microstream."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) == str(script.resolve())]
    where = f"{script.name}:{mine[-1].lineno}: " if mine else ""
    line = f"\n    {mine[-1].line}" if mine and mine[-1].line else ""
    return f"{where}{type(exc).__name__}: {exc}{line}"


def run_script(script: Path, runner: Callable[..., Any] | None = None,
               capture: list[Any] | None = None) -> int:
    """Execute a pipeline script as `__main__`; `runner` replaces `Pipeline.run` (dry runs, cluster)."""
    from .runtime.local import set_runner

    if not script.exists():
        print(f"microstream: no such script: {script}", file=sys.stderr)
        return EXIT_USAGE
    token = set_runner(runner) if runner is not None else None
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
            from .runtime.local import _RUNNER

            _RUNNER.reset(token)
    return EXIT_OK


class _Captured(Exception):  # noqa: N818 - control flow, never shown
    """Raised by the capturing runner: the script built its pipeline; stop before it runs."""


def _capture_pipelines(found: list[Any]) -> Callable[..., Any]:
    def runner(pipeline: Any, **_: Any) -> Any:
        found.append(pipeline)
        raise _Captured

    return runner


def _pipelines_of(script: Path) -> tuple[int, list[Any]]:
    found: list[Any] = []
    code = run_script(script, _capture_pipelines(found))
    if code == EXIT_OK and not found:
        print(f"microstream: {script.name} built no pipeline (it never called pipeline.run())", file=sys.stderr)
        return EXIT_USAGE, []
    return code, found


def cmd_run(args: argparse.Namespace) -> int:
    if args.describe or args.graph:
        code, pipelines = _pipelines_of(args.script)
        if code:
            return code
        for p in pipelines:
            if args.describe:
                print(p.describe())
            if args.graph:
                _write_graph(p, args.graph)
    return run_script(args.script)


def cmd_describe(args: argparse.Namespace) -> int:
    code, pipelines = _pipelines_of(args.script)
    for p in pipelines:
        print(f"pipeline {p.name}\n{p.describe()}\n")
    return code


def cmd_graph(args: argparse.Namespace) -> int:
    code, pipelines = _pipelines_of(args.script)
    for p in pipelines:
        _write_graph(p, args.output)
    return code


def _write_graph(pipeline: Any, path: Path) -> None:
    text = pipeline.to_dot() if path.suffix == ".dot" else pipeline.to_svg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microstream", description="Stream processing for sensor networks.")
    parser.add_argument("--version", action="version", version=f"microstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a pipeline script on the local runtime")
    p.add_argument("script", type=Path)
    p.add_argument("--describe", action="store_true", help="print the operator table first")
    p.add_argument("--graph", type=Path, metavar="FILE", help="also write the DAG (.svg or .dot)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("describe", help="print a script's operators and schemas without running it")
    p.add_argument("script", type=Path)
    p.set_defaults(fn=cmd_describe)

    p = sub.add_parser("graph", help="write a script's DAG as SVG or DOT without running it")
    p.add_argument("script", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("pipeline.svg"), help="output file (.svg or .dot)")
    p.set_defaults(fn=cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("microstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
