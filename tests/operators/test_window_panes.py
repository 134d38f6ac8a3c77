"""Window results that say what they are (`pane`), `final()` results, and partial lateness of sliding windows
counted per record-window, each checked against a brute-force reference on randomized out-of-order input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from microstream.core.errors import PipelineError
from tests.helpers import ns
from tests.operators.test_windows import MIN, SPECS, canon, interleaved_events, streams, windows_of

AGGS = dict(n=ms.agg.count(), total=ms.agg.sum("v"), hi=ms.agg.max("v"), first=ms.agg.first("v"))


def run(recs, spec, *, lateness=0, max_delay=0, batch_size=1024, emit="all", partial_late=False):
    p = ms.Pipeline("panes")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    src = p.from_iterable(recs, time="t", max_delay=ns(max_delay), batch_size=batch_size)
    res = src.key_by("k").window(spec, lateness=ns(lateness), emit=emit, partial_late=partial_late).aggregate(
        **AGGS)
    res.sink(out)
    res.late.sink(late)
    result = p.run(verbose=False)
    return out.records(), late.records(), result


def in_force(rows: list[dict]) -> list[dict]:
    """What a consumer that applies every row holds at the end: a row replaces the one with the same key and
    bounds, a `retract` row deletes it."""
    view: dict = {}
    for r in rows:
        w = (repr(r["k"]), r["window_start"], r["window_end"])
        if r["pane"] == "retract":
            assert w in view, f"retraction of {w}, which is not in force"
            del view[w]
        else:
            view[w] = r
    return list(view.values())


def without_pane(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "pane"} for r in rows]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=streams(), spec=st.sampled_from(SPECS), max_delay=st.sampled_from([0, 5, 20]),
       lateness=st.sampled_from([0, 10, 35]), batch_size=st.sampled_from([1, 7, 1000]))
def test_final_equals_the_last_update_of_each_window(recs, spec, max_delay, lateness, batch_size):
    every, late_all, _ = run(recs, spec, lateness=lateness, max_delay=max_delay, batch_size=batch_size)
    final, late_final, _ = run(recs, spec, lateness=lateness, max_delay=max_delay, batch_size=batch_size,
                               emit="final")
    assert {r["pane"] for r in final} <= {"final"}
    windows = [(repr(r["k"]), r["window_start"], r["window_end"]) for r in final]
    assert len(windows) == len(set(windows)), "a window was emitted twice with emit='final'"
    assert canon(without_pane(final)) == canon(without_pane(in_force(every)))
    assert canon(late_final) == canon(late_all)
    assert {r["pane"] for r in every} <= {"on_time", "late_update", "retract"}
    if lateness == 0 and spec.kind != "session":
        assert {r["pane"] for r in every} <= {"on_time"}


def drops_reference(recs, spec, lateness, max_delay):
    """(record-window drops, records too late for some windows only, {record index: windows missed}) by brute
    force: every window of every record against the operator's watermark when the record arrives."""
    events = interleaved_events([(recs, max_delay, 1 << 30)])
    wm, drops, partial, missed = MIN, 0, 0, {}
    index = {id(r): i for i, r in enumerate(recs)}
    for kind, _, r, event_wm in events:
        wm = max(wm, event_wm)
        if kind != "rec":
            continue
        wins = windows_of(r["t"], spec)
        too_late = sum(1 for _, e in wins if e + lateness <= wm)
        drops += too_late
        partial += 0 < too_late < len(wins)
        if too_late:
            missed[index[id(r)]] = too_late
    return drops, partial, missed


SLIDING = [ms.sliding(ns(20), ns(5)), ms.sliding(ns(15), ns(10)), ms.sliding(ns(30), ns(7), offset=ns(2)),
           ms.tumbling(ns(10))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=streams(), spec=st.sampled_from(SLIDING), max_delay=st.sampled_from([0, 5, 20]),
       lateness=st.sampled_from([0, 10]), batch_size=st.sampled_from([1, 1000]))
def test_partial_lateness_is_counted_per_record_window(recs, spec, max_delay, lateness, batch_size):
    recs = [{**r, "i": i} for i, r in enumerate(recs)]
    drops, partial, missed = drops_reference(recs, spec, lateness, max_delay)
    _, late, result = run(recs, spec, lateness=lateness, max_delay=max_delay, batch_size=batch_size)
    assert (result.late_window_drops, result.partially_late) == (drops, partial)
    assert result.late_count == len(late) == len(missed) - partial
    _, late, result = run(recs, spec, lateness=lateness, max_delay=max_delay, batch_size=batch_size,
                          partial_late=True)
    assert {r["i"]: r["missed_windows"] for r in late} == missed
    for r in late:  # the windows missed are the earliest ones: every window ending by missed_until
        ends = sorted(e for _, e in windows_of(r["t"], spec))
        assert r["missed_until"] == ends[r["missed_windows"] - 1]
    assert result.late_count == len(missed)


def test_a_late_record_missing_some_sliding_windows_is_counted_and_reported():
    # 10 s windows every 5 s, no max_delay: at watermark 14 the record at 9 s is too late for [0, 10) but in
    # time for [5, 15); the one at 3 s (watermark 12) is too late for both of its windows
    recs = [{"k": "a", "t": t * 10**9, "v": 1.0} for t in (1, 4, 12, 3, 14, 9, 25)]
    p = ms.Pipeline("partial")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    w = p.from_iterable(recs, time="t").key_by("k").window(ms.sliding("10s", "5s"), partial_late=True).aggregate(
        n=ms.agg.count())
    w.sink(out)
    w.late.sink(late)
    result = p.run(verbose=False)
    assert [(r["t"] // 10**9, r["missed_windows"], r["missed_until"] // 10**9) for r in late.records()] == [
        (3, 2, 10), (9, 1, 10)]
    assert (result.late_window_drops, result.partially_late) == (3, 1)
    assert "1 too late for only some of their windows; 3 record-window drops" in result.summary()
    assert "3 record-window drops" in result.report(100)


def test_emit_must_be_all_or_final():
    p = ms.Pipeline("emit")
    keyed = p.from_iterable([{"k": 1, "t": 0}], time="t").key_by("k")
    with pytest.raises(PipelineError, match="did you mean 'final'") as err:
        keyed.window(ms.tumbling("1s"), emit="finale").aggregate(n=ms.agg.count(), name="per_second")
    assert err.value.operator == "per_second"
