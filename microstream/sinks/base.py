"""The sink contract: where records leave a pipeline (memory, files, callbacks, the terminal, MQTT).
"""

from __future__ import annotations

import numpy as np

from ..core.batch import Batch
from ..core.schema import Schema
from ..operators.base import Emit, Operator

_TIME_LIKE = ("window_start", "window_end", "window_time")


class Sink(Operator):
    """The base of every sink (`ms.Sink`): subclass it to send results anywhere, and use it with
    `stream.sink(MySink(...))`.

    The contract: `__init__` sets only configuration (the object is the sink's spec, shipped to the node that
    runs it); `output_schemas(inputs, name)` may check the incoming columns when the pipeline is built
    (`inputs[0]`, an `ms.Schema`) and returns `{}`; `open(ctx)` (call `super().open(ctx)`) opens what writing
    needs, in the instance the runtime makes for each run; `write(batch)` gets every non-empty `ms.Batch` of
    results (columns as numpy arrays); `close()` flushes, releases and returns `[]`. A sink whose writes must
    survive a recovery exactly once keeps them pending and publishes them in `commit(checkpoint)`; one that
    hands results back to the program sets `collects = True`, returns them from `results()` as dicts of columns
    (one per batch) and gets them back, from every node that ran it, in `deliver(batches)` on the spec after
    the run (as `ms.sinks.collect()` does).

    >>> import microstream as ms, numpy as np
    >>> class Largest(ms.Sink):
    ...     '''Prints the largest value of a column at the end of the run.'''
    ...     kind = "largest"
    ...     def __init__(self, column):
    ...         self.column = column
    ...     def output_schemas(self, inputs, name):
    ...         inputs[0].require(self.column, name)      # a missing column fails at the user's line
    ...         return {}
    ...     def open(self, ctx):
    ...         super().open(ctx)
    ...         self.best = -np.inf
    ...     def write(self, batch):
    ...         self.best = max(self.best, float(batch[self.column].max()))
    ...     def close(self):
    ...         print(f"largest {self.column}: {self.best}")
    ...         return []
    >>> p = ms.Pipeline("custom_sink")
    >>> p.from_iterable([{"v": 2.0}, {"v": 7.5}, {"v": 1.0}]).sink(Largest("v"))
    >>> _ = p.run()
    largest v: 7.5
    """

    kind = "sink"

    def output_ports(self) -> tuple[str, ...]:
        return ()

    def side_ports(self) -> tuple[str, ...]:
        return ()

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        return {}

    def open(self, ctx) -> None:
        super().open(ctx)
        schema = ctx.input_schemas[0]
        self.time_columns = {n for n in (schema.time, *_TIME_LIKE) if n and n in schema}

    def process(self, port: int, batch: Batch) -> Emit:
        if batch.num_rows:
            self.write(batch)
        return []

    def write(self, batch: Batch) -> None:
        raise NotImplementedError

    def _iso(self, batch: Batch) -> dict[str, np.ndarray]:
        """Columns with event-time columns as ISO-8601 UTC text."""
        cols = batch.to_dict()
        for name in self.time_columns:
            text = np.datetime_as_string(cols[name].astype("datetime64[ns]"), unit="ms", timezone="UTC")
            cols[name] = text
        return cols
