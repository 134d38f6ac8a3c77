"""Record-by-record operators, vectorised over columns: map, filter, flat_map, split, union, key_by.

User functions receive a whole `Batch` and return arrays. At build time each function is called
once on an empty batch of the input schema, which finds unknown columns and the output schema
before anything runs.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import OperatorError, PipelineError
from ..core.schema import Schema, schema_of_columns
from .base import DEAD, OUT, Emit, Operator, dead_letters

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def empty_batch(schema: Schema, rows: int = 0) -> Batch:
    cols = {}
    for name, dtype in schema.fields:
        if dtype.kind == "U":
            cols[name] = np.full(rows, "", dtype="U1")
        elif dtype.kind == "O":
            cols[name] = np.full(rows, None, dtype=object)
        else:
            cols[name] = np.zeros(rows, dtype=dtype)
    return Batch(cols, np.zeros(rows, dtype=np.int64) if schema.time else None)


def trial_call(fn: Callable[[Batch], Any], schema: Schema, name: str, what: str) -> Any:
    """Call a user function on an empty (then a one-row) batch to check it and learn its output."""
    last: BaseException | None = None
    for rows in (0, 2):  # two rows, not one: `and`/`or` on one-element arrays would pass unnoticed
        try:
            return fn(empty_batch(schema, rows))
        except KeyError as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise PipelineError(name, f"{what} reads a column the stream does not have: {msg}",
                                f"use one of {schema.names}") from None
        except Exception as exc:  # noqa: BLE001 - any failure here is the user's function
            last = exc
    where = _user_frame(last)
    fix = ("functions get a batch of columns (numpy arrays) and must work for any length; "
           "use map_records for per-record Python")
    if "truth value of an array" in str(last):
        fix = "combine conditions on columns with & | ~ and parentheses, not `and`/`or`/`not`"
    raise PipelineError(name, f"{what} failed on a test batch ({type(last).__name__}: {last}){where}", fix) from None


def sample_call(fn: Callable[[Batch], Any], schema: Schema, rows: int = 2) -> Any:
    """`fn` on a batch of `rows` zero rows, or None if it fails there: the build-time check of an output's shape,
    which a function that works on an empty batch but not on zeros (a division, a lookup) must not fail."""
    try:
        # zeros divide by zero: numpy's warnings about the test batch are noise to the user who builds the pipeline
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(empty_batch(schema, rows))
    except Exception:  # noqa: BLE001 - trial_call has checked the function; this only looks at shapes
        return None


def check_column_shapes(out: Any, rows: int, name: str, what: str) -> None:
    """A function's columns for a batch of `rows` records: one value per record (or one for all of them)."""
    if not isinstance(out, Mapping):
        return
    for col, value in out.items():
        shape = np.shape(value)
        if shape not in ((), (rows,)):
            raise PipelineError(name, f"{what} returned column '{col}' of shape {shape} for a batch of {rows} "
                                      f"records; a column needs one value per record",
                                "return a 1-D array as long as the batch, e.g. b['co2'] * 2 (or one value for "
                                "all records); to aggregate over records use .window(...).aggregate(...)")


def _user_frame(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_PACKAGE_DIR)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def check_roles(before: Schema, fields: Mapping[str, Any], name: str, what: str) -> None:
    """A function may return the event-time or key column anew, but not as a type that cannot be one: a float
    time column would still be called the event time, a float key still the key."""
    if before.time and before.time in fields and np.dtype(fields[before.time]) != np.int64:
        raise PipelineError(name, f"{what} returns the event-time column '{before.time}' as "
                                  f"{np.dtype(fields[before.time])}; event time is int64 nanoseconds",
                            f"give the new values another name, or return int64 nanoseconds in '{before.time}'")
    if before.key and before.key in fields and np.dtype(fields[before.key]).kind not in "biuUS":
        raise PipelineError(name, f"{what} returns the key column '{before.key}' as "
                                  f"{np.dtype(fields[before.key])}; keys are integers or strings",
                            f"give the new values another name, or return an int or str column '{before.key}'")


def _columns_schema(out: Any, schema: Schema, name: str, what: str) -> Schema:
    if not isinstance(out, Mapping):
        raise PipelineError(name, f"{what} must return a mapping of column name to array, got "
                                  f"{type(out).__name__}", "return e.g. {'temp_f': b['temp'] * 1.8 + 32}")
    cols = {k: np.asarray(v) for k, v in out.items()}
    time = schema.time if (schema.time in cols or schema.time is None) else None
    key = schema.key if schema.key in cols else None
    return schema_of_columns(cols, time=time, key=key)


