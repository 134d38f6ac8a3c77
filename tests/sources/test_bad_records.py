"""Bad input to the in-memory, polled and JSON-lines sources costs dead letters with the reason, never the job:
records that do not fit their columns, a polled function that raises, keys only some objects have, and an
unknown column type named with the valid ones."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

import microstream as ms
from tests.helpers import dataset

S = 1_000_000_000


def run(stream):
    """(good records, dead letters, run result) of a pipeline with one source."""
    out, dead = ms.sinks.collect(), ms.sinks.collect()
    stream.sink(out)
    stream.pipeline.dead_letters().sink(dead)
    result = stream.pipeline.run(verbose=False)
    return out, dead.records(), result


def occupancy(n: int) -> list[dict]:
    """The first n readings of the UCI occupancy test file as records (time in ns, floats, an int)."""
    with open(dataset("uci-occupancy/datatest.txt"), newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return [{"time": int(np.datetime64(r["date"], "ns").astype(np.int64)), "co2": float(r["CO2"]),
             "light": float(r["Light"]), "occupied": int(r["Occupancy"])} for r in rows]


def test_from_iterable_records_that_do_not_fit_are_dead_letters_and_the_rest_go_on():
    recs = occupancy(2600)
    good = [dict(r) for r in recs]
    recs[1500] = {**recs[1500], "co2": "abc"}                     # text in a float column
    recs[1600] = {**recs[1600], "occupied": None}                 # None in an int column
    recs[1700] = {k: v for k, v in recs[1700].items() if k != "time"}  # no time, after the build-time sample
    recs[2500] = {**recs[2500], "time": float("nan")}             # a NaN time
    p = ms.Pipeline("bad_records")
    out, dead, result = run(p.from_iterable(recs, time="time"))
    kept = [r for i, r in enumerate(good) if i not in (1500, 1600, 1700, 2500)]
    assert out.records() == kept
    assert result.dead_letter_count == 4
    assert [d["position"] for d in dead] == ["item 1500", "item 1600", "item 1700", "item 2500"]
    assert {d["operator"] for d in dead} == {"from_iterable"}
    reasons = [d["reason"] for d in dead]
    assert "column 'co2'" in reasons[0] and "'abc'" in reasons[0] and "float64" in reasons[0]
    assert "column 'occupied'" in reasons[1] and "None" in reasons[1]
    assert reasons[2] == "missing field 'time'"
    assert reasons[3] == "column 'time': time is NaN"
    assert "'abc'" in dead[0]["row"]


def test_from_iterable_a_field_only_later_records_have_is_dropped_with_a_warning():
    recs = [{"t": i * S, "v": float(i)} for i in range(5)]
    recs[3]["humidity"] = 40.0
    p = ms.Pipeline("extra_field")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, dead, _ = run(p.from_iterable(recs, time="t"))
    assert out.batch()["v"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and out.batch().names == ["t", "v"] and not dead
    notes = [str(w.message) for w in caught if issubclass(w.category, ms.DataWarning)]
    assert len(notes) == 1 and "'humidity'" in notes[0] and "item 3" in notes[0]


def test_a_poll_that_raises_or_returns_the_wrong_shape_is_a_dead_letter_and_polling_goes_on():
    calls = iter(range(100))

    def sensor():
        i = next(calls)
        if i == 2:
            raise OSError("sensor gone")
        if i == 3:
            return {"co2": "n/a"}
        if i == 4:
            return 7.5  # not a dict
        if i == 5:
            return {"humidity": 40.0}
        return {"co2": 400.0 + i}

    p = ms.Pipeline("flaky_sensor")
    out, dead, result = run(p.poll(sensor, every=0.001, limit=8))
    assert out.batch()["co2"].tolist() == [400.0, 401.0, 406.0, 407.0]  # the build-time sample is the first
    assert result.dead_letter_count == 4
    assert [d["position"] for d in dead] == ["poll #3", "poll #4", "poll #5", "poll #6"]
    reasons = [d["reason"] for d in dead]
    assert reasons[0] == "the polled function raised OSError: sensor gone"
    assert "column 'co2'" in reasons[1] and "float64" in reasons[1]
    assert "returned a float, not a dict" in reasons[2]
    assert reasons[3] == "missing field 'co2'"


def test_a_poll_that_raises_when_sampled_at_build_time_says_so():
    def sensor():
        raise OSError("sensor gone")

    p = ms.Pipeline("gone")
    with pytest.raises(ms.PipelineError, match="raised OSError: sensor gone when sampled"):
        p.poll(sensor, every=1.0)
    out, dead, _ = run(p.poll(sensor, every=0.001, limit=2, schema={"co2": "float64"}))
    assert not out.records() and [d["reason"] for d in dead] == ["the polled function raised OSError: sensor gone"] * 2


def test_jsonl_keys_only_some_objects_have_are_optional(tmp_path):
    recs = occupancy(2000)
    path = tmp_path / "occupancy.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(recs):
            r = {"time": r["time"] // S, "co2": r["co2"], "occupied": r["occupied"]}
            if i == 1:
                r["note"] = "door open"    # text, in one object
            if i % 10 == 2:
                r["people"] = i            # integers, in some objects: a float column, NaN without
            f.write(json.dumps(r) + "\n")
        f.write(json.dumps({"co2": 500.0, "occupied": 0}) + "\n")  # no time: still a dead letter
    p = ms.Pipeline("optional_keys")
    stream = p.read_jsonl(path, time="time")
    assert [(n, d.kind) for n, d in stream.schema.fields] == [("time", "i"), ("co2", "f"), ("occupied", "i"),
                                                              ("note", "U"), ("people", "f")]
    out, dead, _ = run(stream)
    b = out.batch()
    assert len(b) == 2000
    assert b["co2"].tolist() == [r["co2"] for r in recs]
    assert b["note"][1] == "door open" and set(b["note"][2:].tolist()) == {""}
    i = np.arange(2000)
    np.testing.assert_array_equal(b["people"], np.where(i % 10 == 2, i, np.nan))
    assert [(d["position"], d["reason"]) for d in dead] == [(f"{path}:2001", "missing field 'time'")]


def test_an_unknown_column_type_names_the_valid_ones_and_the_closest(tmp_path):
    p = ms.Pipeline("types")
    with pytest.raises(ms.PipelineError, match=r"column 'CO2' has the unknown type 'flot'; did you mean 'float'\?"
                                               r"(.|\n)*'float', 'int', 'str'"):
        p.read_csv(dataset("uci-occupancy/datatest.txt"), time="date", columns={"CO2": "flot"})
    path = tmp_path / "r.jsonl"
    path.write_text('{"t": 1, "v": 2}\n')
    with pytest.raises(ms.PipelineError, match=r"unknown type 'integer'; did you mean 'int'(.|\n)*fields="):
        p.read_jsonl(path, time="t", fields={"t": "float", "v": "integer"})
