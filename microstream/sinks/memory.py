"""Sinks that stay in the program: `Collect` (results in memory), callbacks, the terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..core.batch import Batch
from ..core.schema import Schema
from .base import Sink


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
    cpu_us = 0.5
    collects = True

    def __init__(self) -> None:
        self._batches: list[Batch] = []      # spec: the last run's results; instance: this run's
        self._lock = threading.Lock()
        self._schema: Schema | None = None

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        self._schema = inputs[0]
        return {}

    def open(self, ctx) -> None:
        super().open(ctx)
        self._batches = []
        self._lock = threading.Lock()

    def write(self, batch: Batch) -> None:
        with self._lock:
            self._batches.append(batch.compact())

    def snapshot(self) -> dict[str, Any]:
        return {"batches": [b.to_dict() for b in self._batches]}

    def restore(self, state: dict[str, Any]) -> None:
        self._batches = [Batch(d) for d in state["batches"]]

    def results(self) -> list[Any]:
        return [b.to_dict() for b in self._batches]

    def deliver(self, results: list[Any]) -> None:
        batches = [b if isinstance(b, Batch) else Batch(b) for b in results]
        with self._lock:
            self._batches[:] = batches

    def batches(self) -> list[Batch]:
        return list(self._batches)

    def batch(self) -> Batch:
        if self._batches:
            return Batch.concat(self._batches)
        schema = self._schema
        return Batch(schema.empty_columns() if schema else {})

    def records(self) -> list[dict[str, Any]]:
        return [r for b in self._batches for r in b.to_records()]

    def to_pandas(self, *, tz: str | None = "UTC", times: Iterable[str] = ()) -> Any:
        """The collected records as a pandas DataFrame (pandas is an optional extra: `pip install
        'microstream[pandas]'`). Time columns become timezone-aware Timestamps in `tz` (UTC by default; e.g.
        "Europe/Paris"; None keeps them int64 nanoseconds): the stream's event-time column, `window_start` and
        `window_end` of window results, and the columns named in `times` (say, `left_t` of a join).

        >>> import microstream as ms
        >>> p = ms.Pipeline("w"); out = ms.sinks.collect()
        >>> p.from_iterable([{"k": 1, "t": 1_700_000_000 * 10**9, "v": 2.0}], time="t").key_by("k").window(
        ...     ms.tumbling("1min")).aggregate(n=ms.agg.count()).sink(out)
        >>> _ = p.run(); out.to_pandas(tz="Europe/Paris").iloc[0].to_dict()   # doctest: +NORMALIZE_WHITESPACE
        {'k': 1, 'window_start': Timestamp('2023-11-14 23:13:00+0100', tz='Europe/Paris'),
         'window_end': Timestamp('2023-11-14 23:14:00+0100', tz='Europe/Paris'),
         'window_time': Timestamp('2023-11-14 23:13:59.999999999+0100', tz='Europe/Paris'), 'pane': 'on_time', 'n': 1}
        """
        from ..core.optional import require

        pd = require("pandas", "to_pandas")
        batch = self.batch()
        frame = pd.DataFrame({name: batch[name] for name in batch.names})
        if tz is None:
            return frame
        schema = self._schema
        wanted = {*(times or ()), *([schema.time] if schema is not None and schema.time else [])}
        if "window_time" in batch.names:
            wanted |= {"window_start", "window_end", "window_time"}
        for name in batch.names:
            if name in wanted and batch[name].dtype.kind in "iu":
                frame[name] = pd.to_datetime(frame[name], unit="ns", utc=True).dt.tz_convert(tz)
        return frame

    def __len__(self) -> int:
        return sum(b.num_rows for b in self._batches)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_batches"] = []  # results travel back separately
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_lock"] = threading.Lock()


class CallbackSink(Sink):
    """Call `fn(batch)` for every batch (a `Batch`, i.e. a mapping of column name to numpy array)."""

    kind = "callback"
    cpu_us = 2.0

    def __init__(self, fn: Callable[[Batch], None]) -> None:
        self.fn = fn

    def write(self, batch: Batch) -> None:
        self.fn(batch.compact())


class PrintSink(Sink):
    """Print records as aligned rows (event times in ISO-8601) to stdout."""

    kind = "print"
    cpu_us = 5.0

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
