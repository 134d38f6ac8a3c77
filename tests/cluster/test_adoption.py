"""A coordinator that restarts, without processes or sockets: its jobs come back from its state directory as
*adopting*; agents that re-register with the job's hosts running in its epoch make it run again where it ran
(endpoints re-learned, nothing redeployed); hosts missing after the grace period make it recover from the
checkpoint the store kept; a client re-attaches by job id; ended jobs stay in a bounded history."""

from __future__ import annotations

import cloudpickle
import pytest

from microstream.cluster import messages as cm
from microstream.cluster.placing import Placed
from microstream.cluster.states import JobState
from microstream.runtime import protocol as hp
from tests.cluster.test_coordinator import AGENTS, CLIENT, Harness, kinds

PLACED = {"vn0": "a1", "vn1": "a2", "vn2": "a2"}


def _running(vnodes: dict[str, str], job: str, epoch: int = 0, state: str = "running") -> dict[str, dict]:
    """What an agent reports of the hosts of `job` it runs (vnode -> agent name given)."""
    return {f"{job}/{vn}": {"state": state, "pid": 100 + i, "epoch": epoch, "endpoint": f"tcp://new:{vn}",
                            "public_key": "k"} for i, vn in enumerate(vnodes)}


def _register(h: Harness, name: str, vnodes: dict[str, dict] | None = None) -> None:
    h.send(name, cm.Register(name=name, public_key=f"key-{name}", cores=2, arch="x86_64", vnodes=vnodes or {}))


def _restart(h: Harness, monkeypatch, tmp_path, **options) -> Harness:
    """The coordinator dies (nothing closed but its store's lock, as the kernel would) and a new one starts."""
    h.coord.store.close()
    return Harness(monkeypatch, state_dir=tmp_path / "state", register=False, **options)


def _beat(h: Harness, seconds: float, *agents: str) -> None:
    """Time passes; these agents' heartbeats keep them up (their hosts as registered); the coordinator ticks."""
    h.now += seconds
    for name in agents:
        h.send(name, cm.Heartbeat(name=name, vnodes=h.coord.registry.get(name).vnodes))
    h.coord.tick()


@pytest.fixture
def first(monkeypatch, tmp_path) -> Harness:
    return Harness(monkeypatch, state_dir=tmp_path / "state")


def _checkpoint(h: Harness, job_id: str) -> None:
    job = h.job(job_id)
    job.checkpoint_every = 1.0
    _beat(h, 0.0, *AGENTS)
    _beat(h, 1.5, *AGENTS)
    for vn, agent in PLACED.items():
        h.send(agent, cm.VnodeCheckpointed(job=job_id, vnode=vn, checkpoint=job.pending.id, blob=f"cp-{vn}".encode()))
    assert job.checkpoint is not None
    h.take()


def test_agents_that_report_the_hosts_running_get_the_job_adopted_without_a_redeploy(first, monkeypatch, tmp_path):
    job_id = first.run()
    first.send("a2", cm.VnodeDone(job=job_id, vnode="vn2", blob=b"result-vn2"))  # persisted as it comes
    h = _restart(first, monkeypatch, tmp_path)
    job = h.job(job_id)
    assert job.state is JobState.ADOPTING and "waiting for the agents" in job.reason
    assert job.results == {"vn2": b"result-vn2"} and job.barriers >= 100  # new barrier ids above any used before
    _register(h, "a1", _running(["vn0"], job_id))
    assert job.state is JobState.ADOPTING  # vn1 not reported yet
    _register(h, "a2", _running(["vn1"], job_id))
    _register(h, "a3")
    assert job.state is JobState.RUNNING and job.epoch == 0 and job.restarts == 0
    assert job.endpoints["vn1"] == {"endpoint": "tcp://new:vn1", "public_key": "k"}  # re-learned
    assert [k for _, k in kinds(h.take())] == ["registered"] * 3  # nothing deployed, nothing stopped
    assert any("adopted: every host reported in epoch 0" in line for line in h.lines)
    # it finishes as usual; its client re-attached by id and gets the result
    h.send(CLIENT, cm.Watch(job=job_id))
    assert h.take() == [("client", cm.Watching(job=job_id, state="running"))]
    for vn, agent in (("vn0", "a1"), ("vn1", "a2")):
        h.send(agent, cm.VnodeDone(job=job_id, vnode=vn, blob=f"result-{vn}".encode()))
    [(to, done)] = h.take()
    assert to == "client" and done.state == "finished"
    assert sorted(cloudpickle.loads(done.blob)) == [b"result-vn0", b"result-vn1", b"result-vn2"]


