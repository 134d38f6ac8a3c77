"""The coordinator without processes or sockets: messages go in through `dispatch`, what it sends is read
back from a fake socket and decoded, the clock is injected. Job lifecycle (two-phase deployment, finish,
failure, stop, lost agents) and moves (migrate, save, restore, called off) step by step."""

from __future__ import annotations

from types import SimpleNamespace

import cloudpickle
import pytest
import zmq

from microstream.cluster import jobs as jobs_module
from microstream.cluster import messages as cm
from microstream.cluster.coordinator import Coordinator
from microstream.cluster.placing import Placed
from microstream.cluster.states import JobState, MoveState
from microstream.placement.policy import Proposal
from microstream.runtime import protocol as hp

AGENTS = ("a1", "a2", "a3")
CLIENT = b"client"


class FakeSocket:
    sndtimeo = 1000

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.fail: BaseException | None = None

    def getsockopt(self, option: int) -> int:
        assert option == zmq.SNDTIMEO
        return self.sndtimeo

    def send_multipart(self, frames: list[bytes]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(frames)


class Harness:
    def __init__(self, monkeypatch, state_dir=None, register: bool = True, **options) -> None:
        self.now = 1000.0
        self.lines: list[str] = []
        self.coord = Coordinator(metrics_port=None, log=self.lines.append, policy=None, clock=lambda: self.now,
                                 wall=lambda: self.now + 1e9, agent_timeout=3.0, state_dir=state_dir, **options)
        self.sock = FakeSocket()
        self.coord.sock = self.sock  # type: ignore[assignment]
        plan = SimpleNamespace(vnodes={vn: SimpleNamespace(id=vn, backend=backend, tasks=[f"{vn}.t0"])
                                       for vn, backend in (("vn0", "process"), ("vn1", "process"), ("vn2", "microvm"))})
        monkeypatch.setattr(jobs_module, "build_plan", lambda graph: plan)
        self.coord.placer.place = lambda plan, graph, agents: Placed(  # type: ignore[method-assign]
            {"vn0": "a1", "vn1": "a2", "vn2": "a2"}, {"a1–a2": 10.0}, {})
        for name in AGENTS if register else ():
            self.send(name, cm.Register(name=name, public_key=f"key-{name}", cores=2, arch="x86_64"))
        self.take()

    def send(self, sender: str | bytes, message: hp.Message) -> None:
        identity = sender if isinstance(sender, bytes) else sender.encode()
        self.coord.dispatch(identity, message.encode())

    def take(self, acks: bool = False) -> list[tuple[str, hp.Message]]:
        """What the coordinator sent since the last call: (agent name or 'client', message); heartbeat acks only
        with `acks`. What goes to a peer that has not registered is decoded as for a client, else for an agent."""
        out = []
        for identity, *frames in self.sock.sent:
            agent = self.coord.registry.name_of(identity)
            vocabulary = cm.TO_AGENT if agent or frames[0].decode() not in cm.TO_CLIENT else cm.TO_CLIENT
            message = vocabulary.decode(frames)
            if acks or not isinstance(message, cm.HeartbeatAck):
                out.append((agent or "client", message))
        self.sock.sent.clear()
        return out

    def submit(self) -> str:
        self.send(CLIENT, cm.Submit(blob=cloudpickle.dumps(SimpleNamespace(name="campus")), wait=True))
        sent = self.take()
        accepted = [m for _, m in sent if isinstance(m, cm.Accepted)]
        return accepted[0].job

    def run(self) -> str:
        job = self.submit()
        for vn, agent in (("vn0", "a1"), ("vn1", "a2"), ("vn2", "a2")):
            self.send(agent, cm.VnodeReady(job=job, vnode=vn, endpoint=f"tcp://{agent}:{vn}", public_key=agent))
        self.take()
        return job

    def job(self, job_id: str):
        return self.coord.lifecycle.get(job_id)


@pytest.fixture
def h(monkeypatch) -> Harness:
    return Harness(monkeypatch)


def kinds(sent: list[tuple[str, hp.Message]]) -> list[tuple[str, str]]:
    return [(to, m.KIND) for to, m in sent]


# -- dispatch ---------------------------------------------------------------------------------------------------


def test_every_kind_to_the_coordinator_has_a_handler(h):
    assert set(h.coord._handlers) == set(cm.TO_COORDINATOR.kinds.values())


def test_registration_is_answered_with_the_live_data_keys(h):
    h.send("a4", cm.Register(name="a4", public_key="key-a4"))
    [(to, reply)] = h.take()
    assert to == "a4" and reply == cm.Registered(data_keys=["key-a1", "key-a2", "key-a3", "key-a4"],
                                                   agent_timeout=3.0)  # its hosts' leases are shorter


def test_unknown_and_malformed_messages_are_answered_and_logged(h):
    h.coord.dispatch(b"someone", [b"sumbit", b"{}"])
    [(_, reply)] = h.take()
    assert isinstance(reply, cm.Error) and "unknown control message 'sumbit'" in reply.error
    assert "refused a message from a client" in h.lines[-1]
    h.coord.dispatch(b"a1", [b"heartbeat", b"{}"])
    [(_, reply)] = h.take()
    assert "'heartbeat' lacks name" in reply.error and "from agent a1" in h.lines[-1]


def test_a_failing_handler_is_logged_not_raised(h, monkeypatch):
    def boom(identity, m):
        raise RuntimeError("bug")

    h.coord._handlers[cm.StopRequest] = boom
    h.send(CLIENT, cm.StopRequest(job="x"))
    assert h.lines[-1] == "coordinator: error handling 'stop': RuntimeError: bug"


def test_heartbeat_from_an_unknown_agent_is_told_to_register(h):
    h.send("stranger", cm.Heartbeat(name="stranger"))
    assert h.take() == [("client", cm.RegisterFirst(reason="unknown agent: register first (sent 'heartbeat')"))]
    h.send("stranger", cm.VnodeDone(job="j", vnode="vn0", blob=b"r"))  # nothing an unknown agent says is taken
    assert kinds(h.take()) == [("client", "register_first")]


def test_heartbeats_are_acknowledged(h):
    h.send("a1", cm.Heartbeat(name="a1", seq=7))
    assert h.take(acks=True) == [("a1", cm.HeartbeatAck(seq=7))]


@pytest.mark.parametrize("error, text", [
    (zmq.Again(), "could not send 'error' to a client within 1 s"),
    (zmq.ZMQError(zmq.EHOSTUNREACH), "cannot send 'error' to a client: it is not connected"),
])
def test_a_send_that_fails_is_logged(h, error, text):
    h.sock.fail = error
    h.send(CLIENT, cm.StopRequest(job="nope"))
    assert text in h.lines[-1]


# -- job lifecycle --------------------------------------------------------------------------------------------------


def test_submit_deploys_then_connects_and_starts_when_every_host_is_ready(h):
    h.send(CLIENT, cm.Submit(blob=cloudpickle.dumps(SimpleNamespace(name="campus")), wait=True, credits=4))
    sent = h.take()
    assert kinds(sent) == [("a1", "deploy"), ("a2", "deploy"), ("a2", "deploy"), ("client", "accepted")]
    job_id = sent[-1][1].job
    deploy = sent[0][1]
    assert deploy.vnode == "vn0" and deploy.backend == "process" and deploy.data_keys == ["key-a1", "key-a2", "key-a3"]
    assert cloudpickle.loads(deploy.blob)["credits"] == 4
    assert sent[2][1].backend == "microvm"
    job = h.job(job_id)
    assert job.state is JobState.DEPLOYING
    h.send("a1", cm.VnodeReady(job=job_id, vnode="vn0", endpoint="tcp://a1:1", public_key="key-a1"))
    h.send("a2", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a2:1"))
    assert h.take() == [] and job.state is JobState.DEPLOYING
    h.send("a2", cm.VnodeReady(job=job_id, vnode="vn2", endpoint="tcp://a2:2"))
    sent = h.take()
    assert kinds(sent) == [("a1", "connect"), ("a2", "connect"), ("a1", "start"), ("a2", "start")]
    assert sent[0][1].endpoints == {"vn0": {"endpoint": "tcp://a1:1", "public_key": "key-a1"},
                                    "vn1": {"endpoint": "tcp://a2:1", "public_key": None},
                                    "vn2": {"endpoint": "tcp://a2:2", "public_key": None}}
    assert job.state is JobState.RUNNING


def test_job_finishes_when_every_vnode_is_done(h):
    job_id = h.run()
    for vn, agent in (("vn0", "a1"), ("vn1", "a2")):
        h.send(agent, cm.VnodeDone(job=job_id, vnode=vn, blob=f"result-{vn}".encode(), stats={"n": 1}))
    assert h.take() == [] and h.job(job_id).state is JobState.RUNNING
    h.send("a2", cm.VnodeDone(job=job_id, vnode="vn2", blob=b"result-vn2"))
    [(to, done)] = h.take()
    assert to == "client" and done.state == "finished"
    assert cloudpickle.loads(done.blob) == [b"result-vn0", b"result-vn1", b"result-vn2"]
    status = h.coord.status()["jobs"][job_id]
    vn0 = status["vnodes"]["vn0"]
    assert status["state"] == "finished" and {k: vn0[k] for k in ("agent", "tasks", "state", "operators")} == {
        "agent": "a1", "tasks": ["vn0.t0"], "state": "done", "operators": {}}


def test_a_failed_vnode_fails_the_job_and_stops_its_hosts(h):
    job_id = h.run()
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="ValueError: bad", operator="map", cause="bad"))
    sent = h.take()
    assert kinds(sent) == [("a1", "stop"), ("a2", "stop"), ("client", "job_done")]
    assert sent[-1][1] == cm.JobDone(job=job_id, state="failed", reason="virtual node vn1 failed: ValueError: bad",
                                     operator="map", cause="bad")
    h.send("a1", cm.VnodeFailed(job=job_id, vnode="vn0", error="late"))  # a failed job fails once
    assert h.take() == [] and h.coord.lifecycle.ended(job_id).reason.endswith("ValueError: bad")


