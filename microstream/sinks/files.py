"""File sinks: CSV and JSON lines.

In a local run a file sink writes its file directly. In a cluster job that takes checkpoints it commits in two
phases: records go to a hidden in-progress file beside the target (``.NAME.eEPOCH.inprogress``); when a
checkpoint is complete everywhere, what that checkpoint covers is appended to the target (by a thread of the
sink's, `_Publisher`: the copy and its fsync never hold records up), and at the end the rest. So the target only
ever holds output that no recovery will take back (exactly once), and a job that fails before its first
checkpoint leaves an earlier run's file untouched. After a restore or a move, the in-progress file starts from
the snapshot's size and the target is cut back to what was published by then. If the saved staging file is gone
(a sink of the job reached its end and removed it, then a fault recovered the job from a checkpoint taken before),
the in-progress file starts from the target's first bytes instead: the target is what was staged, up to what was
published.

Fencing: each deployment of a job (epoch) stages in its own file and writes its epoch beside the target
(``.NAME.epoch``); a sink of an older deployment that is still running somewhere (its agent froze and came
back) finds a newer epoch there and refuses to publish. The check and the write it allows happen under a lock
of the target's directory (`flock`), so a replaced deployment's append that passed its check lands before a new
deployment's restore cuts the target back, never after it.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
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
        self.transactional = bool(ctx.extra.get("transactional"))
        self.epoch = int(ctx.extra.get("epoch") or 0)
        self.job = str(ctx.extra.get("job") or "")
        self.staging = self._staging(self.epoch) if self.transactional else self.path
        self.published = 0                    # bytes of the staging file already in the target
        self.prepared: dict[int, int] = {}    # checkpoint -> staging size it covers (not committed yet)
        self._publisher: _Publisher | None = None  # publishing what completed checkpoints cover, if it runs
        self._lock = threading.RLock()        # this instance's threads (the publisher's and its own) take turns
        self._locked_dir: int | None = None   # the target directory's descriptor while this instance holds it
        # a restoring instance (a move's new host, a recovery) creates nothing before its state comes: a move that
        # is called off stops it, and it must leave no staging file or marker behind
        self._deferred = self.restoring
        if self._deferred:
            self._file: TextIO = io.StringIO()  # stands in until restore() (or a first write if no state comes)
        else:
            self._open_staging("w")

    def _open_staging(self, mode: Literal["a", "w"]) -> None:
        if self.transactional:
            with self._exclusive():
                self._claim(opening=True)
        self._file = open(self.staging, mode, encoding="utf-8", newline="")  # noqa: SIM115
        if hasattr(self, "_writer"):
            self._writer = csv.writer(self._file)

    def _ensure_open(self) -> None:
        """A restoring instance whose state never came (it starts afresh): open what `open` deferred."""
        if self._deferred:
            self._deferred = False
            self._open_staging("a")

    def close(self) -> Emit:
        self._ensure_open()
        self._file.close()
        if self.transactional:
            self._published_so_far()
            with self._exclusive():
                self._claim()  # first: a replaced deployment's staging file may be gone already
                self._publish(self.staging.stat().st_size, final=True)
                for old in self.path.parent.glob(f".{self.path.name}.e*.inprogress"):
                    if _epoch_of(old) <= self.epoch:
                        old.unlink(missing_ok=True)
                self._drop_marker()  # the job is done with the file: only its output stays
        return []

    def snapshot(self) -> dict[str, Any]:
        """A move's snapshot, this instance's last act: what it was publishing reaches the target first (the new
        host cuts the target back to the snapshot's size; nothing of the old one's may land after that)."""
        if self.transactional:
            self._published_so_far()
        return self.checkpoint_snapshot()

    def checkpoint_snapshot(self) -> dict[str, Any]:
        """A checkpoint's (the sink goes on): what it is publishing goes on too; a restore takes what was published
        from the target itself."""
        self._ensure_open()
        if self._file.closed:  # closed at the end of its stream (its vnode runs on): the file is final
            return {"closed": True, "published": self.published}
        self._file.flush()
        size = self._file.tell()
        state = {"size": size, "published": self.published, "prepared": dict(self.prepared),
                 "staging": str(self.staging)}
        if self.transactional:  # what a restore that finds the staging file gone checks the target against
            state["tail"] = _tail_digest(self.staging, size)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the file where the saved sink left it (same path; on a shared or copied disk)."""
        self._published_so_far()
        deferred, self._deferred = self._deferred, False
        self._file.close()
        if state.get("closed"):  # it had finished: undo what opening this instance did, touch nothing else
            if not deferred:
                self._undo_open()
            self.published = state["published"]
            return
        with self._exclusive():
            self._restore_file(state, deferred)
        if hasattr(self, "_writer"):
            self._writer = csv.writer(self._file)

    def _restore_file(self, state: dict[str, Any], deferred: bool) -> None:
        if deferred and self.transactional:
            self._claim(opening=True)
        saved = Path(state.get("staging", self.staging))
        if self.transactional and (saved != self.staging or _size(self.staging) < state["size"]):
            self._stage_from(saved, state["size"], state.get("tail"))  # another epoch's (or ours is gone)
        self.staging.touch()  # (a deferred instance created nothing: the saved one's file is normally there)
        self._file = open(self.staging, "r+", encoding="utf-8", newline="")  # noqa: SIM115
        self._file.truncate(state["size"])
        self._file.seek(state["size"])
        if self.transactional:
            # what was published may have gone beyond the snapshot (its checkpoint completed meanwhile), never
            # beyond its size: the target keeps what this checkpoint covers, and nothing after it
            done = min(self.path.stat().st_size if self.path.exists() else 0, state["size"])
            if self.path.exists():
                os.truncate(self.path, done)
            self.published = done
            self.prepared = {int(k): v for k, v in state.get("prepared", {}).items() if v > done}

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The target's directory locked (`flock`, released when its descriptor closes, also by a process that
        dies) across a check of the epoch marker and the writes it allows: without it a sink of a replaced
        deployment could pass its check, and append to the target after a new deployment's restore had cut the
        target back. Re-entrant within the instance; a no-op for a sink that does not commit in two phases."""
        if not self.transactional:
            yield
            return
        with self._lock:
            if self._locked_dir is not None:
                yield
                return
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                _lock_within(fd, self.path.parent, LOCK_TIMEOUT)
                self._locked_dir = fd
                yield
            finally:
                self._locked_dir = None
                os.close(fd)

    # -- two-phase commit ----------------------------------------------------------------------------------------
    def prepare_commit(self, checkpoint: int) -> None:
        self._ensure_open()
        if self.transactional and not self._file.closed:  # closed: everything was published then
            self._failed()
            self._file.flush()  # what the checkpoint covers is in the staging file for the publisher to read
            self.prepared[checkpoint] = self._file.tell()

    def commit(self, checkpoint: int) -> None:
        """Publish what `checkpoint` covers, in the background; a sink of a replaced deployment is refused here."""
        if not self.transactional or checkpoint not in self.prepared:
            return
        self._failed()
        self._claim()
        size = self.prepared[checkpoint]
        self.prepared = {k: v for k, v in self.prepared.items() if k > checkpoint}
        if self._publisher is None:
            self._publisher = _Publisher(self._publish)
        self._publisher.request(size)

    def _failed(self) -> None:
        """A publication that failed (a full disk, a newer deployment) fails the sink at its next step."""
        if self._publisher is not None and self._publisher.error is not None:
            error, self._publisher = self._publisher.error, None
            raise error

    def _published_so_far(self) -> None:
        """Wait until what was asked to be published is in the target (and stop the publisher)."""
        if self._publisher is not None:
            self._publisher.drain()
            self._failed()
            self._publisher = None

    def _undo_open(self) -> None:
        """A restored sink that had already finished: remove the empty staging file and the marker that
        `open` made again (its close removed them the first time)."""
        if self.staging != self.path and self.staging.exists() and self.staging.stat().st_size == 0:
            self.staging.unlink()
        if self.transactional:
            self._drop_marker()

    def _drop_marker(self) -> None:
        """Remove the epoch marker if it is still this deployment's (a newer epoch's sink may have claimed the
        file since: its marker stays)."""
        try:
            if self._marker().read_text() == f"{self.job} {self.epoch}":
                self._marker().unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _stage_from(self, saved: Path, size: int, tail: str | None) -> None:
        """Start this instance's staging file with the first `size` bytes the saved instance had staged: from its
        staging file or, when that is gone, from the target. A sink of the job that reached its end published
        everything it had staged and removed its staging files; a recovery from a checkpoint taken before that (a
        fault after the sink finished, or that sink running on in a replaced epoch on an agent counted lost while
        the new epoch started) found no file to continue from, and failed at every restart. The target is what
        was staged, up to what was published, so its first `size` bytes are the ones the checkpoint covers (the
        restore then cuts the target back to them, and the replay writes the rest again: nothing twice). Only if
        the target's bytes before `size` are the ones the checkpoint saw staged (`tail`): a file of another run
        found there (the sink placed on a node whose disk is not the one it wrote) is not this job's output."""
        if saved != self.staging and _size(saved) >= size:
            source = saved
        elif _size(self.path) >= size and tail in (None, _tail_digest(self.path, size)):
            source = self.path
        else:
            held = _size(self.path)
            what = f"the target holds {max(held, 0)} bytes" if held < size else "the target holds other bytes"
            raise StagingLost(f"{self.path}: cannot continue the saved sink's output ({size} bytes): its staging "
                              f"file {saved} is gone and {what}")
        with open(source, "rb") as src, open(self.staging, "wb") as dst:
            _copy(src, dst, size)

    def _staging(self, epoch: int) -> Path:
        return self.path.with_name(f".{self.path.name}.e{epoch}.inprogress")

    def _marker(self) -> Path:
        return self.path.with_name(f".{self.path.name}.epoch")

    def _claim(self, opening: bool = False) -> None:
        """Write this job's deployment (epoch) beside the target, unless a newer deployment of the job is there,
        or (once this sink has opened) another job has taken the target since."""
        marker = self._marker()
        job, _, epoch = marker.read_text().partition(" ") if marker.exists() else ("", "", "-1")
        if job == self.job and int(epoch or -1) > self.epoch:
            raise StaleEpoch(f"{self.path}: deployment {self.epoch} of job {self.job} was replaced by {epoch}")
        if job != self.job and not opening:
            owner = f"job {job} writes this file now" if job else "a later deployment has finished this file"
            raise StaleEpoch(f"{self.path}: {owner}")
        if job != self.job or int(epoch or -1) < self.epoch:
            marker.write_text(f"{self.job} {self.epoch}")

    def _publish(self, upto: int, final: bool = False) -> None:
        """Append staging[published:upto] to the target (the first publish of a fresh run replaces the target;
        the final one always happens, so an empty run still replaces an earlier run's file)."""
        if upto <= self.published and not final:
            return
        with self._exclusive():
            self._claim()  # a sink of a replaced deployment stops here
            fresh = not (self.published or self.restoring)  # the first publish replaces an earlier run's file
            target = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o666)
            with open(self.staging, "rb") as src, os.fdopen(target, "wb") as dst:
                dst.seek(0, os.SEEK_END)  # appending, without O_APPEND (which copy_file_range refuses)
                src.seek(self.published)
                _copy(src, dst, upto - self.published)
                dst.flush()
                os.fsync(dst.fileno())
            self.published = upto
            self.restoring = False

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
        self._ensure_open()
        cols = self._columns(batch)
        self._writer.writerows(zip(*(c.tolist() for c in cols.values()), strict=True))
        self._file.flush()


