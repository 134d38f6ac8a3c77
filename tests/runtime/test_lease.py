"""The agent's lease on its hosts (runtime/lease.py), across real processes: a host sees the renewals an agent
process writes; the lease expires once they stop with the agent frozen (SIGSTOP), and never while the agent runs
(a slow agent is not a frozen one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from microstream.runtime.lease import AgentLease, HostLease
from tests.helpers import wait_for

AGENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from microstream.runtime.lease import AgentLease
    lease = AgentLease.create(Path(sys.argv[1]))
    print("ready", flush=True)
    while True:
        if sys.argv[2] == "renew":
            lease.renew()
        time.sleep(0.05)
""")


def _agent(path, mode: str) -> subprocess.Popen:
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
    return agent


def test_a_host_sees_its_agents_renewals_and_the_lease_expires_when_the_agent_freezes(tmp_path):
    path = tmp_path / "lease"
    agent = _agent(path, "renew")
    try:
        host = HostLease(path, lease=0.5)
        wait_for(lambda: not host.expired(), 10, "a fresh lease")
        os.kill(agent.pid, signal.SIGSTOP)
        wait_for(host.expired, 10, "the lease to expire while the agent is frozen")
        os.kill(agent.pid, signal.SIGCONT)
        wait_for(lambda: not host.expired(), 10, "the lease renewed once the agent is continued")
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        agent.kill()
        agent.wait()


def test_an_agent_that_runs_but_does_not_renew_is_not_taken_for_frozen(tmp_path):
    agent = _agent(tmp_path / "lease", "idle")  # alive and sleeping, like an agent starved of CPU between passes
    try:
        host = HostLease(tmp_path / "lease", lease=0.3)
        wait_for(lambda: host.age() > 1.0, 10, "the lease to run out well past its time")
        assert not host.expired()  # the agent runs: the coordinator decides about it, not the host
        os.kill(agent.pid, signal.SIGSTOP)
        wait_for(host.expired, 10, "the lease to expire once the agent is stopped")
        agent.kill()
        agent.wait()
        assert host.expired()  # gone: expired too
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGCONT)
        agent.kill()
        agent.wait()


def test_renewing_moves_the_lease_forward(tmp_path):
    agent = AgentLease.create(tmp_path / "lease")
    host = HostLease(agent.path, lease=5.0)
    before = wait_for(lambda: (age := host.age()) > 0.2 and age, 5, "the lease to age")
    agent.renew()
    assert host.age() < before
