"""The local runtime: runs a whole logical graph in one process, batch by batch, at full speed.

Sources are polled in turn; each batch is pushed depth-first through the operators it reaches.
After each source batch the source's watermark is propagated; an operator's watermark is the
minimum over its inputs. At the end every source's watermark goes to +inf, which flushes all
windows, and sinks are closed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..core.batch import Batch
from ..core.errors import MicrostreamError, OperatorError
from ..core.time import MAX_TIME, MIN_TIME
from ..graph.logical import DeadLetterHub, LogicalGraph, Node
from ..operators.base import DEAD, LATE, OUT, Emit, OperatorContext
from ..sources.base import Source

_RUNNER: ContextVar[Callable[..., Any] | None] = ContextVar("microstream_runner", default=None)
_KEEP_DEAD = 1000  # dead letters kept in the result (all are counted)


def active_runner() -> Callable[..., Any] | None:
    """The runner `Pipeline.run()` defers to (set by `microstream submit`), or None for local runs."""
    return _RUNNER.get()


def set_runner(runner: Callable[..., Any] | None) -> Any:
    return _RUNNER.set(runner)


@dataclass
class RunResult:
    """What a finished run reports."""

    pipeline: str
    seconds: float
    records_in: dict[str, int] = field(default_factory=dict)     # per source
    records_out: dict[str, int] = field(default_factory=dict)    # per sink
    dead_letter_count: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the first 1000
    late_count: int = 0

    def summary(self) -> str:
        rin = sum(self.records_in.values())
        rout = sum(self.records_out.values())
        rate = f", {rin / self.seconds:,.0f} records/s" if self.seconds > 0 else ""
        text = (f"{self.pipeline}: {rin:,} records in, {rout:,} out, {self.dead_letter_count:,} dead letters, "
                f"{self.late_count:,} late, {self.seconds:.2f} s{rate}")
        if self.dead_letters:
            first = self.dead_letters[0]
            text += f"\n  first dead letter: {first['operator']} at {first['position']}: {first['reason']}"
        return text


class _Task:
    __slots__ = ("node", "op", "ctx", "out_wm", "outputs", "is_source")

    def __init__(self, node: Node, ctx: OperatorContext) -> None:
        self.node = node
        self.op = node.op
        self.ctx = ctx
        self.out_wm = MIN_TIME
        self.outputs: dict[str, list[tuple[_Task, int]]] = {}
        self.is_source = node.is_source


class LocalRuntime:
    def __init__(self, graph: LogicalGraph, verbose: bool | None = None,
                 clock: Callable[[], int] = time.time_ns, tick_every: float = 0.1) -> None:
        self.graph = graph
        self.verbose = verbose
        self.clock = clock
        self.tick_every = int(tick_every * 1e9)

    def run(self) -> RunResult:
        started = time.perf_counter()
        tasks = self._open()
        self.result = RunResult(self.graph.name, 0.0)
        try:
            self._loop(tasks)
            self._finish(tasks)
        finally:
            self.result.seconds = time.perf_counter() - started
        verbose = self.verbose if self.verbose is not None else self.result.dead_letter_count > 0
        if verbose:
            print(self.result.summary(), file=sys.stderr)
        return self.result

    # -- setup --------------------------------------------------------------------------------------
    def _open(self) -> list[_Task]:
        order = self.graph.topo_order()
        by_id: dict[int, _Task] = {}
        for node in order:
            schemas = [self.graph.nodes[s].out_schemas[p] for s, p in node.inputs]
            ctx = OperatorContext(node.name, schemas, node.out_schemas, [], self.clock)
            node.op.open(ctx)
            by_id[node.id] = _Task(node, ctx)
        for src, port, dst, idx in self.graph.edges():
            by_id[src.id].outputs.setdefault(port, []).append((by_id[dst.id], idx))
        hub = self.graph.dead_letter_hub()
        self.hub = by_id[hub.id] if hub else None
        self.ticking = [t for t in by_id.values() if t.op.wants_ticks]
        return [by_id[n.id] for n in order]

    # -- the loop -----------------------------------------------------------------------------------
    def _loop(self, tasks: list[_Task]) -> None:
        sources = [t for t in tasks if t.is_source and isinstance(t.op, Source)]
        active = list(sources)
        next_tick = self.clock() + self.tick_every
        while active:
            now = self.clock()
            waits = []
            for task in list(active):
                src: Source = task.op  # type: ignore[assignment]
                due = src.next_due(now)
                if due is not None and due > now:
                    waits.append(due)
                    continue
                self._emit(task, self._call(task, src.poll, now))
                wm = MAX_TIME if src.finished else src.end_watermark()
                if src.time is not None or src.finished:
                    self._watermark(task, wm)
                if src.finished:
                    active.remove(task)
            if self.ticking and now >= next_tick:
                for task in self.ticking:
                    self._emit(task, self._call(task, task.op.on_tick, now))
                next_tick = now + self.tick_every
            if active and len(waits) == len(active):
                pause = min(min(waits), next_tick if self.ticking else MAX_TIME) - self.clock()
                if pause > 0:
                    time.sleep(min(pause, 50_000_000) / 1e9)

    def _finish(self, tasks: list[_Task]) -> None:
        for task in tasks:
            if task.is_source:
                self._watermark(task, MAX_TIME)
        for task in tasks:
            self._emit(task, self._call(task, task.op.close))

    # -- moving data --------------------------------------------------------------------------------
    def _call(self, task: _Task, fn: Callable[..., Emit], *args: Any) -> Emit:
        try:
            return fn(*args)
        except MicrostreamError:
            raise
        except Exception as exc:
            raise OperatorError(task.node.name, exc) from exc

    def _emit(self, task: _Task, emitted: Emit) -> None:
        for port, batch in emitted:
            if port == DEAD:
                self._dead(batch)
                continue
            if port == OUT and task.is_source and not isinstance(task.op, DeadLetterHub):
                name = task.node.name
                self.result.records_in[name] = self.result.records_in.get(name, 0) + batch.num_rows
            if port == LATE:
                self.result.late_count += batch.num_rows
            for dst, idx in task.outputs.get(port, ()):
                if dst.node.is_sink:
                    name = dst.node.name
                    self.result.records_out[name] = self.result.records_out.get(name, 0) + batch.num_rows
                self._emit(dst, self._call(dst, dst.op.process, idx, batch))

    def _watermark(self, task: _Task, wm: int) -> None:
        if wm <= task.out_wm:
            return
        task.out_wm = wm
        for port_targets in task.outputs.values():
            for dst, idx in port_targets:
                wms = dst.ctx.input_watermarks
                if wm > wms[idx]:
                    wms[idx] = wm
                low = min(wms)
                if low > dst.out_wm:
                    self._emit(dst, self._call(dst, dst.op.on_watermark, low))
                    self._watermark(dst, low)

    def _dead(self, batch: Batch) -> None:
        self.result.dead_letter_count += batch.num_rows
        room = _KEEP_DEAD - len(self.result.dead_letters)
        if room > 0:
            self.result.dead_letters.extend(batch.take(slice(0, room)).to_records() if batch.num_rows > room
                                            else batch.to_records())
        if self.hub is not None:
            self._emit(self.hub, [(OUT, batch)])
