"""Sinks: where records leave a pipeline (memory, files, callbacks, the terminal)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..batch import Batch
from ..schema import Schema
from .base import Emit, Operator

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


class Collect(Sink):
    """Keep every batch in memory; read it back after the run with `.batch()` or `.records()`.

    >>> import microstream as ms
    >>> p = ms.Pipeline("demo")
    >>> out = ms.sinks.collect()
    >>> p.from_iterable([{"v": 1}, {"v": 2}]).sink(out)
    >>> _ = p.run()
    >>> out.records()
    [{'v': 1}, {'v': 2}]
    """

    kind = "collect"

    def __init__(self) -> None:
        self._batches: list[Batch] = []
        self._lock = threading.Lock()
        self._schema: Schema | None = None

    def open(self, ctx) -> None:
        super().open(ctx)
        self._schema = ctx.input_schemas[0]
        self._batches = []

    def write(self, batch: Batch) -> None:
        with self._lock:
            self._batches.append(batch.compact())

    def snapshot(self) -> dict[str, Any]:
        return {"batches": [b.to_dict() for b in self._batches]}

    def restore(self, state: dict[str, Any]) -> None:
        self._batches = [Batch(d) for d in state["batches"]]

    def extend(self, batches: list[Batch], schema: Schema | None) -> None:
        """Results gathered elsewhere (another process) land here."""
        with self._lock:
            self._schema = schema or self._schema
            self._batches.extend(batches)

    def batches(self) -> list[Batch]:
        return list(self._batches)

    def batch(self) -> Batch:
        if self._batches:
            return Batch.concat(self._batches)
        schema = self._schema
        return Batch(schema.empty_columns() if schema else {})

    def records(self) -> list[dict[str, Any]]:
        return [r for b in self._batches for r in b.to_records()]

    def __len__(self) -> int:
        return sum(b.num_rows for b in self._batches)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_lock"] = None
        state["_batches"] = []  # results travel back separately
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class _FileSink(Sink):
    def __init__(self, path: str | Path, iso_time: bool = True) -> None:
        self.path = Path(path)
        self.iso_time = iso_time

    def describe(self) -> str:
        return str(self.path)

    def open(self, ctx) -> None:
        super().open(ctx)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a restored sink continues its file (restore() trims it to the saved size); a new one starts it
        self.restoring = bool(ctx.extra.get("restoring"))
        mode = "a" if self.restoring else "w"
        self._file: TextIO = open(self.path, mode, encoding="utf-8", newline="")  # noqa: SIM115

    def close(self) -> Emit:
        self._file.close()
        return []

    def snapshot(self) -> dict[str, Any]:
        self._file.flush()
        return {"size": self._file.tell()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the file where the saved sink left it (same path; on a shared or copied disk)."""
        self._file.close()
        self._file = open(self.path, "r+", encoding="utf-8", newline="")  # noqa: SIM115
        self._file.truncate(state["size"])
        self._file.seek(state["size"])
        if hasattr(self, "_writer"):
            self._writer = csv.writer(self._file)

    def _columns(self, batch: Batch) -> dict[str, np.ndarray]:
        return self._iso(batch) if self.iso_time else batch.to_dict()


class CsvSink(_FileSink):
    """Write records as CSV with a header; event-time columns as ISO-8601 UTC."""

    kind = "csv"

    def open(self, ctx) -> None:
        super().open(ctx)
        self._writer = csv.writer(self._file)
        if not self.restoring:
            self._writer.writerow(ctx.input_schemas[0].names)

    def write(self, batch: Batch) -> None:
        cols = self._columns(batch)
        self._writer.writerows(zip(*(c.tolist() for c in cols.values()), strict=True))
        self._file.flush()


class JsonlSink(_FileSink):
    """Write one JSON object per line; NaN becomes null; event-time columns as ISO-8601 UTC."""

    kind = "jsonl"

    def write(self, batch: Batch) -> None:
        cols = self._columns(batch)
        names = list(cols)
        buf = io.StringIO()
        for row in zip(*(c.tolist() for c in cols.values()), strict=True):
            buf.write(json.dumps({n: _json_safe(v) for n, v in zip(names, row, strict=True)}))
            buf.write("\n")
        self._file.write(buf.getvalue())
        self._file.flush()


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class CallbackSink(Sink):
    """Call `fn(batch)` for every batch (a `Batch`, i.e. a mapping of column name to numpy array)."""

    kind = "callback"

    def __init__(self, fn: Callable[[Batch], None]) -> None:
        self.fn = fn

    def write(self, batch: Batch) -> None:
        self.fn(batch.compact())


class PrintSink(Sink):
    """Print records as aligned rows (event times in ISO-8601) to stdout."""

    kind = "print"

    def __init__(self, prefix: str = "", file: TextIO | None = None) -> None:
        self.prefix = prefix
        self.file = file

    def write(self, batch: Batch) -> None:
        out = self.file or sys.stdout
        for rec in Batch(self._iso(batch)).to_records():
            body = "  ".join(f"{k}={_short(v)}" for k, v in rec.items())
            print(f"{self.prefix}{body}", file=out)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
