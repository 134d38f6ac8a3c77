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


# -- shapes a function returns, checked at build time on a two-record test batch ---------------------------------

def _src():
    return ms.Pipeline("shapes").from_iterable([{"t": i, "co2": 400.0 + i} for i in range(5)], time="t")


@pytest.mark.parametrize(("predicate", "got"), [(lambda b: True, "a single value"),
                                                (lambda b: np.ones(3, bool), "shape (3,)")])
def test_a_filter_that_returns_no_mask_per_record_fails_at_build_time(predicate, got):
    with pytest.raises(ms.PipelineError) as err:
        _src().filter(predicate, name="keep")
    assert err.value.operator == "keep" and got in err.value.problem and "not one boolean per record" in str(err.value)
    assert "b['CO2'] < 5000" in err.value.fix


@pytest.mark.parametrize(("fn", "shape"), [(lambda b: {"v": b["co2"][:1]}, "(1,)"),
                                           (lambda b: {"v": np.stack([b["co2"], b["co2"]], axis=1)}, "(2, 2)")])
def test_a_map_column_not_one_value_per_record_fails_at_build_time(fn, shape):
    with pytest.raises(ms.PipelineError) as err:
        _src().map(fn, name="scaled")
    assert err.value.operator == "scaled" and f"column 'v' of shape {shape}" in err.value.problem
    assert "1-D array as long as the batch" in err.value.fix


def test_a_map_that_returns_one_value_for_all_records_still_broadcasts():
    p = ms.Pipeline("broadcast")
    out = ms.sinks.collect()
    p.from_iterable([{"co2": 400.0}, {"co2": 500.0}]).map(lambda b: {"co2": b["co2"], "site": "lab"}).sink(out)
    p.run(verbose=False)
    assert [r["site"] for r in out.records()] == ["lab", "lab"]


def test_a_map_that_fails_only_on_zeros_is_not_refused_by_the_shape_check():
    p = ms.Pipeline("zeros")
    out = ms.sinks.collect()

    def ratio(b):
        if len(b["co2"]) and (b["co2"] == 0).any():
            raise ZeroDivisionError("a zero reading")
        return {"r": 1000.0 / b["co2"]}

    p.from_iterable([{"co2": 500.0}]).map(ratio).sink(out)
    p.run(verbose=False)
    assert out.records() == [{"r": 2.0}]


def test_the_shape_check_on_zeros_says_nothing_of_their_divisions(recwarn):
    p = ms.Pipeline("quiet")
    p.from_iterable([{"a": 1.0, "b": 2.0}]).map(lambda b: {"r": b["a"] / b["b"]}).sink(ms.sinks.collect())
    p.build()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_flat_map_parent_indexes_outside_the_batch_fail_at_build_time():
    with pytest.raises(ms.PipelineError) as err:
        _src().flat_map(lambda b: (np.arange(len(b["co2"])) + 1, {"v": b["co2"]}), name="shifted")
    assert err.value.operator == "shifted" and "parent indexes [1, 2]" in err.value.problem
    assert "0..1" in err.value.problem


def test_flat_map_columns_not_as_long_as_the_parents_fail_at_build_time():
    def melt(b):
        n = len(b["co2"])
        return np.repeat(np.arange(n), 2), {"v": b["co2"]}  # two parents a record, one value

    with pytest.raises(ms.PipelineError, match="column 'v' of shape \\(2,\\) with 4 parent indexes") as err:
        _src().flat_map(melt, name="melt")
    assert err.value.operator == "melt"


def test_key_by_several_columns_says_to_make_one():
    with pytest.raises(ms.PipelineError) as err:
        _src().key_by(["t", "co2"], name="by_two")  # type: ignore[arg-type]
    assert err.value.operator == "by_two" and "takes one column name" in err.value.problem


# -- map_records: a record whose result does not fit goes to the dead letters, the job goes on ------------------

