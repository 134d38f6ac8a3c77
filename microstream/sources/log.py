"""A local log for sources that cannot rewind: what a polled sensor read, kept on the node's disk until a
checkpoint covers it.

A sensor cannot be read in the past, so a polled source (`poll`, `poll_file`) writes every reading to an
append-only log before anything downstream sees it; the source the runtime polls (`LoggedSource`) emits from
the log. The reading side keeps the sensor's cadence while the emitting side is held up (backpressure, a cut
link); a checkpoint records the log position, so a recovery on the same node replays exactly what was read
after it; segments a completed checkpoint covers are deleted.

`SourceLog` is the log: numbered records (sequence numbers from 0) in segment files `SEQ.seg` named by their
first record, each record `[u32 length][u32 crc32][payload]`. A torn record at the end (the process died
mid-write) is cut off when the log is opened. It is thread-safe: one writer and one reader may share it.
What drives the reading side (a thread) is the runtime's (`runtime/sourcelog.py`): operators touch no threads.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import PipelineError
from ..operators.base import OUT, Emit
from .base import Source

_log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")     # payload length, crc32 of the payload
SEGMENT_BYTES = 1 << 20            # a segment is closed (and synced) once it holds this much
LOG_LIMIT = 64 << 20               # default cap of one source's log on disk
FSYNC_EVERY = 1.0                  # seconds between syncs of the active segment (None: only when a segment closes)
ON_FULL = ("drop_oldest", "refuse")


@dataclass
class _Segment:
    first: int          # sequence number of its first record
    path: Path
    count: int = 0      # records
    size: int = 0       # bytes


class SourceLog:
    """An append-only log of records in segment files in `directory` (created if missing).

    `limit` caps the bytes on disk; when an append would pass it, `on_full` says what gives: "drop_oldest"
    deletes the oldest segment (its records are lost, counted in `dropped`, even if not yet emitted) or
    "refuse" refuses the new record (counted in `refused`) until a checkpoint frees room. `fsync_every`
    seconds (0: every append; None: only when a segment closes) bounds what a power cut can take from the
    active segment; a process that dies loses nothing the log accepted (it is in the page cache).
    """

    def __init__(self, directory: str | Path, *, limit: int = LOG_LIMIT, on_full: str = "drop_oldest",
                 segment_bytes: int = SEGMENT_BYTES, fsync_every: float | None = FSYNC_EVERY) -> None:
        if on_full not in ON_FULL:
            raise PipelineError(None, f"log_full must be one of {ON_FULL}, got {on_full!r}")
        if limit < 2 * segment_bytes:
            raise PipelineError(None, f"a source log's limit must hold at least two segments "
                                      f"({2 * segment_bytes:,} bytes), got {limit:,}", "raise log_limit")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limit, self.on_full, self.segment_bytes, self.fsync_every = limit, on_full, segment_bytes, fsync_every
        self.dropped = 0       # records deleted unread because the log was full (drop_oldest)
        self.refused = 0       # records refused because the log was full (refuse) or the disk was
        self.appended = 0      # records appended by this process
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._out: Any = None  # the active segment, open for appending
        self._last_sync = time.monotonic()
        self._cursor: tuple[int, int, int, Any] | None = None  # (seq, segment first, byte offset, open file)
        self._open_segments()

    # -- opening: find the segments, cut a torn tail ----------------------------------------------------------
    def _open_segments(self) -> None:
        for path in sorted(self.directory.glob("*.seg")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            seg = _Segment(first, path)
            with open(path, "rb") as f:
                data = f.read()
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, offset)
                end = offset + _HEADER.size + length
                if end > len(data) or zlib.crc32(data[offset + _HEADER.size:end]) != crc:
                    break
                offset, seg.count = end, seg.count + 1
            if offset < len(data):  # a record the writer did not finish: cut it off
                _log.warning("source log %s: cutting %d bytes of a torn record", path, len(data) - offset)
                with open(path, "r+b") as f:
                    f.truncate(offset)
            seg.size = offset
            if self._segments and seg.first != self.end:  # a gap: keep only what follows it (newer is what counts)
                _log.warning("source log %s: records %d..%d missing; older segments ignored", self.directory,
                            self.end, seg.first - 1)
                for old in self._segments:
                    old.path.unlink(missing_ok=True)
                self._segments = []
            self._segments.append(seg)

    # -- the log's extent ------------------------------------------------------------------------------------
    @property
    def first(self) -> int:
        """The oldest record still on disk (== `end` when the log is empty)."""
        with self._lock:
            return self._segments[0].first if self._segments else self._end_locked()

    @property
    def end(self) -> int:
        """The sequence number the next append gets."""
        return self._end_locked()

    def _end_locked(self) -> int:
        if not self._segments:
            return getattr(self, "_base", 0)
        last = self._segments[-1]
        return last.first + last.count

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            first = self._segments[0].first if self._segments else self._end_locked()
            return {"first": first, "end": self._end_locked(), "bytes": self.size, "segments": len(self._segments),
                    "limit": self.limit, "dropped": self.dropped, "refused": self.refused, "on_full": self.on_full}

    # -- writing -----------------------------------------------------------------------------------------------
    def append(self, payload: bytes) -> int | None:
        """Append one record; returns its sequence number, or None when the log refused it (full)."""
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self.size + len(record) > self.limit and not self._make_room(len(record)):
                self.refused += 1
                return None
            seg = self._active(len(record))
            try:
                self._out.write(record)
                self._out.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self._out.truncate(seg.size)  # the disk is full: refuse the record, keep the log whole
                self.refused += 1
                return None
            seq = seg.first + seg.count
            seg.count += 1
            seg.size += len(record)
            self.appended += 1
            if self.fsync_every is not None and time.monotonic() - self._last_sync >= self.fsync_every:
                self._sync_locked()
            return seq

    def _make_room(self, need: int) -> bool:
        if self.on_full == "refuse":
            return False
        while self.size + need > self.limit and len(self._segments) > 1:
            oldest = self._segments.pop(0)  # never the active one: the limit holds two segments at least
            self.dropped += oldest.count
            oldest.path.unlink(missing_ok=True)
            self._drop_cursor_into(oldest.first)
            _log.warning("source log %s full (%d bytes): dropped %d oldest records", self.directory, self.limit,
                        oldest.count)
        return self.size + need <= self.limit

    def _active(self, need: int) -> _Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is None or self._out is None or (seg.size and seg.size + need > self.segment_bytes):
            if self._out is not None:
                self._sync_locked()
                self._out.close()
                self._out = None
            if seg is None or seg.size:
                first = self._end_locked()
                seg = _Segment(first, self.directory / f"{first:020d}.seg")
                self._segments.append(seg)
            self._out = open(seg.path, "ab")  # noqa: SIM115 - kept open for appending, closed with the segment
            _sync_dir(self.directory)
        return seg

    def sync(self) -> None:
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
        self._last_sync = time.monotonic()

    # -- reading -------------------------------------------------------------------------------------------------
    def read(self, seq: int, max_records: int) -> tuple[int, list[bytes]]:
        """Up to `max_records` records from `seq` on: (the sequence number of the first one returned, payloads).
        A `seq` whose records were dropped (log full) starts at the oldest one still there."""
        with self._lock:
            if not self._segments:
                return self._end_locked(), []
            seq = max(seq, self._segments[0].first)
            out: list[bytes] = []
            start = seq
            while len(out) < max_records and seq < self._end_locked():
                seg = next(s for s in reversed(self._segments) if s.first <= seq)
                if self._cursor is None or self._cursor[0] != seq or self._cursor[1] != seg.first:
                    self._seek(seg, seq)
                assert self._cursor is not None
                _, first, offset, f = self._cursor
                f.seek(offset)
                head = f.read(_HEADER.size)
                length, _crc = _HEADER.unpack(head)
                out.append(f.read(length))
                seq += 1
                if seq >= seg.first + seg.count:  # on to the next segment
                    f.close()
                    self._cursor = None
                else:
                    self._cursor = (seq, first, offset + _HEADER.size + length, f)
            return start, out

    def _seek(self, seg: _Segment, seq: int) -> None:
        if self._cursor is not None:
            self._cursor[3].close()
        f = open(seg.path, "rb")  # noqa: SIM115 - the read cursor keeps it open between reads
        offset = 0
        for _ in range(seq - seg.first):
            f.seek(offset)
            length, _crc = _HEADER.unpack(f.read(_HEADER.size))
            offset += _HEADER.size + length
        self._cursor = (seq, seg.first, offset, f)

    def _drop_cursor_into(self, first: int) -> None:
        if self._cursor is not None and self._cursor[1] == first:
            self._cursor[3].close()
            self._cursor = None

    def last(self) -> bytes | None:
        """The newest record, if any."""
        end = self.end
        if end == self.first:
            return None
        _, records = self.read(end - 1, 1)
        return records[0] if records else None

    # -- deleting -----------------------------------------------------------------------------------------------
    def truncate_before(self, seq: int) -> int:
        """Delete every segment whose records all come before `seq` (a completed checkpoint covers them);
        the active segment stays. Returns the records deleted."""
        deleted = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1].first <= seq:
                old = self._segments.pop(0)
                self._drop_cursor_into(old.first)
                old.path.unlink(missing_ok=True)
                deleted += old.count
        return deleted

    def reset(self, start: int) -> None:
        """Empty the log; the next append gets sequence number `start` (a moved source brings its records)."""
        with self._lock:
            self._close_files()
            for seg in self._segments:
                seg.path.unlink(missing_ok=True)
            self._segments = []
            self._base = start

    def _close_files(self) -> None:
        if self._out is not None:
            self._sync_locked()
            self._out.close()
            self._out = None
        if self._cursor is not None:
            self._cursor[3].close()
            self._cursor = None

    def close(self) -> None:
        with self._lock:
            self._close_files()

    def remove(self) -> None:
        """Close and delete the whole log (its source has ended: nothing can ask for it again)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _sync_dir(directory: Path) -> None:
    """A new segment's name survives a power cut only once its directory is synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- records: what the reading side writes -------------------------------------------------------------------
END = "__end__"  # the record after the last reading: the sensor's source has finished (its `limit`)


def encode(port: str, batch: Batch | None, reader_state: Any) -> bytes:
    """One record: what one read emitted on `port` (columns only: the emitting side stamps watermarks) and the
    reading side's state after it (a restarted reader continues from the newest record's)."""
    cols = None if batch is None else {k: np.ascontiguousarray(v) for k, v in batch.to_dict().items()}
    return pickle.dumps((port, cols, reader_state), protocol=5)


def decode(payload: bytes) -> tuple[str, dict[str, np.ndarray] | None, Any]:
    return pickle.loads(payload)  # noqa: S301 - written by this node's own runtime, in its private work directory


class LoggedSource(Source):
    """The emitting side of a source that cannot rewind: it emits, in order, what the reading side logged
    (readings keep their own event times, stamped when they were read), stamps watermarks as the source
    would have, and is finished once the log's end record is emitted.

    Its snapshot holds the log position: a checkpoint's is the sequence number of the next record (the log
    keeps everything after it until the checkpoint is complete and `commit` deletes what it covers); a move's
    also carries the records not yet emitted, since the log stays on the old node. `reader` is the state the
    reading side had at the last record emitted (a reader restarted without its log continues from it).
    """

    def __init__(self, inner: Source, source_log: SourceLog, batch_rows: int = 4096,
                 transactional: bool = False) -> None:
        super().__init__(inner.time, inner.max_delay, None, batch_rows)
        self.inner, self.log = inner, source_log
        self.kind, self.cpu_us, self.idle_after = inner.kind, inner.cpu_us, inner.idle_after
        self.transactional = transactional  # a checkpoint, not the emission, frees the log
        self.due: Any = None                # when the reading side reads next (ns), for next_due
        self.failure: BaseException | None = None  # what the reading side raised: the emitting side raises it
        self.reader: Any = None             # the reading side's state at the last record emitted

    def describe(self) -> str:
        return f"{self.inner.describe()}, logged"

    def output_ports(self) -> tuple[str, ...]:
        return self.inner.output_ports()

    def open(self, ctx) -> None:
        super().open(ctx)
        self.seq = self.log.first       # a fresh start replays what the log holds (recovered before any checkpoint)
        self._commit_at: dict[int, int] = {}
        self.lost = 0                   # records the log dropped before they were emitted

    def next_due(self, now: int) -> int | None:
        if self.failure is not None or self.seq < self.log.end:
            return None
        due = self.due
        if due is None:  # the reading side has ended (or not started): look again soon
            return now + 5_000_000
        return max(int(due), now) + 2_000_000  # just after the next reading is due

    def poll(self, now: int) -> Emit:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        start, payloads = self.log.read(self.seq, self.batch_size)
        if start > self.seq:
            self.lost += start - self.seq
        self.seq = start
        out: Emit = []
        rows: list[Batch] = []
        for payload in payloads:
            port, cols, state = decode(payload)
            self.seq += 1
            if port == END:
                self.finished = True
                break
            self.reader = state
            batch = Batch(cols or {})
            if port == OUT:
                rows.append(batch)
                continue
            if rows:
                out.append((OUT, self._stamped(rows)))
                rows = []
            out.append((port, batch))
        if rows:
            out.append((OUT, self._stamped(rows)))
        if not self.transactional:  # nothing will ask for what was emitted again: free whole segments
            self.log.truncate_before(self.seq)
        return out

    def _stamped(self, rows: list[Batch]) -> Batch:
        batch = Batch.concat(rows) if len(rows) > 1 else rows[0]
        self.position += batch.num_rows
        return self.stamp(batch) if self.time is not None else batch

    def counters(self) -> dict[str, int]:
        return {"source_log_dropped": self.log.dropped + self.lost, "source_log_refused": self.log.refused}

    def log_stats(self) -> dict[str, Any]:
        """The log's figures for a host's stats (status, metrics): what is buffered, what was dropped."""
        stats = self.log.stats()
        stats["unsent"] = max(0, stats["end"] - self.seq)
        stats["lost"] = self.lost
        return stats

    # -- checkpoints and moves ----------------------------------------------------------------------------------
    def reader_state(self) -> Any:
        """A move: the records not emitted yet travel with the snapshot (the log stays behind)."""
        _, pending = self.log.read(self.seq, max(0, self.log.end - self.seq))
        return {"seq": self.seq, "reader": self.reader, "pending": pending}

    def checkpoint_reader_state(self) -> Any:
        return {"seq": self.seq, "reader": self.reader, "pending": None}

    def restore_reader(self, state: Any) -> None:
        seq, self.reader, pending = state["seq"], state["reader"], state["pending"]
        if pending is not None:  # moved here: the records it had not emitted come first
            self.log.reset(seq)
            for payload in pending:
                self.log.append(payload)
        elif not self.log.first <= seq <= self.log.end:
            # recovered on another node (or the log was lost): what was read after the checkpoint is gone
            _log.warning("%s: the source log holds records %d..%d, the checkpoint is at %d: readings after it "
                        "cannot be replayed here", self.name, self.log.first, self.log.end, seq)
            self.lost += max(0, self.log.first - seq)
            if self.log.end < seq:
                self.log.reset(seq)
        self.seq = max(seq, self.log.first)

    def prepare_commit(self, checkpoint: int) -> None:
        self._commit_at[checkpoint] = self.seq

    def commit(self, checkpoint: int) -> None:
        """Checkpoint `checkpoint` is complete: the segments it covers can go."""
        seq = self._commit_at.pop(checkpoint, None)
        for older in [c for c in self._commit_at if c < checkpoint]:
            del self._commit_at[older]
        if seq is not None:
            self.log.truncate_before(seq)

    def close(self) -> Emit:
        if not self.transactional:  # its readings are all downstream and no recovery replays them
            self.log.remove()
        return []
