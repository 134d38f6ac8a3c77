"""The reading side of a logged source: a thread per source that cannot rewind (`poll`, `poll_file`) reads the
sensor at its own cadence and appends each reading to the source's local log (`sources/log.py`), whatever the
emitting side is doing. So a virtual node that is backpressured, or whose link is cut, goes on reading its
sensors; what was read is forwarded when the emitting side can send again, with the event time of the reading.

The task runner makes one `LogPump` per such source when its runtime gives it a log directory (a host: the
agent's work directory; a local run: a temporary one) and starts it at the first poll, after any restore.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.time import MIN_TIME
from ..operators.base import OperatorContext
from ..sources.base import Source
from ..sources.log import END, LoggedSource, SourceLog, decode, encode

log = logging.getLogger(__name__)


def _unstamped(batch: Batch) -> Batch:
    return batch


def log_directory(base: Path, job: str, task_id: str) -> Path:
    """Where a task's source log lives: one directory per job and task, stable across epochs (a recovery on
    the same node finds it)."""
    safe = re.compile(r"[^A-Za-z0-9_.-]")
    return base / (safe.sub("_", job) or "local") / safe.sub("_", task_id)


class LogPump:
    """Reads `reader` (an instance of the source, its reading side) whenever it is due and appends what it
    emits to `source.log`; stops at the source's end (appending the end record), or when told."""

    def __init__(self, reader: Source, source: LoggedSource, clock: Any) -> None:
        self.reader, self.source, self.clock = reader, source, clock
        # the emitting side stamps watermarks (in order, as it emits): the reader need not, nor wait on numba for it
        reader.stamp = _unstamped  # type: ignore[method-assign]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._resume_reader()
        self._thread = threading.Thread(target=self._run, name=f"source-log-{self.source.name}", daemon=True)
        self._thread.start()

    def _resume_reader(self) -> None:
        """A reader restarted (a recovery, a move) continues from the newest record's state, or from the state at
        the checkpoint when its log is gone; its clock starts now (a sensor is read now, not in the past)."""
        last = self.source.log.last()
        state = decode(last)[2] if last is not None else self.source.reader
        if last is not None and decode(last)[0] == END:
            self.source.due = None
            self._stop.set()  # the reading side had ended: only the emitting side has work left
            return
        if state is not None:  # a due time in the past is read at once, then the cadence goes on from there
            self.reader.restore_reader(state)

    def _run(self) -> None:
        reader, source = self.reader, self.source
        try:
            while not self._stop.is_set():
                now = self.clock()
                due = reader.next_due(now)
                source.due = due
                if due is not None and due > now:
                    self._stop.wait((due - now) / 1e9)
                    continue
                emitted = reader.poll(now)
                state = reader.reader_state()
                for port, batch in emitted:
                    if batch.num_rows:
                        source.log.append(encode(port, batch, state))
                if reader.finished:
                    source.log.append(encode(END, None, state))
                    break
        except BaseException as exc:  # noqa: BLE001 - the emitting side raises it in the runner's thread
            source.failure = exc
        finally:
            source.due = None
            source.log.sync()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def logged_source(op: Source, ctx: OperatorContext, directory: Path, transactional: bool,
                  **settings: Any) -> tuple[LoggedSource, LogPump]:
    """Wrap `op` (an opened instance of a source that cannot rewind) as its log's emitting side, reading through
    a pump; `settings` are the log's (limit, on_full, fsync_every)."""
    options = {k: v for k, v in (("limit", getattr(op, "log_limit", None)),
                                 ("on_full", getattr(op, "log_full", None))) if v is not None}
    source_log = SourceLog(directory, **{**options, **settings})
    emitting = LoggedSource(op, source_log, transactional=transactional)
    emitting.open(ctx)
    if emitting.time is not None:  # compile (or load) the stamping kernel now, not while the sensor is being read
        emitting.stamp(Batch({emitting.time: np.zeros(1, np.int64)}))
        emitting.max_seen = MIN_TIME
    return emitting, LogPump(op, emitting, ctx.clock)