def _lose_a2(h) -> None:
    h.now += 2.0
    h.send("a1", cm.Heartbeat(name="a1"))
    h.send("a3", cm.Heartbeat(name="a3"))
    h.now += 1.5
    h.coord.tick()


def test_a_lost_agent_starts_a_recovery_on_the_live_agents_in_a_new_epoch(h):
    job_id = h.run()
    h.coord.placer.place = lambda plan, graph, agents: Placed(  # type: ignore[method-assign]
        {"vn0": "a1", "vn1": "a3", "vn2": "a3"}, {}, {}) if not agents["a2"]["up"] else None
    _lose_a2(h)
    job = h.job(job_id)
    assert job.state is JobState.RECOVERING and job.epoch == 1 and job.restarts == 1
    assert job.recoveries[-1]["reason"] == "agent a2 lost (no heartbeat for 3.5 s)"
    sent = h.take()
    assert ("a1", cm.StopJob(job=job_id, before=1)) in sent and ("a3", cm.StopJob(job=job_id, before=1)) in sent
    deploys = [(to, m) for to, m in sent if isinstance(m, cm.Deploy)]
    assert sorted((to, m.vnode, m.epoch) for to, m in deploys) == [("a1", "vn0", 1), ("a3", "vn1", 1), ("a3", "vn2", 1)]
    assert not any(to == "a2" for to, _ in sent)  # nothing to the lost agent
    assert h.coord.status()["agents"]["a2"]["up"] is False
    # an old host's report is ignored (fencing); the new epoch's hosts start the job again
    h.send("a1", cm.VnodeReady(job=job_id, vnode="vn0", endpoint="tcp://old", epoch=0))
    for vn, agent in (("vn0", "a1"), ("vn1", "a3"), ("vn2", "a3")):
        h.send(agent, cm.VnodeReady(job=job_id, vnode=vn, endpoint=f"tcp://{agent}:{vn}", epoch=1))
    assert job.state is JobState.RUNNING and job.endpoints["vn0"]["endpoint"] == "tcp://a1:vn0"
    assert ("a3", "start") in kinds(h.take())


