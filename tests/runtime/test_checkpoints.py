"""Checkpoints of a running job: a barrier injected at the sources flows along every channel; each virtual node
aligns on it (holding the channels it has already come on), snapshots, passes it on and goes on. Restoring every
virtual node from one checkpoint and replaying gives exactly the output of a run without a failure.

The hosts here are the real `HostRuntime`s, stepped in turn, with channels as in-memory queues (the ZeroMQ
channels and processes are exercised by the cluster tests)."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import pytest

import microstream as ms
from microstream.graph.physical import build_plan
from microstream.runtime.host import HostRuntime
from microstream.runtime.results import merge_results
from tests.helpers import wait_for


@dataclass
class Msg:
    kind: str
    channel_id: str
    target: int
    watermark: int | None = None
    batch: Any = None
    barrier: int | None = None


class Server:
    def __init__(self) -> None:
        self.queue: collections.deque[Msg] = collections.deque()
        self.unacked = 0

    def recv(self, timeout: float | None = None, wake: Any = None) -> Msg | None:
        if not self.queue:
            return None
        self.unacked += 1
        return self.queue.popleft()

    def ack(self, msg: Msg) -> None:
        self.unacked -= 1


class Client:
    def __init__(self, server: Server, channel_id: str) -> None:
        self.server, self.channel_id, self.sent_bytes = server, channel_id, 0

    def _put(self, kind: str, target: int, **fields: Any) -> bool:
        self.server.queue.append(Msg(kind, self.channel_id, target, **fields))
        return True

    def send_batch(self, batch, target=0, watermark=None):
        return self._put("batch", target, batch=batch, watermark=watermark)

    def send_watermark(self, watermark, target=0):
        return self._put("watermark", target, watermark=watermark)

    def send_end(self, target=0):
        return self._put("end", target)

    def send_barrier(self, barrier, target=0):
        return self._put("barrier", target, barrier=barrier)

    def send_checkpoint(self, checkpoint, target=0):
        return self._put("checkpoint", target, barrier=checkpoint)

    def flush(self, timeout=None):
        return True

    def close(self, linger=1.0):
        pass


def job():
    p = ms.Pipeline("ckpt")
    out = ms.sinks.collect()
    src = p.synthetic(count=20_000, sensors=12, rate=1000, jitter=0.3, max_delay=0.5, seed=11, batch_size=400)
    src.key_by("sensor").window(ms.tumbling(seconds=2)).aggregate(
        n=ms.agg.count(), mean=ms.agg.mean("value")).with_parallelism(3).sink(out)
    p.build()
    return p, out


def deploy(p, plan, snapshots=None, epoch=0):
    servers = {vn: Server() for vn in plan.vnodes}
    hosts = {}
    for vn in plan.vnodes:
        host = HostRuntime(p.graph, plan, vn, servers[vn], lambda peer, cid: Client(servers[peer], cid),
                           restoring=snapshots is not None, epoch=epoch, job="j")
        host.connect({v: v for v in plan.vnodes})
        if snapshots is not None:
            host.restore(snapshots[vn])
        hosts[vn] = host
    return hosts, servers


def step_all(hosts, rounds=None):
    n = 0
    while not all(h.done for h in hosts.values()) and (rounds is None or n < rounds):
        for h in hosts.values():
            h.step(0.0)
        n += 1


def _shipped(state: dict) -> dict:
    """A snapshot as it reaches the coordinator: pickled when it is taken, not a view of live state."""
    return cloudpickle.loads(cloudpickle.dumps(state))


def rows(out) -> list[tuple]:
    return sorted(tuple(r.values()) for r in out.records())


@pytest.mark.parametrize("fail_after", [0, 3, 15])
def test_restoring_every_vnode_from_a_checkpoint_gives_the_fault_free_output(fail_after):
    p, out = job()
    p.run(verbose=False)
    expected = rows(out)

    p, out = job()
    plan = build_plan(p.graph)
    hosts, servers = deploy(p, plan)
    snapshots: dict[str, dict] = {}
    for vn, host in hosts.items():
        host.on_checkpoint = lambda cp, state, vn=vn: snapshots.__setitem__(vn, _shipped(state))
    step_all(hosts, rounds=8)                       # the job runs a while
    for host in hosts.values():
        host.on_control("checkpoint", {"checkpoint": 1})
    while len(snapshots) < len(hosts):              # the barrier flows through the job while it runs
        step_all(hosts, rounds=1)
    assert all(s["checkpoint"] == 1 and s["tasks"] for s in snapshots.values())
    step_all(hosts, rounds=fail_after)              # ... and runs on past the checkpoint; then everything is lost

    hosts, servers = deploy(p, plan, snapshots)     # recovery: every vnode from the checkpoint, sources rewound
    step_all(hosts)
    merge_results(p.graph, [h.result() for h in hosts.values()], 0.0)
    assert rows(out) == expected and len(expected) > 50


def test_a_channel_whose_barrier_came_first_is_held_until_the_others_have_theirs():
    import numpy as np

    p = ms.Pipeline("align")
    a = p.from_arrays({"v": np.arange(2_000.0)}, batch_size=50, name="a")
    b = p.from_arrays({"v": -np.arange(2_000.0)}, batch_size=50, name="b")
    a.union(b).sink(ms.sinks.collect(), name="out")
    p.build()
    plan = build_plan(p.graph)
    hosts, servers = deploy(p, plan)
    vn_of = {t: vn for vn, v in plan.vnodes.items() for t in v.tasks}
    src_a, src_b, merged = hosts[vn_of["a"]], hosts[vn_of["b"]], hosts[vn_of["union"]]
    step_all(hosts, rounds=3)
    src_a.on_control("checkpoint", {"checkpoint": 5})
    for _ in range(4):                               # a snapshots, sends its barrier and goes on sending
        src_a.step(0.0)
        src_b.step(0.0)
    assert src_a.runner.last_checkpoint == 5 and src_b.runner.last_checkpoint == -1
    merged.step(0.0)
    assert merged.runner.checkpoint == 5             # aligning: a's barrier is in, b's is not
    assert merged.held and {m.channel_id.split(">")[0] for m in merged.held} == {"a"}
    assert servers[vn_of["union"]].unacked == len(merged.held)   # held messages keep a's credits
    src_b.on_control("checkpoint", {"checkpoint": 5})
    src_b.step(0.0)
    merged.step(0.0)
    assert merged.runner.last_checkpoint == 5 and merged.runner.checkpoint is None and not merged.held
    step_all(hosts)
    result = merge_results(p.graph, [h.result() for h in hosts.values()], 0.0)
    assert result.records_out == {"out": 4_000}


def _file_job(path):
    """Keyed windows over 6,000 readings into a JSON-lines file: a job that takes checkpoints (its file sink commits
    in two phases)."""
    p = ms.Pipeline("files", checkpoint_every="1s")
    src = p.synthetic(count=6_000, sensors=6, rate=1000, seed=2, batch_size=300)
    src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2) \
        .sink(ms.sinks.jsonl(path))
    p.build()
    return p


def _checkpoint_after_six_rounds(hosts) -> dict[str, dict]:
    """Step every host six rounds, then take checkpoint 1 of each: the snapshots, as they reach the coordinator
    (the checkpoint is not complete yet: no `checkpoint_done`)."""
    snapshots: dict[str, dict] = {}
    for vn, host in hosts.items():
        host.on_checkpoint = lambda cp, state, vn=vn: snapshots.__setitem__(vn, _shipped(state))
    step_all(hosts, rounds=6)
    for host in hosts.values():
        host.on_control("checkpoint", {"checkpoint": 1})
    while len(snapshots) < len(hosts):
        step_all(hosts, rounds=1)
    return snapshots


def test_a_file_sink_publishes_only_what_a_completed_checkpoint_covers(tmp_path):
    """Two-phase commit: the target file holds only output no recovery will take back; an earlier run's file stays
    until this run has committed output to replace it; after a crash and a restore the file is exactly the
    fault-free output."""
    local = tmp_path / "local.jsonl"
    _file_job(local).run(verbose=False)
    expected = sorted(local.read_text().splitlines())

    target = tmp_path / "out.jsonl"
    target.write_text("an earlier run's output\n")
    p = _file_job(target)
    plan = build_plan(p.graph)
    hosts, _ = deploy(p, plan)
    snapshots = _checkpoint_after_six_rounds(hosts)
    step_all(hosts, rounds=3)
    assert target.read_text() == "an earlier run's output\n"     # nothing committed yet
    for host in hosts.values():
        host.on_control("checkpoint_done", {"checkpoint": 1})
    # published by the sink's own thread (the records behind it do not wait): replaced by what checkpoint 1 covers
    committed = wait_for(lambda: (lines := target.read_text().splitlines()) != ["an earlier run's output"] and lines,
                         30, "checkpoint 1's output in the target")
    assert "an earlier run's output" not in committed
    step_all(hosts, rounds=4)                                          # more output, never committed: then a crash
    hosts, _ = deploy(p, plan, snapshots)
    step_all(hosts)
    assert sorted(target.read_text().splitlines()) == expected and len(expected) > 20
    assert sorted(f.name for f in tmp_path.iterdir()) == ["local.jsonl", "out.jsonl"]  # no staging file, no marker


def test_a_recovery_from_a_checkpoint_taken_before_the_file_sink_finished_continues_the_file(tmp_path):
    """A fault after the file sink has finished (it published all it had staged and removed its staging file), and
    the job recovers in a new epoch from a checkpoint taken before that: the restored sink continues from the
    first bytes the checkpoint covers, which the target holds, and the file ends exactly as without the fault.
    (It looked for the finished epoch's staging file and failed with FileNotFoundError at every restart, until the
    job failed: seen in test_replicas under load, after a recovery from a replica.)"""
    local = tmp_path / "local" / "out.jsonl"
    _file_job(local).run(verbose=False)
    expected = sorted(local.read_text().splitlines())

    target = tmp_path / "out.jsonl"
    p = _file_job(target)
    plan = build_plan(p.graph)
    hosts, _ = deploy(p, plan, epoch=1)
    snapshots = _checkpoint_after_six_rounds(hosts)
    for host in hosts.values():
        host.on_control("checkpoint_done", {"checkpoint": 1})
    step_all(hosts)  # to the end: the sink publishes the rest and removes its staging file
    assert sorted(target.read_text().splitlines()) == expected
    assert sorted(f.name for f in tmp_path.iterdir()) == ["local", "out.jsonl"]
    # then a fault (an agent counted lost before the job's end was reported): epoch 2 from checkpoint 1
    hosts, _ = deploy(p, plan, snapshots, epoch=2)
    step_all(hosts)
    assert sorted(target.read_text().splitlines()) == expected  # nothing lost, nothing twice
    assert sorted(f.name for f in tmp_path.iterdir()) == ["local", "out.jsonl"]


def test_a_file_sink_of_a_replaced_epoch_that_finishes_before_the_new_one_restores_takes_nothing_away(tmp_path):
    """The old epoch's sink runs on (its agent, starved of CPU, was counted lost) and reaches its end while the new
    epoch's sink waits for its state: it publishes, removes its staging file and the marker. The new sink continues
    from the target (cut back to what its checkpoint covers) and the file ends as the new epoch writes it. Where
    neither the staging file nor the target holds what the checkpoint covers (a disk lost, another run's file
    there), the restore says so and leaves the target as it is."""
    from microstream.core.batch import Batch
    from microstream.sinks.files import StagingLost

    target = tmp_path / "out.jsonl"
    sink = _transactional_jsonl(target)
    old = sink(1)
    old.process(0, Batch({"v": np.array([1.0, 2.0])}))
    old.prepare_commit(1)
    old.commit(1)
    state = old.checkpoint_snapshot()
    old.process(0, Batch({"v": np.array([3.0])}))
    new = sink(2, restoring=True)   # deferred: nothing on disk until its state comes
    old.close()                     # the old epoch's end: all published, .out.jsonl.e1.inprogress and marker gone
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.jsonl"]
    new.restore(state)
    assert target.read_text() == '{"v": 1.0}\n{"v": 2.0}\n'  # cut back to the checkpoint
    new.process(0, Batch({"v": np.array([3.0, 4.0])}))
    new.close()
    assert target.read_text() == '{"v": 1.0}\n{"v": 2.0}\n{"v": 3.0}\n{"v": 4.0}\n'
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.jsonl"]

    target.unlink()  # the disk the files were on is gone
    with pytest.raises(StagingLost, match="e1.inprogress is gone and the target holds 0 bytes"):
        sink(3, restoring=True).restore(state)
    target.write_text('{"v": 1.0}\n{"v": 5.0}\n')  # another run's file where the sink is placed now
    with pytest.raises(StagingLost, match="the target holds other bytes"):
        sink(4, restoring=True).restore(state)
    assert target.read_text() == '{"v": 1.0}\n{"v": 5.0}\n'


def test_a_replaced_epochs_append_that_passed_its_check_lands_before_the_new_epochs_restore_cuts_the_target(
        tmp_path):
    """A sink of the old epoch (on an agent counted lost) has checked the epoch marker and is appending a checkpoint
    to the target when the new epoch's sink restores. The restore waits for that append, then cuts the target back
    to what its own checkpoint covers: the old append cannot land after the cut (the file would hold its records
    twice once the replay writes them again). Here another process stands in for the old sink mid-append: it holds
    the target's directory lock, as a publishing sink does, and appends when told."""
    from microstream.core.batch import Batch
    from microstream.sinks.files import StaleEpoch

    target = tmp_path / "out.jsonl"
    sink, old, state = _one_record_published(target)
    appender = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys
            fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            sys.stdin.readline()
            with open({str(target)!r}, "a") as f:
                f.write('{{"v": 2.0}}\\n')
            """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert appender.stdout.readline() == "locked\n"
        new = sink(2, restoring=True)
        restoring = threading.Thread(target=new.restore, args=(state,))
        restoring.start()
        restoring.join(1.0)
        assert restoring.is_alive()             # waiting for the old sink's append
        appender.stdin.write("go\n")
        appender.stdin.flush()
        assert appender.wait(timeout=60) == 0
        restoring.join(timeout=60)
        assert not restoring.is_alive()
    finally:
        appender.kill()
    assert target.read_text() == '{"v": 1.0}\n'  # the old append came first, and the cut took it back
    new.process(0, Batch({"v": np.array([2.0])}))
    new.close()
    assert target.read_text() == '{"v": 1.0}\n{"v": 2.0}\n'
    with pytest.raises(StaleEpoch):
        old.close()                             # the old sink, when it gets that far, publishes nothing more


def test_a_restore_that_finds_the_target_locked_too_long_fails_saying_so(tmp_path, monkeypatch):
    """A sink of the old epoch frozen (SIGSTOP) in the middle of an append keeps the target's directory locked: the
    new epoch's restore fails after `LOCK_TIMEOUT` naming why (its job recovers and tries again), rather than wait
    for ever, and leaves the target as it is."""
    from microstream.sinks import files

    monkeypatch.setattr(files, "LOCK_TIMEOUT", 0.5)
    target = tmp_path / "out.jsonl"
    sink, _, state = _one_record_published(target)
    frozen = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, os, sys; fd = os.open({str(tmp_path)!r}, os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert frozen.stdout.readline() == "locked\n"
        with pytest.raises(files.TargetLocked, match="frozen while appending"):
            sink(2, restoring=True).restore(state)
    finally:
        frozen.kill()
        frozen.wait()
    assert target.read_text() == '{"v": 1.0}\n'


def _one_record_published(target):
    """(the sink factory, its epoch-1 instance, that instance's snapshot): one record, committed and published."""
    from microstream.core.batch import Batch

    sink = _transactional_jsonl(target)
    old = sink(1)
    old.process(0, Batch({"v": np.array([1.0])}))
    old.prepare_commit(1)
    old.commit(1)
    state = old.snapshot()
    assert target.read_text() == '{"v": 1.0}\n'
    return sink, old, state


def _transactional_jsonl(target):
    """Instances of a JSON-lines sink of `target` as a checkpointed cluster job's host opens them:
    `sink(epoch, restoring=False)`."""
    from microstream.operators.base import OperatorContext

    p = ms.Pipeline("sink")
    p.from_iterable([{"v": 1.0}]).sink(ms.sinks.jsonl(target), name="out")
    p.build()
    node = p.graph.by_name("out")
    schemas = [p.graph.nodes[s].out_schemas[port] for s, port in node.inputs]

    def sink(epoch: int, restoring: bool = False):
        op = node.op.instantiate()
        op.open(OperatorContext("out", schemas, {}, extra={"transactional": True, "epoch": epoch, "job": "j",
                                                           "restoring": restoring}))
        return op
    return sink


def test_a_restoring_file_sink_stopped_before_its_state_came_leaves_nothing(tmp_path):
    """A move's new host opens its sinks before the old host's snapshot comes; a move called off then (the virtual
    node finished first) stops it. It must leave no staging file or epoch marker beside the target."""
    sink = _transactional_jsonl(tmp_path / "out.jsonl")
    first = sink(0)
    first.close()  # the old host's sink finished: the target holds its output, nothing else is there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    sink(0, restoring=True)  # the new host, stopped before restore(): no close, no snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_file_sink_of_a_replaced_deployment_cannot_publish(tmp_path):
    """Fencing: a sink still running in an older epoch (its agent froze and came back after a recovery) finds
    the newer epoch beside the target and refuses to publish; the newer epoch's output stands."""
    from microstream.core.batch import Batch
    from microstream.sinks.files import StaleEpoch

    target = tmp_path / "out.jsonl"
    sink = _transactional_jsonl(target)
    old = sink(0)
    old.process(0, Batch({"v": np.array([1.0])}))
    old.prepare_commit(1)
    new = sink(1)
    new.process(0, Batch({"v": np.array([2.0])}))
    with pytest.raises(StaleEpoch, match="replaced by 1"):
        old.commit(1)
    new.close()
    with pytest.raises(StaleEpoch, match="a later deployment has finished"):
        old.close()
    assert target.read_text() == '{"v": 2.0}\n'


def test_a_moving_file_sink_publishes_what_was_committed_before_its_snapshot(tmp_path):
    """A commit is published by the sink's own thread (the records behind the sink do not wait for the copy and
    its fsync); a move's snapshot, the old instance's last act, waits for it: the new host cuts the target back to
    the snapshot, and nothing of the old one's may land after that."""
    from microstream.core.batch import Batch

    target = tmp_path / "out.jsonl"
    sink = _transactional_jsonl(target)(0)
    for checkpoint in range(1, 4):
        sink.process(0, Batch({"v": np.arange(20_000, dtype=np.float64) + checkpoint}))
        sink.prepare_commit(checkpoint)
        sink.commit(checkpoint)
    state = sink.snapshot()
    assert target.stat().st_size == state["size"] == state["published"]
    assert len(target.read_text().splitlines()) == 60_000


def test_a_file_sink_whose_publication_failed_fails_at_its_next_step(tmp_path):
    """A publication that fails in the background (here the target cannot be opened) is not lost: the sink raises
    it at its next checkpoint or at its close."""
    from microstream.core.batch import Batch

    target = tmp_path / "out.jsonl"
    sink = _transactional_jsonl(target)(0)
    sink.process(0, Batch({"v": np.array([1.0])}))
    sink.prepare_commit(1)
    target.mkdir()  # where the file should go
    sink.commit(1)
    with pytest.raises(IsADirectoryError):
        sink.close()


def test_a_finished_file_sink_moves_and_checkpoints_without_touching_its_file(tmp_path):
    """A sink that has closed (its input ended) while its virtual node runs on is still in that vnode's
    checkpoints and moves: its snapshot says it is final, and the instance restored from it leaves the published
    file, and no staging file or marker, behind (it once raised "I/O operation on closed file")."""
    from microstream.core.batch import Batch

    target = tmp_path / "out.jsonl"
    sink = _transactional_jsonl(target)
    old = sink(0)
    old.process(0, Batch({"v": np.array([1.0, 2.0])}))
    old.close()
    old.prepare_commit(1)
    old.commit(1)
    state = old.checkpoint_snapshot()
    moved = old.snapshot()
    for saved in (state, moved):
        new = sink(0, restoring=True)
        new.restore(saved)
        new.prepare_commit(2)
        new.commit(2)
        assert new.snapshot() == {"closed": True, "published": target.stat().st_size}
    assert target.read_text() == '{"v": 1.0}\n{"v": 2.0}\n'
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.jsonl"]
