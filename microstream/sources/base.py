"""Sources: where records enter a pipeline, and where event time and watermarks are born.

Every source is polled by the runtime: `poll(now)` returns what is ready, `next_due(now)` says when
to ask again (None: ready now), `finished` says the source is exhausted. A source with event time
stamps each record with the watermark `max(event time so far) - max_delay` (bounded
out-of-orderness), computed vectorised per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..core.time import MIN_TIME, SECOND, check_time_unit, event_times, format_ns, suspect_time_unit, time_unit_fix
from ..operators.base import OUT, Emit, Operator


def _bounded_watermarks(t: np.ndarray, max_seen: int, delay: int, out: np.ndarray) -> int:
    """out[i] = max(max_seen, t[0..i]) - delay; returns the new max. numpy rather than a numba kernel: as fast
    (two passes over a batch), and a fresh process's first job has one kernel fewer to load."""
    if len(t) == 0:
        return max_seen
    np.maximum.accumulate(t, out=out)
    out[: int(np.searchsorted(out, max_seen))] = max_seen  # the running max is sorted: the prefix below max_seen
    m = int(out[-1])
    out -= delay
    return m


_LONG = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def time_column(values: Any, unit: str | None, *, column: str, operator: str | None) -> np.ndarray:
    """A source's event-time column as int64 nanoseconds, checked while the pipeline is built.

    Integers count `unit` (None: nanoseconds, and then values that look like epoch seconds, milliseconds or
    microseconds are refused with the fix); floats need a unit; `datetime64` columns and datetime or
    `pandas.Timestamp` objects carry their own. Text is refused: parse it first (or let `read_csv` do it).
    """
    check_time_unit(unit, operator)
    v = np.asarray(values)
    kind = v.dtype.kind
    if kind in "US" or kind == "b":
        what = "text" if kind in "US" else "booleans"
        raise PipelineError(operator, f"time column '{column}' holds {what} ({v.dtype}); event time is int64 "
                                      "nanoseconds since the epoch",
                            "convert it, e.g. np.asarray(texts, 'datetime64[ns]') for ISO text in UTC, or pass "
                            "numbers with time_unit='s'|'ms'|'us'|'ns'")
    if kind == "f" and unit is None:
        guess = suspect_time_unit(np.floor(v[np.isfinite(v)]).astype(np.int64)) or "s"
        raise PipelineError(operator, f"time column '{column}' holds floats ({v.dtype}), so its unit is unknown",
                            f"pass time_unit='{guess}' if the numbers count {_LONG[guess]} since the epoch "
                            "('s', 'ms', 'us' or 'ns': the unit they count)")
    if kind in "iu" and unit is None:
        unit_seen = suspect_time_unit(v)
        if unit_seen is not None:
            lo, hi = int(v.min()), int(v.max())
            long = _LONG[unit_seen]
            raise PipelineError(operator, f"time column '{column}' looks like epoch {long} ({lo:,} .. {hi:,}; "
                                          f"as nanoseconds that is {format_ns(lo)}), but event time is "
                                          "nanoseconds",
                                time_unit_fix(column, unit_seen))
    try:
        return event_times(v, unit)
    except (TypeError, ValueError) as exc:
        sample = next((x for x in v.ravel()[:1]), None)
        raise PipelineError(operator, f"time column '{column}' holds {type(sample).__name__} values that are not "
                                      f"times ({exc})",
                            "give int64 nanoseconds, numbers with time_unit=, datetime64 values or datetimes"
                            ) from None