class JsonlSink(_FileSink):
    """Write one JSON object per line; NaN becomes null; event-time columns as ISO-8601 UTC."""

    kind = "jsonl"
    cpu_us = 3.0

    def write(self, batch: Batch) -> None:
        self._ensure_open()
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


class _Publisher:
    """Appends to the target what completed checkpoints cover, off the sink's data thread (Flink's sinks commit
    as cheaply: a rename). The copy and the fsync that makes it durable take from a tenth of a second to seconds
    (an SD card, a disk shared with other work), and the records behind the sink waited for them at every
    checkpoint. Publications go in order and coalesce: only the newest size asked for matters."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        self._publish = publish
        self._ready = threading.Condition()
        self._upto: int | None = None    # the size to publish next, if asked
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="file-sink-publisher", daemon=True)
        self._thread.start()

    def request(self, upto: int) -> None:
        with self._ready:
            self._upto = upto if self._upto is None else max(self._upto, upto)
            self._ready.notify()

    def drain(self) -> None:
        """Publish what was asked, then stop."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._upto is None and not self._stopping:
                    self._ready.wait()
                upto, self._upto = self._upto, None
            if upto is None:
                return
            try:
                self._publish(upto)
            except BaseException as exc:  # noqa: BLE001 - handed to the sink's own thread, which raises it
                self.error = exc
                return


