"""Keyed event-time windows checked against a record-at-a-time reference model of the documented semantics.

The model (`RefWindows`) walks records in arrival order, each with the watermark in force when it arrived:
- a window [s, e) fires (is emitted) when the watermark reaches e;
- a record is too late for a window when e + lateness <= watermark; with no window left it goes to `.late`;
- a record for an already fired window within lateness updates it and re-emits its full result at once;
- a fired window is forgotten when e + lateness <= watermark; at the end of the stream every window fires;
- a session record at t covers [t, t + gap); sessions that touch or overlap merge;
- every result says its pane: `on_time` (fired by the watermark), `late_update` (re-emitted at a late record),
  `retract` (an emitted session that grows or merges is withdrawn, with its old bounds and values, first).
`interleaved_events` reproduces the per-record watermarks the local runtime gives when several sources feed
one operator (each source polled in turn, one batch at a time; watermark = minimum over the inputs).
"""

from __future__ import annotations

import csv
import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from tests.helpers import dataset, ns

MIN = int(np.iinfo(np.int64).min)
MAX = int(np.iinfo(np.int64).max)


# -- aggregates (built once: every distinct reduce() function is compiled by numba) ----------------------

def sumsq(acc, x):
    return acc + x * x


def add(a, b):
    return a + b


def absmax(acc, x):
    return acc if acc > abs(x) else abs(x)


AGGS = dict(
    n=ms.agg.count(), total=ms.agg.sum("v"), avg=ms.agg.mean("v"), lo=ms.agg.min("v"), hi=ms.agg.max("v"),
    var=ms.agg.var("v"), pvar=ms.agg.var("v", ddof=0), sd=ms.agg.std("v"), first=ms.agg.first("v"),
    last=ms.agg.last("v"), wavg=ms.agg.mean("w"), sq=ms.agg.reduce("v", sumsq, init=0.0, merge=add),
    peak=ms.agg.reduce("w", absmax),
)
LIGHT_AGGS = dict(n=ms.agg.count(), total=ms.agg.sum("v"), hi=ms.agg.max("v"),
                  sq=ms.agg.reduce("v", sumsq, merge=add))


def full_aggs(recs: list[dict]) -> dict:
    """What AGGS should give for the records of one window (in arrival order)."""
    vs = [r["v"] for r in recs]
    n = len(vs)
    mean = sum(vs) / n
    m2 = sum((x - mean) ** 2 for x in vs)
    t_first = min(r["t"] for r in recs)
    t_last = max(r["t"] for r in recs)
    sq = peak = 0.0
    for r in recs:
        sq = sumsq(sq, r["v"])
        peak = absmax(peak, r["w"])
    var = m2 / (n - 1) if n > 1 else math.nan
    return dict(n=n, total=sum(vs), avg=mean, lo=min(vs), hi=max(vs), var=var, pvar=m2 / n,
                sd=math.sqrt(var) if n > 1 else math.nan,
                first=next(r["v"] for r in recs if r["t"] == t_first),       # earliest time, first arrival
                last=[r["v"] for r in recs if r["t"] == t_last][-1],         # latest time, last arrival
                wavg=sum(r["w"] for r in recs) / n, sq=sq, peak=peak)


def light_aggs(recs: list[dict]) -> dict:
    sq = 0.0
    for r in recs:
        sq = sumsq(sq, r["v"])
    return dict(n=len(recs), total=sum(r["v"] for r in recs), hi=max(r["v"] for r in recs), sq=sq)


# -- the reference model ------------------------------------------------------------------------------

class _Win:
    __slots__ = ("start", "end", "recs", "fired")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.recs, self.fired = start, end, [], False


def windows_of(t: int, spec: ms.WindowSpec) -> list[tuple[int, int]]:
    """Every tumbling/sliding window [s, e) that contains t."""
    out = []
    w = (t - spec.offset) // spec.slide
    while True:
        s = w * spec.slide + spec.offset
        if s + spec.size <= t:
            return out
        out.append((s, s + spec.size))
        w -= 1


