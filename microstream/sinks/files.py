"""File sinks: CSV and JSON lines, continued (truncated to the saved size) after a restore.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from ..core.batch import Batch
from ..operators.base import Emit
from .base import Sink


class _FileSink(Sink):
    def __init__(self, path: str | Path, iso_time: bool = True) -> None:
        self.path = Path(path)
        self.iso_time = iso_time

    def describe(self) -> str:
        return str(self.path)

    def open(self, ctx) -> None:
        super().open(ctx)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a restored sink continues its file (restore() trims it to the saved size); a new one starts it
        self.restoring = bool(ctx.extra.get("restoring"))
        mode: Literal["a", "w"] = "a" if self.restoring else "w"
        self._file: TextIO = open(self.path, mode, encoding="utf-8", newline="")  # noqa: SIM115

    def close(self) -> Emit:
        self._file.close()
        return []

    def snapshot(self) -> dict[str, Any]:
        self._file.flush()
        return {"size": self._file.tell()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the file where the saved sink left it (same path; on a shared or copied disk)."""
        self._file.close()
        self._file = open(self.path, "r+", encoding="utf-8", newline="")  # noqa: SIM115
        self._file.truncate(state["size"])
        self._file.seek(state["size"])
        if hasattr(self, "_writer"):
            self._writer = csv.writer(self._file)

    def _columns(self, batch: Batch) -> dict[str, np.ndarray]:
        return self._iso(batch) if self.iso_time else batch.to_dict()


class CsvSink(_FileSink):
    """Write records as CSV with a header; event-time columns as ISO-8601 UTC."""

    kind = "csv"
    cpu_us = 2.0

    def open(self, ctx) -> None:
        super().open(ctx)
        self._writer = csv.writer(self._file)
        if not self.restoring:
            self._writer.writerow(ctx.input_schemas[0].names)

    def write(self, batch: Batch) -> None:
        cols = self._columns(batch)
        self._writer.writerows(zip(*(c.tolist() for c in cols.values()), strict=True))
        self._file.flush()


class JsonlSink(_FileSink):
    """Write one JSON object per line; NaN becomes null; event-time columns as ISO-8601 UTC."""

    kind = "jsonl"
    cpu_us = 3.0

    def write(self, batch: Batch) -> None:
        cols = self._columns(batch)
        names = list(cols)
        buf = io.StringIO()
        for row in zip(*(c.tolist() for c in cols.values()), strict=True):
            buf.write(json.dumps({n: _json_safe(v) for n, v in zip(names, row, strict=True)}))
            buf.write("\n")
        self._file.write(buf.getvalue())
        self._file.flush()


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
