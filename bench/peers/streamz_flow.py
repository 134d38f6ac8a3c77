"""The canonical workload on streamz, run by bench/peers.py inside the peers' own virtualenv (never microstream's).

streamz has no event-time windows, so they are written here, correctly: the source emits batches of 1000
records with the batch's largest event time (the watermark: records arrive in time order, lateness 0); a map
drops values outside [-50, 150]; an `accumulate` keeps count/sum/min/max per (10 s window aligned to the Unix
epoch, sensor) and emits a window once the watermark has reached its end; the end of the input flushes the
rest. Aggregates go to OUT.npz.

    python streamz_flow.py INPUT.npz OUT
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from streamz import Stream
from tumbling import BATCH, HI, LO, WINDOW_NS, fold, new

END = object()  # end of input: the watermark goes to +infinity


def _tumbling(state: dict, item: object) -> tuple[dict, list]:
    """One batch into the open windows (start -> sensor -> [n, sum, min, max]); returns the windows it closes."""
    if item is END:
        watermark = math.inf
    else:
        rows, watermark = item  # type: ignore[misc]
        for r in rows:
            s, t = r[0], r[1]
            start = t // WINDOW_NS * WINDOW_NS
            per_sensor = state.get(start)
            if per_sensor is None:
                per_sensor = state[start] = {}
            a = per_sensor.get(s)
            if a is None:
                a = per_sensor[s] = new()
            fold(a, r)
    closed = []
    for start in [w for w in state if w + WINDOW_NS <= watermark]:
        for s, a in state.pop(start).items():
            closed.append((s, start, a[0], a[1] / a[0], a[2], a[3]))
    return state, closed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("out")
    args = ap.parse_args()
    with np.load(args.input) as data:
        sensor, t, value = data["sensor"], data["time"], data["value"]
    results: list = []
    source = Stream()
    (source.map(lambda b: b if b is END else ([r for r in b[0] if LO <= r[2] <= HI], b[1]))
     .accumulate(_tumbling, start={}, returns_state=True)
     .flatten()
     .sink(results.append))
    start = time.time()
    for i in range(0, len(t), BATCH):
        ts = t[i:i + BATCH].tolist()
        source.emit((list(zip(sensor[i:i + BATCH].tolist(), ts, value[i:i + BATCH].tolist(), strict=True)),
                     max(ts)))
    source.emit(END)
    end = time.time()
    cols = list(zip(*results, strict=True)) if results else [[]] * 6
    np.savez(args.out, **{k: np.asarray(c, dtype=d) for k, c, d in zip(
        ("sensor", "start", "n", "mean", "min", "max"), cols,
        (np.int64, np.int64, np.int64, np.float64, np.float64, np.float64), strict=True)}, late=np.zeros(0, np.int64))
    print(json.dumps({"start": start, "end": end}))


if __name__ == "__main__":
    main()
