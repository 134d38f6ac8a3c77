"""The user API: a `Pipeline` holds sources; a `Stream` is a fluent handle on one operator output.

Nothing runs while a pipeline is built. Every call checks what it can (columns, keys, event time,
schemas of both sides of a union) and fails at the line that made the mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .agg import Aggregate
from .core.batch import Batch
from .core.calls import check_options, options_of, public, unknown_option, user_line
from .core.errors import PipelineError, suggest
from .core.schema import Schema
from .core.time import to_ns
from .graph.logical import DeadLetterHub, LogicalGraph, Node
from .operators.base import LATE, OUT, Operator
from .operators.stateless import Filter, FlatMap, KeyBy, Map, MapRecords, Split, Union
from .operators.window import EMITS, WindowAggregate
from .sinks.base import Sink
from .sources.base import Source
from .sources.memory import ArraySource, IterableSource, PollSource
from .windows import WindowSpec

if TYPE_CHECKING:
    from .runtime.results import RunResult



def _check_backend(backend: str, where: str) -> None:
    from .runtime.backends import KNOWN_BACKENDS

    if backend not in KNOWN_BACKENDS:
        raise PipelineError(where, f"unknown host backend '{backend}'", f"use one of {sorted(KNOWN_BACKENDS)}")


def _delay(value: Any, where: str) -> int:
    ns = to_ns(value, "max_delay", operator=where)
    if ns < 0:
        raise PipelineError(where, f"max_delay must not be negative, got {value!r}", "e.g. max_delay='5s'")
    return ns


def _lateness(value: Any, where: str) -> int:
    ns = to_ns(value, "lateness", operator=where)
    if ns < 0:
        raise PipelineError(where, f"lateness must not be negative, got {value!r}", "e.g. lateness='1min'")
    return ns


def _interval(value: Any, where: str) -> int:
    ns = to_ns(value, "every", operator=where)
    if ns <= 0:
        raise PipelineError(where, f"every must be positive, got {value!r}", "e.g. every='500ms' or every=0.5")
    return ns


def _idle_after(value: Any, where: str) -> int | None:
    ns = to_ns(value, "idle_after", operator=where)
    if ns is not None and ns <= 0:
        raise PipelineError(where, f"idle_after must be positive, got {value!r}", "e.g. idle_after='30s', or None")
    return ns


_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "k": 1 << 10, "mb": 1 << 20, "m": 1 << 20, "gb": 1 << 30, "g": 1 << 30}


def _log_options(source: Operator, where: str, log_limit: Any, log_full: str) -> None:
    """A polled sensor's local log: its size cap (bytes, or text such as "64MB") and what gives when full."""
    from .sources.log import ON_FULL, SEGMENT_BYTES

    text = str(log_limit).strip().lower().replace(" ", "")
    number = text.rstrip("kmgb")
    if isinstance(log_limit, bool) or not number.replace(".", "", 1).isdigit() or text[len(number):] not in _UNITS:
        raise PipelineError(where, f"log_limit must be a size, got {log_limit!r}", "e.g. log_limit='64MB'")
    limit = int(float(number) * _UNITS[text[len(number):]])
    if limit < 2 * SEGMENT_BYTES:
        raise PipelineError(where, f"log_limit must be at least {2 * SEGMENT_BYTES >> 20} MB (two segments), got "
                                   f"{log_limit!r}", "e.g. log_limit='64MB'")
    if log_full not in ON_FULL:
        meant = suggest(str(log_full), list(ON_FULL))
        raise PipelineError(where, f"log_full must be one of {ON_FULL}, got {log_full!r}",
                            f"log_full={meant!r}" if meant else "log_full='drop_oldest' keeps the newest readings")
    source.log_limit, source.log_full = limit, log_full


def _check_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, WindowSpec):
        raise PipelineError(where, f"{spec!r} is not a window", "build one with ms.tumbling('10min'), "
                                                                "ms.sliding('8h', '1h') or ms.session('5min')")




_caller = user_line


@contextmanager
def _naming(where: str) -> Iterator[None]:
    """An operator's constructor checks its arguments before it has a name: its errors get the name it will have."""
    try:
        yield
    except PipelineError as exc:
        if exc.operator is not None:
            raise
        raise PipelineError(where, exc.problem, exc.fix) from None


