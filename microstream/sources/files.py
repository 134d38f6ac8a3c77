"""File sources: replay CSV and JSON-lines files with event time, through the numba parsers.

Files are read in chunks of whole lines; each chunk is checked against the file's encoding, parsed by a
numba kernel into columns and cut into batches; malformed lines go to the dead-letter stream as
`path:line` with the reason. Nothing in a file can stop a job: a line that does not decode, a row longer
than `max_row_bytes`, a stray quote, a repeated header line or JSON nested 5,000 deep is one dead letter.

Column types are inferred at build time by a compiled pass over the whole file (or its first `infer_rows`
rows), so a value that only appears late (`400.5` after a million ints) widens the column to float instead
of being dead-lettered; types given with `columns=` (CSV) or `fields=` (JSON lines) always win. A column
whose values hit a common "no reading" sentinel (-9999, -7999, ...) without `missing=` gets a `DataWarning`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import socket
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import DataWarning, PipelineError, suggest
from ..core.schema import Schema
from ..formats.parsing import (
    CsvSpec,
    Sniffed,
    find_invalid_utf8,
    infer_csv_header,
    parse_csv,
    parse_jsonl,
    sniff_csv,
    sniff_jsonl,
)
from ..operators.base import OUT, Emit, dead_letters
from .base import Source

_CHUNK = 4 << 20
_KEY_LINES = 200  # JSON lines sampled for the keys (their types come from the whole file)
_RAW_KEEP = 1000
_DTYPES = {"float": np.float64, "int": np.int64, "str": "U", "time": np.int64}
_DELIMITERS = (",", ";", "\t", "|")
MAX_ROW_BYTES = 1 << 20
MAX_DEPTH = 64

Dead = tuple[int, str, str]  # (line number, raw text, reason)


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def _encoding(encoding: str, errors: str, operator: str) -> str:
    """The codec name of an ASCII-compatible `encoding` ("utf-8" for UTF-8 with or without BOM)."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise PipelineError(operator, f"unknown encoding {encoding!r}", "e.g. encoding='utf-8' or 'latin-1'") from None
    probe = "\n\r\t ,;|\"{}:azAZ09.-+"
    if probe.encode(name, "replace") != probe.encode("ascii"):
        raise PipelineError(operator, f"encoding {encoding!r} is not ASCII-compatible (lines cannot be cut as bytes)",
                            "convert the file to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8")
    if errors not in ("strict", "replace"):
        raise PipelineError(operator, f"errors must be 'strict' or 'replace', got {errors!r}",
                            "'strict': lines that do not decode are dead letters; 'replace': bad bytes become U+FFFD")
    return "utf-8" if name in ("utf-8", "utf-8-sig") else name