class Map(Operator):
    """Replace the columns by what `fn(batch)` returns; the event-time column is kept if not returned."""

    kind = "map"
    cpu_us = 0.3

    def __init__(self, fn: Callable[[Batch], Mapping[str, Any]], keep: bool = False) -> None:
        self.fn = fn
        self.keep = keep  # True: add/replace columns, keep the others (with_columns)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        out = trial_call(self.fn, s, name, "the map function")
        schema = _columns_schema(out, s, name, "the map function")
        check_column_shapes(sample_call(self.fn, s), 2, name, "the map function")
        fields = dict(schema.fields)
        check_roles(s, fields, name, "the map function")
        if self.keep:
            merged = dict(s.fields)
            merged.update(fields)
            fields = merged
        elif s.time and s.time not in fields:
            fields = {s.time: s.dtype(s.time), **fields}
        key = s.key if s.key in fields and (self.keep or s.key in dict(schema.fields)) else None
        return {OUT: Schema.of(fields, time=s.time, key=key)}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.time = ctx.input_schemas[0].time

    def process(self, port: int, batch: Batch) -> Emit:
        try:
            out = self.fn(batch)
        except Exception as exc:
            raise OperatorError(self.name, exc) from exc
        if self.keep:
            return [(OUT, batch.with_columns(out))]
        cols = dict(out)
        if self.time and self.time not in cols:
            cols = {self.time: batch[self.time], **cols}
        return [(OUT, batch.replace_columns(cols))]


class Filter(Operator):
    """Keep records where `fn(batch)` is true (a boolean mask); no column is copied."""

    kind = "filter"
    cpu_us = 0.2
    selectivity = 0.5

    def __init__(self, fn: Callable[[Batch], np.ndarray]) -> None:
        self.fn = fn

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        out = np.asarray(trial_call(self.fn, inputs[0], name, "the filter predicate"))
        if out.dtype != np.bool_:
            raise PipelineError(name, f"the filter predicate returned {out.dtype}, not a boolean mask",
                                "return a comparison such as b['CO2'] < 5000, combined with & and |")
        sample = sample_call(self.fn, inputs[0])
        shapes = [np.shape(out)] + ([] if sample is None else [np.shape(sample)])
        expected = [(0,), (2,)][: len(shapes)]
        if shapes != expected:
            got = "a single value" if shapes[-1] == () else f"shape {shapes[-1]}"
            raise PipelineError(name, f"the filter predicate returned {got} for a batch of "
                                      f"{2 if len(shapes) == 2 else 0} records, not one boolean per record",
                                "return a comparison on a column, such as b['CO2'] < 5000, combined with & and |")
        return {OUT: inputs[0]}

    def process(self, port: int, batch: Batch) -> Emit:
        try:
            keep = np.asarray(self.fn(batch))
        except Exception as exc:
            raise OperatorError(self.name, exc) from exc
        return [(OUT, batch.filter(keep))]


class FlatMap(Operator):
    """`fn(batch)` returns `(parent, columns)`: each output row comes from input row `parent[j]`.

    Event time and watermark of an output row are its parent's, unless the time column is returned.
    """

    kind = "flat_map"
    cpu_us = 0.6

    def __init__(self, fn: Callable[[Batch], tuple[np.ndarray, Mapping[str, Any]]]) -> None:
        self.fn = fn

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        out = trial_call(self.fn, s, name, "the flat_map function")
        if not (isinstance(out, tuple) and len(out) == 2):
            raise PipelineError(name, "the flat_map function must return (parent_index, columns)",
                                "e.g. return np.repeat(np.arange(n), 2), {'value': ...}")
        schema = _columns_schema(out[1], s, name, "the flat_map function")
        _check_parents(sample_call(self.fn, s), 2, name)
        fields = dict(schema.fields)
        check_roles(s, fields, name, "the flat_map function")
        if s.time and s.time not in fields:
            fields = {s.time: s.dtype(s.time), **fields}
        return {OUT: Schema.of(fields, time=s.time, key=s.key if s.key in fields else None)}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.time = ctx.input_schemas[0].time

    def process(self, port: int, batch: Batch) -> Emit:
        try:
            parent, out = self.fn(batch)
        except Exception as exc:
            raise OperatorError(self.name, exc) from exc
        parent = np.asarray(parent, dtype=np.int64)
        cols = {k: np.asarray(v) for k, v in out.items()}
        if len(parent) > 1 and np.any(parent[1:] < parent[:-1]):
            # keep output rows in input order, as a record-at-a-time flat_map would: watermarks advance
            # record by record, so rows out of order could look late depending on the batch size
            order = np.argsort(parent, kind="stable")
            parent = parent[order]
            cols = {k: v[order] for k, v in cols.items()}
        if self.time and self.time not in cols:
            cols = {self.time: batch[self.time][parent], **cols}
        wm = batch.wm
        return [(OUT, Batch(cols, None if wm is None else wm[parent]))]