def test_hosts_missing_after_the_grace_period_recover_from_the_persisted_checkpoint(first, monkeypatch, tmp_path):
    job_id = first.run()
    _checkpoint(first, job_id)
    h = _restart(first, monkeypatch, tmp_path)
    h.coord.placer.place = lambda plan, graph, agents: Placed(  # type: ignore[method-assign]
        {"vn0": "a1", "vn1": "a3", "vn2": "a3"}, {}, {})
    _register(h, "a1", _running(["vn0"], job_id))
    _register(h, "a3")  # a2 and its hosts are gone
    _beat(h, 2.0, "a1", "a3")
    job = h.job(job_id)
    assert job.state is JobState.ADOPTING
    _beat(h, 1.5, "a1", "a3")  # past the grace period (the agent timeout, 3 s)
    assert job.state is JobState.RECOVERING and job.epoch == 1 and job.restarts == 1
    assert job.recoveries[-1]["reason"] == "the coordinator restarted and vn1, vn2 did not come back within 3 s"
    sent = h.take()
    assert ("a1", cm.StopJob(job=job_id, before=1)) in sent  # the host that did come back is of the old epoch
    for vn, agent in (("vn0", "a1"), ("vn1", "a3"), ("vn2", "a3")):
        h.send(agent, cm.VnodeReady(job=job_id, vnode=vn, endpoint=f"tcp://{agent}:{vn}", epoch=1))
    starts = {m.only: m.blob for _, m in h.take() if isinstance(m, hp.Start)}
    assert starts == {"vn0": b"cp-vn0", "vn1": b"cp-vn1", "vn2": b"cp-vn2"}  # the checkpoint the store kept
    assert job.state is JobState.RUNNING


def test_a_job_restored_in_the_middle_of_a_move_is_recovered_not_adopted(first, monkeypatch, tmp_path):
    job_id = first.run()
    first.send(CLIENT, cm.MigrateRequest(job=job_id, vnode="vn1", to="a3"))
    h = _restart(first, monkeypatch, tmp_path)
    for name in AGENTS:
        _register(h, name, _running([vn for vn, a in PLACED.items() if a == name], job_id))
    job = h.job(job_id)
    assert job.state is JobState.ADOPTING and job.moving == "vn1"
    _beat(h, 3.5, *AGENTS)
    assert job.state is JobState.RECOVERING and "a move of vn1 was under way" in job.recoveries[-1]["reason"]


def test_hosts_of_ended_or_unknown_jobs_are_stopped_when_their_agent_registers(first, monkeypatch, tmp_path):
    job_id = first.run()
    first.send(CLIENT, cm.StopRequest(job=job_id))
    h = _restart(first, monkeypatch, tmp_path)
    _register(h, "a1", {**_running(["vn0"], job_id), **_running(["vn9"], "ghost-1"),
                        "old-2/vn0": {"state": "done", "epoch": 0}})  # done: nothing to stop
    sent = h.take()
    assert [m for _, m in sent if isinstance(m, cm.StopJob)] == [cm.StopJob(job=job_id, only="vn0"),
                                                                 cm.StopJob(job="ghost-1", only="vn9")]
    assert any("which has stopped" in line for line in h.lines)
    assert any("a job this coordinator does not know" in line for line in h.lines)


def test_ended_jobs_are_kept_in_a_bounded_history_and_in_the_store(monkeypatch, tmp_path):
    h = Harness(monkeypatch, state_dir=tmp_path / "state", keep_jobs=2)
    forgotten: list[str] = []
    h.coord.lifecycle.forget = forgotten.append
    ids = []
    for _ in range(4):
        job_id = h.run()
        for vn, agent in PLACED.items():
            h.send(agent, cm.VnodeDone(job=job_id, vnode=vn, blob=f"{job_id}-{vn}".encode()))
        ids.append(job_id)
    h.take()
    assert list(h.coord.lifecycle.history) == ids[2:] and forgotten == ids[:2] and not h.coord.lifecycle.jobs
    assert set(h.coord.status()["jobs"]) == set(ids[2:])
    # an older one is still there for whoever asks by id: status, and its result
    h.send(CLIENT, cm.StatusRequest(job=ids[0]))
    [(_, reply)] = h.take()
    assert reply.status["jobs"][ids[0]]["state"] == "finished"
    h.send(CLIENT, cm.Watch(job=ids[0]))
    [(_, done)] = h.take()
    assert done.state == "finished" and len(cloudpickle.loads(done.blob)) == 3
    h.send(CLIENT, cm.StatusRequest(job="nope"))
    assert h.take() == [("client", cm.Error(error="no job 'nope' (see `microstream status`)"))]
    # a restarted coordinator has the same history
    h2 = _restart(h, monkeypatch, tmp_path, keep_jobs=2)
    assert list(h2.coord.lifecycle.history) == ids[2:] and not h2.coord.lifecycle.jobs