def test_a_job_out_of_restarts_fails(h):
    job_id = h.run()
    job = h.job(job_id)
    job.max_restarts = 0
    _lose_a2(h)
    assert job.state is JobState.FAILED and job.reason == "agent a2 lost (no heartbeat for 3.5 s)"
    assert kinds(h.take()) == [("a1", "stop"), ("client", "job_done")]


def test_a_host_that_crashed_is_recovered_but_a_failing_user_function_is_not(h):
    job_id = h.run()
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9"))
    assert h.job(job_id).state is JobState.RECOVERING
    h.take()
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="late", epoch=0))  # the old epoch: ignored
    assert h.job(job_id).state is JobState.RECOVERING and h.take() == []


def later(h, seconds: float) -> None:
    """Time passes; every agent keeps up its heartbeats; the coordinator does its periodic work."""
    for _ in range(int(seconds)):
        h.now += 1.0
        for name in AGENTS:
            h.send(name, cm.Heartbeat(name=name))
        h.coord.tick()
    h.now += seconds - int(seconds)
    h.coord.tick()


def test_checkpoints_are_taken_on_time_and_a_recovery_starts_from_the_last(h):
    job_id = h.run()
    job = h.job(job_id)
    job.checkpoint_every = 10.0
    h.coord.tick()                     # the first tick sets the clock going
    later(h, 10.5)
    sent = h.take()
    assert sorted(to for to, m in sent if isinstance(m, hp.CheckpointRequest)) == ["a1", "a2"]
    cp = job.pending.id
    for vn, agent in (("vn0", "a1"), ("vn1", "a2")):
        h.send(agent, cm.VnodeCheckpointed(job=job_id, vnode=vn, checkpoint=cp, blob=f"state-{vn}".encode()))
    assert job.checkpoint is None      # not until every virtual node's snapshot is in
    h.send("a2", cm.VnodeCheckpointed(job=job_id, vnode="vn2", checkpoint=cp, blob=b"state-vn2"))
    assert job.checkpoint.id == cp and job.pending is None and job.checkpoints[-1]["bytes"] == 27
    # a move asked for while a checkpoint is taken waits for it
    later(h, 10.5)
    h.take()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn0", to="a3"))
    assert h.take() == [] and len(job.waiting) == 1
    for vn, agent in (("vn0", "a1"), ("vn1", "a2"), ("vn2", "a2")):
        h.send(agent, cm.VnodeCheckpointed(job=job_id, vnode=vn, checkpoint=job.pending.id, blob=b"x"))
    # sinks are told the checkpoint is complete (they publish what it covers); then the move goes ahead
    assert kinds(h.take()) == [("a1", "checkpoint_done"), ("a2", "checkpoint_done"), ("a3", "deploy")]
    # recovery: every virtual node from its snapshot of the last checkpoint
    job.move = None
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9"))
    h.take()
    for vn, agent in (("vn0", "a1"), ("vn1", "a2"), ("vn2", "a2")):
        h.send(agent, cm.VnodeReady(job=job_id, vnode=vn, endpoint=f"tcp://{agent}:{vn}", epoch=1))
    starts = {m.only: m.blob for _, m in h.take() if isinstance(m, hp.Start)}
    assert starts == {"vn0": b"x", "vn1": b"x", "vn2": b"x"}


