"""A window process function: `.window(spec).apply(fn)` calls `fn` with each key's window as a Batch.

The Python path, for what the compiled aggregates cannot say (a fit, a spectrum, a custom statistic): records
are kept per key and window until the window can no longer change (the watermark has passed its end plus the
lateness), then `fn(batch)` runs once for it, with the window's records in arrival order, columns as numpy
arrays. Slower than `aggregate` (Python per window and records copied into buffers), so prefer `ms.agg` where
it can. Tumbling and sliding windows; records too late for every one of their windows go to `.late`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import OperatorError, PipelineError
from ..core.schema import TIME_DTYPE, Schema
from ..core.time import MIN_TIME
from ..windows import WindowSpec
from .base import DEAD, LATE, OUT, Emit, Operator

WindowFn = Callable[[Batch], Any]


def _rows(values: Any, where: str) -> dict[str, np.ndarray]:
    """fn's result as columns: a dict (or Batch) of scalars (one row) or equal-length 1-D arrays (that many)."""
    if not isinstance(values, Mapping):
        raise OperatorError(where, TypeError(f"a window function must return a dict of values or a Batch, got "
                                             f"{type(values).__name__}"))
    cols = {str(k): np.atleast_1d(np.asarray(v)) for k, v in values.items()}
    lengths = {len(c) for c in cols.values()}
    if len(lengths) > 1 or any(c.ndim != 1 for c in cols.values()):
        raise OperatorError(where, ValueError(f"a window function returned columns of different lengths "
                                              f"{sorted(lengths)}"))
    return cols


class WindowApply(Operator):
    kind = "window_apply"
    keyed = True
    cpu_us = 5.0

    def __init__(self, spec: WindowSpec, fn: WindowFn, lateness: int, schema: Mapping[str, Any] | None) -> None:
        if spec.kind == "session":
            raise PipelineError("window_apply", "apply() works on tumbling and sliding windows",
                                "for sessions use .aggregate(...) with ms.agg")
        self.spec, self.fn, self.lateness, self.schema = spec, fn, int(lateness), schema

    def describe(self) -> str:
        return f"{self.spec.describe()}, {getattr(self.fn, '__name__', 'fn')} per window"

    def output_ports(self) -> tuple[str, ...]:
        return (OUT, LATE)

    def side_ports(self) -> tuple[str, ...]:
        return (LATE, DEAD)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        if s.key is None:
            raise PipelineError(name, "window on a stream with no key", "call .key_by('column') before .window(...)")
        if s.time is None:
            raise PipelineError(name, "apply() needs event time", "give the source a time column (time='...')")
        if self.schema is not None:
            values = dict(Schema.of(self.schema).fields)
        else:  # learn the columns from a call on a one-record window
            sample = Batch({n: np.zeros(1, d if d.kind != "U" else "U1") for n, d in s.fields})
            try:
                values = {k: v.dtype for k, v in _rows(self.fn(sample), name).items()}
            except Exception as exc:  # noqa: BLE001 - any failure means: say the columns instead
                raise PipelineError(name, f"calling the window function on a sample window failed ({exc!r})",
                                    "declare its columns: .apply(fn, schema={'p95': 'float64', ...})") from None
        fields: list[tuple[str, Any]] = [(s.key, s.dtype(s.key)), ("window_start", TIME_DTYPE),
                                         ("window_end", TIME_DTYPE), ("window_time", TIME_DTYPE)]
        for col, dtype in values.items():
            if col in {f for f, _ in fields}:
                raise PipelineError(name, f"the window function's column '{col}' clashes with an output column",
                                    "name it otherwise")
            fields.append((col, dtype))
        return {OUT: Schema.of(fields, time="window_time", key=s.key), LATE: s}

    # -- run time --------------------------------------------------------------------------------
    def open(self, ctx) -> None:
        super().open(ctx)
        schema = ctx.input_schemas[0]
        self.time_col, self.key_col, self.names = schema.time, schema.key, schema.names
        self.out_schema = ctx.output_schemas[OUT]
        self.wm = MIN_TIME
        self.cells: dict[tuple[Any, int], list[dict[str, np.ndarray]]] = {}

    def _starts(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(record index, window start) for every window each record falls in."""
        size, slide, offset = self.spec.size, self.spec.slide, self.spec.offset
        last = (t - offset) // slide * slide + offset
        per = -(-size // slide)  # windows a record can fall in
        k = np.arange(per)
        starts = last[:, None] - k[None, :] * slide
        inside = starts + size > t[:, None]
        rows = np.broadcast_to(np.arange(len(t))[:, None], starts.shape)
        return rows[inside], starts[inside]

    def process(self, port: int, batch: Batch) -> Emit:
        if batch.num_rows == 0:
            return []
        t = batch[self.time_col].astype(np.int64)
        rows, starts = self._starts(t)
        open_ = starts + self.spec.size + self.lateness > self.wm  # the window has not fired yet
        rows, starts = rows[open_], starts[open_]
        keys = batch[self.key_col]
        cols = batch.to_dict()
        order = np.lexsort((rows, starts))  # per window, records in arrival order
        rows, starts = rows[order], starts[order]
        cell_keys = list(zip(keys[rows].tolist(), starts.tolist(), strict=True))
        bounds = [i for i in range(1, len(rows)) if cell_keys[i] != cell_keys[i - 1]]
        for lo, hi in zip([0, *bounds], [*bounds, len(rows)], strict=True):
            if hi > lo:
                take = rows[lo:hi]
                self.cells.setdefault(cell_keys[lo], []).append({n: cols[n][take] for n in self.names})
        late = np.ones(len(t), dtype=bool)
        late[rows] = False
        return [(LATE, batch.filter(late))] if late.any() else []

    def on_watermark(self, wm: int) -> Emit:
        self.wm = max(self.wm, wm)
        return self._fire(lambda start: start + self.spec.size + self.lateness <= self.wm)

    def close(self) -> Emit:
        return self._fire(lambda start: True)  # the end of the input: every window is complete

    def _fire(self, due: Callable[[int], bool]) -> Emit:
        ready = sorted((start, key) for key, start in self.cells if due(start))
        if not ready:
            return []
        parts: list[dict[str, np.ndarray]] = []
        for start, key in ready:
            chunks = self.cells.pop((key, start))
            window = Batch({n: np.concatenate([c[n] for c in chunks]) for n in self.names})
            values = _rows(self.fn(window), self.name)
            n = len(next(iter(values.values()))) if values else 1
            end = start + self.spec.size
            missing = [c for c, _ in self.out_schema.fields[4:] if c not in values]
            if missing:
                raise OperatorError(self.name, ValueError(
                    f"the window function returned the columns {sorted(values)} for key {key!r}, window starting "
                    f"at {start}, without {missing}; it must return the same columns for every window (those of "
                    f"schema= or of its call on a sample window)"))
            row = {self.key_col: np.full(n, key), "window_start": np.full(n, start, np.int64),
                   "window_end": np.full(n, end, np.int64), "window_time": np.full(n, end - 1, np.int64)}
            parts.append({**row, **values})
        out = {name: np.concatenate([p[name] for p in parts]).astype(dtype if dtype.kind != "U" else str)
               for name, dtype in self.out_schema.fields}
        wm = np.full(len(out["window_time"]), self.wm, np.int64)
        return [(OUT, Batch(out, wm))]

    def snapshot(self) -> dict[str, Any]:
        return {"wm": self.wm, "cells": {k: [dict(c) for c in v] for k, v in self.cells.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.wm = state["wm"]
        self.cells = {k: list(v) for k, v in state["cells"].items()}