def test_a_client_watching_a_job_gets_its_end(h):
    job_id = h.run()
    h.send(b"other", cm.Watch(job=job_id))
    assert h.take() == [("client", cm.Watching(job=job_id, state="running"))]
    h.send("a2", cm.VnodeFailed(job=job_id, vnode="vn1", error="ValueError: bad", operator="map", cause="bad"))
    ends = [m for to, m in h.take() if isinstance(m, cm.JobDone)]
    assert len(ends) == 2 and all(m.state == "failed" and m.operator == "map" for m in ends)  # submitter, watcher
    h.send(CLIENT, cm.Watch(job=job_id))  # after its end: at once
    [(_, done)] = h.take()
    assert done.state == "failed" and done.cause == "bad"


def test_shutdown_stops_every_job_and_tells_every_agent(h):
    job_id = h.run()
    h.send(CLIENT, cm.ShutdownRequest())
    sent = h.take()
    assert ("client", cm.ShutDown(jobs=[job_id], agents=list(AGENTS))) in sent
    assert sorted(to for to, m in sent if isinstance(m, cm.Shutdown)) == list(AGENTS)
    assert h.coord._stop and h.coord.lifecycle.ended(job_id).state == "stopped"


@pytest.fixture
def h(monkeypatch) -> Harness:
    return Harness(monkeypatch)


def test_a_job_leaving_the_history_takes_its_metric_series_along(monkeypatch, tmp_path):
    from microstream.cluster.metrics import Metrics

    h = Harness(monkeypatch, keep_jobs=1)
    h.coord.metrics = h.coord.checkpoints.metrics = Metrics()
    ids = []
    for _ in range(3):
        job_id = h.run()
        _checkpoint(h, job_id)
        h.coord._update_metrics()
        for vn, agent in PLACED.items():
            h.send(agent, cm.VnodeDone(job=job_id, vnode=vn, blob=b"r"))
        ids.append(job_id)
    text = h.coord.metrics.exposition().decode()
    assert f'job="{ids[2]}"' in text  # still in the history: its series stay (a last scrape sees its figures)
    assert f'job="{ids[0]}"' not in text and f'job="{ids[1]}"' not in text


def test_the_result_that_ends_a_job_is_written_once_with_the_job_and_the_others_as_they_come(monkeypatch, tmp_path):
    """A sink's result can be tens of MB: the virtual node whose result ends the job is not written on its own first
    (its end writes every result in one transaction); the earlier ones are, so a restarted coordinator has them."""
    h = Harness(monkeypatch, state_dir=tmp_path / "state")
    job_id = h.run()
    store = h.coord.store
    writes = store.writes
    (first_vn, first_agent), *others = PLACED.items()
    h.send(first_agent, cm.VnodeDone(job=job_id, vnode=first_vn, blob=b"early"))
    assert store.writes == writes + 1 and store.counts()["vnode_results"] == 1
    for vn, agent in others[:-1]:
        h.send(agent, cm.VnodeDone(job=job_id, vnode=vn, blob=f"r-{vn}".encode()))
    writes = store.writes
    last_vn, last_agent = others[-1]
    h.send(last_agent, cm.VnodeDone(job=job_id, vnode=last_vn, blob=b"last"))
    assert store.writes == writes + 1 and store.counts()["vnode_results"] == 0
    h.take()
    h2 = _restart(h, monkeypatch, tmp_path)
    h2.send(CLIENT, cm.Watch(job=job_id))
    [(_, done)] = h2.take()
    assert done.state == "finished" and sorted(cloudpickle.loads(done.blob)) == sorted(
        [b"early", *(f"r-{vn}".encode() for vn, _ in others[:-1]), b"last"])