def _batch_size(value: Any, where: str) -> Any:
    """A source's `batch_size`: records read per batch, at least 1 (0 read nothing, a negative one never ended)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PipelineError(where, f"batch_size must be a whole number of records, at least 1, got {value!r}",
                            "e.g. batch_size=4096, or leave it out for the default")
    return value


def _streams(others: Iterable[Any], where: str, method: str) -> None:
    for o in others:
        if not isinstance(o, Stream):
            raise PipelineError(where, f"{method}() needs streams, got {type(o).__name__}",
                                f"pass the streams themselves, e.g. a.{method}(b{', c' if method == 'union' else ''})"
                                + (" (unpack a list with *)" if isinstance(o, (list, tuple)) else ""))


class Stream:
    """One output of an operator. Every method adds an operator and returns the new stream.

    What a method works on (a function, a column, a window, a sink) is positional; its options are keyword-only,
    and every operator takes `name=`: the operator's name in messages, `describe()`, the DAG and metrics (unique
    per pipeline; by default its kind, numbered). A keyword a method does not have is a `PipelineError` naming
    your line and the option meant."""

    def __init__(self, pipeline: Pipeline, node: Node, port: str = OUT) -> None:
        self.pipeline = pipeline
        self.node = node
        self.port = port

    def __repr__(self) -> str:
        return f"<Stream {self.node.name}{'' if self.port == OUT else '.' + self.port}: {self.schema.describe()}>"

    @property
    def schema(self) -> Schema:
        return self.node.out_schemas[self.port]

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def _then(self, op: Operator, name: str | None, others: Iterable[Stream] = (), at: str | None = None) -> Stream:
        inputs = [(self.node.id, self.port)] + [(o.node.id, o.port) for o in others]
        for o in others:
            if o.pipeline is not self.pipeline:
                raise PipelineError(name or op.kind, "streams from two different pipelines",
                                    "build every stream of a job from the same Pipeline")
        node = self.pipeline.graph.add(op, inputs, name, _caller(), at=at)
        return Stream(self.pipeline, node)

    @public
    def apply(self, op: Operator, *, name: str | None = None, at: str | None = None) -> Stream:
        """Add an operator of your own (an `ms.Operator`) and return its output stream: the extension point
        the built-in methods use. The contract (see `microstream.operators.base`): `__init__` sets only
        configuration; `output_schemas(inputs, name)` checks the input columns (`inputs[0]`, an `ms.Schema`)
        and returns `{"out": schema}`; `process(port, batch)` returns the batches it emits, `[("out", batch)]`,
        keeping each record's watermark (`batch.with_columns(...)`, `batch.filter(mask)` and `batch.take(rows)`
        do); per-run state is set in `open(ctx)` and saved by `snapshot()`/`restore()`; `keyed = True` if it
        keeps per-key state. `at` pins it to a node on a cluster.

        >>> import microstream as ms, numpy as np
        >>> class Clip(ms.Operator):
        ...     '''Clips a column into [lo, hi].'''
        ...     kind = "clip"
        ...     def __init__(self, column, lo, hi):
        ...         self.column, self.lo, self.hi = column, lo, hi
        ...     def output_schemas(self, inputs, name):
        ...         inputs[0].require(self.column, name)
        ...         return {"out": inputs[0]}
        ...     def process(self, port, batch):
        ...         clipped = np.clip(batch[self.column], self.lo, self.hi)
        ...         return [("out", batch.with_columns({self.column: clipped}))]
        >>> p = ms.Pipeline("apply"); out = ms.sinks.collect()
        >>> p.from_iterable([{"rh": -3.0}, {"rh": 45.0}, {"rh": 104.0}]).apply(Clip("rh", 0, 100)).sink(out)
        >>> _ = p.run(); out.batch()["rh"].tolist()
        [0.0, 45.0, 100.0]
        """
        where = name or str(getattr(op, "kind", "apply"))
        if isinstance(op, Sink):
            raise PipelineError(where, "apply() got a sink", "send a stream to a sink with .sink(...)")
        if isinstance(op, Source):
            raise PipelineError(where, "apply() got a source", "add a source with p.add_source(...)")
        if not isinstance(op, Operator):
            raise PipelineError(where, f"apply() needs an ms.Operator, got {type(op).__name__}",
                                "for a function of the batch use .map(fn), .with_columns(...) or .filter(fn); "
                                "for an operator of your own subclass ms.Operator")
        return self._then(op, name, at=at)

    @public
    def with_parallelism(self, n: int) -> Stream:
        """Run the operator that produced this stream as `n` parallel tasks on a cluster (keyed operators are
        hash-partitioned by key). Locally everything runs in one task, with identical results.

        >>> import microstream as ms
        >>> p = ms.Pipeline("par")
        >>> s = p.from_iterable([{"k": 1, "t": 0, "v": 1.0}], time="t").key_by("k")
        >>> w = s.window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(4)
        >>> w.node.parallelism
        4
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise PipelineError(self.node.name, f"parallelism must be a whole number of at least 1, got {n!r}",
                                "e.g. .with_parallelism(4): four tasks, each with a share of the keys")
        if n > 1 and (self.node.is_source or isinstance(self.node.op, DeadLetterHub)):
            raise PipelineError(self.node.name, "sources, sinks and the dead-letter stream run as one task",
                                "set parallelism on the operators after it, e.g. "
                                "p.read_csv(...).key_by('room').window(...).aggregate(...).with_parallelism(4)")
        self.node.parallelism = int(n)
        return self

    @public
    def with_backend(self, backend: str) -> Stream:
        """Require a host backend for the operator that produced this stream on a cluster: `"microvm"` runs it
        in a single-application VM (e.g. untrusted code); `"process"` (the default) in a subprocess. The
        placement engine only puts it on nodes whose agents offer that backend; locally it has no effect.

        >>> import microstream as ms
        >>> p = ms.Pipeline("isolated")
        >>> s = p.from_iterable([{"v": 1.0}]).map(lambda b: {"v": b["v"] * 2}).with_backend("microvm")
        >>> s.node.backend
        'microvm'
        """
        _check_backend(backend, self.node.name)
        self.node.backend = backend
        return self

    # -- stateless --------------------------------------------------------------------------------
    @public
    def map(self, fn: Callable[[Batch], Mapping[str, Any]], *, name: str | None = None) -> Stream:
        """Vectorised map: `fn(batch)` returns the new columns (the event-time column is kept). `name` names
        the operator (in messages, `describe()`, metrics; every operator takes it).

        >>> import microstream as ms
        >>> p = ms.Pipeline("m"); out = ms.sinks.collect()
        >>> p.from_iterable([{"c": 20.0}]).map(lambda b: {"f": b["c"] * 1.8 + 32}).sink(out)
        >>> _ = p.run(); out.records()
        [{'f': 68.0}]
        """
        return self._then(Map(fn), name)

    @public
    def with_columns(self, *, name: str | None = None, **columns: Callable[[Batch], Any]) -> Stream:
        """Add or replace columns, keeping the others: `.with_columns(f=lambda b: b["c"] * 1.8 + 32)` (every
        keyword but `name` is a column and the function computing it from the batch).

        >>> import microstream as ms
        >>> p = ms.Pipeline("w"); out = ms.sinks.collect()
        >>> p.from_iterable([{"c": 10.0}]).with_columns(d=lambda b: b["c"] * 2).sink(out)
        >>> _ = p.run(); out.records()
        [{'c': 10.0, 'd': 20.0}]
        """
        fns = dict(columns)
        return self._then(Map(lambda b: {k: f(b) for k, f in fns.items()}, keep=True), name or "with_columns")

    @public
    def select(self, *columns: str, name: str | None = None) -> Stream:
        """Keep only the named columns (and the event-time column)."""
        if not columns:
            raise PipelineError(name or "select", "select() needs the columns to keep",
                                f"e.g. .select({', '.join(repr(c) for c in self.schema.names[:2])})")
        for c in columns:
            self.schema.require(c, name or "select", "column")
        cols = list(columns)
        return self._then(Map(lambda b: {c: b[c] for c in cols}), name or "select")

    @public
    def filter(self, predicate: Callable[[Batch], np.ndarray], *, name: str | None = None) -> Stream:
        """Keep the records where `predicate(batch)` (a boolean array) is true.

        >>> import microstream as ms
        >>> p = ms.Pipeline("f"); out = ms.sinks.collect()
        >>> p.from_iterable([{"co2": 400.0}, {"co2": -1.0}]).filter(lambda b: b["co2"] > 0).sink(out)
        >>> _ = p.run(); out.records()
        [{'co2': 400.0}]
        """
        return self._then(Filter(predicate), name)

    @public
    def flat_map(self, fn: Callable[[Batch], tuple[np.ndarray, Mapping[str, Any]]], *,
                 name: str | None = None) -> Stream:
        """Vectorised flat map: `fn(batch)` returns `(parent, columns)`, output row j coming from input
        row `parent[j]` (whose event time it keeps).

        >>> import microstream as ms, numpy as np
        >>> p = ms.Pipeline("fm"); out = ms.sinks.collect()
        >>> def melt(b):  # one record per gas
        ...     n = len(b["co"]); parent = np.concatenate([np.arange(n), np.arange(n)])
        ...     return parent, {"gas": np.repeat(["co", "no2"], n), "value": np.concatenate([b["co"], b["no2"]])}
        >>> p.from_iterable([{"co": 1.0, "no2": 2.0}]).flat_map(melt).sink(out)
        >>> _ = p.run(); out.records()
        [{'gas': 'co', 'value': 1.0}, {'gas': 'no2', 'value': 2.0}]
        """
        return self._then(FlatMap(fn), name)

    @public
    def map_records(self, fn: Callable[[dict[str, Any]], dict[str, Any] | None], *,
                    schema: Mapping[str, Any] | None = None, name: str | None = None) -> Stream:
        """Per-record escape hatch for object payloads; slow, so prefer `map`. A record whose call raises
        goes to the dead-letter stream with the error; returning None drops it. `schema` declares the output
        columns (`{"temp": "float64"}`); without it they are learned by calling `fn` on a sample record.

        >>> import microstream as ms
        >>> p = ms.Pipeline("mr"); out = ms.sinks.collect()
        >>> p.from_iterable([{"raw": "21.5"}, {"raw": "oops"}]).map_records(
        ...     lambda r: {"t": float(r["raw"])}).sink(out)
        >>> result = p.run(); out.records(), result.dead_letter_count
        ([{'t': 21.5}], 1)
        """
        return self._then(MapRecords(fn, schema), name)

    @public
    def split(self, selector: Callable[[Batch], np.ndarray], *, n: int = 2, name: str | None = None) -> list[Stream]:
        """Route records to `n` streams: `selector(batch)` gives each record's stream number (or a boolean
        mask for n=2, True to the first).

        >>> import microstream as ms
        >>> p = ms.Pipeline("s"); hi, lo = ms.sinks.collect(), ms.sinks.collect()
        >>> a, b = p.from_iterable([{"v": 5}, {"v": 50}]).split(lambda b: b["v"] > 10)
        >>> a.sink(hi); b.sink(lo); _ = p.run(); (hi.records(), lo.records())
        ([{'v': 50}], [{'v': 5}])
        """
        with _naming(name or "split"):
            op = Split(selector, n)
        base = self._then(op, name)
        return [Stream(self.pipeline, base.node, str(i)) for i in range(n)]

    @public
    def split_on(self, column: str, values: Iterable[Any], *, name: str | None = None) -> dict[Any, Stream]:
        """One stream per listed value of `column`, plus `None` for every other value.

        >>> import microstream as ms
        >>> p = ms.Pipeline("so"); a, rest = ms.sinks.collect(), ms.sinks.collect()
        >>> by = p.from_iterable([{"room": "a", "v": 1}, {"room": "b", "v": 2}]).split_on("room", ["a"])
        >>> by["a"].sink(a); by[None].sink(rest); _ = p.run(); (a.records(), rest.records())
        ([{'room': 'a', 'v': 1}], [{'room': 'b', 'v': 2}])
        """
        self.schema.require(column, name or "split_on", "column")
        vals = list(values)
        lookup = np.asarray(vals)

        def which(b: Batch) -> np.ndarray:
            col = b[column]
            idx = np.full(len(col), len(vals), dtype=np.int64)
            for i, v in enumerate(lookup):  # once per listed value, vectorised over the batch
                idx[col == v] = i
            return idx

        streams = self.split(which, n=len(vals) + 1, name=name or "split_on")
        return {**dict(zip(vals, streams[:-1], strict=True)), None: streams[-1]}

    @public
    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """Merge streams with identical columns; the watermark is the slowest input's.

        >>> import microstream as ms
        >>> p = ms.Pipeline("u"); out = ms.sinks.collect()
        >>> a = p.from_iterable([{"v": 1}]); b = p.from_iterable([{"v": 2}])
        >>> a.union(b).sink(out); _ = p.run(); sorted(r["v"] for r in out.records())
        [1, 2]
        """
        where = name or "union"
        _streams(others, where, "union")
        seen = [(self.node.id, self.port)]
        for o in others:
            if (o.node.id, o.port) in seen:
                raise PipelineError(where, f"the stream of '{o.node.name}' is given to union twice, so each of its "
                                           "records would come out twice",
                                    "give each stream once; to send one stream to two places, use it twice "
                                    "downstream instead")
            seen.append((o.node.id, o.port))
        return self._then(Union(1 + len(others)), name, others)

    @public
    def key_by(self, key: str, *, name: str | None = None) -> Stream:
        """Partition by `key` (an int or str column); windows and per-key state need a key.

        >>> import microstream as ms
        >>> p = ms.Pipeline("k")
        >>> p.from_iterable([{"room": "a", "v": 1.0}]).key_by("room").schema.key
        'room'
        """
        return self._then(KeyBy(key), name)

    # -- stateful ---------------------------------------------------------------------------------
    @public
    def stateful_map(self, step: Callable, column: str, *, out: str, state_size: int = 1,
                     init: float | Iterable[float] = 0.0, name: str | None = None) -> Stream:
        """Per-key state in numba: for each record, `out = step(state, t, x)` where `state` is this key's
        float64 array of `state_size` (starting at `init`, a number or one per slot), `t` the event time (ns)
        and `x` the value of `column`; `out` names the result column (float64).
        Built-in steps live in `ms.state` (`delta`, `ewma(alpha)`, `cumsum`, `rate`).

        >>> import microstream as ms
        >>> p = ms.Pipeline("sm"); out = ms.sinks.collect()
        >>> src = p.from_iterable([{"k": 1, "v": 1.0}, {"k": 1, "v": 3.0}, {"k": 2, "v": 5.0}])
        >>> src.key_by("k").stateful_map(ms.state.cumsum, "v", out="total").sink(out)
        >>> _ = p.run(); [r["total"] for r in out.records()]
        [1.0, 4.0, 5.0]
        """
        from .operators.stateful_map import StatefulMap

        with _naming(name or "stateful_map"):
            op = StatefulMap(step, column, out, state_size, init)
        return self._then(op, name)

    @public
    def alert(self, column: str, *, above: float | None = None, below: float | None = None,
              clear_below: float | None = None, clear_above: float | None = None, for_at_least: Any = 0,
              clear_for: Any = None, name: str | None = None) -> Stream:
        """Per key, threshold alerts that do not flap: a `raise` record once `column` has stayed above `above`
        (or below `below`) for `for_at_least` (a duration, default at once), a `clear` record once it has stayed
        below `clear_below` (above `clear_above`) for `clear_for` (default: `for_at_least`). Between the two
        thresholds (hysteresis) nothing changes; a reading back on the other side restarts the wait (debounce).
        The stream must be keyed and have event time; durations are in event time, records are taken in
        arrival order, NaN values are ignored. Output: the record that completed the condition with two more
        columns, `alert` ("raise" or "clear") and `since` (when the condition started to hold). A compiled
        loop with two numbers of state per key, kept in checkpoints and moves.

        >>> import microstream as ms
        >>> p = ms.Pipeline("alert"); out = ms.sinks.collect()
        >>> co2 = [900, 1010, 990, 1020, 1030, 1040, 960, 1010, 850, 840, 830]   # one reading a minute
        >>> recs = [{"room": "a", "t": i * 60 * 10**9, "co2": float(v)} for i, v in enumerate(co2)]
        >>> (p.from_iterable(recs, time="t").key_by("room")
        ...  .alert("co2", above=1000, clear_below=900, for_at_least="2min").sink(out))
        >>> _ = p.run(); [(r["alert"], r["t"] // 60e9, r["since"] // 60e9) for r in out.records()]
        [('raise', 5.0, 3.0), ('clear', 10.0, 8.0)]
        """
        from .operators.alert import Alert

        where = name or "alert"
        if (above is None) == (below is None):
            raise PipelineError(where, "alert() needs one threshold: above= or below=",
                                "e.g. .alert('co2', above=1000, clear_below=900, for_at_least='2min')")
        if above is not None:
            if clear_above is not None:
                raise PipelineError(where, "clear_above= goes with below=; an above= alert clears with clear_below=",
                                    "e.g. above=1000, clear_below=900")
            sign, threshold, clear_at = 1, float(above), float(above if clear_below is None else clear_below)
            if clear_at > threshold:
                raise PipelineError(where, f"clear_below ({clear_at:g}) must not be above the threshold "
                                           f"({threshold:g})", "e.g. above=1000, clear_below=900")
        else:
            if clear_below is not None:
                raise PipelineError(where, "clear_below= goes with above=; a below= alert clears with clear_above=",
                                    "e.g. below=10, clear_above=12")
            assert below is not None
            sign, threshold, clear_at = -1, float(below), float(below if clear_above is None else clear_above)
            if clear_at < threshold:
                raise PipelineError(where, f"clear_above ({clear_at:g}) must not be below the threshold "
                                           f"({threshold:g})", "e.g. below=10, clear_above=12")
        hold = to_ns(for_at_least, "for_at_least", operator=where) or 0
        clear_hold = hold if clear_for is None else (to_ns(clear_for, "clear_for", operator=where) or 0)
        if hold < 0 or clear_hold < 0:
            raise PipelineError(where, "for_at_least and clear_for must not be negative", "e.g. for_at_least='2min'")
        return self._then(Alert(column, sign, threshold, clear_at, hold, clear_hold), name)

    @public
    def window(self, spec: WindowSpec, *, lateness: Any = 0, time: str = "event", emit: str = "all",
               partial_late: bool = False) -> WindowedStream:
        """Group a keyed stream into windows (`ms.tumbling`, `ms.sliding`, `ms.session`); then `.aggregate(...)`.

        `lateness` (a duration: "30s", float seconds, a timedelta; default none) keeps windows open after the
        watermark passes their end: a late record inside it re-emits the window's updated result; later
        records go to the window's `.late` stream. `time="processing"` uses the arrival clock instead of
        event time (no record is then late: `lateness` is refused). Every result has a `pane` column:
        `on_time`, `late_update` (replaces the earlier row of the same key and bounds), `retract` (withdraws the
        earlier row of a session that grew or merged) or `final`. `emit="final"` (or `.final()`) emits each
        window once, when it can no longer change (its end plus `lateness`). `partial_late=True` also sends to
        `.late` the records of sliding windows that were too late for some of their windows only, with
        `missed_windows` and `missed_until` columns (the run counts them either way:
        `RunResult.late_window_drops`). These options are checked by the `.aggregate(...)` or
        `.apply(...)` that follows: an error names the operator you name there, and this call's line.

        >>> import microstream as ms
        >>> p = ms.Pipeline("w"); out = ms.sinks.collect()
        >>> recs = [{"s": 1, "t": t * 10**9, "v": float(t)} for t in range(25)]
        >>> p.from_iterable(recs, time="t").key_by("s").window(ms.tumbling(seconds=10)).aggregate(
        ...     n=ms.agg.count(), avg=ms.agg.mean("v")).sink(out)
        >>> _ = p.run(); [(r["n"], r["avg"]) for r in out.records()]
        [(10, 4.5), (10, 14.5), (5, 22.0)]
        """
        return WindowedStream(self, spec, lateness=lateness, time=time, emit=emit, partial_late=partial_late,
                              line=_caller())

    @public
    def join(self, other: Stream, window: WindowSpec, *, lateness: Any = 0, name: str | None = None) -> Stream:
        """Windowed inner join of two keyed streams on their keys: every pair of records with the same key
        in the same window. Columns of both sides are kept, prefixed `left_`/`right_` where names clash.
        `lateness` (a duration) as for `window`: later records go to `.late` (left) and `.side("late_right")`.

        >>> import microstream as ms
        >>> p = ms.Pipeline("j"); out = ms.sinks.collect()
        >>> t = p.from_iterable([{"room": "a", "ts": 1, "temp": 21.0}], time="ts").key_by("room")
        >>> h = p.from_iterable([{"room": "a", "ts": 2, "rh": 40.0}], time="ts").key_by("room")
        >>> t.join(h, ms.tumbling(minutes=1)).select("room", "temp", "rh").sink(out)
        >>> _ = p.run(); out.records()
        [{'window_time': 59999999999, 'room': 'a', 'temp': 21.0, 'rh': 40.0}]
        """
        from .operators.join import WindowJoin

        _streams([other], name or "join", "join")
        _check_spec(window, name or "join")
        return self._then(WindowJoin(window, _lateness(lateness, name or "join")), name, [other])

    # -- side outputs and sinks ---------------------------------------------------------------------
    @property
    def late(self) -> Stream:
        """Records that arrived after their window's allowed lateness (windows; the left side of joins)."""
        return self.side(LATE)

    @public
    def side(self, port: str) -> Stream:
        """A side output of this stream's operator by name, e.g. `join.side("late_right")`."""
        if port not in self.node.out_schemas or port == OUT:
            ports = [p for p in self.node.out_schemas if p != OUT]
            meant = suggest(str(port), ports)
            raise PipelineError(self.node.name, f"has no side output '{port}'; it has {ports}",
                                f"did you mean .side({meant!r})?" if meant else
                                "late records exist only for windows and joins")
        return Stream(self.pipeline, self.node, port)

    @public
    def sink(self, sink: Sink, *, name: str | None = None, at: str | None = None) -> None:
        """Send the stream to a sink from `ms.sinks`; `at="node"` pins it to a physical node on a cluster
        (where its file, display or actuator is)."""
        if not isinstance(sink, Sink):
            raise PipelineError(name or "sink", f"sink() needs a sink from ms.sinks, got {type(sink).__name__}",
                                "e.g. .sink(ms.sinks.jsonl('out.jsonl')); for a function use ms.sinks.callback(fn)")
        self._then(sink, name, at=at)