def _check_parents(out: Any, rows: int, name: str) -> None:
    """A flat_map's (parent, columns) for a batch of `rows` records: parents index the batch, one per output row."""
    if not (isinstance(out, tuple) and len(out) == 2):
        return
    parent = np.asarray(out[0])
    if parent.ndim != 1 or parent.dtype.kind not in "iub":
        raise PipelineError(name, f"the flat_map function returned parent indexes of shape {parent.shape} and "
                                  f"dtype {parent.dtype}", "return a 1-D integer array: the input row of each output "
                                                           "row, e.g. np.repeat(np.arange(n), 2)")
    if len(parent) and (parent.min() < 0 or parent.max() >= rows):
        raise PipelineError(name, f"the flat_map function returned parent indexes {parent.tolist()[:8]} for a batch "
                                  f"of {rows} records; each must be an input row, 0..{rows - 1}",
                            "build them from the batch's length, e.g. n = len(b['co']); np.repeat(np.arange(n), 2)")
    if isinstance(out[1], Mapping):
        for col, value in out[1].items():
            shape = np.shape(value)
            if shape not in ((), (len(parent),)):
                raise PipelineError(name, f"the flat_map function returned column '{col}' of shape {shape} with "
                                          f"{len(parent)} parent indexes; a column needs one value per output row",
                                    "return columns as long as the parent index array")


