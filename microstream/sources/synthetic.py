"""A deterministic synthetic sensor stream for tests, examples and benchmarks.

Record `i` comes from sensor `i % sensors` at nominal time `start + i / rate`; its value follows a
per-sensor daily-like sine plus Gaussian noise, with an optional fraction of glitches (readings far
outside the physical range, as cheap sensors produce). Optional jitter moves event times back by
up to `jitter` so records arrive out of order. Everything is generated in fixed blocks from
`seed`, so the records are identical whatever `batch_size` is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..core.time import SECOND, to_ns
from ..operators.base import OUT, Emit
from .base import Source

_BLOCK = 1 << 16


def generate(start_index: int, n: int, *, seed: int = 0, sensors: int = 1000, rate: float = 1000.0,
             start: int = 1_700_000_000 * SECOND, jitter: int = 0, glitch_rate: float = 0.0,
             period: int = 3600 * SECOND) -> dict[str, np.ndarray]:
    """Records `start_index .. start_index + n` as columns sensor (int64), time (int64 ns), value."""
    parts = []
    i = start_index
    end = start_index + n
    while i < end:
        block = i // _BLOCK
        lo = i - block * _BLOCK
        hi = min(_BLOCK, end - block * _BLOCK)
        cols = _block(block, seed, sensors, rate, start, jitter, glitch_rate, period)
        parts.append({k: v[lo:hi] for k, v in cols.items()})
        i = block * _BLOCK + hi
    if not parts:
        return {"sensor": np.empty(0, np.int64), "time": np.empty(0, np.int64), "value": np.empty(0)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _block(block: int, seed: int, sensors: int, rate: float, start: int, jitter: int, glitch_rate: float,
           period: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, block])
    idx = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.int64)
    sensor = idx % sensors
    t = start + (idx * (SECOND / rate)).astype(np.int64)
    if jitter:
        t = t - rng.integers(0, jitter + 1, size=_BLOCK)
    phase = (sensor * 0.618) % 1.0
    base = 20.0 + (sensor % 7) * 3.0
    value = base + 10.0 * np.sin(2 * np.pi * (t / period + phase)) + rng.normal(0.0, 1.0, _BLOCK)
    if glitch_rate:
        glitch = rng.random(_BLOCK) < glitch_rate
        value[glitch] = np.where(rng.random(int(glitch.sum())) < 0.5, -999.0, 999.0)
    return {"sensor": sensor, "time": t, "value": value}


class SyntheticSource(Source):
    """`p.synthetic(count=2_000_000, sensors=1000, rate=1000, jitter=0.05, glitch_rate=0.01, seed=1)`.

    `count` readings in all from `sensors` sensors (columns `sensor`, `time`, `value`); `rate` is records per
    second of event time over all sensors; `seed` fixes them (the same seed gives the same records whatever the
    batch size); `jitter` (a duration: float seconds, "50ms", a timedelta) is the largest out-of-order delay;
    `max_delay` defaults to `jitter`, so no record is late; `glitch_rate` is the share of readings of ±999 (as
    broken sensors give); `period` (a duration, 1 h) is that of each sensor's sine; `start` is the first event
    time (int64 ns); `batch_size` and `speed` as for every replayed source.
    """

    kind = "synthetic"
    cpu_us = 0.2

    def __init__(self, count: int = 100_000, sensors: int = 1000, rate: float = 1000.0, seed: int = 0,
                 jitter: Any = 0, glitch_rate: float = 0.0, start: int = 1_700_000_000 * SECOND,
                 period: Any = 3600.0, max_delay: Any = None, batch_size: int = 65536,
                 speed: float | None = None) -> None:
        jitter_ns = to_ns(jitter, "jitter", operator="synthetic")
        max_delay_ns = to_ns(max_delay, "max_delay", operator="synthetic")
        super().__init__("time", max_delay_ns if max_delay_ns is not None else jitter_ns, speed, batch_size)
        if count < 0 or sensors <= 0 or rate <= 0:
            raise PipelineError(None, "synthetic: count >= 0, sensors > 0 and rate > 0 are required")
        self.count, self.sensors, self.rate, self.seed = int(count), int(sensors), float(rate), int(seed)
        self.jitter, self.glitch_rate, self.start = jitter_ns, float(glitch_rate), int(start)
        self.period = to_ns(period, "period", operator="synthetic") or 3600 * SECOND

    def describe(self) -> str:
        return f"{self.count:,} records, {self.sensors} sensors, {self.rate:g}/s"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        return {OUT: Schema.of({"sensor": np.int64, "time": np.int64, "value": np.float64}, time="time")}

    def open(self, ctx) -> None:
        super().open(ctx)
        self._next = 0

    def read(self) -> Emit | None:
        if self._next >= self.count:
            return None
        n = min(self.batch_size, self.count - self._next)
        cols = generate(self._next, n, seed=self.seed, sensors=self.sensors, rate=self.rate, start=self.start,
                        jitter=self.jitter, glitch_rate=self.glitch_rate, period=self.period)
        self._next += n
        return [(OUT, Batch(cols))]

    def size_hint(self) -> tuple[int, int] | None:
        return self._next, self.count

    def reader_state(self) -> Any:
        return self._next

    def restore_reader(self, state: Any) -> None:
        self._next = state