class WindowedStream:
    """A keyed stream cut into windows; `.aggregate(...)` turns it back into a stream of results."""

    def __init__(self, stream: Stream, spec: WindowSpec, *, lateness: Any = 0, time: str = "event",
                 emit: str = "all", partial_late: bool = False, line: str = "") -> None:
        # window(...)'s options as given: checked by `_checked` when aggregate() or apply() makes the operator, so
        # that an error names the operator the user named there (`name=`), with the line of the window() call
        self.stream, self.spec, self.lateness, self.time = stream, spec, lateness, time
        self.emit, self.partial_late, self.line = emit, bool(partial_late), line

    @property
    def processing_time(self) -> bool:
        return self.time == "processing"

    def _checked(self, where: str) -> int:
        """The window's options checked, an error naming the operator `where` and the window() line; the lateness
        in ns."""
        try:
            if self.time not in ("event", "processing"):
                raise PipelineError(where, f"time must be 'event' or 'processing', got {self.time!r}",
                                    "time='event' (the default) windows by the records' event time, "
                                    "time='processing' by the clock when they arrive")
            _check_spec(self.spec, where)
            if self.emit not in EMITS:
                close = suggest(str(self.emit), list(EMITS))
                raise PipelineError(where, f"emit must be one of {list(EMITS)}, got {self.emit!r}"
                                    + (f"; did you mean {close!r}?" if close else ""),
                                    "emit='all' gives every result as it changes, emit='final' one per window")
            lateness = _lateness(self.lateness, where)
            if lateness and self.processing_time:
                raise PipelineError(where, f"lateness={self.lateness!r} on a processing-time window: records are "
                                           "stamped with the clock as they arrive, so none is ever late",
                                    "drop lateness=, or window by event time: give the source a time column "
                                    "(time='...') and leave out time='processing'")
        except PipelineError as exc:
            if not self.line:
                raise
            raise PipelineError(exc.operator, f"{exc.problem} (window() at {self.line})", exc.fix) from None
        return lateness

    def final(self) -> WindowedStream:
        """Emit each window once, when it can no longer change (the watermark has passed its end plus the
        lateness): one row per key and window, `pane` = "final". Same as `window(spec, emit="final")`.

        >>> import microstream as ms
        >>> S = 10**9
        >>> p = ms.Pipeline("final"); out = ms.sinks.collect()
        >>> recs = [{"k": "a", "t": t * S} for t in (1, 4, 12, 3, 14, 9, 25)]
        >>> (p.from_iterable(recs, time="t").key_by("k").window(ms.tumbling("10s"), lateness="5s").final()
        ...  .aggregate(n=ms.agg.count()).sink(out))
        >>> _ = p.run(); [(r["window_start"] // S, r["n"], r["pane"]) for r in out.records()]
        [(0, 4, 'final'), (10, 2, 'final'), (20, 1, 'final')]
        """
        return WindowedStream(self.stream, self.spec, lateness=self.lateness, time=self.time, emit="final",
                              partial_late=self.partial_late, line=self.line)

    @public
    def apply(self, fn: Callable[[Batch], Any], *, schema: Mapping[str, Any] | None = None,
              name: str | None = None) -> Stream:
        """A window process function: `fn(batch)` gets each key's window as a Batch (the window's records in
        arrival order, columns as numpy arrays) and returns a dict of values (one result row) or of equal-length
        arrays, or a Batch (that many rows), output with the key, `window_start`, `window_end` and `window_time`.
        It runs once per window, when the window can no longer change (the watermark has passed its end plus
        the lateness); records too late for all their windows go to `.late`. Tumbling and sliding windows.
        `schema` ({"p95": "float64"}) names fn's columns; without it they are learned from a call on a one-record
        sample. This is the Python path, slower than `aggregate` with `ms.agg`: use it for what those cannot say.

        >>> import microstream as ms, numpy as np
        >>> p = ms.Pipeline("wapply"); out = ms.sinks.collect()
        >>> recs = [{"k": "a", "t": t * 10**9, "v": float(t * t)} for t in (0, 3, 1, 12, 2, 15, 25)]
        >>> def spread(w):
        ...     return {"n": len(w["v"]), "spread": np.ptp(w["v"]), "last": w["v"][-1]}
        >>> (p.from_iterable(recs, time="t", max_delay="2s").key_by("k").window(ms.tumbling("10s"), lateness="5s")
        ...  .apply(spread).sink(out))
        >>> _ = p.run(); [(r["window_start"] // 10**9, r["n"], r["spread"], r["last"]) for r in out.records()]
        [(0, 4, 9.0, 4.0), (10, 2, 81.0, 225.0), (20, 1, 0.0, 625.0)]
        """
        from .operators.window_apply import WindowApply

        lateness = self._checked(name or "window_apply")
        if self.processing_time:
            raise PipelineError(name or "window_apply", "apply() needs event-time windows",
                                "drop time='processing' from .window(...)")
        return self.stream._then(WindowApply(self.spec, fn, lateness, schema), name)

    @public
    def aggregate(self, *, name: str | None = None, **aggs: Aggregate) -> Stream:
        """One record per key and window with the named aggregates (every keyword but `name` is an output
        column and its `ms.agg` aggregate), plus `window_start`, `window_end` and `window_time` (= end - 1 ns,
        the result's event time)."""
        for out_name, agg in aggs.items():
            if not isinstance(agg, Aggregate):
                meant = suggest(out_name, ["name"]) if isinstance(agg, str) else None
                if meant:
                    raise unknown_option("aggregate", out_name, ["name"])
                raise PipelineError(name or "window_aggregate", f"'{out_name}' is not an aggregate",
                                    "use ms.agg.count(), ms.agg.mean('col'), ...")
        lateness = self._checked(name or "window_aggregate")
        with _naming(name or "window_aggregate"):
            op = WindowAggregate(self.spec, aggs, lateness, self.processing_time, self.emit, self.partial_late)
        return self.stream._then(op, name)


