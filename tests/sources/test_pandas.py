"""pandas, an optional extra: `p.from_pandas(df, time=...)` and `collect().to_pandas()` with timezone-aware times,
round-tripping the examples' outputs; never imported by microstream itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import microstream as ms
from microstream.cli.script import pipelines_of
from microstream.core.optional import MissingDependency

pd = pytest.importorskip("pandas")
ROOT = Path(__file__).resolve().parents[2]
T0 = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z


def _run(stream_of, p: ms.Pipeline) -> ms.sinks.Collect:
    out = ms.sinks.collect()
    stream_of.sink(out)
    p.run()
    return out


def test_timezone_aware_naive_and_index_times_become_utc_nanoseconds():
    paris = pd.to_datetime(["2024-01-01 01:00:00", "2024-01-01 01:00:01.5"], format="ISO8601").tz_localize(
        "Europe/Paris")
    df = pd.DataFrame({"room": ["a", "b"], "t": paris, "naive": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    p = ms.Pipeline("tz")
    out = _run(p.from_pandas(df, time="t"), p)
    assert out.batch()["t"].tolist() == [T0, T0 + 1_500_000_000]
    assert out.batch()["naive"].tolist() == [T0, T0 + 86_400 * 10**9]
    indexed = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.DatetimeIndex(paris, name="time"))
    p = ms.Pipeline("index")
    s = p.from_pandas(indexed, time="time", key=None)
    assert s.columns == ["time", "v"] and s.schema.time == "time"


def test_columns_of_every_kind():
    df = pd.DataFrame({"cat": pd.Categorical(["x", "y", "x"]), "n": pd.array([1, None, 3], dtype="Int64"),
                       "i": [1, 2, 3], "ok": [True, False, True], "s": ["a", None, "c"], "f": [0.5, np.nan, 2.0],
                       "epoch": [1_700_000_000, 1_700_000_001, 1_700_000_002]})
    p = ms.Pipeline("kinds")
    out = _run(p.from_pandas(df, time="epoch", time_unit="s"), p)
    b = out.batch()
    assert b["cat"].tolist() == ["x", "y", "x"] and b["s"].tolist() == ["a", "", "c"]
    assert b["n"].dtype == np.float64 and math.isnan(b["n"][1]) and b["i"].dtype == np.int64
    assert b["ok"].dtype == bool and b["epoch"].tolist()[0] == 1_700_000_000 * 10**9
    with pytest.raises(ms.PipelineError, match="looks like epoch seconds"):
        ms.Pipeline("x").from_pandas(df[["epoch"]], time="epoch")
    with pytest.raises(ms.PipelineError, match="needs a pandas DataFrame"):
        ms.Pipeline("x").from_pandas(df["i"])


def test_to_pandas_gives_timezone_aware_times():
    p = ms.Pipeline("out")
    out = ms.sinks.collect()
    src = p.from_iterable([{"k": "a", "t": T0 + i * 10**9, "v": float(i)} for i in range(90)], time="t")
    src.key_by("k").window(ms.tumbling("1min")).aggregate(n=ms.agg.count()).sink(out)
    raw = ms.sinks.collect()
    src.sink(raw)
    p.run()
    df = out.to_pandas()
    assert [str(df[c].dtype) for c in ("window_start", "window_end", "window_time")] == ["datetime64[ns, UTC]"] * 3
    assert df["window_start"].iloc[1] == pd.Timestamp("2024-01-01 00:01", tz="UTC") and df["n"].tolist() == [60, 30]
    local = raw.to_pandas(tz="America/New_York")
    assert local["t"].iloc[0] == pd.Timestamp("2023-12-31 19:00", tz="America/New_York")
    assert raw.to_pandas(tz=None)["t"].dtype == np.int64
    empty = ms.sinks.collect()
    q = ms.Pipeline("empty")
    q.from_iterable([], schema={"t": "int64", "v": "float64"}, time="t").sink(empty)
    q.run()
    assert list(empty.to_pandas().columns) == ["t", "v"] and len(empty.to_pandas()) == 0


def _same(a: list[dict], b: list[dict]) -> bool:
    def canon(r: dict) -> tuple:
        return tuple((k, "nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items())
    return [canon(r) for r in a] == [canon(r) for r in b]


@pytest.mark.parametrize("example", ["rooms.py", "water_flow.py", "air_quality/recording.py"])
def test_to_pandas_round_trips_the_examples_outputs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, pipelines = pipelines_of(ROOT / "examples" / "sensors" / example)
    assert code == 0 and pipelines
    p = pipelines[0]
    collects = []
    for node in list(p.graph.nodes.values()):
        if node.is_sink and not node.op.collects:  # every file the example writes, collected too
            src, port = node.inputs[0]
            out = ms.sinks.collect()
            ms.Stream(p, p.graph.nodes[src], port).sink(out)
            collects.append(out)
    p.run(verbose=False)
    for out in collects:
        if not len(out):
            continue
        df = out.to_pandas()
        time = out.batch() and out._schema.time  # noqa: SLF001 - the collected stream's event-time column
        q = ms.Pipeline("back")
        back = ms.sinks.collect()
        q.from_pandas(df, time=time).sink(back)
        q.run(verbose=False)
        assert _same(back.records(), out.records()), example


def test_microstream_never_imports_pandas_and_says_which_extra_is_missing(monkeypatch):
    code = ("import sys, microstream as ms\n"
            "p = ms.Pipeline('x'); out = ms.sinks.collect()\n"
            "p.from_iterable([{'t': 0, 'k': 1, 'v': 1.0}], time='t').key_by('k').window(ms.tumbling('1s'))"
            ".aggregate(n=ms.agg.count()).sink(out)\n"
            "p.run(); out.records()\n"
            "assert 'pandas' not in sys.modules, 'pandas was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match=r"pip install 'microstream\[pandas\]'"):
        ms.Pipeline("x").from_pandas(object())
    with pytest.raises(MissingDependency, match="to_pandas needs the Python package 'pandas'"):
        ms.sinks.collect().to_pandas()
