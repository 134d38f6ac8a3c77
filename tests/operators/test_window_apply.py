"""`.window(spec).apply(fn)`: each key's window handed to a Python function once it can no longer change, checked
against a record-at-a-time numpy reference on out-of-order input with lateness (tumbling and sliding)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import microstream as ms

S = 10**9


def stats(w):
    v = w["v"]
    return {"n": len(v), "p90": np.quantile(v, 0.9), "first": v[0], "last": v[-1]}


def reference(recs, size, slide, max_delay, lateness):
    """Arrival order, one record at a time: a record joins the windows that have not fired (watermark before it:
    the largest time so far minus max_delay); a window fires at end + lateness <= watermark, or at the end."""
    wm, seen, cells, late = None, None, {}, []
    for r in recs:
        t = r["t"]
        starts = [s for s in range((t // slide) * slide, t - size, -slide) if s + size > t]
        open_ = [s for s in starts if wm is None or s + size + lateness > wm]
        for s in open_:
            cells.setdefault((r["k"], s), []).append(r["v"])
        if not open_:
            late.append(r)
        seen = t if seen is None else max(seen, t)
        wm = seen - max_delay
    out = {}
    for (k, s), vals in cells.items():
        v = np.array(vals)
        out[(k, s)] = (len(v), np.quantile(v, 0.9), v[0], v[-1])
    return out, late


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_windows_match_a_numpy_reference_on_out_of_order_input_with_lateness(data):
    n = data.draw(st.integers(1, 60))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    t = np.sort(rng.integers(0, 60, n)) + rng.integers(-12, 1, n)  # up to 12 s out of order
    t = np.maximum(t, 0) * S
    recs = [{"k": int(k), "t": int(x), "v": float(v)} for k, x, v in zip(rng.integers(0, 3, n), t, rng.normal(size=n),
                                                                          strict=True)]
    sliding = data.draw(st.booleans())
    size, slide = (10 * S, 5 * S) if sliding else (10 * S, 10 * S)
    spec = ms.sliding("10s", "5s") if sliding else ms.tumbling("10s")
    max_delay, lateness = data.draw(st.sampled_from([0, 2])) * S, data.draw(st.sampled_from([0, 3])) * S

    p = ms.Pipeline("wa")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    w = p.from_iterable(recs, time="t", max_delay=max_delay / S, batch_size=1).key_by("k").window(
        spec, lateness=lateness / S)
    results = w.apply(stats)
    results.sink(out)
    results.late.sink(late)
    p.run()

    expected, expected_late = reference(recs, size, slide, max_delay, lateness)
    got = {(r["k"], r["window_start"]): (r["n"], r["p90"], r["first"], r["last"]) for r in out.records()}
    assert len(got) == len(out.records())  # one result per key and window
    assert got.keys() == expected.keys()
    for cell, (cnt, p90, first, last) in expected.items():
        assert got[cell][0] == cnt and got[cell][2:] == (first, last)
        assert got[cell][1] == pytest.approx(p90)
    assert [(r["k"], r["t"]) for r in late.records()] == [(r["k"], r["t"]) for r in expected_late]
    assert all(r["window_end"] - r["window_start"] == size for r in out.records())


def test_rows_per_window_a_declared_schema_and_the_refusals():
    recs = [{"k": "a", "t": i * S, "v": float(i)} for i in range(6)]
    p = ms.Pipeline("rows")
    out = ms.sinks.collect()
    p.from_iterable(recs, time="t").key_by("k").window(ms.tumbling("3s")).apply(
        lambda w: ms.Batch({"top": np.sort(w["v"])[-2:]}), schema={"top": "float64"}).sink(out)
    p.run()
    assert [(r["window_start"] // S, r["top"]) for r in out.records()] == [(0, 1.0), (0, 2.0), (3, 4.0), (3, 5.0)]

    s = ms.Pipeline("bad").from_iterable(recs, time="t").key_by("k")
    with pytest.raises(ms.PipelineError, match="schema="):
        s.window(ms.tumbling("3s")).apply(lambda w: {"x": w["v"][5]})   # fails on the sample: say the columns
    with pytest.raises(ms.PipelineError, match="sessions"):
        s.window(ms.session("5s")).apply(stats)
    with pytest.raises(ms.PipelineError, match="clashes"):
        s.window(ms.tumbling("3s")).apply(lambda w: {"window_end": 1})


def test_a_window_function_that_drops_a_column_for_some_window_says_which():
    """A column missing from one window's result failed with a bare KeyError naming only the column."""
    p = ms.Pipeline("drops")
    recs = [{"k": "a", "t": t * 10**9, "v": float(t)} for t in (0, 1, 2, 5)]

    def stats(w):
        return {"n": len(w["v"])} if len(w["v"]) < 3 else {"m": 1}

    p.from_iterable(recs, time="t").key_by("k").window(ms.tumbling("4s")).apply(stats, name="stats").sink(
        ms.sinks.collect())
    with pytest.raises(ms.OperatorError) as err:
        p.run(verbose=False)
    assert err.value.operator == "stats"
    assert "returned the columns ['m'] for key 'a', window starting at 0, without ['n']" in str(err.value)
