"""File sources: replay CSV and JSON-lines files with event time, through the numba parsers.

Files are read in chunks of whole lines; each chunk is parsed by a numba kernel into columns,
cut into batches, and malformed lines go to the dead-letter stream as `path:line` with the reason.
Column types are inferred from the first lines at build time (or given with `columns=`).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..formats.parsing import CsvSpec, infer_csv_header, parse_csv, parse_jsonl
from ..operators.base import OUT, Emit, dead_letters
from .base import Source

_CHUNK = 4 << 20
_SNIFF_LINES = 200
_DTYPES = {"float": np.float64, "int": np.int64, "str": "U", "time": np.int64}


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def _head(path: Path, lines: int) -> list[str]:
    with _open(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
        out = []
        for line in text:
            out.append(line.rstrip("\r\n"))
            if len(out) >= lines:
                break
        return out


def _kind_of(values: list[str], decimal: str) -> str:
    values = [v.strip().strip('"') for v in values if v.strip().strip('"') != ""]
    if not values:
        return "float"
    try:
        for v in values:
            int(v)
        return "int"
    except ValueError:
        pass
    try:
        for v in values:
            float(v.replace(decimal, ".") if decimal != "." else v)
        return "float"
    except ValueError:
        return "str"


class _ChunkedFileSource(Source):
    """Shared chunking, batching and dead-letter plumbing for line-oriented files."""

    def __init__(self, path: str | Path, time: str | None, max_delay: int, speed: float | None,
                 batch_size: int, tags: Mapping[str, Any] | None) -> None:
        super().__init__(time, max_delay, speed, batch_size)
        self.path = Path(path)
        self.tags = dict(tags or {})

    def describe(self) -> str:
        speed = "" if self.speed is None else f" at {self.speed:g}× real time"
        return f"{self.path.name}{speed}"

    def _check_path(self, name: str) -> None:
        if not self.path.exists():
            raise PipelineError(name, f"file not found: {self.path}", "check the path (relative to where you run)")

    def open(self, ctx) -> None:
        super().open(ctx)
        self._file = _open(self.path)
        self._carry = b""
        self._line = self._first_data_line()  # lines consumed so far
        self._ready: list[Batch] = []
        self._eof = False
        self.out_schema = ctx.output_schemas[OUT]

    def _first_data_line(self) -> int:
        return 0

    def read(self) -> Emit | None:
        out: Emit = []
        while not self._ready and not self._eof:
            out += self._read_chunk()
        if self._ready:
            out.append((OUT, self._ready.pop(0)))
        if not out and self._eof:
            self._file.close()
            return None
        return out

    def _read_chunk(self) -> Emit:
        data = self._carry + self._file.read(_CHUNK)
        if not data:
            self._eof = True
            return []
        cut = data.rfind(b"\n") + 1
        if cut == 0 or len(data) < _CHUNK // 2 and not data.endswith(b"\n"):
            more = self._file.read(_CHUNK)
            if more:
                self._carry = data + more
                return []
            cut = len(data)
        chunk, self._carry = data[:cut], data[cut:]
        columns, dead = self._parse(chunk, self._line)
        self._line += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        emitted: Emit = []
        if dead:
            emitted.append(("dead", dead_letters(
                self.name, [f"{self.path}:{ln}" for ln, _, _ in dead], [row for _, row, _ in dead],
                [why for _, _, why in dead])))
        n = len(next(iter(columns.values()))) if columns else 0
        if n:
            for name, value in self.tags.items():
                columns[name] = np.full(n, value)
            cols = {c: columns[c] for c in self.out_schema.names}
            for lo in range(0, n, self.batch_size):
                self._ready.append(Batch({k: v[lo: lo + self.batch_size] for k, v in cols.items()}))
        return emitted

    def _parse(self, chunk: bytes, start_line: int) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
        raise NotImplementedError

    def reader_state(self) -> Any:
        return {"offset": self._file.tell(), "carry": self._carry, "line": self._line, "eof": self._eof,
                "ready": [b.to_dict() for b in self._ready]}

    def restore_reader(self, state: Any) -> None:
        self._file.seek(state["offset"])
        self._carry, self._line, self._eof = state["carry"], state["line"], state["eof"]
        self._ready = [Batch(d) for d in state["ready"]]

    def _schema(self, kinds: Mapping[str, str], name: str) -> Schema:
        fields: dict[str, Any] = {c: _DTYPES[k] for c, k in kinds.items()}
        for tag, value in self.tags.items():
            fields[tag] = np.asarray(value).dtype
        if self.time is not None and self.time not in fields:
            raise PipelineError(name, f"time column '{self.time}' is not in {self.path.name}; its columns are "
                                      f"{list(kinds)}", "pass time= one of the file's columns")
        return Schema.of(fields, time=self.time)


class CsvSource(_ChunkedFileSource):
    """A CSV file (or .csv.gz) replayed as a stream.

    Options: `time` (a column, or `(date_column, time_column)` joined with a space — the result is
    named `time`), `time_format` ("iso" or strftime-like: `%Y %m %d %H %M %S %f %z`), `utc_offset`
    (e.g. "+01:00", for local times without an offset), `delimiter` (sniffed from the header if
    omitted), `decimal` ("," for European files), `missing` (a sentinel such as -200, read as NaN),
    `columns` ({name: "float"|"int"|"str"}; inferred from the first lines otherwise), `usecols`,
    `tags` (constant columns, e.g. {"room": "lab-1"}), `speed` (None = as fast as possible, 1.0 =
    real time, 60 = a minute per second), `max_delay`, `batch_size`.
    """

    kind = "read_csv"
    cpu_us = 3.0

    def __init__(self, path: str | Path, time: str | tuple[str, str] | None = None, time_format: str = "iso",
                 utc_offset: str | int | None = None, delimiter: str | None = None, decimal: str = ".",
                 missing: float | Mapping[str, float] | None = None,
                 columns: Mapping[str, str] | None = None, usecols: list[str] | None = None,
                 tags: Mapping[str, Any] | None = None, speed: float | None = None, max_delay: Any = 0,
                 batch_size: int = 65536) -> None:
        from ..core.time import to_ns

        self.time_join = tuple(time) if isinstance(time, (tuple, list)) else None
        super().__init__(path, "time" if self.time_join else time, to_ns(max_delay) or 0, speed, batch_size, tags)
        self.source_time = time
        self.time_format, self.utc_offset = time_format, utc_offset
        self.delimiter, self.decimal = delimiter, decimal
        self.missing, self.columns, self.usecols = missing, dict(columns or {}), usecols

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        self._check_path(name)
        lines = _head(self.path, _SNIFF_LINES + 1)
        if not lines:
            raise PipelineError(name, f"{self.path} is empty", "a CSV source needs a header line")
        delim = self.delimiter or max((",", ";", "\t", "|"), key=lines[0].count)
        self.delimiter = delim
        header = infer_csv_header(lines[0], delim)
        self.header = header
        wanted = self.usecols or [h for h in header if h]
        time_cols = list(self.time_join) if self.time_join else ([self.time] if self.time else [])
        for col in (*wanted, *time_cols, *self.columns):
            if col not in header:
                raise PipelineError(name, f"column '{col}' is not in the header of {self.path.name}: {header}",
                                    "check the column name (case matters)")
        rows = [line.split(delim) for line in lines[1:] if line.strip(delim + " ")]
        kinds: dict[str, str] = {}
        for col in wanted:
            if col in time_cols:
                continue
            j = header.index(col)
            kinds[col] = self.columns.get(col) or _kind_of([r[j] for r in rows if len(r) > j], self.decimal)
            if kinds[col] == "int" and self._has_missing(col) and col not in self.columns:
                kinds[col] = "float"  # a missing-value sentinel becomes NaN, which needs floats
        if time_cols:
            kinds = {"time": "time", **kinds} if self.time_join else {time_cols[0]: "time", **kinds}
        self.kinds = kinds
        return {OUT: self._schema(kinds, name)}

    def _has_missing(self, col: str) -> bool:
        if self.missing is None:
            return False
        return not isinstance(self.missing, Mapping) or col in self.missing

    def _first_data_line(self) -> int:
        header = self._file.readline()
        return 1 if header else 0

    def _spec(self) -> CsvSpec:
        cols = {c: k for c, k in self.kinds.items() if c != "time" or not self.time_join}
        formats = {}
        if self.time_join:
            date_col, time_col = self.time_join
            cols[date_col], cols[time_col] = "time", "str"
            formats[date_col] = self.time_format
        elif self.time:
            formats[self.time] = self.time_format
        missing = self.missing
        if missing is not None and not isinstance(missing, Mapping):
            missing = {c: float(missing) for c, k in cols.items() if k == "float"}
        return CsvSpec(delimiter=self.delimiter or ",", decimal=self.decimal, header=self.header, columns=cols,
                       time_formats=formats, utc_offset=self.utc_offset, time_join=self.time_join,
                       missing=dict(missing or {}))

    def _parse(self, chunk: bytes, start_line: int):
        if not hasattr(self, "_spec_cache"):
            self._spec_cache = self._spec()
        result = parse_csv(chunk, self._spec_cache, start_line=start_line)
        cols = dict(result.columns)
        if self.time_join:
            cols["time"] = cols.pop(self.time_join[0])
        return cols, result.dead



class JsonlSource(_ChunkedFileSource):
    """A JSON-lines file of flat objects replayed as a stream.

    Options: `time` (a field holding ISO text, or numbers in `time_unit` "s"|"ms"|"us"|"ns"),
    `time_format`, `utc_offset`, `fields` ({name: "float"|"int"|"str"}; inferred from the first lines
    otherwise), `tags`, `speed`, `max_delay`, `batch_size`. A line that is not a flat JSON object, or
    lacks a field, goes to the dead-letter stream.
    """

    kind = "read_jsonl"
    cpu_us = 4.0

    def __init__(self, path: str | Path, time: str | None = None, time_format: str = "iso",
                 time_unit: str = "s", utc_offset: str | int | None = None,
                 fields: Mapping[str, str] | None = None, tags: Mapping[str, Any] | None = None,
                 speed: float | None = None, max_delay: Any = 0, batch_size: int = 65536) -> None:
        from ..core.time import to_ns

        super().__init__(path, time, to_ns(max_delay) or 0, speed, batch_size, tags)
        self.time_format, self.time_unit, self.utc_offset = time_format, time_unit, utc_offset
        self.fields = dict(fields or {})

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        self._check_path(name)
        kinds = dict(self.fields)
        if not kinds:
            for line in _head(self.path, _SNIFF_LINES):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    for k, v in obj.items():
                        kinds.setdefault(k, _json_kind(v, kinds.get(k)))
                        if kinds[k] == "int" and isinstance(v, float):
                            kinds[k] = "float"
            kinds = {k: v for k, v in kinds.items() if v is not None}
        if not kinds:
            raise PipelineError(name, f"no JSON objects found in the first lines of {self.path}",
                                "declare fields={'name': 'float', ...}")
        if self.time:
            if self.time not in kinds:
                raise PipelineError(name, f"time field '{self.time}' not found; fields are {list(kinds)}",
                                    "pass time= one of the objects' keys")
            kinds = {self.time: "time", **{k: v for k, v in kinds.items() if k != self.time}}
        self.kinds = kinds
        return {OUT: self._schema(kinds, name)}

    def _parse(self, chunk: bytes, start_line: int):
        formats = {self.time: self.time_format} if self.time else {}
        result = parse_jsonl(chunk, self.kinds, formats, self.utc_offset, start_line=start_line,
                             time_unit=self.time_unit)
        return dict(result.columns), result.dead


def _json_kind(v: Any, seen: str | None) -> str | None:
    if isinstance(v, bool):
        return "int"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    return seen
