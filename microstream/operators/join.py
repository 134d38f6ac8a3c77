"""Windowed inner join of two keyed streams.

Each side's records are buffered with the windows they fall in. When the watermark (the minimum
over both inputs) passes a window's end, every pair of left and right records with the same key in
that window is emitted, vectorised over the whole window. Records stay buffered until the window's
allowed lateness has passed: a late record within it is paired at once with the other side's
buffered records, so each pair is emitted exactly once. Records later than that go to `late`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import TIME_DTYPE, Schema
from ..core.time import MAX_TIME, MIN_TIME
from ..windows import WindowSpec
from .base import DEAD, LATE, OUT, Emit, Operator
from .kernels.keys import KeyIndex

_WIN = "__window_start"
_SLOT = "__slot"
LATE_RIGHT = "late_right"


class WindowJoin(Operator):
    kind = "window_join"
    keyed = True
    cpu_us = 1.5
    selectivity = 0.5
    n_inputs = 2

    def __init__(self, spec: WindowSpec, lateness: int = 0) -> None:
        self.spec = spec
        self.lateness = int(lateness)

    def describe(self) -> str:
        return f"{self.spec.describe()} inner join on key"

    def output_ports(self) -> tuple[str, ...]:
        return (OUT, LATE, LATE_RIGHT)

    def side_ports(self) -> tuple[str, ...]:
        return (LATE, LATE_RIGHT, DEAD)

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if self.spec.kind == "session":
            raise PipelineError(name, "session windows cannot be used for a join",
                                "join on tumbling or sliding windows")
        left, right = inputs
        keys: list[str] = []
        for side, s in (("left", left), ("right", right)):
            if s.key is None:
                raise PipelineError(name, f"the {side} stream of the join has no key",
                                    f"call .key_by(...) on the {side} stream before .join(...)")
            if s.time is None:
                raise PipelineError(name, f"the {side} stream of the join has no event time",
                                    "give its source a time column (time='...')")
            keys.append(s.key)
        lkey, rkey = keys
        if left.dtype(lkey).kind != right.dtype(rkey).kind:
            raise PipelineError(name, f"join keys differ in type: '{lkey}' is {left.dtype(lkey)}, "
                                      f"'{rkey}' is {right.dtype(rkey)}",
                                "map one key to the other's type")
        self.left_names, self.right_names = self._output_names(left, right)
        fields: list[tuple[str, Any]] = [(lkey, left.dtype(lkey)), ("window_start", TIME_DTYPE),
                                         ("window_end", TIME_DTYPE), ("window_time", TIME_DTYPE)]
        fields += [(out, left.dtype(col)) for col, out in self.left_names.items()]
        fields += [(out, right.dtype(col)) for col, out in self.right_names.items()]
        out_schema = Schema.of(fields, time="window_time", key=left.key)
        return {OUT: out_schema, LATE: left, LATE_RIGHT: right}

    @staticmethod
    def _output_names(left: Schema, right: Schema) -> tuple[dict[str, str], dict[str, str]]:
        taken = {left.key, "window_start", "window_end", "window_time"}
        lcols = [c for c in left.names if c != left.key]
        rcols = [c for c in right.names if c != right.key]
        clash = (set(lcols) & set(rcols)) | (taken & (set(lcols) | set(rcols)))
        lmap = {c: f"left_{c}" if c in clash else c for c in lcols}
        rmap = {c: f"right_{c}" if c in clash else c for c in rcols}
        return lmap, rmap

    def open(self, ctx) -> None:
        super().open(ctx)
        self.schemas = ctx.input_schemas
        self.keys = KeyIndex(self.schemas[0].dtype(self.schemas[0].key))
        self.buffers: list[list[Batch]] = [[], []]
        self.fired_until = MIN_TIME  # windows ending at or before this have been emitted

    # -- records in ---------------------------------------------------------------------------------
    def process(self, port: int, batch: Batch) -> Emit:
        if batch.num_rows == 0:
            return []
        s = self.schemas[port]
        batch = batch.compact()
        t = batch[s.time]
        wm = batch.wm
        other = self.ctx.input_watermarks[1 - port]
        wm = np.minimum(wm, other) if wm is not None else np.full(len(t), other)
        rows, starts = self._assign(t)
        alive = starts + self.spec.size + self.lateness > wm[rows]
        emitted: Emit = []
        accepted = np.zeros(len(t), dtype=bool)
        accepted[rows[alive]] = True
        if (~accepted).any():
            late = batch.filter(~accepted)
            emitted.append((LATE if port == 0 else LATE_RIGHT, late))
        rows, starts = rows[alive], starts[alive]
        if len(rows) == 0:
            return emitted
        slots = self.keys.slots(batch[s.key])
        entry = Batch({**{c: batch[c][rows] for c in batch.names}, _WIN: starts, _SLOT: slots[rows]})
        # windows already fired: pair the late records with what the other side holds now
        late_in = starts + self.spec.size <= self.fired_until
        if late_in.any():
            other_rows = self._buffered(1 - port)
            if other_rows is not None:
                pairs = entry.filter(late_in)
                left, right = (pairs, other_rows) if port == 0 else (other_rows, pairs)
                out = self._pairs(left, right)
                if out is not None:
                    emitted.append((OUT, out))
        self.buffers[port].append(entry)
        return emitted

    def _assign(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, window start) for every window each record falls in."""
        size, slide, off = self.spec.size, self.spec.slide, self.spec.offset
        last = (t - off) // slide
        k = -(-size // slide)
        rows = np.repeat(np.arange(len(t)), k)
        w = np.repeat(last, k) - np.tile(np.arange(k), len(t))
        starts = w * slide + off
        inside = starts + size > np.repeat(t, k)
        return rows[inside], starts[inside]

    def _buffered(self, port: int) -> Batch | None:
        live = [b for b in self.buffers[port] if b.num_rows]
        if not live:
            return None
        merged = Batch.concat(live)
        self.buffers[port] = [merged]
        return merged

    # -- watermark ------------------------------------------------------------------------------------
    def on_watermark(self, wm: int) -> Emit:
        return self._fire(wm)

    def close(self) -> Emit:
        return self._fire(MAX_TIME)

    def _fire(self, wm: int) -> Emit:
        emitted: Emit = []
        size = self.spec.size
        left, right = self._buffered(0), self._buffered(1)
        if left is not None and right is not None:
            due_l = (left[_WIN] + size <= wm) & (left[_WIN] + size > self.fired_until)
            due_r = (right[_WIN] + size <= wm) & (right[_WIN] + size > self.fired_until)
            if due_l.any() and due_r.any():
                out = self._pairs(left.filter(due_l), right.filter(due_r))
                if out is not None:
                    emitted.append((OUT, out))
        self.fired_until = max(self.fired_until, wm)
        for port in (0, 1):  # drop windows past their lateness
            buf = self._buffered(port)
            if buf is not None:
                keep = buf[_WIN] + size + self.lateness > wm
                self.buffers[port] = [buf.filter(keep).compact()] if not keep.all() else [buf]
        return emitted

    def _pairs(self, left: Batch, right: Batch) -> Batch | None:
        """Every (left, right) pair with equal key slot and window start, vectorised."""
        lk = np.stack([left[_SLOT], left[_WIN]], axis=1)
        rk = np.stack([right[_SLOT], right[_WIN]], axis=1)
        groups, inverse = np.unique(np.concatenate([lk, rk]), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        gl, gr = inverse[: len(lk)], inverse[len(lk):]
        r_order = np.argsort(gr, kind="stable")
        r_count = np.bincount(gr, minlength=len(groups))
        r_start = np.concatenate([[0], np.cumsum(r_count)[:-1]])
        per_left = r_count[gl]
        total = int(per_left.sum())
        if total == 0:
            return None
        li = np.repeat(np.arange(len(gl)), per_left)
        ramp = np.arange(total) - np.repeat(np.cumsum(per_left) - per_left, per_left)
        ri = r_order[r_start[gl[li]] + ramp]
        win = left[_WIN][li]
        s0 = self.schemas[0]
        cols: dict[str, np.ndarray] = {
            s0.key: left[s0.key][li], "window_start": win, "window_end": win + self.spec.size,
            "window_time": win + self.spec.size - 1}
        for col, out in self.left_names.items():
            cols[out] = left[col][li]
        for col, out in self.right_names.items():
            cols[out] = right[col][ri]
        wm = np.full(total, self.fired_until, dtype=np.int64)
        return Batch(cols, wm)

    def snapshot(self) -> dict[str, Any]:
        return {"keys": self.keys.snapshot(), "fired_until": self.fired_until,
                "buffers": [[b.to_dict() for b in side] for side in self.buffers]}

    def restore(self, state: dict[str, Any]) -> None:
        self.keys.restore(state["keys"])
        self.fired_until = state["fired_until"]
        self.buffers = [[Batch(d) for d in side] for side in state["buffers"]]

