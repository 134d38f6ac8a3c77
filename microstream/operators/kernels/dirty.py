"""Which rows (key slots) of an operator's state arrays were written since a move's state transfer last read them.

A keyed operator keeps its state in arrays whose row `r` belongs to key slot `r` (a stateful map's `state[r]`, a
window's ring of cells `r * R ... r * R + R - 1` in each of its arrays). After each batch it stamps the slots the
batch wrote (`mark`, a numba loop over the batch's slots, not per record in Python); a transfer round (runtime/
statexfer.py) first retires the current epoch (`take`), then reads only the rows stamped since the epoch it retired
the round before. So the final round of a move reads and hashes what the last moments changed, not the whole state.

Why this is exact, with the operator writing on one thread while the pre-copy reads on another:

* A batch's stamps are written *after* its state writes, and a stamp's epoch is read in the same GIL-holding numba
  call that stores it. So a stamp stored before a round's `take` has the retired epoch (or an older one, older only
  if its writes are in an earlier round's rows), and a write whose stamp comes after the `take` is stamped with a
  later epoch: the next round reads that row again.
* A new layout (`track`: the arrays grew or were reallocated, or were restored) changes `generation`; a transfer
  that finds a generation other than the one of its last round compares the whole buffer (chunk hashes), as it does
  for an untracked buffer. A generation change can therefore never lose a write, only cost a full comparison.
* Marking starts with a generation's first `take`: a job that never moves pays nothing (not even loading the
  kernel). A transfer's first round of a generation compares the whole buffer anyway, and it reads after its
  `take`, so a write before that `take` is in what it reads; a write after it is marked.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _mark(stamps, epoch, slots):  # pragma: no cover - compiled
    """stamps[s] = the current epoch for every slot s >= 0 of `slots` (-1: a record a mask left out). Not nogil:
    the epoch is read and the stamps stored with the GIL held, so no `take` falls between the two."""
    e = epoch[0]
    n = stamps.shape[0]
    for i in range(slots.shape[0]):
        s = slots[i]
        if 0 <= s < n:
            stamps[s] = e


@numba.njit(cache=True)
def _mark_all(stamps, epoch):  # pragma: no cover - compiled
    e = epoch[0]
    for i in range(stamps.shape[0]):
        stamps[i] = e


class DirtyRows:
    """An operator's record of the rows (key slots) it wrote, per epoch, for the arrays it `track`s.

    >>> import numpy as np
    >>> state = np.zeros((4, 2))
    >>> rows = DirtyRows()
    >>> rows.track(4, state)
    >>> since = rows.take(rows.generation)[0] + 1   # a transfer round read everything: the next reads from here
    >>> state[2] = 1.0
    >>> rows.mark(np.array([2, -1]))
    >>> _, stamps = rows.take(rows.generation)
    >>> np.flatnonzero(stamps >= since).tolist()
    [2]
    """

    def __init__(self) -> None:
        self.stamps = np.zeros(0, dtype=np.int64)  # per row: the epoch it was last written in (0: never)
        self.epoch = np.ones(1, dtype=np.int64)    # the epoch marks stamp now; a `take` moves it on
        self.generation = 0
        self.arrays: list[tuple[np.ndarray, int]] = []  # (array, bytes per row) of every tracked array
        self.active = False  # marking: from this generation's first `take` on

    def track(self, rows: int, *arrays: np.ndarray) -> None:
        """From now on the state lives in `arrays` (C-contiguous), each of `rows` rows. A new generation: what a
        transfer read of the old arrays is compared whole next time."""
        self.arrays = [(a, a.nbytes // rows) for a in arrays
                       if rows > 0 and a.nbytes > 0 and a.nbytes % rows == 0 and a.flags.c_contiguous]
        self.stamps = np.zeros(rows, dtype=np.int64)
        self.generation += 1
        self.active = False

    def mark(self, slots: np.ndarray) -> None:
        """The rows `slots` (int64; negatives skipped) were written: call after the writes."""
        if self.active and slots.shape[0]:
            _mark(self.stamps, self.epoch, slots)

    def mark_all(self) -> None:
        """Every row may have been written (a watermark that fired windows of many keys)."""
        if self.active:
            _mark_all(self.stamps, self.epoch)

    def take(self, generation: int) -> tuple[int, np.ndarray] | None:
        """A transfer round starts reading: retire the current epoch and return it with the stamps, or None if the
        layout is no longer `generation`'s. The rows written since the round before read them are those stamped
        with its epoch + 1 or later; the next round reads those stamped with this epoch + 1 or later."""
        if generation != self.generation:
            return None
        stamps = self.stamps
        e = int(self.epoch[0])
        self.epoch[0] = e + 1
        self.active = True
        return e, stamps
