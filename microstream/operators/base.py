"""The operator contract between the logical graph and the runtime.

An operator object in a graph is a *spec*: configuration set while the pipeline is built, frozen once it is
added to the graph. A runtime never runs the spec: for every run it makes an *instance* (`instantiate()`)
and only instances open, hold state, snapshot and restore. So a pipeline runs twice, is submitted twice and
is described after running, with identical results; a job ships specs.

The runtime calls `process` for every batch on an input port and `on_watermark` whenever the minimum
watermark over its inputs rises. Each returns the batches it emits as (port, batch) pairs. Operators never
touch sockets, threads or processes, and declare what the layers above need to know about them (`keyed`,
`polled`, `collects`, cost hints) instead of being recognised by their kind.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..core.time import MIN_TIME, now_ns

Emit = list[tuple[str, Batch]]

OUT = "out"
LATE = "late"
DEAD = "dead"

DEAD_LETTER_SCHEMA = Schema.of({"operator": "U", "position": "U", "row": "U", "reason": "U"})


def dead_letters(operator: str, positions: list[str], rows: list[str], reasons: list[str]) -> Batch:
    """A batch for the dead-letter stream: where each bad record came from and why it was refused."""
    n = len(rows)
    return Batch({
        "operator": np.asarray([operator] * n, dtype=str) if n else np.empty(0, "U1"),
        "position": np.asarray(positions, dtype=str) if n else np.empty(0, "U1"),
        "row": np.asarray(rows, dtype=str) if n else np.empty(0, "U1"),
        "reason": np.asarray(reasons, dtype=str) if n else np.empty(0, "U1"),
    })


def check_scalar_function(fn: Callable | None, args: tuple[Any, ...], name: str, what: str, example: str) -> None:
    """Build time: a function numba will compile into a loop over records (a state step, a reducer) takes `args`
    and returns one number. Called once in Python on `args` (a sample), so a wrong signature or a result that is
    not a number is reported here, naming the operator, and not by numba's type inference inside the run. A call
    that raises for another reason is left to the compiled run (numba code may behave differently)."""
    py = getattr(fn, "py_func", fn)
    if not callable(py):
        raise PipelineError(name, f"{what} is {type(fn).__name__}, not a function", example)
    try:
        inspect.signature(py).bind(*args)
    except TypeError as exc:
        raise PipelineError(name, f"{what} must take {len(args)} arguments: {exc}", example) from None
    except ValueError:
        return  # no signature to inspect (a builtin): numba will say
    try:
        out = py(*args)
    except Exception:  # noqa: BLE001 - see the docstring
        return
    if not isinstance(out, (numbers.Real, np.integer, np.floating, np.bool_)):  # a bool counts as 0 or 1
        raise PipelineError(name, f"{what} returned {type(out).__name__} ({out!r:.60}), not a number", example)


@dataclass
class OperatorContext:
    """What the runtime tells an operator when it opens."""

    name: str
    input_schemas: list[Schema]
    output_schemas: dict[str, Schema]
    input_watermarks: list[int] = field(default_factory=list)
    clock: Callable[[], int] = now_ns  # the runtime's clock (ns); runtimes pass their own
    extra: dict[str, Any] = field(default_factory=dict)


class Operator:
    """Base class: override what you need. Ports other than `out` are side outputs."""

    kind = "operator"
    n_inputs = 1
    wants_ticks = False
    keyed = False        # keeps per-key state: a parallel instance needs its input partitioned by key
    polled = False       # a source the runtime polls (`poll`, `next_due`, `finished`)
    collects = False     # keeps results for the user (`results()` in the run, `deliver()` on the spec)
    cpu_us = 0.5         # cost hint: CPU microseconds per input record (placement estimates, before measuring)
    selectivity = 1.0    # cost hint: main-output records per input record

    # -- spec and instance --------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"operator spec '{self.kind}' is frozen once it is in a pipeline (setting "
                                 f"'{name}'); run state belongs to the instance a runtime makes with instantiate()")
        object.__setattr__(self, name, value)

    def freeze(self) -> None:
        """Called when the spec joins a graph: from then on it is configuration only."""
        self.__dict__["_frozen"] = True

    def instantiate(self) -> Operator:
        """A fresh instance for one run: the spec's configuration, none of its (or a previous run's) state."""
        inst = self.__class__.__new__(self.__class__)
        inst.__dict__.update(self.__dict__)
        inst.__dict__["_frozen"] = False
        return inst

    def counters(self) -> dict[str, int]:
        """Instance: named counts of what the run did that a user should see (summed over every instance into the
        run's result, e.g. a window's `late_window_drops`); they live in the operator's snapshot."""
        return {}

    def results(self) -> list[Any] | None:
        """Instance: what this operator kept for the user during the run (see `collects`)."""
        return None

    def deliver(self, results: list[Any]) -> None:
        """Spec: receive what the run's instances kept (from every virtual node), replacing an earlier run's."""

    def output_ports(self) -> tuple[str, ...]:
        return (OUT,)

    def side_ports(self) -> tuple[str, ...]:
        """Ports that may stay unconnected (late records, dead letters)."""
        return (DEAD,)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        """Check the input schemas and return the schema of every output port (build time)."""
        return {OUT: inputs[0]}

    def describe(self) -> str:
        return ""

    def open(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.name = ctx.name
        ctx.input_watermarks[:] = [MIN_TIME] * self.n_inputs

    def process(self, port: int, batch: Batch) -> Emit:
        raise NotImplementedError

    def on_watermark(self, wm: int) -> Emit:
        return []

    def on_tick(self, now: int) -> Emit:
        return []

    def close(self) -> Emit:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def checkpoint_snapshot(self) -> dict[str, Any]:
        """The state for a checkpoint: like `snapshot`, but the instance goes on running unchanged afterwards."""
        return self.snapshot()

    def live_snapshot(self) -> dict[str, Any]:
        """The state for a move's pre-copy (runtime/statexfer.py): the instance goes on running, and its arrays may
        be its own, read on another thread while it changes them (the move's own snapshot fixes what changed);
        by default a checkpoint's snapshot."""
        return self.checkpoint_snapshot()

    def dirty_trackers(self) -> list[Any]:
        """The `kernels.dirty.DirtyRows` of the arrays `live_snapshot` and `snapshot` hold, which record the rows
        each batch wrote: a move's state transfer then reads only those (runtime/statexfer.py). Arrays no tracker
        covers are compared whole."""
        return []

    def prepare_commit(self, checkpoint: int) -> None:
        """A checkpoint is being taken (before `snapshot`): note what would be published if it completes."""

    def commit(self, checkpoint: int) -> None:
        """The checkpoint completed everywhere: publish what it covers (a transactional sink's second phase)."""

    def restore(self, state: dict[str, Any]) -> None:
        pass