class RefWindows:
    def __init__(self, spec: ms.WindowSpec, lateness: int = 0, key: str = "k", aggregate=full_aggs) -> None:
        self.spec, self.lateness, self.key, self.aggregate = spec, lateness, key, aggregate
        self.wm = MIN
        self.open: dict = {}   # key -> {start: window} (tumbling/sliding) or [session, ...]
        self.out: list[dict] = []
        self.late: list[dict] = []

    def _emit(self, k, w: _Win, pane: str) -> None:
        assert w.recs, "the model never emits an empty window"
        self.out.append({self.key: k, "window_start": w.start, "window_end": w.end, "window_time": w.end - 1,
                         "pane": pane, **self.aggregate(w.recs)})
        w.fired = pane != "retract"

    def advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        session = self.spec.kind == "session"
        for k, wins in self.open.items():
            for w in list(wins if session else wins.values()):
                if not w.fired and w.end <= wm:
                    self._emit(k, w, "on_time")
                if w.fired and w.end + self.lateness <= wm:  # forgotten
                    if session:
                        wins.remove(w)
                    else:
                        del wins[w.start]

    def record(self, r: dict, wm: int) -> None:
        self.advance(wm)
        if self.spec.kind == "session":
            self._session_record(r)
            return
        k, wins = r[self.key], self.open.setdefault(r[self.key], {})
        accepted = False
        for s, e in windows_of(r["t"], self.spec):
            if e + self.lateness <= self.wm:
                continue  # too late for this window
            w = wins.get(s)
            if w is None:
                w = wins[s] = _Win(s, e)
            w.recs.append(r)
            accepted = True
            if e <= self.wm:  # already past its end: emit the updated result now
                self._emit(k, w, "late_update")
        if not accepted:
            self.late.append(r)

    def _session_record(self, r: dict) -> None:
        k, t, gap = r[self.key], r["t"], self.spec.size
        sessions = self.open.setdefault(k, [])
        touching = [w for w in sessions if w.start <= t + gap and t <= w.end]
        if not touching:
            if t + gap + self.lateness <= self.wm:
                self.late.append(r)
                return
            merged = _Win(t, t + gap)
        else:
            merged = _Win(min(t, *(w.start for w in touching)), max(t + gap, *(w.end for w in touching)))
            for w in touching:
                if w.fired and (w.start, w.end) != (merged.start, merged.end):
                    self._emit(k, w, "retract")
                merged.recs += w.recs
                sessions.remove(w)
            only = touching[0]
            # a fired session that a record lands inside (no growth, no merge) stays fired
            merged.fired = len(touching) == 1 and only.fired and (only.start, only.end) == (merged.start,
                                                                                          merged.end)
        merged.recs.append(r)
        sessions.append(merged)
        if merged.end <= self.wm:
            self._emit(k, merged, "late_update")

    def finish(self) -> RefWindows:
        self.advance(MAX)
        return self


def interleaved_events(sources: list[tuple[list[dict], int, int]], keep=None) -> list[tuple]:
    """(kind, port, record, watermark) events as an operator fed by `sources` sees them.

    `sources` is a list of (records, max_delay, batch_size). Like the local runtime: sources are polled in
    turn, one batch each; a record's watermark is min(its source's max event time so far - max_delay, the
    other inputs' watermarks); after each batch the source's watermark reaches the operator, whose watermark
    is the minimum over its inputs. Records for which `keep(record)` is false only move the watermark.
    """
    n = len(sources)
    in_wm, seen, pos, op_wm = [MIN] * n, [MIN] * n, [0] * n, MIN
    events: list[tuple] = []
    active = list(range(n))
    while active:
        for j in list(active):
            recs, delay, batch_size = sources[j]
            chunk = recs[pos[j]: pos[j] + batch_size]
            pos[j] += len(chunk)
            for r in chunk:
                seen[j] = max(seen[j], r["t"])
                wm = min([seen[j] - delay] + [in_wm[i] for i in range(n) if i != j])
                events.append(("rec", j, r, wm) if keep is None or keep(r) else ("wm", j, None, wm))
            wm = MAX if not chunk else seen[j] - delay
            if wm > in_wm[j]:
                in_wm[j] = wm
                if min(in_wm) > op_wm:
                    op_wm = min(in_wm)
                    events.append(("wm", None, None, op_wm))
            if not chunk:
                active.remove(j)
    return events


def reference(records, spec, lateness=0, max_delay=0, key="k", aggregate=full_aggs, keep=None,
              sources=None) -> RefWindows:
    events = interleaved_events(sources or [(records, max_delay, 1 << 30)], keep)
    ref = RefWindows(spec, lateness, key, aggregate)
    for kind, _, r, wm in events:
        if kind == "rec":
            ref.record(r, wm)
        else:
            ref.advance(wm)
    return ref.finish()


# -- running pipelines and comparing -----------------------------------------------------------------------

def run_windows(records, spec, lateness=0, max_delay=0, batch_size=1024, aggs=AGGS, key="k", keep=None):
    p = ms.Pipeline("windows")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    src = p.from_iterable(records, time="t", max_delay=ns(max_delay), batch_size=batch_size)
    if keep is not None:
        src = src.filter(keep)
    res = src.key_by(key).window(spec, lateness=ns(lateness)).aggregate(**aggs)
    res.sink(out)
    res.late.sink(late)
    p.run()
    return out.records(), late.records()