class _Reader:
    """A file as chunks of whole lines in UTF-8, whatever its encoding.

    Lines that do not decode are blanked (so line numbers stay right) and returned as dead letters, unless
    errors="replace"; a line longer than `max_row` bytes is skipped without being held in memory. The parser
    may leave the end of a chunk unconsumed (a quoted field still open): `consumed` keeps it for the next.
    """

    def __init__(self, path: Path, encoding: str, errors: str, max_row: int) -> None:
        self.path, self.encoding, self.errors, self.max_row = path, encoding, errors, max_row
        self.file: io.BufferedIOBase | None = None

    def open(self) -> _Reader:
        self.file = _open(self.path)
        self.tail = b""     # raw bytes after the last newline read
        self.pending = b""  # decoded lines the parser has not consumed yet
        self.line = 0       # lines consumed so far
        self.eof = False
        return self

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def lines(self, n: int) -> list[bytes]:
        """The next `n` lines, raw, without their line ends (cut to max_row bytes; a BOM stripped on line 1)."""
        assert self.file is not None and not self.tail and not self.pending
        out = []
        for _ in range(n):
            line = self.file.readline(self.max_row + 1)
            if not line:
                break
            if not line.endswith(b"\n"):
                while (rest := self.file.readline(_CHUNK)) and not rest.endswith(b"\n"):
                    pass
            if self.line == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
            self.line += 1
            out.append(line.rstrip(b"\r\n"))
        return out

    def read(self) -> tuple[bytes, int, bool, list[Dead]] | None:
        """The next chunk: (UTF-8 lines, lines before it, whether it is the last, dead letters), None at the end."""
        assert self.file is not None
        while True:
            more = b"" if self.eof else self.file.read(_CHUNK)
            self.eof = self.eof or not more
            raw = self.tail + more
            if self.eof:
                cut = len(raw)
            else:
                cut = raw.rfind(b"\n") + 1
                if cut == 0:  # no line end yet
                    if len(raw) <= self.max_row:
                        self.tail = raw
                        continue
                    if self.pending:  # settle what is pending first, then come back to the long line
                        self.tail = raw
                        return self.pending, self.line, True, []
                    return self._skip_long_line(raw)
            chunk, self.tail = raw[:cut], raw[cut:]
            data, dead = self._decode(chunk, self.line + self.pending.count(b"\n"))
            if not data and not dead and not self.pending and self.eof:
                return None
            return self.pending + data, self.line, self.eof, dead

    def consumed(self, data: bytes, n_bytes: int, n_lines: int) -> None:
        self.pending = data[n_bytes:]
        self.line += n_lines

    def _skip_long_line(self, raw: bytes) -> tuple[bytes, int, bool, list[Dead]]:
        assert self.file is not None
        head, size, rest = raw[:4 * _RAW_KEEP], len(raw), b""
        while True:
            more = self.file.read(_CHUNK)
            if not more:
                self.eof = True
                break
            end = more.find(b"\n")
            if end >= 0:
                size += end
                rest = more[end + 1:]
                break
            size += len(more)
        self.tail = rest
        self.line += 1
        text = head.decode(self.encoding, "replace")[:_RAW_KEEP] + f"... ({size:,} bytes)"
        why = f"row longer than max_row_bytes ({self.max_row:,} bytes)"
        return b"", self.line - 1, False, [(self.line, text, why)]

    def _decode(self, chunk: bytes, first_line: int) -> tuple[bytes, list[Dead]]:
        if self.encoding == "utf-8":
            if chunk.isascii():
                return chunk, []
            try:
                chunk.decode("utf-8")
                return chunk, []
            except UnicodeDecodeError:
                pass
            if self.errors == "replace":
                return chunk.decode("utf-8", "replace").encode("utf-8"), []
            bad = [(li, start, offset) for li, start, offset in find_invalid_utf8(chunk)]
        else:
            try:
                return chunk.decode(self.encoding, self.errors).encode("utf-8"), []
            except UnicodeDecodeError:
                pass
            bad = []
            start = 0
            for li, line in enumerate(chunk.split(b"\n")):  # only for chunks with undecodable bytes
                try:
                    line.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    bad.append((li, start, start + exc.start))
                start += len(line) + 1
        out = bytearray(chunk)
        dead = []
        for li, start, offset in bad:
            end = chunk.find(b"\n", start)
            end = len(chunk) if end < 0 else end
            line = chunk[start:end].rstrip(b"\r")
            out[start:start + len(line)] = b" " * len(line)  # a blank line: skipped, numbering kept
            column = len(chunk[start:offset].decode(self.encoding, "replace")) + 1
            text = line[:4 * _RAW_KEEP].decode(self.encoding, "replace")[:_RAW_KEEP]
            dead.append((first_line + li + 1, text,
                         f"not valid {self.encoding}: byte 0x{chunk[offset]:02x} at character {column}; pass the "
                         f"file's encoding (e.g. encoding='latin-1'), or errors='replace'"))
        data = bytes(out)
        return (data if self.encoding == "utf-8" else data.decode(self.encoding).encode("utf-8")), dead


def _sniff(reader: _Reader, limit: int | None, sniff) -> Sniffed | None:
    """Run `sniff(data, start_line, final)` over the reader's chunks, up to `limit` lines after where it is."""
    seen: Sniffed | None = None
    stop = None if limit is None else reader.line + limit
    while (got := reader.read()) is not None:
        data, start, final, _ = got
        if stop is not None and start + data.count(b"\n") >= stop:
            cut = -1
            for _ in range(stop - start):
                cut = data.find(b"\n", cut + 1)
            data, final = data[:cut + 1], True
        part = sniff(data, start, final)
        reader.consumed(data, part.n_bytes, part.n_lines)
        seen = part if seen is None else seen.merge(part)
        if final or (stop is not None and reader.line >= stop):
            break
    return seen


def _notice_sentinels(seen: Sniffed | None, kinds: Mapping[str, str], covered, path: Path) -> list[str]:
    notes = []
    for col, (value, count) in (seen.sentinels() if seen else {}).items():
        if kinds.get(col) in ("float", "int") and not covered(col):
            shown = f"{value:g}"
            notes.append(f"{path.name}: column {col!r} holds {shown} in {count:,} row(s), a common 'no reading' "
                         f"sentinel; pass missing={shown} (or missing={{{col!r}: {shown}}}) to read it as NaN")
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=_user_frame())
    return notes


