"""Errors raised to users. Every message names the operator at fault and says what to do."""

from __future__ import annotations


class MicrostreamError(Exception):
    """Base class of every error microstream raises on purpose."""


class PipelineError(MicrostreamError):
    """A pipeline definition is wrong; raised while it is being built, before anything runs."""

    def __init__(self, operator: str | None, problem: str, fix: str | None = None) -> None:
        self.operator = operator
        self.problem = problem
        self.fix = fix
        where = f"operator '{operator}': " if operator else ""
        text = f"{where}{problem}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class DataWarning(UserWarning):
    """A notice about a source's data, given while the pipeline is built: e.g. a file column whose values hit a
    common "no reading" sentinel (-9999) that no `missing=` turns into NaN. The data is still read as it is."""


class OperatorError(MicrostreamError):
    """A user function failed while the pipeline ran; names the operator and the cause."""

    def __init__(self, operator: str, cause: BaseException) -> None:
        self.operator = operator
        self.cause = cause
        super().__init__(f"operator '{operator}' failed: {type(cause).__name__}: {cause}")


def suggest(name: str, options: list[str]) -> str | None:
    """The option closest to a mistyped `name` (case-insensitive first), or None."""
    import difflib

    lowered = {o.lower(): o for o in options}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None
