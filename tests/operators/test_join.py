"""Windowed inner join checked against a reference model of the documented semantics.

A record belongs to every window [s, e) that contains its event time, and is accepted for a window while
e + lateness > its watermark (the minimum over both inputs when it arrives). Every (left, right) pair of
accepted records with the same key in the same window is emitted exactly once, whenever the second of the
two arrives (late records within lateness included). A record accepted for no window goes to `.late`
(left) or `.side("late_right")` (right). Per-record watermarks come from `interleaved_events`, which
reproduces how the local runtime polls the two sources.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from tests.helpers import ns
from tests.operators.test_windows import interleaved_events, windows_of

ROW = ("room", "window_start", "window_end", "window_time", "left_t", "temp", "right_t", "rh")


def L(room, t, temp=None):  # noqa: N802 - a left record
    return {"room": room, "t": t, "temp": float(t if temp is None else temp)}


def R(site, t, rh=None):  # noqa: N802 - a right record
    return {"site": site, "t": t, "rh": float(-t if rh is None else rh)}


def run_join(left, right, spec, lateness=0, delays=(0, 0), batches=(1024, 1024)):
    p = ms.Pipeline("join")
    out, late_l, late_r = ms.sinks.collect(), ms.sinks.collect(), ms.sinks.collect()
    a = p.from_iterable(left, time="t", max_delay=ns(delays[0]), batch_size=batches[0]).key_by("room")
    b = p.from_iterable(right, time="t", max_delay=ns(delays[1]), batch_size=batches[1]).key_by("site")
    j = a.join(b, spec, lateness=ns(lateness))
    j.sink(out)
    j.late.sink(late_l)
    j.side("late_right").sink(late_r)
    p.run()
    rows = out.records()
    for r in rows:
        assert set(r) == set(ROW)
        assert r["window_time"] == r["window_end"] - 1 and r["window_end"] - r["window_start"] == spec.size
        assert r["window_start"] <= r["left_t"] < r["window_end"]
        assert r["window_start"] <= r["right_t"] < r["window_end"]
    return sorted(tuple(r[c] for c in ROW) for r in rows), _srt(late_l.records()), _srt(late_r.records())


def _srt(recs):
    return sorted(tuple(sorted(r.items())) for r in recs)


def reference_join(left, right, spec, lateness=0, delays=(0, 0), batches=(1024, 1024)):
    events = interleaved_events([(left, delays[0], batches[0]), (right, delays[1], batches[1])])
    accepted = (defaultdict(list), defaultdict(list))
    late = ([], [])
    for kind, port, r, wm in events:
        if kind != "rec":
            continue
        key = r["room"] if port == 0 else r["site"]
        wins = [s for s, e in windows_of(r["t"], spec) if e + lateness > wm]
        if not wins:
            late[port].append(r)
        for s in wins:
            accepted[port][(key, s)].append(r)
    rows = []
    for (key, s), lrecs in accepted[0].items():
        for lr in lrecs:
            for rr in accepted[1].get((key, s), []):
                e = s + spec.size
                rows.append((key, s, e, e - 1, lr["t"], lr["temp"], rr["t"], rr["rh"]))
    return sorted(rows), _srt(late[0]), _srt(late[1])


def check(left, right, spec, lateness=0, delays=(0, 0), batches=(1024, 1024)):
    got = run_join(left, right, spec, lateness, delays, batches)
    want = reference_join(left, right, spec, lateness, delays, batches)
    assert got[0] == want[0], "pairs differ"
    assert got[1] == want[1], "late left records differ"
    assert got[2] == want[2], "late right records differ"
    return got


def test_pairs_exactly_once_with_late_records_inside_and_beyond_lateness():
    # batch size 1 on both sides: the runtime alternates left, right, left, right, ...
    left = [L("a", t) for t in (1, 20, 3, 50, 5)]
    right = [R("a", t) for t in (2, 21, 4, 51, 6)]
    pairs, late_l, late_r = check(left, right, ms.tumbling(ns(10)), lateness=15, batches=(1, 1))
    assert [(p[1], p[4], p[6]) for p in pairs] == [
        (0, 1, 2), (0, 1, 4),     # 4 is late (wm 20) but within lateness: paired with the buffered 1 and 3
        (0, 3, 2), (0, 3, 4),     # 3 likewise (paired with 2 at once, with 4 when 4 arrives)
        (20, 20, 21), (50, 50, 51)]
    assert [dict(r)["t"] for r in late_l] == [5] and [dict(r)["t"] for r in late_r] == [6]


def test_keys_must_match_and_sliding_windows_pair_once_per_window():
    left = [L("a", 1), L("b", 2), L("a", 12), L("c", 14)]
    right = [R("a", 3), R("b", 11), R("a", 13), R("d", 1)]
    pairs, late_l, late_r = check(left, right, ms.sliding(ns(10), ns(5)), delays=(20, 20))
    assert late_l == [] == late_r
    assert [(p[0], p[1], p[4], p[6]) for p in pairs] == [
        ("a", -5, 1, 3), ("a", 0, 1, 3), ("a", 5, 12, 13), ("a", 10, 12, 13)]   # b: 2 and 11 share no window


def test_clashing_column_names_get_prefixes():
    p = ms.Pipeline("j")
    out = ms.sinks.collect()
    a = p.from_iterable([{"k": 1, "t": 1, "v": 1.0, "only_left": 5}], time="t").key_by("k")
    b = p.from_iterable([{"k": 1, "t": 2, "v": 2.0, "window_start": 7}], time="t").key_by("k")
    a.join(b, ms.tumbling(ns(10))).sink(out)
    p.run()
    assert out.records() == [{"k": 1, "window_start": 0, "window_end": 10, "window_time": 9, "left_t": 1,
                              "left_v": 1.0, "only_left": 5, "right_t": 2, "right_v": 2.0,
                              "right_window_start": 7}]


def test_join_waits_for_the_slow_side():
    # the left side runs far ahead in event time; its watermark alone would make every right record late
    left = [L(k, t) for t in range(0, 200) for k in ("x", "y")]
    right = [R(k, t) for t in range(0, 40, 4) for k in ("x", "y")]
    pairs, late_l, late_r = check(left, right, ms.tumbling(ns(10)), batches=(50, 1))
    assert late_l == [] == late_r
    assert len(pairs) == sum(1 for lr in left for rr in right
                             if lr["room"] == rr["site"] and lr["t"] // 10 == rr["t"] // 10)


def test_many_keys_join():
    left = [L(k, t) for t in range(0, 60, 7) for k in range(3000)]
    right = [R(k, t) for t in range(3, 60, 11) for k in range(0, 3000, 2)]
    pairs, _, _ = check(left, right, ms.sliding(ns(20), ns(10)), lateness=5, delays=(5, 5), batches=(4096, 999))
    assert len(pairs) > 10_000


@st.composite
def sides(draw):
    keys = draw(st.sampled_from([[1], [1, 2, 3], ["a", "bb"]]))

    def stream(make):
        steps = draw(st.lists(st.tuples(st.integers(0, len(keys) - 1), st.integers(0, 5),
                                        st.one_of(st.just(0), st.integers(0, 20), st.integers(15, 50))),
                                 min_size=1, max_size=40))
        t, out = 0, []
        for i, (ki, step, back) in enumerate(steps):
            t += step
            out.append(make(keys[ki], t - back, i))
        return out

    return stream(L), stream(R)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lr=sides(), spec=st.sampled_from([ms.tumbling(ns(10)), ms.sliding(ns(20), ns(10)), ms.sliding(ns(10), ns(4))]),
       lateness=st.sampled_from([0, 8, 25]), delays=st.sampled_from([(0, 0), (5, 0), (0, 12)]),
       batches=st.sampled_from([(1, 1), (3, 1), (1, 7), (1000, 1000)]))
def test_random_streams_match_the_reference(lr, spec, lateness, delays, batches):
    check(*lr, spec, lateness, delays, batches)
