"""ms.agg.quantile / ms.agg.median: per window, what numpy.quantile gives on that window's values (random keys,
times, values and batch sizes; tumbling, sliding and merging sessions), a uniform sample past the cap, snapshots
mid-window, and mistakes refused at build time."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from microstream.core.errors import PipelineError
from microstream.operators.base import OperatorContext
from microstream.operators.window import WindowAggregate

SECOND = 10**9


def _records(rng: np.random.Generator, n: int, keys: int, span_s: int) -> list[dict]:
    t = np.sort(rng.integers(0, span_s * SECOND, n))
    k = rng.integers(0, keys, n)
    v = np.round(rng.normal(50, 20, n), 3)
    v[rng.random(n) < 0.05] = np.nan  # skipped, as numpy.nanquantile does
    return [{"t": int(a), "k": int(b), "v": float(c)} for a, b, c in zip(t, k, v, strict=True)]


def _run(records: list[dict], spec, qs: list[float], batch: int, shuffle_delay: int = 0, cap: int = 10_000) -> list:
    p = ms.Pipeline("quantiles")
    out = ms.sinks.collect()
    aggs = {f"q{i}": ms.agg.quantile("v", q, max_values=cap) for i, q in enumerate(qs)}
    aggs["mid"] = ms.agg.median("v", max_values=cap)
    aggs["n"] = ms.agg.count()
    src = p.from_iterable(records, time="t", time_unit="ns", batch_size=batch,
                          max_delay=f"{shuffle_delay}s" if shuffle_delay else 0)
    src.key_by("k").window(spec, emit="final").aggregate(**aggs).sink(out)
    p.run(progress=False)
    return out.records()


def _expect(values: list[float], q: float) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(np.quantile(v, q)) if len(v) else float("nan")


def _check(rows: list, windows: dict, qs: list[float]) -> None:
    got = {(r["k"], int(r["window_start"]), int(r["window_end"])): r for r in rows}
    assert set(got) == set(windows)
    for key, values in windows.items():
        r = got[key]
        assert r["n"] == len(values)
        for i, q in enumerate(qs):
            np.testing.assert_allclose(r[f"q{i}"], _expect(values, q), rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(r["mid"], _expect(values, 0.5), rtol=1e-12, equal_nan=True)


QS = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000), keys=st.integers(1, 40), qs=QS,
       batch=st.sampled_from([1, 7, 256, 4096]), sliding=st.booleans())
def test_ring_windows_match_numpy_quantile(seed, n, keys, qs, batch, sliding):
    rng = np.random.default_rng(seed)
    records = _records(rng, n, keys, span_s=60)
    size, slide = (10, 5) if sliding else (10, 10)
    spec = ms.sliding(f"{size}s", f"{slide}s") if sliding else ms.tumbling(f"{size}s")
    windows: dict = {}
    for r in records:
        last = r["t"] // (slide * SECOND)
        for w in range(last - size // slide + 1, last + 1):
            start = w * slide * SECOND
            if start <= r["t"] < start + size * SECOND:
                windows.setdefault((r["k"], start, start + size * SECOND), []).append(r["v"])
    _check(_run(records, spec, qs, batch), windows, qs)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 1500), keys=st.integers(1, 10), qs=QS,
       batch=st.sampled_from([1, 64, 4096]))
def test_merging_sessions_match_numpy_quantile(seed, n, keys, qs, batch):
    rng = np.random.default_rng(seed)
    records = _records(rng, n, keys, span_s=300)
    gap = 3 * SECOND
    windows: dict = {}
    for k in {r["k"] for r in records}:  # sessions: runs of one key's records less than `gap` apart
        mine = sorted((r for r in records if r["k"] == k), key=lambda r: r["t"])
        group = [mine[0]]
        for r in [*mine[1:], None]:
            if r is not None and r["t"] < group[-1]["t"] + gap:
                group.append(r)
                continue
            windows[(k, group[0]["t"], group[-1]["t"] + gap)] = [g["v"] for g in group]
            group = [r]
    shuffled = [records[i] for i in rng.permutation(len(records))]  # out of order: sessions grow and merge
    _check(_run(shuffled, ms.session("3s"), qs, batch, shuffle_delay=400), windows, qs)


def test_past_the_cap_a_window_keeps_a_uniform_sample():
    rng = np.random.default_rng(7)
    n = 20_000
    records = [{"t": int(i * 1000), "k": 1, "v": float(x)} for i, x in enumerate(rng.uniform(0, 100, n))]
    (row,) = _run(records, ms.tumbling("1s"), [0.1, 0.9], batch=1000, cap=2000)
    assert row["n"] == n
    # a sample of 2000 of 20000 uniform values: its deciles are within a few units of the true ones
    assert abs(row["q0"] - 10) < 3 and abs(row["q1"] - 90) < 3 and abs(row["mid"] - 50) < 4
    (exact,) = _run(records, ms.tumbling("1s"), [0.1, 0.9], batch=1000, cap=n)
    vals = [r["v"] for r in records]
    assert exact["q0"] == pytest.approx(np.quantile(vals, 0.1)) and exact["q1"] == pytest.approx(np.quantile(vals, 0.9))


def test_snapshot_and_restore_mid_window_keep_the_values():
    spec = WindowAggregate(ms.tumbling("10s"), {"q": ms.agg.quantile("v", 0.25), "s": ms.agg.sum("v")})
    schema = ms.Pipeline("s").from_iterable([{"t": 0, "k": 1, "v": 1.0}], time="t", time_unit="ns").key_by("k").schema
    outs = spec.output_schemas([schema], "w")

    def instance(state=None):
        op = spec.instantiate()
        op.open(OperatorContext("w", [schema], outs, []))
        if state is not None:
            op.restore(state)
        return op

    t = np.arange(6000, dtype=np.int64) * 10**6  # 94 blocks of 64 values: past the pool's first 64, it grows
    vals = np.random.default_rng(1).normal(size=len(t))

    def batch(lo, hi):
        return ms.Batch({"t": t[lo:hi], "k": np.ones(hi - lo, dtype=np.int64), "v": vals[lo:hi]}, t[lo:hi])

    first = instance()
    assert first.process(0, batch(0, 3500)) == []
    second = instance(cloudpickle.loads(cloudpickle.dumps(first.snapshot())))  # as a move ships it
    assert second.process(0, batch(3500, len(t))) == []
    ((_, out),) = second.close()
    assert out["q"][0] == pytest.approx(np.quantile(vals, 0.25)) and out["s"][0] == pytest.approx(vals.sum())


@pytest.mark.parametrize("call, fix", [
    (lambda: ms.agg.quantile("v", 95), "between 0 and 1"),
    (lambda: ms.agg.quantile("v", 0.5, max_values=0), "at least 1"),
])
def test_mistakes_are_refused_with_the_fix(call, fix):
    with pytest.raises(PipelineError, match=fix):
        call()
