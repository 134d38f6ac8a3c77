"""Threshold alerts with hysteresis and debounce (`stream.alert`): a brute-force reference on random input, the
state kept across a snapshot and restore, and the UCI occupancy CO2 data, where a plain threshold flaps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from microstream.core.errors import PipelineError
from microstream.operators.alert import Alert
from microstream.operators.base import OperatorContext
from microstream.operators.stateless import empty_batch
from tests.helpers import dataset

MIN = 60 * 10**9


def reference(recs, above, clear_below, hold, clear_hold):
    """Events by the documented rule, one record at a time, per key."""
    active: dict = {}
    since: dict = {}
    out = []
    for r in recs:
        k, t, x = r["k"], r["t"], r["v"]
        if x != x:
            continue
        up = active.get(k, False)
        cond = x < clear_below if up else x > above
        if not cond:
            since.pop(k, None)
            continue
        start = since.setdefault(k, t)
        if t - start >= (clear_hold if up else hold):
            out.append((k, t, "clear" if up else "raise", start))
            active[k] = not up
            since.pop(k)
    return out


def run(recs, batch_size=1000, **options):
    p = ms.Pipeline("alerts")
    out = ms.sinks.collect()
    p.from_iterable(recs, time="t", batch_size=batch_size).key_by("k").alert("v", **options).sink(out)
    p.run(verbose=False)
    return [(r["k"], r["t"], r["alert"], r["since"]) for r in out.records()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3),
                                 st.one_of(st.floats(0, 20), st.just(float("nan")))), min_size=1, max_size=120),
       hold=st.sampled_from([0, 1, 3]), clear_hold=st.sampled_from([None, 0, 2]), gap=st.sampled_from([0.0, 4.0]),
       batch_size=st.sampled_from([1, 5, 1000]))
def test_alerts_match_a_record_at_a_time_reference(values, hold, clear_hold, gap, batch_size):
    t = 0
    recs = []
    for k, step, v in values:
        t += step
        recs.append({"k": k, "t": t * MIN, "v": v})
    got = run(recs, batch_size, above=10.0, clear_below=10.0 - gap, for_at_least=f"{hold}min",
              clear_for=None if clear_hold is None else f"{clear_hold}min")
    want = reference(recs, 10.0, 10.0 - gap, hold * MIN, (hold if clear_hold is None else clear_hold) * MIN)
    assert got == want


def test_below_alerts_mirror_above_alerts():
    vals = [12, 9, 9.5, 8, 7, 11, 11.5, 13, 14]
    recs = [{"k": "a", "t": i * MIN, "v": float(v)} for i, v in enumerate(vals)]
    got = run(recs, below=10.0, clear_above=12.0, for_at_least="1min")
    assert [(t // MIN, kind, s // MIN) for _, t, kind, s in got] == [(2, "raise", 1), (8, "clear", 7)]


def test_the_state_survives_a_snapshot_and_restore():
    recs = [{"k": "a", "t": i * MIN, "v": v} for i, v in enumerate([11.0, 12.0, 13.0, 5.0, 4.0, 3.0])]
    spec = Alert("v", 1, 10.0, 6.0, 2 * MIN, 2 * MIN)
    p = ms.Pipeline("schema")
    src = p.from_iterable(recs, time="t").key_by("k")
    schema = src.schema
    out_schema = spec.output_schemas([schema], "alert")

    def instance(state=None):
        op = spec.instantiate()
        op.open(OperatorContext("alert", [schema], out_schema, []))
        if state is not None:
            op.restore(state)
        return op

    def batch(rows):
        b = empty_batch(schema, len(rows))
        cols = {n: b[n] for n in b.names}
        cols["k"] = np.array([r["k"] for r in rows])
        cols["t"] = np.array([r["t"] for r in rows], dtype=np.int64)
        cols["v"] = np.array([r["v"] for r in rows])
        return ms.Batch(cols)

    whole = instance().process(0, batch(recs))
    first = instance()
    assert first.process(0, batch(recs[:2])) == []   # pending since minute 0, not yet two minutes
    second = instance(first.snapshot())
    events = second.process(0, batch(recs[2:]))
    got = [(r["alert"], r["t"] // MIN, r["since"] // MIN) for _, b in events for r in b.to_records()]
    assert got == [(r["alert"], r["t"] // MIN, r["since"] // MIN) for _, b in whole for r in b.to_records()]
    assert got == [("raise", 2, 0), ("clear", 5, 3)]


@pytest.mark.parametrize("options, message", [
    ({}, "needs one threshold"),
    ({"above": 1.0, "below": 0.0}, "needs one threshold"),
    ({"above": 1.0, "clear_below": 2.0}, "must not be above the threshold"),
    ({"below": 1.0, "clear_above": 0.5}, "must not be below the threshold"),
    ({"above": 1.0, "clear_above": 2.0}, "goes with below="),
    ({"above": 1.0, "for_at_least": 5}, "for_at_least='5s'"),
])
def test_mistakes_are_refused_at_build_time(options, message):
    p = ms.Pipeline("bad")
    keyed = p.from_iterable([{"k": 1, "t": 0, "v": 1.0}], time="t").key_by("k")
    with pytest.raises(PipelineError, match=message):
        keyed.alert("v", **options)


def test_uci_occupancy_co2_alerts_do_not_flap():
    """A plain threshold at 1000 ppm on the office's CO2 crosses back and forth (the readings hover around it);
    with hysteresis (clear below 950) and a 2-minute debounce, every raise is followed by one clear, each alert
    lasts, and there are far fewer of them."""
    path = dataset("uci-occupancy/datatraining.txt")
    p = ms.Pipeline("co2")
    plain, steady = ms.sinks.collect(), ms.sinks.collect()
    room = p.read_csv(path, time="date", time_format="%Y-%m-%d %H:%M:%S").with_columns(
        room=lambda b: np.full(len(b["CO2"]), "office")).key_by("room")
    room.alert("CO2", above=1000).sink(plain)
    room.alert("CO2", above=1000, clear_below=950, for_at_least="2min").sink(steady)
    p.run(verbose=False)
    flaps = plain.records()
    alerts = steady.records()
    assert [r["alert"] for r in alerts] == ["raise", "clear"] * (len(alerts) // 2) + ["raise"] * (len(alerts) % 2)
    assert len(alerts) >= 2 and len(flaps) >= 3 * len(alerts)
    # the plain threshold raised again within ten minutes of a clear; the steady one never does
    def quick_re_raises(rows):
        return sum(1 for a, b in zip(rows, rows[1:], strict=False) if a["alert"] == "clear" and b["alert"] == "raise"
                   and b["date"] - a["date"] < 10 * MIN)
    assert quick_re_raises(flaps) > 0
    assert quick_re_raises(alerts) == 0
    for r in alerts:   # each alert waited for its condition to hold two minutes
        assert r["date"] - r["since"] >= 2 * MIN


def test_a_clear_threshold_on_the_wrong_side_says_which_goes_with_which():
    keyed = ms.Pipeline("alert_fix").from_iterable([{"room": "a", "t": 0, "co2": 1.0}], time="t").key_by("room")
    with pytest.raises(ms.PipelineError, match="clear_above= goes with below=") as err:
        keyed.alert("co2", above=1000, clear_above=900, name="stuffy")
    assert err.value.operator == "stuffy" and err.value.fix == "e.g. above=1000, clear_below=900"
    with pytest.raises(ms.PipelineError, match="clear_below= goes with above=") as err:
        keyed.alert("co2", below=10, clear_below=12, name="cold")
    assert err.value.fix == "e.g. below=10, clear_above=12"