def test_an_agent_that_comes_back_with_replaced_hosts_is_told_to_stop_them(h):
    job_id = h.run()
    _lose_a2(h)
    h.take()
    h.send("a2", cm.Heartbeat(name="a2", vnodes={f"{job_id}/vn1": {"state": "running", "epoch": 0}}))
    assert ("a2", cm.StopJob(job=job_id, only="vn1", before=1)) in h.take()


def test_a_client_stops_a_job(h):
    job_id = h.run()
    h.send(b"other-client", cm.StopRequest(job=job_id))
    sent = h.take()
    assert sent[-1] == ("client", cm.Stopped(job=job_id, state="stopped"))
    assert ("client", cm.JobDone(job=job_id, state="stopped", reason="stopped by a client")) in sent
    h.send(CLIENT, cm.StopRequest(job=job_id))  # stopping a stopped job only says so
    assert h.take() == [("client", cm.Stopped(job=job_id, state="stopped"))]
    h.send(CLIENT, cm.StopRequest(job="nope"))
    assert h.take() == [("client", cm.Error(error="no job 'nope' (see `microstream status`)"))]


def test_a_job_that_cannot_be_loaded_is_rejected(h):
    h.send(CLIENT, cm.Submit(blob=b"not a pickle"))
    [(_, reply)] = h.take()
    assert isinstance(reply, cm.Rejected) and reply.error.startswith("cannot load the job: UnpicklingError")


# -- moves ------------------------------------------------------------------------------------------------------------


def test_migrate_step_by_step(h):
    job_id = h.run()
    job = h.job(job_id)
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    [(to, deploy)] = h.take()
    assert to == "a3" and deploy.vnode == "vn1" and deploy.restoring and deploy.incoming is False
    move = job.move
    assert move.state is MoveState.PREPARING and (move.source, move.target) == ("a2", "a3")

    h.send("a1", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://wrong:1"))  # not from the target: ignored
    assert h.take() == [] and move.state is MoveState.PREPARING
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a3:9", public_key="key-a3"))
    sent = h.take()
    # upstream connects to the new host before the cut; the new host reported no state endpoint: no pre-copy
    assert kinds(sent) == [("a1", "redirect"), ("a2", "redirect"), ("a1", "pause_to"), ("a2", "pause_to"),
                           ("a2", "snapshot")]
    assert all(m.prepare and m.peer == {"endpoint": "tcp://a3:9", "public_key": "key-a3"} for _, m in sent[:2])
    assert sent[-1][1] == hp.SnapshotRequest(job=job_id, vnode="vn1", barrier=1, only="vn1")
    assert move.state is MoveState.ALIGNING

    h.now += 0.5
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"state"))
    sent = h.take()
    assert kinds(sent) == [("a3", "connect"), ("a3", "start"), ("a1", "redirect"), ("a2", "redirect"),
                           ("a3", "redirect")]
    assert sent[1][1] == hp.Start(job=job_id, only="vn1", blob=b"state")
    assert sent[2][1].peer == {"endpoint": "tcp://a3:9", "public_key": "key-a3"}
    assert move.state is MoveState.RESUMING and job.placement["vn1"] == "a3"

    h.send("a3", cm.VnodeResumed(job=job_id, vnode="vn1", at=h.now + 1e9 + 0.25))
    [(to, moved)] = h.take()
    assert to == "client" and moved.record["from"] == "a2" and moved.record["to"] == "a3"
    assert moved.record["downtime_s"] == pytest.approx(0.75) and moved.record["state_bytes"] == 5
    assert job.move is None and move.state is MoveState.DONE and job.history == [moved.record]


