"""What the coordinator must not forget when it crashes, in SQLite (the standard library's `sqlite3`, WAL mode)
in its state directory: the job table (state, epoch, restarts, placement, the hosts' endpoints, the job spec),
each virtual node's result as it finishes, the checkpoint catalogue (the last completed checkpoint's snapshots
per job) and the jobs that have ended (their last status, the newest `keep_ended`; their result, the newest
`keep_results`: a Pi's SD card does not fill up with results nobody fetched).

Every write is one small transaction, made before the coordinator goes on (it is synchronous): a job submitted,
placed, changing state or epoch, a virtual node done, a checkpoint completed, a job ended. A restarted
coordinator reads it back with `load` (`jobs.JobLifecycle.restore`). A lock file keeps a second coordinator off
the same directory.

    >>> import tempfile
    >>> store = Store(Path(tempfile.mkdtemp()))
    >>> store.ended("nope") is None
    True
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import MicrostreamError
from ..runtime.checkpoint_chunks import ChunkError, Manifest, assemble, is_chunked, is_manifest, manifest_of, pieces

if TYPE_CHECKING:
    from .model import Checkpoint, Job

KEEP_ENDED = 1000       # ended jobs kept in the database (their status); older ones are deleted
KEEP_RESULTS = 100      # ... of which the newest keep their result too (what a client re-attaching gets)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    epoch INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    barriers INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL,
    finished REAL,
    moving TEXT,
    placement TEXT NOT NULL DEFAULT '{}',
    endpoints TEXT NOT NULL DEFAULT '{}',
    info TEXT NOT NULL DEFAULT '{}',
    spec BLOB,
    status TEXT,
    result BLOB
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
CREATE TABLE IF NOT EXISTS vnode_results (
    job TEXT NOT NULL,
    vnode TEXT NOT NULL,
    blob BLOB,
    final TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job, vnode)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    started REAL NOT NULL,
    completed REAL
);
CREATE TABLE IF NOT EXISTS snapshots (
    job TEXT NOT NULL,
    vnode TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (job, vnode)
);
CREATE TABLE IF NOT EXISTS chunks (
    job TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job, key)
);
"""


class StateDirError(MicrostreamError):
    """The state directory cannot be used (another coordinator holds it, or it is not writable)."""


@dataclass
class StoredCheckpoint:
    id: int
    epoch: int
    started: float
    completed: float | None
    snapshots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class StoredJob:
    """A job that had not ended when the coordinator stopped, as it was last written."""

    id: str
    name: str
    state: str
    reason: str
    epoch: int
    restarts: int
    barriers: int
    submitted: float
    moving: str | None
    placement: dict[str, str]
    endpoints: dict[str, dict[str, Any]]
    info: dict[str, Any]
    spec: bytes
    results: dict[str, tuple[bytes | None, dict[str, Any]]] = field(default_factory=dict)  # vnode -> blob, final
    checkpoint: StoredCheckpoint | None = None


@dataclass
class EndedJob:
    """A job that has ended: its last status (as `microstream status` shows it), how it ended and its result."""

    id: str
    state: str
    reason: str
    finished: float | None
    status: dict[str, Any]
    end: dict[str, Any]                  # operator and cause of a failure (to rebuild the client's error)
    result: bytes | None = None          # the pickled list of the virtual nodes' results (a finished job)


