"""Control-path sends have deadlines: an agent or client whose key the coordinator refuses gets a clear
error, never a hang. In one process, with a real coordinator (in a thread) and real sockets.

The case that hung (issue 10): the coordinator refuses the key *before* the agent's first send; libzmq then
drops the connection's pipe and a DEALER send without a timeout blocks forever. Each attempt here waits for
the refusal before sending, and runs twice, as a second run of the suite did."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from microstream.cluster import security as sec
from microstream.cluster.agent import Agent
from microstream.cluster.client import Client, ClusterAddress, ClusterError
from microstream.cluster.coordinator import Coordinator

HANG = 20.0  # far more than the attempts' own deadlines: past it, something blocks


@pytest.fixture
def coordinator() -> Iterator[tuple[Coordinator, str, sec.KeyPair]]:
    keys = sec.generate("coordinator")
    coord = Coordinator("tcp://127.0.0.1:0", keys, {}, metrics_port=None, log=lambda _: None, policy=None)
    endpoint = coord.open()
    thread = threading.Thread(target=coord.run, daemon=True)
    thread.start()
    yield coord, endpoint, keys
    coord.stop()
    thread.join(5)


def _refused_after(coord: Coordinator, before: int) -> None:
    deadline = time.monotonic() + 5
    while coord.auth.rejected_count <= before:
        assert time.monotonic() < deadline, "the coordinator never refused the key"
        time.sleep(0.01)


def _finishes(attempt: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            attempt()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"still blocked after {HANG:.0f} s"
    if errors:
        raise errors[0]


def test_untrusted_agent_registration_fails_fast_twice(coordinator, tmp_path):
    coord, endpoint, keys = coordinator
    rogue = sec.generate("rogue")
    lines: list[str] = []
    outcomes: list[bool] = []

    def attempt() -> None:
        for i in range(2):
            agent = Agent("rogue", endpoint, rogue, keys.public, metrics_port=None, log=lines.append,
                          workdir=tmp_path / f"agent{i}")
            before = coord.auth.rejected_count
            agent._open()
            try:
                _refused_after(coord, before)
                started = time.monotonic()
                outcomes.append(agent.register(timeout=1.0))
                assert time.monotonic() - started < 3.0
            finally:
                agent.shutdown()

    _finishes(attempt)
    assert outcomes == [False, False]
    assert len(lines) == 2 and all("cannot register" in line for line in lines)
    assert f"rejected 'rogue' (fingerprint {rogue.fingerprint}): it is not trusted there" in lines[0]
    assert "rogue" not in coord.status()["agents"]


def test_untrusted_client_gets_an_error_twice(coordinator):
    coord, endpoint, keys = coordinator
    stranger = sec.generate("stranger")
    errors: list[str] = []

    def attempt() -> None:
        before = coord.auth.rejected_count
        with Client(ClusterAddress(endpoint, stranger, keys.public), timeout=1.0) as client:
            _refused_after(coord, before)
            for _ in range(2):  # the second request found no connection to send on, and blocked
                with pytest.raises(ClusterError) as info:
                    client.status()
                errors.append(str(info.value))

    _finishes(attempt)
    assert len(errors) == 2 and errors[1].startswith("the coordinator refused this key (not trusted)"), errors


def test_trusted_agent_registers_and_a_second_registration_replaces_the_first(tmp_path):
    keys, agent_keys = sec.generate("coordinator"), sec.generate("pi1")
    coord = Coordinator("tcp://127.0.0.1:0", keys, {agent_keys.public: "pi1"}, metrics_port=None,
                        log=lambda _: None, policy=None)
    endpoint = coord.open()
    thread = threading.Thread(target=coord.run, daemon=True)
    thread.start()
    try:
        def attempt() -> None:
            for i in range(2):
                agent = Agent("pi1", endpoint, agent_keys, keys.public, metrics_port=None, log=lambda _: None,
                              workdir=tmp_path / f"agent{i}")
                agent._open()
                try:
                    assert agent.register(timeout=5.0) is True
                    assert agent.trusted_data_keys == [agent_keys.public.decode()]
                finally:
                    agent.shutdown()

        _finishes(attempt)
        assert coord.status()["agents"]["pi1"]["up"] is True
    finally:
        coord.stop()
        thread.join(5)
