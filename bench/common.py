"""Helpers shared by the benchmarks: timing, JSON results, side-by-side tables."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def best_of(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, float, Any]:
    """(median seconds, min seconds, last result) over `repeat` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "platform": platform.platform()}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_pipeline(rng: Any, n_operators: int, topology: Any) -> Any:
    """A `Pipeline` of about `n_operators` operators: one source per sensor (named after it, so pinned there),
    each followed by filters and maps, some keyed windows (parallelism 2), unions of a few streams, sinks.
    (Built through the public API, so it lives here rather than in `microstream.placement.synthetic`, which is
    below the API.)"""
    import microstream as ms

    p = ms.Pipeline("random")
    sensors = [s.name for s in topology.sensors] or ["src"]
    rows = [{"t": 0, "k": 1, "v": 1.0}]
    count = 0
    streams: list[Any] = []
    n_sources = 0
    while count < n_operators:
        name = sensors[n_sources] if n_sources < len(sensors) else f"src{n_sources}"
        n_sources += 1
        s = p.from_iterable(rows, time="t", name=name)
        count += 1
        for _ in range(int(rng.integers(1, 5))):
            s = s.filter(lambda b: b["v"] > 0) if rng.random() < 0.5 else s.map(lambda b: {"k": b["k"], "v": b["v"]})
            count += 1
        if rng.random() < 0.3:
            w = s.key_by("k").window(ms.tumbling(seconds=10)).aggregate(v=ms.agg.mean("v")).with_parallelism(2)
            w.sink(ms.sinks.collect())
            count += 3
            continue
        streams.append(s)
        if len(streams) >= 3 and rng.random() < 0.4:
            merged = p.union(*streams[-3:])
            merged.sink(ms.sinks.collect())
            count += 2
    for s in streams:
        if not any(True for _ in p.graph.consumers(s.node.id)):
            s.sink(ms.sinks.collect())
            count += 1
    return p
