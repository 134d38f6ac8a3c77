"""Agents in separate network namespaces (veth pairs on a bridge), so job traffic crosses real network
interfaces: the coordinator listens on the bridge, each agent's channels on its own namespace's address.
Skipped only where namespaces cannot be made (not root, no iproute2)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstream.cluster.client import Client, ClusterAddress
from microstream.cluster.security import KeyStore
from tests.helpers import run_cli, wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG = uuid.uuid4().hex[:4]
# one pair of subnets per pytest-xdist worker (`make test` runs two, each a module at a time): two bridges with one
# address would take each other's routes
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
BRIDGE, SUBNET = f"msbr{TAG}", f"10.231.{77 + 2 * WORKER}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _can_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"msprobe{TAG}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


pytestmark = [pytest.mark.skipif(_can_make_namespaces() is not None, reason=str(_can_make_namespaces())),
              pytest.mark.slow]  # namespaces, a bridge and a cluster of real processes


@pytest.fixture(scope="module")
def network():
    """A bridge at SUBNET.1 and two namespaces at SUBNET.2 and SUBNET.3, each behind a veth pair."""
    namespaces = {}
    _ip("link", "add", BRIDGE, "type", "bridge")
    try:
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i in (1, 2):
            ns, host_end, ns_end = f"msns{TAG}{i}", f"msv{TAG}{i}", f"msp{TAG}{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", BRIDGE)
            _ip("link", "set", host_end, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            namespaces[f"ns{i}"] = (ns, f"{SUBNET}.{i + 1}", host_end)
        yield namespaces
    finally:
        for ns, _, host_end in namespaces.values():
            _ip("link", "del", host_end, check=False)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", BRIDGE, check=False)


def _spawn(args: list[str], log: Path, netns: str | None = None) -> subprocess.Popen:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.Popen([*prefix, sys.executable, "-m", "microstream.cli", *args],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: SIM115


@contextlib.contextmanager
def namespace_cluster(tmp: Path, agents: dict[str, tuple[str, str]]) -> Iterator[tuple[str, ClusterAddress]]:
    """A coordinator on the bridge (SUBNET.1) and an agent per entry of `agents` (name -> (namespace, the address
    its channels use)), with keys under `tmp`: (its endpoint, a client's address), once every agent is registered.
    Every process is stopped at the end."""
    keys = KeyStore(tmp / "keys")
    for name in ("coordinator", "client", *agents):
        keys.create(name)
        if name != "coordinator":
            keys.trust(tmp / "keys" / f"{name}.key")
    port_file = tmp / "port"
    procs = [_spawn(["coordinator", "--bind", f"tcp://{SUBNET}.1:0", "--port-file", str(port_file),
                     "--metrics-port", "0", "--keys", str(keys.root), "--state-dir", str(tmp / "state")],
                    tmp / "coordinator.log")]
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, "the coordinator's port")
        endpoint = port_file.read_text().strip()
        for name, (ns, address) in agents.items():
            procs.append(_spawn(["agent", "--coordinator", endpoint, "--name", name, "--keys", str(keys.root),
                                 "--data-host", address, "--metrics-port", "0"], tmp / f"{name}.log", ns))
        addr = ClusterAddress(endpoint, keys.pair("client"), keys.pair("coordinator").public)
        with Client(addr) as client:
            wait_for(lambda: len(client.status()["agents"]) == len(agents), 30, "every agent to register")
        yield endpoint, addr
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _bytes(iface: str, direction: str) -> int:
    """Bytes through the bridge end of a veth: rx = sent by the namespace, tx = sent into it."""
    return int(Path(f"/sys/class/net/{iface}/statistics/{direction}_bytes").read_text())


JOB = """
import microstream as ms
p = ms.Pipeline("across")
src = p.synthetic(count=200_000, sensors=50, rate=5000, seed=9, name="sensors", at="ns1")
src.key_by("sensor").with_columns(f=lambda b: b["value"] * 1.8 + 32).with_parallelism(2) \\
    .sink(ms.sinks.jsonl("{out}"), at="ns2")
p.run()
"""


def test_job_runs_across_namespaces_with_identical_results(network, tmp_path):
    agents = {name: (ns, address) for name, (ns, address, _) in network.items()}
    with namespace_cluster(tmp_path, agents) as (endpoint, addr):
        ns1_out, ns2_in = network["ns1"][2], network["ns2"][2]
        before = (_bytes(ns1_out, "rx"), _bytes(ns2_in, "tx"))

        local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
        (tmp_path / "local.py").write_text(textwrap.dedent(JOB.format(out=local_out)))
        (tmp_path / "remote.py").write_text(textwrap.dedent(JOB.format(out=remote_out)))
        r = run_cli("run", str(tmp_path / "local.py"))
        assert r.returncode == 0, r.stderr
        r = run_cli("submit", str(tmp_path / "remote.py"), "--coordinator", endpoint,
                    "--home", str(tmp_path))  # keys in tmp_path/keys
        assert r.returncode == 0, r.stderr + (tmp_path / "coordinator.log").read_text()
        local, remote = sorted(local_out.read_text().splitlines()), sorted(remote_out.read_text().splitlines())
        assert remote == local and len(local) > 50
        # the source runs in ns1 and the sink in ns2: every record crosses both veths
        sent = _bytes(ns1_out, "rx") - before[0]
        received = _bytes(ns2_in, "tx") - before[1]
        assert sent > 1_000_000 and received > 1_000_000, (sent, received)
        with Client(addr) as client:
            job = next(iter(client.status()["jobs"].values()))
        assert {v["agent"] for v in job["vnodes"].values()} == {"ns1", "ns2"}
