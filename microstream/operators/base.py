"""The operator contract between the logical graph and the runtime.

An operator is configuration (set when the pipeline is built) plus state (created in `open`).
The runtime calls `process` for every batch on an input port and `on_watermark` whenever the
minimum watermark over its inputs rises. Each returns the batches it emits as (port, batch)
pairs. Operators never touch sockets, threads or processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.schema import Schema
from ..core.time import MIN_TIME

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


@dataclass
class OperatorContext:
    """What the runtime tells an operator when it opens."""

    name: str
    input_schemas: list[Schema]
    output_schemas: dict[str, Schema]
    input_watermarks: list[int] = field(default_factory=list)
    clock: Callable[[], int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Operator:
    """Base class: override what you need. Ports other than `out` are side outputs."""

    kind = "operator"
    n_inputs = 1
    wants_ticks = False

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
        # What exists before the first open() is configuration; what open() adds is run state, which is
        # left out when the operator is shipped to another process (it may hold numba objects).
        if "_config_names" not in self.__dict__:
            self._config_names = tuple(self.__dict__)
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

    def __getstate__(self) -> dict[str, Any]:
        names = self.__dict__.get("_config_names")
        if names is None:
            return dict(self.__dict__)
        return {k: v for k, v in self.__dict__.items() if k in names or k == "_config_names"}

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass
