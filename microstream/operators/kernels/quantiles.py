"""Per-window value buffers for `ms.agg.quantile` and `ms.agg.median`, fed from the window kernels' update log.

The window kernels do not know about quantiles (their calls are at numba's argument limit): when a window has a
quantile aggregate they write the update log (the same one `ms.agg.reduce` replays), and `replay_quantiles`
replays it here after each kernel call: a record's value is appended to its cell's buffer, a fired window's
buffer is sorted and its quantiles written to the output row, a freed or re-used cell returns its buffer.

A buffer is a chain of fixed-size blocks from one pool (`QuantileStore`), so memory follows the values actually
held. It keeps every value up to `cap` per window (exact quantiles, as `numpy.quantile`'s default 'linear'
method); past the cap it keeps a uniform sample of `cap` values (reservoir sampling, with a deterministic hash so
that a replay gives the same sample): memory stays bounded, results become estimates. NaN values are skipped.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

BLOCK = 64          # values per block
ST_FREE, ST_NFREE = 0, 1   # pool scalars: head of the free list, free blocks


@numba.njit(cache=True, inline="always")
def _mix(i, c):
    x = np.uint64(i) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(c) * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return x


@numba.njit(cache=True)
def _add(c, x, cap, bvals, bnext, st, head, tail, kept, seen):
    """Add value x to cell c's buffer; False if a block is needed and the pool is empty (nothing changed)."""
    k = kept[c]
    if k < cap:
        if k % BLOCK == 0:
            if st[ST_NFREE] == 0:
                return False
            blk = st[ST_FREE]
            st[ST_FREE] = bnext[blk]
            st[ST_NFREE] -= 1
            bnext[blk] = -1
            if k == 0:
                head[c] = blk
            else:
                bnext[tail[c]] = blk
            tail[c] = blk
        bvals[tail[c], k % BLOCK] = x
        kept[c] = k + 1
        seen[c] += 1
        return True
    seen[c] += 1
    j = np.int64(_mix(seen[c], c) % np.uint64(seen[c]))  # Algorithm R: keep the i-th value with probability cap/i
    if j < cap:
        blk = head[c]
        for _ in range(j // BLOCK):
            blk = bnext[blk]
        bvals[blk, j % BLOCK] = x
    return True


@numba.njit(cache=True)
def _release(c, bnext, st, head, tail, kept, seen):
    if kept[c] > 0:
        bnext[tail[c]] = st[ST_FREE]
        st[ST_FREE] = head[c]
        st[ST_NFREE] += (kept[c] + BLOCK - 1) // BLOCK
    head[c] = -1
    tail[c] = -1
    kept[c] = 0
    seen[c] = 0


@numba.njit(cache=True)
def _values_of(c, bvals, bnext, head, kept):
    k = kept[c]
    out = np.empty(k, dtype=np.float64)
    blk = head[c]
    for p in range(k):
        if p > 0 and p % BLOCK == 0:
            blk = bnext[blk]
        out[p] = bvals[blk, p % BLOCK]
    return out


@numba.njit(cache=True)
def _lerp(a, b, t):
    # numpy.quantile's 'linear' interpolation, including its form for t >= 0.5 (same rounding)
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


@numba.njit(cache=True)
def replay_quantiles(log, start, n, values, cap, bvals, bnext, st, head, tail, kept, seen, qs, out):
    """Replay update-log entries start..n-1 into the buffers (opcodes as in `windows.py`: 0 update cell a with
    record b, 1 emit cell a into output row b, 2 free cell a, 3 merge cell b into a, 4 init cell a). Returns the
    entry it stopped at: n when done, less when the pool needs more blocks (grow it and resume there)."""
    for j in range(start, n):
        op = log[j, 0]
        a = log[j, 1]
        b = log[j, 2]
        if op == 0:
            x = values[b]
            if x == x and not _add(a, x, cap, bvals, bnext, st, head, tail, kept, seen):
                return j
        elif op == 1:
            vals = np.sort(_values_of(a, bvals, bnext, head, kept))
            k = len(vals)
            for q in range(len(qs)):
                if k == 0:
                    out[b, q] = np.nan
                else:
                    pos = qs[q] * (k - 1)
                    lo = min(int(np.floor(pos)), k - 1)
                    out[b, q] = _lerp(vals[lo], vals[min(lo + 1, k - 1)], pos - lo)
        elif op == 2 or op == 4:
            _release(a, bnext, st, head, tail, kept, seen)
        elif op == 3:
            if st[ST_NFREE] < (kept[b] + BLOCK - 1) // BLOCK + 1:  # all or nothing: resume here once grown
                return j
            moved = _values_of(b, bvals, bnext, head, kept)
            _release(b, bnext, st, head, tail, kept, seen)
            for x in moved:
                _add(a, x, cap, bvals, bnext, st, head, tail, kept, seen)
    return n


class QuantileStore:
    """The value buffers of one column's quantiles, one per window cell, in a pool of blocks that grows."""

    def __init__(self, cells: int, cap: int, qs: list[float]) -> None:
        self.cap, self.qs = int(cap), np.asarray(qs, dtype=np.float64)
        self.bvals = np.empty((0, BLOCK), dtype=np.float64)
        self.bnext = np.empty(0, dtype=np.int64)
        self.st = np.array([-1, 0], dtype=np.int64)
        self.head = np.full(cells, -1, dtype=np.int64)
        self.tail = np.full(cells, -1, dtype=np.int64)
        self.kept = np.zeros(cells, dtype=np.int64)
        self.seen = np.zeros(cells, dtype=np.int64)
        self._grow()

    def _grow(self) -> None:
        old = len(self.bnext)
        extra = max(64, old)
        self.bvals = np.concatenate([self.bvals, np.empty((extra, BLOCK))])
        links = np.arange(old + 1, old + extra + 1, dtype=np.int64)
        links[-1] = self.st[ST_FREE]  # the new blocks go in front of the free list
        self.bnext = np.concatenate([self.bnext, links])
        self.st[ST_FREE] = old
        self.st[ST_NFREE] += extra

    def replay(self, log: np.ndarray, n: int, values: np.ndarray, n_out: int) -> np.ndarray:
        """Apply `n` log entries; the quantiles of the windows emitted, one row per output row."""
        out = np.full((n_out, len(self.qs)), np.nan)
        j = 0
        while True:
            j = replay_quantiles(log, j, n, values, self.cap, self.bvals, self.bnext, self.st, self.head, self.tail,
                                 self.kept, self.seen, self.qs, out)
            if j == n:
                return out
            self._grow()

    def relayout(self, live: np.ndarray, new: np.ndarray, cells: int) -> None:
        """The window's cells moved (`live` old cells are now `new`); their buffers go with them."""
        arrays = []
        for old, fill in ((self.head, -1), (self.tail, -1), (self.kept, 0), (self.seen, 0)):
            a = np.full(cells, fill, dtype=np.int64)
            a[new] = old[live]
            arrays.append(a)
        self.head, self.tail, self.kept, self.seen = arrays

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k).copy() for k in ("bvals", "bnext", "st", "head", "tail", "kept", "seen")}

    def set_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
