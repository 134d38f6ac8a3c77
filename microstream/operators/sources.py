"""Sources: where records enter a pipeline, and where event time and watermarks are born.

Every source is polled by the runtime: `poll(now)` returns what is ready, `next_due(now)` says when
to ask again (None: ready now), `finished` says the source is exhausted. A source with event time
stamps each record with the watermark `max(event time so far) - max_delay` (bounded
out-of-orderness), computed vectorised per batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numba
import numpy as np

from ..batch import Batch
from ..errors import PipelineError
from ..schema import Schema, schema_of_columns
from ..timeutil import MIN_TIME, SECOND
from .base import OUT, Emit, Operator


@numba.njit(cache=True)
def _bounded_watermarks(t, max_seen, delay, out):
    """out[i] = max(max_seen, t[0..i]) - delay; returns the new max."""
    m = max_seen
    for i in range(len(t)):
        if t[i] > m:
            m = t[i]
        out[i] = m - delay
    return m


class Source(Operator):
    kind = "source"
    n_inputs = 0

    def __init__(self, time: str | None, max_delay: int = 0, speed: float | None = None,
                 batch_size: int = 65536) -> None:
        if max_delay < 0:
            raise PipelineError(None, f"max_delay must be >= 0, got {max_delay}")
        if speed is not None and speed <= 0:
            raise PipelineError(None, f"speed must be positive (1.0 = real time), got {speed}",
                                "leave speed=None to replay as fast as possible")
        self.time = time
        self.max_delay = int(max_delay)
        self.speed = speed
        self.batch_size = int(batch_size)
        self.finished = False

    def open(self, ctx) -> None:
        super().open(ctx)
        self.finished = False
        self.max_seen = MIN_TIME
        self._pending: Batch | None = None
        self._pace_origin: tuple[int, int] | None = None  # (event time, wall clock) of the first record
        self.position = 0  # records emitted so far (the source's offset, for snapshots)

    def output_ports(self) -> tuple[str, ...]:
        return (OUT,)

    # -- subclasses implement ----------------------------------------------------------------------
    def read(self) -> Emit | None:
        """Next chunk: a list of (port, batch) with columns but no watermarks, or None at the end."""
        raise NotImplementedError

    # -- the runtime calls -------------------------------------------------------------------------
    def poll(self, now: int) -> Emit:
        if self.speed is None:
            return self._next_chunk()
        if self._pending is None:
            chunk = self._next_chunk()
            main = [b for p, b in chunk if p == OUT]
            others = [(p, b) for p, b in chunk if p != OUT]
            if main:
                self._pending = Batch.concat(main) if len(main) > 1 else main[0]
            if not self._pending or self._pending.num_rows == 0:
                self._pending = None
                return others
            return others + self._release(now)
        return self._release(now)

    def next_due(self, now: int) -> int | None:
        if self.speed is None or self._pending is None or self._pace_origin is None:
            return None
        t0, w0 = self._pace_origin
        first = int(self._pending[self.time][0])
        return w0 + int((first - t0) / self.speed)

    def _release(self, now: int) -> Emit:
        """Real-time replay: emit the pending records whose scaled event time has come."""
        pending = self._pending
        assert pending is not None
        t = pending[self.time]
        if self._pace_origin is None:
            self._pace_origin = (int(t[0]), now)
        t0, w0 = self._pace_origin
        due = w0 + ((t - t0) / self.speed).astype(np.int64)
        n = int(np.searchsorted(np.maximum.accumulate(due), now, side="right"))
        if n == 0:
            return []
        out = pending.take(np.arange(n))
        self._pending = pending.take(np.arange(n, len(t))) if n < len(t) else None
        return [(OUT, self.stamp(out))]

    def _next_chunk(self) -> Emit:
        chunk = self.read()
        if chunk is None:
            self.finished = True
            return []
        out: Emit = []
        for port, batch in chunk:
            if port == OUT and self.time is not None and self.speed is None:
                batch = self.stamp(batch)
            if port == OUT:
                self.position += batch.num_rows
            out.append((port, batch))
        return out

    def stamp(self, batch: Batch) -> Batch:
        """Attach per-record watermarks: running max of event time minus the allowed delay."""
        t = batch[self.time]
        if len(t) == 0:
            return Batch(batch.to_dict(), np.empty(0, dtype=np.int64))
        wm = np.empty(len(t), dtype=np.int64)
        self.max_seen = _bounded_watermarks(t.astype(np.int64, copy=False), self.max_seen, self.max_delay, wm)
        return Batch(batch.to_dict(), wm)

    def end_watermark(self) -> int:
        return self.max_seen - self.max_delay if self.max_seen != MIN_TIME else MIN_TIME

    # -- state: where the source is, so a virtual node can be saved, restored or migrated ---------------
    def snapshot(self) -> dict[str, Any]:
        pending = self._pending.to_dict() if self._pending is not None else None
        return {"max_seen": self.max_seen, "position": self.position, "finished": self.finished,
                "pending": pending, "pace_origin": self._pace_origin, "reader": self.reader_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.max_seen, self.position, self.finished = state["max_seen"], state["position"], state["finished"]
        self._pending = Batch(state["pending"]) if state["pending"] is not None else None
        self._pace_origin = state["pace_origin"]
        self.restore_reader(state["reader"])

    def reader_state(self) -> Any:
        """Subclasses: what it takes to continue reading exactly where the source is."""
        raise NotImplementedError(f"source '{self.kind}' cannot be saved or migrated yet")

    def restore_reader(self, state: Any) -> None:
        raise NotImplementedError(f"source '{self.kind}' cannot be saved or migrated yet")


# -- concrete sources ------------------------------------------------------------------------------

class ArraySource(Source):
    """Columns already in memory, cut into batches: the fastest source (benchmarks, tests)."""

    kind = "from_arrays"

    def __init__(self, columns: Mapping[str, np.ndarray], time: str | None = None, max_delay: int = 0,
                 batch_size: int = 65536, speed: float | None = None) -> None:
        super().__init__(time, max_delay, speed, batch_size)
        self.columns = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise PipelineError(None, f"from_arrays: columns have different lengths {sorted(lengths)}")

    def describe(self) -> str:
        n = len(next(iter(self.columns.values()))) if self.columns else 0
        return f"{n:,} rows"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        schema = schema_of_columns(self.columns, time=self.time)
        _check_time(schema, self.time, name)
        return {OUT: schema}

    def open(self, ctx) -> None:
        super().open(ctx)
        self._offset = 0

    def read(self) -> Emit | None:
        n = len(next(iter(self.columns.values()))) if self.columns else 0
        if self._offset >= n:
            return None
        lo, hi = self._offset, min(n, self._offset + self.batch_size)
        self._offset = hi
        return [(OUT, Batch({k: v[lo:hi] for k, v in self.columns.items()}))]

    def reader_state(self) -> Any:
        return self._offset

    def restore_reader(self, state: Any) -> None:
        self._offset = state


class IterableSource(Source):
    """Records (dicts) or batches (dicts of arrays, or `Batch`) from any iterable."""

    kind = "from_iterable"

    def __init__(self, items: Iterable[Any], time: str | None = None, max_delay: int = 0,
                 batch_size: int = 1024, schema: Mapping[str, Any] | None = None) -> None:
        super().__init__(time, max_delay, None, batch_size)
        self._items: Iterator[Any] = iter(items)
        self._peeked: list[Any] = []
        self.schema = schema

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if self.schema is not None:
            schema = Schema.of(self.schema, time=self.time)
        else:
            first = next(self._items, None)
            if first is None:
                raise PipelineError(name, "from_iterable got an empty iterable, so its columns are unknown",
                                    "pass schema={'col': 'float64', ...}")
            self._peeked.append(first)
            schema = schema_of_columns(self._to_batch([first]).to_dict(), time=self.time)
        _check_time(schema, self.time, name)
        return {OUT: schema}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.out_schema = ctx.output_schemas[OUT]

    def read(self) -> Emit | None:
        items = self._peeked + list(itertools.islice(self._items, self.batch_size - len(self._peeked)))
        self._peeked = []
        if not items:
            return None
        if isinstance(items[0], (Batch, dict)) and not _is_record(items[0]):
            return [(OUT, self._cast(self._to_batch([it]))) for it in items]
        return [(OUT, self._cast(self._to_batch(items)))]

    def reader_state(self) -> Any:
        import cloudpickle

        try:
            return cloudpickle.dumps((self._items, self._peeked))
        except Exception as exc:  # generators cannot be pickled
            raise NotImplementedError(f"from_iterable over a {type(self._items).__name__} cannot be saved or "
                                      "migrated; pass a list") from exc

    def restore_reader(self, state: Any) -> None:
        import cloudpickle

        self._items, self._peeked = cloudpickle.loads(state)

    def _to_batch(self, items: list[Any]) -> Batch:
        first = items[0]
        if isinstance(first, Batch):
            return first
        if isinstance(first, Mapping) and not _is_record(first):
            return Batch({k: np.asarray(v) for k, v in first.items()})
        return Batch.from_records(items)

    def _cast(self, batch: Batch) -> Batch:
        cols = {}
        for name, dtype in self.out_schema.fields:
            col = batch[name]
            cols[name] = col if col.dtype.kind == dtype.kind == "U" or col.dtype == dtype else col.astype(dtype)
        return Batch(cols)


def _is_record(item: Any) -> bool:
    return isinstance(item, Mapping) and not any(isinstance(v, (np.ndarray, list)) for v in item.values())


class TickingSource(Source):
    """A source read on a clock: every `interval` ns, skipping missed ticks rather than bursting, at most
    `limit` times. Subclasses implement `read_now(now)`."""

    def __init__(self, time: str, interval: int, limit: int | None, max_delay: int = 0) -> None:
        super().__init__(time, max_delay, None, 1)
        self.interval = int(interval)
        self.limit = limit

    def describe(self) -> str:
        return f"every {self.interval / SECOND:g} s"

    def open(self, ctx) -> None:
        super().open(ctx)
        self.clock = ctx.clock
        self._next = self.clock()
        self._count = 0

    def next_due(self, now: int) -> int | None:
        return self._next

    def reader_state(self) -> Any:
        return {"next": self._next, "count": self._count}

    def restore_reader(self, state: Any) -> None:
        self._next, self._count = state["next"], state["count"]

    def poll(self, now: int) -> Emit:
        if now < self._next:
            return []
        if self.limit is not None and self._count >= self.limit:
            self.finished = True
            return []
        self._next = max(self._next + self.interval, now)  # skip missed ticks instead of bursting
        self._count += 1
        return self.read_now(now)

    def read_now(self, now: int) -> Emit:
        raise NotImplementedError


class PollSource(TickingSource):
    """Call `fn()` every `interval` ns, like reading a sensor; the reading is stamped with the clock.

    `fn` returns a dict (one reading), a dict of arrays (several), or None (nothing this time).
    """

    kind = "poll"

    def __init__(self, fn: Callable[[], Any], interval: int, time: str = "time", max_delay: int = 0,
                 limit: int | None = None, schema: Mapping[str, Any] | None = None) -> None:
        if interval <= 0:
            raise PipelineError(None, f"poll interval must be positive, got {interval} ns")
        super().__init__(time, interval, limit, max_delay)
        self.fn = fn
        self.schema = schema

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if self.schema is not None:
            fields = dict(Schema.of(self.schema).fields)
        else:
            sample = self.fn()
            if sample is None:
                raise PipelineError(name, "the polled function returned None when sampled at build time",
                                    "pass schema={'col': 'float64', ...}")
            self._first = sample
            fields = dict(schema_of_columns(_reading_columns(sample)).fields)
        fields.setdefault(self.time, np.int64)
        return {OUT: Schema.of(fields, time=self.time)}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.out_schema = ctx.output_schemas[OUT]

    def restore_reader(self, state: Any) -> None:
        super().restore_reader(state)
        self._first = None

    def read_now(self, now: int) -> Emit:
        first = getattr(self, "_first", None)
        reading = first if first is not None else self.fn()
        self._first = None
        if reading is None:
            return []
        cols = _reading_columns(reading)
        n = len(next(iter(cols.values())))
        if self.time not in cols:
            cols[self.time] = np.full(n, now, dtype=np.int64)
        cols = {name: np.asarray(cols[name], dtype=dtype if dtype.kind != "U" else str)
                for name, dtype in self.out_schema.fields}
        self.position += n
        return [(OUT, self.stamp(Batch(cols)))]


def _reading_columns(reading: Any) -> dict[str, np.ndarray]:
    if isinstance(reading, Batch):
        return reading.to_dict()
    if not isinstance(reading, Mapping):
        return {"value": np.atleast_1d(np.asarray(reading))}
    return {k: np.atleast_1d(np.asarray(v)) for k, v in reading.items()}


def _check_time(schema: Schema, time: str | None, name: str) -> None:
    if time is None:
        return
    dtype = schema.require(time, name, "time column")
    if dtype != np.int64:
        raise PipelineError(name, f"time column '{time}' has dtype {dtype}; event time must be int64 "
                                  "nanoseconds since the epoch",
                            "convert it, e.g. np.asarray(times, 'datetime64[ns]').astype('int64')")