def _canon_value(v):
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def canon(rows: list[dict]) -> list[tuple]:
    """Order-free, NaN-safe form of a list of records (for exact comparisons)."""
    return sorted((tuple((k, _canon_value(v)) for k, v in sorted(r.items())) for r in rows), key=repr)


def _close(a, b) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    if isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_rows(got: list[dict], want: list[dict], key: str = "k") -> None:
    """Same multiset of window results; aggregates compared with a float tolerance. `got` is in emission
    order: a window emitted again (late update) must come later with more records, so the later row
    supersedes; a `retract` row withdraws the row in force for its key and bounds."""
    live: dict = {}
    for r in got:
        assert r["n"] >= 1, f"empty window emitted: {r}"
        assert r["window_time"] == r["window_end"] - 1
        assert r["window_start"] < r["window_end"]
        w = (repr(r[key]), r["window_start"], r["window_end"])
        if r["pane"] == "retract":
            assert live.pop(w, None) == r["n"], f"retraction of {w} does not match the row in force"
            continue
        assert r["pane"] == ("late_update" if w in live else r["pane"])
        assert r["n"] > live.get(w, 0), f"re-emission of {w} is not an update of the earlier row"
        live[w] = r["n"]

    def sort_key(r):
        return (repr(r[key]), r["window_start"], r["window_end"], r["n"], r["pane"])

    got, want = sorted(got, key=sort_key), sorted(want, key=sort_key)
    assert [sort_key(r) for r in got] == [sort_key(r) for r in want]
    for g, w in zip(got, want, strict=True):
        if g == w:  # fast path: identical (no NaN)
            continue
        assert set(g) == set(w), (g, w)
        bad = {name: (g[name], w[name]) for name in w if not _close(g[name], w[name])}
        assert not bad, f"window {sort_key(w)}: got/want {bad}"


def check_against_reference(records, spec, lateness=0, max_delay=0, batch_size=1024, aggs=AGGS, key="k"):
    got, late = run_windows(records, spec, lateness, max_delay, batch_size, aggs=aggs, key=key)
    ref = reference(records, spec, lateness, max_delay, key=key,
                    aggregate=full_aggs if aggs is AGGS else light_aggs)
    assert_rows(got, ref.out, key)
    assert canon(late) == canon(ref.late)
    return got, late


def rec(k, t, v, w=None):
    return {"k": k, "t": t, "v": float(v), "w": float(t % 5 - 2 if w is None else w)}


def panes(rows):
    return [(r["window_start"], r["window_end"], r["n"], r["pane"]) for r in rows]


