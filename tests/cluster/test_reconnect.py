"""An agent never exits because the coordinator went away: stopped coordinators leave it running, and it
registers again with the next coordinator on the same address (CURVE keys and all). In one process, with real
coordinators and an agent in threads and real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from microstream.cluster import security as sec
from microstream.cluster.agent import Agent
from microstream.cluster.coordinator import Coordinator
from tests.helpers import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.keys, self.agent_keys = sec.generate("coordinator"), sec.generate("pi1")
        self.client_keys = sec.generate("client")
        self.endpoint = f"tcp://127.0.0.1:{_free_port()}"
        self.lines: list[str] = []
        self.coord: Coordinator | None = None
        self.thread: threading.Thread | None = None
        self.agent = Agent("pi1", self.endpoint, self.agent_keys, self.keys.public, metrics_port=None,
                           log=self.lines.append, workdir=tmp_path / "agent", coordinator_timeout=2.0)
        self.agent_thread = threading.Thread(target=self.agent.run, daemon=True)

    def start_coordinator(self) -> Coordinator:
        trusted = {self.agent_keys.public: "pi1", self.client_keys.public: "client"}
        self.coord = Coordinator(self.endpoint, self.keys, trusted, metrics_port=None, log=self.lines.append,
                                 policy=None)
        self.coord.open()
        self.thread = threading.Thread(target=self.coord.run, daemon=True)
        self.thread.start()
        return self.coord

    def stop_coordinator(self) -> None:
        assert self.coord is not None and self.thread is not None
        self.coord.stop()
        self.thread.join(5)
        self.coord = None

    def agent_up(self) -> bool:
        agent = self.coord.status()["agents"].get("pi1") if self.coord is not None else None
        return bool(agent and agent["up"])


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start_coordinator()
    c.agent_thread.start()
    wait_for(c.agent_up, 10, "the agent to register")
    yield c
    c.agent.stop()
    c.agent_thread.join(10)
    if c.coord is not None:
        c.stop_coordinator()


@pytest.mark.parametrize("down_for", [0.2, 3.0], ids=["restarted at once", "down past the agent's timeout"])
def test_the_agent_outlives_its_coordinator_and_registers_with_the_next(cluster, down_for):
    cluster.stop_coordinator()
    time.sleep(down_for)
    assert cluster.agent_thread.is_alive()  # a stopped coordinator no longer shuts the agents down
    started = time.monotonic()
    cluster.start_coordinator()
    wait_for(cluster.agent_up, 10, "the agent to register with the new coordinator")
    took = time.monotonic() - started
    assert took < 6.0, f"re-registration took {took:.1f} s"
    wait_for(lambda: cluster.agent.registrations == 2 and cluster.agent.registered, 5, "the agent to hear back")
    assert any("registered again with" in line for line in cluster.lines)
    # it heartbeats to the new one: acknowledged, so it stays registered past its coordinator timeout
    time.sleep(2.5)
    assert cluster.agent_up() and cluster.agent.registrations == 2


def test_an_explicit_shutdown_ends_the_agent(cluster):
    from microstream.cluster.client import Client, ClusterAddress

    with Client(ClusterAddress(cluster.endpoint, cluster.client_keys, cluster.keys.public), timeout=5) as client:
        assert client.shutdown() == {"jobs": [], "agents": ["pi1"]}
    cluster.agent_thread.join(10)
    assert not cluster.agent_thread.is_alive()
    cluster.thread.join(5)  # type: ignore[union-attr]
    assert not cluster.thread.is_alive()  # type: ignore[union-attr]
    cluster.coord = None


def test_a_client_waiting_for_a_job_re_attaches_to_the_next_coordinator(monkeypatch):
    """The first coordinator says the job runs, then dies; the client hears nothing, reconnects and asks again;
    the next coordinator (on the same address) answers with the job's end."""
    import zmq

    from microstream.cluster import client as client_module
    from microstream.cluster import messages as cm
    from microstream.cluster.client import Client, ClusterAddress

    monkeypatch.setattr(client_module, "WATCH_EVERY", 0.3)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ctx = zmq.Context()
    lines: list[str] = []
    result: list = []

    def serve(answer) -> None:
        """One coordinator's life: answer the first `watch`, then go."""
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.bind(endpoint)
        try:
            assert sock.poll(10_000)
            identity, *frames = sock.recv_multipart()
            assert cm.TO_COORDINATOR.decode(frames) == cm.Watch(job="j1")
            sock.send_multipart([identity, *answer.encode()])
            time.sleep(0.2)
        finally:
            sock.close()

    with Client(ClusterAddress(endpoint), timeout=1.0) as client:
        waiting = threading.Thread(target=lambda: result.append(client.attach("j1", timeout=20, progress=lines.append)),
                                   daemon=True)
        waiting.start()
        serve(cm.Watching(job="j1", state="running"))
        time.sleep(2.0)  # no coordinator: the client's next watch goes unanswered
        serve(cm.JobDone(job="j1", state="finished", blob=None))
        waiting.join(10)
    ctx.term()
    assert result == [cm.JobDone(job="j1", state="finished")]
    assert any("no answer from the coordinator" in line for line in lines)
    assert any(line.startswith("re-attached to job j1 after") for line in lines)
