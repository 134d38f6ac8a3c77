"""Files read as they are: real station files (NOAA SOLRAD and USCRN, NREL SRML and MIDC), encodings, quoting,
repeated headers, late values that widen a type, and poison rows that must cost one dead letter, never the job."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import microstream as ms
from microstream.sources import files as F

DATA = Path(__file__).parents[1] / "data" / "messy-weather"
S = 1_000_000_000

SOLRAD = ["year", "jday", "month", "day", "hour", "minute", "dt", "zen", "ghi", "ghi_flag", "dni", "dni_flag", "dhi",
          "dhi_flag", "uvb", "uvb_flag", "uvb_temp", "uvb_temp_flag", "std_ghi", "std_dni", "std_dhi", "std_uvb"]
USCRN = ["WBANNO", "UTC_DATE", "UTC_TIME", "LST_DATE", "LST_TIME", "CRX_VN", "LONGITUDE", "LATITUDE",
         "AIR_TEMPERATURE", "PRECIPITATION", "SOLAR_RADIATION", "SR_FLAG", "SURFACE_TEMPERATURE", "ST_TYPE",
         "ST_FLAG", "RELATIVE_HUMIDITY", "RH_FLAG", "SOIL_MOISTURE_5", "SOIL_TEMPERATURE_5", "WETNESS", "WET_FLAG",
         "WIND_1_5", "WIND_FLAG"]
SRML = ["doy", "hhmm", "ghi", "ghi_flag", "dni", "dni_flag", "dhi", "dhi_flag", "temp_air", "temp_air_flag"]


def run(stream):
    """(good records, dead letters) of a pipeline with one source."""
    out, dead = ms.sinks.collect(), ms.sinks.collect()
    stream.sink(out)
    stream.pipeline.dead_letters().sink(dead)
    stream.pipeline.run(verbose=False)
    return out, dead.records()


def utc(*args) -> int:
    import datetime as dt

    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp()) * S


# -- the real station files ------------------------------------------------------------------------------------


def test_noaa_solrad_dat_two_metadata_lines_whitespace_no_header():
    # As a naive reader takes it, the file is one string column; with the options its format describes, 22 typed
    # columns, event time from five of them, and -9999.9 read as missing.
    p = ms.Pipeline("solrad")
    s = p.read_csv(DATA / "abq19056.dat", skip_rows=2, delimiter="whitespace", names=SOLRAD,
                   time=("year", "month", "day", "hour", "minute"), time_format="%Y %m %d %H %M",
                   missing={"dhi": -9999.9})
    assert s.schema.dtype("ghi") == np.float64 and s.schema.dtype("ghi_flag") == np.int64
    out, dead = run(s)
    b = out.batch()
    assert dead == [] and b.num_rows == 4
    assert b["time"].tolist() == [utc(2019, 2, 25, 0, m) for m in range(4)]
    assert b["ghi"].tolist() == [104.5, 102.6, 102.1, 102.6]
    assert b["dni"].tolist() == [60.5, 59.7, 65.8, 76.3]
    assert b["dhi"].tolist()[:3] == [97.8, 96.2, 94.8] and math.isnan(b["dhi"][3])
    assert b["std_uvb"].tolist() == [0.066, 0.063, 0.062, 0.059]  # the last line has no line end


def test_noaa_solrad_without_the_options_is_refused_or_dead_lettered_never_misread():
    p = ms.Pipeline("naive")
    with pytest.raises(ms.PipelineError, match="not in the header"):
        p.read_csv(DATA / "abq19056.dat", time="year")
    # the station name as the header, one column over whitespace-separated rows: no row fits, said at build time
    with pytest.raises(ms.PipelineError, match="no row of abq19056.dat fits its header") as err:
        ms.Pipeline("naive2").read_csv(DATA / "abq19056.dat")
    assert "expected 1 fields, got 6" in str(err.value) and "skip_rows=N" in str(err.value)
    assert "'whitespace'" in str(err.value)
    with pytest.raises(ms.PipelineError, match="appear more than once"):  # a data line taken as the header
        ms.Pipeline("naive3").read_csv(DATA / "CRNS0101-05-2019-AZ_Tucson_11_W.txt")


def test_noaa_uscrn_fixed_columns_sentinels_and_flag_letters():
    p = ms.Pipeline("uscrn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = p.read_csv(DATA / "CRNS0101-05-2019-AZ_Tucson_11_W.txt", names=USCRN, time=("UTC_DATE", "UTC_TIME"),
                       time_format="%Y%m%d %H%M", columns={"CRX_VN": "str"})
    notes = [str(w.message) for w in caught if issubclass(w.category, F.DataWarning)]
    assert any("'AIR_TEMPERATURE' holds -9999 in 1 row" in n and "missing=-9999" in n for n in notes)
    assert any("'SOIL_TEMPERATURE_5' holds -9999 in 4 row" in n for n in notes)
    assert caught[0].filename == __file__  # the notice points at the line that built the source
    assert s.node.op.notices == notes

    p = ms.Pipeline("uscrn2")
    s = p.read_csv(DATA / "CRNS0101-05-2019-AZ_Tucson_11_W.txt", names=USCRN, time=("UTC_DATE", "UTC_TIME"),
                   time_format="%Y%m%d %H%M", columns={"CRX_VN": "str"},
                   missing={"AIR_TEMPERATURE": -9999, "SOIL_TEMPERATURE_5": -9999, "SOIL_MOISTURE_5": -99})
    out, dead = run(s)
    b = out.batch()
    assert dead == [] and b.num_rows == 4
    assert b["time"].tolist() == [utc(2019, 1, 1, 16, m) for m in (10, 15, 20, 25)]
    assert math.isnan(b["AIR_TEMPERATURE"][0]) and b["AIR_TEMPERATURE"].tolist()[1:] == [3.3, 3.5, 4.0]
    assert b["SOLAR_RADIATION"].tolist() == [296, 183, 340, 393] and b["SOLAR_RADIATION"].dtype == np.int64
    assert b["ST_TYPE"].tolist() == ["C"] * 4 and b["CRX_VN"].tolist() == ["3"] * 4
    assert np.isnan(b["SOIL_MOISTURE_5"]).all() and np.isnan(b["SOIL_TEMPERATURE_5"]).all()
    assert b["WETNESS"].tolist() == [24, 1182, 1183, 1223] and b["WIND_1_5"].tolist() == [0.78, 0.36, 0.53, 0.64]


def test_nrel_srml_repeated_flag_headers_refused_with_the_fix_then_read():
    path = DATA / "SRML-day-EUPO1801.txt"
    with pytest.raises(ms.PipelineError, match="appear more than once") as err:
        ms.Pipeline("srml").read_csv(path)
    assert "dedupe_columns=True" in str(err.value) and "['0', '0_2', '0_3', '0_4']" in str(err.value)

    with pytest.warns(F.DataWarning, match="column '2010' holds -999"):
        s = ms.Pipeline("srml").read_csv(path, dedupe_columns=True)
    out, dead = run(s)
    first = out.records()[0]
    assert list(first) == ["94255", "2018", "1000", "0", "2010", "0_2", "2011", "0_3", "7008", "0_4"]

    p = ms.Pipeline("srml2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = p.read_csv(path, skip_rows=1, names=SRML)  # tab-separated: sniffed
    assert [str(w.message) for w in caught] == [
        "SRML-day-EUPO1801.txt: column 'dni' holds -999 in 1 row(s), a common 'no reading' sentinel; pass "
        "missing=-999 (or missing={'dni': -999}) to read it as NaN"]
    out, dead = run(s)
    b = out.batch()
    assert dead == [] and b.num_rows == 1440
    assert b["doy"].tolist() == [1] * 1440 and b["hhmm"].tolist()[:3] == [1, 2, 3] and b["hhmm"][-1] == 2400
    assert b["temp_air"].tolist()[:4] == [-20.5, -21.3, -26.0, -28.8] and b["temp_air"][-1] == -9.7
    assert b["temp_air_flag"].tolist() == [12] * 1440
    assert (b["dni"] == -999).sum() == 1


def test_nrel_midc_date_and_mst_time_columns():
    p = ms.Pipeline("midc")
    s = p.read_csv(DATA / "midc_20181014.txt", time=("DATE (MM/DD/YYYY)", "MST"), time_format="%m/%d/%Y %H:%M",
                   utc_offset="-07:00")
    out, dead = run(s)
    b = out.batch()
    assert dead == [] and b.num_rows == 1440
    assert b["time"][0] == utc(2018, 10, 14, 7, 0) and b["time"][-1] == utc(2018, 10, 15, 6, 59)
    assert (np.diff(b["time"]) == 60 * S).all()
    assert b["Global PSP [W/m^2]"][0] == -7.69272 and b["Temperature @ 80m [deg C]"][-1] == -6.152
    assert b["Global PSP (Accumulated) [kWhr/m^2]"].dtype == np.float64


# -- types: inferred from the whole file, widened, declared types win ------------------------------------------


def test_a_late_float_widens_an_int_column_and_columns_always_win(tmp_path):
    path = tmp_path / "co2.csv"
    rows = [f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z,{400 + i % 7}" for i in range(1000)]
    rows.insert(900, "2024-01-01T00:15:00.5Z,400.5")
    path.write_text("time,co2\n" + "\n".join(rows) + "\n")
    out, dead = run(ms.Pipeline("w").read_csv(path, time="time"))
    assert dead == [] and len(out) == 1001 and out.batch()["co2"].dtype == np.float64
    assert out.batch()["co2"][900] == 400.5
    # the first 200 rows alone say int: then the late value is a dead letter that says why
    out, dead = run(ms.Pipeline("w2").read_csv(path, time="time", infer_rows=200))
    assert len(out) == 1000 and [d["reason"] for d in dead] == ["column 'co2': cannot parse '400.5' as int"]
    out, dead = run(ms.Pipeline("w3").read_csv(path, time="time", columns={"co2": "str"}))
    assert dead == [] and out.batch()["co2"][900] == "400.5"


def test_a_repeated_header_line_is_a_dead_letter_not_a_string_column(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("t,v\n2024-01-01T00:00:00Z,1\nt,v\n2024-01-01T00:00:01Z,2\n")  # two files concatenated
    s = ms.Pipeline("h").read_csv(path, time="t")
    assert s.schema.dtype("v") == np.int64
    out, dead = run(s)
    assert out.batch()["v"].tolist() == [1, 2]
    assert [(d["position"].rsplit(":", 1)[1], d["row"], d["reason"]) for d in dead] == [
        ("3", "t,v", "repeated header line")]


def test_duplicate_names_outside_usecols_are_fine(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("t,x,x,v\n2024-01-01T00:00:00Z,1,2,3.5\n")
    out, _ = run(ms.Pipeline("d").read_csv(path, time="t", usecols=["v"]))
    assert out.records() == [{"t": utc(2024, 1, 1), "v": 3.5}]


# -- quoting, encodings, BOMs ----------------------------------------------------------------------------------


def test_rfc4180_quoted_newlines_keep_every_good_row_and_a_stray_quote_costs_one_line(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes(b'id,note,v\r\n1,"two\r\nlines",1.5\r\n2,"stray,2.5\r\n3,plain,3.5\r\n4,"x ""q""",4.5\r\n')
    out, dead = run(ms.Pipeline("q").read_csv(path))
    assert out.batch()["id"].tolist() == [1, 3, 4]
    assert out.batch()["note"].tolist() == ["two\r\nlines", "plain", 'x "q"']
    assert [d["position"].rsplit(":", 1)[1] for d in dead] == ["4"]
    assert dead[0]["row"] == '2,"stray,2.5' and "reading resumes at line 5" in dead[0]["reason"]