def _map_records(records, fn, schema):
    p = ms.Pipeline("mr")
    out, dead = ms.sinks.collect(), ms.sinks.collect()
    p.from_iterable(records).map_records(fn, schema=schema, name="parse").sink(out)
    p.dead_letters().sink(dead)
    result = p.run(verbose=False)
    return out.records(), dead.records(), result


def test_map_records_value_not_of_the_declared_type_is_a_dead_letter():
    good, dead, result = _map_records([{"raw": "21.5"}, {"raw": "oops"}, {"raw": "22"}],
                                      lambda r: {"temp": r["raw"]}, {"temp": "float64"})
    assert good == [{"temp": 21.5}, {"temp": 22.0}] and result.dead_letter_count == 1
    assert dead[0]["operator"] == "parse" and "{'raw': 'oops'}" in dead[0]["row"]
    assert "column 'temp': 'oops' is not float64" in dead[0]["reason"]


def test_map_records_missing_int_column_and_non_dict_results_are_dead_letters():
    def fn(r):
        if r["v"] == 1:
            return {"n": 1}
        return {"other": 2} if r["v"] == 2 else [r["v"]]

    good, dead, result = _map_records([{"v": 1}, {"v": 2}, {"v": 3}], fn, {"n": "int64"})
    assert good == [{"n": 1}] and result.dead_letter_count == 2
    reasons = {d["row"]: d["reason"] for d in dead}
    assert "column 'n': missing" in reasons["{'v': 2}"] and "returned list, not a dict" in reasons["{'v': 3}"]


def test_map_records_missing_values_are_nan_and_empty_text_not_the_text_none():
    def fn(r):
        return {"label": f"room {r['room']}", "ppm": r["co2"]} if r["co2"] > 0 else {"ppm": None}

    good, dead, _ = _map_records([{"room": "a", "co2": 400.0}, {"room": "b", "co2": -1.0}], fn,
                                 {"label": "str", "ppm": "float64"})
    assert not dead and good[0]["label"] == "room a" and good[0]["ppm"] == 400.0
    assert good[1]["label"] == "" and np.isnan(good[1]["ppm"])


def test_a_map_returning_the_time_or_key_column_as_floats_is_refused():
    keyed = ms.Pipeline("roles").from_iterable([{"room": "a", "t": 0, "co2": 400.0}], time="t").key_by("room")
    with pytest.raises(ms.PipelineError, match="returns the event-time column 't' as float64") as err:
        keyed.with_columns(t=lambda b: b["t"] / 1e9, name="seconds")
    assert err.value.operator == "seconds" and "another name" in err.value.fix
    with pytest.raises(ms.PipelineError, match="returns the key column 'room' as float64") as err:
        keyed.map(lambda b: {"room": b["co2"], "t": b["t"]}, name="by_co2")
    assert err.value.operator == "by_co2"
    shifted = keyed.with_columns(t=lambda b: b["t"] + 10**9, name="shift")  # int64 ns stays the event time
    assert shifted.schema.time == "t" and shifted.schema.key == "room"


def test_select_with_no_columns_is_refused():
    with pytest.raises(ms.PipelineError, match="select\\(\\) needs the columns to keep") as err:
        _src().select(name="keep")
    assert err.value.operator == "keep" and err.value.fix == "e.g. .select('t', 'co2')"


def test_map_records_returning_the_time_column_as_text_is_refused():
    src = ms.Pipeline("mr_time").from_iterable([{"t": 0, "v": 1.0}], time="t")
    with pytest.raises(ms.PipelineError, match="returns the event-time column 't' as <U") as err:
        src.map_records(lambda r: {"t": str(r["t"]), "v": r["v"]}, name="as_text")
    assert err.value.operator == "as_text"
    with pytest.raises(ms.PipelineError, match="returns the event-time column 't' as float64"):
        src.map_records(lambda r: {"v": r["v"]}, schema={"t": "float64", "v": "float64"}, name="declared")
