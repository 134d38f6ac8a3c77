"""Numba kernels for keyed event-time windows.

State is a set of *cells*, one per (key slot, open window). For tumbling and sliding windows a key
owns a ring of `R` cells and window number `w` lives in cell `slot * R + (w & (R - 1))`; for session
windows a key owns `S` cells searched linearly. Each cell has a count, per-value-column
accumulators and the first/last event time.

Kernels walk records in arrival order and advance the watermark record by record (from the
per-record watermark column), firing windows at the exact record where the watermark passes
their end. That makes the output independent of batch boundaries. A kernel stops early with a
status when it needs Python to grow the ring or to drain the output buffers, and is resumed at
the record where it stopped.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

EMPTY = np.iinfo(np.int64).min
_TMAX = np.iinfo(np.int64).max
_TMIN = np.iinfo(np.int64).min

DONE = 0
GROW_CELLS = 1  # the ring (or session list) of a key is full: double R (or S) and resume
FLUSH = 2       # the output buffer or the update log is full: drain them and resume

# Accumulator columns per value column.
A_SUM, A_MEAN, A_M2, A_MIN, A_MAX, A_FIRST, A_LAST = range(7)
N_ACC = 7
# Flag columns per value column.
F_SUM, F_WELFORD, F_MIN, F_MAX, F_FIRSTLAST = range(5)
N_FLAGS = 5
# Scalars kept between calls: watermark, next firing time, open cells, rows in the output buffer, log entries,
# (record, window) pairs dropped as too late, records too late for some of their windows but not all.
# S_FINAL: 1 to emit each window once, when it is freed (emit="final"); a scalar, not an argument, because the
# kernels' calls must stay within 30 arguments (CPython passes more as *args, which numba cannot inline).
# S_FIRES counts the cells a firing changed (fired or freed): the only writes to cells of keys other than a
# record's own, which the window then reports to its dirty-row tracker as "every key" (kernels/dirty.py).
S_WM, S_NEXT, S_OPEN, S_NOUT, S_NLOG, S_DROPS, S_PARTIAL, S_FINAL, S_FIRES = range(9)
N_SCALARS = 9
# Pane kinds of emitted rows: the first result when the watermark passes the end; a result re-emitted after a
# late record (it replaces the earlier row with the same key and bounds); the withdrawal of an earlier row whose
# session grew or merged; the one result of a window emitted once it can no longer change (emit="final").
P_ON_TIME, P_LATE, P_RETRACT, P_FINAL = range(4)
# Update-log opcodes (replayed for user-defined reducers).
LOG_UPDATE, LOG_EMIT, LOG_FREE, LOG_MERGE, LOG_INIT = range(5)
# The inline="always" helpers are not cache=True: numba inlines their IR into the cached kernels and never
# compiles them alone, and a cache=True dispatcher costs ~0.3 ms more to make at import (its cache locator).


@numba.njit(inline="always")
def _init_cell(c, count, acc, tacc, nvals):
    count[c] = 0
    for v in range(nvals):
        b = v * N_ACC
        acc[c, b + A_SUM] = 0.0
        acc[c, b + A_MEAN] = 0.0
        acc[c, b + A_M2] = 0.0
        acc[c, b + A_MIN] = np.inf
        acc[c, b + A_MAX] = -np.inf
        acc[c, b + A_FIRST] = np.nan
        acc[c, b + A_LAST] = np.nan
    tacc[c, 0] = _TMAX
    tacc[c, 1] = _TMIN


@numba.njit(inline="always")
def _update_cell(c, i, t, vals, flags, count, acc, tacc, need_t):
    n = count[c] + 1
    count[c] = n
    first = False
    last = False
    if need_t:
        first = t < tacc[c, 0]
        last = t >= tacc[c, 1]
        if first:
            tacc[c, 0] = t
        if last:
            tacc[c, 1] = t
    for v in range(flags.shape[0]):
        x = vals[v, i]
        b = v * N_ACC
        if flags[v, F_SUM]:
            acc[c, b + A_SUM] += x
        if flags[v, F_WELFORD]:
            mean = acc[c, b + A_MEAN]
            delta = x - mean
            mean += delta / n
            acc[c, b + A_MEAN] = mean
            acc[c, b + A_M2] += delta * (x - mean)
        if flags[v, F_MIN] and x < acc[c, b + A_MIN]:
            acc[c, b + A_MIN] = x
        if flags[v, F_MAX] and x > acc[c, b + A_MAX]:
            acc[c, b + A_MAX] = x
        if flags[v, F_FIRSTLAST]:
            if first:
                acc[c, b + A_FIRST] = x
            if last:
                acc[c, b + A_LAST] = x


def needs_times(flags: np.ndarray) -> bool:
    return bool(flags[:, F_FIRSTLAST].any())


@numba.njit(cache=True)
def _merge_cells(dst, src, flags, count, acc, tacc):
    """Fold cell `src` into cell `dst` (session merges); Chan et al. for mean and M2."""
    na = count[dst]
    nb = count[src]
    n = na + nb
    src_first = tacc[src, 0] < tacc[dst, 0]
    src_last = tacc[src, 1] >= tacc[dst, 1]
    for v in range(flags.shape[0]):
        b = v * N_ACC
        if flags[v, F_SUM]:
            acc[dst, b + A_SUM] += acc[src, b + A_SUM]
        if flags[v, F_WELFORD] and n > 0:
            delta = acc[src, b + A_MEAN] - acc[dst, b + A_MEAN]
            acc[dst, b + A_MEAN] += delta * nb / n
            acc[dst, b + A_M2] += acc[src, b + A_M2] + delta * delta * na * nb / n
        if flags[v, F_MIN]:
            acc[dst, b + A_MIN] = min(acc[dst, b + A_MIN], acc[src, b + A_MIN])
        if flags[v, F_MAX]:
            acc[dst, b + A_MAX] = max(acc[dst, b + A_MAX], acc[src, b + A_MAX])
        if flags[v, F_FIRSTLAST]:
            if src_first:
                acc[dst, b + A_FIRST] = acc[src, b + A_FIRST]
            if src_last:
                acc[dst, b + A_LAST] = acc[src, b + A_LAST]
    if src_first:
        tacc[dst, 0] = tacc[src, 0]
    if src_last:
        tacc[dst, 1] = tacc[src, 1]
    count[dst] = n


@numba.njit(inline="always")
def _emit(c, slot, start, end, count, acc, tacc, sc, out_slot, out_start, out_end, out_count, out_acc,
          out_tacc, out_wm, emit_wm, kind, log, use_log):
    k = sc[S_NOUT]
    out_slot[k] = slot
    out_start[k] = start
    out_end[k] = end
    out_count[k] = count[c]
    for j in range(acc.shape[1]):  # an explicit loop: slice assignment would allocate a temporary
        out_acc[k, j] = acc[c, j]
    out_tacc[k, 0] = tacc[c, 0]
    out_tacc[k, 1] = tacc[c, 1]
    out_tacc[k, 2] = kind
    out_wm[k] = emit_wm
    sc[S_NOUT] = k + 1
    if use_log:
        _log(log, sc, LOG_EMIT, c, k)


@numba.njit(inline="always")
def _log(log, sc, op, a, b):
    j = sc[S_NLOG]
    log[j, 0] = op
    log[j, 1] = a
    log[j, 2] = b
    sc[S_NLOG] = j + 1


@numba.njit(cache=True)
def _fire_ring(size, lateness, R, win, fired, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
               out_acc, out_tacc, out_wm, emit_wm, log, use_log):
    """Emit every window whose end the watermark has passed; free those past their lateness. With S_FINAL,
    a window is emitted once, as it is freed."""
    wm = sc[S_WM]
    final = sc[S_FINAL] != 0
    nxt = _TMAX
    for c in range(len(win)):
        s = win[c]
        if s == EMPTY:
            continue
        e = s + size
        if fired[c] == 0:
            if e <= wm:
                if not final:
                    _emit(c, c // R, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                          out_acc, out_tacc, out_wm, emit_wm, P_ON_TIME, log, use_log)
                fired[c] = 1
                sc[S_FIRES] += 1
            else:
                nxt = min(nxt, e)
                continue
        if e + lateness <= wm:
            if final:
                _emit(c, c // R, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                      out_acc, out_tacc, out_wm, emit_wm, P_FINAL, log, use_log)
            win[c] = EMPTY
            sc[S_OPEN] -= 1
            sc[S_FIRES] += 1
            if use_log:
                _log(log, sc, LOG_FREE, c, 0)
        else:
            nxt = min(nxt, e + lateness)
    sc[S_NEXT] = nxt


@functools.cache
def ring_kernel(has_mask: bool, use_log: bool, need_t: bool):
    """The tumbling/sliding kernel specialised (and cached by numba) for one combination of switches."""

    @numba.njit(cache=True)
    def kernel(start_i, t, slots, vals, mask, wm, size, slide, offset, lateness, R, win, fired, count, acc,
               tacc, flags, sc, miss, out_slot, out_start, out_end, out_count, out_acc, out_tacc,
               out_wm, log):
        return _ring_body(start_i, t, slots, vals, mask, has_mask, wm, size, slide, offset, lateness, R, win,
                          fired, count, acc, tacc, flags, sc, miss, out_slot, out_start, out_end,
                          out_count, out_acc, out_tacc, out_wm, log, use_log, need_t)

    return kernel


@numba.njit(inline="always")
def _ring_body(start_i, t, slots, vals, mask, has_mask, wm, size, slide, offset, lateness, R,
               win, fired, count, acc, tacc, flags, sc, miss, out_slot, out_start, out_end,
               out_count, out_acc, out_tacc, out_wm, log, use_log, need_t):
    """Tumbling (slide == size) and sliding windows. Returns (next record, status).

    The hot loop keeps the watermark and the next firing time in locals (the state arrays could
    alias them otherwise) and has a one-window fast path for tumbling windows. A record too late for
    all its windows gets `miss[i]` = -(windows missed), one too late for some only +(windows missed).
    """
    cap = len(out_slot)
    logcap = log.shape[0]
    per_rec = (size + slide - 1) // slide
    nvals = flags.shape[0]
    mask_r = R - 1
    cur = sc[S_WM]
    nxt = sc[S_NEXT]
    final = sc[S_FINAL] != 0
    for i in range(start_i, len(t)):
        w_i = wm[i]
        if w_i > cur:
            if w_i >= nxt:
                if sc[S_NOUT] + sc[S_OPEN] > cap or (use_log and sc[S_NLOG] + 2 * sc[S_OPEN] > logcap):
                    sc[S_WM] = cur
                    sc[S_NEXT] = nxt  # records since the last save may have lowered it
                    return i, FLUSH
                sc[S_WM] = w_i
                _fire_ring(size, lateness, R, win, fired, count, acc, tacc, sc, out_slot, out_start, out_end,
                           out_count, out_acc, out_tacc, out_wm, cur, log, use_log)
                nxt = sc[S_NEXT]
            cur = w_i
        if has_mask and not mask[i]:
            continue
        if sc[S_NOUT] + per_rec > cap or (use_log and sc[S_NLOG] + 3 * per_rec > logcap):
            sc[S_WM] = cur
            sc[S_NEXT] = nxt
            return i, FLUSH
        ti = t[i]
        slot = slots[i]
        w_last = (ti - offset) // slide
        if per_rec == 1:
            # tumbling: exactly one window. This repeats the body of the sliding loop below on purpose:
            # folding both into one inlined helper made the canonical benchmark's kernel ~6x slower.
            s = w_last * slide + offset
            e = s + size
            if e + lateness <= cur:
                miss[i] = -1
                sc[S_DROPS] += 1
                continue
            c = slot * R + (w_last & mask_r)
            ws = win[c]
            if ws != s:
                if ws != EMPTY:
                    sc[S_WM] = cur
                    sc[S_NEXT] = nxt
                    return i, GROW_CELLS
                win[c] = s
                fired[c] = 0
                _init_cell(c, count, acc, tacc, nvals)
                sc[S_OPEN] += 1
                if use_log:
                    _log(log, sc, LOG_INIT, c, 0)
                if e < nxt:
                    nxt = e
            _update_cell(c, i, ti, vals, flags, count, acc, tacc, need_t)
            if use_log:
                _log(log, sc, LOG_UPDATE, c, i)
            if e <= cur:  # late but within the allowed lateness: emit the updated result now
                if not final:
                    _emit(c, slot, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                          out_acc, out_tacc, out_wm, cur, P_LATE, log, use_log)
                fired[c] = 1
                if e + lateness < nxt:
                    nxt = e + lateness
            continue
        # pass 1: every live window of this record must have a cell free or already its own
        w = w_last
        while True:
            s = w * slide + offset
            if s + size <= ti:
                break
            if s + size + lateness > cur:
                c = slot * R + (w & mask_r)
                if win[c] != EMPTY and win[c] != s:
                    sc[S_WM] = cur
                    sc[S_NEXT] = nxt
                    return i, GROW_CELLS
            w -= 1
        # pass 2: update
        accepted = False
        missed = 0
        w = w_last
        while True:
            s = w * slide + offset
            e = s + size
            if e <= ti:
                break
            if e + lateness > cur:
                c = slot * R + (w & mask_r)
                if win[c] == EMPTY:
                    win[c] = s
                    fired[c] = 0
                    _init_cell(c, count, acc, tacc, nvals)
                    sc[S_OPEN] += 1
                    if use_log:
                        _log(log, sc, LOG_INIT, c, 0)
                    if e < nxt:
                        nxt = e
                _update_cell(c, i, ti, vals, flags, count, acc, tacc, need_t)
                if use_log:
                    _log(log, sc, LOG_UPDATE, c, i)
                accepted = True
                if e <= cur:  # late but within the allowed lateness: emit the updated result now
                    if not final:
                        _emit(c, slot, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                              out_acc, out_tacc, out_wm, cur, P_LATE, log, use_log)
                    fired[c] = 1
                    if e + lateness < nxt:
                        nxt = e + lateness
            else:
                missed += 1
            w -= 1
        if missed:
            sc[S_DROPS] += missed
            if accepted:
                miss[i] = missed
                sc[S_PARTIAL] += 1
            else:
                miss[i] = -missed
    sc[S_WM] = cur
    sc[S_NEXT] = nxt
    return len(t), DONE


# -- session windows ---------------------------------------------------------------------------

@numba.njit(cache=True)
def _fire_sessions(lateness, S, sstart, send, fired, count, acc, tacc, sc, out_slot, out_start, out_end,
                   out_count, out_acc, out_tacc, out_wm, emit_wm, log, use_log):
    wm = sc[S_WM]
    final = sc[S_FINAL] != 0
    nxt = _TMAX
    for c in range(len(sstart)):
        s = sstart[c]
        if s == EMPTY:
            continue
        e = send[c]
        if fired[c] == 0:
            if e <= wm:
                if not final:
                    _emit(c, c // S, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                          out_acc, out_tacc, out_wm, emit_wm, P_ON_TIME, log, use_log)
                fired[c] = 1
                sc[S_FIRES] += 1
            else:
                nxt = min(nxt, e)
                continue
        if e + lateness <= wm:
            if final:
                _emit(c, c // S, s, e, count, acc, tacc, sc, out_slot, out_start, out_end, out_count,
                      out_acc, out_tacc, out_wm, emit_wm, P_FINAL, log, use_log)
            sstart[c] = EMPTY
            sc[S_OPEN] -= 1
            sc[S_FIRES] += 1
            if use_log:
                _log(log, sc, LOG_FREE, c, 0)
        else:
            nxt = min(nxt, e + lateness)
    sc[S_NEXT] = nxt


@functools.cache
def session_kernel(has_mask: bool, use_log: bool, need_t: bool):
    """The session kernel specialised for one combination of switches."""

    @numba.njit(cache=True)
    def kernel(start_i, t, slots, vals, mask, wm, gap, lateness, S, sstart, send, fired, count, acc, tacc,
               flags, sc, miss, out_slot, out_start, out_end, out_count, out_acc, out_tacc, out_wm,
               log):
        return _session_body(start_i, t, slots, vals, mask, has_mask, wm, gap, lateness, S, sstart, send,
                             fired, count, acc, tacc, flags, sc, miss, out_slot, out_start, out_end,
                             out_count, out_acc, out_tacc, out_wm, log, use_log, need_t)

    return kernel


@numba.njit(inline="always")
def _session_body(start_i, t, slots, vals, mask, has_mask, wm, gap, lateness, S, sstart, send, fired,
                  count, acc, tacc, flags, sc, miss, out_slot, out_start, out_end, out_count, out_acc,
                  out_tacc, out_wm, log, use_log, need_t):
    """Session windows: a record at t opens [t, t + gap) and merges every session it touches. A session that
    had been emitted and now grows or merges is withdrawn first (a P_RETRACT row with its old bounds)."""
    cap = len(out_slot)
    logcap = log.shape[0]
    nvals = flags.shape[0]
    final = sc[S_FINAL] != 0
    for i in range(start_i, len(t)):
        w_i = wm[i]
        if w_i > sc[S_WM]:
            if w_i >= sc[S_NEXT]:
                if sc[S_NOUT] + sc[S_OPEN] > cap or (use_log and sc[S_NLOG] + 2 * sc[S_OPEN] > logcap):
                    return i, FLUSH
                prev = sc[S_WM]
                sc[S_WM] = w_i
                _fire_sessions(lateness, S, sstart, send, fired, count, acc, tacc, sc, out_slot, out_start,
                               out_end, out_count, out_acc, out_tacc, out_wm, prev, log, use_log)
            else:
                sc[S_WM] = w_i
        if has_mask and not mask[i]:
            continue
        if sc[S_NOUT] + S + 2 > cap or (use_log and sc[S_NLOG] + 2 * S + 4 > logcap):
            return i, FLUSH
        ti = t[i]
        slot = slots[i]
        cur = sc[S_WM]
        lo = ti
        hi = ti + gap
        base = slot * S
        target = -1
        free = -1
        n_touch = 0
        for j in range(S):
            c = base + j
            if sstart[c] == EMPTY:
                if free < 0:
                    free = c
                continue
            if sstart[c] <= ti + gap and ti <= send[c]:
                n_touch += 1
                lo = min(lo, sstart[c])
                hi = max(hi, send[c])
                if target < 0:
                    target = c
        if n_touch == 0:
            if hi + lateness <= cur:
                miss[i] = -1
                sc[S_DROPS] += 1
                continue
            if free < 0:
                return i, GROW_CELLS
            target = free
            sstart[target] = lo
            send[target] = hi
            fired[target] = 0
            _init_cell(target, count, acc, tacc, nvals)
            sc[S_OPEN] += 1
            if use_log:
                _log(log, sc, LOG_INIT, target, 0)
        else:
            grew = hi > send[target] or lo < sstart[target]
            if grew and fired[target] and not final:
                _emit(target, slot, sstart[target], send[target], count, acc, tacc, sc, out_slot, out_start,
                      out_end, out_count, out_acc, out_tacc, out_wm, cur, P_RETRACT, log, use_log)
            was_fired = fired[target]
            for j in range(S):
                c = base + j
                if c == target or sstart[c] == EMPTY:
                    continue
                if sstart[c] <= ti + gap and ti <= send[c]:
                    if fired[c] and not final:
                        _emit(c, slot, sstart[c], send[c], count, acc, tacc, sc, out_slot, out_start, out_end,
                              out_count, out_acc, out_tacc, out_wm, cur, P_RETRACT, log, use_log)
                    _merge_cells(target, c, flags, count, acc, tacc)
                    if use_log:
                        _log(log, sc, LOG_MERGE, target, c)
                    was_fired = max(was_fired, fired[c])
                    sstart[c] = EMPTY
                    sc[S_OPEN] -= 1
            sstart[target] = lo
            send[target] = hi
            fired[target] = was_fired if not grew else 0
        _update_cell(target, i, ti, vals, flags, count, acc, tacc, need_t)
        if use_log:
            _log(log, sc, LOG_UPDATE, target, i)
        e = send[target]
        if e <= cur:  # late but within the allowed lateness
            if not final:
                _emit(target, slot, sstart[target], e, count, acc, tacc, sc, out_slot, out_start, out_end,
                      out_count, out_acc, out_tacc, out_wm, cur, P_LATE, log, use_log)
            fired[target] = 1
            if e + lateness < sc[S_NEXT]:
                sc[S_NEXT] = e + lateness
        elif e < sc[S_NEXT]:
            sc[S_NEXT] = e
    return len(t), DONE


@numba.njit(cache=True)
def fire_sessions_to(new_wm, lateness, S, sstart, send, fired, count, acc, tacc, sc, out_slot, out_start,
                     out_end, out_count, out_acc, out_tacc, out_wm, log, use_log):
    if new_wm <= sc[S_WM]:
        return DONE
    if new_wm >= sc[S_NEXT]:
        if sc[S_NOUT] + sc[S_OPEN] > len(out_slot) or (use_log and sc[S_NLOG] + 2 * sc[S_OPEN] > log.shape[0]):
            return FLUSH
        prev = sc[S_WM]
        sc[S_WM] = new_wm
        _fire_sessions(lateness, S, sstart, send, fired, count, acc, tacc, sc, out_slot, out_start, out_end,
                       out_count, out_acc, out_tacc, out_wm, prev, log, use_log)
    else:
        sc[S_WM] = new_wm
    return DONE


def replay_udf_log(log, n, udf, init, merge, values, udf_acc, out_udf):
    """Apply one user-defined reducer by replaying the update log (jitted by the caller)."""
    for j in range(n):
        op = log[j, 0]
        a = log[j, 1]
        b = log[j, 2]
        if op == 0:    # LOG_UPDATE: cell a, record b
            udf_acc[a] = udf(udf_acc[a], values[b])
        elif op == 1:  # LOG_EMIT: cell a into output row b
            out_udf[b] = udf_acc[a]
        elif op == 3:  # LOG_MERGE: cell b into cell a
            udf_acc[a] = merge(udf_acc[a], udf_acc[b])
        elif op == 4:  # LOG_INIT
            udf_acc[a] = init