def test_a_direct_move_precopies_while_the_vnode_runs_and_cuts_anyway_after_the_precopy_timeout(h):
    job_id = h.run()
    job = h.job(job_id)
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.take()
    move = job.move
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a3:9", public_key="key-a3",
                               state_endpoint="tcp://a3:10"))
    sent = h.take()
    assert kinds(sent) == [("a1", "redirect"), ("a2", "redirect"), ("a2", "snapshot")]
    assert sent[-1][1].precopy and sent[-1][1].to["state_endpoint"] == "tcp://a3:10"
    _beat(h, h.coord.moves.precopy_timeout - 1)
    h.coord.tick()
    assert h.take() == [] and move.state is MoveState.PREPARING  # the vnode runs on while its state is copied
    _beat(h, 2)
    h.coord.tick()
    sent = h.take()  # no precopied in time: cut anyway, the final round carries the rest
    assert kinds(sent) == [("a1", "pause_to"), ("a2", "pause_to"), ("a2", "snapshot")]
    assert sent[-1][1].to["state_endpoint"] == "tcp://a3:10" and not sent[-1][1].precopy
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"ticket",
                                  transfer={"state_bytes": 900, "final_bytes": 900, "stop_and_copy": True}))
    h.take()
    h.send("a3", cm.VnodeResumed(job=job_id, vnode="vn1", at=h.now + 1e9 + 0.05))
    [(_, moved)] = h.take()
    record = moved.record
    assert record["transfer"] == "direct" and record["stop_and_copy"] and record["final_bytes"] == 900
    assert record["precopy_fallback"] == "no pre-copy within 10 s: stop-and-copy at the barrier"
    assert record["relayed_bytes"] == len(b"ticket")


def test_save_suspends_and_restore_resumes(h):
    job_id = h.run()
    job = h.job(job_id)
    h.send(CLIENT, cm.SaveRequest(job=job_id, vnode="vn0"))
    assert kinds(h.take()) == [("a1", "pause_to"), ("a2", "pause_to"), ("a1", "snapshot")]
    assert job.move.state is MoveState.ALIGNING
    h.send("a1", cm.VnodeSnapshot(job=job_id, vnode="vn0", blob=b"saved"))
    [(_, moved)] = h.take()
    assert moved.blob == b"saved" and moved.record["saved_bytes"] == 5 and moved.record["mode"] == "save"
    assert job.state is JobState.SUSPENDED and "vn0" not in job.placement

    h.send(CLIENT, cm.RestoreRequest(job=job_id, vnode="vn0", blob=b"saved"))
    [(to, reply)] = h.take()
    assert isinstance(reply, cm.Error) and "no agent 'None' is up" in reply.error  # where it ran is forgotten
    h.send(CLIENT, cm.RestoreRequest(job=job_id, vnode="vn0", blob=b"saved", to="a3"))
    assert kinds(h.take()) == [("a3", "deploy")]
    assert job.move.state is MoveState.PREPARING
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn0", endpoint="tcp://a3:7"))
    sent = h.take()
    assert sent[1] == ("a3", hp.Start(job=job_id, only="vn0", blob=b"saved"))
    assert job.state is JobState.RUNNING and job.move.state is MoveState.RESUMING
    h.send("a3", cm.VnodeResumed(job=job_id, vnode="vn0", at=h.now + 1e9))
    assert h.take()[0][1].record["mode"] == "restore" and job.move is None


@pytest.mark.parametrize("request_, error", [
    (cm.MigrateRequest(job="nope", vnode="vn0", to="a3"), "no job 'nope'"),
    (cm.MigrateRequest(job="JOB", vnode="vn9", to="a3"), "has no virtual node 'vn9'; it has ['vn0', 'vn1', 'vn2']"),
    (cm.MigrateRequest(job="JOB", vnode="vn0", to="a9"), "no agent 'a9' is up (agents: ['a1', 'a2', 'a3'])"),
    (cm.MigrateRequest(job="JOB", vnode="vn0", to="a1"), "vn0 already runs on a1"),
    (cm.MigrateRequest(job="JOB", vnode="vn0", to="a3", whole=True), "vn0 runs in a process host"),
    (cm.RestoreRequest(job="JOB", vnode="vn0", blob=b"s", to="a3"), "vn0 of job JOB is not saved; save it first"),
])
def test_move_requests_that_cannot_be_done_are_refused(h, request_, error):
    job_id = h.run()
    fields = {k: (job_id if v == "JOB" else v) for k, v in request_.__dict__.items()}
    h.send(CLIENT, type(request_)(**fields))
    [(_, reply)] = h.take()
    assert isinstance(reply, cm.Error) and error.replace("JOB", job_id) in reply.error
    assert h.job(job_id).move is None


