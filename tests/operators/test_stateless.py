"""Stateless operators through the public API."""

from __future__ import annotations

import numpy as np
import pytest

import microstream as ms


def _melt(b):
    """One record per gas, written gas-major (all CO rows, then all NO2 rows)."""
    n = len(b["co"])
    parent = np.concatenate([np.arange(n), np.arange(n)])
    return parent, {"gas": np.repeat(["co", "no2"], n), "value": np.concatenate([b["co"], b["no2"]])}


@pytest.mark.parametrize("batch_size", [1, 5, 1024])
def test_flat_map_output_keeps_input_order_so_windows_do_not_depend_on_batch_size(batch_size):
    recs = [{"t": i * 10**9, "co": 1.0, "no2": 2.0} for i in range(20)]
    p = ms.Pipeline("melt")
    out = ms.sinks.collect()
    p.from_iterable(recs, time="t", batch_size=batch_size).flat_map(_melt).key_by("gas").window(
        ms.tumbling(seconds=10)).aggregate(n=ms.agg.count()).sink(out)
    result = p.run()
    assert sorted((r["gas"], r["window_start"], r["n"]) for r in out.records()) == [
        ("co", 0, 10), ("co", 10**10, 10), ("no2", 0, 10), ("no2", 10**10, 10)]
    assert result.late_count == 0


def test_and_or_in_a_filter_is_caught_at_build_time():
    p = ms.Pipeline("and")
    src = p.from_iterable([{"co2": 400.0}, {"co2": 6000.0}])
    with pytest.raises(ms.PipelineError, match="not `and`/`or`/`not`"):
        src.filter(lambda b: b["co2"] > 0 and b["co2"] < 5000)


def test_split_on_routes_values_and_the_rest():
    p = ms.Pipeline("s")
    a, rest = ms.sinks.collect(), ms.sinks.collect()
    by = p.from_iterable([{"room": r, "v": i} for i, r in enumerate("abcab")]).split_on("room", ["a"])
    by["a"].sink(a)
    by[None].sink(rest)
    p.run()
    assert [r["v"] for r in a.records()] == [0, 3] and [r["v"] for r in rest.records()] == [1, 2, 4]


def test_split_out_of_range_goes_to_dead_letters():
    p = ms.Pipeline("s")
    outs = [ms.sinks.collect(), ms.sinks.collect()]
    for stream, sink in zip(p.from_iterable([{"v": 0}, {"v": 1}, {"v": 7}]).split(lambda b: b["v"], n=2), outs,
                            strict=True):
        stream.sink(sink)
    result = p.run()
    assert [len(o) for o in outs] == [1, 1] and result.dead_letter_count == 1
    assert "not in 0..1" in result.dead_letters[0]["reason"]


def test_select_keeps_time_column_and_union_holds_watermark():
    p = ms.Pipeline("sel")
    out = ms.sinks.collect()
    p.from_iterable([{"t": 1, "a": 1.0, "b": 2.0}], time="t").select("b").sink(out)
    p.run()
    assert out.records() == [{"t": 1, "b": 2.0}]
