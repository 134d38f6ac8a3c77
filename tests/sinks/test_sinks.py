"""Sinks write what the pipeline produced: CSV, JSONL, callback, print, collect."""

from __future__ import annotations

import csv
import io
import json

import microstream as ms


def _windowed(p: ms.Pipeline):
    recs = [{"room": "a", "t": s * 10**9, "co2": float(400 + s)} for s in range(0, 120, 10)]
    return p.from_iterable(recs, time="t").key_by("room").window(ms.tumbling(minutes=1)).aggregate(
        co2=ms.agg.mean("co2"), n=ms.agg.count())


def test_jsonl_and_csv_sinks_write_iso_times_and_values(tmp_path):
    p = ms.Pipeline("files")
    w = _windowed(p)
    w.sink(ms.sinks.jsonl(tmp_path / "out" / "w.jsonl"))
    w.sink(ms.sinks.csv(tmp_path / "w.csv"))
    p.run()
    lines = [json.loads(x) for x in (tmp_path / "out" / "w.jsonl").read_text().splitlines()]
    assert lines[0] == {"room": "a", "window_start": "1970-01-01T00:00:00.000Z",
                        "window_end": "1970-01-01T00:01:00.000Z",
                        "window_time": "1970-01-01T00:00:59.999Z", "pane": "on_time", "co2": 425.0, "n": 6}
    with open(tmp_path / "w.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["n"] for r in rows] == ["6", "6"] and rows[1]["co2"] == "485.0"


def test_jsonl_writes_nan_as_null(tmp_path):
    p = ms.Pipeline("nan")
    p.from_iterable([{"v": float("nan")}]).sink(ms.sinks.jsonl(tmp_path / "n.jsonl"))
    p.run()
    assert json.loads((tmp_path / "n.jsonl").read_text()) == {"v": None}


def test_callback_and_print():
    p = ms.Pipeline("cb")
    seen = []
    buf = io.StringIO()
    src = p.from_iterable([{"v": 1.5}, {"v": 2.5}])
    src.sink(ms.sinks.callback(lambda b: seen.extend(b["v"].tolist())))
    src.sink(ms.sinks.print(prefix="> ", file=buf))
    result = p.run()
    assert seen == [1.5, 2.5]
    assert buf.getvalue() == "> v=1.5\n> v=2.5\n"
    assert result.records_out == {"callback": 2, "print": 2}


def test_collect_empty_batch_keeps_schema():
    p = ms.Pipeline("empty")
    out = ms.sinks.collect()
    p.from_iterable([{"v": 1.0}]).filter(lambda b: b["v"] > 5).sink(out)
    p.run()
    assert len(out) == 0 and out.batch().names == ["v"]