def _user_frame() -> int:
    """The stack level of the first caller outside microstream (where the warning should point)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


class _ChunkedFileSource(Source):
    """Shared chunking, batching and dead-letter plumbing for line-oriented files."""

    def __init__(self, path: str | Path, time: str | None, max_delay: int, speed: float | None,
                 batch_size: int, tags: Mapping[str, Any] | None, encoding: str, errors: str,
                 max_row_bytes: int, infer_rows: int | None) -> None:
        super().__init__(time, max_delay, speed, batch_size)
        self.path = Path(path)
        self.tags = dict(tags or {})
        self.encoding, self.errors = encoding, errors
        if max_row_bytes < 1:
            raise PipelineError(None, f"max_row_bytes must be >= 1, got {max_row_bytes}")
        if infer_rows is not None and infer_rows < 1:
            raise PipelineError(None, f"infer_rows must be >= 1 or None (the whole file), got {infer_rows}")
        self.max_row_bytes, self.infer_rows = int(max_row_bytes), infer_rows
        self.notices: list[str] = []

    def describe(self) -> str:
        speed = "" if self.speed is None else f" at {self.speed:g}× real time"
        return f"{self.path.name}{speed}"

    def _check_path(self, name: str) -> None:
        if not self.path.exists():
            if self.path.is_absolute():
                raise PipelineError(name, f"file not found: {self.path}", "check the path")
            raise PipelineError(name, f"file not found: {self.path} (looked for {Path.cwd() / self.path})",
                                "a relative path is taken from the directory you run in: run from the directory it "
                                "is relative to, or make it relative to your script: "
                                f"Path(__file__).parent / {str(self.path)!r}")

    def _reader(self, name: str) -> _Reader:
        return _Reader(self.path, _encoding(self.encoding, self.errors, name), self.errors, self.max_row_bytes)

    def open(self, ctx) -> None:
        super().open(ctx)
        if not self.path.exists():  # it was there when the pipeline was built: on a cluster, on another machine
            raise FileNotFoundError(f"{self.path} is not on {socket.gethostname()}, where '{ctx.name}' runs: a file a "
                                    "job reads must be on the node that runs it (copy it there at that path, use a "
                                    'shared directory, or pin the source to the node that has it with at="NODE")')
        self._in = self._reader(ctx.name).open()
        self._in.lines(self._preamble_lines())
        self._ready: list[Batch] = []
        self._eof = False
        self.out_schema = ctx.output_schemas[OUT]

    def _preamble_lines(self) -> int:
        return 0

    def size_hint(self) -> tuple[int, int] | None:
        """Bytes read of the file's size (a gzipped file's size is not known until it is read: None)."""
        f = self._in.file
        if f is None or self.path.suffix == ".gz" or f.closed:
            return None
        return f.tell(), max(self.path.stat().st_size, 1)

    def read(self) -> Emit | None:
        out: Emit = []
        while not self._ready and not self._eof:
            out += self._read_chunk()
        if self._ready:
            out.append((OUT, self._ready.pop(0)))
        if not out and self._eof:
            self._in.close()
            return None
        return out

    def _read_chunk(self) -> Emit:
        got = self._in.read()
        if got is None:
            self._eof = True
            return []
        data, start, final, dead = got
        try:
            columns, parsed_dead, n_bytes, n_lines = self._parse(data, start, final)
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost rows, never the job
            columns, parsed_dead, n_bytes, n_lines = self._parse_lines(data, start, exc)
        self._in.consumed(data, n_bytes, n_lines)
        dead = sorted(dead + parsed_dead) if dead else parsed_dead
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

    def _parse_lines(self, data: bytes, start: int, exc: Exception):
        """The fallback when parsing a chunk raised: each line alone; a line whose parse raises is a dead letter."""
        parts, dead = [], []
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if i == len(lines) - 1 and not line:
                break
            try:
                columns, line_dead, _, _ = self._parse(line + b"\n", start + i, True)
                parts.append(columns)
                dead += line_dead
            except Exception as line_exc:  # noqa: BLE001
                dead.append((start + i + 1, line[:4 * _RAW_KEEP].decode("utf-8", "replace")[:_RAW_KEEP],
                             f"the parser failed on this row: {type(line_exc).__name__}: {line_exc}"))
        parts = [p for p in parts if p and len(next(iter(p.values())))]
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return columns, dead, len(data), data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)

    def _parse(self, chunk: bytes, start_line: int,
               final: bool) -> tuple[dict[str, np.ndarray], list[Dead], int, int]:
        """(columns, dead letters, bytes consumed, lines consumed) of a chunk of whole lines."""
        raise NotImplementedError

    def reader_state(self) -> Any:
        r = self._in
        assert r.file is not None
        return {"offset": r.file.tell(), "tail": r.tail, "pending": r.pending, "line": r.line, "eof": r.eof,
                "done": self._eof, "ready": [b.to_dict() for b in self._ready]}

    def restore_reader(self, state: Any) -> None:
        r = self._in
        assert r.file is not None
        r.file.seek(state["offset"])
        r.tail, r.pending, r.line, r.eof = state["tail"], state["pending"], state["line"], state["eof"]
        self._eof = state["done"]
        self._ready = [Batch(d) for d in state["ready"]]

    def _schema(self, kinds: Mapping[str, str], name: str) -> Schema:
        _check_kinds(kinds, name, "fields" if self.kind == "read_jsonl" else "columns")
        fields: dict[str, Any] = {c: _DTYPES[k] for c, k in kinds.items()}
        for tag, value in self.tags.items():
            fields[tag] = np.asarray(value).dtype
        if self.time is not None and self.time not in fields:
            raise PipelineError(name, f"time column '{self.time}' is not in {self.path.name}; its columns are "
                                      f"{list(kinds)}", "pass time= one of the file's columns")
        return Schema.of(fields, time=self.time)


_TYPES = ("float", "int", "str")  # what columns= and fields= may say


def _check_kinds(kinds: Mapping[str, str], name: str, option: str) -> None:
    """A column type that is not one of `_TYPES` is refused, naming the valid ones and the closest."""
    for column, kind in kinds.items():
        if kind in _DTYPES:
            continue
        close = suggest(str(kind), list(_TYPES))
        hint = f"; did you mean '{close}'?" if close else ""
        raise PipelineError(name, f"column '{column}' has the unknown type {kind!r}{hint}",
                            f"give {option}={{{column!r}: ...}} one of {', '.join(map(repr, _TYPES))}")


def _dedupe(names: list[str]) -> list[str]:
    """Later repeats of a name become name_2, name_3, ... (skipping names the header already has)."""
    taken, seen, out = set(names), set(), []
    for name in names:
        if name and name in seen:
            k = 2
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def _sniff_delimiter(*lines: str) -> str:
    """The delimiter of the first line that has one of `_DELIMITERS`, else "whitespace" if a line has several
    blank-separated words (a header of one name over whitespace-separated data is then a visible mismatch)."""
    for line in lines:
        best = max(_DELIMITERS, key=line.count)
        if line.count(best):
            return best
    return "whitespace" if any(len(line.split()) > 1 for line in lines) else ","


class CsvSource(_ChunkedFileSource):
    """A CSV file (or .csv.gz) replayed as a stream.

    Options: `time` (a column, or a tuple of columns joined with spaces, such as `("Date", "Time")` or
    `("year", "month", "day", "hour", "minute")` — the result is named `time`), `time_format` ("iso" or
    strftime-like: `%Y %m %d %H %M %S %f %z`), `utc_offset` (e.g. "+01:00", for local times without an offset),
    `delimiter` (sniffed from the header if omitted; `"whitespace"` for columns separated by runs of blanks;
    `sep` is another name for it), `decimal` ("," for European files), `quote` (None: no quoting; quoted
    fields may span lines), `missing` (a sentinel such as -200, read as NaN, or {column: sentinel}),
    `columns` ({name: "float"|"int"|"str"}; they always win over inference), `usecols`, `skip_rows` (metadata
    lines before the header), `names` (the column names when the file has no header line), `dedupe_columns`
    (read repeated header names as `name_2`, `name_3`, ...; without it they are refused at build time),
    `encoding` ("utf-8"; any ASCII-compatible codec such as "latin-1" or "cp1252"), `errors` ("strict": a
    line that does not decode is a dead letter; "replace": bad bytes become U+FFFD), `infer_rows` (None: the
    types are inferred from every row in one compiled pass at build time; N: from the first N rows, later
    values that do not fit are dead letters), `max_row_bytes` (longer rows are dead letters; 1 MiB), `tags`
    (constant columns, e.g. {"room": "lab-1"}), `speed` (None = as fast as possible, 1.0 = real time, 60 = a
    minute per second), `max_delay` (a duration, e.g. "30s"), `batch_size`, `time_unit` ("s"|"ms"|"us"|"ns":
    the time column holds numbers counted in that unit since the epoch instead of text; an empty one is a
    dead letter).

    A NOAA SOLRAD station file: a station-name line and a location line, then whitespace-separated values
    with no header:

    >>> import microstream as ms
    >>> names = ["year", "jday", "month", "day", "hour", "minute", "dt", "zen", "ghi", "ghi_flag", "dni",
    ...          "dni_flag", "dhi", "dhi_flag", "uvb", "uvb_flag", "uvb_temp", "uvb_temp_flag", "std_ghi",
    ...          "std_dni", "std_dhi", "std_uvb"]
    >>> p = ms.Pipeline("solrad"); out = ms.sinks.collect()
    >>> s = p.read_csv("tests/data/messy-weather/abq19056.dat", skip_rows=2, delimiter="whitespace", names=names,
    ...                time=("year", "month", "day", "hour", "minute"), time_format="%Y %m %d %H %M",
    ...                missing={"dhi": -9999.9}, usecols=["ghi", "dhi"])
    >>> s.sink(out); _ = p.run(); out.batch()["dhi"].tolist()
    [97.8, 96.2, 94.8, nan]
    """

    kind = "read_csv"

    def __init__(self, path: str | Path, time: str | tuple[str, ...] | None = None, time_format: str = "iso",
                 utc_offset: str | int | None = None, delimiter: str | None = None, decimal: str = ".",
                 missing: float | Mapping[str, float] | None = None,
                 columns: Mapping[str, str] | None = None, usecols: list[str] | None = None,
                 tags: Mapping[str, Any] | None = None, speed: float | None = None, max_delay: Any = 0,
                 batch_size: int = 65536, *, sep: str | None = None, quote: str | None = '"',
                 skip_rows: int = 0, names: list[str] | None = None, dedupe_columns: bool = False,
                 encoding: str = "utf-8", errors: str = "strict", infer_rows: int | None = None,
                 max_row_bytes: int = MAX_ROW_BYTES, time_unit: str | None = None) -> None:
        from ..core.time import check_time_unit, to_ns

        check_time_unit(time_unit, "read_csv")
        self.time_join = tuple(time) if isinstance(time, (tuple, list)) else None
        if time_unit is not None and self.time_join is not None:
            raise PipelineError("read_csv", "time_unit= is for a column of numbers; a tuple of columns is text",
                                "pass time='column' with time_unit=, or time_format= for the joined columns")
        self.time_unit = time_unit
        if self.time_join is not None and len(self.time_join) < 2:
            raise PipelineError("read_csv", f"time={time!r}: a tuple joins two or more columns",
                                "pass time='column' for one column")
        time_name = "time" if self.time_join else (time if isinstance(time, str) else None)
        super().__init__(path, time_name, to_ns(max_delay, "max_delay", operator="read_csv"),
                         speed, batch_size, tags, encoding, errors, max_row_bytes, infer_rows)
        if sep is not None and delimiter is not None and sep != delimiter:
            raise PipelineError("read_csv", f"sep={sep!r} and delimiter={delimiter!r} disagree",
                                "sep is another name for delimiter: pass one of them")
        if skip_rows < 0:
            raise PipelineError("read_csv", f"skip_rows must be >= 0, got {skip_rows}")
        self.source_time = time
        self.time_format, self.utc_offset = time_format, utc_offset
        self.delimiter, self.decimal, self.quote = delimiter or sep, decimal, quote
        self.missing, self.columns, self.usecols = missing, dict(columns or {}), usecols
        self.skip_rows, self.dedupe_columns = int(skip_rows), dedupe_columns
        self.names = list(names) if names else None

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        self._check_path(name)
        reader = self._reader(name).open()
        try:
            reader.lines(self.skip_rows)
            header_line = ""
            if self.names is None:
                first = reader.lines(1)
                if not first:
                    raise PipelineError(name, f"{self.path} has no header line" + (
                        f" after the {self.skip_rows} skipped" if self.skip_rows else ""),
                        "a CSV source needs a header line, or names=[...] for a file without one")
                try:
                    header_line = first[0].decode(reader.encoding)
                except UnicodeDecodeError as exc:
                    raise PipelineError(name, f"the header line of {self.path.name} is not valid {reader.encoding}: "
                                              f"{exc}", "pass the file's encoding, e.g. encoding='latin-1'") from None
            delim = self.delimiter or _sniff_delimiter(header_line, *self._peek(reader.encoding))
            self.delimiter = delim
            try:
                header = infer_csv_header(header_line, delim) if self.names is None else list(self.names)
            except ValueError as exc:
                raise PipelineError(name, str(exc), "e.g. delimiter=',' or delimiter='whitespace'") from None
            header = self._check_names(header, name)
            self.header, self.header_line = header, header_line
            wanted = self.usecols or [h for h in header if h]
            time_cols = list(self.time_join) if self.time_join else ([self.time] if self.time else [])
            for col in (*wanted, *time_cols, *self.columns):
                if col not in header:
                    raise PipelineError(name, f"column '{col}' is not in the header of {self.path.name}: {header}",
                                        "check the column name (case matters)")
            infer = [c for c in wanted if c not in time_cols and c not in self.columns]
            if self.time and not self.time_join and (self.time_unit is not None or self.time_format == "iso"):
                infer.append(self.time)  # numbers since the epoch: parsed as int or float, then scaled to ns
            spec = CsvSpec(delimiter=delim, decimal=self.decimal, quote=self.quote, header=header,
                           header_line=header_line, max_row_bytes=self.max_row_bytes)
            try:
                seen = _sniff(reader, self.infer_rows, lambda d, s, f: sniff_csv(d, spec, infer, s, f)) \
                    if infer else None
            except ValueError as exc:
                raise PipelineError(name, str(exc)) from None
        finally:
            reader.close()
        if seen is not None and seen.rows == 0 and seen.dead:
            reasons = list(dict.fromkeys(why for _, _, why in seen.dead))
            raise PipelineError(name, f"no row of {self.path.name} fits its header {header}: "
                                      f"{'; '.join(reasons[:3])}",
                                "metadata lines before the header: skip_rows=N; no header line: names=[...]; "
                                f"check delimiter= (now {delim!r}) and encoding=")
        sniffed = seen.kinds() if seen else {}
        kinds: dict[str, str] = {}
        for col in wanted:
            if col in time_cols:
                continue
            kinds[col] = self.columns.get(col) or sniffed.get(col) or "float"  # no value at all: NaN floats
            if kinds[col] == "int" and self._has_missing(col) and col not in self.columns:
                kinds[col] = "float"  # a missing-value sentinel becomes NaN, which needs floats
        self.notices = _notice_sentinels(seen, kinds, self._has_missing, self.path)
        if self.time_unit is None and self.time and not self.time_join and self.time_format == "iso" \
                and sniffed.get(self.time) in ("int", "float"):
            raise PipelineError(name, f"time column '{self.time}' of {self.path.name} holds numbers, not ISO text",
                                "pass time_unit='s' (or 'ms', 'us', 'ns': what the numbers count since the epoch), "
                                "or time_format= for digits such as 202401011200 ('%Y%m%d%H%M')")
        if self.time_unit is not None and self.time:
            number = sniffed.get(self.time)
            if number not in ("int", "float"):
                raise PipelineError(name, f"time column '{self.time}' of {self.path.name} does not hold numbers "
                                          f"(time_unit={self.time_unit!r})",
                                    "leave out time_unit= for text times (see time_format=)")
            self._time_number = number
        if time_cols:
            kinds = {"time": "time", **kinds} if self.time_join else {time_cols[0]: "time", **kinds}
        self.kinds = kinds
        return {OUT: self._schema(kinds, name)}

    def _peek(self, encoding: str) -> list[str]:
        """The first data line (after skip_rows and the header), decoded, to sniff the delimiter."""
        with _open(self.path) as f:
            for _ in range(self._preamble_lines()):
                f.readline(self.max_row_bytes + 1)
            return [f.readline(self.max_row_bytes + 1).decode(encoding, "replace").strip("\r\n\ufeff")]

    def _check_names(self, header: list[str], name: str) -> list[str]:
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if not repeated:
            return header
        if self.dedupe_columns:
            return _dedupe(header)
        time_cols = list(self.time_join) if self.time_join else ([self.time] if self.time else [])
        used = set(self.usecols or header) | set(time_cols) | set(self.columns)
        if used & set(repeated):
            fixed = [new for new, old in zip(_dedupe(header), header, strict=True) if old in repeated]
            raise PipelineError(name, f"column name(s) {repeated} appear more than once in the "
                                      f"{'names' if self.names else 'header'} of {self.path.name}: {header}",
                                f"pass dedupe_columns=True to read them as {fixed}, or names=[...] (with "
                                "skip_rows=1 to skip the header line), or usecols= without them")
        return header

    def _has_missing(self, col: str) -> bool:
        if self.missing is None:
            return False
        return not isinstance(self.missing, Mapping) or col in self.missing

    def _preamble_lines(self) -> int:
        return self.skip_rows + (0 if self.names else 1)

    def _spec(self) -> CsvSpec:
        cols = {c: k for c, k in self.kinds.items() if c != "time" or not self.time_join}
        formats = {}
        if self.time_join:
            first, *rest = self.time_join
            cols[first] = "time"
            for col in rest:
                cols[col] = "str"
            formats[first] = self.time_format
        elif self.time and self.time_unit is not None:
            cols[self.time] = self._time_number
        elif self.time:
            formats[self.time] = self.time_format
        missing = self.missing
        if missing is not None and not isinstance(missing, Mapping):
            missing = {c: float(missing) for c, k in cols.items() if k == "float"}
        return CsvSpec(delimiter=self.delimiter or ",", decimal=self.decimal, quote=self.quote, header=self.header,
                       columns=cols, time_formats=formats, utc_offset=self.utc_offset, time_join=self.time_join,
                       missing=dict(missing or {}), header_line=self.header_line, max_row_bytes=self.max_row_bytes)

    def _parse(self, chunk: bytes, start_line: int, final: bool):
        if not hasattr(self, "_spec_cache"):
            self._spec_cache = self._spec()
        result = parse_csv(chunk, self._spec_cache, start_line=start_line, final=final)
        cols = dict(result.columns)
        dead = result.dead
        if self.time_join:
            cols["time"] = cols.pop(self.time_join[0])
        elif self.time and self.time_unit is not None:
            cols, dead = self._scale_times(cols, result.line_numbers, dead)
        return cols, dead, result.n_bytes, result.n_lines

    def _scale_times(self, cols: dict[str, np.ndarray], lines: np.ndarray,
                     dead: list[Dead]) -> tuple[dict[str, np.ndarray], list[Dead]]:
        """Numbers since the epoch in `time_unit` to ns, vectorised; an empty time field is a dead letter."""
        from ..core.time import event_times

        assert self.time is not None
        t = cols[self.time]
        if t.dtype.kind == "f":
            bad = ~np.isfinite(t)
            if bad.any():
                dead = sorted(dead + [(int(ln), "", f"column '{self.time}': no time") for ln in lines[bad]])
                cols = {k: v[~bad] for k, v in cols.items()}
                t = cols[self.time]
        cols[self.time] = event_times(t, self.time_unit)
        return cols, dead


class JsonlSource(_ChunkedFileSource):
    """A JSON-lines file of flat objects replayed as a stream.

    Options: `time` (a field holding ISO text, or numbers in `time_unit` "s"|"ms"|"us"|"ns"),
    `time_format`, `utc_offset`, `fields` ({name: "float"|"int"|"str"}; they always win; otherwise the keys
    come from the first lines and their types from every line, in one compiled pass at build time, or from
    the first `infer_rows`), `encoding`, `errors`, `max_row_bytes` (1 MiB) and `max_depth` (64: deeper nesting
    is a dead letter; nothing is recursed into, so no depth can crash the job or the build), `tags`, `speed`,
    `max_delay`, `batch_size`. A line that is not a flat JSON object, or lacks a field, goes to the
    dead-letter stream. `NaN` and `Infinity` (as Python writes them) are read as float NaN and infinity; a
    BOM starting a line is skipped.

    Without `fields=`, the keys are those of the objects among the first 200 lines (a key first seen later is
    not read). A key every sampled object has is required: a line without it is a dead letter (`missing
    field 'x'`), and so is a line without the time field, always. A key only some sampled objects have is
    optional: a line without it is read with NaN for a float, "" for a text; an optional key whose values are
    integers becomes a float column (NaN is its missing value: an int column has none), so no line is refused
    for lacking it. A key given in `fields=` is always required.

    >>> import microstream as ms, pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> deep = b"[" * 5000 + b"]" * 5000
    >>> _ = f.write_bytes(b'{"t": 1, "v": 1}\\n{"t": 2, "v": ' + deep + b'}\\n{"t": 3, "v": 2.5}\\n')
    >>> p = ms.Pipeline("j"); out = ms.sinks.collect()
    >>> p.read_jsonl(f, time="t").sink(out)   # 5,000-deep nesting in the sampled lines: no RecursionError
    >>> result = p.run(verbose=False); out.batch()["v"].tolist(), [d["reason"] for d in result.dead_letters]
    ([1.0, 2.5], ['nesting deeper than max_depth (64)'])
    """

    kind = "read_jsonl"

    def __init__(self, path: str | Path, time: str | None = None, time_format: str = "iso",
                 time_unit: str = "s", utc_offset: str | int | None = None,
                 fields: Mapping[str, str] | None = None, tags: Mapping[str, Any] | None = None,
                 speed: float | None = None, max_delay: Any = 0, batch_size: int = 65536, *,
                 encoding: str = "utf-8", errors: str = "strict", infer_rows: int | None = None,
                 max_row_bytes: int = MAX_ROW_BYTES, max_depth: int = MAX_DEPTH) -> None:
        from ..core.time import check_time_unit, to_ns

        check_time_unit(time_unit, "read_jsonl")
        super().__init__(path, time, to_ns(max_delay, "max_delay", operator="read_jsonl"), speed, batch_size, tags,
                         encoding, errors, max_row_bytes, infer_rows)
        self.time_format, self.time_unit, self.utc_offset = time_format, time_unit, utc_offset
        self.fields = dict(fields or {})
        self.max_depth = int(max_depth)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        self._check_path(name)
        kinds: dict[str, str] = dict(self.fields)
        seen = None
        self.optional: dict[str, str] = {}
        sometimes: list[str] = []
        if not kinds:
            reader = self._reader(name).open()
            try:
                keys, sometimes = self._keys(reader)
                reader.close()
                reader.open()
                seen = _sniff(reader, self.infer_rows, lambda d, s, f: sniff_jsonl(
                    d, keys, s, self.max_row_bytes, self.max_depth)) if keys else None
            finally:
                reader.close()
            kinds = {k: v for k, v in (seen.kinds() if seen else {}).items() if v is not None}
        if not kinds:
            raise PipelineError(name, f"no JSON objects found in the first lines of {self.path}",
                                "declare fields={'name': 'float', ...}")
        if self.time:
            if self.time not in kinds:
                raise PipelineError(name, f"time field '{self.time}' not found; fields are {list(kinds)}",
                                    "pass time= one of the objects' keys")
            kinds = {self.time: "time", **{k: v for k, v in kinds.items() if k != self.time}}
        for key in sometimes:  # in some sampled objects only: optional (never the time)
            if key in kinds and key != self.time:
                if kinds[key] == "int":
                    kinds[key] = "float"  # NaN for the lines without it
                self.optional[key] = kinds[key]
        self.kinds = kinds
        return {OUT: self._schema(kinds, name)}

    def _keys(self, reader: _Reader) -> tuple[list[str], list[str]]:
        """The keys of the flat objects among the first lines, in order of appearance (bad lines skipped), and
        those of them that some of the objects lack."""
        keys: dict[str, int] = {}
        objects = 0
        lines = 0
        while lines < _KEY_LINES and (got := reader.read()) is not None:
            data, _, _, _ = got
            reader.consumed(data, len(data), 0)
            for line in data.split(b"\n")[:_KEY_LINES - lines]:
                lines += 1
                if len(line) > self.max_row_bytes:
                    continue
                try:
                    obj = json.loads(line.removeprefix(b"\xef\xbb\xbf"))
                except (ValueError, RecursionError):  # json recurses into nesting: 5,000 deep raises
                    continue
                if isinstance(obj, dict):
                    objects += 1
                    for key in obj:
                        keys[key] = keys.get(key, 0) + 1
        return list(keys), [k for k, n in keys.items() if n < objects]

    def _parse(self, chunk: bytes, start_line: int, final: bool):
        formats = {self.time: self.time_format} if self.time else {}
        optional = getattr(self, "optional", None)
        kinds = {k: v for k, v in self.kinds.items() if k not in optional} if optional else self.kinds
        result = parse_jsonl(chunk, kinds, formats, self.utc_offset, start_line=start_line,
                             time_unit=self.time_unit, max_row_bytes=self.max_row_bytes, max_depth=self.max_depth)
        cols, dead = dict(result.columns), result.dead
        if optional:
            cols, dead = self._with_optional(chunk, start_line, cols, result.line_numbers, dead)
        return cols, dead, result.n_bytes, result.n_lines

    def _with_optional(self, chunk: bytes, start_line: int, cols: dict[str, np.ndarray], numbers: np.ndarray,
                       dead: list[Dead]) -> tuple[dict[str, np.ndarray], list[Dead]]:
        """The optional keys of the lines read (`numbers`, parsed for the required keys): each one parsed from
        only the lines whose text holds it (found by a byte search, not line by line), NaN or "" elsewhere.
        A value that does not fit its column makes its line a dead letter."""
        chunk = bytes(chunk)
        ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)  # where each line of the chunk ends
        starts = np.concatenate([[0], ends + 1])
        n = len(numbers)
        refused = np.zeros(n, dtype=bool)
        out = dict(cols)
        for key, kind in self.optional.items():
            col = np.full(n, np.nan) if kind == "float" else np.full(n, "", dtype="U1")
            needle = json.dumps(key).encode()
            hits, at = [], chunk.find(needle)
            while at >= 0:
                hits.append(at)
                at = chunk.find(needle, at + len(needle))
            if hits:
                lines = np.unique(np.searchsorted(ends, np.asarray(hits)))  # the chunk's lines holding the text
                rows = np.searchsorted(numbers, start_line + lines + 1)
                found = rows < n
                found[found] = numbers[rows[found]] == start_line + lines[found] + 1  # only lines read
                lines, rows = lines[found], rows[found]
                text = b"\n".join(chunk[starts[i]:ends[i] if i < len(ends) else len(chunk)]
                                  for i in lines.tolist()) + b"\n"
                got = parse_jsonl(text, {key: kind}, None, self.utc_offset, time_unit=self.time_unit,
                                  max_row_bytes=self.max_row_bytes, max_depth=self.max_depth)
                values = got.columns[key]
                if kind != "float":
                    col = col.astype(values.dtype if values.dtype.itemsize > col.dtype.itemsize else col.dtype)
                col[rows[got.line_numbers - 1]] = values
                for ln, raw, why in got.dead:
                    if why != f"missing field {key!r}":  # the text was there, but not as this key: NaN / ""
                        refused[rows[ln - 1]] = True
                        dead.append((int(numbers[rows[ln - 1]]), raw, why))
            out[key] = col
        out = {k: out[k] for k in self.kinds}  # in the schema's order
        if refused.any():
            out = {k: v[~refused] for k, v in out.items()}
            dead = sorted(dead)
        return out, dead
