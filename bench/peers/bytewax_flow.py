"""The canonical workload on Bytewax, run by bench/peers.py inside the peers' own virtualenv (never microstream's).

Reads the input columns from an .npz, drops values outside [-50, 150], keys by sensor, folds 10 s tumbling
event-time windows (count, sum, min, max; mean = sum / count at the end, as every other configuration does)
and writes each worker's aggregates to `<out>.w<i>.npz`. Event time: `EventClock` with a frozen "system"
clock, so the watermark is the largest event time seen (no wall-clock drift pushing records late while a
loaded machine stalls); windows aligned to the Unix epoch, as microstream's are. With several workers each
reads the sensors it owns (sensor % workers), like a topic partitioned by key, so each key's records arrive in
input order and its sums are added in the same order as everywhere else.

    python bytewax_flow.py INPUT.npz OUT [--process I --addresses A;B --barrier DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from tumbling import BATCH, HI, LO, WINDOW_NS, fold, new

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Rows(StatelessSourcePartition):
    def __init__(self, cols: tuple[np.ndarray, ...]) -> None:
        self._cols = cols
        self._i = 0

    def next_batch(self) -> list:
        i = self._i
        if i >= len(self._cols[0]):
            raise StopIteration
        self._i = i + BATCH
        return list(zip(*(c[i:i + BATCH].tolist() for c in self._cols), strict=True))


class Input(DynamicSource):
    """Each worker reads the records of the sensors it owns, in input order, 1000 at a time."""

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self._cols = cols

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Rows:
        s, t, v = self._cols["sensor"], self._cols["time"], self._cols["value"]
        if worker_count > 1:
            mine = s % worker_count == worker_index
            s, t, v = s[mine], t[mine], v[mine]
        return _Rows((s, t, v))


class _Save(StatelessSinkPartition):
    def __init__(self, path: str) -> None:
        self._path = path
        self._rows: list = []

    def write_batch(self, items: list) -> None:
        self._rows.extend(items)

    def close(self) -> None:
        cols = list(zip(*self._rows, strict=True)) if self._rows else [[]] * 7
        names = ("sensor", "start", "n", "mean", "min", "max", "late")
        types = (np.int64, np.int64, np.int64, np.float64, np.float64, np.float64, np.int64)
        np.savez(self._path, **{k: np.asarray(c, dtype=d) for k, c, d in zip(names, cols, types, strict=True)})


class Output(DynamicSink):
    def __init__(self, out: str) -> None:
        self._out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Save:
        return _Save(f"{self._out}.{step_id}.w{worker_index}.npz")


def _merge(a: list, b: list) -> list:  # tumbling windows never merge; fold_window wants one
    return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])]


def flow(cols: dict[str, np.ndarray], out: str) -> Dataflow:
    f = Dataflow("canonical")
    rows = op.input("input", f, Input(cols))
    kept = op.filter("range", rows, lambda r: LO <= r[2] <= HI)
    keyed = op.key_on("key_by_sensor", kept, lambda r: str(r[0]))
    frozen = EPOCH  # the "system" clock never moves: watermark = largest event time seen
    clock = EventClock(lambda r: EPOCH + timedelta(microseconds=r[1] // 1000), wait_for_system_duration=timedelta(0),
                       now_getter=lambda: frozen, to_system_utc=lambda _t: None)
    windows = fold_window("tumbling", keyed, clock, TumblingWindower(timedelta(seconds=10), EPOCH), new, fold,
                          _merge)
    result = op.map("finish", windows.down, lambda kv: (int(kv[0]), kv[1][0] * WINDOW_NS, kv[1][1][0],
                                                        kv[1][1][1] / kv[1][1][0], kv[1][1][2], kv[1][1][3], 0))
    late = op.map("late_rows", windows.late, lambda kv: (int(kv[0]), 0, 0, 0.0, 0.0, 0.0, 1))
    op.output("aggregates", op.merge("all", result, late), Output(out))
    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("--process", type=int)
    ap.add_argument("--addresses")
    ap.add_argument("--barrier", help="directory: every process marks itself ready there, all start together")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    with np.load(args.input) as data:
        cols = {k: data[k] for k in ("sensor", "time", "value")}
    f = flow(cols, args.out)
    if args.barrier:  # the processes start (import, load) at different times: time them from a common start
        Path(args.barrier, f"ready.{args.process}").touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(args.barrier)) < args.processes and time.monotonic() < deadline:
            time.sleep(0.001)
    start = time.time()
    if args.addresses:
        cli_main(f, workers_per_process=1, process_id=args.process, addresses=args.addresses.split(";"))
    else:
        cli_main(f)
    print(json.dumps({"start": start, "end": time.time()}))


if __name__ == "__main__":
    main()