def test_one_move_at_a_time_and_not_of_a_finished_vnode(h):
    job_id = h.run()
    h.send("a1", cm.VnodeDone(job=job_id, vnode="vn0", blob=b"r"))
    h.send(CLIENT, cm.SaveRequest(job=job_id, vnode="vn0"))
    assert "vn0 of job" in h.take()[-1][1].error
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.take()
    h.send(CLIENT, cm.SaveRequest(job=job_id, vnode="vn2"))
    assert h.take() == [("client", cm.Error(error=f"vn1 of job {job_id} is already moving; try again when it is done"))]


def test_a_move_without_progress_is_called_off(h):
    job_id = h.run()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.take()
    move = h.job(job_id).move
    h.now += 30
    for name in AGENTS:
        h.send(name, cm.Heartbeat(name=name))
    h.coord.tick()
    assert move.state is MoveState.PREPARING
    h.now += 31
    for name in AGENTS:
        h.send(name, cm.Heartbeat(name=name))
    h.coord.tick()
    sent = h.take()
    assert kinds(sent) == [("a3", "stop"), ("a1", "redirect"), ("a2", "redirect"), ("client", "error")]
    assert sent[0][1] == cm.StopJob(job=job_id, only="vn1") and sent[1][1].peer is None
    assert sent[-1][1].error == "migrate of vn1 called off: the new host did not start within 60 s"
    assert move.state is MoveState.CALLED_OFF and h.job(job_id).move is None


def _beat(h: Harness, seconds: float) -> None:
    h.now += seconds
    for name in AGENTS:
        h.send(name, cm.Heartbeat(name=name))
    h.coord.tick()


def test_a_microvm_move_may_take_a_deployments_time_to_start_but_not_to_align(h):
    job_id = h.run()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn2", to="a3"))
    h.take()
    move = h.job(job_id).move
    for _ in range(5):                 # 150 s booting a VM: the job runs on meanwhile
        _beat(h, 30)
    assert move.state is MoveState.PREPARING and h.job(job_id).move is move
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn2", endpoint="tcp://a3:9", public_key="key-a3"))
    assert move.state is MoveState.ALIGNING
    h.take()
    _beat(h, 30)
    assert move.state is MoveState.ALIGNING   # paused for 30 s: within the move time-out
    _beat(h, 31)
    assert move.state is MoveState.CALLED_OFF
    assert [m.error for _, m in h.take() if isinstance(m, cm.Error)] == [
        "migrate of vn2 called off: no progress in 60 s"]


def test_a_deployment_whose_host_never_starts_is_retried_and_says_what_it_waits_for(h):
    job_id = h.submit()
    job = h.job(job_id)
    h.send("a1", cm.VnodeReady(job=job_id, vnode="vn0", endpoint="tcp://a1:1", public_key="key-a1"))
    h.send("a2", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a2:1", public_key="key-a2"))
    for _ in range(5):                 # vn2 is a microVM: minutes to boot under emulation are fine
        _beat(h, 30)
    assert job.state is JobState.DEPLOYING and job.epoch == 0
    assert job.reason == "waiting 150 s for vn2 (microvm on a2) to start"
    for _ in range(16):
        _beat(h, 30)
    assert job.state is JobState.RECOVERING and job.epoch == 1
    assert job.recoveries[-1]["reason"] == "vn2 (microvm on a2) did not start within 600 s"


def test_a_vnode_that_finishes_before_it_moves_calls_the_move_off(h):
    job_id = h.run()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.take()
    h.send("a2", cm.VnodeDone(job=job_id, vnode="vn1", blob=b"r"))
    assert h.take()[-1][1].error == "migrate of vn1 called off: the virtual node finished before it could move"


def test_stale_move_messages_are_ignored(h):
    job_id = h.run()
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"x"))   # no move
    h.send("a3", cm.VnodeResumed(job=job_id, vnode="vn1", at=1.0))
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.take()
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"x"))   # before the cut: not aligning yet
    assert h.take() == [] and h.job(job_id).move.state is MoveState.PREPARING