def test_quoted_newline_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "_CHUNK", 64)  # a record is cut by almost every read
    rows = [f'{i},"line {i}\nsecond line of {i}",{i}.5' for i in range(200)]
    path = tmp_path / "multi.csv"
    path.write_text("id,note,v\n" + "\n".join(rows) + "\n")
    out, dead = run(ms.Pipeline("mc").read_csv(path, columns={"id": "int", "note": "str", "v": "float"}))
    assert dead == [] and out.batch()["id"].tolist() == list(range(200))
    assert out.batch()["note"][199] == "line 199\nsecond line of 199"


def test_invalid_utf8_lines_are_dead_letters_and_latin1_keys_do_not_merge(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("station,temp\nZürich,1.5\nGenève,2.5\nGenèvé,3.5\nplain,4.5\n".encode("latin-1"))
    out, dead = run(ms.Pipeline("u").read_csv(path))
    assert out.batch()["station"].tolist() == ["plain"]
    assert [d["position"].rsplit(":", 1)[1] for d in dead] == ["2", "3", "4"]
    assert dead[0]["reason"] == ("not valid utf-8: byte 0xfc at character 2; pass the file's encoding (e.g. "
                                 "encoding='latin-1'), or errors='replace'")
    out, dead = run(ms.Pipeline("l").read_csv(path, encoding="latin-1"))
    assert dead == [] and out.batch()["station"].tolist() == ["Zürich", "Genève", "Genèvé", "plain"]
    out, dead = run(ms.Pipeline("r").read_csv(path, errors="replace"))
    assert dead == [] and out.batch()["station"][1] == "Gen\ufffdve"
    with pytest.raises(ms.PipelineError, match="not ASCII-compatible"):
        ms.Pipeline("x").read_csv(path, encoding="utf-16")
    with pytest.raises(ms.PipelineError, match="unknown encoding"):
        ms.Pipeline("x").read_csv(path, encoding="klingon")


def test_jsonl_latin1_keys_stay_distinct(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_bytes('{"t": 1, "temp\xe9": 1.0}\n{"t": 2, "temp\xe8": 2.0}\n'.encode("latin-1"))
    out, dead = run(ms.Pipeline("k").read_jsonl(path, time="t", encoding="latin-1", fields={"t": "int",
                                                                                            "tempé": "float"}))
    assert out.batch()["tempé"].tolist() == [1.0] and [d["reason"] for d in dead] == ["missing field 'tempé'"]
    with pytest.raises(ms.PipelineError, match="no JSON objects"):  # strict UTF-8: no line can be sampled
        ms.Pipeline("k2").read_jsonl(path, time="t")


# -- poison: one dead letter each, the job finishes, every good row is there -----------------------------------


def test_poison_rows_in_a_csv_file(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "_CHUNK", 1 << 16)
    good = [f"2024-01-01T00:00:{i:02d}Z,{i}.5,s{i}" for i in range(10)]
    poison = [
        b"2024-01-01T00:01:00Z," + b"9" * (50 << 20) + b",huge",  # a 50 MB row
        b"2024-01-01T00:01:01Z,\xff\xfe,bad utf-8",
        b"2024-01-01T00:01:02Z,nan,NaN literal",                    # a float NaN: read, not dead
        b"\xef\xbb\xbf2024-01-01T00:01:03Z,1.0,bom mid-file",       # a BOM inside: not a time
        b'2024-01-01T00:01:04Z,"' + b"[" * 5000 + b',deep',
        b"\x00\x01\x02",
    ]
    body = b"\n".join(good[:5][i].encode() + b"\n" + poison[i] for i in range(5)) + b"\n" + poison[5] + b"\n"
    body += "\n".join(good[5:]).encode() + b"\n"
    path = tmp_path / "poison.csv"
    path.write_bytes(b"\xef\xbb\xbftime,v,s\n" + body)
    s = ms.Pipeline("poison").read_csv(path, time="time", columns={"v": "float", "s": "str"})
    out, dead = run(s)
    b = out.batch()
    assert [x for x in b["s"].tolist() if x.startswith("s")] == [f"s{i}" for i in range(10)]
    assert "NaN literal" in b["s"].tolist() and math.isnan(b["v"][b["s"].tolist().index("NaN literal")])
    reasons = [d["reason"] for d in dead]
    assert len(dead) == 5
    assert reasons[0] == f"row longer than max_row_bytes ({1 << 20:,} bytes)"
    assert len(dead[0]["row"]) < 1100 and dead[0]["row"].endswith("bytes)")
    assert reasons[1].startswith("not valid utf-8: byte 0xff")
    assert "does not match format 'iso'" in reasons[2]
    assert "unterminated quoted field" in reasons[3] or "expected 3 fields" in reasons[3]
    assert reasons[4] == "expected 3 fields, got 1"


def test_poison_lines_in_a_jsonl_file_and_deep_nesting_in_the_sniffed_lines(tmp_path):
    deep = b'{"t": 3, "v": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    lines = [
        deep,                                                  # in the first lines: the build must survive it
        b'{"t": 1, "v": 1.5}',
        b'{"t": 2, "v": NaN}',
        b'\xef\xbb\xbf{"t": 4, "v": 4.5}',                     # a BOM starting a line: skipped
        b'{"t": 5, "v": "\xff"}',                               # invalid UTF-8
        b'{"t": 6, "v": ' + b"1" * (2 << 20) + b"}",           # a 2 MB line
        b'{"t": 7, "v": ' + b"{" * 5000,                       # deep and unterminated
        b'{"t": 8, "v": 8.5}',
    ]
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    s = ms.Pipeline("pj").read_jsonl(path, time="t", time_unit="s")
    assert s.schema.dtype("v") == np.float64
    out, dead = run(s)
    b = out.batch()
    assert b["t"].tolist() == [1 * S, 2 * S, 4 * S, 8 * S]
    assert b["v"][0] == 1.5 and math.isnan(b["v"][1]) and b["v"].tolist()[2:] == [4.5, 8.5]
    assert [(d["position"].rsplit(":", 1)[1], d["reason"]) for d in dead] == [
        ("1", "nesting deeper than max_depth (64)"),
        ("5", dead[1]["reason"]),
        ("6", f"line longer than max_row_bytes ({1 << 20:,} bytes)"),
        ("7", "nesting deeper than max_depth (64)")]
    assert dead[1]["reason"].startswith("not valid utf-8")
    assert all(len(d["row"]) < 1100 for d in dead)


def test_a_parser_failure_costs_rows_not_the_job(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    path.write_text("t,v\n2024-01-01T00:00:00Z,1.5\n2024-01-01T00:00:01Z,boom\n2024-01-01T00:00:02Z,2.5\n")
    real = F.parse_csv

    def flaky(chunk, spec, start_line=0, final=True):
        if b"boom" in chunk:
            raise RuntimeError("simulated parser bug")
        return real(chunk, spec, start_line=start_line, final=final)

    monkeypatch.setattr(F, "parse_csv", flaky)
    out, dead = run(ms.Pipeline("f").read_csv(path, time="t", columns={"v": "float"}))
    assert out.batch()["v"].tolist() == [1.5, 2.5]
    assert [(d["position"].rsplit(":", 1)[1], d["reason"]) for d in dead] == [
        ("3", "the parser failed on this row: RuntimeError: simulated parser bug")]


def test_jsonl_types_come_from_the_whole_file(tmp_path):
    path = tmp_path / "late.jsonl"
    lines = [json.dumps({"t": i, "n": i, "flag": True}) for i in range(500)] + [json.dumps({"t": 500, "n": 1.25})]
    path.write_text("\n".join(lines) + "\n")
    s = ms.Pipeline("lj").read_jsonl(path, time="t")
    assert s.schema.dtype("n") == np.float64 and s.schema.dtype("flag") == np.int64
    out, dead = run(s)
    assert len(out) == 500 and out.batch()["n"][-1] == 499.0
    assert [d["reason"] for d in dead] == ["missing field 'flag'"]