def by_window(rows):
    """{(key, start, end): [n of each emission in order]}."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["k"], r["window_start"], r["window_end"]), []).append(r["n"])
    return out


# -- hand-checked cases (they also pin down the reference model) ------------------------------------------

def test_tumbling_out_of_order_within_and_beyond_max_delay():
    ts = [1, 5, 12, 3, 25, 8, 31, 2]          # wm = max so far - 5: 8 and 2 arrive at wm 20 and 26
    recs = [rec(1, t, t) for t in ts]
    got, late = check_against_reference(recs, ms.tumbling(ns(10)), max_delay=5)
    assert sorted(r["t"] for r in late) == [2, 8]
    assert sorted((r["window_start"], r["n"], r["total"]) for r in got) == [
        (0, 3, 9.0), (10, 1, 12.0), (20, 1, 25.0), (30, 1, 31.0)]


def test_out_of_order_within_max_delay_is_a_plain_groupby():
    rng = np.random.default_rng(7)
    base = np.arange(400) * 3
    ts = base - rng.integers(0, 30, size=len(base))          # never more than 30 ns behind the maximum
    keys = ["north", "s", "east-wing-long-name"]
    recs = [rec(keys[i % 3], int(t), int(rng.integers(-9, 10))) for i, t in enumerate(ts)]
    got, late = check_against_reference(recs, ms.tumbling(ns(25)), max_delay=30, batch_size=13)
    assert late == []
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["k"], r["t"] // 25 * 25), []).append(r)
    assert sorted((r["k"], r["window_start"], r["n"]) for r in got) == sorted(
        (k, s, len(v)) for (k, s), v in groups.items())
    for r in got:
        vs = [x["v"] for x in groups[(r["k"], r["window_start"])]]
        assert r["total"] == sum(vs) and r["lo"] == min(vs) and r["hi"] == max(vs)


def test_late_data_within_lateness_is_re_emitted_and_beyond_goes_to_late():
    # wm = max so far (max_delay 0); lateness 10
    ts = [1, 4, 12, 7, 25, 9, 18, 31, 15]
    recs = [rec(1, t, t) for t in ts]
    got, late = check_against_reference(recs, ms.tumbling(ns(10)), lateness=10)
    assert by_window(got) == {(1, 0, 10): [2, 3], (1, 10, 20): [1, 2], (1, 20, 30): [1], (1, 30, 40): [1]}
    assert [r["t"] for r in late] == [9, 15]
    last = {(r["window_start"]): r for r in got}   # the later row supersedes
    assert last[0]["total"] == 12.0 and last[10]["total"] == 30.0


def test_window_fires_when_the_watermark_reaches_its_end():
    # max_delay 0: the record at 10 moves the watermark to 10 = end of [0, 10), which fires before 10 is added
    got, late = check_against_reference([rec(1, t, t) for t in (9, 10, 9)], ms.tumbling(ns(10)))
    assert [(r["window_start"], r["n"]) for r in got] == [(0, 1), (10, 1)] and [r["t"] for r in late] == [9]
    recs = [rec(1, t, t) for t in (9, 10, 9, 11, 8)]
    got, late = check_against_reference(recs, ms.tumbling(ns(10)), lateness=1)
    assert [(r["window_start"], r["n"]) for r in got] == [(0, 1), (0, 2), (10, 2)]
    assert [r["t"] for r in late] == [8]   # 10 + 1 <= 11
    # sessions: [0, 10) fires at wm 10; within lateness the touching record 10 grows it to [0, 20), and so on
    # each time, the result in force is withdrawn first (a retract row with its old bounds)
    got, late = check_against_reference([rec(1, t, t) for t in (0, 10, 20, 9)], ms.session(ns(10)), lateness=5)
    assert panes(got) == [(0, 10, 1, "on_time"), (0, 10, 1, "retract"), (0, 20, 2, "on_time"),
                          (0, 20, 2, "retract"), (0, 30, 4, "on_time")]
    assert late == []
    # no lateness: [0, 10) is gone at wm 10, so 10 opens [10, 20), which 9 then extends to [9, 20)
    got, late = check_against_reference([rec(1, t, t) for t in (0, 10, 9, -5)], ms.session(ns(10)))
    assert [(r["window_start"], r["window_end"], r["n"]) for r in got] == [(0, 10, 1), (9, 20, 2)]
    assert [r["t"] for r in late] == [-5]   # [-5, 5) touches no live session and 5 <= wm 10


def test_count_only_aggregate():
    recs = [rec(i % 4, t, 0) for i, t in enumerate([5, 1, 17, 3, 40, 22, 8, 51, 60, 13, 2])]
    for spec in (ms.tumbling(ns(10)), ms.sliding(ns(20), ns(5)), ms.session(ns(6))):
        got, late = run_windows(recs, spec, lateness=12, max_delay=3, batch_size=2,
                                aggs={"n": ms.agg.count()})
        ref = reference(recs, spec, 12, 3, aggregate=lambda rs: {"n": len(rs)})
        assert_rows(got, ref.out)
        assert canon(late) == canon(ref.late)


def test_all_aggregates_and_first_last_ties():
    recs = [rec(1, 5, 1.0), rec(1, 5, 2.0), rec(1, 50, 3.0), rec(1, 50, 4.0), rec(1, 3, 5.0), rec(1, 3, 6.0),
            rec(1, 20, -7.5)]
    got, _ = check_against_reference(recs, ms.tumbling(ns(100)))
    (row,) = got
    vs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.5]
    assert row["n"] == 7 and row["total"] == sum(vs) and row["lo"] == -7.5 and row["hi"] == 6.0
    assert row["first"] == 5.0 and row["last"] == 4.0
    assert row["var"] == pytest.approx(np.var(vs, ddof=1)) and row["pvar"] == pytest.approx(np.var(vs))
    assert row["sd"] == pytest.approx(np.std(vs, ddof=1))
    assert row["sq"] == sum(x * x for x in vs)
    single, _ = run_windows([rec(2, 1, 4.0)], ms.tumbling(ns(10)))
    assert math.isnan(single[0]["var"]) and math.isnan(single[0]["sd"]) and single[0]["pvar"] == 0.0


def test_reduce_on_a_column_also_used_by_builtin_aggregates():
    recs = [rec(1, t, t % 4) for t in range(30)]
    aggs = dict(n=ms.agg.count(), total=ms.agg.sum("v"), hi=ms.agg.max("v"), sq=LIGHT_AGGS["sq"])
    got, _ = run_windows(recs, ms.tumbling(ns(10)), aggs=aggs)
    want = [[t % 4 for t in range(s, s + 10)] for s in (0, 10, 20)]
    assert [(r["n"], r["total"], r["sq"]) for r in got] == [(10, sum(w), sum(x * x for x in w)) for w in want]


def test_sliding_windows_and_no_empty_windows():
    recs = [rec(1, 0, 1), rec(2, 503, 3), rec(1, 1000, 2)]
    got, late = check_against_reference(recs, ms.sliding(ns(100), ns(10)))
    assert late == [] and len(got) == 30 and all(r["n"] == 1 for r in got)
    got, late = check_against_reference([rec(1, t, t) for t in (7, 3, 12, 40, 41, 2)], ms.sliding(ns(10), ns(5)),
                                        max_delay=8)
    # 2 arrives at wm 33: both its windows have ended, so it is late
    assert [r["t"] for r in late] == [2]
    assert sorted((r["window_start"], r["n"]) for r in got) == [
        (-5, 1), (0, 2), (5, 2), (10, 1), (35, 2), (40, 2)]


def test_session_gap_merging_and_bridging_out_of_order_record():
    # nothing fires before the end (max_delay 100): 15 and 20 bridge [15,25) and [30,40); 8 bridges the rest
    recs = [rec(1, t, t) for t in (0, 30, 15, 20, 8)] + [rec(2, t, t) for t in (0, 10, 100)]
    got, late = check_against_reference(recs, ms.session(ns(10)), max_delay=100)
    assert late == []
    assert sorted((r["k"], r["window_start"], r["window_end"], r["n"]) for r in got) == [
        (1, 0, 40, 5), (2, 0, 20, 2), (2, 100, 110, 1)]   # sessions that only touch (10 == 0 + gap) merge


def test_session_late_bridging_after_firing():
    # max_delay 0, lateness 50, gap 10
    recs = [rec(1, t, t) for t in (0, 30, 15, 22, 9, 100, 5)]
    got, late = check_against_reference(recs, ms.session(ns(10)), lateness=50)
    assert panes(got) == [
        (0, 10, 1, "on_time"),        # fired at wm 30
        # then, at wm 30 (rows emitted at one watermark come out in window-end order): 15 is late but within
        # lateness, emitted at once; 22 bridges [15,25) and [30,40), 9 bridges [0,10): both results withdrawn
        (0, 10, 1, "retract"),
        (15, 25, 1, "late_update"),
        (15, 25, 1, "retract"),
        (0, 40, 5, "on_time"),        # fired at wm 100
        (100, 110, 1, "on_time")]     # at the end
    assert [r["t"] for r in late] == [5]   # [0, 40) was forgotten at wm 100 (40 + 50 <= 100)


def test_session_record_inside_a_fired_session_re_emits():
    recs = [rec(1, t, t) for t in (0, 8, 30, 3, 70, 4)]
    got, late = check_against_reference(recs, ms.session(ns(10)), lateness=15)
    assert panes(got) == [(0, 18, 2, "on_time"), (0, 18, 3, "late_update"), (30, 40, 1, "on_time"),
                          (70, 80, 1, "on_time")]   # same bounds: the update replaces, nothing to withdraw
    assert [r["t"] for r in late] == [4]


def test_session_capacity_growth_many_open_sessions_per_key():
    recs = [rec(k, j * 100 + k, j) for j in range(12) for k in range(3)]
    recs += [rec(k, j * 100 + 50 + k, 1) for j in range(0, 12, 3) for k in range(3)]   # no bridge (gap 20)
    recs += [rec(0, j * 100 + 10, 2) for j in range(12)]                                   # extends, no merge
    check_against_reference(recs, ms.session(ns(20)), max_delay=10_000)
    # out of order, each offset first opens new sessions, then later ones bridge them into one
    bridge = recs + [rec(0, j * 100 + off, 3) for off in (65, 25, 85, 45) for j in range(11)]
    got, _ = check_against_reference(bridge, ms.session(ns(20)), max_delay=10_000)
    assert [(r["window_start"], r["window_end"]) for r in got if r["k"] == 0] == [(0, 1130)]


def test_str_keys_of_different_lengths():
    names = ["a", "bb", "a-much-longer-room-name", "ü-ñ"]
    recs = [rec(names[i % 4], i * 3, i) for i in range(40)]
    for spec in (ms.tumbling(ns(10)), ms.sliding(ns(20), ns(10)), ms.session(ns(4))):
        got, _ = check_against_reference(recs, spec, batch_size=3)
        assert {r["k"] for r in got} == set(names)


def test_filtered_records_still_move_the_watermark():
    # the filter drops the odd values; the kernels then see a selection mask
    recs = [rec(i % 3, t, t) for i, t in enumerate([1, 5, 13, 2, 22, 4, 35, 8, 11, 40, 3])]

    def keep(r):
        return r["v"] % 2 == 0

    for spec in (ms.tumbling(ns(10)), ms.sliding(ns(10), ns(5)), ms.session(ns(6))):
        for batch_size in (1, 4, 100):
            got, late = run_windows(recs, spec, lateness=5, max_delay=2, batch_size=batch_size,
                                    keep=lambda b: b["v"] % 2 == 0)
            ref = reference(recs, spec, lateness=5, max_delay=2, keep=keep)
            assert_rows(got, ref.out)
            assert canon(late) == canon(ref.late)


# -- property: any out-of-order stream, any batch size ------------------------------------------------------

SPECS = [ms.tumbling(ns(10)), ms.tumbling(ns(10), offset=ns(3)), ms.sliding(ns(20), ns(5)), ms.sliding(ns(15), ns(10)),
         ms.session(ns(7))]
KEY_SETS = [[0], [0, 1, 2], [5, 1 << 21, -3], ["a", "bb", "ccc"]]


@st.composite
def streams(draw):
    keys = draw(st.sampled_from(KEY_SETS))
    behind = st.one_of(st.just(0), st.integers(0, 25), st.integers(20, 70))   # how far out of order
    steps = draw(st.lists(st.tuples(st.integers(0, len(keys) - 1), st.integers(0, 6), behind),
                          min_size=1, max_size=80))
    t = draw(st.integers(-40, 40))
    recs = []
    for ki, step, back in steps:
        t += step
        # values are a function of (key, time), so ties in time cannot make first/last ambiguous
        recs.append(rec(keys[ki], t - back, (t - back) * 7 % 23 - 11 + ki))
    return recs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=streams(), spec=st.sampled_from(SPECS), max_delay=st.sampled_from([0, 5, 20]),
       lateness=st.sampled_from([0, 10, 35]), use_filter=st.booleans())
def test_any_batch_size_gives_the_reference_result(recs, spec, max_delay, lateness, use_filter):
    keep = (lambda b: b["w"] != 0) if use_filter else None
    runs = [run_windows(recs, spec, lateness, max_delay, batch_size, keep=keep)
            for batch_size in (1, 7, 1000)]
    assert canon(runs[0][0]) == canon(runs[1][0]) == canon(runs[2][0])
    assert canon(runs[0][1]) == canon(runs[1][1]) == canon(runs[2][1])
    ref = reference(recs, spec, lateness, max_delay, keep=(lambda r: r["w"] != 0) if use_filter else None)
    assert_rows(runs[0][0], ref.out)
    assert canon(runs[0][1]) == canon(ref.late)


# -- many keys, many open windows, big flushes ---------------------------------------------------------------

def _arrays(keys, ts):
    k = np.asarray(keys, dtype=np.int64)
    t = np.asarray(ts, dtype=np.int64)
    return {"k": k, "t": t, "v": ((k * 3 + t) % 11).astype(np.float64), "w": np.zeros(len(k))}


def _run_arrays(cols, spec, lateness, max_delay, batch_size, aggs=LIGHT_AGGS):
    p = ms.Pipeline("big")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    res = p.from_arrays(cols, time="t", max_delay=ns(max_delay), batch_size=batch_size).key_by("k").window(
        spec, lateness=ns(lateness)).aggregate(**aggs)
    res.sink(out)
    res.late.sink(late)
    p.run()
    return out.records(), late.records()


def test_many_keys_many_open_windows_and_output_buffer_flushes():
    nk = 5000
    keys, ts = [], []
    for base in (0, 25, 50):                       # 30 open sliding windows per key, nothing fired
        for k in range(nk):
            keys.append(k)
            ts.append(base + k % 3)
    keys.append(0)
    ts.append(170)                                 # one record fires ~150k windows
    for k in range(0, nk, 2):                      # late, within lateness for some of their windows
        keys.append(k)
        ts.append(60 + k % 5)
    keys.append(0)
    ts.append(400)                                 # forgets every window
    for k in range(0, nk, 3):                      # beyond lateness: late stream
        keys.append(k)
        ts.append(k % 7)
    cols = _arrays(keys, ts)
    recs = [dict(k=int(k), t=int(t), v=float(v), w=0.0) for k, t, v in zip(cols["k"], cols["t"], cols["v"],
                                                                        strict=True)]
    spec, lateness = ms.sliding(ns(100), ns(5)), 100
    ref = reference(recs, spec, lateness, aggregate=light_aggs)
    assert len(ref.out) > 150_000 and len(ref.late) == len(range(0, nk, 3))
    results = [_run_arrays(cols, spec, lateness, 0, bs) for bs in (65536, 1000)]
    for got, late in results:
        assert_rows(got, ref.out)
        assert canon(late) == canon(ref.late)


def test_many_keys_many_sessions_and_late_bridges():
    nk = 5000
    keys = [k for j in range(14) for k in range(nk)]
    ts = [j * 100 + k % 5 for j in range(14) for k in range(nk)]   # 14 open sessions per key (gap 60)
    keys.append(0)
    ts.append(11_400)                              # wm 1_400: 70k sessions fire at this record
    for k in range(0, nk, 2):                      # bridges [x, x+60) and [x+100, x+160): re-emitted at once
        keys.append(k)
        ts.append(50 + k % 5)
    keys.append(0)
    ts.append(30_000)                              # wm 20_000 forgets everything
    for k in range(0, nk, 7):
        keys.append(k)
        ts.append(500)
    cols = _arrays(keys, ts)
    recs = [dict(k=int(k), t=int(t), v=float(v), w=0.0) for k, t, v in zip(cols["k"], cols["t"], cols["v"],
                                                                        strict=True)]
    spec, lateness = ms.session(ns(60)), 5_000
    ref = reference(recs, spec, lateness, max_delay=10_000, aggregate=light_aggs)
    assert len(ref.out) >= 70_000 + nk // 2 and len(ref.late) == len(range(0, nk, 7))
    for bs in (65536, 999):
        got, late = _run_arrays(cols, spec, lateness, 10_000, bs)
        assert_rows(got, ref.out)
        assert canon(late) == canon(ref.late)


# -- watermark held back by the slowest input ----------------------------------------------------------------

def _union_pipeline(fast, slow, fast_batch, slow_batch, spec, lateness, delays=(0, 0)):
    p = ms.Pipeline("union")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    a = p.from_iterable(fast, time="t", max_delay=ns(delays[0]), batch_size=fast_batch)
    b = p.from_iterable(slow, time="t", max_delay=ns(delays[1]), batch_size=slow_batch)
    res = a.union(b).key_by("k").window(spec, lateness=ns(lateness)).aggregate(**AGGS)
    res.sink(out)
    res.late.sink(late)
    p.run()
    return out.records(), late.records()


def test_union_windows_wait_for_the_slow_input():
    fast = [rec("room", t, 1) for t in range(100)]            # 5 records a round
    slow = [rec("room", t, 100) for t in range(0, 60, 2)]     # 1 record a round: far behind in event time
    got, late = _union_pipeline(fast, slow, 5, 1, ms.tumbling(ns(10)), 0)
    assert late == []   # with the fast input's watermark alone, most slow records would be late
    assert sorted((r["window_start"], r["n"], r["total"]) for r in got) == [
        (s, 10 + (5 if s < 60 else 0), 10.0 + (500.0 if s < 60 else 0.0)) for s in range(0, 100, 10)]
    ref = reference(None, ms.tumbling(ns(10)), sources=[(fast, 0, 5), (slow, 0, 1)])
    assert_rows(got, ref.out)


def test_union_lateness_follows_the_minimum_watermark():
    rng = np.random.default_rng(3)
    fast_t = np.arange(300) - rng.integers(0, 25, 300)
    slow_t = np.arange(0, 300, 4) - rng.integers(0, 60, 75)
    fast = [rec(int(i % 4), int(t), i % 9) for i, t in enumerate(fast_t)]
    slow = [rec(int(i % 4), int(t), i % 5) for i, t in enumerate(slow_t)]
    for spec, lateness in ((ms.tumbling(ns(20)), 0), (ms.sliding(ns(20), ns(10)), 15), (ms.session(ns(5)), 10)):
        for fb, sb, delays in ((7, 1, (10, 5)), (50, 3, (0, 20)), (1, 1, (5, 5))):
            got, late = _union_pipeline(fast, slow, fb, sb, spec, lateness, delays)
            ref = reference(None, spec, lateness, sources=[(fast, delays[0], fb), (slow, delays[1], sb)])
            assert_rows(got, ref.out)
            assert canon(late) == canon(ref.late)


# -- a real dataset ------------------------------------------------------------------------------------------

def test_uci_occupancy_ten_minute_mean_co2():
    path = dataset("uci-occupancy/datatraining.txt")
    epoch = dt.datetime(1970, 1, 1)
    ts, co2 = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            when = dt.datetime.strptime(row["date"], "%Y-%m-%d %H:%M:%S")
            ts.append((when - epoch) // dt.timedelta(microseconds=1) * 1000)
            co2.append(float(row["CO2"]))
    cols = {"room": np.full(len(ts), "lab"), "t": np.asarray(ts, dtype=np.int64), "co2": np.asarray(co2)}
    p = ms.Pipeline("uci")
    out, late = ms.sinks.collect(), ms.sinks.collect()
    src = p.from_arrays(cols, time="t", max_delay=ms.duration(minutes=5), batch_size=1000)
    res = src.key_by("room").window(ms.tumbling(minutes=10)).aggregate(
        n=ms.agg.count(), avg=ms.agg.mean("co2"), peak=ms.agg.max("co2"))
    res.sink(out)
    res.late.sink(late)
    p.run()
    size = ms.duration(minutes=10)
    groups: dict[int, list[float]] = {}
    for t, c in zip(ts, co2, strict=True):
        groups.setdefault(t // size * size, []).append(c)
    got = out.records()
    assert late.records() == []
    assert len(got) == len(groups) > 100
    for r in got:
        vals = groups[r["window_start"]]
        assert r["room"] == "lab" and r["window_end"] == r["window_start"] + size
        assert r["n"] == len(vals) and r["peak"] == max(vals)
        assert r["avg"] == pytest.approx(sum(vals) / len(vals), rel=1e-12)


@pytest.mark.parametrize("spec", [ms.tumbling(seconds=1), ms.sliding({"seconds": 3}, {"seconds": 1})])
def test_windows_that_fire_together_come_out_in_time_order(spec):
    """One watermark jump fires many windows of many keys at once (here: all of them, at the end). They must come
    out in time order, so that order-sensitive operators downstream (stateful_map, change alerts) see each key's
    windows as they would one by one. Times start at 37 s so that the windows wrap around the kernel's ring."""
    S = ms.duration(seconds=1)
    records = [{"t": (37 + i) * S, "k": k, "v": float(i)} for i in range(40) for k in ("a", "b", "c")]
    p = ms.Pipeline("order")
    out = ms.sinks.collect()
    (p.from_iterable(records, time="t", max_delay=ms.duration(seconds=1000)).key_by("k")
     .window(spec).aggregate(last=ms.agg.last("v"), name="w")
     .stateful_map(ms.state.delta, "last", out="step").sink(out))
    p.run()
    got = out.batch()
    assert np.all(np.diff(got["window_end"]) >= 0)
    for k in ("a", "b", "c"):
        mine = got["k"] == k
        ends = got["window_end"][mine]
        assert len(ends) == 40 + (2 if spec.size > S else 0) and np.all(np.diff(ends) > 0)
        steps = got["step"][mine]
        assert np.isnan(steps[0]) and np.all(steps[1:] >= 0)  # `last` only grows when windows arrive in order


