"""Built-in per-key state steps for `stream.stateful_map(step, column, out=...)`.

A step is a numba function `step(state, t, x) -> float` over this key's float64 `state` array; it is
called once per record, in arrival order, inside a compiled loop. Write your own the same way.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def cumsum(state, t, x):
    """Running total per key (state_size=1)."""
    state[0] += x
    return state[0]


@numba.njit(cache=True)
def delta(state, t, x):
    """Change since the key's previous value (NaN for the first); state_size=2."""
    prev = state[0]
    seen = state[1]
    state[0] = x
    state[1] = 1.0
    return x - prev if seen else np.nan


@numba.njit(cache=True)
def rate(state, t, x):
    """Change per second since the key's previous record (NaN for the first); state_size=3."""
    prev_x, prev_t, seen = state[0], state[1], state[2]
    state[0] = x
    state[1] = float(t)
    state[2] = 1.0
    if not seen or t == prev_t:
        return np.nan
    return (x - prev_x) / ((t - prev_t) / 1e9)


def ewma(alpha: float):
    """Exponentially weighted moving average per key (state_size=2)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")

    @numba.njit
    def step(state, t, x):
        if state[1] == 0.0:
            state[0] = x
            state[1] = 1.0
        else:
            state[0] += alpha * (x - state[0])
        return state[0]

    step.state_size = 2  # type: ignore[attr-defined]
    return step


delta.state_size = 2  # type: ignore[attr-defined]
rate.state_size = 3  # type: ignore[attr-defined]
cumsum.state_size = 1  # type: ignore[attr-defined]
