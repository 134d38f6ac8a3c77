"""The parsers on hostile and messy input: random bytes never raise, every line is a good row, a dead letter or
blank; RFC 4180 quoted newlines; whitespace-separated fields; repeated headers; limits; type inference."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microstream.formats.parsing import (
    CsvSpec,
    find_invalid_utf8,
    json_depths,
    parse_csv,
    parse_jsonl,
    sniff_csv,
    sniff_jsonl,
)

SPEC = CsvSpec(header=["id", "t", "v", "s"], columns={"id": "int", "t": "time", "v": "float", "s": "str"})
JSON_FIELDS = {"id": "int", "t": "time", "v": "float", "s": "str"}

HOSTILE = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"1", b",", b'"', b'""', b"\n", b"\r\n", b" ", b"\t", b"{", b"}", b"[", b"]", b":",
                              b'"id"', b"2024-01-01T00:00:00Z", b"-9999", b"nan", b"\xff", b"\xef\xbb\xbf", b"\x00",
                              b"\xc3\xa9", b"1e999", b"99999999999999999999"]), max_size=80).map(b"".join),
)


def _accounted(result, data: bytes, csv_bom: bool = False) -> None:
    """Every line is in a good row, a dead letter or blank, once; dead letters have a reason."""
    data = data.removeprefix(b"\xef\xbb\xbf") if csv_bom else data  # a BOM alone is no line
    lines = data.split(b"\n")
    n_lines = len(lines) - (1 if data.endswith(b"\n") or not data else 0)
    assert result.n_lines == n_lines
    good = set(result.line_numbers.tolist())
    dead = [ln for ln, _, _ in result.dead]
    assert len(dead) == len(set(dead)) and not good & set(dead)
    assert all(1 <= ln <= n_lines for ln in good | set(dead))
    assert all(reason for _, _, reason in result.dead)


@settings(max_examples=300, deadline=None)
@given(data=HOSTILE, delimiter=st.sampled_from([",", ";", "whitespace"]))
def test_random_bytes_never_raise_in_the_csv_parser(data: bytes, delimiter: str) -> None:
    spec = CsvSpec(delimiter=delimiter, header=SPEC.header, columns=SPEC.columns, max_row_bytes=64)
    result = parse_csv(data, spec)
    _accounted(result, data, csv_bom=True)
    for kind, col in (("float", "v"), ("int", "id"), ("time", "t")):
        assert len(result.columns[col]) == len(result.line_numbers), kind
    sniff_csv(data, spec)  # never raises either


@settings(max_examples=300, deadline=None)
@given(data=HOSTILE)
def test_random_bytes_never_raise_in_the_jsonl_parser(data: bytes) -> None:
    result = parse_jsonl(data, JSON_FIELDS, max_row_bytes=64, max_depth=3)
    _accounted(result, data)
    sniff_jsonl(data, list(JSON_FIELDS))
    assert (json_depths(data.split(b"\n")) >= 0).all()


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.text(alphabet="ab\n\r,\" ", max_size=8), st.integers(-5, 5)), max_size=20),
       chunk=st.integers(1, 40))
def test_quoted_newlines_match_the_csv_module_across_chunks(rows, chunk: int) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    data = buf.getvalue().encode()
    spec = CsvSpec(header=["a", "n"], columns={"a": "str", "n": "int"})
    # fed in pieces the way the file source does: whole lines, the rest carried over when a quote is open
    got_a, got_n, pending, start, pos = [], [], b"", 0, 0
    while pos < len(data) or pending:
        cut = data.find(b"\n", pos + chunk)
        cut = len(data) if cut < 0 else cut + 1
        piece, pos = pending + data[pos:cut], cut
        res = parse_csv(piece, spec, start_line=start, final=pos >= len(data))
        assert res.dead == []
        got_a += res.columns["a"].tolist()
        got_n += res.columns["n"].tolist()
        pending, start = piece[res.n_bytes:], start + res.n_lines
    assert list(zip(got_a, got_n, strict=True)) == [tuple(r) for r in rows]


def test_whitespace_separated_with_quotes_and_ragged_blanks() -> None:
    spec = CsvSpec(delimiter="whitespace", header=["name", "v", "flag"],
                   columns={"name": "str", "v": "float", "flag": "str"})
    res = parse_csv(b'  "New York"   1.5 C\r\n\t\n  x\t-2   D  \nlone\n', spec)
    assert res.columns["name"].tolist() == ["New York", "x"] and res.columns["v"].tolist() == [1.5, -2.0]
    assert res.dead == [(4, "lone", "expected 3 fields, got 1")]


def test_a_stray_quote_costs_its_own_line_only() -> None:
    spec = CsvSpec(header=["id", "s"], columns={"id": "int", "s": "str"})
    data = b'1,ok\n2,"stray\n3,fine\n4,"two\nlines"\n5,"also stray\n'
    res = parse_csv(data, spec)
    assert res.columns["id"].tolist() == [1, 3, 4] and res.columns["s"][2] == "two\nlines"
    assert res.line_numbers.tolist() == [1, 3, 4]
    assert [(ln, raw) for ln, raw, _ in res.dead] == [(2, '2,"stray'), (6, '5,"also stray')]
    assert "reading resumes at line 3" in res.dead[0][2] and res.dead[1][2].startswith("unterminated quoted field")
    part = parse_csv(data[:-1], spec, final=False)  # the last quote may still close in the next chunk
    assert part.n_bytes == data.index(b'5,"also') and part.n_lines == 5


def test_repeated_header_lines_and_row_limits() -> None:
    spec = CsvSpec(header=["t", "v"], columns={"v": "int"}, max_row_bytes=20)
    res = parse_csv(b"a,1\nt,v\nb,2\n" + b"c," + b"9" * 30 + b"\n", spec)
    assert res.columns["v"].tolist() == [1, 2]
    assert [r for _, _, r in res.dead] == ["repeated header line", "row longer than max_row_bytes (20 bytes)"]
    res = parse_jsonl(b'{"v": 1}\n{"v": ' + b"1" * 30 + b"}\n", {"v": "int"}, max_row_bytes=20)
    assert [r for _, _, r in res.dead] == ["line longer than max_row_bytes (20 bytes)"]


def test_time_from_several_columns() -> None:
    spec = CsvSpec(delimiter="whitespace", header=["y", "mo", "d", "h", "mi", "v"], columns={"v": "float"},
                   time_join=("y", "mo", "d", "h", "mi"), time_formats={"y": "%Y %m %d %H %M"})
    res = parse_csv(b"2019 2 25 0 1 1.5\n2019 2 30 0 2 2.5\n", spec)
    assert list(res.columns) == ["y", "v"] and res.columns["y"].tolist() == [1551052860 * 10**9]
    assert res.dead[0][2] == ("column 'y': '2019 2 30 0 2' does not match format '%Y %m %d %H %M' "
                              "(day out of range for month)")


def test_sniff_widens_and_reports_sentinels() -> None:
    spec = CsvSpec(header=["i", "f", "e", "s", "empty"])
    seen = sniff_csv(b"1,1,1,a,\n2,2.5,,b,\n-7999,3,-9999.9,c,\n", spec)
    assert seen.kinds() == {"i": "int", "f": "float", "e": "float", "s": "str", "empty": "float"}
    assert seen.sentinels() == {"i": (-7999.0, 1), "e": (-9999.9, 1)} and seen.rows == 3
    seen = sniff_jsonl(b'{"b": true, "n": null, "x": [1], "i": 1}\n{"b": false, "i": null}\n', ["b", "n", "x", "i"])
    assert seen.kinds() == {"b": "int", "n": None, "x": None, "i": "float"}


def test_invalid_utf8_finder_and_json_depths() -> None:
    assert find_invalid_utf8(b"ok\n\xc3\xa9\n") == []
    assert find_invalid_utf8(b"a\xc3\nb\xed\xa0\x80\n\xef\xbf\xbd") == [(0, 0, 1), (1, 3, 4)]  # cut; surrogate
    assert json_depths([b'{"a": "]]]", "b": [{}]}', b""]).tolist() == [3, 0]


@pytest.mark.parametrize("depth", [10, 100_000])
def test_deep_json_is_counted_not_recursed(depth: int) -> None:
    line = b'{"v": 1, "x": ' + b"[" * depth + b"]" * depth + b"}\n"
    res = parse_jsonl(line * 3, {"v": "int"}, max_depth=64)
    assert (res.columns["v"].tolist(), len(res.dead)) == (([1, 1, 1], 0) if depth <= 64 else ([], 3))
    assert np.array_equal(json_depths([line]), [depth + 1])
