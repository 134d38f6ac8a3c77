"""Sources through the public API: real CSV/JSONL files, dead letters, replay speed, polling, synthetic."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import time

import numpy as np
import pytest

import microstream as ms
from microstream.sources.synthetic import generate
from tests.helpers import dataset


def _collect(stream):
    out = ms.sinks.collect()
    stream.sink(out)
    return out


def test_occupancy_csv_matches_python_csv_module():
    path = dataset("uci-occupancy/datatraining.txt")
    p = ms.Pipeline("occ")
    out = _collect(p.read_csv(path, time="date"))
    result = p.run()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    b = out.batch()
    assert result.records_in["read_csv"] == len(rows) == 8143
    expected_t = [int(dt.datetime.fromisoformat(r["date"]).replace(tzinfo=dt.UTC).timestamp()) * 10**9
                  for r in rows]
    assert b["date"].tolist() == expected_t
    np.testing.assert_array_equal(b["CO2"], [float(r["CO2"]) for r in rows])
    np.testing.assert_array_equal(b["Occupancy"], [int(r["Occupancy"]) for r in rows])
    assert result.dead_letter_count == 0


def test_air_quality_european_csv_with_missing_values():
    path = dataset("uci-air-quality/AirQualityUCI.csv.gz")
    p = ms.Pipeline("aq")
    out = _collect(p.read_csv(path, time=("Date", "Time"), time_format="%d/%m/%Y %H.%M.%S", decimal=",",
                              missing=-200))
    result = p.run()
    b = out.batch()
    assert result.records_in["read_csv"] == 9357 and result.dead_letter_count == 0  # trailing ;;;; lines skipped
    assert b["time"][0] == int(dt.datetime(2004, 3, 10, 18, tzinfo=dt.UTC).timestamp()) * 10**9
    assert np.all(np.diff(b["time"]) == 3600 * 10**9)
    assert b["CO(GT)"][0] == 2.6
    assert int(np.isnan(b["NMHC(GT)"]).sum()) == 8443  # the -200 sentinel became NaN
    assert int(np.isnan(b["CO(GT)"]).sum()) == 1683


def test_water_flow_utc_offsets_across_dst_change():
    path = dataset("water-flow/water-flow.csv")
    p = ms.Pipeline("wf")
    out = _collect(p.read_csv(path, time="Time"))
    p.run()
    t = out.batch()["Time"]
    with open(path, newline="") as f:
        stamps = [row[0] for row in list(csv.reader(f))[1:]]
    assert t.tolist() == [int(dt.datetime.fromisoformat(s).timestamp()) * 10**9 for s in stamps]
    change = next(i for i, s in enumerate(stamps) if s.endswith("+02:00"))
    assert stamps[change - 1].endswith("+01:00")
    # local clocks jump forward an hour at the change, event time in UTC stays monotonic
    assert t[change] - t[change - 1] == 3600 * 10**9


def test_malformed_rows_go_to_dead_letters_and_the_rest_survives(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(
        "time,sensor,value\n"
        "2024-01-01T00:00:00Z,1,20.5\n"
        "2024-01-01T00:00:01Z,1\n"                 # too few fields
        "2024-01-01T00:00:02Z,2,abc\n"             # not a number
        "2024-13-01T00:00:03Z,2,21.0\n"            # month 13
        "2024-01-01T00:00:04Z,3,22.5\n")
    p = ms.Pipeline("dirty")
    out = _collect(p.read_csv(path, time="time", columns={"value": "float", "sensor": "int"}))
    dead = _collect(p.dead_letters())
    result = p.run()
    assert out.batch()["value"].tolist() == [20.5, 22.5]
    assert result.dead_letter_count == 3
    letters = dead.records()
    assert [d["position"] for d in letters] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "fields" in letters[0]["reason"] and "abc" in letters[1]["reason"] and "month" in letters[2]["reason"]
    assert letters[1]["row"] == "2024-01-01T00:00:02Z,2,abc"
    assert letters[0]["operator"] == "read_csv"


def test_missing_file_and_unknown_time_column_fail_at_build_time(tmp_path):
    p = ms.Pipeline("x")
    with pytest.raises(ms.PipelineError, match="file not found"):
        p.read_csv(tmp_path / "nope.csv", time="t")
    f = tmp_path / "a.csv"
    f.write_text("ts,v\n2024-01-01T00:00:00Z,1\n")
    with pytest.raises(ms.PipelineError, match="column 't' is not in the header"):
        p.read_csv(f, time="t")


def test_jsonl_source_with_dead_letters(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"ts": "2024-01-01T00:00:00Z", "room": "a", "co2": 500.0},
             {"ts": "2024-01-01T00:01:00Z", "room": "b", "co2": 610.5}]
    # the last line lacks the time (a line lacking only keys that other lines lack too is read: test_bad_records)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n{\"room\": \"c\", \"co2\": 700.0}\n")
    p = ms.Pipeline("j")
    out = _collect(p.read_jsonl(path, time="ts"))
    result = p.run()
    b = out.batch()
    assert b["room"].tolist() == ["a", "b"] and b["co2"].tolist() == [500.0, 610.5]
    assert result.dead_letter_count == 2


def test_gzip_and_tags(tmp_path):
    path = tmp_path / "x.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("time,v\n2024-01-01 00:00:00,1.5\n2024-01-01 00:00:10,2.5\n")
    p = ms.Pipeline("g")
    out = _collect(p.read_csv(path, time="time", tags={"room": "lab"}, key="room"))
    p.run()
    assert out.records()[1]["room"] == "lab" and out.records()[1]["v"] == 2.5


def test_replay_speed_paces_by_event_time(tmp_path):
    path = tmp_path / "paced.csv"
    rows = "\n".join(f"2024-01-01T00:00:{s:02d}Z,{s}" for s in range(0, 21, 5))  # 0..20 s of event time
    path.write_text("time,v\n" + rows + "\n")
    p = ms.Pipeline("paced")
    arrivals = []
    p.read_csv(path, time="time", speed=40.0).sink(ms.sinks.callback(
        lambda b: arrivals.extend([time.perf_counter()] * b.num_rows)))
    start = time.perf_counter()
    p.run()
    elapsed = time.perf_counter() - start
    assert len(arrivals) == 5
    # 20 s of event time at 40x is 0.5 s of wall time; the records must not all arrive at once
    assert elapsed >= 0.45
    assert arrivals[-1] - arrivals[0] >= 0.4


def test_poll_source_reads_a_sensor_at_an_interval():
    readings = iter(range(100))
    p = ms.Pipeline("poll")
    out = _collect(p.poll(lambda: {"sensor": 7, "value": float(next(readings))}, every=0.01, limit=5))
    p.run()
    b = out.batch()
    assert b["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # the build-time sample is the first reading
    gaps = np.diff(b["time"])
    assert np.all(gaps >= 5_000_000)  # polled about every 10 ms, stamped with the clock


def test_synthetic_is_deterministic_and_independent_of_batch_size():
    a = generate(0, 100_000, seed=3, sensors=50, jitter=10**8)
    b1 = ms.Pipeline("s1")
    o1 = _collect(b1.synthetic(count=100_000, sensors=50, seed=3, jitter=0.1, batch_size=777))
    b1.run()
    got = o1.batch()
    for col in ("sensor", "time", "value"):
        np.testing.assert_array_equal(got[col], a[col])
    assert not np.all(np.diff(a["time"]) >= 0)  # jitter makes it out of order


def test_from_iterable_batches_and_records():
    p = ms.Pipeline("it")
    out = _collect(p.from_iterable([{"v": np.arange(3)}, {"v": np.arange(3, 5)}]))
    p.run()
    assert out.batch()["v"].tolist() == [0, 1, 2, 3, 4]


def _records(n: int) -> list[dict]:
    return [{"t": 1_700_000_000 * 10**9 + i * 10**6, "k": i % 7, "v": i / 4, "on": i % 3 == 0, "s": "abc"[i % 3]}
            for i in range(n)]


def test_from_iterable_dicts_namedtuples_and_tuples_give_the_same_columns():
    import collections

    recs = _records(5000)  # several batches: the first is converted record by record, the rest in bulk
    Rec = collections.namedtuple("Rec", "t k v on s")
    runs = {}
    for kind, items, extra in (("dicts", recs, {}), ("namedtuples", [Rec(**r) for r in recs], {}),
                               ("tuples", [tuple(r.values()) for r in recs],
                                {"schema": {"t": "int64", "k": "int64", "v": "float64", "on": "bool", "s": "U1"}})):
        p = ms.Pipeline(kind)
        out = _collect(p.from_iterable(items, time="t", batch_size=1000, **extra))
        p.run()
        runs[kind] = out.batch()
    want = runs["dicts"]
    assert want["v"].tolist() == [r["v"] for r in recs] and want["s"].tolist() == [r["s"] for r in recs]
    assert {c: want[c].dtype.kind for c in want} == {"t": "i", "k": "i", "v": "f", "on": "b", "s": "U"}
    for kind in ("namedtuples", "tuples"):
        for col in want:
            np.testing.assert_array_equal(runs[kind][col], want[col], err_msg=f"{kind}: {col}")


def test_from_iterable_batches_with_unusual_values_take_the_general_path():
    recs = _records(3000)
    recs[2500]["v"] = 3  # an int among floats: still a float column
    recs[2600]["k"] = np.int64(5)  # a numpy scalar
    recs[2700]["s"] = "longer"  # a wider string than the first batch's
    p = ms.Pipeline("odd")
    out = _collect(p.from_iterable(recs, time="t", batch_size=1000))
    p.run()
    b = out.batch()
    assert b["v"].dtype == np.float64 and b["v"][2500] == 3.0
    assert b["k"].tolist() == [r["k"] for r in recs]
    assert b["s"][2700] == "longer"


def test_from_iterable_plain_tuples_need_their_names():
    with pytest.raises(ms.PipelineError, match="plain tuple of 2 values") as exc:
        ms.Pipeline("t").from_iterable([(1, 2.0)])
    assert "schema=" in str(exc.value)


def test_a_missing_relative_path_says_where_it_was_looked_for_and_how_to_anchor_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a script run from another directory than the one its paths are relative to
    with pytest.raises(ms.PipelineError) as e:
        ms.Pipeline("x").read_jsonl("data/readings.jsonl", time="t")
    assert f"looked for {tmp_path / 'data' / 'readings.jsonl'}" in str(e.value)
    assert "Path(__file__).parent / 'data/readings.jsonl'" in str(e.value)
