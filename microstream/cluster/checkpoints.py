"""The checkpoint coordinator: a consistent cut of every running job, every `checkpoint_every` seconds.

A checkpoint is a barrier injected at the sources (the same mechanism that moves a virtual node): every
agent running the job is asked to take checkpoint *n*; a virtual node with sources snapshots at once and sends
the barrier down every channel; every other one aligns on it as it arrives (holding the channels it has already
come on), snapshots and passes it on, without stopping. When every virtual node's snapshot is in, checkpoint *n*
is complete: it is what a recovery restarts the job from (`jobs.JobLifecycle.recover`).

One thing happens to a job's virtual nodes at a time: no checkpoint starts while a virtual node moves, and a
move asked for while a checkpoint is being taken waits for it (`Job.waiting`). A checkpoint that does not
complete in time (a host that died mid-way: recovery will see to it) is abandoned. Completed checkpoints are
kept in memory (the last `keep`), the last one in the coordinator's store (so that a restarted coordinator can
recover from it), replicated to agents (`replicas.py`: so that one that lost its store can) and, with a
`directory`, written there (one file per virtual node).
Once a virtual node has finished, the job takes no more checkpoints: a recovery then restarts from the last one
(finished virtual nodes included, which replay what they sent after it).

No sockets here: the coordinator hands in decoded messages and a `send(identity, message)`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime.checkpoint_chunks import ChunkError, Manifest, base_of, is_chunked, manifest_of, resolve
from ..runtime.protocol import CheckpointDone, CheckpointRequest
from .jobs import JobLifecycle, Send
from .messages import VnodeCheckpointed, VnodeDone
from .model import Checkpoint, Job
from .states import JobState

KEEP = 2                    # completed checkpoints kept per job
MIN_TIMEOUT = 30.0          # seconds a checkpoint may take at least before it is abandoned


class Checkpoints:
    def __init__(self, lifecycle: JobLifecycle, send: Send, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic, directory: Path | None = None, keep: int = KEEP) -> None:
        self.lifecycle = lifecycle
        self.send = send
        self.log = log
        self.clock = clock
        self.directory = directory
        self.keep = keep
        self.metrics: Any = None
        self.on_complete: Callable[[Job, Checkpoint], None] | None = None  # its replicas are queued (replicas.py)

    # -- starting one -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Start a checkpoint of every job that is due for one; abandon those that take too long."""
        now = self.clock()
        for job in self.lifecycle:
            if job.pending is not None:
                if now - job.pending.started > max(MIN_TIMEOUT, 3 * (job.checkpoint_every or 0)):
                    self.abandon(job, f"not complete after {now - job.pending.started:.0f} s")
                continue
            if self._may_start(job, now):
                self.start(job)

    def _may_start(self, job: Job, now: float) -> bool:
        if job.state is not JobState.RUNNING or job.checkpoint_every is None or job.move is not None:
            return False
        if job.results:  # a virtual node finished: it cannot take part any more
            return False
        if job.next_checkpoint == 0.0:
            job.next_checkpoint = now + job.checkpoint_every
        return now >= job.next_checkpoint

    def start(self, job: Job) -> Checkpoint:
        job.barriers += 1
        job.pending = Checkpoint(job.barriers, self.clock())
        base = job.checkpoint.id if job.checkpoint is not None else None  # what hosts may send only changes against
        for agent in self.lifecycle.agents_of(job):
            self.send(agent.identity, CheckpointRequest(job=job.id, checkpoint=job.pending.id, base=base))
        return job.pending

    # -- completing it ------------------------------------------------------------------------------------------
    def vnode_checkpointed(self, m: VnodeCheckpointed) -> None:
        job = self.lifecycle.get(m.job)
        if job is None or m.epoch != job.epoch or job.pending is None or job.pending.id != m.checkpoint:
            return  # a stale host, or a checkpoint abandoned meanwhile
        blob = m.blob
        if is_chunked(blob):  # only the chunks that changed since the base: joined with it here
            try:
                blob, job.pending.manifests[m.vnode] = self._resolve(job, m.vnode, blob)
            except ChunkError as exc:
                self.abandon(job, f"the snapshot of {m.vnode} cannot be put together: {exc}")
                return
        job.pending.sent += len(m.blob)
        job.pending.snapshots[m.vnode] = blob
        if len(job.pending.snapshots) == len(job.plan.vnodes):
            self._complete(job, job.pending)

    @staticmethod
    def _resolve(job: Job, vnode: str, blob: bytes) -> tuple[bytes, Manifest]:
        """A chunked snapshot whole: a delta joined with the same virtual node's snapshot in the base checkpoint
        (the last completed one, which the request named)."""
        base = base_of(blob)
        if base is None:
            return blob, manifest_of(blob)
        have = job.checkpoint
        if have is None or have.id != base or vnode not in have.snapshots:
            raise ChunkError(f"it holds the changes since checkpoint {base}, but the last complete one is "
                             f"{have.id if have is not None else 'none'}")
        if vnode not in have.manifests:  # restored (a restart, a replica): hashed once
            have.manifests[vnode] = manifest_of(have.snapshots[vnode])
        return resolve(blob, have.snapshots[vnode], have.manifests[vnode])

    def _complete(self, job: Job, checkpoint: Checkpoint) -> None:
        now = self.clock()
        checkpoint.completed = now
        job.checkpoint, job.pending = checkpoint, None
        job.next_checkpoint = now + (job.checkpoint_every or 0.0)
        figures = {"id": checkpoint.id, "bytes": checkpoint.bytes, "sent_bytes": checkpoint.sent,
                   "seconds": now - checkpoint.started, "at": time.time(), "epoch": job.epoch}
        job.checkpoints.append(figures)
        del job.checkpoints[:-self.keep]
        store = self.lifecycle.store
        written, started = (store.chunk_bytes_written if store is not None else 0), time.perf_counter()
        self.lifecycle.persist_checkpoint(job, checkpoint)
        if store is not None:  # chunks already stored are not written again
            figures["stored_bytes"] = store.chunk_bytes_written - written
            figures["store_s"] = time.perf_counter() - started
        for agent in self.lifecycle.agents_of(job):  # two-phase commit: sinks publish what the checkpoint covers
            self.send(agent.identity, CheckpointDone(job=job.id, checkpoint=checkpoint.id))
        if self.directory is not None:
            self._write(job, checkpoint)
        if self.metrics is not None:
            self.metrics.checkpoints.labels(job.id).inc()
            self.metrics.checkpoint_bytes.labels(job.id).set(checkpoint.bytes)
            self.metrics.checkpoint_seconds.observe(figures["seconds"])
        if self.on_complete is not None:  # after the checkpoint is complete: never on its path
            self.on_complete(job, checkpoint)
        self.lifecycle.release_waiting(job)

    def vnode_done(self, job: Job, m: VnodeDone) -> None:
        """A virtual node finished: the checkpoint being taken can never complete (it would hold what waits for
        it until its time-out), and no other will start."""
        if job.pending is not None and m.epoch == job.epoch:
            self.abandon(job, f"{m.vnode} finished")

    def abandon(self, job: Job, reason: str) -> None:
        """Give up the checkpoint being taken (its hosts may still pass its barrier on: harmless)."""
        if job.pending is None:
            return
        self.log(f"coordinator: checkpoint {job.pending.id} of {job.id} abandoned: {reason}")
        job.pending = None
        job.next_checkpoint = self.clock() + (job.checkpoint_every or 0.0)
        self.lifecycle.persist(job)  # its barrier counter: ids only grow
        self.lifecycle.release_waiting(job)

    def _write(self, job: Job, checkpoint: Checkpoint) -> None:
        """One file per virtual node under directory/job/checkpoint-id; older ones beyond `keep` are removed."""
        assert self.directory is not None
        root = self.directory / job.id
        target = root / f"checkpoint-{checkpoint.id:06d}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for vnode, blob in checkpoint.snapshots.items():
                part = target / f"{vnode}.snapshot.part"
                with open(part, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                part.rename(target / f"{vnode}.snapshot")
            (target / "COMPLETE").touch()
            for old in sorted(root.glob("checkpoint-*"))[:-self.keep]:
                for path in old.iterdir():
                    path.unlink()
                old.rmdir()
        except OSError as exc:
            self.log(f"coordinator: checkpoint {checkpoint.id} of {job.id} not written to {target}: {exc}")