class Store:
    def __init__(self, directory: Path, keep_ended: int = KEEP_ENDED, keep_results: int = KEEP_RESULTS,
                 durable: bool = True) -> None:
        self.directory = Path(directory)
        self.keep_ended = keep_ended
        self.keep_results = keep_results
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create the state directory {self.directory}: {exc}") from exc
        self._lock = _lock(self.directory / "coordinator.lock")
        self.path = self.directory / "coordinator.db"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (a Pi that loses power keeps what it acknowledged)
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("PRAGMA cache_size=-1024")  # 1 MB of pages in memory (writes are small, reads rare)
        self.db.executescript(SCHEMA)
        self.writes = 0
        self.chunks_written = 0      # checkpoint chunks written (those already stored are not written again)
        self.chunk_bytes_written = 0
        self.write_seconds = 0.0
        self.slowest_write = 0.0   # seconds (an SD card that stalls shows here)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock)

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        started = time.perf_counter()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        took = time.perf_counter() - started
        self.writes += 1
        self.write_seconds += took
        self.slowest_write = max(self.slowest_write, took)

    # -- writes ---------------------------------------------------------------------------------------------
    def save_job(self, job: Job, spec: bool = False) -> None:
        """The job's row as it is now (with `spec`: the job spec too, written once, at submit)."""
        row = (job.id, job.name, str(job.state), job.reason, job.epoch, job.restarts, job.barriers, job.submitted,
               job.finished, job.move.vnode if job.move is not None else None, _json(job.placement),
               _json(job.endpoints), _json(_info(job)))
        with self._transaction() as db:
            db.execute("""INSERT INTO jobs (id, name, state, reason, epoch, restarts, barriers, submitted, finished,
                                            moving, placement, endpoints, info) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
                          ON CONFLICT(id) DO UPDATE SET state=excluded.state, reason=excluded.reason,
                            epoch=excluded.epoch, restarts=excluded.restarts, barriers=excluded.barriers,
                            finished=excluded.finished, moving=excluded.moving, placement=excluded.placement,
                            endpoints=excluded.endpoints, info=excluded.info""", row)
            if spec:
                db.execute("UPDATE jobs SET spec=? WHERE id=?", (job.blob, job.id))

    def save_result(self, job: Job, vnode: str) -> None:
        """A virtual node ran to its end: its result (what the client will get) and final state."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO vnode_results (job, vnode, blob, final) VALUES (?,?,?,?)",
                       (job.id, vnode, job.results.get(vnode), _json(job.final.get(vnode, {}))))

    def forget_results(self, job: Job) -> None:
        """A recovery starts every virtual node again: results of the earlier epoch no longer count."""
        with self._transaction() as db:
            db.execute("DELETE FROM vnode_results WHERE job=?", (job.id,))

    def save_checkpoint(self, job: Job, checkpoint: Checkpoint) -> None:
        """A completed checkpoint replaces the job's previous one (and the job's row: its barrier counter).

        A chunked snapshot (`runtime/checkpoint_chunks.py`) is written as its manifest, and each of its chunks the
        store does not hold yet (content-addressed: unchanged state is not written again); chunks the new
        checkpoint does not refer to are deleted in the same transaction."""
        with self._transaction() as db:
            db.execute("DELETE FROM snapshots WHERE job=?", (job.id,))
            db.execute("INSERT OR REPLACE INTO checkpoints (job, id, epoch, started, completed) VALUES (?,?,?,?,?)",
                       (job.id, checkpoint.id, job.epoch, checkpoint.started, checkpoint.completed))
            have = {key for (key,) in db.execute("SELECT key FROM chunks WHERE job=?", (job.id,))}
            referenced: set[str] = set()
            rows = []
            for vnode, blob in checkpoint.snapshots.items():
                manifest = checkpoint.manifests.get(vnode)
                if manifest is None and is_chunked(blob):
                    manifest = checkpoint.manifests[vnode] = manifest_of(blob)
                if manifest is None:  # a pickled snapshot: whole
                    rows.append((job.id, vnode, blob))
                    continue
                for key, data in pieces(blob, manifest):
                    if key not in have and key not in referenced:
                        db.execute("INSERT INTO chunks (job, key, data) VALUES (?,?,?)", (job.id, key, data))
                        self.chunks_written += 1
                        self.chunk_bytes_written += len(data)
                    referenced.add(key)
                rows.append((job.id, vnode, manifest.to_bytes()))
            db.executemany("INSERT INTO snapshots (job, vnode, blob) VALUES (?,?,?)", rows)
            db.executemany("DELETE FROM chunks WHERE job=? AND key=?", [(job.id, key) for key in have - referenced])
            db.execute("UPDATE jobs SET barriers=?, info=? WHERE id=?", (job.barriers, _json(_info(job)), job.id))

    def chunk_keys(self, job_id: str) -> set[str]:
        """The keys of the chunks stored for a job's checkpoint."""
        return {key for (key,) in self.db.execute("SELECT key FROM chunks WHERE job=?", (job_id,))}

    def end_job(self, job: Job, status: dict[str, Any], end: dict[str, Any], result: bytes | None) -> None:
        """The job ended: keep its status and result, drop what only a running job needs (its spec, virtual
        nodes' results, checkpoint); delete the oldest ended jobs beyond `keep_ended`, and the results of those
        beyond `keep_results`."""
        with self._transaction() as db:
            db.execute("""UPDATE jobs SET state=?, reason=?, finished=?, moving=NULL, status=?, result=?, spec=NULL,
                          info=? WHERE id=?""",
                       (str(job.state), job.reason, job.finished, _json(status), result,
                        _json({**_info(job), "end": end}), job.id))
            db.execute("DELETE FROM vnode_results WHERE job=?", (job.id,))
            db.execute("DELETE FROM checkpoints WHERE job=?", (job.id,))
            db.execute("DELETE FROM snapshots WHERE job=?", (job.id,))
            db.execute("DELETE FROM chunks WHERE job=?", (job.id,))
            db.execute("""DELETE FROM jobs WHERE status IS NOT NULL AND id NOT IN
                          (SELECT id FROM jobs WHERE status IS NOT NULL ORDER BY finished DESC LIMIT ?)""",
                       (self.keep_ended,))
            db.execute("""UPDATE jobs SET result=NULL WHERE result IS NOT NULL AND status IS NOT NULL AND id NOT IN
                          (SELECT id FROM jobs WHERE status IS NOT NULL ORDER BY finished DESC LIMIT ?)""",
                       (self.keep_results,))

    # -- reads ----------------------------------------------------------------------------------------------
    def load(self) -> list[StoredJob]:
        """The jobs that had not ended, oldest first, with their virtual nodes' results and last checkpoint."""
        results: dict[str, dict[str, tuple[bytes | None, dict[str, Any]]]] = {}
        for job_id, vnode, blob, final in self.db.execute("SELECT job, vnode, blob, final FROM vnode_results"):
            results.setdefault(job_id, {})[vnode] = (blob, json.loads(final))
        checkpoints: dict[str, StoredCheckpoint] = {}
        for job_id, cid, epoch, started, completed in self.db.execute(
                "SELECT job, id, epoch, started, completed FROM checkpoints"):
            checkpoints[job_id] = StoredCheckpoint(cid, epoch, started, completed)
        for job_id, vnode, blob in self.db.execute("SELECT job, vnode, blob FROM snapshots").fetchall():
            if job_id in checkpoints:
                checkpoints[job_id].snapshots[vnode] = self._snapshot(job_id, vnode, checkpoints[job_id].id, blob)
        active = []
        for row in self.db.execute("""SELECT id, name, state, reason, epoch, restarts, barriers, submitted, moving,
                                             placement, endpoints, info, spec FROM jobs
                                      WHERE status IS NULL ORDER BY submitted"""):
            (job_id, name, state, reason, epoch, restarts, barriers, submitted, moving, placement, endpoints, info,
             spec) = row
            active.append(StoredJob(job_id, name, state, reason, epoch, restarts, barriers, submitted, moving,
                                    json.loads(placement), json.loads(endpoints), json.loads(info), spec or b"",
                                    results.get(job_id, {}), checkpoints.get(job_id)))
        return active

    def _snapshot(self, job_id: str, vnode: str, checkpoint: int, blob: bytes) -> bytes:
        """A stored snapshot whole: a chunked one put together from its chunks, each checked against its key."""
        if not is_manifest(blob):
            return blob

        def chunk(key: str) -> bytes | None:
            row = self.db.execute("SELECT data FROM chunks WHERE job=? AND key=?", (job_id, key)).fetchone()
            return None if row is None else bytes(row[0])

        try:
            return assemble(Manifest.from_bytes(blob), chunk, f"checkpoint {checkpoint} of {job_id} ({vnode})")
        except ChunkError as exc:
            raise StateDirError(f"{exc} in {self.path}: the state directory is damaged; start the coordinator with "
                                "an empty --state-dir to restore its jobs from the agents' replicas") from None

    def history(self, limit: int) -> list[EndedJob]:
        """The newest `limit` ended jobs, oldest first (results left out)."""
        rows = self.db.execute("""SELECT id, state, reason, finished, status, info FROM jobs WHERE status IS NOT NULL
                                  ORDER BY finished DESC LIMIT ?""", (limit,)).fetchall()
        return [_ended(row) for row in reversed(rows)]

    def ended(self, job_id: str, result: bool = False) -> EndedJob | None:
        """An ended job (with `result`: its result too), or None if there is none by that id."""
        row = self.db.execute(f"""SELECT id, state, reason, finished, status, info{', result' if result else ''}
                                  FROM jobs WHERE id=? AND status IS NOT NULL""", (job_id,)).fetchone()
        if row is None:
            return None
        ended = _ended(row[:6])
        if result:
            ended.result = row[6]
        return ended

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and `microstream status`'s figures)."""
        return {table: self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
                for table in ("jobs", "vnode_results", "checkpoints", "snapshots")}


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for as long as this process lives (the kernel drops it when it dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirError(f"another coordinator (pid {holder}) uses the state directory {path.parent}; stop it, "
                            "or give this one another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def info_of(job: Job) -> dict[str, Any]:
    """The small things of a job that only a restarted coordinator needs back (also in a checkpoint's replica)."""
    return _info(job)


def _info(job: Job) -> dict[str, Any]:
    """The small things of a job that only a restarted coordinator needs back."""
    return {"pins": job.pins, "predicted": job.predicted, "checkpoint_every": job.checkpoint_every,
            "max_restarts": job.max_restarts, "checkpoints": job.checkpoints, "recoveries": job.recoveries,
            "history": job.history, "placement_quality": job.placement_quality}


def _ended(row: tuple) -> EndedJob:
    job_id, state, reason, finished, status, info = row
    return EndedJob(job_id, state, reason, finished, json.loads(status), json.loads(info).get("end", {}))


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))
