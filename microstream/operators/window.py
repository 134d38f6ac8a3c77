"""Keyed window aggregation: the operator around the numba kernels in `kernels/windows.py`."""

from __future__ import annotations

import copy
from typing import Any

import numba
import numpy as np

from ..agg import Aggregate
from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import TIME_DTYPE, Schema
from ..core.time import MAX_TIME, MIN_TIME, human_duration
from ..windows import WindowSpec
from .base import DEAD, LATE, OUT, Emit, Operator, check_scalar_function
from .kernels import windows as K
from .kernels.dirty import DirtyRows
from .kernels.keys import KeyIndex

_FLAG_OF = {"sum": (K.F_SUM,), "mean": (K.F_SUM,), "var": (K.F_WELFORD,), "std": (K.F_WELFORD,),
            "min": (K.F_MIN,), "max": (K.F_MAX,), "first": (K.F_FIRSTLAST,), "last": (K.F_FIRSTLAST,)}
_OUT_CAP = 1 << 16
PANES = ("on_time", "late_update", "retract", "final")  # the `pane` column, by the kernels' P_* codes
_PANE_NAMES = np.array(PANES)
EMITS = ("all", "final")
_FROM_LOG = ("reduce", "quantile")  # aggregates replayed from the kernels' update log, not accumulated in them
_replay = numba.njit(K.replay_udf_log)


def window_columns(key: str | None) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = []
    if key:
        cols.append((key, None))
    cols += [("window_start", TIME_DTYPE), ("window_end", TIME_DTYPE), ("window_time", TIME_DTYPE)]
    return cols


