"""Processing-time windows (an explicit opt-in): records are grouped by when they arrive, and windows
fire on the clock even when no record comes."""

from __future__ import annotations

import microstream as ms


def test_processing_time_windows_fire_on_the_clock():
    readings = iter(range(1000))
    p = ms.Pipeline("clock")
    out = ms.sinks.collect()
    src = p.poll(lambda: {"room": "lab", "v": float(next(readings))}, every=0.02, limit=25, schema={
        "room": "U", "v": "float64"})
    src.key_by("room").window(ms.tumbling(seconds=0.1), time="processing").aggregate(n=ms.agg.count()).sink(out)
    p.run()
    rows = out.records()
    assert sum(r["n"] for r in rows) == 25           # every reading counted once
    assert len(rows) >= 3                            # spread over several 100 ms windows of wall clock
    starts = [r["window_start"] for r in rows]
    assert starts == sorted(starts) and all(s % 100_000_000 == 0 for s in starts)
