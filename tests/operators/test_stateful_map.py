"""Per-key stateful_map (cumsum, delta, ewma, rate, a user step) against plain-Python per-key loops.

State is per key and steps run once per record in arrival order, so results must not depend on how the
records were cut into batches, on out-of-order event times, or on a filter upstream.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms

ALPHA = 0.3
EWMA = ms.state.ewma(ALPHA)   # built once: each step function is compiled by numba


def ref_cumsum(recs):
    state: dict = {}
    out = []
    for r in recs:
        state[r["k"]] = state.get(r["k"], 0.0) + r["v"]
        out.append(state[r["k"]])
    return out


def ref_delta(recs):
    prev: dict = {}
    out = []
    for r in recs:
        out.append(r["v"] - prev[r["k"]] if r["k"] in prev else math.nan)
        prev[r["k"]] = r["v"]
    return out


def ref_ewma(recs):
    state: dict = {}
    out = []
    for r in recs:
        k = r["k"]
        state[k] = r["v"] if k not in state else state[k] + ALPHA * (r["v"] - state[k])
        out.append(state[k])
    return out


def ref_rate(recs):
    prev: dict = {}
    out = []
    for r in recs:
        k = r["k"]
        if k in prev and prev[k][1] != r["t"]:
            out.append((r["v"] - prev[k][0]) / ((r["t"] - prev[k][1]) / 1e9))
        else:
            out.append(math.nan)
        prev[k] = (r["v"], r["t"])
    return out


STEPS = {"total": (ms.state.cumsum, ref_cumsum), "change": (ms.state.delta, ref_delta),
         "smooth": (EWMA, ref_ewma), "per_s": (ms.state.rate, ref_rate)}


def run_state(recs, batch_size, keep=None):
    p = ms.Pipeline("state")
    out = ms.sinks.collect()
    s = p.from_iterable(recs, time="t", batch_size=batch_size)
    if keep is not None:
        s = s.filter(keep)
    s = s.key_by("k")
    for name, (step, _) in STEPS.items():
        s = s.stateful_map(step, "v", out=name)
    s.sink(out)
    p.run()
    return out.records()


def assert_matches(got, recs):
    assert [{c: r[c] for c in ("k", "t", "v")} for r in got] == recs   # arrival order, columns kept
    for name, (_, ref) in STEPS.items():
        want = ref(recs)
        for g, w, r in zip((r[name] for r in got), want, recs, strict=True):
            assert (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12), (
                name, r, g, w)


def records(keys, n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 1_000_000 - rng.integers(0, 5_000_000, n)   # out of order; some equal times
    return [{"k": keys[int(i)], "t": int(t[j]), "v": float(rng.integers(-50, 50))}
            for j, i in enumerate(rng.integers(0, len(keys), n))]


def test_cumsum_delta_ewma_rate_per_int_key_any_batch_size():
    recs = records([3, 1 << 22, -7, 0, 12], 300)
    for batch_size in (1, 7, 1000):
        assert_matches(run_state(recs, batch_size), recs)


def test_str_keys():
    recs = records(["kitchen", "a", "a-much-longer-room-name", "ü"], 200, seed=1)
    for batch_size in (1, 13):
        assert_matches(run_state(recs, batch_size), recs)


def test_thousands_of_keys_grow_the_state():
    keys = list(range(5000)) + [1 << 40, -(1 << 33)]
    recs = records(keys, 20_000, seed=2)
    assert_matches(run_state(recs, 4096), recs)


def test_filtered_records_do_not_touch_the_state():
    recs = records([1, 2, 3], 120, seed=3)
    kept = [r for r in recs if r["v"] > 0]
    for batch_size in (1, 9, 1000):
        assert_matches(run_state(recs, batch_size, keep=lambda b: b["v"] > 0), kept)


def test_user_step_with_state_size_and_init():
    def running_max_and_count(state, t, x):
        state[0] = max(state[0], x)
        state[1] += 1.0
        return state[0] * 1000 + state[1]

    recs = records([1, 2], 50, seed=4)
    p = ms.Pipeline("user")
    out = ms.sinks.collect()
    p.from_iterable(recs, time="t", batch_size=8).key_by("k").stateful_map(
        running_max_and_count, "v", out="m", state_size=2, init=[-np.inf, 0.0]).sink(out)
    p.run()
    best: dict = {}
    count: dict = {}
    want = []
    for r in recs:
        best[r["k"]] = max(best.get(r["k"], -math.inf), r["v"])
        count[r["k"]] = count.get(r["k"], 0) + 1
        want.append(best[r["k"]] * 1000 + count[r["k"]])
    assert [r["m"] for r in out.records()] == want


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.tuples(st.sampled_from([0, 1, 2, 99, 5000]), st.integers(-30, 30),
                               st.integers(-5, 5)), min_size=1, max_size=60),
       batch_size=st.sampled_from([1, 2, 7, 1000]))
def test_random_streams(data, batch_size):
    recs = [{"k": k, "t": i * 10 + dt, "v": float(v)} for i, (k, v, dt) in enumerate(data)]
    assert_matches(run_state(recs, batch_size), recs)


# -- build-time errors: the operator's name and the fix ----------------------------------------------------------

def _keyed():
    recs = [{"room": "a", "t": i * 10**9, "co2": 400.0 + i} for i in range(3)]
    return ms.Pipeline("sm").from_iterable(recs, time="t").key_by("room")


@pytest.mark.parametrize(("out", "role"), [("t", "event-time"), ("room", "key")])
def test_out_naming_the_time_or_key_column_is_refused(out, role):
    with pytest.raises(ms.PipelineError) as err:
        _keyed().stateful_map(ms.state.delta, "co2", out=out, name="change")
    assert err.value.operator == "change" and f"overwrite the stream's {role} column" in err.value.problem
    assert "out='co2_delta'" in err.value.fix


def test_out_may_replace_a_value_column():
    p = ms.Pipeline("replace")
    out = ms.sinks.collect()
    p.from_iterable([{"k": 1, "v": 1.0}, {"k": 1, "v": 2.0}]).key_by("k").stateful_map(
        ms.state.cumsum, "v", out="v").sink(out)
    p.run(verbose=False)
    assert [r["v"] for r in out.records()] == [1.0, 3.0]


@pytest.mark.parametrize("state_size", [0, -1, 1.5])
def test_state_size_below_one_is_refused_naming_the_operator(state_size):
    with pytest.raises(ms.PipelineError) as err:
        _keyed().stateful_map(ms.state.cumsum, "co2", out="total", state_size=state_size, name="total")
    assert err.value.operator == "total" and "state_size must be a whole number of at least 1" in err.value.problem


def test_init_of_the_wrong_length_names_the_operator():
    with pytest.raises(ms.PipelineError) as err:
        _keyed().stateful_map(ms.state.cumsum, "co2", out="total", state_size=2, init=[0.0, 1.0, 2.0], name="total")
    assert err.value.operator == "total" and "init has 3 values" in err.value.problem and err.value.fix


@pytest.mark.parametrize(("step", "problem"), [
    (lambda state, t, x: {"x": x}, "returned dict"),
    (lambda state, t, x: None, "returned NoneType"),
    (lambda state, x: x, "must take 3 arguments"),
])
def test_a_step_that_numba_could_not_run_fails_at_build_time(step, problem):
    with pytest.raises(ms.PipelineError) as err:
        _keyed().stateful_map(step, "co2", out="y", name="mine")
    assert err.value.operator == "mine" and problem in err.value.problem
    assert "step(state, t, x) -> float" in err.value.fix