def missed_until(t: np.ndarray, missed: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """The end of the last window each record was too late for (its `missed` earliest windows), in ns."""
    w_first = (t - spec.offset - spec.size) // spec.slide + 1  # the earliest window [s, s + size) holding t
    return (w_first + missed - 1) * spec.slide + spec.offset + spec.size


class WindowAggregate(Operator):
    """Per key and window, fold records into aggregates; emit when the watermark passes the end."""

    kind = "window_aggregate"
    keyed = True
    cpu_us = 0.6
    selectivity = 0.01

    def __init__(self, spec: WindowSpec, aggs: dict[str, Aggregate], lateness: int = 0,
                 processing_time: bool = False, emit: str = "all", partial_late: bool = False) -> None:
        if not aggs:
            raise PipelineError(None, "aggregate() needs at least one aggregate",
                                "e.g. .aggregate(n=ms.agg.count(), avg=ms.agg.mean('value'))")
        self.spec = spec
        self.aggs = dict(aggs)
        self.lateness = int(lateness)
        self.processing_time = processing_time
        self.final = emit == "final"
        self.partial_late = partial_late
        self.value_cols = sorted({a.column for a in aggs.values() if a.column and a.kind not in _FROM_LOG})
        self.udfs = [(name, a) for name, a in aggs.items() if a.kind == "reduce"]
        # quantiles keep each window's values, fed from the update log (kernels/quantiles.py): one buffer a column
        self.qcols = sorted({a.column for a in aggs.values() if a.kind == "quantile" and a.column})

    # -- build time -------------------------------------------------------------------------------
    def output_ports(self) -> tuple[str, ...]:
        return (OUT, LATE)

    def side_ports(self) -> tuple[str, ...]:
        return (LATE, DEAD)

    def describe(self) -> str:
        aggs = ", ".join(f"{n}={a.describe()}" for n, a in self.aggs.items())
        late = f", lateness {human_duration(self.lateness)}" if self.lateness else ""
        clock = ", processing time" if self.processing_time else ""
        final = ", final results only" if self.final else ""
        return f"{self.spec.describe()}{late}{clock}{final} · {aggs}"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        if s.key is None:
            raise PipelineError(name, "window on a stream with no key",
                                "call .key_by('column') before .window(...)")
        if s.time is None and not self.processing_time:
            raise PipelineError(name, "event-time window on a stream without event time",
                                "give the source a time column (time='...'), or opt in to processing time "
                                "with .window(spec, time='processing')")
        for agg in self.aggs.values():
            if agg.column is not None:
                dtype = s.require(agg.column, name, f"{agg.kind}() column")
                if dtype.kind not in "biuf":
                    raise PipelineError(name, f"{agg.kind}('{agg.column}') needs a numeric column, "
                                              f"'{agg.column}' is {dtype}", "aggregate a numeric column")
            if agg.kind == "reduce":
                example = "a reducer is fn(acc, x) -> float, e.g. ms.agg.reduce('v', lambda acc, x: max(acc, abs(x)))"
                check_scalar_function(agg.fn, (agg.init, 1.0), name, f"the reduce('{agg.column}') function", example)
                check_scalar_function(agg.merge, (agg.init, agg.init), name, f"the reduce('{agg.column}') merge",
                                      "merge(acc_a, acc_b) -> float combines two partial results")
        fields: list[tuple[str, Any]] = [(s.key, s.dtype(s.key))]
        fields += window_columns(None)
        fields.append(("pane", np.dtype("U11")))
        for out_name, agg in self.aggs.items():
            if out_name in {f for f, _ in fields}:
                raise PipelineError(name, f"aggregate name '{out_name}' clashes with an output column",
                                    "choose another name")
            fields.append((out_name, np.int64 if agg.kind == "count" else np.float64))
        late = s
        if self.partial_late:
            late = Schema.of([*s.fields, ("missed_windows", np.int64), ("missed_until", TIME_DTYPE)],
                             time=s.time, key=s.key)
        return {OUT: Schema.of(fields, time="window_time", key=s.key), LATE: late}

    # -- run time --------------------------------------------------------------------------------
    def open(self, ctx) -> None:
        super().open(ctx)
        s = ctx.input_schemas[0]
        self.key_field, self.time_field = s.key, s.time
        self.out_schema = ctx.output_schemas[OUT]
        self.keys = KeyIndex(s.dtype(s.key))
        self.dirty = DirtyRows()  # the key slots each batch wrote: a move's transfer reads only those (statexfer)
        nv = len(self.value_cols)
        self.flags = np.zeros((nv, K.N_FLAGS), dtype=np.int64)
        for agg in self.aggs.values():
            # reduce() is replayed from the update log; its column may also feed built-in aggregates
            if agg.kind not in _FROM_LOG and agg.column in self.value_cols:
                for f in _FLAG_OF[agg.kind]:
                    self.flags[self.value_cols.index(agg.column), f] = 1
        self.session = self.spec.kind == "session"
        self.ring = 4 if self.session else _pow2(max(2, -(-self.spec.size // self.spec.slide) + 1))
        self.sc = np.zeros(K.N_SCALARS, dtype=np.int64)
        self.sc[K.S_WM], self.sc[K.S_NEXT] = np.iinfo(np.int64).min, MAX_TIME
        self.sc[K.S_FINAL] = self.final
        self._alloc_state(16)
        self._alloc_out(_OUT_CAP)
        self.use_log = bool(self.udfs or self.qcols)
        self.need_t = K.needs_times(self.flags)
        self.udf_acc = [np.zeros(0) for _ in self.udfs]
        if self.qcols:
            from .kernels.quantiles import QuantileStore  # its kernels load only for windows with quantiles

        self.qstores = [QuantileStore(len(self.win), max(a.cap for a in self.aggs.values() if a.column == col
                                                         and a.kind == "quantile"), self._qs(col))
                        for col in self.qcols]
        self._phantom = (np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((nv, 1)), np.zeros(1, np.bool_),
                         np.zeros(1, np.int64), np.zeros(1, np.int64))  # _advance_kernel's one masked-out record
        # the kernel that advances the watermark, loaded now (a no-op call), before any source runs: the first
        # kernel a process loads pays numba's own start-up (0.3-0.5 s), which must not stall a running source
        self._advance_kernel(MIN_TIME)

    def _qs(self, col: str) -> list[float]:
        return [a.q for a in self.aggs.values() if a.kind == "quantile" and a.column == col]

    def _alloc_state(self, n_slots: int) -> None:
        cells = n_slots * self.ring
        nacc = len(self.value_cols) * K.N_ACC
        self.n_slot_cap = n_slots
        self.win = np.full(cells, K.EMPTY, dtype=np.int64)
        self.wend = np.zeros(cells, dtype=np.int64)  # session ends
        self.fired = np.zeros(cells, dtype=np.uint8)
        self.count = np.zeros(cells, dtype=np.int64)
        self.acc = np.zeros((cells, nacc), dtype=np.float64)
        self.tacc = np.zeros((cells, 2), dtype=np.int64)
        self._track()

    def _track(self) -> None:
        """Row r of every cell array is key slot r's ring (or session list) of cells."""
        self.dirty.track(len(self.win) // self.ring, self.win, self.wend, self.fired, self.count, self.acc,
                         self.tacc)

    def dirty_trackers(self) -> list[DirtyRows]:
        return [self.dirty]

    def _mark(self, slots: np.ndarray | None, fires: int) -> None:
        """After a kernel's writes: the slots of its records, and every slot if it fired or freed a window."""
        if slots is not None:
            self.dirty.mark(slots)
        if self.sc[K.S_FIRES] != fires:
            self.dirty.mark_all()

    def _alloc_out(self, cap: int) -> None:
        nacc = len(self.value_cols) * K.N_ACC
        self.out_slot = np.empty(cap, dtype=np.int64)
        self.out_start = np.empty(cap, dtype=np.int64)
        self.out_end = np.empty(cap, dtype=np.int64)
        self.out_count = np.empty(cap, dtype=np.int64)
        self.out_acc = np.empty((cap, nacc), dtype=np.float64)
        self.out_tacc = np.empty((cap, 3), dtype=np.int64)  # first and last event time, pane kind
        self.out_wm = np.empty(cap, dtype=np.int64)
        self.log = np.empty((4 * cap if self.udfs_present() else 1, 3), dtype=np.int64)

    def udfs_present(self) -> bool:
        return bool(getattr(self, "udfs", None) or getattr(self, "qcols", None))

    def _relayout(self, n_slots: int, ring: int) -> None:
        """Grow the key capacity and/or the cells per key, moving open windows to their new cells."""
        old = (self.win, self.wend, self.fired, self.count, self.acc, self.tacc, self.ring, self.udf_acc)
        old_win, old_wend, old_fired, old_count, old_acc, old_tacc, old_ring, old_udf = old
        self.ring = ring
        self._alloc_state(n_slots)
        self.udf_acc = [np.zeros(n_slots * ring) for _ in self.udfs]
        live = np.flatnonzero(old_win != K.EMPTY)
        if self.session:
            slot, j = live // old_ring, live % old_ring
            new = slot * ring + j
        else:
            slot = live // old_ring
            w = (old_win[live] - self.spec.offset) // self.spec.slide
            new = slot * ring + (w & (ring - 1))
        self.win[new], self.wend[new], self.fired[new] = old_win[live], old_wend[live], old_fired[live]
        self.count[new], self.acc[new], self.tacc[new] = old_count[live], old_acc[live], old_tacc[live]
        for u in range(len(self.udfs)):
            if len(old_udf[u]):
                self.udf_acc[u][new] = old_udf[u][live]
        for store in self.qstores:
            store.relayout(live, new, len(self.win))

    def _ensure_slots(self) -> None:
        if self.keys.n_slots > self.n_slot_cap:
            self._relayout(_pow2(self.keys.n_slots), self.ring)
        if self.udfs and len(self.udf_acc[0]) != len(self.win):
            self.udf_acc = [np.zeros(len(self.win)) for _ in self.udfs]

    def process(self, port: int, batch: Batch) -> Emit:
        if batch.base_rows == 0:
            return []
        t: np.ndarray
        wm: np.ndarray | None
        if self.processing_time:
            batch = batch.compact()
            now = self.ctx.clock()
            t = np.full(batch.num_rows, now, dtype=np.int64)
            wm = t
        else:
            t = batch.base(self.time_field)
            wm = batch.base_wm
        mask = batch.mask
        slots = self.keys.slots(batch.base(self.key_field), mask)
        self._ensure_slots()
        vals = self._values(batch)
        fires = int(self.sc[K.S_FIRES])
        miss = np.zeros(len(t), dtype=np.int64)  # -n: too late for all its n windows, +n: for n of them
        has_mask = mask is not None
        m = mask if has_mask else np.empty(0, dtype=np.bool_)
        emitted: Emit = []
        i = 0
        while True:
            if self.session:
                i, status = K.session_kernel(has_mask, self.use_log, self.need_t)(
                    i, t, slots, vals, m, wm, self.spec.size, self.lateness, self.ring, self.win,
                    self.wend, self.fired, self.count, self.acc, self.tacc, self.flags, self.sc, miss,
                    *self._outs(), self.log)
            else:
                i, status = K.ring_kernel(has_mask, self.use_log, self.need_t)(
                    i, t, slots, vals, m, wm, self.spec.size, self.spec.slide, self.spec.offset,
                    self.lateness, self.ring, self.win, self.fired, self.count, self.acc, self.tacc,
                    self.flags, self.sc, miss, *self._outs(), self.log)
            if status == K.DONE:
                break
            if status == K.GROW_CELLS:
                # replay the pending update log first: it names cells of the current layout
                self._drain(batch, emitted)
                self._relayout(self.n_slot_cap, self.ring * 2)
            else:
                self._drain(batch, emitted)
                if self.sc[K.S_NOUT] == 0 and self.sc[K.S_OPEN] + 8 > len(self.out_slot):
                    self._alloc_out(2 * len(self.out_slot))
        self._drain(batch, emitted)
        self._mark(slots, fires)
        late = miss != 0 if self.partial_late else miss < 0
        if late.any():  # `late` is over the uncompacted records; the batch's filter is over the selected ones
            late_batch = batch.filter(late if mask is None else late[mask])
            if self.partial_late:
                rows = np.flatnonzero(late)
                cols = {c: late_batch[c] for c in late_batch.names}
                missed = np.abs(miss[rows])
                cols["missed_windows"] = missed
                cols["missed_until"] = missed_until(t[rows], missed, self.spec)
                late_batch = Batch(cols, late_batch.wm)
            emitted.append((LATE, late_batch))
        return emitted

    def counters(self) -> dict[str, int]:
        """(record, window) pairs dropped as too late, and records too late for some windows but not all."""
        return {"late_window_drops": int(self.sc[K.S_DROPS]), "partially_late": int(self.sc[K.S_PARTIAL])}

    def on_watermark(self, wm: int) -> Emit:
        return self._advance(wm)

    def on_tick(self, now: int) -> Emit:
        return self._advance(now) if self.processing_time else []

    def close(self) -> Emit:
        return self._advance(MAX_TIME)

    @property
    def wants_ticks(self) -> bool:  # type: ignore[override]
        return self.processing_time

    def _advance(self, wm: int) -> Emit:
        emitted: Emit = []
        fires = int(self.sc[K.S_FIRES])
        while True:
            status = self._advance_kernel(wm)
            if status == K.DONE:
                break
            self._drain(None, emitted)
            if self.sc[K.S_OPEN] + 8 > len(self.out_slot):
                self._alloc_out(2 * (self.sc[K.S_OPEN] + 8))
        self._drain(None, emitted)
        self._mark(None, fires)
        return emitted

    def _advance_kernel(self, wm: int) -> int:
        """Advance the watermark to `wm` with no records; the kernel's status. Tumbling and sliding windows: the
        ring kernel given one masked-out record whose watermark is `wm` fires and frees what that passes (no
        kernel of its own to load from the cache)."""
        if self.session:
            return int(K.fire_sessions_to(wm, self.lateness, self.ring, self.win, self.wend, self.fired, self.count,
                                          self.acc, self.tacc, self.sc, *self._outs(), self.log, self.use_log))
        t, slots, vals, mask, wms, miss = self._phantom
        wms[0] = wm
        _, status = K.ring_kernel(True, self.use_log, self.need_t)(
            0, t, slots, vals, mask, wms, self.spec.size, self.spec.slide, self.spec.offset, self.lateness,
            self.ring, self.win, self.fired, self.count, self.acc, self.tacc, self.flags, self.sc, miss,
            *self._outs(), self.log)
        return int(status)

    def _outs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (self.out_slot, self.out_start, self.out_end, self.out_count, self.out_acc, self.out_tacc,
                self.out_wm)

    def _values(self, batch: Batch) -> np.ndarray:
        n = batch.base_rows
        if not self.value_cols:
            return np.empty((0, n), dtype=np.float64)
        if len(self.value_cols) == 1:
            col = batch.base(self.value_cols[0])
            return np.ascontiguousarray(col, dtype=np.float64).reshape(1, n)
        return np.stack([batch.base(c).astype(np.float64, copy=False) for c in self.value_cols])

    def _drain(self, batch: Batch | None, emitted: Emit) -> None:
        n = int(self.sc[K.S_NOUT])
        nlog = int(self.sc[K.S_NLOG])
        out_udf = []
        for u, (_, agg) in enumerate(self.udfs):
            assert agg.column is not None  # reduce() always names its column
            res = np.empty(n, dtype=np.float64)
            values = (batch.base(agg.column).astype(np.float64, copy=False) if batch is not None
                      else np.empty(0, dtype=np.float64))
            _replay(self.log, nlog, agg.fn, agg.init, agg.merge, values, self.udf_acc[u], res)
            out_udf.append(res)
        out_q: dict[str, np.ndarray] = {}
        for col, store in zip(self.qcols, self.qstores, strict=True):
            values = (batch.base(col).astype(np.float64, copy=False) if batch is not None
                      else np.empty(0, dtype=np.float64))
            out_q[col] = store.replay(self.log, nlog, values, n)
        self.sc[K.S_NOUT] = 0
        self.sc[K.S_NLOG] = 0
        if n:
            emitted.append((OUT, self._result_batch(n, out_udf, out_q)))

    def _result_batch(self, n: int, out_udf: list[np.ndarray], out_q: dict[str, np.ndarray]) -> Batch:
        # The kernels fire windows in state-cell order; downstream order-sensitive operators (stateful_map,
        # alerts on changes) need each key's windows in time order, as they would see them one by one.
        order = np.lexsort((self.out_end[:n], self.out_wm[:n]))
        in_order = bool(np.all(order[1:] > order[:-1]))
        pick = (lambda a: a[:n].copy()) if in_order else (lambda a: a[:n][order])
        count = pick(self.out_count)
        end = pick(self.out_end)
        cols: dict[str, np.ndarray] = {
            self.key_field: self.keys.keys_of(pick(self.out_slot)),
            "window_start": pick(self.out_start),
            "window_end": end,
            "window_time": end - 1,
            "pane": _PANE_NAMES[pick(self.out_tacc[:, 2])],
        }
        acc = pick(self.out_acc)
        if not in_order:
            out_udf = [u[order] for u in out_udf]
            out_q = {c: q[order] for c, q in out_q.items()}
        q_index = {c: 0 for c in out_q}
        udf_i = 0
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, agg in self.aggs.items():
                if agg.kind == "count":
                    cols[name] = count
                    continue
                if agg.kind == "reduce":
                    cols[name] = out_udf[udf_i]
                    udf_i += 1
                    continue
                if agg.kind == "quantile":
                    assert agg.column is not None
                    cols[name] = out_q[agg.column][:, q_index[agg.column]].copy()
                    q_index[agg.column] += 1
                    continue
                assert agg.column is not None  # every aggregate but count (handled above) names one
                b = self.value_cols.index(agg.column) * K.N_ACC
                cols[name] = _finish(agg, acc, b, count)
        return Batch(cols, pick(self.out_wm))

    # -- state ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A move's snapshot, its last act: the arrays themselves (a direct transfer hashes and sends them as
        they are; the old path pickles them at once)."""
        return {"keys": self.keys.snapshot(), "ring": self.ring, "win": self.win, "wend": self.wend,
                "fired": self.fired, "count": self.count, "acc": self.acc, "tacc": self.tacc, "sc": self.sc.copy(),
                "udf_acc": list(self.udf_acc), "quantiles": [q.state() for q in self.qstores]}

    def checkpoint_snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.snapshot())  # the window goes on: copies of its arrays

    def live_snapshot(self) -> dict[str, Any]:
        return self.snapshot()  # its arrays, read while they change (a pre-copy copies what it sends)

    def restore(self, state: dict[str, Any]) -> None:
        self.keys.restore(state["keys"])
        self.ring = state["ring"]
        self.win, self.wend, self.fired = state["win"], state["wend"], state["fired"]
        self.count, self.acc, self.tacc = state["count"], state["acc"], state["tacc"]
        self.sc = np.zeros(K.N_SCALARS, dtype=np.int64)
        self.sc[: len(state["sc"])] = state["sc"]  # a snapshot from before the drop counters has five
        self.sc[K.S_FINAL] = self.final
        self.udf_acc = state["udf_acc"]
        for store, q_state in zip(self.qstores, state.get("quantiles", []), strict=False):
            store.set_state(q_state)
        self.n_slot_cap = len(self.win) // self.ring
        self._track()


def _finish(agg: Aggregate, acc: np.ndarray, b: int, count: np.ndarray) -> np.ndarray:
    kind = agg.kind
    if kind == "sum":
        return acc[:, b + K.A_SUM].copy()
    if kind == "mean":
        return acc[:, b + K.A_SUM] / count
    if kind in ("var", "std"):
        dof = count - agg.ddof
        var = np.where(dof > 0, acc[:, b + K.A_M2] / np.maximum(dof, 1), np.nan)
        return np.sqrt(var) if kind == "std" else var
    if kind in ("min", "max"):
        col = acc[:, b + (K.A_MIN if kind == "min" else K.A_MAX)].copy()
        col[np.isinf(col) & (col == (np.inf if kind == "min" else -np.inf))] = np.nan  # all values were NaN
        return col
    return acc[:, b + (K.A_FIRST if kind == "first" else K.A_LAST)].copy()


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
