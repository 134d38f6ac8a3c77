"""microstream: stream processing for sensor networks on clusters of small machines.

>>> import microstream as ms
>>> p = ms.Pipeline("rooms")
"""

from __future__ import annotations

from . import agg, sinks, state
from .batch import Batch
from .errors import MicrostreamError, OperatorError, PipelineError
from .pipeline import Pipeline, Stream, WindowedStream
from .schema import Schema
from .timeutil import duration
from .windows import WindowSpec, session, sliding, tumbling

__version__ = "0.1.0"

__all__ = [
    "Batch", "MicrostreamError", "OperatorError", "Pipeline", "PipelineError", "Schema", "Stream",
    "WindowSpec", "WindowedStream", "agg", "duration", "session", "sinks", "sliding", "state", "tumbling",
]
