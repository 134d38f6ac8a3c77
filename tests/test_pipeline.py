"""Building pipelines: build-time errors name the operator and the fix; describe and pictures."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import microstream as ms
from microstream.graph.logical import LogicalGraph
from microstream.operators.stateless import KeyBy

RECORDS = [{"room": "a", "t": i * 10**9, "co2": 400.0 + i} for i in range(5)]


def test_unknown_column_in_filter_fails_at_build_time_with_suggestion():
    p = ms.Pipeline("bad")
    src = p.from_iterable(RECORDS, time="t")
    with pytest.raises(ms.PipelineError) as err:
        src.filter(lambda b: b["CO2"] > 0, name="co2_ok")
    text = str(err.value)
    assert "co2_ok" in text and "CO2" in text and "did you mean 'co2'" in text


def test_window_without_event_time_names_operator_and_fix():
    p = ms.Pipeline("bad")
    src = p.from_iterable([{"room": "a", "v": 1.0}]).key_by("room")
    with pytest.raises(ms.PipelineError) as err:
        src.window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), name="w")
    assert "'w'" in str(err.value) and "without event time" in str(err.value)
    assert "time=" in str(err.value)


def test_window_without_key():
    p = ms.Pipeline("bad")
    src = p.from_iterable(RECORDS, time="t")
    with pytest.raises(ms.PipelineError, match="key_by"):
        src.window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count())


def test_key_on_missing_field():
    p = ms.Pipeline("bad")
    with pytest.raises(ms.PipelineError, match="(?s)key 'rom' is not in the stream.*did you mean 'room'"):
        p.from_iterable(RECORDS, time="t").key_by("rom")


def test_float_key_refused():
    p = ms.Pipeline("bad")
    with pytest.raises(ms.PipelineError, match="integers or strings"):
        p.from_iterable(RECORDS, time="t").key_by("co2")


def test_aggregate_on_unknown_column():
    p = ms.Pipeline("bad")
    keyed = p.from_iterable(RECORDS, time="t").key_by("room")
    with pytest.raises(ms.PipelineError, match="mean\\(\\) column 'co3'"):
        keyed.window(ms.tumbling(seconds=1)).aggregate(m=ms.agg.mean("co3"))


def test_stream_used_by_nothing_fails_when_built():
    p = ms.Pipeline("dangling")
    src = p.from_iterable(RECORDS, time="t")
    src.filter(lambda b: b["co2"] > 0, name="orphan")
    src.sink(ms.sinks.collect())
    with pytest.raises(ms.PipelineError) as err:
        p.build()
    assert "orphan" in str(err.value) and "used by nothing" in str(err.value) and "sink" in str(err.value)


def test_pipeline_without_sink():
    p = ms.Pipeline("nosink")
    p.from_iterable(RECORDS)
    with pytest.raises(ms.PipelineError, match="used by nothing"):
        p.run()


def test_cycle_is_detected():
    graph = LogicalGraph("cyclic")
    p = ms.Pipeline("x")
    src = p.from_iterable(RECORDS, time="t")
    graph.nodes[0] = src.node
    a = graph.add(KeyBy("room"), [(0, "out")], "a")
    b = graph.add(KeyBy("room"), [(a.id, "out")], "b")
    a.inputs.append((b.id, "out"))  # feed b back into a
    with pytest.raises(ms.PipelineError, match="cycle"):
        graph.topo_order()


def test_union_of_different_schemas():
    p = ms.Pipeline("u")
    a = p.from_iterable([{"v": 1.0}])
    b = p.from_iterable([{"w": 1.0}])
    with pytest.raises(ms.PipelineError, match="input 1 has columns"):
        a.union(b)


def test_filter_must_return_mask():
    p = ms.Pipeline("f")
    with pytest.raises(ms.PipelineError, match="boolean mask"):
        p.from_iterable(RECORDS).filter(lambda b: b["co2"] * 2)


def test_sink_requires_a_sink_object():
    p = ms.Pipeline("s")
    with pytest.raises(ms.PipelineError, match="ms.sinks.callback"):
        p.from_iterable(RECORDS).sink(print)  # type: ignore[arg-type]


def test_streams_from_two_pipelines_cannot_mix():
    a = ms.Pipeline("a").from_iterable([{"v": 1}])
    b = ms.Pipeline("b").from_iterable([{"v": 2}])
    with pytest.raises(ms.PipelineError):
        a.union(b)


def test_schema_propagates_through_map_and_with_columns():
    p = ms.Pipeline("m")
    src = p.from_iterable(RECORDS, time="t")
    f = src.with_columns(co2_pct=lambda b: b["co2"] / 1e4)
    assert f.columns == ["room", "t", "co2", "co2_pct"]
    m = f.map(lambda b: {"x": b["co2"].astype(np.float32)})
    assert m.columns == ["t", "x"] and m.schema.time == "t"
    assert m.schema.dtype("x") == np.float32


def test_describe_lists_operators_and_schemas():
    p = ms.Pipeline("rooms")
    src = p.from_iterable(RECORDS, time="t", name="sensors")
    src.key_by("room").window(ms.tumbling(minutes=10)).aggregate(co2=ms.agg.mean("co2"), name="ten_min").sink(
        ms.sinks.collect())
    table = p.describe()
    for word in ("sensors", "key_by", "ten_min", "tumbling 10 min", "co2=mean(co2)", "room:str*"):
        assert word in table


def test_dot_and_svg_pictures(tmp_path):
    p = ms.Pipeline("rooms")
    w = p.from_iterable(RECORDS, time="t").key_by("room").window(ms.tumbling(minutes=1)).aggregate(
        n=ms.agg.count())
    w.sink(ms.sinks.collect())
    w.late.sink(ms.sinks.collect())
    dot = p.to_dot()
    assert dot.count("->") == 4 and "hash(room)" in dot
    svg_path = tmp_path / "p.svg"
    p.to_svg(svg_path)
    root = ET.parse(svg_path).getroot()
    text = ET.tostring(root, encoding="unicode")
    assert "window_aggregate" in text and "late" in text


def test_operator_error_names_operator():
    p = ms.Pipeline("boom")
    calls = {"n": 0}

    def explode(b):
        calls["n"] += 1
        if calls["n"] > 1:  # fine at build time, fails while running
            raise ValueError("sensor offline")
        return {"v": b["v"]}

    p.from_iterable([{"v": 1.0}]).map(explode, name="calibrate").sink(ms.sinks.collect())
    with pytest.raises(ms.OperatorError, match="calibrate.*sensor offline"):
        p.run()


def test_run_twice_gives_same_results():
    p = ms.Pipeline("twice")
    out = ms.sinks.collect()
    p.from_arrays({"k": np.arange(100) % 3, "t": np.arange(100) * 10**8}, time="t").key_by("k").window(
        ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).sink(out)
    p.run()
    first = out.records()
    p.run()
    assert out.records() == first and sum(r["n"] for r in first) == 100


# -- mistakes found in an audit of build-time errors: each names the operator and the fix -------------------------

@pytest.mark.parametrize("n", [0, "4", 2.5, True])
def test_parallelism_that_is_not_a_whole_number_of_at_least_one_is_refused(n):
    s = ms.Pipeline("par").from_iterable(RECORDS, time="t").map(lambda b: {"v": b["co2"]}, name="scale")
    with pytest.raises(ms.PipelineError, match="parallelism must be a whole number of at least 1") as err:
        s.with_parallelism(n)
    assert err.value.operator == "scale" and err.value.fix


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_below_one_is_refused_rather_than_reading_nothing_or_never_ending(batch_size, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("t,v\n2024-01-01 00:00:00,1\n")
    p = ms.Pipeline("bs")
    for add in (lambda: p.from_iterable(RECORDS, batch_size=batch_size, name="it"),
                lambda: p.from_arrays({"v": np.arange(3.0)}, batch_size=batch_size, name="it"),
                lambda: p.read_csv(path, time="t", batch_size=batch_size, name="it")):
        with pytest.raises(ms.PipelineError, match="batch_size must be a whole number of records") as err:
            add()
        assert err.value.operator == "it" and "batch_size=4096" in err.value.fix


def test_union_of_a_stream_with_itself_is_refused():
    p = ms.Pipeline("twice")
    a = p.from_iterable(RECORDS, time="t", name="rooms")
    with pytest.raises(ms.PipelineError, match="the stream of 'rooms' is given to union twice") as err:
        a.union(a, name="all")
    assert err.value.operator == "all" and err.value.fix


def test_union_of_two_outputs_of_one_split_is_allowed():
    p = ms.Pipeline("split_union")
    out = ms.sinks.collect()
    hi, lo = p.from_iterable(RECORDS, time="t").split(lambda b: b["co2"] > 402)
    hi.union(lo).sink(out)
    p.run(verbose=False)
    assert len(out.records()) == len(RECORDS)


def test_union_and_join_with_something_that_is_not_a_stream_say_so():
    p = ms.Pipeline("not_streams")
    a = p.from_iterable(RECORDS, time="t").key_by("room")
    b = p.from_iterable(RECORDS, time="t").key_by("room")
    with pytest.raises(ms.PipelineError, match="union\\(\\) needs streams, got list") as err:
        a.union([b], name="u")
    assert err.value.operator == "u" and "unpack a list with *" in err.value.fix
    with pytest.raises(ms.PipelineError, match="join\\(\\) needs streams, got str") as err:
        a.join("b", ms.tumbling("10s"), name="j")  # type: ignore[arg-type]
    assert err.value.operator == "j"


@pytest.mark.parametrize("name", ["", "  ", 5])
def test_an_operator_name_that_is_not_text_is_refused(name):
    s = ms.Pipeline("names").from_iterable(RECORDS, time="t")
    with pytest.raises(ms.PipelineError, match="is not a name") as err:
        s.map(lambda b: {"v": b["co2"]}, name=name)
    assert err.value.operator == "map" and "name=" in err.value.fix


def test_split_into_one_stream_names_the_operator():
    with pytest.raises(ms.PipelineError, match="split into 1 streams") as err:
        ms.Pipeline("one").from_iterable(RECORDS).split(lambda b: b["co2"] > 0, n=1, name="halves")
    assert err.value.operator == "halves"


def test_a_function_that_captured_a_lock_is_named_when_the_job_is_sent_to_a_cluster():
    """`microstream submit` runs the script with `Pipeline.run` sending the job to the coordinator, cloudpickled.
    A function that captured a lock cannot be sent: the error names the operator and says what to do, where it
    was a bare "TypeError: cannot pickle '_thread.lock' object". Here a real client and a socket in the
    coordinator's place; nothing reaches it."""
    import threading

    import zmq

    from microstream.cluster.client import Client, ClusterAddress
    from microstream.runtime.local import set_runner

    lock = threading.Lock()

    def guarded(b):
        with lock:
            return {"v": b["co2"] * 2}

    p = ms.Pipeline("locked")
    p.from_iterable(RECORDS, time="t").map(guarded, name="guarded").sink(ms.sinks.collect())
    ctx = zmq.Context()
    coordinator = ctx.socket(zmq.ROUTER)
    try:
        port = coordinator.bind_to_random_port("tcp://127.0.0.1")
        with Client(ClusterAddress(f"tcp://127.0.0.1:{port}"), timeout=60) as client:
            token = set_runner(lambda pipeline, **_: client.submit(pipeline, output=None))
            try:
                with pytest.raises(ms.PipelineError) as err:
                    p.run()
            finally:
                token.var.reset(token)
        assert not coordinator.poll(0), "a job that cannot be pickled was sent"
    finally:
        coordinator.close(linger=0)
        ctx.term()
    assert err.value.operator == "guarded" and "cannot pickle '_thread.lock' object" in err.value.problem
    assert "test_pipeline.py" in err.value.problem and "create it inside the function" in err.value.fix
    assert "cannot pickle" in str(err.value.__cause__)
    p.run(verbose=False)  # locally nothing is pickled: the same pipeline runs


