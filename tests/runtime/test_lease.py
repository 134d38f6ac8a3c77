"""The agent's lease on its hosts (runtime/lease.py), across real processes: a host sees the renewals an agent
process writes, and the lease expires once they stop (the agent frozen with SIGSTOP)."""

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
        lease.renew()
        time.sleep(0.05)
""")


def test_a_host_sees_its_agents_renewals_and_the_lease_expires_when_the_agent_freezes(tmp_path):
    path = tmp_path / "lease"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
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


def test_renewing_moves_the_lease_forward(tmp_path):
    agent = AgentLease.create(tmp_path / "lease")
    host = HostLease(agent.path, lease=0.2)
    wait_for(host.expired, 5, "the lease to expire without renewals")
    agent.renew()
    assert not host.expired() and host.age() < 0.2
