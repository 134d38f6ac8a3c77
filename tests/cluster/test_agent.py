"""The agent without a coordinator or processes: hosts that exit leave a record of how they ended (with their
epoch, for a restarted coordinator); a job's metric series outlive its last host for a while, then go; reports
wait in the outbox until a heartbeat after them is acknowledged."""

from __future__ import annotations

from dataclasses import dataclass

from microstream.cluster import messages as cm
from microstream.cluster.agent import KEEP_JOB_METRICS, Agent, _Host
from microstream.cluster.metrics import Metrics
from microstream.cluster.states import VnodeState


@dataclass
class Exited:
    pid: int = 4242

    def poll(self) -> int:
        return 0

    def stop(self, grace: float = 0.0) -> None:
        pass


def _agent(tmp_path) -> Agent:
    agent = Agent("pi1", "tcp://127.0.0.1:1", metrics_port=None, log=lambda _: None, workdir=tmp_path / "agent")
    agent.metrics = Metrics()
    return agent


def test_a_job_with_no_host_left_keeps_its_series_for_a_while_then_they_go(tmp_path):
    agent = _agent(tmp_path)
    jobs = [f"job{i}" for i in range(KEEP_JOB_METRICS + 3)]
    for job in jobs:
        agent.hosts[(job, "vn0")] = _Host(job, "vn0", Exited(), b"", state=VnodeState.DONE, epoch=2)  # type: ignore[arg-type]
        agent.metrics.update_operator(job, "window", records_in=5)
        agent.metrics.update_host("pi1", f"{job}/vn0", 1.0, 1000)
        agent._check_hosts()
    text = agent.metrics.exposition().decode()
    assert all(f'job="{job}"' not in text and f'"{job}/vn0"' not in text for job in jobs[:3])
    assert all(f'job="{job}"' in text and f'"{job}/vn0"' in text for job in jobs[3:])
    assert agent.ended["job0/vn0"] == {"state": VnodeState.DONE, "pid": 4242, "stats": {}, "epoch": 2}


def test_reports_wait_in_the_outbox_until_a_later_heartbeat_is_acknowledged(tmp_path):
    agent = _agent(tmp_path)
    done = cm.VnodeDone(job="j", vnode="vn0", blob=b"r", epoch=1)
    agent._beats = 3                        # heartbeats 1..3 went out before it
    assert agent._send_up(done) is False  # not registered: kept for later
    agent._on_coordinator(cm.HeartbeatAck(seq=3))
    assert [m for _, m in agent._outbox] == [done]  # heartbeat 3 went before the report: no proof
    agent._on_coordinator(cm.HeartbeatAck(seq=4))
    assert agent._outbox == []


def test_register_first_while_registered_starts_a_new_registration_once(tmp_path):
    agent = _agent(tmp_path)
    agent.registered = True
    agent._on_coordinator(cm.RegisterFirst(reason="unknown agent"))
    assert not agent.registered and agent._next_attempt == 0.0
    lost_at = agent._lost_at
    agent._on_coordinator(cm.RegisterFirst(reason="unknown agent"))  # answers to earlier heartbeats: no news
    assert agent._lost_at == lost_at