def test_an_operator_whose_schema_check_fails_unexpectedly_is_named():
    """An operator of the user's own (or a source option no check covers, such as a misspelt column type) whose
    output_schemas raises a plain exception: the PipelineError names the operator; the original is its cause."""

    class Rename(ms.Operator):
        kind = "rename"

        def __init__(self, mapping):
            self.mapping = mapping

        def output_schemas(self, inputs, name):
            fields = {self.mapping[n]: d for n, d in inputs[0].fields}  # KeyError for a column not mapped
            return {"out": ms.Schema.of(fields)}

    s = ms.Pipeline("own").from_iterable(RECORDS, time="t")
    with pytest.raises(ms.PipelineError) as err:
        s.apply(Rename({"co2": "CO2"}), name="rename_co2")
    assert err.value.operator == "rename_co2" and "KeyError: 'room'" in err.value.problem
    assert isinstance(err.value.__cause__, KeyError) and "this rename" in err.value.fix


def test_a_misspelt_csv_column_type_names_the_source(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("t,co2\n2024-01-01 00:00:00,400\n")
    with pytest.raises(ms.PipelineError, match="column 'co2' has the unknown type 'flot'; did you mean 'float'"
                       ) as err:
        ms.Pipeline("types").read_csv(path, time="t", columns={"co2": "flot"}, name="rooms")
    assert err.value.operator == "rooms"


def test_parallelism_on_a_source_is_refused_where_it_is_asked_for():
    """It was refused only when the run planned its tasks, after the whole script had been built."""
    p = ms.Pipeline("par_source")
    src = p.from_iterable(RECORDS, time="t", name="rooms")
    with pytest.raises(ms.PipelineError, match="sources, sinks and the dead-letter stream run as one task") as err:
        src.with_parallelism(2)
    assert err.value.operator == "rooms" and "operators after it" in err.value.fix
    with pytest.raises(ms.PipelineError, match="run as one task"):
        p.dead_letters().with_parallelism(2)
    assert src.with_parallelism(1) is src


def test_an_operator_object_used_twice_is_told_to_make_a_new_one_of_its_own_class():
    class Passthrough(ms.Operator):
        kind = "passthrough"

        def process(self, port, batch):
            return [("out", batch)]

    op = Passthrough()
    s = ms.Pipeline("twice_op").from_iterable(RECORDS, time="t")
    s.apply(op)
    with pytest.raises(ms.PipelineError, match="already part of a pipeline") as err:
        s.apply(op, name="again")
    assert err.value.fix == "create a new Passthrough(...) for each use"


def test_a_misspelt_side_output_and_window_clock_say_what_was_meant():
    s = ms.Pipeline("sides").from_iterable(RECORDS, time="t").key_by("room")
    w = s.window(ms.tumbling("10s")).aggregate(n=ms.agg.count(), name="per_10s")
    with pytest.raises(ms.PipelineError, match="has no side output 'lates'") as err:
        w.side("lates")
    assert err.value.operator == "per_10s" and err.value.fix == "did you mean .side('late')?"
    with pytest.raises(ms.PipelineError, match="time must be 'event' or 'processing'") as err:
        s.window(ms.tumbling("10s"), time="proc").aggregate(n=ms.agg.count(), name="co2_stats")
    assert err.value.operator == "co2_stats" and "time='processing'" in err.value.fix


def test_a_wrong_window_option_names_the_operator_the_user_named_and_the_window_line():
    s = ms.Pipeline("named").from_iterable(RECORDS, time="t").key_by("room")
    cases = [(dict(lateness=-1.0), "lateness must not be negative"),
             (dict(emit="fianl"), "emit must be one of ['all', 'final'], got 'fianl'; did you mean 'final'?"),
             (dict(time="wall"), "time must be 'event' or 'processing'")]
    for options, text in cases:
        w, line = s.window(ms.tumbling("10s"), **options), sys._getframe().f_lineno   # the window() call's line
        with pytest.raises(ms.PipelineError) as err:
            w.aggregate(n=ms.agg.count(), name="co2_stats")
        assert err.value.operator == "co2_stats" and f"operator 'co2_stats': {text}" in str(err.value)
        assert f"(window() at test_pipeline.py:{line})" in str(err.value)
        with pytest.raises(ms.PipelineError) as err:
            w.apply(lambda b: {"n": len(b["co2"])}, name="co2_spread")
        assert err.value.operator == "co2_spread" and f"operator 'co2_spread': {text}" in str(err.value)
    with pytest.raises(ms.PipelineError, match="is not a window") as err:   # final() keeps the options it was given
        s.window("10s").final().aggregate(n=ms.agg.count(), name="per_10s")
    assert err.value.operator == "per_10s" and "ms.tumbling('10min')" in err.value.fix


def test_from_iterable_key_is_key_by_as_for_the_file_sources():
    p = ms.Pipeline("keyed")
    out = ms.sinks.collect()
    src = p.from_iterable(RECORDS + [{"room": "b", "t": 0, "co2": 900.0}], time="t", key="room", name="rooms")
    assert src.schema.key == "room" and src.columns == ["room", "t", "co2"]
    src.window(ms.tumbling("10s")).aggregate(n=ms.agg.count(), name="per_room").sink(out)
    p.run()
    assert sorted((r["room"], r["n"]) for r in out.records()) == [("a", 5), ("b", 1)]
    assert "key" not in repr(ms.Pipeline("unkeyed").from_iterable(RECORDS, time="t"))   # without key=, no key_by
    with pytest.raises(ms.PipelineError, match="key 'rom' is not in the stream") as err:   # as read_csv(key=...)
        ms.Pipeline("typo").from_iterable(RECORDS, time="t", key="rom")
    assert "did you mean 'room'?" in err.value.fix


def test_union_of_one_stream_and_negative_restarts_say_how_to_write_them():
    p = ms.Pipeline("fixes")
    with pytest.raises(ms.PipelineError, match="union needs at least two streams") as err:
        p.union(p.from_iterable(RECORDS))
    assert err.value.fix == "e.g. p.union(a, b), or a.union(b)"
    with pytest.raises(ms.PipelineError, match="restarts must be >= 0") as err:
        ms.Pipeline("r", restarts=-1)
    assert "restarts=3" in err.value.fix