def test_the_policy_proposes_and_moves_start_from_its_proposal(h):
    job_id = h.run()
    calls = []

    def propose(job, agents):
        calls.append((job.id, sorted(n for n, a in agents.items() if a["up"])))
        return Proposal("vn1", "a2", "a1", saved_bytes=50_000.0, before=60_000.0, after=10_000.0,
                        cost_before=2.0, cost_after=1.0)

    h.coord.placer.due = lambda: True  # type: ignore[method-assign]
    h.coord.placer.propose = propose  # type: ignore[method-assign]
    for name in AGENTS:
        h.send(name, cm.Heartbeat(name=name))
    h.coord.tick()
    assert calls == [(job_id, ["a1", "a2", "a3"])]
    [(to, deploy)] = h.take()
    move = h.job(job_id).move
    assert to == "a1" and deploy.restoring and move.client is None
    assert move.reason == "auto: 50,000 B/s measured stop crossing machines"
    h.coord.tick()  # a job already moving is not asked about again
    assert len(calls) == 1


def _report(h: Harness, job_id: str, reports: int, stalled: float, records: int) -> None:
    """a1's heartbeat: vn0's host is running, its channel to vn1 has had nothing acked for `stalled` s."""
    channel = {"to": "vn1", "stalled_seconds": stalled, "peer_silent_seconds": stalled, "waiting_seconds": 0.0,
               "blocked_seconds": 0.0, "unacked": 3 if stalled else 0, "unacked_bytes": 300 if stalled else 0}
    stats = {"reports": reports, "channels": {"c0": channel}, "operators": {"op": {"records_in": records}}}
    h.send("a1", cm.Heartbeat(name="a1", vnodes={f"{job_id}/vn0": {"state": "running", "epoch": 0,
                                                                      "stats": stats}}))


def test_whoever_waits_for_a_job_is_told_when_it_stalls_and_when_it_moves_again(h):
    job_id = h.run()
    _report(h, job_id, 1, 0.0, 10)
    h.coord.tick()
    assert [m for _, m in h.take() if isinstance(m, cm.JobOutput)] == []
    _report(h, job_id, 2, 6.0, 10)
    h.coord.tick()
    h.coord.tick()  # told once per stall
    [told] = [m for _, m in h.take() if isinstance(m, cm.JobOutput)]
    assert told.vnode == "job" and told.agent == "coordinator"
    [[stream, text]] = told.lines
    assert stream == "stderr" and text.startswith("stalled: no progress for 6 s on channel vn0→vn1 (a1→a2")
    for step in range(1, 8):           # 14 s more, every agent heard from
        h.now += 2
        for name in ("a2", "a3"):
            h.send(name, cm.Heartbeat(name=name))
        _report(h, job_id, 2 + step, 6.0 + 2 * step if step < 7 else 0.0, 10 if step < 7 else 20)
        h.coord.tick()
    [back] = [m for _, m in h.take() if isinstance(m, cm.JobOutput)]
    assert back.lines == [["stderr", "moving again after 14 s (healthy)"]]
    assert any("stalled: no progress" in line for line in h.lines)


def test_a_recovery_calls_off_a_requested_move_and_tells_its_client(h):
    """The client of a move under way when its job starts recovering gets an answer at once (it waited for its
    time-out before)."""
    job_id = h.run()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn0", to="a3"))
    h.take()
    assert h.job(job_id).move is not None
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9"))
    errors = [m.error for to, m in h.take() if to == "client" and isinstance(m, cm.Error)]
    assert errors == [f"migrate of vn0 called off: job {job_id} is recovering (virtual node vn1 failed: host "
                      "process exited with code -9)"]
    assert h.job(job_id).move is None and h.job(job_id).state is JobState.RECOVERING


# -- faults in the middle of a move -----------------------------------------------------------------------------


def _ticket_sent(h: Harness, transfer: dict | None = None) -> tuple[str, object]:
    """A direct move of vn1 from a2 to a3 whose ticket has gone to the new host (resuming)."""
    job_id = h.run()
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a3:9", public_key="key-a3",
                               state_endpoint="tcp://a3:10"))
    h.send("a2", cm.VnodePrecopied(job=job_id, vnode="vn1", figures={"rounds": 2}))
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"ticket",
                                  transfer=transfer or {"state_bytes": 900, "ticket_first": True}))
    h.take()
    move = h.job(job_id).move
    assert move.state is MoveState.RESUMING and move.direct and h.job(job_id).placement["vn1"] == "a3"
    return job_id, move


