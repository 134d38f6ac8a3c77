"""Sensors attached to the node, read from files: `/sys/class/thermal/thermal_zone0/temp` (CPU temperature in
milli-degrees), `/sys/bus/iio/devices/iio:device0/in_temp_input`, a 1-wire `w1_slave`, or any file a driver
rewrites with a number. `Pipeline.poll_file` reads one every N ms.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..core.time import SECOND
from ..operators.base import DEAD, OUT, Emit, dead_letters
from .base import TickingSource

_NUMBER = re.compile(rb"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*")


class FilePollSource(TickingSource):
    """Every `interval` ns, read the number in `path` (surrounding whitespace allowed), multiply by `scale`
    and emit it as `column` (float64) with the read time in `time` (int64 ns, the event time).

    The file is opened afresh at each read, as sysfs attributes require. A reading that is not a number,
    or a file that cannot be read at that moment, goes to the dead-letter stream (`path@n`, n counting
    reads from 1); the source carries on. `limit` stops after that many reads.
    """

    kind = "poll_file"

    def __init__(self, path: str | Path, interval: int | None, column: str = "value", scale: float = 1.0,
                 time: str = "time", limit: int | None = None) -> None:
        if interval is None or interval <= 0:
            raise PipelineError("poll_file", f"every must be positive, got {interval}", "e.g. every=0.5 (seconds)")
        if column == time:
            raise PipelineError("poll_file", f"column and time are both {column!r}", "give the reading another name")
        super().__init__(time, interval, limit)
        self.path, self.column, self.scale = Path(path), column, scale

    def describe(self) -> str:
        return f"{self.path} every {self.interval / SECOND:g} s"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        if not self.path.is_file():
            raise PipelineError(name, f"device file not found: {self.path}",
                                "check the path on the node that reads it (e.g. ls /sys/class/thermal/); "
                                "pin the source there with at='node'")
        return {OUT: Schema.of({self.time: np.int64, self.column: np.float64}, time=self.time)}

    def read_now(self, now: int) -> Emit:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            return [(DEAD, dead_letters(self.name, [f"{self.path}@{self._count}"], [""], [f"cannot read: {exc}"]))]
        m = _NUMBER.fullmatch(raw)
        if m is None:
            text = raw.decode("utf-8", "replace")[:200]
            return [(DEAD, dead_letters(self.name, [f"{self.path}@{self._count}"], [text],
                                        [f"not a number: {text.strip()!r}"]))]
        batch = Batch({self.time: np.array([now], np.int64),
                       self.column: np.array([float(m.group(1)) * self.scale], np.float64)})
        self.position += 1
        return [(OUT, self.stamp(batch))]
