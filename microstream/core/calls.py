"""Public calls: the data a call is about is positional, every option is keyword-only, and a call that does not
fit its signature (an unknown or misspelt keyword, an option given by position, a missing one) is a
`PipelineError` that names the user's line and suggests the option meant, instead of a `TypeError` that names an
internal class. `microstream run` exits 2 for it, like for every other pipeline mistake.

>>> @public
... def read_thing(path, *, time=None, time_unit=None):
...     return path
>>> read_thing("a.csv", timestamp="date")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
microstream.core.errors.PipelineError: read_thing() has no option 'timestamp' (at ...); did you mean time=?
  fix: its options are time=, time_unit=
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import PipelineError, suggest

F = TypeVar("F", bound=Callable[..., Any])

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Names people reach for, from pandas, Flink, Kafka Streams and plain English, and the option they mean.
ALIASES = {
    "timestamp": "time", "ts": "time", "time_col": "time", "time_column": "time", "timestamp_col": "time",
    "event_time": "time", "unit": "time_unit", "tz": "utc_offset", "timezone": "utc_offset",
    "delay": "max_delay", "out_of_orderness": "max_delay", "max_out_of_orderness": "max_delay",
    "allowed_lateness": "lateness", "late": "lateness", "interval": "every", "period": "every",
    "poll_every": "every", "sep": "delimiter", "separator": "delimiter", "header": "names", "usecol": "usecols",
    "dtype": "columns", "dtypes": "columns", "skiprows": "skip_rows", "na_values": "missing",
    "parallelism": "with_parallelism", "partition_by": "key", "key_by": "key", "by": "key",
}


def user_line() -> str:
    """'script.py:12' for the first stack frame outside microstream ('' if there is none)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _at() -> str:
    line = user_line()
    return f" (at {line})" if line else ""


def _prefix_match(key: str, names: list[str]) -> str | None:
    """`init` for `init_value`, `time_unit` for `time_units`: the longest option that starts the key or that the key
    starts (three letters at least)."""
    k = key.lower()
    hits = [n for n in names if len(min(n, k, key=len)) >= 3 and (k.startswith(n.lower()) or n.lower().startswith(k))]
    return max(hits, key=len) if hits else None


def unknown_option(call: str, key: str, options: Iterable[str]) -> PipelineError:
    """The error for an option `call` does not have, with the option most likely meant."""
    names = [o for o in options if not o.startswith("_")]
    alias = ALIASES.get(key.lower())
    close = alias if alias in names else suggest(key, names) or _prefix_match(key, names)
    if alias == "with_parallelism" and close is None:
        return PipelineError(None, f"{call}() has no option '{key}'{_at()}",
                             "parallelism belongs to the operator: call .with_parallelism(n) on its stream")
    hint = f"; did you mean {close}=?" if close else ""
    return PipelineError(None, f"{call}() has no option '{key}'{_at()}{hint}",
                         f"its options are {', '.join(n + '=' for n in names)}")


def check_options(call: str, given: Mapping[str, Any], options: Iterable[str]) -> None:
    """Refuse a keyword of `given` that is not one of `options` (for calls that pass `**options` on)."""
    names = list(options)
    for key in given:
        if key not in names:
            raise unknown_option(call, key, names)


def options_of(cls_or_fn: Callable[..., Any], *, skip: Iterable[str] = ()) -> list[str]:
    """The keyword names a class's constructor (or a function) takes, minus `skip`."""
    target = cls_or_fn.__init__ if inspect.isclass(cls_or_fn) else cls_or_fn
    params = inspect.signature(target).parameters.values()
    return [p.name for p in params if p.name not in ("self", *skip)
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _call_error(call: str, sig: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                exc: TypeError) -> PipelineError:
    params = [p for p in sig.parameters.values() if p.name != "self"]
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_kwargs:
        for key in kwargs:
            if key not in named:
                return unknown_option(call, key, [p.name for p in params if p.kind is p.KEYWORD_ONLY] or named)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    given = len(args) - (1 if "self" in sig.parameters else 0)
    if not has_varargs and given > len(positional):
        extra = args[len(args) - (given - len(positional)):]
        keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(keyword_only, extra, strict=False))
        first = ", ".join(p.name for p in positional) or "no arguments"
        return PipelineError(None, f"{call}() takes {first} by position; its options are keyword-only{_at()}",
                             f"name them, e.g. {call}(..., {shown})" if shown else
                             f"its options are {', '.join(n + '=' for n in keyword_only)}")
    missing = [p.name for p in params if p.default is p.empty and p.kind is p.KEYWORD_ONLY and p.name not in kwargs]
    if missing:
        return PipelineError(None, f"{call}() needs {', '.join(m + '=' for m in missing)}{_at()}",
                             f"e.g. {call}(..., {missing[0]}=...)")
    return PipelineError(None, f"{call}(): {exc}{_at()}", f"its signature is {call}{sig}".replace("(self, ", "("))


def public(fn: F | None = None, *, call: str | None = None) -> Any:
    """Decorate a public function or method: a call that does not bind to its signature is a PipelineError.

    `call` is the name shown (default: the function's). The check runs before the call and only at build time,
    where public calls are made; nothing is added to the per-record path."""

    def decorate(f: F) -> F:
        sig = inspect.signature(f)
        shown = call or f.__name__

        @functools.wraps(f)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise _call_error(shown, sig, args, kwargs, exc) from None
            return f(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
