"""Schemas: the named, typed columns of a stream, which column is event time and which is the key.

Schemas are propagated along every edge of the logical graph while a pipeline is built, so that a
reference to an unknown column fails before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from .errors import PipelineError, suggest

TIME_DTYPE = np.dtype(np.int64)  # event time: int64 nanoseconds since the Unix epoch, UTC


def _norm_dtype(dt: object) -> np.dtype:
    dtype = np.dtype(dt)  # type: ignore[call-overload]
    # Unicode columns of any width are one logical type: "str".
    return np.dtype("U") if dtype.kind == "U" else dtype


@dataclass(frozen=True)
class Schema:
    """Ordered column names and dtypes, plus the event-time column and key column (if any)."""

    fields: tuple[tuple[str, np.dtype], ...]
    time: str | None = None
    key: str | None = None

    @staticmethod
    def of(fields: Mapping[str, object] | Iterable[tuple[str, object]], time: str | None = None,
           key: str | None = None) -> Schema:
        items = fields.items() if isinstance(fields, Mapping) else fields
        return Schema(tuple((str(n), _norm_dtype(d)) for n, d in items), time, key)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.fields]

    def dtype(self, name: str) -> np.dtype:
        for n, d in self.fields:
            if n == name:
                return d
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.fields)

    def require(self, name: str, operator: str, role: str = "column") -> np.dtype:
        """Return the dtype of `name`, or fail with a message that suggests the nearest column."""
        if name in self:
            return self.dtype(name)
        close = suggest(name, self.names)
        hint = f"did you mean '{close}'? " if close else ""
        raise PipelineError(operator, f"{role} '{name}' is not in the stream; its columns are {self.names}",
                            f"{hint}use one of the stream's columns")

    def with_time(self, time: str | None) -> Schema:
        return replace(self, time=time)

    def with_key(self, key: str | None) -> Schema:
        return replace(self, key=key)

    def empty_columns(self) -> dict[str, np.ndarray]:
        return {n: np.empty(0, dtype=d if d.kind != "U" else "U1") for n, d in self.fields}

    def matches(self, other: Schema) -> bool:
        return self.fields == other.fields and self.time == other.time

    def describe(self) -> str:
        parts = []
        for n, d in self.fields:
            tag = "time" if n == self.time else ("str" if d.kind == "U" else str(d))
            parts.append(f"{n}:{tag}{'*' if n == self.key else ''}")
        return ", ".join(parts)


def schema_of_columns(columns: Mapping[str, np.ndarray], time: str | None = None,
                      key: str | None = None) -> Schema:
    return Schema.of({n: np.asarray(a).dtype for n, a in columns.items()}, time, key)