def test_the_old_host_lost_between_ticket_and_final_round_recovers_the_job_and_says_why(h):
    """The old host exits (kill -9) after its ticket went and before its final round reached the new host: the move
    is called off and the job recovers from its last checkpoint at once (the new host waited 60 s, then the move was
    'called off' with its vnode on neither host)."""
    job_id, move = _ticket_sent(h)
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9 after its snapshot",
                                moved=True))
    job = h.job(job_id)
    assert job.state is JobState.RECOVERING and job.epoch == 1 and move.state is MoveState.CALLED_OFF
    recovery = job.recoveries[-1]
    assert recovery["reason"] == ("vn1 was lost moving a2 -> a3: its old host on a2 ended before the final round of "
                                  "its state reached the new host (host process exited with code -9 after its "
                                  "snapshot)")
    assert recovery["move"] == {"vnode": "vn1", "mode": "migrate", "from": "a2", "to": "a3", "state": "resuming",
                                "transfer": "direct", "called_off": recovery["reason"].split(": ", 1)[1]}
    sent = h.take()
    assert all(("a" + n, cm.StopJob(job=job_id, before=1)) in sent for n in "123")  # the waiting new host too
    errors = [m.error for to, m in sent if to == "client" and isinstance(m, cm.Error)]
    assert errors == [f"migrate of vn1 called off: job {job_id} is recovering ({recovery['reason']})"]
    assert h.coord.moves.called_off[f"{job_id}/vn1"].startswith("its old host on a2 ended")
    assert h.coord.status()["jobs"][job_id]["recoveries"][-1]["move"]["vnode"] == "vn1"


def test_an_old_host_that_ends_after_its_move_is_done_is_no_fault(h):
    job_id, move = _ticket_sent(h)
    h.send("a3", cm.VnodeResumed(job=job_id, vnode="vn1", at=h.now + 1e9 + 0.1))
    h.take()
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9 after its snapshot",
                                moved=True))
    assert h.job(job_id).state is JobState.RUNNING and h.take() == []


def test_an_old_host_that_ends_after_sending_its_whole_state_through_the_coordinator_is_no_fault(h):
    job_id, move = _ticket_sent(h, {"path": "coordinator", "fallback": "no connection"})
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="host process exited with code -9 after its snapshot",
                                moved=True))
    assert h.job(job_id).state is JobState.RUNNING and move.state is MoveState.RESUMING and h.take() == []


def test_the_old_hosts_agent_lost_mid_move_recovers_the_job(h):
    """The old host's node freezes or its link is cut after the ticket: the placement names the new host already,
    but the state may still be on the old node: the job recovers, saying so."""
    job_id, move = _ticket_sent(h)
    h.coord.placer.place = lambda plan, graph, agents: Placed(  # type: ignore[method-assign]
        {"vn0": "a1", "vn1": "a3", "vn2": "a3"}, {}, {})
    h.now += 2.0
    h.send("a1", cm.Heartbeat(name="a1"))
    h.send("a3", cm.Heartbeat(name="a3"))
    h.now += 1.5
    h.coord.tick()
    job = h.job(job_id)
    assert job.state is JobState.RECOVERING and job.restarts == 1 and move.state is MoveState.CALLED_OFF
    assert job.recoveries[-1]["reason"].startswith("vn1 was lost moving a2 -> a3: the agent of its old host, a2, was "
                                                   "lost"), job.recoveries


def test_a_new_host_that_never_resumes_recovers_the_job_rather_than_call_the_move_off(h):
    """Resuming, the old host has stopped: calling the move off would leave the vnode on neither host."""
    job_id, move = _ticket_sent(h)
    _beat(h, 61)
    job = h.job(job_id)
    assert job.state is JobState.RECOVERING and move.state is MoveState.CALLED_OFF
    assert job.recoveries[-1]["reason"] == "vn1 was lost moving a2 -> a3: the new host did not resume within 60 s"


def test_a_new_host_whose_state_did_not_arrive_recovers_the_job_and_a_failing_user_function_still_fails_it(h):
    job_id, move = _ticket_sent(h)
    h.send("a3", cm.VnodeFailed(job=job_id, vnode="vn1", error="TimeoutError: the state of x did not arrive"))
    job = h.job(job_id)
    assert job.state is JobState.RECOVERING
    assert job.recoveries[-1]["reason"] == ("vn1 was lost moving a2 -> a3: its new host on a3 failed before it "
                                            "resumed (TimeoutError: the state of x did not arrive)")
    h.take()
    for vn, agent in (("vn0", "a1"), ("vn1", "a2"), ("vn2", "a2")):
        h.send(agent, cm.VnodeReady(job=job_id, vnode=vn, endpoint=f"tcp://{agent}:{vn}", epoch=1))
    assert job.state is JobState.RUNNING
    h.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h.send("a3", cm.VnodeReady(job=job_id, vnode="vn1", endpoint="tcp://a3:9", epoch=1))
    h.send("a2", cm.VnodeSnapshot(job=job_id, vnode="vn1", blob=b"state", epoch=1))
    h.send("a3", cm.VnodeFailed(job=job_id, vnode="vn1", error="ValueError: bad", operator="map", cause="bad",
                                epoch=1))
    assert h.coord.lifecycle.ended(job_id).state == "failed"
