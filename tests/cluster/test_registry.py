"""The coordinator's agent registry with an injected clock: registration, heartbeats, lost and back."""

from __future__ import annotations

import pytest

from microstream.cluster.messages import Heartbeat, Register
from microstream.cluster.registry import AgentRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock) -> AgentRegistry:
    lines: list[str] = []
    reg = AgentRegistry(timeout=3.0, clock=clock, log=lines.append)
    reg.lines = lines  # type: ignore[attr-defined]
    return reg


def _register(registry: AgentRegistry, name: str, identity: bytes, key: str | None = None) -> None:
    registry.register(identity, Register(name=name, public_key=key, cores=4, arch="aarch64", backends=["process"],
                                         labels={"room": name}))


def test_register_records_capabilities_and_identity(registry):
    _register(registry, "pi1", b"id-1", key="K1")
    agent = registry.get("pi1")
    assert agent.identity == b"id-1" and agent.up and agent.labels == {"room": "pi1"}
    assert agent.caps == {"cores": 4, "memory": None, "arch": "aarch64", "backends": ["process"], "python": None}
    assert registry.name_of(b"id-1") == "pi1" and registry.name_of(b"other") is None
    assert registry.placement_view()["pi1"] == {**agent.caps, "labels": {"room": "pi1"}, "up": True, "draining": False}
    registry.cordoned.add("pi1")  # `microstream drain pi1`: the placer puts nothing new there
    assert registry.placement_view()["pi1"]["draining"] is True
    assert "agent pi1 registered (4 cores, aarch64)" in registry.lines[-1]


def test_heartbeat_only_from_the_registered_identity(registry, clock):
    _register(registry, "pi1", b"id-1")
    clock.now += 1
    assert registry.heartbeat(b"id-1", Heartbeat(name="pi1")).last_seen == clock.now
    assert registry.heartbeat(b"intruder", Heartbeat(name="pi1")) is None  # same name, other socket
    assert registry.heartbeat(b"id-9", Heartbeat(name="nobody")) is None


def test_agent_is_lost_after_the_timeout_and_comes_back(registry, clock):
    _register(registry, "pi1", b"id-1", key="K1")
    _register(registry, "pi2", b"id-2", key="K2")
    clock.now += 2.0
    registry.heartbeat(b"id-2", Heartbeat(name="pi2"))
    clock.now += 1.5  # pi1 silent for 3.5 s, pi2 for 1.5 s
    lost = registry.check()
    assert [a.name for a in lost] == ["pi1"]
    assert registry.get("pi1").down_reason == "no heartbeat for 3.5 s"
    assert registry.live("pi1") is None and registry.live("pi2") is not None
    assert registry.names_up() == ["pi2"] and registry.data_keys() == ["K2"]
    assert registry.check() == []  # lost once, reported once
    status = registry.status()
    assert status["pi1"]["up"] is False and status["pi1"]["last_seen_s"] == 3.5
    registry.heartbeat(b"id-1", Heartbeat(name="pi1"))
    assert registry.get("pi1").up and registry.lines[-1] == "coordinator: agent pi1 is back"
    assert sorted(registry.data_keys()) == ["K1", "K2"]


def test_exactly_at_the_timeout_is_not_lost(registry, clock):
    _register(registry, "pi1", b"id-1")
    clock.now += 3.0
    assert registry.check() == []
    clock.now += 0.01
    assert [a.name for a in registry.check()] == ["pi1"]


def test_heartbeats_give_operator_rates(registry, clock):
    _register(registry, "pi1", b"id-1")

    def beat(records_in: int, finished: bool = False) -> dict:
        op = {"records_in": records_in, "finished": finished}
        vnodes = {"j/vn0": {"state": "running", "stats": {"operators": {"t0": op}}}}
        registry.heartbeat(b"id-1", Heartbeat(name="pi1", vnodes=vnodes))
        return op

    clock.now += 1
    assert "rate" not in beat(100)  # nothing to compare with yet
    clock.now += 2
    assert beat(700)["rate"] == 300.0
    clock.now += 1
    assert "rate" not in beat(800, finished=True)


def test_a_sources_rate_is_what_it_emits(registry, clock):
    _register(registry, "pi1", b"id-1")

    def beat(records_out: int) -> dict:
        op = {"records_in": 0, "records_out": records_out, "finished": False}
        vnodes = {"j/vn0": {"state": "running", "stats": {"operators": {"source": op}}}}
        registry.heartbeat(b"id-1", Heartbeat(name="pi1", vnodes=vnodes))
        return op

    clock.now += 1
    beat(1_000)
    clock.now += 2
    assert beat(5_000)["rate"] == 2_000.0


def test_reregistering_replaces_the_identity(registry):
    _register(registry, "pi1", b"old")
    _register(registry, "pi1", b"new")
    assert registry.heartbeat(b"old", Heartbeat(name="pi1")) is None
    assert registry.heartbeat(b"new", Heartbeat(name="pi1")) is not None
