"""Event-time columns: `time_unit=` on every source, datetime64 and datetime objects, and integer times that look
like epoch seconds or milliseconds refused at build time with the fix."""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pytest

import microstream as ms
from microstream.core.time import SECOND, event_times, suspect_time_unit

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def _counts(src: ms.Stream, p: ms.Pipeline) -> list[int]:
    out = ms.sinks.collect()
    src.key_by("k").window(ms.tumbling("1s")).aggregate(n=ms.agg.count()).sink(out)
    p.run()
    return [r["n"] for r in out.records()]


def test_millisecond_timestamps_are_refused_without_a_unit_and_windowed_right_with_one():
    recs = [{"k": 1, "t": T0 * 1000 + i * 1000, "v": 1.0} for i in range(4)]  # four readings a second apart
    with pytest.raises(ms.PipelineError, match="looks like epoch milliseconds") as exc:
        ms.Pipeline("x").from_iterable(recs, time="t")
    assert "time_unit='ms'" in str(exc.value)
    p = ms.Pipeline("ms")
    assert _counts(p.from_iterable(recs, time="t", time_unit="ms"), p) == [1, 1, 1, 1]
    cols = {"k": np.ones(4, np.int64), "t": np.array([r["t"] for r in recs])}
    with pytest.raises(ms.PipelineError, match="looks like epoch milliseconds"):
        ms.Pipeline("x").from_arrays(cols, time="t")
    p = ms.Pipeline("arrays")
    assert _counts(p.from_arrays(cols, time="t", time_unit="ms"), p) == [1, 1, 1, 1]


@pytest.mark.parametrize("unit, scale", [("s", 1), ("ms", 1000), ("us", 10**6)])
def test_seconds_milliseconds_and_microseconds_are_recognised(unit, scale):
    t = (T0 + np.arange(10)) * scale
    assert suspect_time_unit(t) == unit
    with pytest.raises(ms.PipelineError, match=f"time_unit='{unit}'"):
        ms.Pipeline("x").from_arrays({"t": t}, time="t")
    p = ms.Pipeline("ok")
    out = ms.sinks.collect()
    p.from_arrays({"t": t}, time="t", time_unit=unit).sink(out)
    p.run()
    assert out.batch()["t"].tolist() == ((T0 + np.arange(10)) * SECOND).tolist()


def test_nanoseconds_and_round_relative_times_pass_and_an_explicit_ns_is_trusted():
    assert suspect_time_unit(np.array([T0 * SECOND, T0 * SECOND + 1])) is None
    assert suspect_time_unit(np.arange(5) * SECOND + SECOND) is None          # 1..5 s after 0, as tests write
    assert suspect_time_unit(np.array([0, 7, 12])) is None
    suspicious = np.array([T0, T0 + 1])
    ms.Pipeline("trusted").from_arrays({"t": suspicious}, time="t", time_unit="ns")


def test_datetime64_datetimes_and_floats_become_nanoseconds():
    p = ms.Pipeline("forms")
    a, b, c, d = (ms.sinks.collect() for _ in range(4))
    stamps = np.array(["2024-01-01T00:00:00", "2024-01-01T00:00:01.5"], "datetime64[ms]")
    p.from_arrays({"t": stamps}, time="t").sink(a)
    utc_plus_1 = dt.timezone(dt.timedelta(hours=1))
    p.from_iterable([{"t": dt.datetime(2024, 1, 1, 1, tzinfo=utc_plus_1), "v": 1.0},
                     {"t": dt.datetime(2024, 1, 1, 0, 0, 1), "v": 2.0}], time="t").sink(b)
    p.from_iterable([{"t": 1704067200.25, "v": 1.0}], time="t", time_unit="s").sink(c)
    p.poll(lambda: {"t": T0 * 1000, "v": 1.0}, every=0.01, limit=1, time="t", time_unit="ms").sink(d)
    p.run()
    jan1 = 1_704_067_200 * SECOND
    assert a.batch()["t"].tolist() == [jan1, jan1 + 1_500_000_000]
    assert b.batch()["t"].tolist() == [jan1, jan1 + SECOND]
    assert c.batch()["t"].tolist() == [jan1 + 250_000_000]
    assert d.batch()["t"].tolist() == [T0 * SECOND]


def test_floats_and_text_without_a_unit_are_refused_with_the_fix():
    with pytest.raises(ms.PipelineError, match="holds floats") as exc:
        ms.Pipeline("x").from_arrays({"t": np.array([T0 + 0.5])}, time="t")
    assert "time_unit='s'" in str(exc.value)
    with pytest.raises(ms.PipelineError, match="holds text"):
        ms.Pipeline("x").from_iterable([{"t": "2024-01-01"}], time="t")
    with pytest.raises(ms.PipelineError, match="did you mean 'ms'"):
        ms.Pipeline("x").from_iterable([{"t": 1}], time="t", time_unit="msec")


def test_read_csv_reads_numbers_since_the_epoch_with_time_unit(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text(f"t,v\n{T0},1\n,2\n{T0}.5,3\n")
    with pytest.raises(ms.PipelineError, match="holds numbers, not ISO text") as exc:
        ms.Pipeline("x").read_csv(path, time="t")
    assert "time_unit='s'" in str(exc.value)
    p = ms.Pipeline("csv")
    out = ms.sinks.collect()
    p.read_csv(path, time="t", time_unit="s").sink(out)
    result = p.run(verbose=False)
    assert out.batch()["t"].tolist() == [T0 * SECOND, T0 * SECOND + 500_000_000]
    assert [d["reason"] for d in result.dead_letters] == ["column 't': no time"]


def _calls(fn) -> int:
    """Python-level calls (functions and builtins) made while `fn()` runs: a loop per record shows as calls that
    grow with the input."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_conversions_are_vectorised():
    floats = T0 + np.random.default_rng(0).random(200_000)
    ns = event_times(floats, "s")
    assert abs(int(ns[0]) - round(floats[0] * 1e9)) < 1_000
    # as many Python calls for 200,000 values as for 2,000: one numpy pass, never a Python loop per record
    assert _calls(lambda: event_times(floats, "s")) == _calls(lambda: event_times(floats[:2_000], "s"))
    objects = np.empty(20_000, dtype=object)
    objects[:] = [dt.datetime(2024, 1, 1)] * len(objects)
    assert event_times(objects)[0] == 1_704_067_200 * SECOND
    assert _calls(lambda: event_times(objects)) == _calls(lambda: event_times(objects[:200]))
