"""Per-key threshold alerts with hysteresis and debounce: one `raise` when a value has been past a threshold for
a while, one `clear` when it has been back past a second threshold for a while, and nothing in between.

A numba loop walks the batch in arrival order with two numbers of state per key (whether the alert is up, and
since when the condition that would change that has held), so a noisy value around the threshold does not flap.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import TIME_DTYPE, Schema
from ..core.time import human_duration
from .base import OUT, Emit, Operator
from .kernels.keys import KeyIndex

NONE = np.iinfo(np.int64).min  # no pending run
RAISE, CLEAR = 1, 2
_KINDS = np.array(["", "raise", "clear"])


@numba.njit(cache=True)
def alert_kernel(t, slots, x, mask, has_mask, sign, up, down, hold_up, hold_down, active, since,
                 ev_row, ev_kind, ev_since):
    """Walk the records; return how many events were written to ev_*. `sign` is 1 for `above` alerts (x > up
    raises, x < down clears) and -1 for `below` ones (the same on -x). NaN values change nothing."""
    n_ev = 0
    for i in range(len(t)):
        if has_mask and not mask[i]:
            continue
        v = x[i] * sign
        if v != v:
            continue
        s = slots[i]
        if active[s] == 0:
            cond = v > up
            hold = hold_up
        else:
            cond = v < down
            hold = hold_down
        if not cond:
            since[s] = NONE
            continue
        if since[s] == NONE:
            since[s] = t[i]
        if t[i] - since[s] >= hold:
            ev_row[n_ev] = i
            ev_kind[n_ev] = RAISE if active[s] == 0 else CLEAR
            ev_since[n_ev] = since[s]
            n_ev += 1
            active[s] = 1 - active[s]
            since[s] = NONE
    return n_ev


class Alert(Operator):
    """Per key: `raise` after `column` has been past `threshold` for `hold`, `clear` after it has been back past
    `clear_at` for `clear_hold`. Emits the record that completed the condition, plus `alert` and `since`."""

    kind = "alert"
    keyed = True
    cpu_us = 0.3
    selectivity = 0.001

    def __init__(self, column: str, sign: int, threshold: float, clear_at: float, hold: int, clear_hold: int) -> None:
        self.column, self.sign = column, sign
        self.threshold, self.clear_at = float(threshold), float(clear_at)
        self.hold, self.clear_hold = int(hold), int(clear_hold)

    def describe(self) -> str:
        op, back = (">", "<") if self.sign > 0 else ("<", ">")
        hold = f" for {human_duration(self.hold)}" if self.hold else ""
        clear_hold = f" for {human_duration(self.clear_hold)}" if self.clear_hold else ""
        return (f"raise {self.column} {op} {self.threshold:g}{hold}, clear {self.column} {back} "
                f"{self.clear_at:g}{clear_hold}")

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        if s.key is None:
            raise PipelineError(name, "alert on a stream with no key", "call .key_by('column') before .alert(...)")
        if s.time is None:
            raise PipelineError(name, "alert needs event time (its durations are measured in it)",
                                "give the source a time column (time='...')")
        dtype = s.require(self.column, name, "alert column")
        if dtype.kind not in "biuf":
            raise PipelineError(name, f"alert column '{self.column}' is {dtype}, not numeric",
                                "alert on a numeric column")
        for added in ("alert", "since"):
            if added in s.names:
                raise PipelineError(name, f"the stream already has a column '{added}', which alert() adds",
                                    "rename it first, e.g. with .map(...)")
        fields: list[tuple[str, Any]] = [*s.fields, ("alert", np.dtype("U5")), ("since", TIME_DTYPE)]
        return {OUT: Schema.of(fields, time=s.time, key=s.key)}

    def open(self, ctx) -> None:
        super().open(ctx)
        s = ctx.input_schemas[0]
        self.key, self.time = s.key, s.time
        self.keys = KeyIndex(s.dtype(s.key))
        self.active = np.zeros(64, dtype=np.int8)
        self.since = np.full(64, NONE, dtype=np.int64)

    def _grow(self, n: int) -> None:
        if n > len(self.active):
            size = max(n, 2 * len(self.active))
            self.active = np.concatenate([self.active, np.zeros(size - len(self.active), dtype=np.int8)])
            self.since = np.concatenate([self.since, np.full(size - len(self.since), NONE, dtype=np.int64)])

    def process(self, port: int, batch: Batch) -> Emit:
        n = batch.base_rows
        if n == 0:
            return []
        mask = batch.mask
        slots = self.keys.slots(batch.base(self.key), mask)
        self._grow(self.keys.n_slots)
        x = batch.base(self.column).astype(np.float64, copy=False)
        ev_row = np.empty(n, dtype=np.int64)
        ev_kind = np.empty(n, dtype=np.int64)
        ev_since = np.empty(n, dtype=np.int64)
        has_mask = mask is not None
        sign = 1.0 if self.sign > 0 else -1.0
        m = alert_kernel(batch.base(self.time), slots, x, mask if has_mask else np.empty(0, np.bool_), has_mask,
                         sign, self.threshold * sign, self.clear_at * sign, self.hold, self.clear_hold,
                         self.active, self.since, ev_row, ev_kind, ev_since)
        if m == 0:
            return []
        rows = ev_row[:m]
        cols = {c: batch.base(c)[rows] for c in batch.names}
        cols["alert"] = _KINDS[ev_kind[:m]]
        cols["since"] = ev_since[:m]
        wm = batch.base_wm
        return [(OUT, Batch(cols, None if wm is None else wm[rows]))]

    def snapshot(self) -> dict[str, Any]:
        k = self.keys.n_slots
        return {"keys": self.keys.snapshot(), "active": self.active[:k].copy(), "since": self.since[:k].copy()}

    def restore(self, state: dict[str, Any]) -> None:
        self.keys.restore(state["keys"])
        self.active = np.zeros(64, dtype=np.int8)
        self.since = np.full(64, NONE, dtype=np.int64)
        self._grow(len(state["active"]))
        self.active[: len(state["active"])] = state["active"]
        self.since[: len(state["since"])] = state["since"]
