"""What the peer scripts share (they run in the peers' virtualenv, so they cannot import bench/canonical.py, which
needs microstream and numba): the per-window accumulator and how a record goes into it."""

from __future__ import annotations

import math

WINDOW_NS = 10 * 10**9
LO, HI = -50.0, 150.0
BATCH = 1000


def new() -> list:
    """[count, sum, min, max]; the mean is sum / count once the window closes, as everywhere else."""
    return [0, 0.0, math.inf, -math.inf]


def fold(acc: list, r: tuple) -> list:
    """Record r = (sensor, time ns, value) into the accumulator, in arrival order (sums added sequentially)."""
    x = r[2]
    acc[0] += 1
    acc[1] += x
    if x < acc[2]:
        acc[2] = x
    if x > acc[3]:
        acc[3] = x
    return acc
