"""The coordinator's store (SQLite in its state directory), without processes or sockets: what a job's row holds
and gives back, a virtual node's result, the checkpoint catalogue (the last completed one per job), the end of a
job (its status and result kept, the rest dropped), the bounded table of ended jobs, one coordinator per
directory."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest

from microstream.cluster.model import Checkpoint, Job, Move
from microstream.cluster.states import JobState, MoveMode
from microstream.cluster.store import StateDirError, Store
from microstream.runtime.checkpoint_chunks import Encoder, manifest_of, resolve


def _job(job_id: str = "campus-1", submitted: float = 1.0) -> Job:
    plan = SimpleNamespace(vnodes={"vn0": SimpleNamespace(id="vn0"), "vn1": SimpleNamespace(id="vn1")})
    job = Job(job_id, "campus", SimpleNamespace(name="campus"), plan, {"vn0": "pi1", "vn1": "pi2"},  # type: ignore[arg-type]
              submitted=submitted, pins={"vn0": "pi1"}, predicted={"pi1–pi2": 10.0}, checkpoint_every=1.0,
              max_restarts=5)
    job.blob = cloudpickle.dumps({"graph": job.graph, "plan": plan, "credits": 8})
    return job


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def test_a_job_is_read_back_as_it_was_last_written(store):
    job = _job()
    store.save_job(job, spec=True)
    job.advance(JobState.RUNNING)
    job.epoch, job.restarts, job.barriers = 2, 1, 7
    job.endpoints = {"vn0": {"endpoint": "tcp://10.0.0.1:5000", "public_key": "k"}}
    job.recoveries.append({"at": 5.0, "reason": "agent pi2 lost", "epoch": 2, "checkpoint": 3})
    job.move = Move("vn1", MoveMode.MIGRATE, "pi2", "pi1", 7, None, started=0.0)
    store.save_job(job)  # no spec this time: the one written at submit stays
    [stored] = store.load()
    assert (stored.id, stored.name, stored.state, stored.epoch, stored.restarts, stored.barriers) == (
        "campus-1", "campus", "running", 2, 1, 7)
    assert stored.placement == {"vn0": "pi1", "vn1": "pi2"} and stored.endpoints == job.endpoints
    assert stored.moving == "vn1" and stored.spec == job.blob
    assert stored.info["pins"] == {"vn0": "pi1"} and stored.info["max_restarts"] == 5
    assert stored.info["recoveries"] == job.recoveries and stored.info["checkpoint_every"] == 1.0


def test_results_and_the_last_checkpoint_come_back_with_the_job(store):
    job = _job()
    store.save_job(job, spec=True)
    job.results["vn0"], job.final["vn0"] = b"result-0", {"state": "done", "stats": {"n": 3}}
    store.save_result(job, "vn0")
    for cid in (1, 2):
        job.barriers = cid
        store.save_checkpoint(job, Checkpoint(cid, 10.0 * cid, {"vn0": b"s0-%d" % cid, "vn1": b"s1-%d" % cid},
                                              completed=10.0 * cid + 1))
    [stored] = store.load()
    assert stored.results == {"vn0": (b"result-0", {"state": "done", "stats": {"n": 3}})}
    assert stored.checkpoint is not None and stored.checkpoint.id == 2 and stored.barriers == 2
    assert stored.checkpoint.snapshots == {"vn0": b"s0-2", "vn1": b"s1-2"}  # the last one only
    assert store.counts() == {"jobs": 1, "vnode_results": 1, "checkpoints": 1, "snapshots": 2}
    store.forget_results(job)  # a recovery: the earlier epoch's results no longer count
    assert store.load()[0].results == {}


def test_an_ended_job_keeps_its_status_and_result_and_nothing_else(store):
    job = _job()
    store.save_job(job, spec=True)
    job.results["vn0"] = b"r"
    store.save_result(job, "vn0")
    store.save_checkpoint(job, Checkpoint(1, 0.0, {"vn0": b"s"}, completed=1.0))
    job.advance(JobState.FAILED)
    job.reason, job.finished = "virtual node vn1 failed", 99.0
    store.end_job(job, {"state": "failed", "vnodes": {}}, {"operator": "map", "cause": "ValueError: x"}, None)
    assert store.load() == []
    assert store.counts() == {"jobs": 1, "vnode_results": 0, "checkpoints": 0, "snapshots": 0}
    ended = store.ended("campus-1", result=True)
    assert ended is not None and (ended.state, ended.reason, ended.finished) == ("failed", job.reason, 99.0)
    assert ended.status == {"state": "failed", "vnodes": {}} and ended.end["operator"] == "map"
    assert store.db.execute("SELECT spec FROM jobs").fetchone() == (None,)  # the spec goes with the job
    assert store.ended("nope") is None


def test_only_the_newest_ended_jobs_are_kept(tmp_path):
    store = Store(tmp_path / "state", keep_ended=3, keep_results=2)
    try:
        for i in range(5):
            job = _job(f"j{i}", submitted=float(i))
            store.save_job(job, spec=True)
            job.advance(JobState.RUNNING)
            job.advance(JobState.FINISHED)
            job.finished = 100.0 + i
            store.end_job(job, {"state": "finished", "i": i}, {}, cloudpickle.dumps([b"r%d" % i]))
        assert [e.id for e in store.history(10)] == ["j2", "j3", "j4"]  # oldest first
        assert [e.id for e in store.history(2)] == ["j3", "j4"]
        assert store.ended("j0") is None and store.ended("j4").result is None
        assert cloudpickle.loads(store.ended("j4", result=True).result) == [b"r4"]
        assert store.ended("j2", result=True).result is None  # its status stays, its result went
    finally:
        store.close()


def test_one_coordinator_per_state_directory_and_the_journal_is_wal(tmp_path):
    store = Store(tmp_path / "state")
    try:
        with pytest.raises(StateDirError, match=r"another coordinator \(pid \d+\) uses the state directory"):
            Store(tmp_path / "state")
        assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()
    Store(tmp_path / "state").close()  # free again once the first has closed (or died)


def test_what_is_written_survives_a_process_that_never_closed(tmp_path):
    """A crash closes nothing: every write was its own committed transaction."""
    store = Store(tmp_path / "state")
    store.save_job(_job(), spec=True)
    other = sqlite3.connect(tmp_path / "state" / "coordinator.db")  # another reader, while the writer is open
    assert other.execute("SELECT id, state FROM jobs").fetchall() == [("campus-1", "deploying")]
    other.close()
    store.close()


def _chunked(rows: int = 20_000) -> tuple[Encoder, dict]:
    return Encoder(), {"state": np.arange(rows * 8, dtype=np.float64)}


def test_a_chunked_checkpoint_is_stored_once_per_chunk_and_read_back_whole(store):
    job = _job()
    store.save_job(job, spec=True)
    host, state = _chunked()  # 1.25 MB: 80 chunks
    first = Checkpoint(1, 1.0, {"vn0": host.encode(state, 1, None), "vn1": b"pickled"}, completed=2.0)
    store.save_checkpoint(job, first)
    assert store.chunks_written == 1 + len(manifest_of(first.snapshots["vn0"]).chunks[0])
    old_keys = store.chunk_keys(job.id)
    state["state"][[5, 90_000]] = -1.0  # two chunks change
    full, manifest = resolve(host.encode(state, 2, base=1), first.snapshots["vn0"])
    second = Checkpoint(2, 3.0, {"vn0": full, "vn1": b"pickled-2"}, completed=4.0, manifests={"vn0": manifest})
    written = store.chunks_written
    store.save_checkpoint(job, second)
    assert store.chunks_written - written == 2  # the skeleton is the same: only the two changed chunks
    keys = store.chunk_keys(job.id)
    assert keys == set(manifest.all_keys()) and len(old_keys - keys) == 2  # the replaced chunks are deleted
    [stored] = store.load()
    assert stored.checkpoint is not None and stored.checkpoint.snapshots == {"vn0": full, "vn1": b"pickled-2"}
    store.end_job(job, {}, {}, None)
    assert store.chunk_keys(job.id) == set()


def test_a_damaged_or_missing_chunk_is_a_clear_error_not_wrong_state(tmp_path):
    store = Store(tmp_path / "state")
    job = _job()
    store.save_job(job, spec=True)
    host, state = _chunked()
    blob = host.encode(state, 1, None)
    store.save_checkpoint(job, Checkpoint(1, 1.0, {"vn0": blob, "vn1": b"p"}, completed=2.0))
    victim = manifest_of(blob).chunks[0][7]
    store.close()
    db = sqlite3.connect(tmp_path / "state" / "coordinator.db")
    db.execute("UPDATE chunks SET data=? WHERE key=?", (b"\0" * 100, victim))
    db.commit()
    db.close()
    store = Store(tmp_path / "state")
    with pytest.raises(StateDirError, match=f"checkpoint 1 of campus-1 \\(vn0\\): chunk {victim} is damaged"):
        store.load()
    store.db.execute("DELETE FROM chunks WHERE key=?", (victim,))
    with pytest.raises(StateDirError, match=f"chunk {victim} is missing .*empty --state-dir"):
        store.load()
    store.close()
