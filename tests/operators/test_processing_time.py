"""Processing-time windows (an explicit opt-in): records are grouped by when they arrive, and windows
fire on the clock even when no record comes."""

from __future__ import annotations

import pytest

import microstream as ms


def test_processing_time_windows_fire_on_the_clock():
    readings = iter(range(1000))
    p = ms.Pipeline("clock")
    out = ms.sinks.collect()
    src = p.poll(lambda: {"room": "lab", "v": float(next(readings))}, every=0.02, limit=25, schema={
        "room": "U", "v": "float64"})
    src.key_by("room").window(ms.tumbling(seconds=0.1), time="processing").aggregate(n=ms.agg.count()).sink(out)
    p.run()
    rows = out.records()
    assert sum(r["n"] for r in rows) == 25           # every reading counted once
    assert len(rows) >= 3                            # spread over several 100 ms windows of wall clock
    starts = [r["window_start"] for r in rows]
    assert starts == sorted(starts) and all(s % 100_000_000 == 0 for s in starts)


def test_lateness_on_a_processing_time_window_is_refused_naming_the_operator():
    keyed = ms.Pipeline("clock_late").from_iterable([{"room": "lab", "v": 1.0}]).key_by("room")
    window = keyed.window(ms.tumbling("10s"), time="processing", lateness="30s")
    with pytest.raises(ms.PipelineError, match="lateness='30s' on a processing-time window") as err:
        window.aggregate(n=ms.agg.count(), name="co2_stats")
    assert err.value.operator == "co2_stats" and "none is ever late" in err.value.problem
    assert err.value.fix.startswith("drop lateness=, or window by event time")
    with pytest.raises(ms.PipelineError, match="on a processing-time window") as err:
        window.final().aggregate(n=ms.agg.count(), name="co2_final")
    assert err.value.operator == "co2_final"
    # no lateness (0, the default) is fine, and event-time windows keep theirs
    keyed.window(ms.tumbling("10s"), time="processing", lateness=0).aggregate(n=ms.agg.count(), name="ok")
    timed = ms.Pipeline("event_late").from_iterable([{"room": "lab", "t": 0, "v": 1.0}], time="t", key="room")
    assert "lateness 30 s" in timed.window(ms.tumbling("10s"), lateness="30s").aggregate(
        n=ms.agg.count(), name="late_ok").node.op.describe()
