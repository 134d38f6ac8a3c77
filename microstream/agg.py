"""Aggregates for windows: `ms.agg.mean("CO2")`, `ms.agg.count()`, or your own numba reducer.

Every aggregate is float64 except `count` (int64). NaN values propagate through sum, mean, var and
std and are skipped by min and max: filter missing readings before aggregating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba

from .core.calls import public


@dataclass(frozen=True)
class Aggregate:
    kind: str
    column: str | None = None
    ddof: int = 1
    fn: Callable | None = None
    init: float = 0.0
    merge: Callable | None = None

    def describe(self) -> str:
        return f"{self.kind}({self.column or ''})"


@public(call="ms.agg.count")
def count() -> Aggregate:
    """Number of records in the window.

    >>> count().kind
    'count'
    """
    return Aggregate("count")


@public(call="ms.agg.sum")
def sum(column: str) -> Aggregate:  # noqa: A001 - mirrors the aggregate's name
    """Sum of `column`."""
    return Aggregate("sum", column)


@public(call="ms.agg.mean")
def mean(column: str) -> Aggregate:
    """Arithmetic mean of `column`."""
    return Aggregate("mean", column)


@public(call="ms.agg.min")
def min(column: str) -> Aggregate:  # noqa: A001
    """Smallest value of `column` (NaN skipped)."""
    return Aggregate("min", column)


@public(call="ms.agg.max")
def max(column: str) -> Aggregate:  # noqa: A001
    """Largest value of `column` (NaN skipped)."""
    return Aggregate("max", column)


@public(call="ms.agg.var")
def var(column: str, *, ddof: int = 1) -> Aggregate:
    """Variance of `column` (sample variance by default, `ddof=0` for population); Welford-stable."""
    return Aggregate("var", column, ddof)


@public(call="ms.agg.std")
def std(column: str, *, ddof: int = 1) -> Aggregate:
    """Standard deviation of `column` (`ddof` as for `var`)."""
    return Aggregate("std", column, ddof)


@public(call="ms.agg.first")
def first(column: str) -> Aggregate:
    """Value of `column` at the earliest event time in the window."""
    return Aggregate("first", column)


@public(call="ms.agg.last")
def last(column: str) -> Aggregate:
    """Value of `column` at the latest event time in the window."""
    return Aggregate("last", column)


@public(call="ms.agg.reduce")
def reduce(column: str, fn: Callable[[float, float], float], *, init: float = 0.0,
           merge: Callable[[float, float], float] | None = None) -> Aggregate:
    """A user-defined reducer `fn(acc, x) -> acc`, compiled with numba, starting from `init`.

    `merge(acc_a, acc_b)` combines two partial results; session windows need it when sessions
    merge (it defaults to `fn`, which is right for max-, min- and sum-like reducers).

    >>> import microstream as ms
    >>> peak = ms.agg.reduce("v", lambda acc, x: acc if acc > abs(x) else abs(x))
    >>> peak.kind
    'reduce'
    """
    return Aggregate("reduce", column, fn=_jit2(fn), init=float(init), merge=_jit2(merge or fn))


def _jit2(fn: Callable) -> Callable:
    py = getattr(fn, "py_func", fn)
    return numba.njit(py)
