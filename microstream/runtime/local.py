"""The local runtime: a whole pipeline in this process, at full speed.

It is the cluster's task runner with every task of the physical plan in one virtual node: edges are direct
calls, parallel operators run as several tasks with the same partitioning as on a cluster, and the result is
merged by the same code that merges a cluster job's results. What differs is only the loop around it: no
channels, no control messages.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from ..core.time import MAX_TIME
from ..graph.logical import LogicalGraph
from ..graph.physical import build_plan, single_vnode
from .results import RunResult, merge_results
from .tasks import TaskRunner

_RUNNER: ContextVar[Callable[..., Any] | None] = ContextVar("microstream_runner", default=None)
_MAX_PAUSE_NS = 50_000_000  # a paced source is re-polled at least this often


def active_runner() -> Callable[..., Any] | None:
    """The runner `Pipeline.run()` defers to (set by `microstream submit`), or None for local runs."""
    return _RUNNER.get()


def set_runner(runner: Callable[..., Any] | None) -> Any:
    return _RUNNER.set(runner)


class LocalRuntime:
    def __init__(self, graph: LogicalGraph, verbose: bool | None = None,
                 clock: Callable[[], int] = time.time_ns, tick_every: float = 0.1) -> None:
        self.graph = graph
        self.verbose = verbose
        self.clock = clock
        self.tick_every = tick_every

    def run(self) -> RunResult:
        started = time.perf_counter()
        plan = single_vnode(build_plan(self.graph))
        runner = TaskRunner(self.graph, plan, "local", self.clock, tick_every=self.tick_every)
        self._loop(runner)
        result = merge_results(self.graph, [runner.result()], time.perf_counter() - started)
        verbose = self.verbose if self.verbose is not None else result.dead_letter_count > 0
        if verbose:
            print(result.summary(), file=sys.stderr)
        return result

    def _loop(self, runner: TaskRunner) -> None:
        clock = self.clock
        while runner.sources and not all(t.finished for t in runner.sources):
            now = clock()
            busy, due = runner.poll_sources(now)
            next_tick = runner.tick(now)
            if not busy:
                wake = min(due if due is not None else MAX_TIME, next_tick if next_tick is not None else MAX_TIME)
                pause = min(wake - clock(), _MAX_PAUSE_NS)
                if pause > 0:
                    time.sleep(pause / 1e9)
        runner.close_finished_inputs()
        for t in runner.tasks.values():  # a task fed by no source (nothing reaches it) still closes
            runner.finish(t)
