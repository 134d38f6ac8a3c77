"""microstream: stream processing for sensor networks on clusters of small machines.

>>> import microstream as ms
>>> p = ms.Pipeline("rooms")

Names are imported on first use, so the agent and the CLI start without loading numba.

Loading them freezes the garbage collector's view of the process (`gc.freeze()`, before and after the import):
what is alive then (numba, llvmlite and microstream's modules) is never scanned again by a full collection, which
would otherwise land in the first job and again whenever one runs in a long-lived process. The price: a reference
cycle among objects alive at that moment is not freed.
"""

from __future__ import annotations

import gc
import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Batch": ".core.batch", "DataWarning": ".core.errors", "MicrostreamError": ".core.errors",
    "OperatorError": ".core.errors", "Operator": ".operators.base", "Source": ".sources.base", "Sink": ".sinks.base",
    "RunResult": ".runtime.results",
    "PipelineError": ".core.errors", "Pipeline": ".pipeline", "Stream": ".pipeline", "WindowedStream": ".pipeline",
    "Schema": ".core.schema", "duration": ".core.time", "WindowSpec": ".windows", "session": ".windows",
    "sliding": ".windows", "tumbling": ".windows",
}
_MODULES = {"agg", "sinks", "state"}

__all__ = [
    "Batch", "DataWarning", "MicrostreamError", "Operator", "OperatorError", "Pipeline", "PipelineError", "RunResult",
    "Schema", "Sink", "Source", "Stream", "WindowSpec", "WindowedStream", "agg", "duration", "session", "sinks",
    "sliding", "state", "tumbling",
]

if TYPE_CHECKING:
    from . import agg, sinks, state
    from .core.batch import Batch
    from .core.errors import DataWarning, MicrostreamError, OperatorError, PipelineError
    from .core.schema import Schema
    from .core.time import duration
    from .operators.base import Operator
    from .pipeline import Pipeline, Stream, WindowedStream
    from .runtime.results import RunResult
    from .sinks.base import Sink
    from .sources.base import Source
    from .windows import WindowSpec, session, sliding, tumbling


def __getattr__(name: str) -> Any:
    if name not in _MODULES and name not in _LAZY:
        raise AttributeError(f"module 'microstream' has no attribute '{name}'")
    gc.freeze()  # what is loaded already (numba, if the script imported it) is never scanned again
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
    else:
        module = getattr(importlib.import_module(_LAZY[name], __name__), name)
    gc.freeze()  # nor what this import loaded
    globals()[name] = module
    return module


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
