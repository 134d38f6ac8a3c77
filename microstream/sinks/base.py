"""The sink contract: where records leave a pipeline (memory, files, callbacks, the terminal, MQTT).
"""

from __future__ import annotations

import numpy as np

from ..core.batch import Batch
from ..core.schema import Schema
from ..operators.base import Emit, Operator

_TIME_LIKE = ("window_start", "window_end", "window_time")


class Sink(Operator):
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
