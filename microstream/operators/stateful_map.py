"""Per-key stateful map: a numba step function over per-key float64 state arrays."""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Callable, Iterable
from typing import Any

import numba
import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from .base import OUT, Emit, Operator, check_scalar_function
from .kernels.dirty import DirtyRows
from .kernels.keys import KeyIndex


def _run_steps(t, slots, x, mask, has_mask, state, out):  # the template: `step` is a global of each copy
    for i in range(len(x)):
        if has_mask and not mask[i]:
            continue
        out[i] = step(state[slots[i]], t[i], x[i])  # type: ignore[name-defined]  # noqa: F821


@functools.cache
def _runner(step: Callable) -> Callable:
    """The per-record loop with `step` compiled in.

    numba cannot cache a kernel that takes the step as an argument, nor one that closes over it (the
    dispatcher's type and pickle name a per-process identity), so every process compiled this loop again. A
    step its author compiled with `cache=True` and no closure (the built-in `ms.state` steps) gets a copy of
    the template whose global `step` is that function, named after the step and a hash of its code, so it has
    its own cache entry and loads from the cache that `microstream warmup` fills. Other steps (closures such as
    `ewma(alpha)`, functions of `__main__`) are compiled in each process, as before."""
    py = getattr(step, "py_func", None)
    cacheable = (py is not None and py.__closure__ is None and py.__module__ not in (None, "__main__")
                 and type(getattr(step, "_cache", None)).__name__ == "FunctionCache")
    if py is None or not cacheable:
        return numba.njit(types.FunctionType(_run_steps.__code__, {**globals(), "step": step}, "run_steps"))
    code = py.__code__
    digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:12]
    name = f"run_steps__{py.__module__.replace('.', '_')}__{py.__qualname__.replace('.', '_')}__{digest}"
    fn = types.FunctionType(_run_steps.__code__, {**globals(), "step": step}, name)
    fn.__qualname__ = name
    return numba.njit(cache=True)(fn)


class StatefulMap(Operator):
    kind = "stateful_map"
    keyed = True
    cpu_us = 1.0

    def __init__(self, step: Callable, column: str, out: str, state_size: int = 1,
                 init: float | Iterable[float] = 0.0) -> None:
        self.step = step if hasattr(step, "py_func") else numba.njit(step)
        self.column, self.out = column, out
        if isinstance(state_size, bool) or not isinstance(state_size, (int, np.integer)) or state_size < 1:
            raise PipelineError(None, f"state_size must be a whole number of at least 1, got {state_size!r}",
                                "state_size=2 gives each key a float64 array of two slots")
        self.state_size = max(int(getattr(step, "state_size", state_size)), int(state_size))
        init_arr = np.atleast_1d(np.asarray(init, dtype=np.float64))
        self.init = np.resize(init_arr, self.state_size) if init_arr.size == 1 else init_arr
        if len(self.init) != self.state_size:
            raise PipelineError(None, f"init has {len(self.init)} values but state_size is {self.state_size}",
                                "give one number for every slot, or one per slot: as many as state_size")

    def describe(self) -> str:
        return f"{self.out} = {getattr(self.step, '__name__', 'step')}({self.column})"

    def _step_name(self) -> str:
        step = str(getattr(self.step, "__name__", "step"))
        return step if step.isidentifier() else "state"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        s = inputs[0]
        if s.key is None:
            raise PipelineError(name, "stateful_map on a stream with no key", "call .key_by('column') first")
        dtype = s.require(self.column, name, "column")
        if dtype.kind not in "biuf":
            raise PipelineError(name, f"column '{self.column}' is {dtype}, not numeric", "use a numeric column")
        if not isinstance(self.out, str) or not self.out:
            raise PipelineError(name, f"out= must name the result column, got {self.out!r}", "e.g. out='co2_delta'")
        for role, col in (("event-time", s.time), ("key", s.key)):
            if self.out == col:
                raise PipelineError(name, f"out='{self.out}' would overwrite the stream's {role} column with the "
                                          "step's float results", f"name the result another column, e.g. "
                                                                  f"out='{self.column}_{self._step_name()}'")
        check_scalar_function(self.step, (self.init.copy(), np.int64(0), 0.0), name, "the step function",
                              "a step is step(state, t, x) -> float: e.g. def step(state, t, x): state[0] += x; "
                              "return state[0]")
        fields: dict[str, object] = dict(s.fields)
        fields[self.out] = np.float64
        return {OUT: Schema.of(fields, time=s.time, key=s.key)}

    def open(self, ctx) -> None:
        super().open(ctx)
        s = ctx.input_schemas[0]
        self.key, self.time = s.key, s.time
        self.keys = KeyIndex(s.dtype(s.key))
        self.dirty = DirtyRows()  # the key slots each batch wrote: a move's transfer reads only those (statexfer)
        self._adopt(np.tile(self.init, (64, 1)))

    def _adopt(self, state: np.ndarray) -> None:
        self.state = state
        self.dirty.track(len(state), state)

    def dirty_trackers(self) -> list[DirtyRows]:
        return [self.dirty]

    def process(self, port: int, batch: Batch) -> Emit:
        n = batch.base_rows
        if n == 0:
            return []
        mask = batch.mask
        slots = self.keys.slots(batch.base(self.key), mask)
        if self.keys.n_slots > len(self.state):
            grown = np.tile(self.init, (max(self.keys.n_slots, 2 * len(self.state)), 1))
            grown[: len(self.state)] = self.state
            self._adopt(grown)
        x = batch.base(self.column).astype(np.float64, copy=False)
        t = batch.base(self.time) if self.time else np.zeros(n, dtype=np.int64)
        out = np.full(n, np.nan)
        has_mask = mask is not None
        _runner(self.step)(t, slots, x, mask if has_mask else np.empty(0, np.bool_), has_mask, self.state, out)
        self.dirty.mark(slots)  # after the writes (kernels/dirty.py says why)
        cols = {c: batch.base(c) for c in batch.names}
        cols[self.out] = out
        return [(OUT, Batch(cols, batch.base_wm, mask))]

    def snapshot(self) -> dict[str, Any]:
        """A move's snapshot, its last act: a view, not a copy (a direct transfer hashes and sends it as it is)."""
        return {"keys": self.keys.snapshot(), "state": self.state[: self.keys.n_slots]}

    def checkpoint_snapshot(self) -> dict[str, Any]:
        return {"keys": self.keys.snapshot(), "state": self.state[: self.keys.n_slots].copy()}

    def live_snapshot(self) -> dict[str, Any]:
        return self.snapshot()  # a view, read while it changes (a pre-copy copies what it sends)

    def restore(self, state: dict[str, Any]) -> None:
        self.keys.restore(state["keys"])
        saved = state["state"]
        if (len(saved) >= 64 and saved.dtype == np.float64 and saved.ndim == 2 and saved.flags.c_contiguous
                and saved.flags.writeable):
            self._adopt(saved)  # a directly transferred state is a view of what arrived, copied no more
            return
        fresh = np.tile(self.init, (max(64, len(saved)), 1))
        fresh[: len(saved)] = saved
        self._adopt(fresh)
