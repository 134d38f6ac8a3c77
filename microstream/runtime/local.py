"""The local runtime: a whole pipeline in this process, at full speed.

It is the cluster's task runner with every task of the physical plan in one virtual node: edges are direct
calls, parallel operators run as several tasks with the same partitioning as on a cluster, and the result is
merged by the same code that merges a cluster job's results. What differs is only the loop around it: no
channels, no control messages.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..core.time import MIN_TIME
from ..graph.logical import LogicalGraph
from ..graph.physical import build_plan, single_vnode
from .progress import Progress
from .results import RunResult, merge_results
from .tasks import TaskRunner

_RUNNER: ContextVar[Callable[..., Any] | None] = ContextVar("microstream_runner", default=None)
_QUIET: ContextVar[bool] = ContextVar("microstream_quiet", default=False)
_RUNS = [0]  # pipelines run (Pipeline.run calls) in this process: `microstream run` checks a script ran one
_MAX_PAUSE_NS = 50_000_000  # a paced source is re-polled at least this often


def active_runner() -> Callable[..., Any] | None:
    """The runner `Pipeline.run()` defers to (set by `microstream submit`), or None for local runs."""
    return _RUNNER.get()


def set_runner(runner: Callable[..., Any] | None) -> Any:
    return _RUNNER.set(runner)


def set_quiet(quiet: bool) -> Any:
    """`microstream run --quiet`: runs print nothing (no progress line, no report), whatever `verbose` says."""
    return _QUIET.set(quiet)


def quiet() -> bool:
    return _QUIET.get()


def count_run() -> None:
    _RUNS[0] += 1


def runs() -> int:
    """How many pipelines this process has run (or submitted)."""
    return _RUNS[0]


class LocalRuntime:
    """`progress`, if given, is called with a `Progress` every `progress_every` seconds while the run lasts and
    once at its end (`done`)."""

    def __init__(self, graph: LogicalGraph, verbose: bool | None = None,
                 clock: Callable[[], int] = time.time_ns, tick_every: float = 0.1,
                 progress: Callable[[Progress], None] | None = None, progress_every: float = 0.2) -> None:
        self.graph = graph
        self.verbose = verbose
        self.clock = clock
        self.tick_every = tick_every
        self.progress = progress
        self.progress_every = progress_every

    def run(self) -> RunResult:
        started, cpu = time.perf_counter(), time.process_time()
        plan = single_vnode(build_plan(self.graph))
        # sensors (sources that cannot rewind) read through a local log, so a slow consumer never slows their pace
        logs = None
        if any(getattr(node.op, "cannot_rewind", False) for node in self.graph.nodes.values()):
            logs = Path(tempfile.mkdtemp(prefix="microstream-log-"))
        try:
            runner = TaskRunner(self.graph, plan, "local", self.clock, tick_every=self.tick_every, source_log=logs)
            self._started = started
            try:
                self._loop(runner)
            finally:
                runner.stop_sources()
        finally:
            if logs is not None:
                shutil.rmtree(logs, ignore_errors=True)
        if self.progress is not None:
            self.progress(self._progress(runner, done=True))
        result = merge_results(self.graph, [runner.result()], time.perf_counter() - started)
        result.cpu_seconds = time.process_time() - cpu
        verbose = self.verbose if self.verbose is not None else result.dead_letter_count > 0
        if verbose:
            print(result.summary(), file=sys.stderr)
        return result

    def _progress(self, runner: TaskRunner, done: bool = False) -> Progress:
        """Records read, the furthest event time and the share of the input read (when every source knows it)."""
        records, seen, shares = 0, MIN_TIME, []
        for t in runner.sources:
            src: Any = t.op
            records += t.records_out
            seen = max(seen, getattr(src, "max_seen", MIN_TIME))
            size = src.size_hint() if hasattr(src, "size_hint") else None
            shares.append(1.0 if t.finished else (size[0] / size[1] if size and size[1] else None))
        fraction = sum(shares) / len(shares) if shares and None not in shares else None  # type: ignore[arg-type]
        return Progress(self.graph.name, time.perf_counter() - self._started, records,
                        None if seen == MIN_TIME else int(seen), fraction, done)

    def _loop(self, runner: TaskRunner) -> None:
        clock = self.clock
        report, every = self.progress, self.progress_every
        next_report = time.perf_counter() + every
        while runner.sources and not all(t.finished for t in runner.sources):
            if report is not None and time.perf_counter() >= next_report:
                report(self._progress(runner))
                next_report = time.perf_counter() + every
            pause = runner.run_sources(clock(), _MAX_PAUSE_NS)
            if pause > 0:
                time.sleep(pause / 1e9)
        runner.close_finished_inputs()
        for t in runner.tasks.values():  # a task fed by no source (nothing reaches it) still closes
            runner.finish(t)
