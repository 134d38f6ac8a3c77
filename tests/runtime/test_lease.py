"""The agent's lease on its hosts (runtime/lease.py), across real processes: a host sees the renewals an agent
process writes; the lease expires once they stop with the agent frozen (SIGSTOP), and only after a grace period
while the agent runs but does not renew (a slow agent)."""

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
        host = HostLease(path, lease=0.5, grace=60)  # a stopped agent: no grace
        wait_for(lambda: not host.expired(), 10, "a fresh lease")
        os.kill(agent.pid, signal.SIGSTOP)
        wait_for(host.expired, 10, "the lease to expire while the agent is frozen")
        os.kill(agent.pid, signal.SIGCONT)
        wait_for(lambda: not host.expired(), 10, "the lease renewed once the agent is continued")
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        agent.kill()
        agent.wait()


def test_an_agent_that_runs_but_does_not_renew_gets_the_grace_period(tmp_path):
    agent = _agent(tmp_path / "lease", "idle")  # alive and sleeping, like an agent starved of CPU between passes
    try:
        host = HostLease(tmp_path / "lease", lease=0.3, grace=5.0)
        wait_for(lambda: host.age() > 0.3, 10, "the lease to run out")
        assert not host.expired()  # the agent is not stopped: it may still renew in time
        wait_for(host.expired, 30, "the lease to expire after the grace period")
        assert host.age() > 5.3
    finally:
        agent.kill()
        agent.wait()


def test_renewing_moves_the_lease_forward(tmp_path):
    agent = AgentLease.create(tmp_path / "lease")  # this test's process: running, so the grace applies
    host = HostLease(agent.path, lease=0.2, grace=0.1)
    wait_for(host.expired, 5, "the lease to expire without renewals")
    agent.renew()
    assert not host.expired() and host.age() < 0.2
