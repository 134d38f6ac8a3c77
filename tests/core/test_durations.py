"""One duration contract everywhere: text with a unit, float seconds, a timedelta or `ms.duration`; a bare int is
refused with the fix, by every option that takes a duration."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pytest

import microstream as ms
from microstream.core.time import MINUTE, SECOND, Duration, duration_arg, to_ns


@pytest.mark.parametrize("value, ns", [
    ("10s", 10 * SECOND), ("5min", 5 * MINUTE), ("5m", 5 * MINUTE), ("1h30min", 90 * MINUTE), ("2.5 s", 2_500_000_000),
    ("500ms", 500_000_000), ("250us", 250_000), ("7ns", 7), ("1d", 86_400 * SECOND), ("2 hours", 7_200 * SECOND),
    ("-1h", -3_600 * SECOND), (2.005, 2_005_000_000), (np.float64(0.5), 500_000_000),
    (dt.timedelta(seconds=10), 10 * SECOND), (dt.timedelta(microseconds=3), 3_000),
    (np.timedelta64(3, "ms"), 3_000_000), (ms.duration(minutes=1), MINUTE), (0, 0),
])
def test_every_form_of_the_contract(value, ns):
    assert to_ns(value) == ns
    assert type(to_ns(value)) is int


@pytest.mark.parametrize("value, fix", [
    (5, "write lateness=5.0 or lateness='5s'"), (np.int64(5), "lateness='5s'"),
    ("5", "write '5s' for seconds"), ("5 parsecs", "like '500ms'"), (True, "such as '10s'"),
    (float("nan"), "such as '10s'"), ([5], "text such as '10s'"),
])
def test_what_is_refused_says_how_to_write_it(value, fix):
    with pytest.raises(ms.PipelineError) as exc:
        to_ns(value, "lateness")
    assert fix in str(exc.value)


def test_duration_is_an_int_of_nanoseconds_that_keeps_its_unit_through_arithmetic():
    m = ms.duration(minutes=1)
    assert m == 60 * SECOND and isinstance(m, int)
    for kept in (2 * m, m * 2, m * 0.5, -m, abs(-m), m + m, m - m, m // 2, m % ms.duration(seconds=7)):
        assert isinstance(kept, Duration), kept
    assert not isinstance(m + 5, Duration)           # a timestamp plus a duration is a timestamp
    assert m // ms.duration(seconds=1) == 60 and not isinstance(m // ms.duration(seconds=1), Duration)
    assert (np.arange(3) * SECOND + m).dtype == np.int64
    assert pickle.loads(pickle.dumps(m)) == m and isinstance(pickle.loads(pickle.dumps(m)), Duration)


def test_windows_take_the_same_forms_and_refuse_a_bare_int():
    ten = ms.tumbling(seconds=10)
    assert ms.tumbling("10s") == ms.tumbling(10.0) == ms.tumbling(dt.timedelta(seconds=10)) == ten
    assert ms.sliding("10min", "5min") == ms.sliding(minutes=10, every="5min") == ms.sliding(600.0, 300.0)
    assert ms.sliding({"minutes": 10}, {"minutes": 5}).size == 10 * MINUTE  # the older dict form still reads
    assert ms.session(2.005).size == 2_005_000_000 and ms.session("5min") == ms.session(minutes=5)
    assert ms.tumbling(days=1, offset="-1h").offset == -3_600 * SECOND
    with pytest.raises(ms.PipelineError, match=r"write ms.tumbling\(seconds=10\) or ms.tumbling\('10s'\)"):
        ms.tumbling(10)
    with pytest.raises(ms.PipelineError, match=r"ms.sliding\(seconds=20\)"):
        ms.sliding(20, "5s")
    with pytest.raises(ms.PipelineError, match=r"'5s'"):
        ms.sliding("20s", 5)
    with pytest.raises(ms.PipelineError, match=r"ms.session\(seconds=6\)"):
        ms.session(6)
    with pytest.raises(ms.PipelineError, match="offset='3600s'"):
        ms.tumbling(days=1, offset=3600)
    with pytest.raises(ms.PipelineError, match="did you mean minutes="):
        ms.tumbling(minuts=10)
    with pytest.raises(ms.PipelineError, match="must not exceed"):
        ms.sliding("5min", "10min")
    with pytest.raises(ms.PipelineError, match="positive"):
        ms.tumbling("0s")


def _options(p: ms.Pipeline, tmp_path):
    """Every duration option of the public API, called with `value`."""
    csv = tmp_path / "r.csv"
    csv.write_text("t,v\n2024-01-01T00:00:00Z,1\n")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"t": 1, "v": 1}\n')
    keyed = p.from_iterable([{"k": 1, "t": 0, "v": 1.0}], time="t").key_by("k")
    return {
        "from_iterable max_delay": lambda v: p.from_iterable([{"v": 1}], max_delay=v),
        "from_arrays max_delay": lambda v: p.from_arrays({"v": np.ones(2)}, max_delay=v),
        "poll every": lambda v: p.poll(lambda: {"v": 1.0}, every=v),
        "poll max_delay": lambda v: p.poll(lambda: {"v": 1.0}, every=1.0, max_delay=v),
        "poll_file every": lambda v: p.poll_file(csv, every=v),
        "read_csv max_delay": lambda v: p.read_csv(csv, time="t", max_delay=v),
        "read_jsonl max_delay": lambda v: p.read_jsonl(jsonl, time="t", max_delay=v),
        "read_mqtt max_delay": lambda v: p.read_mqtt("a/b", schema={"v": "float"}, max_delay=v),
        "read_mqtt idle_timeout": lambda v: p.read_mqtt("a/b", schema={"v": "float"}, idle_timeout=v),
        "synthetic jitter": lambda v: p.synthetic(count=1, jitter=v),
        "synthetic max_delay": lambda v: p.synthetic(count=1, max_delay=v),
        # window()'s options are checked by the step that names the operator (aggregate, apply)
        "window lateness": lambda v: keyed.window(ms.tumbling("1s"), lateness=v).aggregate(n=ms.agg.count()),
        "join lateness": lambda v: keyed.join(keyed, ms.tumbling("1s"), lateness=v),
        "checkpoint_every": lambda v: ms.Pipeline("c", checkpoint_every=v),
    }


def test_every_duration_option_refuses_a_bare_int_and_takes_text(tmp_path):
    p = ms.Pipeline("durations")
    for what, call in _options(p, tmp_path).items():
        option = what.split()[-1]
        with pytest.raises(ms.PipelineError, match=f"{option}=7 has no unit") as exc:
            call(7)
        assert f"{option}='7s'" in str(exc.value), what
        call("7s")  # accepted
        call(dt.timedelta(seconds=7))
        call(7.0)


def test_command_line_durations_read_text_or_seconds():
    import argparse

    assert duration_arg("1h") == 3600.0 and duration_arg("2.5") == 2.5 and duration_arg("500ms") == 0.5
    with pytest.raises(argparse.ArgumentTypeError):
        duration_arg("soon")
