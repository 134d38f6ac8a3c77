"""Sources of data the program already holds: numpy arrays, Python iterables, and a Python function
polled on a timer (`Pipeline.from_arrays`, `from_iterable`, `poll`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from operator import itemgetter
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import DataWarning, PipelineError
from ..core.schema import Schema, schema_of_columns
from ..core.time import check_time_unit, event_times
from ..operators.base import DEAD, OUT, Emit, dead_letters
from .base import Source, TickingSource, time_column

# -- concrete sources ------------------------------------------------------------------------------

class ArraySource(Source):
    """Columns already in memory, cut into batches: the fastest source (benchmarks, tests).

    The time column may be int64 nanoseconds, numbers in `time_unit`, or `datetime64`; it is converted to
    nanoseconds once, vectorised, when the pipeline is built.
    """

    kind = "from_arrays"
    cpu_us = 0.1

    def __init__(self, columns: Mapping[str, np.ndarray], time: str | None = None, max_delay: int = 0,
                 batch_size: int = 65536, speed: float | None = None, time_unit: str | None = None) -> None:
        super().__init__(time, max_delay, speed, batch_size)
        self.columns = {k: np.asarray(v) for k, v in columns.items()}
        self.time_unit = time_unit
        self._time_ready = False
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise PipelineError(None, f"from_arrays: columns have different lengths {sorted(lengths)}")

    def describe(self) -> str:
        n = len(next(iter(self.columns.values()))) if self.columns else 0
        return f"{n:,} rows"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if self.time is not None and self.time in self.columns and not self._time_ready:
            self.columns[self.time] = time_column(self.columns[self.time], self.time_unit, column=self.time,
                                                  operator=name)
            self._time_ready = True
        schema = schema_of_columns(self.columns, time=self.time)
        _check_time(schema, self.time, name)
        return {OUT: schema}

    def open(self, ctx) -> None:
        super().open(ctx)
        self._offset = 0

    def size_hint(self) -> tuple[int, int] | None:
        return self._offset, len(next(iter(self.columns.values()))) if self.columns else 0

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
    """Records (dicts) or batches (dicts of arrays, or `Batch`) from any iterable.

    The columns and their types are fixed from the first record (or `schema=`). A later record that does not
    fit goes to the dead-letter stream with its position (`item 17`: its index in the iterable) and the
    reason, and the other records go on: a field missing (the time field too), a value of the wrong type for
    its column (`"abc"` for a float, None for an int), an event time that is NaN. None in a float column is
    NaN. A field that the first record does not have is not a column and is dropped: a `DataWarning` names
    it, once per run (declare it with `schema=`, or put it in the first record, to keep it). The warning looks
    at every record of the first batch but, to cost under 1% of the conversion, at one record in 8 of later
    batches: a field that only a few later records have may be dropped without it.
    Records are converted to columns in bulk; only a batch that fails that is checked record by record.
    """

    kind = "from_iterable"
    cpu_us = 2.0

    def __init__(self, items: Iterable[Any] | Callable[[], Iterable[Any]], time: str | None = None,
                 max_delay: int = 0, batch_size: int = 1024, schema: Mapping[str, Any] | None = None,
                 time_unit: str | None = None) -> None:
        super().__init__(time, max_delay, None, batch_size)
        self.time_unit = time_unit
        # A list (any re-iterable) or a function returning an iterable is read afresh by every run; a one-shot
        # iterator (a generator) can be read by one run only, and its first item is peeked at build time.
        self.factory: Callable[[], Iterable[Any]] | None
        self.items: Iterable[Any] | None
        if isinstance(items, Iterable) or not callable(items):
            self.factory, self.items = None, items
        else:
            self.factory, self.items = items, None
        self.one_shot = self.items is not None and iter(self.items) is self.items
        self.first: list[Any] = []          # a one-shot iterator's item consumed to learn the schema
        self.runs = [0]                      # shared by the spec and its instances: runs of a one-shot iterator
        self.schema = schema

    def _fresh(self) -> Iterator[Any]:
        if self.factory is not None:
            return iter(self.factory())
        assert self.items is not None
        return iter(self.items)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        check_time_unit(self.time_unit, name)
        if self.schema is not None:
            fields: dict[str, Any] = dict(Schema.of(self.schema).fields)
            if self.time in fields:  # declared as datetime64, float seconds...: converted to ns as records come
                fields[self.time] = np.int64
            schema = Schema.of(fields, time=self.time)
        else:
            first = next(self.items, None) if self.one_shot else next(self._fresh(), None)  # type: ignore[call-overload]
            if first is None:
                raise PipelineError(name, "from_iterable got an empty iterable, so its columns are unknown",
                                    "pass schema={'col': 'float64', ...}")
            if self.one_shot:
                self.first.append(first)
            cols = self._to_batch([first]).to_dict()
            if self.time is not None and self.time in cols:
                # the first batch's worth of records (only the first item of a one-shot iterator) shows the unit
                # (records without a time, or with None or NaN, are left out: the run dead-letters them)
                sample = cols if self.one_shot or not _is_record(first) else {self.time: self._sample_times(
                    list(itertools.islice(self._fresh(), self.batch_size)))}
                time_column(sample[self.time], self.time_unit, column=self.time, operator=name)
                cols[self.time] = event_times(cols[self.time], self.time_unit)
            schema = schema_of_columns(cols, time=self.time)
        _check_time(schema, self.time, name)
        return {OUT: schema}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.out_schema = ctx.output_schemas[OUT]
        self._read = 0
        self._bulk = _BulkRecords(self.out_schema.names, self._tuple_names())
        self._warned_extra = False
        if self.one_shot:
            self.runs[0] += 1
            if self.runs[0] > 1 and not ctx.extra.get("restoring"):
                raise PipelineError(ctx.name, "from_iterable was given a one-shot iterator (a generator), and an "
                                              "earlier run has consumed it",
                                    "pass a list, or a function that returns a fresh iterable: "
                                    "from_iterable(lambda: make_records())")
            self._items: Iterator[Any] = self.items  # type: ignore[assignment]
            self._peeked = list(self.first)
        else:
            self._items, self._peeked = self._fresh(), []

    def size_hint(self) -> tuple[int, int] | None:
        return (self._read, len(self.items)) if isinstance(self.items, Sized) and not self.one_shot else None

    def read(self) -> Emit | None:
        items = self._peeked + list(itertools.islice(self._items, self.batch_size - len(self._peeked)))
        self._peeked = []
        if not items:
            return None
        start = self._read
        self._read += len(items)
        if isinstance(items[0], (Batch, dict)) and not _is_record(items[0]):
            return [(OUT, self._cast(self._to_batch([it]))) for it in items]
        if not self._warned_extra:  # every record of the first batch, one in 8 of later ones: under 1% of the work
            self._warn_extra(items if start == 0 else items[::8], start, 1 if start == 0 else 8)
        cols = self._bulk.columns(items)
        try:
            if cols is not None:
                return [(OUT, self._cast(Batch(cols)))]
            batch = self._to_batch(items)
            out = self._cast(batch)
        except (_BadRecords, KeyError, IndexError, TypeError, ValueError, OverflowError, PipelineError):
            return self._checked(items, start)  # some record does not fit: find which, record by record
        self._bulk.learn(batch)
        return [(OUT, out)]

    def _warn_extra(self, items: list[Any], start: int, step: int) -> None:
        """Warn once (per run) about a record field that is not a column, and so is dropped (`items` are the
        records `start`, `start + step`, ... of the iterable)."""
        if not isinstance(items[0], Mapping):
            return
        width = len(self.out_schema.names)
        if set(map(len, items)) <= {width}:  # one C-level pass: a record with more fields than columns?
            return
        names = set(self.out_schema.names)
        for i, item in enumerate(items):
            extra = [k for k in item if k not in names] if isinstance(item, Mapping) else []
            if extra:
                self._warned_extra = True
                warnings.warn(f"from_iterable: field(s) {extra} seen in item {start + i * step} "
                              f"are not columns (the columns come from the first record: "
                              f"{list(self.out_schema.names)}) and are dropped; pass schema= with them, or put "
                              "them in the first record, to keep them", DataWarning, stacklevel=2)
                return

    def _checked(self, items: list[Any], start: int) -> Emit:
        """The general path, record by record: records that do not fit the columns are dead letters."""
        if not self._warned_extra:
            self._warn_extra(items, start, 1)
        bad: dict[int, str] = {}
        records: list[Mapping[str, Any]] = []
        names = self._tuple_names()
        for i, item in enumerate(items):
            if isinstance(item, tuple):
                try:
                    item = dict(zip(_tuple_fields(item, names), item, strict=True))
                except (PipelineError, ValueError):
                    bad[i] = f"a tuple of {len(item)} values does not match the columns {self.out_schema.names}"
                    item = {}
            elif not isinstance(item, Mapping):
                bad[i] = f"not a record: a {type(item).__name__}, not a dict"
                item = {}
            records.append(item)
        cols: dict[str, np.ndarray] = {}
        for name, dtype in self.out_schema.fields:
            values = [r.get(name, _MISSING) for r in records]
            for i, v in enumerate(values):
                if v is _MISSING:
                    bad.setdefault(i, f"missing field '{name}'")
            cols[name] = self._column(name, dtype, values, bad)
        keep = np.ones(len(items), dtype=bool)
        keep[list(bad)] = False
        out: Emit = []
        if keep.any():
            out.append((OUT, Batch({n: c[keep] for n, c in cols.items()})))
        rows = sorted(bad)
        out.append((DEAD, dead_letters(self.name, [f"item {start + i}" for i in rows],
                                       [repr(items[i])[:1000] for i in rows], [bad[i] for i in rows])))
        return out

    def _column(self, name: str, dtype: np.dtype, values: list[Any], bad: dict[int, str]) -> np.ndarray:
        """One column of the records as `dtype`: in bulk if it converts, else value by value (a value that does
        not convert marks its record bad, with the reason, and is replaced by a placeholder)."""
        fill = 0 if dtype.kind != "U" else ""
        vals = [fill if (i in bad or v is _MISSING) else v for i, v in enumerate(values)]
        try:
            return self._convert(name, dtype, vals)
        except (_BadRecords, KeyError, TypeError, ValueError, OverflowError, PipelineError):
            pass
        what = "an event time" if name == self.time else str(dtype)
        for i, v in enumerate(vals):
            if i in bad:
                continue
            try:
                self._convert(name, dtype, [v])
            except _BadRecords as exc:
                bad[i] = str(exc)
                vals[i] = fill
            except (KeyError, TypeError, ValueError, OverflowError, PipelineError):
                bad[i] = (f"column '{name}': None, but an {dtype} column has no missing value" if v is None else
                          f"column '{name}': {v!r:.60} ({type(v).__name__}) is not {what}")
                vals[i] = fill
        return self._convert(name, dtype, vals)

    def _convert(self, name: str, dtype: np.dtype, values: list[Any]) -> np.ndarray:
        col = np.asarray(values) if values else np.empty(0, dtype)
        if col.dtype.kind not in "biufU":
            col = np.empty(len(values), dtype=object)
            col[:] = values
        return self._cast(Batch({name: col}), only=((name, dtype),))[name]

    @property
    def checkpointable(self) -> bool:
        return not self.one_shot  # a generator cannot be read again from a checkpoint

    def reader_state(self) -> Any:
        if not self.one_shot:
            return ("offset", self._read)  # read afresh and skip what was read: nothing to ship
        import cloudpickle

        try:
            return ("pickle", cloudpickle.dumps((self._items, self._peeked)))
        except Exception as exc:  # generators cannot be pickled
            raise NotImplementedError(f"from_iterable over a {type(self._items).__name__} cannot be saved or "
                                      "migrated; pass a list or a function that returns an iterable") from exc

    def restore_reader(self, state: Any) -> None:
        how, value = state
        if how == "offset":
            self._items, self._peeked, self._read = self._fresh(), [], value
            for _ in itertools.islice(self._items, value):
                pass
        else:
            import cloudpickle

            self._items, self._peeked = cloudpickle.loads(value)

    def _sample_times(self, items: list[Any]) -> np.ndarray:
        """The event times of the records among `items` that have one (not None, not NaN)."""
        names = self._tuple_names()
        times = []
        for item in items:
            if isinstance(item, tuple):
                try:
                    item = dict(zip(_tuple_fields(item, names), item, strict=True))
                except (PipelineError, ValueError):
                    continue
            v = item.get(self.time) if isinstance(item, Mapping) else None
            if v is not None and v == v:  # NaN != NaN
                times.append(v)
        return Batch.from_records([{"t": v} for v in times])["t"] if times else np.empty(0, np.int64)

    def _tuple_names(self) -> list[str] | None:
        """The column names of plain tuples, in order: the keys of `schema=` (namedtuples name their own)."""
        return list(Schema.of(self.schema).names) if self.schema is not None else None

    def _to_batch(self, items: list[Any]) -> Batch:
        first = items[0]
        if isinstance(first, Batch):
            return first
        if isinstance(first, Mapping) and not _is_record(first):
            return Batch({k: np.asarray(v) for k, v in first.items()})
        if isinstance(first, tuple):
            names = _tuple_fields(first, self._tuple_names())
            return Batch.from_records(dict(zip(names, item, strict=True)) for item in items)
        return Batch.from_records(items)

    def _cast(self, batch: Batch, only: Sequence[tuple[str, np.dtype]] | None = None) -> Batch:
        cols = {}
        for name, dtype in (self.out_schema.fields if only is None else only):
            col = batch[name]
            if name == self.time and (col.dtype != dtype or self.time_unit not in (None, "ns")):
                if col.dtype.kind == "f" and np.isnan(col).any():  # would become the smallest int64, silently
                    raise _BadRecords(f"column '{name}': time is NaN")
                if col.dtype == object and any(v is None for v in col):
                    raise _BadRecords(f"column '{name}': time is None")
                cols[name] = event_times(col, self.time_unit)  # seconds, datetime64, datetimes: to ns, vectorised
                continue
            cols[name] = col if col.dtype.kind == dtype.kind == "U" or col.dtype == dtype else col.astype(dtype)
        return Batch(cols)


class _BadRecords(ValueError):
    """A batch of records has a value that must not pass (a NaN event time): the reason, for a dead letter."""


_MISSING = object()


def _is_record(item: Any) -> bool:
    return isinstance(item, tuple) or (
        isinstance(item, Mapping) and not any(isinstance(v, (np.ndarray, list)) for v in item.values()))


def _tuple_fields(item: tuple, names: list[str] | None) -> list[str]:
    fields = getattr(item, "_fields", None)  # a namedtuple
    if fields is not None:
        return list(fields)
    if names is None or len(names) != len(item):
        raise PipelineError("from_iterable", f"from_iterable got a plain tuple of {len(item)} values and no "
                                             "names for them",
                            "pass schema={'col': 'float64', ...} with one entry per tuple value, in order, or "
                            "yield dicts or namedtuples")
    return names


# Python types a numeric column's values may have for the bulk path: exactly what np.asarray would turn into
# that dtype kind (anything else, e.g. None, a string or a numpy scalar, goes through the general path).
_PLAIN: dict[str, set[type]] = {"f": {float, int}, "i": {int}, "u": {int}, "b": {bool}, "U": {str}}


class _BulkRecords:
    """Records (dicts, namedtuples or tuples) to columns without a Python loop per record: per column, one
    C-level pass takes the values out (`map(itemgetter)`), one checks their Python types, one builds the array.
    The column dtypes are learnt from the first batch, converted by the general path (`Batch.from_records`),
    which every batch whose values are not plain ints, floats, bools or strings still takes."""

    def __init__(self, names: Sequence[str], tuple_names: list[str] | None) -> None:
        self.names = list(names)
        self.tuple_names = tuple_names
        self.dtypes: dict[str, np.dtype] | None = None
        self._getters: tuple[Callable[[Any], Any], ...] | None = None
        self._for_tuples = False

    def learn(self, batch: Batch) -> None:
        if self.dtypes is None:
            self.dtypes = {n: batch[n].dtype for n in self.names if n in batch}

    def columns(self, items: list[Any]) -> dict[str, np.ndarray] | None:
        if self.dtypes is None or len(self.dtypes) != len(self.names):
            return None
        first = items[0]
        is_tuple = isinstance(first, tuple)
        if self._getters is None or is_tuple != self._for_tuples:
            if is_tuple:
                order = _tuple_fields(first, self.tuple_names)
                self._getters = tuple(itemgetter(order.index(n)) for n in self.names)
            else:
                self._getters = tuple(itemgetter(n) for n in self.names)
            self._for_tuples = is_tuple
        cols = {}
        try:
            for name, get in zip(self.names, self._getters, strict=True):
                dtype = self.dtypes[name]
                values = list(map(get, items))
                if not set(map(type, values)) <= _PLAIN.get(dtype.kind, set()):
                    return None
                cols[name] = np.array(values, dtype=dtype if dtype.kind != "U" else None)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError):
            return None  # the general path reports it as it always has
        return cols


class PollSource(TickingSource):
    """Call `fn()` every `interval` ns, like reading a sensor; the reading is stamped with the clock.

    `fn` returns a dict (one reading), a dict of arrays (several), or None (nothing this time). A poll whose
    `fn` raises (a sensor gone: `OSError`) or returns something that does not fit the columns (a field
    missing, a value of the wrong type, arrays of different lengths, a NaN time) is a dead letter, at position
    `poll #n` with the reason (for an exception its type and message), and polling goes on at the next tick:
    the job does not fail. Fields the columns do not have are dropped. At build time `fn` is called once to
    learn the columns (unless `schema=` is given); if it raises then, the pipeline is not built.
    """

    kind = "poll"
    cpu_us = 2.0

    def __init__(self, fn: Callable[[], Any], interval: int, time: str = "time", max_delay: int = 0,
                 limit: int | None = None, schema: Mapping[str, Any] | None = None,
                 time_unit: str | None = None) -> None:
        if interval <= 0:
            raise PipelineError(None, f"poll every= must be positive, got {interval} ns")
        super().__init__(time, interval, limit, max_delay)
        self.fn = fn
        self.schema = schema
        self.time_unit = time_unit  # of a time column fn returns itself (else the clock's ns stamp it)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if self.schema is not None:
            fields: dict[str, object] = dict(Schema.of(self.schema).fields)
        else:
            try:
                sample = self.fn()
            except Exception as exc:  # noqa: BLE001 - any failure of the user's function is reported as such
                raise PipelineError(name, f"the polled function raised {type(exc).__name__}: {exc} when sampled "
                                          "at build time, to learn its columns",
                                    "make the device readable, or pass schema={'col': 'float64', ...} so that "
                                    "nothing is read at build time (a failing poll at run time is a dead "
                                    "letter)") from exc
            if sample is None:
                raise PipelineError(name, "the polled function returned None when sampled at build time",
                                    "pass schema={'col': 'float64', ...}")
            self._first = sample
            cols = _reading_columns(sample)
            if self.time in cols:
                cols[self.time] = time_column(cols[self.time], self.time_unit, column=self.time, operator=name)
            fields = dict(schema_of_columns(cols).fields)
        check_time_unit(self.time_unit, name)
        fields[self.time] = np.int64
        return {OUT: Schema.of(fields, time=self.time)}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.out_schema = ctx.output_schemas[OUT]

    def restore_reader(self, state: Any) -> None:
        super().restore_reader(state)
        self._first = None

    def read_now(self, now: int) -> Emit:
        first = getattr(self, "_first", None)
        self._first = None
        where = [f"poll #{self._count}"]
        try:
            reading = first if first is not None else self.fn()
        except Exception as exc:  # noqa: BLE001 - a failed reading is a dead letter, not a failed job
            return [(DEAD, dead_letters(self.name, where, [""], [f"the polled function raised "
                                                                 f"{type(exc).__name__}: {exc}"]))]
        if reading is None:
            return []
        try:
            batch = self._batch(reading, now)
        except _BadRecords as exc:
            return [(DEAD, dead_letters(self.name, where, [repr(reading)[:1000]], [str(exc)]))]
        except Exception as exc:  # noqa: BLE001 - whatever the shape, the reading is refused, polling goes on
            return [(DEAD, dead_letters(self.name, where, [repr(reading)[:1000]],
                                        [f"the reading does not fit the columns {self.out_schema.names}: "
                                         f"{type(exc).__name__}: {exc}"]))]
        self.position += batch.num_rows
        return [(OUT, self.stamp(batch))]

    def _batch(self, reading: Any, now: int) -> Batch:
        cols = _reading_columns(reading)
        if not cols:
            raise _BadRecords("the reading has no fields")
        n = len(next(iter(cols.values())))
        for name in self.out_schema.names:
            if name not in cols and name != self.time:
                if not isinstance(reading, (Mapping, Batch)):
                    raise _BadRecords(f"the polled function returned a {type(reading).__name__}, not a dict of "
                                      f"the columns {self.out_schema.names}")
                raise _BadRecords(f"missing field '{name}'")
        if self.time not in cols:
            cols[self.time] = np.full(n, now, dtype=np.int64)
        else:
            raw = cols[self.time]
            if raw.dtype.kind == "f" and np.isnan(raw).any():
                raise _BadRecords(f"column '{self.time}': time is NaN")
            cols[self.time] = event_times(raw, self.time_unit)
        out = {}
        for name, dtype in self.out_schema.fields:
            col = cols[name]
            if dtype.kind in "iu" and col.dtype.kind == "O" and any(v is None for v in col):
                raise _BadRecords(f"column '{name}': None, but an {dtype} column has no missing value")
            try:
                out[name] = np.asarray(col, dtype=dtype if dtype.kind != "U" else str)
            except (TypeError, ValueError, OverflowError):
                raise _BadRecords(f"column '{name}': {col.tolist()!r:.60} is not {dtype}") from None
        return Batch(out)


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
                            "convert it, e.g. np.asarray(texts, 'datetime64[ns]'), or give numbers with "
                            "time_unit='s'|'ms'|'us'|'ns'")


# -- pandas ------------------------------------------------------------------------------------------------

class PandasSource(ArraySource):
    """A pandas DataFrame replayed as a stream (`Pipeline.from_pandas`): its columns as numpy arrays, converted
    once, vectorised, when the pipeline is built. Datetime columns (naive ones are UTC; timezone-aware ones are
    converted) become int64 nanoseconds, as every time inside microstream; nullable integers and booleans with
    missing values become floats with NaN; text, categories and mixed objects become str (a missing one "")."""

    kind = "from_pandas"


def pandas_columns(frame: Any, time: str | None, operator: str) -> dict[str, np.ndarray]:
    """The columns of a DataFrame as numpy arrays (see `PandasSource`); `time` may name the index."""
    from ..core.optional import require

    pd = require("pandas", "from_pandas")
    if not isinstance(frame, pd.DataFrame):
        hint = "series.to_frame()" if isinstance(frame, pd.Series) else "pd.DataFrame(...)"
        raise PipelineError(operator, f"from_pandas needs a pandas DataFrame, got {type(frame).__name__}",
                            f"make one, e.g. {hint}")
    if time is not None and time not in frame.columns and time == frame.index.name:
        frame = frame.reset_index()  # the time is the index (a DatetimeIndex named `time`)
    if frame.columns.duplicated().any():
        repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise PipelineError(operator, f"the DataFrame has repeated column names {repeated}",
                            "rename them first, e.g. df.columns = [...]")
    return {str(name): _pandas_array(frame[name], pd, str(name), operator) for name in frame.columns}


def _pandas_array(s: Any, pd: Any, name: str, operator: str) -> np.ndarray:
    types = pd.api.types
    dtype = s.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("ns").to_numpy().view(np.int64)
    if types.is_datetime64_dtype(dtype):
        return s.dt.as_unit("ns").to_numpy().view(np.int64)
    if types.is_timedelta64_dtype(dtype):
        return s.dt.as_unit("ns").to_numpy().view(np.int64)
    if types.is_bool_dtype(dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan) if s.isna().any() else s.to_numpy(dtype=bool)
    if types.is_numeric_dtype(dtype):
        if isinstance(dtype, np.dtype):
            return s.to_numpy()
        kind = "f" if s.isna().any() else np.dtype(dtype.numpy_dtype).kind  # nullable Int64 with <NA>: floats
        return s.to_numpy(dtype=np.float64 if kind == "f" else dtype.numpy_dtype, na_value=np.nan)
    if types.infer_dtype(s, skipna=True) in ("datetime", "datetime64", "date"):  # objects: Timestamps, datetimes
        try:
            return _pandas_array(pd.to_datetime(s, utc=True), pd, name, operator)
        except (TypeError, ValueError) as exc:
            raise PipelineError(operator, f"column '{name}' holds datetimes pandas cannot convert: {exc}",
                                "convert it with pd.to_datetime(..., utc=True) first") from None
    text = s.astype(object)
    return text.where(s.notna(), "").astype(str).to_numpy(dtype=str)  # a missing text is ""
