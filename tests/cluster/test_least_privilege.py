"""Least privilege on a real embedded cluster (a coordinator and an agent as processes): roles checked on every
control message, no name takeover, a pre-authentication frame of 1,000 MB refused with memory flat, a flood of
handshakes with random keys costing a few log lines, metrics on loopback with a bounded number of threads."""

from __future__ import annotations

import os
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from microstream.cluster import embedded as cluster
from microstream.cluster import messages as cm
from microstream.cluster.client import Client, ClusterAddress, ClusterError
from microstream.cluster.security import HandshakeWatch, KeyPair, KeyStore, curve_client, generate
from microstream.runtime.protocol import ControlMessage, Message, send
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # a cluster of real processes


class Cluster:
    def __init__(self, root: Path, own: KeyStore) -> None:
        self.root = root
        self.state = cluster.read_state(root) or {}
        self.endpoint: str = self.state["coordinator"]
        self.coordinator_pid, self.agent_pid = self.state["pids"][:2]
        keys = KeyStore(root / "keys")
        self.server = keys.public("coordinator")
        self.client, self.agent = keys.pair("client"), keys.pair("node1")
        self.reader, self.intruder = own.pair("reader"), own.pair("intruder")
        self.log = Path(self.state["logs"]) / "coordinator.log"

    def ask(self, pair: KeyPair, message: Message, timeout: float = 5.0) -> Message:
        """Send one message with `pair` from a fresh socket; the coordinator's answer."""
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        curve_client(sock, pair, self.server)
        sock.connect(self.endpoint)
        try:
            send(sock, message, to="the coordinator")
            assert sock.poll(int(timeout * 1000)), f"no answer to '{message.KIND}' from {pair.name}"
            reply = ControlMessage.parse(sock.recv_multipart())
            return (cm.TO_CLIENT if reply.kind in cm.TO_CLIENT else cm.TO_AGENT).parse(reply)
        finally:
            sock.close()

    def coordinator_log(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("least-privilege")
    own = KeyStore(root / "own")
    trusted = KeyStore(root / "keys")
    for name, role in (("reader", "read-only"), ("intruder", "agent")):
        own.create(name)
        trusted.trust(own.root / f"{name}.key", role=role)
    cluster.up(1, root, progress=lambda _: None)
    try:
        yield Cluster(root, own)
    finally:
        cluster.down(root, progress=lambda _: None)


def _status(vm_file: str, field: str) -> int:
    with open(vm_file) as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def rss_mb(pid: int) -> float:
    return _status(f"/proc/{pid}/status", "VmRSS") / 1024


def threads(pid: int) -> int:
    return _status(f"/proc/{pid}/status", "Threads")


def listening_hosts(port: int) -> set[str]:
    """The local addresses a TCP port listens on, from /proc/net/tcp (IPv6 ones as "v6:" and their hex)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    v4 = len(address) == 8
                    hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if v4 else f"v6:{address}")
    return hosts


# -- roles ---------------------------------------------------------------------------------------------------------


def test_each_role_may_send_only_its_kinds(running):
    c = running
    # an agent key cannot submit: that would be code execution on every agent (the blob is never unpickled)
    reply = c.ask(c.agent, cm.Submit(blob=b"not even a pickle"))
    assert isinstance(reply, cm.Error)
    assert "key 'node1'" in reply.error and "has role agent and may not send 'submit'" in reply.error
    assert "--role client" in reply.error
    assert isinstance(c.ask(c.agent, cm.StatusRequest()), cm.Error)

    # a client key cannot register, nor send heartbeats or host reports
    for message in (cm.Register(name="node9"), cm.Heartbeat(name="node1"), cm.VnodeDone(job="j", vnode="vn0")):
        reply = c.ask(c.client, message)
        assert isinstance(reply, cm.Error) and f"has role client and may not send '{message.KIND}'" in reply.error
    assert isinstance(c.ask(c.client, cm.StatusRequest()), cm.StatusReply)

    # a read-only key asks for status, and nothing else
    status = c.ask(c.reader, cm.StatusRequest())
    assert isinstance(status, cm.StatusReply) and status.status["agents"]["node1"]["up"]
    for message in (cm.StopRequest(job="x"), cm.Watch(job="x"), cm.Submit(blob=b"x"), cm.ShutdownRequest(),
                    cm.MigrateRequest(job="x", vnode="vn0", to="node1")):
        reply = c.ask(c.reader, message)
        assert isinstance(reply, cm.Error) and "has role read-only" in reply.error, message.KIND

    # the Client surfaces the refusal as it is
    with Client(ClusterAddress(c.endpoint, c.reader, c.server)) as client:
        assert client.status()["agents"]["node1"]["up"]
        with pytest.raises(ClusterError, match="may not send 'stop'"):
            client.stop("anything")

    # each refused key is logged once, however often it tries
    log = wait_for(lambda: (text := c.coordinator_log()).count("key 'reader'") and text, 5, "the refusal logged")
    assert log.count("key 'reader'") == 1 and log.count("key 'node1'") == 1 and log.count("key 'client'") == 1
    assert "further refusals of this key are not logged" in log
    os.kill(c.coordinator_pid, 0)  # still running (raises if it is gone): a refusal never takes it down


def test_a_live_agents_name_cannot_be_taken_over_with_another_key(running):
    c = running
    reply = c.ask(c.intruder, cm.Register(name="node1", cores=64))
    assert isinstance(reply, cm.Error)
    assert "name 'node1' is held by a live agent that registered with another key" in reply.error
    assert f"key {c.intruder.fingerprint} cannot take it over" in reply.error
    with Client(cluster.address(c.root)) as client:
        node1 = client.status()["agents"]["node1"]
    assert node1["up"] and node1["cores"] != 64
    # its own key may register again (an agent restart, here from a fresh socket); the real agent then re-registers
    assert isinstance(c.ask(c.agent, cm.Register(name="node1", cores=node1["cores"])), cm.Registered)
    # the intruder's key may register under a name nobody holds
    assert isinstance(c.ask(c.intruder, cm.Register(name="spare")), cm.Registered)
    assert "refused a registration: name 'node1'" in c.coordinator_log()


# -- memory, logs and threads under hostile input -------------------------------------------------------------------

ZMTP_CURVE_GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"CURVE".ljust(20, b"\0") + b"\0" * 32


def test_an_oversized_frame_before_authentication_is_refused_with_memory_flat(running):
    c = running
    host, port = c.endpoint.removeprefix("tcp://").rsplit(":", 1)
    before = rss_mb(c.coordinator_pid)
    sent, refused = 0, None
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(ZMTP_CURVE_GREETING)
        s.sendall(bytes([0x06]) + struct.pack(">Q", 1000 << 20))  # a long command frame of 1,000 MB
        chunk = bytes(1 << 20)
        try:
            while sent < 800 << 20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError as exc:  # the coordinator closed the connection at the frame's size
            refused = exc
        growth = rss_mb(c.coordinator_pid) - before  # measured while our end is still open
    assert refused is not None, f"the coordinator read {sent >> 20} MB of a frame it should refuse"
    assert growth < 50, f"coordinator RSS grew by {growth:.0f} MB"
    print(f"1,000 MB frame: refused after {sent >> 20} MB sent; coordinator RSS {before:.0f} MB, +{growth:.1f} MB")  # noqa: T201
    with Client(cluster.address(c.root)) as client:
        assert client.status()["agents"]["node1"]["up"]


def test_a_flood_of_handshakes_with_random_keys_costs_a_few_log_lines(running):
    c = running
    ctx = zmq.Context()
    before = c.coordinator_log().count("untrusted key")
    rejected = 0
    try:
        for _ in range(10):  # 2,000 handshakes, 200 at a time
            batch = []
            for _ in range(200):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                curve_client(sock, generate("stranger"), c.server)
                batch.append((sock, HandshakeWatch(sock)))
                sock.connect(c.endpoint)
            for sock, watch in batch:
                rejected += watch.wait(5.0) == "not-trusted"
                watch.close()
                sock.close()
    finally:
        ctx.destroy(linger=0)  # closes whatever is still open: a failure above must not hang in term()
    assert rejected == 2000
    log = c.coordinator_log()
    lines = [line for line in log.splitlines() if "untrusted key" in line][before:]
    assert len(lines) <= 20, "\n".join(lines[:30])
    assert any("the rest are counted and summarised" in line for line in log.splitlines())
    print(f"2,000 rejected handshakes: {len(lines)} log lines")  # noqa: T201 - the figure for the report


def test_metrics_listen_on_loopback_and_half_open_connections_cost_no_threads(running):
    c = running
    with Client(cluster.address(c.root)) as client:
        status = client.status()
    agent_port, coordinator_port = status["agents"]["node1"]["metrics_port"], status["metrics_port"]
    assert listening_hosts(agent_port) == {"127.0.0.1"} and listening_hosts(coordinator_port) == {"127.0.0.1"}

    url = f"http://127.0.0.1:{agent_port}/metrics"
    assert urllib.request.urlopen(url, timeout=5).status == 200  # its workers exist now
    before = threads(c.agent_pid)
    half_open = [socket.create_connection(("127.0.0.1", agent_port)) for _ in range(300)]
    try:
        time.sleep(0.5)
        during = threads(c.agent_pid)
        # a scraper that sends its request still gets its answer (the oldest idle connections make room)
        assert b"microstream_" in urllib.request.urlopen(url, timeout=5).read()
    finally:
        for s in half_open:
            s.close()
    assert during - before <= 2, f"{during - before} more threads in the agent under 300 half-open connections"
    print(f"agent threads: {before} before, {during} with 300 half-open connections")  # noqa: T201
