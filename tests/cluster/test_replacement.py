"""The coordinator moves operators toward their data on its own: when a sensor's readings start arriving
at another node, the virtual nodes that pre-aggregate it follow, and cross-node traffic drops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from microstream.placement import Topology
from microstream.placement.policy import PolicyParams, best_move, measured_problem

ROOT = Path(__file__).resolve().parents[2]

JOB = """
import microstream as ms
p = ms.Pipeline("follow")
readings = p.synthetic(count={count}, sensors=20, rate=20000, seed=4, speed={speed}, batch_size=1000,
                       name="gateway", at="node1")
per_sensor = readings.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value")).with_parallelism(2)
per_sensor.sink(ms.sinks.jsonl("{out}"))
p.run()
"""


def _agents(**spec: tuple[float, list[str]]) -> dict[str, dict]:
    """Live agents as the coordinator's registry reports them: name=(cores, backends)."""
    return {name: {"up": True, "cores": cores, "memory": 4 * 2**30, "arch": "aarch64", "backends": backends,
                   "labels": {}} for name, (cores, backends) in spec.items()}


def _job(backend: str = "process", at: str | None = None):
    import microstream as ms
    from microstream.graph.physical import build_plan

    p = ms.Pipeline("policy")
    src = p.synthetic(count=10, sensors=4, rate=10, name="gateway", at=at)
    win = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), name="windows")
    win.with_parallelism(2).with_backend(backend).sink(ms.sinks.collect(), name="out")
    p.build()
    plan = build_plan(p.graph)

    def vnode(task: str) -> str:
        return next(v for v, vn in plan.vnodes.items() if task in vn.tasks)

    return p.graph, plan, {"gateway": vnode("gateway"), "windows": vnode("windows[0]"),
                           "windows[1]": vnode("windows[1]")}


def _propose(agents, placement, traffic, state=None, backend="process", pinned=(), at=None, pins=None):
    graph, plan, vn = _job(backend, at)
    placement = {v: "b" for v in plan.vnodes} | {vn[k]: v for k, v in placement.items()}
    traffic = {(vn[a], vn[b]): rate for (a, b), rate in traffic.items()}
    problem = measured_problem(plan, graph, Topology.from_agents(agents), traffic,
                               pins={vn[k]: v for k, v in (pins or {}).items()})
    state_bytes = {vn[k]: v for k, v in (state or {}).items()}
    return best_move(problem, placement, traffic, [vn[k] for k in pinned], state_bytes,
                     PolicyParams(min_gain=10_000, horizon=60)), vn


def test_the_policy_asks_the_placement_engine_with_measured_traffic():
    agents = _agents(a=(4, ["process"]), b=(4, ["process"]))
    move, vn = _propose(agents, {"gateway": "a", "windows": "b"}, {("gateway", "windows"): 2e6},
                        pinned=["gateway"])
    assert move is not None and (move.vnode, move.source, move.target) == (vn["windows"], "b", "a")
    # what it reports is the measured traffic: 2 MB/s stops crossing, the window results start crossing
    assert move.before == 2e6 and move.after == 0.0 and move.saved_bytes == 2e6
    assert move.cost_after < move.cost_before and "2,000,000 B/s measured" in move.reason
    # a huge state is not worth moving for this saving; nothing to gain, nothing proposed
    assert _propose(agents, {"gateway": "a", "windows": "b"}, {("gateway", "windows"): 2e6},
                    state={"windows": 1e13}, pinned=["gateway"])[0] is None
    assert _propose(agents, {"gateway": "a", "windows": "a"}, {("gateway", "windows"): 2e6},
                    pinned=["gateway"])[0] is None


def test_a_source_moved_by_hand_is_pinned_where_it_runs_now_and_its_windows_follow():
    agents = _agents(a=(4, ["process"]), b=(4, ["process"]))
    # the script pins the gateway to a; its sensor's gateway failed over and the source was moved to b by hand
    move, vn = _propose(agents, {"gateway": "b", "windows": "a"}, {("gateway", "windows"): 2e6}, at="a",
                        pins={"gateway": "b"})
    assert move is not None and (move.vnode, move.target) == (vn["windows"], "b")