class StaleEpoch(RuntimeError):
    """A sink of a deployment that a recovery has replaced tried to publish: its output is refused."""


class TargetLocked(RuntimeError):
    """Another process held the target's directory for `LOCK_TIMEOUT` seconds: a sink of a replaced deployment
    frozen in the middle of an append (SIGSTOP, a stalled disk). The sink fails (its job recovers, and tries again)
    rather than wait for ever."""


LOCK_TIMEOUT = 30.0   # seconds a sink waits for the target's directory; an append holds it for milliseconds


def _lock_within(fd: int, where: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TargetLocked(f"{where}: another process has held this directory's lock for {timeout:.0f} s "
                                   f"(a file sink of a replaced deployment, frozen while appending?)") from None
            time.sleep(0.01)


class StagingLost(RuntimeError):
    """A restored sink found neither the staging file it is to continue nor the target holding what it covers
    (the file lived on a disk that is gone, or on another node's): its output cannot go on exactly once."""


def _size(path: Path) -> int:
    """The file's size, or -1 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _tail_digest(path: Path, size: int, span: int = 4096) -> str | None:
    """A digest of the last `span` bytes before `size` in `path` (one read of 4 KB per checkpoint): enough to tell
    this job's staged output from another file at the target's path."""
    start = max(0, size - span)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return None
    return hashlib.blake2b(data, digest_size=16).hexdigest() if len(data) == size - start else None


def _epoch_of(path: Path) -> int:
    try:
        return int(path.name.rsplit(".e", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return -1


def _copy(src: Any, dst: Any, n: int, chunk: int = 1 << 20) -> None:
    """Copy the next `n` bytes of `src` to `dst` (binary files; both positions move on by what was copied).

    In the kernel where it can (`os.copy_file_range`: no pass through Python, a reflink on file systems that share
    extents): a checkpoint's commit appends everything the sink wrote in an interval, and copying that through
    Python buffers held the sink's data thread for about a second per checkpoint. `dst` must not be opened for
    appending (the kernel refuses O_APPEND)."""
    dst.flush()
    at_src, at_dst, done, ended = src.tell(), dst.tell(), 0, False
    if hasattr(os, "copy_file_range"):
        try:
            while done < n and not ended:
                step = os.copy_file_range(src.fileno(), dst.fileno(), n - done, at_src + done, at_dst + done)
                done, ended = done + step, step == 0
        except OSError:  # a file system or kernel that cannot: the rest through Python
            pass
        src.seek(at_src + done)
        dst.seek(at_dst + done)
        if done == n or ended:
            return
    n -= done
    while n > 0:
        data = src.read(min(chunk, n))
        if not data:
            return
        dst.write(data)
        n -= len(data)
