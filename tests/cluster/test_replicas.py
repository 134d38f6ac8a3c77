"""Checkpoint replicas on the agents (cluster/replicas.py): a coordinator whose disk is lost does not lose its jobs.

On an embedded cluster of real processes, a job with checkpoints every second runs; its checkpoints are copied to an
agent off the coordinator's node, which keeps the newest two. The coordinator is killed with -9, its state directory
deleted, and a new one started on the same port and keys with an empty state directory: it learns the replicas from
the agents' registrations, restores the job from the newest, and the job finishes with exactly the output of a run
without a fault; the client that waited in `submit` gets its result; its status says which agent's replica it was
restored from; the replicas go when the job ends.
The replica format and the agent's shelf are checked on their own too (signature, torn parts, retention)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from microstream.cluster.messages import ReplicaPart
from microstream.cluster.model import Checkpoint, Job
from microstream.cluster.replicas import ReplicaError, ReplicaShelf, pack, seal_key, unpack
from tests.cluster.test_recovery import JOB, _alive, _rows, expected  # noqa: F401 - `expected`: the fixture
from tests.cluster.test_restart import _submit
from tests.helpers import wait_for


def _replica_ids(home: Path, agent: str, job: str) -> list[int]:
    """The checkpoints whose replicas `agent` of the embedded cluster in `home` keeps for `job`, on its disk."""
    return sorted(int(p.stem.split("-")[1]) for p in (home / "replicas" / agent / job).glob("checkpoint-*.replica"))


def _cluster_and_job(tmp_path: Path, *coordinator_args: str) -> tuple[Path, dict, Path, Path]:
    """An embedded 3-agent cluster (home, its state) and the job's script with its output file (12 s of real-time
    readings, checkpoints every second)."""
    home = tmp_path / "home"
    state = cluster.up(3, home, progress=lambda _: None, coordinator_args=list(coordinator_args))
    out = tmp_path / "cluster.jsonl"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(speed=1.0, out=out)))
    return home, state, out, script


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_coordinator_that_lost_its_state_directory_restores_the_job_from_an_agents_replica(request, tmp_path,
                                                                                             capsys):
    fault_free = request.getfixturevalue("expected")
    # node1 shares the coordinator's machine: its replicas would die with the coordinator's disk
    home, state, out, script = _cluster_and_job(tmp_path, "--node", "node1")
    proc = None
    try:
        proc, job = _submit(script, home)  # waits for the job's end, across the coordinator's restart
        with Client(cluster.address(home), timeout=30) as client:
            # three checkpoints replicated: the first one's replica has been removed (the newest two are kept)
            def replicated() -> dict | None:
                s = client.status()["jobs"][job]
                held = [f for f in s["checkpoints"] if f.get("replicas")]
                return s if s["state"] == "running" and held and held[-1]["id"] >= 3 else None

            status = wait_for(replicated, 60, "three checkpoints of the job replicated")
            figures = [f for f in status["checkpoints"] if f.get("replicas")][-1]
            holder = figures["replicas"][0]["agent"]
            assert holder != "node1"  # another node exists: never the coordinator's own
            assert figures["replicas"][0]["bytes"] == figures["replica_bytes"] > 0
            kept = wait_for(lambda: (ids := _replica_ids(home, holder, job)) and len(ids) == 2 and min(ids) > 1
                            and ids, 30, "the holder to keep only the newest two replicas")
            assert figures["id"] in kept or figures["id"] < min(kept)  # newer ones may have landed since
            assert not (home / "replicas" / "node1" / job).exists()
        print_figures = f"replica of checkpoint {figures['id']}: {figures['replica_bytes']:,} bytes on {holder}"

        os.kill(state["pids"][0], signal.SIGKILL)  # the coordinator, and its disk with it
        wait_for(lambda: not _alive(state["pids"][0]), 10, "the coordinator to die")
        shutil.rmtree(cluster.state_dir(home))
        cluster.state_dir(home).mkdir()
        cluster.restart_coordinator(home, progress=lambda _: None, wait_for_agents=False)
        with Client(cluster.address(home), timeout=30) as client:
            final = wait_for(lambda: (s := client.status().get("jobs", {}).get(job)) is not None
                             and s["state"] in ("finished", "failed", "stopped") and s, 180, "the restored job to end")
            assert final["state"] == "finished", final["reason"]
            restored = final["restored_from"]  # adopted where it ran, or recovered from that checkpoint
            assert restored["agent"] == holder and restored["checkpoint"] >= figures["id"], restored
        _, stderr = proc.communicate(timeout=120)  # the client that waited re-attached to the restored job
        assert proc.returncode == 0, stderr
        assert "24,000 records in" in stderr
        assert _rows(out) == fault_free  # exactly once: nothing lost, nothing twice
        # the job has ended: every agent deletes its replicas
        wait_for(lambda: not any((home / "replicas" / f"node{i}" / job).exists() for i in (1, 2, 3)), 30,
                 "the replicas to be removed")
        with capsys.disabled():
            print(f"\n[{print_figures}; restored from {restored}, restarts {final['restarts']}]")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.down(home, progress=lambda _: None)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_whose_hosts_died_with_the_coordinator_and_its_disk_recovers_from_a_replica(request, tmp_path):
    """Two replicas per checkpoint; the coordinator (state directory deleted) and the agent running the job's hosts
    die: a replica on a surviving agent restores the job, which recovers from its checkpoint on the agents left."""
    fault_free = request.getfixturevalue("expected")
    home, state, out, script = _cluster_and_job(tmp_path, "--agent-timeout", "3", "--checkpoint-replicas", "2")
    agent_pids = dict(zip([f"node{i}" for i in (1, 2, 3)], state["pids"][1:], strict=True))
    proc = None
    try:
        proc, job = _submit(script, home)
        with Client(cluster.address(home), timeout=30) as client:
            status = wait_for(lambda: (s := client.status()["jobs"][job])["state"] == "running"
                              and [f for f in s["checkpoints"] if len(f.get("replicas", [])) == 2] and s, 60,
                              "a checkpoint replicated to two agents")
        windows = next(v for v in status["vnodes"].values() if any(t.startswith("window") for t in v["tasks"]))
        os.kill(state["pids"][0], signal.SIGKILL)
        os.kill(agent_pids[windows["agent"]], signal.SIGKILL)  # its hosts end with it, and its replicas are lost
        final = _restored_without_state(home, state, job)
        assert final["state"] == "finished", final["reason"]
        assert final["restored_from"]["agent"] != windows["agent"]
        # one recovery, from the replica's checkpoint; on a loaded 2-core machine a heartbeat may come late once more
        # (the agents' loss limit is 3 s here): then a second one, of an agent counted lost, as in test_recovery
        recoveries = final["recoveries"]
        assert recoveries[0]["checkpoint"] == final["restored_from"]["checkpoint"], recoveries
        assert final["restarts"] == len(recoveries) <= 2 and all(" lost (" in r["reason"] for r in recoveries[1:]), \
            recoveries
        assert windows["agent"] not in {v["agent"] for v in final["vnodes"].values()}
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert _rows(out) == fault_free
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.down(home, progress=lambda _: None)


def _restored_without_state(home: Path, state: dict, job: str) -> dict:
    """After a kill -9 of the embedded cluster's coordinator: its state directory deleted and a new one started; the
    job's status once it has ended (restored from an agent's replica)."""
    wait_for(lambda: not _alive(state["pids"][0]), 10, "the coordinator to die")
    shutil.rmtree(cluster.state_dir(home))
    cluster.restart_coordinator(home, progress=lambda _: None, wait_for_agents=False)
    with Client(cluster.address(home), timeout=30) as client:
        return wait_for(lambda: (s := client.status().get("jobs", {}).get(job)) is not None
                        and s["state"] in ("finished", "failed", "stopped") and s, 180, "the restored job to end")


def _job(epoch: int = 2) -> tuple[Job, Checkpoint]:
    job = Job("j-abc123", "j", None, None, {"vn0": "node2"}, epoch=epoch, restarts=1, barriers=7)  # type: ignore
    job.blob = b"spec"
    return job, Checkpoint(7, 1.0, {"vn0": b"state" * 1000}, 2.0)


def test_a_replica_holds_what_a_coordinator_needs_and_only_its_own_key_opens_it():
    job, checkpoint = _job()
    blob = pack(job, checkpoint, seal_key(b"secret"))
    stored = unpack(blob, seal_key(b"secret"))
    assert (stored.id, stored.epoch, stored.restarts, stored.spec, stored.placement) == (
        "j-abc123", 2, 1, b"spec", {"vn0": "node2"})
    assert stored.checkpoint is not None and stored.checkpoint.snapshots == checkpoint.snapshots
    with pytest.raises(ReplicaError, match="signature"):
        unpack(blob, seal_key(b"another cluster"))
    with pytest.raises(ReplicaError, match="signature"):
        unpack(blob[:-1] + bytes([blob[-1] ^ 1]), seal_key(b"secret"))


def test_an_agent_keeps_whole_replicas_only_the_newest_per_job_and_drops_them_with_the_job(tmp_path):
    shelf = ReplicaShelf(tmp_path / "replicas")
    blob = pack(*_job(), seal_key(None))
    for checkpoint in (1, 2, 3):
        parts = [blob[i:i + 1000] for i in range(0, len(blob), 1000)]
        acks = [shelf.put(ReplicaPart(job="j-abc123", checkpoint=checkpoint, part=i, parts=len(parts), blob=b,
                                      keep=2)) for i, b in enumerate(parts)]
        assert acks == [None] * len(parts)  # made whole on the shelf's thread
        [stored] = shelf.finished(wait=True)
        assert (stored.checkpoint, stored.bytes, stored.error) == (checkpoint, len(blob), None)
    assert [r["checkpoint"] for r in shelf.listing()] == [2, 3]
    assert shelf.read("j-abc123", 3) == blob
    assert b"".join(p.blob for p in shelf.parts("j-abc123", 3, chunk=999)) == blob
    # a part lost on the way (a reconnect): the replica is not made whole, the older ones stay
    assert shelf.put(ReplicaPart(job="j-abc123", checkpoint=4, part=0, parts=3, blob=b"x")) is None
    assert shelf.put(ReplicaPart(job="j-abc123", checkpoint=4, part=2, parts=3, blob=b"z")) is None
    assert shelf.finished(wait=True) == [] and [r["checkpoint"] for r in shelf.listing()] == [2, 3]
    # an agent that died mid-write: the torn part is gone when it starts again
    assert list((tmp_path / "replicas" / "j-abc123").glob("*.part"))
    shelf = ReplicaShelf(tmp_path / "replicas")
    assert not list((tmp_path / "replicas" / "j-abc123").glob("*.part"))
    assert shelf.put(ReplicaPart(job="../evil", checkpoint=1, part=0, parts=1, blob=b"x")).error  # type: ignore
    shelf.drop("j-abc123")
    assert shelf.listing() == [] and not (tmp_path / "replicas" / "j-abc123").exists()


def test_replicas_go_off_the_coordinators_node_and_site_and_their_holders_drop_them_when_the_job_ends(monkeypatch):
    """In process (the coordinator's fake socket, as tests/cluster/test_coordinator.py): a1 is the coordinator's
    node, a2 shares its site: the replica goes to a3; its parts, its acknowledgement in the status, its deletion."""
    from microstream.cluster import messages as cm
    from tests.cluster.test_coordinator import CLIENT, Harness

    h = Harness(monkeypatch, register=False, node="a1", checkpoint_replicas=1)
    for name, site in (("a1", "hall"), ("a2", "hall"), ("a3", "library")):
        h.send(name, cm.Register(name=name, public_key=f"key-{name}", cores=2, arch="x86_64", labels={"site": site}))
    h.take()
    job_id = h.run()
    job = h.job(job_id)
    job.checkpoint_every = 1.0
    h.coord.tick()
    h.now += 1.5
    h.coord.tick()
    for vn, agent in (("vn0", "a1"), ("vn1", "a2"), ("vn2", "a2")):
        h.send(agent, cm.VnodeCheckpointed(job=job_id, vnode=vn, checkpoint=job.pending.id, blob=b"s" * 3_000_000))
    h.take()
    def sent_parts() -> list:  # sealed on a thread, then a few parts per pass of the loop
        h.coord.tick()
        return [(to, m) for to, m in h.take() if isinstance(m, cm.ReplicaPart)]

    first = wait_for(sent_parts, 30, "the replica's first parts")
    h.coord.tick()
    parts = first + [(to, m) for to, m in h.take() if isinstance(m, cm.ReplicaPart)]
    assert len(first) == 8 and len(parts) == parts[0][1].parts == 9  # 9 MB in 1 MB parts, 8 per pass
    assert {to for to, _ in parts} == {"a3"} and [m.part for _, m in parts] == list(range(9))
    stored = unpack(b"".join(m.blob for _, m in parts), seal_key(None))  # the harness has no keys
    assert stored.id == job_id and stored.checkpoint is not None
    assert {vn: len(blob) for vn, blob in stored.checkpoint.snapshots.items()} == dict.fromkeys(
        ("vn0", "vn1", "vn2"), 3_000_000)
    h.send("a3", cm.ReplicaStored(job=job_id, checkpoint=job.checkpoint.id, bytes=1234))
    figures = h.coord.status()["jobs"][job_id]["checkpoints"][-1]
    assert [r["agent"] for r in figures["replicas"]] == ["a3"] and figures["replica_bytes"] > 9_000_000
    h.send(CLIENT, cm.StopRequest(job=job_id))
    assert [to for to, m in h.take() if isinstance(m, cm.ReplicaDrop)] == ["a3"]  # only its holder is told


def test_without_node_the_agent_named_as_the_coordinators_machine_holds_no_replica(monkeypatch):
    import socket

    from microstream.cluster import messages as cm
    from tests.cluster.test_coordinator import Harness

    here = socket.gethostname().split(".")[0]
    h = Harness(monkeypatch, register=False, checkpoint_replicas=1)
    for name in ("a0", here, "zz"):  # the hostname's agent would come first or last by name alone
        h.send(name, cm.Register(name=name, public_key=f"key-{name}", cores=2, arch="x86_64"))
    registry = h.coord.registry
    job = SimpleNamespace(checkpoints=[{"id": 1, "replicas": [{"agent": "zz"}]}])  # zz holds the earlier ones
    assert [a.name for a in h.coord.replicas.choose(job)] == ["zz"]  # type: ignore[arg-type]
    registry.agents["zz"].up = False
    assert [a.name for a in h.coord.replicas.choose(job)] == ["a0"]  # type: ignore[arg-type]
    registry.agents["a0"].up = False
    assert [a.name for a in h.coord.replicas.choose(job)] == [here]  # none other: better than none


def test_replicas_go_outside_the_coordinators_failure_domain_first(monkeypatch):
    """The placement's failure domain (a switch label here): a2 shares the coordinator's switch under another
    site label, a3 its site behind another switch, a4 neither: a4, then a3 (what kills a switch kills a2 too)."""
    from microstream.cluster import messages as cm
    from tests.cluster.test_coordinator import Harness

    h = Harness(monkeypatch, register=False, node="a1", checkpoint_replicas=1)
    for name, site, switch in (("a1", "hall", "sw1"), ("a2", "annex", "sw1"), ("a3", "hall", "sw2"),
                               ("a4", "library", "sw3")):
        h.send(name, cm.Register(name=name, public_key=f"key-{name}", cores=2, arch="x86_64",
                                 labels={"site": site, "switch": switch}))
    job = SimpleNamespace(checkpoints=[])
    assert [a.name for a in h.coord.replicas.choose(job)] == ["a4"]  # type: ignore[arg-type]
    h.coord.registry.agents["a4"].up = False
    assert [a.name for a in h.coord.replicas.choose(job)] == ["a3"]  # type: ignore[arg-type]


def test_an_agents_replicas_outlive_its_work_directory_and_its_restart(tmp_path):
    """An agent removes its work directory when it stops, and a restarted one those its dead predecessors left:
    replicas are kept beside them (`--work-dir DIR`: DIR/replicas, as `microstream agent` sets it)."""
    from microstream.cluster.agent import Agent

    work = tmp_path / "work"
    first = Agent("pi3", "tcp://127.0.0.1:1", workdir=work / "pi3-run1", replica_dir=work / "replicas", log=print,
                  metrics_port=None)
    blob = pack(*_job(), seal_key(None))
    assert first.replicas.put(ReplicaPart(job="j-abc123", checkpoint=5, part=0, parts=1, blob=blob)) is None
    assert [stored.bytes for stored in first.replicas.finished(wait=True)] == [len(blob)]
    assert first.replicas.listing() == [{"job": "j-abc123", "checkpoint": 5, "bytes": len(blob)}]
    first.shutdown()  # what SIGTERM ends with
    assert not (work / "pi3-run1").exists()
    (work / "pi3-run0").mkdir()  # a predecessor killed with -9: its work directory is cleaned up at the next start
    (work / "pi3-run0" / "agent.json").write_text('{"pid": 999999999, "started": "1", "name": "pi3", "coordinator": '
                                                   '"tcp://127.0.0.1:1"}')
    second = Agent("pi3", "tcp://127.0.0.1:1", workdir=work / "pi3-run2", replica_dir=work / "replicas", log=print,
                   metrics_port=None)
    try:
        assert not (work / "pi3-run0").exists()
        assert second.replicas.read("j-abc123", 5) == blob
    finally:
        second.shutdown()


def _chunked_job(checkpoint_id: int, state) -> tuple[Job, Checkpoint]:
    from microstream.runtime.checkpoint_chunks import Encoder

    job, _ = _job()
    return job, Checkpoint(checkpoint_id, 1.0, {"vn0": Encoder().encode(state, checkpoint_id, None),
                                                "vn1": b"pickled"}, 2.0)


def _store(shelf: ReplicaShelf, payload: bytes, checkpoint: int, keep: int = 2):
    parts = [payload[i:i + 100_000] for i in range(0, len(payload), 100_000)]
    for i, b in enumerate(parts):
        assert shelf.put(ReplicaPart(job="j-abc123", checkpoint=checkpoint, part=i, parts=len(parts), blob=b,
                                     keep=keep)) is None
    [stored] = shelf.finished(wait=True)
    return stored


def test_a_holder_gets_only_the_chunks_it_lacks_and_gives_back_whole_checkpoints(tmp_path):
    import numpy as np

    from microstream.cluster.replicas import build, chunk_sources, contents

    key = seal_key(b"secret")
    shelf = ReplicaShelf(tmp_path / "replicas")
    state = {"rows": np.arange(400_000, dtype=np.float64)}  # 3.2 MB: 196 chunks
    job, first = _chunked_job(1, state)
    payload, keys = build(contents(job, first), chunk_sources(first), key)
    assert len(payload) > 3_000_000 and _store(shelf, payload, 1).error is None
    state["rows"][[10, 300_000]] = -1.0  # two chunks change
    job, second = _chunked_job(2, state)
    delta, _ = build(contents(job, second), chunk_sources(second), key, frozenset(keys))
    assert len(delta) < 2 * (16 << 10) + 30_000  # the record, the manifests and two chunks
    assert _store(shelf, delta, 2).error is None
    for cp, checkpoint in ((1, first), (2, second)):  # each fetched back whole, as the coordinator had it
        stored = unpack(shelf.read("j-abc123", cp), key)
        assert stored.checkpoint is not None and stored.checkpoint.snapshots == checkpoint.snapshots
    # the next replica is counted on the chunks of the second: the first's own chunks go with the first
    state["rows"][[20]] = -2.0
    job, third = _chunked_job(3, state)
    before = {k for (k,) in sqlite3.connect(tmp_path / "replicas" / "j-abc123" / "chunks.db").execute(
        "SELECT key FROM chunks")}
    _store(shelf, build(contents(job, third), chunk_sources(third), key, frozenset(before))[0], 3)
    assert [r["checkpoint"] for r in shelf.listing()] == [2, 3]
    after = {k for (k,) in sqlite3.connect(tmp_path / "replicas" / "j-abc123" / "chunks.db").execute(
        "SELECT key FROM chunks")}
    referenced = set(build(contents(job, third), chunk_sources(third), key)[1]) | set(
        build(contents(job, second), chunk_sources(second), key)[1])
    assert after == referenced and len(before - after) == 2  # the first's two changed chunks are gone


def test_a_replica_with_a_chunk_missing_or_damaged_is_refused_not_restored_wrong(tmp_path):
    import numpy as np

    from microstream.cluster.replicas import build, chunk_sources, contents, split

    key = seal_key(None)
    job, checkpoint = _chunked_job(1, {"rows": np.arange(100_000, dtype=np.float64)})
    payload, keys = build(contents(job, checkpoint), chunk_sources(checkpoint), key)
    shelf = ReplicaShelf(tmp_path / "replicas")
    # a delta counted on chunks this agent does not keep: refused (the coordinator sends the next one whole)
    stored = _store(shelf, build(contents(job, checkpoint), chunk_sources(checkpoint), key, frozenset(keys))[0], 1)
    assert stored.error is not None and "not kept here" in stored.error and shelf.listing() == []
    _, sealed, chunks = split(payload)
    victim = keys[3]
    damaged = dict(chunks, **{victim: b"\0" * len(chunks[victim])})
    with pytest.raises(ReplicaError, match=f"chunk {victim} is damaged"):
        unpack(_chunked_for_test(sealed, keys, damaged), key)
    del damaged[victim]
    with pytest.raises(ReplicaError, match=f"chunk {victim} is missing"):
        unpack(_chunked_for_test(sealed, keys, damaged), key)


def _chunked_for_test(sealed: bytes, keys: list[str], chunks: dict[str, bytes]) -> bytes:
    from microstream.cluster.replicas import chunked

    return chunked(sealed, keys, list(chunks.items()))