class Pipeline:
    """A streaming job: add sources, chain operators on their streams, add sinks, then `run()`.

    >>> import microstream as ms
    >>> p = ms.Pipeline("hello"); out = ms.sinks.collect()
    >>> p.from_iterable([{"v": 1}, {"v": 2}]).map(lambda b: {"v2": b["v"] * 2}).sink(out)
    >>> _ = p.run(); out.records()
    [{'v2': 2}, {'v2': 4}]

    `backend="microvm"` runs the whole job isolated in microVMs on a cluster (every operator, unless one asks
    for another with `with_backend`); locally it has no effect:

    >>> ms.Pipeline("untrusted", backend="microvm").from_iterable([{"v": 1}]).node.backend
    'microvm'

    On a cluster a job takes a checkpoint every `checkpoint_every` (a duration: "10s", seconds as a float, a
    timedelta; None for none) and, when a host, an agent or a node is lost, restarts every virtual node from the
    last one, at most `restarts` times (see docs/faults.md):

    >>> ms.Pipeline("campus", checkpoint_every="30s", restarts=5).graph.checkpoint_every
    30.0
    """

    @public(call="ms.Pipeline")
    def __init__(self, name: str = "pipeline", *, backend: str = "process", checkpoint_every: Any = "10s",
                 restarts: int = 3) -> None:
        _check_backend(backend, name)
        self.name = name
        self.graph = LogicalGraph(name, backend)
        every = to_ns(checkpoint_every, "checkpoint_every")
        if every is not None and every <= 0:
            raise PipelineError(None, f"checkpoint_every must be positive, got {checkpoint_every!r}",
                                'write it as a duration, e.g. checkpoint_every="10s", or None for no checkpoints')
        if restarts < 0:
            raise PipelineError(None, f"restarts must be >= 0, got {restarts}",
                                "restarts=3 (the default) recovers a job from its last checkpoint up to three times; "
                                "0 fails it at the first fault")
        self.graph.checkpoint_every = every / 1e9 if every is not None else None
        self.graph.max_restarts = int(restarts)

    def __repr__(self) -> str:
        return f"<Pipeline {self.name}: {len(self.graph.nodes)} operators>"

    @public
    def add_source(self, source: Operator, *, name: str | None = None, at: str | None = None,
                   idle_after: Any = None) -> Stream:
        """Add a source operator of your own (a `microstream.sources.base.Source`); `name` names it and `at`
        pins it to a physical node on a cluster (where its device or file is), as for every source.
        `idle_after` (a duration, every source has it; default None: never): when the source has read nothing
        for that long it stops holding back the event time of windows downstream (watermark idleness), until
        it reads again; its records then count as late where the others have moved past them."""
        if idle_after is not None:
            source.idle_after = _idle_after(idle_after, name or source.kind)
        node = self.graph.add(source, [], name, _caller(), at=at)
        return Stream(self, node)

    # -- sources ------------------------------------------------------------------------------------
    @public
    def from_iterable(self, items: Iterable[Any], *, time: str | None = None, time_unit: str | None = None,
                      key: str | None = None, max_delay: Any = 0, batch_size: int = 1024,
                      schema: Mapping[str, Any] | None = None, name: str | None = None, at: str | None = None,
                      idle_after: Any = None) -> Stream:
        """Records (dicts) or batches (dicts of arrays) from a list, a generator, or a function returning a
        fresh iterable (read afresh by every run). `schema` ({"col": "float64", ...}) gives the columns when
        the iterable may be empty; `batch_size` records are read per batch; `key` is shorthand for
        `.key_by(key)`; `name` and `at` as for every source (the operator's name; the physical node it must
        run on, on a cluster).

        `time` names the event-time column: int64 nanoseconds since the epoch, numbers counted in `time_unit`
        ("s", "ms", "us" or "ns"), `datetime64` values, or datetime / `pandas.Timestamp` objects (naive ones
        are UTC). Integers that look like epoch seconds or milliseconds without a `time_unit` are refused when
        the pipeline is built. `max_delay` (a duration) bounds how out of order event time may be.

        >>> import microstream as ms
        >>> p = ms.Pipeline("ms"); out = ms.sinks.collect()
        >>> p.from_iterable([{"t": 1_700_000_000_250, "v": 1.0}], time="t", time_unit="ms").sink(out)
        >>> _ = p.run(); out.records()
        [{'t': 1700000000250000000, 'v': 1.0}]
        >>> p.from_iterable([{"room": "a", "t": 0, "v": 1.0}], time="t", key="room")
        <Stream key_by: room:str*, t:time, v:float64>
        """
        where = name or "from_iterable"
        source = IterableSource(items, time, _delay(max_delay, where), _batch_size(batch_size, where), schema,
                                time_unit)
        stream = self.add_source(source, name=name, at=at, idle_after=idle_after)
        return stream.key_by(key) if key else stream

    @public
    def from_arrays(self, columns: Mapping[str, np.ndarray], *, time: str | None = None,
                    time_unit: str | None = None, max_delay: Any = 0, batch_size: int = 65536,
                    speed: float | None = None, name: str | None = None, at: str | None = None,
                    idle_after: Any = None) -> Stream:
        """Columns already in memory, replayed in batches of `batch_size`. `time`, `time_unit`, `max_delay`,
        `name` and `at` as for `from_iterable` (a `datetime64` column needs no unit); `speed` replays in scaled
        real time (None: as fast as possible; 1.0 real time; 60: a minute of event time per second)."""
        where = name or "from_arrays"
        source = ArraySource(columns, time, _delay(max_delay, where), _batch_size(batch_size, where), speed,
                             time_unit)
        return self.add_source(source, name=name, at=at, idle_after=idle_after)

    @public
    def from_pandas(self, frame: Any, *, time: str | None = None, time_unit: str | None = None,
                    key: str | None = None, max_delay: Any = 0, batch_size: int = 65536, speed: float | None = None,
                    name: str | None = None, at: str | None = None, idle_after: Any = None) -> Stream:
        """A pandas DataFrame replayed as a stream (pandas is an optional extra: `pip install
        'microstream[pandas]'`). Its columns are converted once, vectorised: datetime columns, naive (UTC) or
        timezone-aware, become int64 ns like every time in microstream; nullable numbers with missing values
        floats with NaN; text and categories str. `time` names the event-time column, or the index when it is
        named so (a `DatetimeIndex` named "time"); numbers since the epoch need `time_unit`. `key`, `max_delay`,
        `batch_size`, `speed`, `name` and `at` as for `read_csv`.

        >>> import microstream as ms, pandas as pd
        >>> df = pd.DataFrame({"room": ["a", "a"], "co2": [420.0, 1250.0],
        ...                    "t": pd.to_datetime(["2024-03-01 09:00", "2024-03-01 09:01"]).tz_localize("CET")})
        >>> p = ms.Pipeline("pandas"); out = ms.sinks.collect()
        >>> p.from_pandas(df, time="t").sink(out)
        >>> _ = p.run(); out.records()[0]
        {'room': 'a', 'co2': 420.0, 't': 1709280000000000000}
        >>> out.to_pandas()["t"].tolist()
        [Timestamp('2024-03-01 08:00:00+0000', tz='UTC'), Timestamp('2024-03-01 08:01:00+0000', tz='UTC')]
        """
        from .sources.memory import PandasSource, pandas_columns

        where = name or "from_pandas"
        source = PandasSource(pandas_columns(frame, time, where), time, _delay(max_delay, where),
                              _batch_size(batch_size, where), speed, time_unit)
        stream = self.add_source(source, name=name, at=at, idle_after=idle_after)
        return stream.key_by(key) if key else stream

    @public
    def poll(self, fn: Callable[[], Any], *, every: Any, time: str = "time", time_unit: str | None = None,
             max_delay: Any = 0, limit: int | None = None, schema: Mapping[str, Any] | None = None,
             name: str | None = None, at: str | None = None, idle_after: Any = None, log_limit: Any = "64MB",
             log_full: str = "drop_oldest") -> Stream:
        """Call `fn()` every `every` (a duration: "500ms", float seconds, a timedelta) and stamp each reading
        with the clock in column `time`, as a polled sensor. `fn` returns a dict (one reading), a dict of
        arrays (several) or None (nothing this time); `limit` stops after that many polls; `schema` gives the
        columns without sampling `fn` at build time. A reading that carries its own `time` keeps it (counted
        in `time_unit`, as for `from_iterable`). `max_delay`, `name`, `at` and `idle_after` as for every source.

        A sensor cannot be read in the past, so what is read goes to a local log on the node first and is sent
        on from there: polling keeps its pace while the stream downstream is held up (a cut link, a slow
        consumer), and a recovery on the same node replays the readings after its checkpoint (docs/faults.md).
        `log_limit` caps that log ("64MB"); when full, `log_full="drop_oldest"` drops the oldest readings not
        yet sent, `"refuse"` drops new ones."""
        where = name or "poll"
        source = PollSource(fn, _interval(every, where), time, _delay(max_delay, where), limit, schema, time_unit)
        _log_options(source, where, log_limit, log_full)
        return self.add_source(source, name=name, at=at, idle_after=idle_after)

    @public
    def poll_file(self, path: str | Path, *, every: Any, column: str = "value", scale: float = 1.0,
                  time: str = "time", limit: int | None = None, name: str | None = None,
                  at: str | None = None, idle_after: Any = None, log_limit: Any = "64MB",
                  log_full: str = "drop_oldest") -> Stream:
        """Read a number from a device file every `every` (a duration; e.g. a sensor under /sys) into `column`,
        times `scale`, stamped with the clock in column `time`; `limit` stops after that many reads; see
        `microstream.sources.device.FilePollSource`. Unparsable readings go to dead letters. Readings go
        through a local log (`log_limit`, `log_full`) as for `poll`.

        >>> import microstream as ms, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "temp"; _ = f.write_text("42500\\n")  # like thermal_zone0/temp
        >>> p = ms.Pipeline("cpu"); out = ms.sinks.collect()
        >>> p.poll_file(f, every=0.01, column="temp", scale=0.001, limit=2).sink(out)
        >>> _ = p.run(); out.batch()["temp"].tolist()
        [42.5, 42.5]
        """
        from .sources.device import FilePollSource

        source = FilePollSource(path, _interval(every, name or "poll_file"), column, scale, time, limit)
        _log_options(source, name or "poll_file", log_limit, log_full)
        return self.add_source(source, name=name, at=at, idle_after=idle_after)

    @public
    def read_mqtt(self, topic: str | Iterable[str], broker: str = "mqtt://127.0.0.1:1883", *, format: str = "json",  # noqa: A002
                  schema: Mapping[str, Any] | None = None, time: str | None = "time", time_unit: str = "s",
                  time_format: str = "iso", utc_offset: str | int | None = None, topic_columns: Iterable[str] = (),
                  qos: int = 1, client_id: str | None = None, max_delay: Any = 0, limit: int | None = None,
                  idle_timeout: Any = None, batch_size: int = 4096, username: str | None = None,
                  password: str | None = None, max_message_bytes: int = 1 << 20, max_depth: int = 64,
                  name: str | None = None, at: str | None = None, idle_after: Any = None) -> Stream:
        """Subscribe to MQTT topic filters (`+`, `#`; several allowed) and decode the messages into batches.

        Options (see `microstream.sources.mqtt` for the decoding, the SenML layout and the delivery
        guarantees): `format` ("json": one flat object per message, fields from `schema={"pm25": "float",
        ...}`; "senml": RFC 8428 packs, long layout), `time` (the payload field with the event time, epoch
        numbers in `time_unit` "s"|"ms"|"us"|"ns" or ISO text in `time_format`, offsets from `utc_offset`;
        None stamps the arrival time), `topic_columns` (names for the `+` levels, in order), `qos` (1:
        persistent session, acknowledged after emission, no loss or duplicates across migrations; 0: at most
        once), `client_id` (default: derived from the job and operator names), `max_delay`, `limit` (stop
        after that many messages), `idle_timeout` (stop when nothing arrived for that long after the first
        message), `batch_size`, `username`/`password`, `max_message_bytes` (1 MiB) and `max_depth` (64): larger
        or deeper messages are dead letters, `name`, `at`. Malformed payloads go to the dead-letter stream as
        `topic#n` with the reason; no payload can fail the job.

        >>> import microstream as ms, json
        >>> from paho.mqtt import publish
        >>> from microstream.connectors.broker import Mosquitto
        >>> broker = Mosquitto().start()   # a real broker on loopback (mosquitto)
        >>> def job(limit):
        ...     p = ms.Pipeline("air"); out = ms.sinks.collect()
        ...     p.read_mqtt("aq/+/readings", broker.url, schema={"pm25": "float"}, topic_columns=("station",),
        ...                 client_id="doc-air", limit=limit).sink(out)
        ...     _ = p.run(); return out.records()
        >>> job(limit=0)   # the first run creates the persistent session (and its subscription)
        []
        >>> publish.multiple([(f"aq/{s}/readings", json.dumps({"time": 1700000000, "pm25": v}), 1, False)
        ...                   for s, v in (("st1", 12.5), ("st2", 30.0))], hostname=broker.host, port=broker.port)
        >>> records = job(limit=2)   # what was published meanwhile was kept for the session
        >>> records[0]
        {'time': 1700000000000000000, 'station': 'st1', 'pm25': 12.5}
        >>> [(r["station"], r["pm25"]) for r in records]
        [('st1', 12.5), ('st2', 30.0)]
        >>> broker.close()
        """
        from .core.optional import require
        from .sources.mqtt import MqttSource

        require("paho.mqtt.client", "read_mqtt")  # the [mqtt] extra: say so here, at the user's line
        _batch_size(batch_size, name or "read_mqtt")
        source = MqttSource(topic, broker, format=format, schema=schema, time=time, time_unit=time_unit,
                            time_format=time_format, utc_offset=utc_offset, topic_columns=topic_columns, qos=qos,
                            client_id=client_id, max_delay=max_delay, limit=limit, idle_timeout=idle_timeout,
                            batch_size=batch_size, username=username, password=password, job=self.name,
                            operator=name or "read_mqtt", max_message_bytes=max_message_bytes, max_depth=max_depth)
        return self.add_source(source, name=name, at=at, idle_after=idle_after)

    @public
    def read_csv(self, path: str | Path, *, time: str | tuple[str, ...] | None = None, key: str | None = None,
                 name: str | None = None, at: str | None = None,
                 idle_after: Any = None, **options: Any) -> Stream:
        """Replay a CSV file (optionally gzipped). `time` names the event-time column (or a tuple of columns
        joined into one named `time`), `key` is shorthand for `.key_by(key)`, `name` and `at` as for every
        source. The other options are declared and documented by `microstream.sources.files.CsvSource`
        (`time_format`, `time_unit`, `utc_offset`, `delimiter` (or `"whitespace"`), `decimal`, `quote`,
        `missing`, `columns`, `usecols`, `skip_rows`, `names`, `dedupe_columns`, `encoding`, `errors`,
        `infer_rows`, `max_row_bytes`, `tags`, `speed`, `max_delay`, `batch_size`); any other keyword is refused
        with the one meant. Malformed rows, and lines that do not decode, go to the dead-letter stream."""
        from .sources.files import CsvSource

        check_options("read_csv", options, ["time", "key", "name", "at",
                                            *options_of(CsvSource, skip=("path", "time")), "idle_after"])
        if "batch_size" in options:
            _batch_size(options["batch_size"], name or "read_csv")
        stream = self.add_source(CsvSource(path, time=time, **options), name=name, at=at, idle_after=idle_after)
        return stream.key_by(key) if key else stream

    @public
    def read_jsonl(self, path: str | Path, *, time: str | None = None, key: str | None = None,
                   name: str | None = None, at: str | None = None, idle_after: Any = None,
                   **options: Any) -> Stream:
        """Replay a JSON-lines file of flat objects. `time`, `key`, `name` and `at` as for `read_csv`; the other
        options are declared and documented by `microstream.sources.files.JsonlSource` (`time_format`,
        `time_unit`, `utc_offset`, `fields`, `encoding`, `errors`, `infer_rows`, `max_row_bytes`, `max_depth`,
        `tags`, `speed`, `max_delay`, `batch_size`)."""
        from .sources.files import JsonlSource

        check_options("read_jsonl", options, ["time", "key", "name", "at",
                                              *options_of(JsonlSource, skip=("path", "time")), "idle_after"])
        if "batch_size" in options:
            _batch_size(options["batch_size"], name or "read_jsonl")
        stream = self.add_source(JsonlSource(path, time=time, **options), name=name, at=at, idle_after=idle_after)
        return stream.key_by(key) if key else stream

    @public
    def synthetic(self, *, name: str | None = None, at: str | None = None,
                 idle_after: Any = None, **options: Any) -> Stream:
        """A deterministic synthetic sensor stream; its options are declared and documented by
        `microstream.sources.synthetic.SyntheticSource` (`count`, `sensors`, `rate`, `seed`, `jitter`,
        `glitch_rate`, `start`, `period`, `max_delay`, `batch_size`, `speed`); `name` and `at` as for every
        source."""
        from .sources.synthetic import SyntheticSource

        check_options("synthetic", options, ["name", "at", *options_of(SyntheticSource), "idle_after"])
        if "batch_size" in options:
            _batch_size(options["batch_size"], name or "synthetic")
        return self.add_source(SyntheticSource(**options), name=name, at=at, idle_after=idle_after)

    @public
    def union(self, *streams: Stream, name: str | None = None) -> Stream:
        if len(streams) < 2:
            raise PipelineError(name or "union", "union needs at least two streams",
                                "e.g. p.union(a, b), or a.union(b)")
        return streams[0].union(*streams[1:], name=name)

    def dead_letters(self) -> Stream:
        """The stream of every record refused anywhere in the pipeline: operator, position, row, reason."""
        hub = self.graph.dead_letter_hub()
        node = hub or self.graph.add(DeadLetterHub(), [], "dead_letters", _caller())
        return Stream(self, node)

    # -- inspecting and running -------------------------------------------------------------------------
    def build(self) -> LogicalGraph:
        """Validate the whole graph (cycles, unused streams, missing sinks) and return it."""
        self.graph.validate()
        return self.graph

    def describe(self) -> str:
        """A table of the operators and their output schemas."""
        return self.graph.describe()

    def to_dot(self) -> str:
        from .viz.pipeline import graph_dot

        return graph_dot(self.graph)

    def to_svg(self, path: str | Path | None = None) -> str:
        """The DAG as an SVG picture; written to `path` if given."""
        from .viz.pipeline import graph_svg

        svg = graph_svg(self.graph)
        if path is not None:
            Path(path).write_text(svg, encoding="utf-8")
        return svg

    @public
    def run(self, *, verbose: bool | None = None, progress: bool | None = None) -> RunResult:
        """Run to completion on the local runtime (one process, full speed) and return what it did (a
        `RunResult`: records in and out, dead letters, late records, files written, time).

        In a terminal the run talks: a progress line while it lasts (records, rate, event-time position, and the
        share read and an ETA when the input's size is known), then a report table on stderr. Elsewhere (a pipe,
        a log, a notebook) it is quiet but for a one-line summary when there were dead letters. `verbose=True`
        prints the report anyway, `verbose=False` nothing; `progress=` forces the progress line on or off.
        `microstream run --quiet` silences every run of the script.

        Under `microstream submit` the same call runs the job on the cluster instead."""
        from .runtime.local import LocalRuntime, active_runner, count_run, quiet

        self.build()
        count_run()
        runner = active_runner()
        if runner is not None:
            return runner(self)   # `Client.submit` names an operator that cannot be sent (shipping_problem)
        if quiet():
            return LocalRuntime(self.graph, verbose=False).run()
        terminal = sys.stderr.isatty()
        line = None
        if progress if progress is not None else terminal:
            from .runtime.progress import ProgressLine

            line = ProgressLine(sys.stderr)
        try:
            result = LocalRuntime(self.graph, verbose=False, progress=line).run()
        finally:
            if line is not None:
                line.close()
        if verbose or (verbose is None and terminal):
            print(result.report(), file=sys.stderr)
        elif verbose is None and result.dead_letter_count:
            print(result.summary(), file=sys.stderr)
        return result
