"""Aggregates for windows: `ms.agg.mean("CO2")`, `ms.agg.count()`, or your own numba reducer.

Every aggregate is float64 except `count` (int64). NaN values propagate through sum, mean, var and
std and are skipped by min and max: filter missing readings before aggregating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba

from .core.calls import public
from .core.errors import PipelineError, suggest


@dataclass(frozen=True)
class Aggregate:
    kind: str
    column: str | None = None
    ddof: int = 1
    fn: Callable | None = None
    init: float = 0.0
    merge: Callable | None = None
    q: float = 0.5          # quantile: which
    cap: int = 0            # quantile: values kept per window for an exact result

    def __post_init__(self) -> None:
        if self.column is not None and (not isinstance(self.column, str) or not self.column):
            raise PipelineError(None, f"ms.agg.{self.kind}() takes the name of a column, got {self.column!r}",
                                f"e.g. ms.agg.{self.kind}('co2')")
        if isinstance(self.ddof, bool) or not isinstance(self.ddof, int) or self.ddof < 0:
            raise PipelineError(None, f"ms.agg.{self.kind}(): ddof must be a whole number >= 0, got {self.ddof!r}",
                                "ddof=1 (the default) for the sample variance, ddof=0 for the population's")

    def describe(self) -> str:
        if self.kind == "quantile":
            return f"quantile({self.column}, {self.q:g})"
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


MAX_VALUES = 10_000  # values per window a quantile keeps by default (80 kB a window at most)


@public(call="ms.agg.quantile")
def quantile(column: str, q: float, *, max_values: int = MAX_VALUES) -> Aggregate:
    """The `q` quantile (0 <= q <= 1) of `column` in each window, as `numpy.quantile` computes it (linear
    interpolation between the two nearest values); NaN values are skipped, an empty window gives NaN.

    Exact while a window holds at most `max_values` values: each window keeps its values (in blocks of 64, so
    memory follows the values held: 8 bytes a value) and sorts them when it fires. Past the cap a window keeps a
    uniform random sample of `max_values` of them (reservoir sampling, reproducible) and the result is an
    estimate: raise `max_values` for larger windows if you need them exact. When sessions merge, their values
    are pooled (exact while the merged session holds at most `max_values`). Several quantiles of one column
    share one buffer.

    >>> import microstream as ms
    >>> p = ms.Pipeline("q"); out = ms.sinks.collect()
    >>> readings = [{"t": s, "room": "a", "pm25": float(v)} for s, v in enumerate([12, 15, 11, 40, 14, 13])]
    >>> (p.from_iterable(readings, time="t", time_unit="s").key_by("room").window(ms.tumbling("1min"))
    ...   .aggregate(p95=ms.agg.quantile("pm25", 0.95), mid=ms.agg.median("pm25")).sink(out))
    >>> _ = p.run(); r = out.records()[0]
    >>> round(r["p95"], 2), r["mid"]
    (33.75, 13.5)
    """
    try:
        qf = float(q)
    except (TypeError, ValueError):
        qf = float("nan")
    if not 0.0 <= qf <= 1.0:
        raise PipelineError("quantile", f"q must be between 0 and 1, got {q!r}",
                            "e.g. ms.agg.quantile('pm25', 0.95) for the 95th percentile")
    if int(max_values) < 1:
        raise PipelineError("quantile", f"max_values must be at least 1, got {max_values!r}",
                            f"the default keeps {MAX_VALUES:,} values per window")
    return Aggregate("quantile", column, q=qf, cap=int(max_values))


@public(call="ms.agg.median")
def median(column: str, *, max_values: int = MAX_VALUES) -> Aggregate:
    """The median of `column` in each window: `quantile(column, 0.5)` (exact up to `max_values` per window)."""
    return quantile(column, 0.5, max_values=max_values)


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


_ALIASES = {"avg": "mean", "average": "mean", "total": "sum", "minimum": "min", "maximum": "max", "stddev": "std",
            "stdev": "std", "variance": "var", "len": "count", "size": "count", "percentile": "quantile",
            "p50": "median", "agg": "reduce", "fold": "reduce"}
AGGREGATES = ("count", "sum", "mean", "min", "max", "var", "std", "first", "last", "quantile", "median", "reduce")


def __getattr__(name: str) -> Any:
    """`ms.agg.avg`: an aggregate that does not exist is an AttributeError that names the one meant."""
    if name.startswith("__"):
        raise AttributeError(f"module 'microstream.agg' has no attribute '{name}'")
    meant = _ALIASES.get(name.lower()) or suggest(name, list(AGGREGATES))
    hint = f"; did you mean ms.agg.{meant}?" if meant else ""
    raise AttributeError(f"ms.agg has no aggregate '{name}'{hint} (its aggregates: {', '.join(AGGREGATES)})")