class Source(Operator):
    """The base of every source (`ms.Source`): subclass it to read from anything, and add it with
    `p.add_source(MySource(...))`.

    The contract: `__init__` calls `super().__init__(time=..., max_delay=0, speed=None, batch_size=65536)`
    (`time` names the event-time column of int64 nanoseconds, or None) and sets only configuration; `schema`
    declares the columns (a mapping of name to dtype, as a class or instance attribute; or override
    `output_schemas`); `open(ctx)` (call `super().open(ctx)`) starts a run: whatever the reading needs
    (files, sockets, positions) is opened here, in the instance the runtime makes for the run, never in
    `__init__`, so that the spec can be shipped to a cluster and run twice. `read()` returns the next chunk, a
    list of `("out", ms.Batch({...}))` (empty when nothing is ready yet), or None at the end; watermarks are
    stamped for you. `reader_state()` and `restore_reader(state)` say where the source is (a small
    picklable value), so checkpoints, recoveries and live migration can resume it; without them the job still
    runs, but cannot be checkpointed or moved. `close()` releases what `open` took.

    >>> import microstream as ms, numpy as np
    >>> class Counter(ms.Source):
    ...     '''n readings of a counter, one a second, two per batch.'''
    ...     kind = "counter"
    ...     schema = {"t": "int64", "left": "int64"}
    ...     def __init__(self, n):
    ...         super().__init__(time="t", batch_size=2)
    ...         self.n = n
    ...     def open(self, ctx):
    ...         super().open(ctx)
    ...         self.next = 0
    ...     def read(self):
    ...         if self.next >= self.n:
    ...             return None                              # the end
    ...         i = np.arange(self.next, min(self.n, self.next + self.batch_size))
    ...         self.next = int(i[-1]) + 1
    ...         return [("out", ms.Batch({"t": i * 10**9, "left": self.n - 1 - i}))]
    ...     def reader_state(self):                          # where it is: checkpoints and moves
    ...         return self.next
    ...     def restore_reader(self, state):
    ...         self.next = state
    >>> p = ms.Pipeline("custom_source"); out = ms.sinks.collect()
    >>> p.add_source(Counter(3)).key_by("left").window(ms.tumbling("2s")).aggregate(n=ms.agg.count()).sink(out)
    >>> _ = p.run(); [(r["window_start"] // 10**9, r["left"]) for r in out.records()]
    [(0, 2), (0, 1), (2, 0)]
    """

    kind = "source"
    # The columns of a source that does not override `output_schemas`: {"name": dtype, ...}
    schema: Mapping[str, Any] | None = None
    n_inputs = 0
    polled = True
    # Read nothing for this long (ns) and the source goes idle: it stops holding back the watermark downstream
    # until it reads again (`idle_after=` on every source; None, the default: never, as in Flink)
    idle_after: int | None = None
    # A source that cannot be read again from a position (a sensor): given a log directory, the runtime reads
    # it into a local log first (`sources/log.py`), at most `log_limit` bytes, `log_full` saying what gives
    cannot_rewind = False
    log_limit: int | None = None
    log_full: str | None = None

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

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        """The columns the source emits (build time): by default from `schema`, with `time` as event time."""
        if self.schema is None:
            raise PipelineError(name, f"source '{type(self).__name__}' declares no columns",
                                "set schema = {'time': 'int64', 'value': 'float64', ...} on the class, or "
                                "override output_schemas(inputs, name)")
        schema = Schema.of(self.schema, time=self.time)
        if self.time is not None and schema.require(self.time, name, "time column") != np.int64:
            raise PipelineError(name, f"time column '{self.time}' must be int64 nanoseconds, it is "
                                      f"{schema.dtype(self.time)}", f"declare '{self.time}': 'int64'")
        return {OUT: schema}

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
            if self._pending is None or self._pending.num_rows == 0:
                self._pending = None
                return others
            return others + self._release(now)
        return self._release(now)

    def next_due(self, now: int) -> int | None:
        if self.speed is None or self._pending is None or self._pace_origin is None:
            return None
        t0, w0 = self._pace_origin
        first = int(self._times(self._pending)[0])
        return w0 + int((first - t0) / self.speed)

    def _release(self, now: int) -> Emit:
        """Real-time replay: emit the pending records whose scaled event time has come."""
        pending = self._pending
        assert pending is not None
        t = self._times(pending)
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
        t = self._times(batch)
        if len(t) == 0:
            return Batch(batch.to_dict(), np.empty(0, dtype=np.int64))
        wm = np.empty(len(t), dtype=np.int64)
        self.max_seen = _bounded_watermarks(t.astype(np.int64, copy=False), self.max_seen, self.max_delay, wm)
        return Batch(batch.to_dict(), wm)

    def _times(self, batch: Batch) -> np.ndarray:
        """The event-time column (stamping and real-time replay need one)."""
        if self.time is None:
            raise PipelineError(self.kind, "this source has no event-time column to stamp or replay by",
                                "give the source time=<column>")
        return batch[self.time]

    def end_watermark(self) -> int:
        return self.max_seen - self.max_delay if self.max_seen != MIN_TIME else MIN_TIME

    def size_hint(self) -> tuple[int, int] | None:
        """(read so far, total) in the source's own unit (rows, items, bytes) when the input's size is known,
        for the progress line's share and ETA; None for live or unsized input."""
        return None

    # -- state: where the source is, so a virtual node can be saved, restored or migrated ---------------
    def snapshot(self) -> dict[str, Any]:
        return self._state(self.reader_state())

    def checkpoint_snapshot(self) -> dict[str, Any]:
        return self._state(self.checkpoint_reader_state())

    def _state(self, reader: Any) -> dict[str, Any]:
        pending = self._pending.to_dict() if self._pending is not None else None
        return {"max_seen": self.max_seen, "position": self.position, "finished": self.finished,
                "pending": pending, "pace_origin": self._pace_origin, "reader": reader}

    @property
    def checkpointable(self) -> bool:
        """Whether checkpoints can capture where this source is (so a recovery can replay from there)."""
        return type(self).reader_state is not Source.reader_state

    def checkpoint_reader_state(self) -> Any:
        """Where the source is, for a checkpoint: the source goes on reading afterwards (default: reader_state)."""
        return self.reader_state()

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


class TickingSource(Source):
    """A source read on a clock: every `interval` ns, skipping missed ticks rather than bursting, at most
    `limit` times. Subclasses implement `read_now(now)`."""

    time: str  # a ticking source stamps its readings with the clock: it always has an event-time column
    cannot_rewind = True  # a sensor is read now or never: readings go through a local log (sources/log.py)

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
        # keep the cadence; after a stall (a slow first read, a busy machine: this read is over a tenth of an
        # interval late) skip the missed ticks instead of bursting: the next read is a whole interval after this one,
        # so reads are never closer than 0.9 intervals
        late = now - self._next > self.interval // 10
        self._next = now + self.interval if late else self._next + self.interval
        self._count += 1
        return self.read_now(now)

    def read_now(self, now: int) -> Emit:
        raise NotImplementedError