# -- your own reducer, and an aggregate() with nothing to aggregate: build-time errors naming the operator --------

def _keyed_windows():
    recs = [{"room": "a", "t": i * 10**9, "co2": 400.0 + i} for i in range(3)]
    return ms.Pipeline("reduce").from_iterable(recs, time="t").key_by("room").window(ms.tumbling("10s"))


@pytest.mark.parametrize(("fn", "problem"), [
    (lambda acc, x: {"acc": acc}, "reduce('co2') function returned dict"),
    (lambda acc: acc, "reduce('co2') function must take 2 arguments"),
])
def test_a_reducer_numba_could_not_compile_into_the_window_fails_at_build_time(fn, problem):
    with pytest.raises(ms.PipelineError) as err:
        _keyed_windows().aggregate(peak=ms.agg.reduce("co2", fn), name="peak")
    assert err.value.operator == "peak" and problem in err.value.problem and "fn(acc, x) -> float" in err.value.fix


def test_a_reducer_with_a_bad_merge_fails_at_build_time():
    with pytest.raises(ms.PipelineError, match="reduce\\('co2'\\) merge must take 2 arguments") as err:
        _keyed_windows().aggregate(total=ms.agg.reduce("co2", lambda a, x: a + x, merge=lambda a: a), name="total")
    assert err.value.operator == "total"


def test_aggregate_with_no_aggregates_names_the_operator():
    with pytest.raises(ms.PipelineError, match="needs at least one aggregate") as err:
        _keyed_windows().aggregate(name="nothing")
    assert err.value.operator == "nothing"
