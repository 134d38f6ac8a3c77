"""Coordinator discovery by UDP multicast beacon, on the loopback interface."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import zmq

from microstream.cluster import discovery as disc
from microstream.cluster.discovery import Beacon, Discovered, discover

LO = "127.0.0.1"
GROUP = disc.DEFAULT_GROUP

_problem = disc.multicast_problem(LO, GROUP)
needs_multicast = pytest.mark.skipif(_problem is not None, reason=f"multicast on loopback unavailable: {_problem}")


@pytest.fixture
def port() -> int:
    """A free UDP port, so concurrent test runs do not hear each other's beacons."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _send_raw(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LO))
        for d in datagrams:
            s.sendto(d, (GROUP, port))


@needs_multicast
def test_beacon_is_discovered_with_wildcard_host_resolved(port, cluster):
    key = zmq.curve_keypair()[0]
    with Beacon("tcp://0.0.0.0:7070", key, port=port, interval=0.1, cluster=cluster, interface=LO) as beacon:
        found = discover(timeout=3.0, cluster=cluster, port=port, interface=LO)
    assert found == Discovered("tcp://127.0.0.1:7070", key, "127.0.0.1")
    assert beacon.sent >= 1 and beacon.last_error is None
    assert beacon._thread is None  # stopped: no thread left running


@needs_multicast
def test_other_clusters_and_garbage_are_ignored(port, cluster, monkeypatch, caplog):
    other = disc.beacon_payload("tcp://10.0.0.9:7070", None, cluster="someone-else")
    wrong_service = json.dumps({"service": "other", "v": 1, "cluster": cluster, "endpoint": "tcp://x:1"}).encode()
    garbage = [b"\xff\x00not json", b"[]", b'{"service": "microstream"}', wrong_service, other]
    real = Beacon("tcp://*:7071", None, port=port, cluster=cluster, interface=LO)
    joined = disc._receiver

    def receiver_then_send(*args):  # once discover() has joined the group: garbage first, then the real beacon
        sock = joined(*args)
        _send_raw(port, *garbage)
        assert real.send_once()
        return sock

    monkeypatch.setattr(disc, "_receiver", receiver_then_send)
    with caplog.at_level("DEBUG", logger="microstream.discovery"):
        found = discover(timeout=3.0, cluster=cluster, port=port, interface=LO)
    assert found == Discovered("tcp://127.0.0.1:7071", None, "127.0.0.1")
    assert caplog.text.count("ignored datagram from 127.0.0.1") == len(garbage)


@needs_multicast
def test_trust_key_ignores_beacons_with_other_keys(port, cluster):
    real, rogue = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    with Beacon("tcp://10.1.1.1:7070", rogue, port=port, interval=0.05, cluster=cluster, interface=LO):
        assert discover(timeout=0.4, cluster=cluster, port=port, interface=LO, trust_key=real) is None
        with Beacon("tcp://10.1.1.2:7070", real, port=port, interval=0.05, cluster=cluster, interface=LO):
            found = discover(timeout=3.0, cluster=cluster, port=port, interface=LO, trust_key=real.decode())
    assert found is not None and found.endpoint == "tcp://10.1.1.2:7070" and found.public_key == real


@needs_multicast
def test_timeout_returns_none(port, cluster):
    assert discover(timeout=0.2, cluster=cluster, port=port, interface=LO) is None


def test_join_failure_is_a_clear_error(port):
    with pytest.raises(disc.DiscoveryError, match=r"10\.255\.255\.254[\s\S]*fix:"):
        discover(timeout=0.1, port=port, interface="10.255.255.254")


def test_parse_beacon_rules():
    key = zmq.curve_keypair()[0]
    good = disc.beacon_payload("tcp://0.0.0.0:5555", key)
    assert disc.parse_beacon(good, "192.168.1.5") == Discovered("tcp://192.168.1.5:5555", key, "192.168.1.5")
    assert disc.parse_beacon(good, "192.168.1.5", cluster="other") is None
    assert disc.parse_beacon(good, "192.168.1.5", trust_key=zmq.curve_keypair()[0]) is None
    body = json.loads(good)
    for field, value in [("v", 2), ("endpoint", 5), ("endpoint", "nonsense"), ("public_key", "short"),
                         ("public_key", 7)]:
        assert disc.parse_beacon(json.dumps({**body, field: value}).encode(), "h") is None, (field, value)
    assert disc.resolve_endpoint("tcp://pi-1:5555", "10.0.0.2") == "tcp://pi-1:5555"
    assert disc.resolve_endpoint("tcp://*:5555", "10.0.0.2") == "tcp://10.0.0.2:5555"
    with pytest.raises(ValueError, match="bad endpoint"):
        Beacon("localhost:5555", None)