class MapRecords(Operator):
    """Per-record escape hatch: `fn(record: dict) -> dict | None`. A record whose call raises goes to the
    dead-letter output with the error; `None` drops the record."""

    kind = "map_records"
    cpu_us = 5.0

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any] | None],
                 schema: Mapping[str, Any] | None = None) -> None:
        self.fn = fn
        self.schema = schema

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        if self.schema is not None:
            fields: dict[str, object] = dict(Schema.of(self.schema).fields)
        else:
            # "0" for text: parses as a number too, so typical per-record parsing functions work on it
            sample = {n: (np.zeros(1, d)[0].item() if d.kind not in "UO" else "0") for n, d in s.fields}
            try:
                out = self.fn(sample)
            except Exception as exc:
                raise PipelineError(name, f"map_records function failed on a sample record ({exc!r})",
                                    "declare the output with schema={'col': 'float64', ...}") from None
            if not isinstance(out, Mapping):
                raise PipelineError(name, "map_records function must return a dict (or None to drop)",
                                    "return {'col': value, ...}, or declare schema=")
            fields = {k: _dtype_of_value(v) for k, v in out.items()}
        check_roles(s, fields, name, "the map_records function")
        if s.time and s.time not in fields:
            fields = {s.time: np.int64, **fields}
        return {OUT: Schema.of(fields, time=s.time, key=s.key if s.key in fields else None)}

    def open(self, ctx) -> None:
        super().open(ctx)
        self.out_schema = ctx.output_schemas[OUT]
        self.time = ctx.input_schemas[0].time

    def process(self, port: int, batch: Batch) -> Emit:
        rows, parents, bad_pos, bad_rows, bad_why = [], [], [], [], []
        records = batch.to_records()

        def refuse(i: int, exc: BaseException) -> None:
            bad_pos.append(f"record {i} of batch")
            bad_rows.append(repr(records[i]))
            bad_why.append(f"{type(exc).__name__}: {exc}")

        for i, record in enumerate(records):
            try:
                out = self.fn(record)
                if out is not None and not isinstance(out, Mapping):
                    raise TypeError(f"the function returned {type(out).__name__}, not a dict (or None to drop "
                                    "the record)")
            except Exception as exc:  # noqa: BLE001 - the record is refused, the pipeline goes on
                refuse(i, exc)
                continue
            if out is not None:
                if self.time and self.time not in out:
                    out = {**out, self.time: record[self.time]}
                rows.append(out)
                parents.append(i)
        emitted: Emit = []
        try:
            cols = self._columns(rows)
        except (TypeError, ValueError, OverflowError):
            # some record's value is not of its column's type: find which, refuse those, keep the others
            kept, kept_parents = [], []
            for out, i in zip(rows, parents, strict=True):
                try:
                    self._columns([out])
                except (TypeError, ValueError, OverflowError) as exc:
                    refuse(i, exc)
                    continue
                kept.append(out)
                kept_parents.append(i)
            rows, parents = kept, kept_parents
            cols = self._columns(rows)
        if rows:
            wm = batch.wm
            emitted.append((OUT, Batch(cols, None if wm is None else wm[np.asarray(parents)])))
        if bad_rows:
            emitted.append((DEAD, dead_letters(self.name, bad_pos, bad_rows, bad_why)))
        return emitted

    def _columns(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The output columns of `rows`; raises naming the column when a value is not of its type (a missing value
        is None: NaN in a float column, "" in a text column — not the text 'None' — and refused in an int one)."""
        cols = {}
        for name, dtype in self.out_schema.fields:
            values = [r.get(name) for r in rows]
            if dtype.kind == "U":
                values = ["" if v is None else v for v in values]
            try:
                cols[name] = np.asarray(values, dtype=dtype if dtype.kind != "U" else str)
            except (TypeError, ValueError, OverflowError) as exc:
                if len(rows) == 1:
                    what = "missing" if name not in rows[0] else f"{values[0]!r} is not {dtype}"
                    raise ValueError(f"column '{name}': {what} ({exc})") from None
                raise
        return cols


def _dtype_of_value(v: Any) -> Any:
    if isinstance(v, bool):
        return np.bool_
    if isinstance(v, int):
        return np.int64
    if isinstance(v, float):
        return np.float64
    if isinstance(v, str):
        return "U"
    return object


class Split(Operator):
    """Route each record to one of `n` outputs by `fn(batch)` (int array, or a bool mask for n=2:
    True goes to output 0). Out-of-range indices go to the dead-letter output."""

    kind = "split"
    cpu_us = 0.3

    def __init__(self, fn: Callable[[Batch], np.ndarray], n: int) -> None:
        if n < 2:
            raise PipelineError(None, f"split into {n} streams", "split needs n >= 2")
        self.fn = fn
        self.n = n

    def output_ports(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.n))

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        out = np.asarray(trial_call(self.fn, inputs[0], name, "the split function"))
        if out.dtype.kind not in "biu":
            raise PipelineError(name, f"the split function returned {out.dtype}",
                                "return an integer array of output numbers, or a boolean mask")
        if out.dtype == np.bool_ and self.n != 2:
            raise PipelineError(name, "a boolean split needs n=2", "return integers for n > 2")
        return {str(i): inputs[0] for i in range(self.n)}

    def process(self, port: int, batch: Batch) -> Emit:
        try:
            which = np.asarray(self.fn(batch))
        except Exception as exc:
            raise OperatorError(self.name, exc) from exc
        if which.dtype == np.bool_:
            which = np.where(which, 0, 1)
        emitted: Emit = [(str(i), batch.filter(which == i)) for i in range(self.n)]
        bad = (which < 0) | (which >= self.n)
        if bad.any():
            rows = batch.filter(bad).to_records()
            emitted.append((DEAD, dead_letters(self.name, [f"record {i}" for i in np.flatnonzero(bad)],
                                               [repr(r) for r in rows],
                                               [f"split returned {w}, not in 0..{self.n - 1}" for w in which[bad]])))
        return emitted


class Union(Operator):
    """Merge streams with the same schema. Its watermark is the minimum over its inputs, so a record's
    watermark is held back by the slowest input."""

    kind = "union"
    cpu_us = 0.1

    def __init__(self, n_inputs: int) -> None:
        self.n_inputs = n_inputs

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        first = inputs[0]
        for i, other in enumerate(inputs[1:], start=1):
            if not first.matches(other):
                raise PipelineError(name, f"input {i} has columns [{other.describe()}] but input 0 has "
                                          f"[{first.describe()}]",
                                    "map the streams to the same columns, dtypes and time column before union")
        return {OUT: first if all(s.key == first.key for s in inputs) else first.with_key(None)}

    def process(self, port: int, batch: Batch) -> Emit:
        wm = batch.base_wm
        if wm is not None and self.n_inputs > 1:
            others = min(w for j, w in enumerate(self.ctx.input_watermarks) if j != port)
            wm = np.minimum(wm, others)
            batch = Batch({n: batch.base(n) for n in batch.names}, wm, batch.mask)
        return [(OUT, batch)]


class KeyBy(Operator):
    """Mark `key` as the stream's key (no data moves in one process; across hosts it hash-partitions)."""

    kind = "key_by"
    cpu_us = 0.1

    def __init__(self, key: str) -> None:
        self.key = key

    def describe(self) -> str:
        return f"hash({self.key})"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if not isinstance(self.key, str):
            raise PipelineError(name, f"key_by() takes one column name, got {self.key!r}",
                                "key by one column; for a key of several, make one column first, e.g. "
                                ".with_columns(room_floor=lambda b: np.char.add(b['room'], b['floor']))")
        dtype = inputs[0].require(self.key, name, "key")
        if dtype.kind not in "biuUS":
            raise PipelineError(name, f"key '{self.key}' has dtype {dtype}; keys must be integers or strings",
                                "map the key to an int or str column first")
        return {OUT: inputs[0].with_key(self.key)}

    def process(self, port: int, batch: Batch) -> Emit:
        return [(OUT, batch)]