def test_an_automatic_move_never_targets_an_agent_without_the_backend_or_the_capacity():
    traffic = {("gateway", "windows"): 5e6}
    # the windows need a microVM: node a offers none, however much traffic they draw from it
    agents = _agents(a=(4, ["process"]), b=(4, ["process", "microvm"]))
    move, _ = _propose(agents, {"gateway": "a", "windows": "b"}, traffic, backend="microvm",
                       pinned=["gateway"])
    assert move is None
    # node a has the backend but not the cores for 5 MB/s of windows on top of its gateway
    agents = _agents(a=(0.05, ["process"]), b=(4, ["process"]))
    move, _ = _propose(agents, {"gateway": "a", "windows": "b"}, traffic, pinned=["gateway"])
    assert move is None
    # with the cores, the same move is made
    agents = _agents(a=(4, ["process"]), b=(4, ["process"]))
    move, vn = _propose(agents, {"gateway": "a", "windows": "b"}, traffic, pinned=["gateway"])
    assert move is not None and move.target == "a"


def _cross_node(status: dict) -> float:
    return sum(t["bytes_per_s"] for t in status["traffic"] if t["crosses_link"])


def _windows_on(status: dict) -> set[str]:
    return {v["agent"] for v in status["vnodes"].values() if any("window" in t for t in v["tasks"])}


def _wait(client: Client, job: str, check, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    status = client.status()["jobs"][job]
    while time.monotonic() < deadline and not check(status):
        time.sleep(0.25)
        status = client.status()["jobs"][job]
    return status


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    cluster.up(3, root, progress=lambda _: None,
               coordinator_args=["--replace-every", "0.5", "--min-gain", "5000", "--confirm", "2", "--cooldown", "3"])
    yield root
    cluster.down(root, progress=lambda _: None)


@pytest.mark.slow  # a cluster of real processes and a 22 s job
def test_preaggregation_follows_its_sensor(home, tmp_path, capsys):
    count = 20000 * 22  # 22 s of readings at 20,000/s
    for name, speed in (("local", None), ("remote", 1.0)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(JOB.format(count=count, speed=speed,
                                                                        out=tmp_path / f"{name}.jsonl")))
    run = [sys.executable, "-m", "microstream.cli"]
    assert subprocess.run([*run, "run", str(tmp_path / "local.py")], cwd=ROOT, timeout=300).returncode == 0
    r = subprocess.run([*run, "submit", "--detach", str(tmp_path / "remote.py"), "--home", str(home)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=120) as client:
        status = _wait(client, job, lambda s: s["state"] == "running" and len(s["traffic"]) >= 2, 30)
        # 1. the placement engine put the pre-aggregating windows next to the gateway they read from
        assert _windows_on(status) == {"node1"}, status["vnodes"]
        time.sleep(1.5)
        before = _cross_node(client.status()["jobs"][job])
        # 2. the sensor's gateway fails over to node2: its readings now arrive there, and cross the network
        source = next(v for v, info in status["vnodes"].items() if "gateway" in info["tasks"])
        client.migrate(job, source, "node2")
        peak = 0.0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            status = client.status()["jobs"][job]
            peak = max(peak, _cross_node(status))
            if _windows_on(status) == {"node2"}:
                break
            time.sleep(0.25)
        # 3. ... until the policy has moved the windows after it
        assert _windows_on(status) == {"node2"}, status["migrations"]
        time.sleep(2.5)  # fresh measurements on the new placement
        after = _cross_node(client.status()["jobs"][job])
        status = _wait(client, job, lambda s: s["state"] != "running", 60)
    assert status["state"] == "finished", status
    auto = [m for m in status["migrations"] if m["reason"].startswith("auto")]
    assert len(auto) >= 2 and all(m["to"] == "node2" for m in auto)
    with capsys.disabled():
        print(f"\ncross-node traffic: {before:,.0f} B/s with the windows next to the gateway, up to {peak:,.0f} B/s "
              f"after the gateway failed over, {after:,.0f} B/s once the windows followed it ({len(auto)} moves)")
    assert peak > 100_000 and after < peak / 5 and before < peak / 5
    local = sorted((tmp_path / "local.jsonl").read_text().splitlines())
    assert sorted((tmp_path / "remote.jsonl").read_text().splitlines()) == local and len(local) > 100
