"""Maintenance without downtime on an embedded cluster of real processes: `microstream drain NODE` moves every
virtual node off a node with live migration while a job runs, `undrain` returns it to service, and a rolling
upgrade (drain, SIGTERM, start again, undrain, next) runs under a job. Outputs equal a local run's; pinned sources
say why they cannot move."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.helpers import run_cli as cli
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")

pytestmark = pytest.mark.slow  # a cluster of real processes and jobs of 30 s and more

# keyed windows and per-key state over two parallel stages, out of order with late records: every move must carry
# state, watermarks and held records across exactly
JOB = """
import microstream as ms
p = ms.Pipeline("maintained")
src = p.synthetic(count={count}, sensors=30, rate=4000, jitter=0.2, max_delay=0.1, seed=21, speed={speed},
                  batch_size=400, glitch_rate=0.01{at})
ok = src.filter(lambda b: (b["value"] > -50) & (b["value"] < 150))
win = ok.key_by("sensor").window(ms.tumbling(seconds=1), lateness=0.05).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value")).with_parallelism(2)
win.sink(ms.sinks.jsonl("{out}/windows.jsonl"))
win.late.sink(ms.sinks.jsonl("{out}/late.jsonl"))
ok.key_by("sensor").stateful_map(ms.state.ewma(0.2), "value", out="smooth").with_parallelism(2) \\
    .select("sensor", "smooth").sink(ms.sinks.csv("{out}/smooth.csv"))
p.run()
"""


def script(tmp: Path, name: str, count: int, speed: float | None, at: str | None = None) -> tuple[Path, Path]:
    out = tmp / name
    out.mkdir()
    path = tmp / f"{name}.py"
    path.write_text(textwrap.dedent(JOB.format(count=count, speed=speed, out=out, at=f', at="{at}"' if at else "")))
    return path, out


def outputs(out: Path) -> dict[str, list[str]]:
    return {f.name: sorted(f.read_text().splitlines()[1 if f.suffix == ".csv" else 0:]) for f in sorted(out.iterdir())}


def status(home: Path) -> dict:
    with Client(cluster.address(home), timeout=30) as client:
        return client.status()


def submit(home: Path, path: Path) -> str:
    r = cli("submit", "--detach", str(path), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    wait_for(lambda: status(home)["jobs"][job]["state"] == "running", 120, f"job {job} to run")
    return job


def on(home: Path, job: str, node: str) -> list[str]:
    """The virtual nodes of `job` that run on `node` and have not finished."""
    return [vn for vn, info in status(home)["jobs"][job]["vnodes"].items()
            if info["agent"] == node and info["state"] != "done"]


def ended(home: Path, job: str) -> dict:
    return wait_for(lambda: (j := status(home)["jobs"][job])["state"] not in ("deploying", "running") and j, 240,
                    f"job {job} to end")


def local_run(tmp: Path, count: int) -> Path:
    path, out = script(tmp, "local", count, None)
    r = cli("run", str(path))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("drain-home")
    cluster.up(3, root, progress=lambda _: None)
    yield root
    cluster.down(root, progress=lambda _: None)


def drain(home: Path, node: str, job: str) -> list[str]:
    """Drain `node` with the CLI; check what it printed, what status shows, that nothing of `job` is left there;
    return the moves it printed."""
    r = cli("drain", node, "--home", str(home))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"draining {node}: nothing new is placed there")
    assert lines[-1].startswith(f"{node} drained:")
    moved = [line.split()[1] for line in lines if line.startswith("  moved ")]
    # each of the job's virtual nodes at most once (what ran there: the re-placement policy may have moved one
    # there just before)
    assert {m.split("/")[0] for m in moved} <= {job} and len(set(moved)) == len(moved), moved
    agent = status(home)["agents"][node]
    assert agent["draining"] and agent["drain"]["state"] == "drained", agent
    assert not on(home, job, node)
    human = cli("status", "--home", str(home)).stdout
    assert any(line.split()[0] == node and "drained" in line for line in human.splitlines() if line.strip()), human
    return moved


def undrain(home: Path, node: str) -> None:
    r = cli("undrain", node, "--home", str(home))
    assert r.returncode == 0 and "back in service" in r.stdout, r.stdout + r.stderr
    assert not status(home)["agents"][node]["draining"]


def busiest(home: Path, job: str, nodes: list[str]) -> str:
    """Of `nodes`, the one that runs the most of `job` (placement keeps a job's virtual nodes together)."""
    return max(nodes, key=lambda node: (len(on(home, job, node)), node))


def test_drain_and_upgrade_each_agent_in_turn_under_a_running_job(home, tmp_path):
    """docs/maintenance.md's rolling upgrade: per agent, the one running the most of the job first (every drain has
    work to move): drain, stop (SIGTERM), start again (the upgraded microstream), undrain. The job runs throughout
    and its output equals a local run's. (One test for both: draining each agent in turn is its first half.)"""
    count = 280_000  # 70 s of readings in real time: three drains of several moves each land mid-stream
    expected = outputs(local_run(tmp_path, count))
    path, out = script(tmp_path, "remote", count, 1.0)
    job = submit(home, path)
    moved, todo = [], list(NODES)
    while todo:
        node = busiest(home, job, todo)
        todo.remove(node)
        moved += drain(home, node, job)
        cluster.restart_agent(home, node, progress=lambda _: None)
        agent = status(home)["agents"][node]
        assert agent["up"] and agent["draining"], agent  # it came back cordoned: nothing lands there yet
        assert status(home)["jobs"][job]["state"] == "running"  # drained and restarted under a running job
        undrain(home, node)
    final = ended(home, job)
    assert final["state"] == "finished", final
    assert final["recoveries"] == [], final["recoveries"]  # no restart from a checkpoint: it ran throughout
    drained = [m for m in final["migrations"] if (m["reason"] or "").startswith("drain")]
    assert len(drained) == len(moved) >= 8, (moved, final["migrations"])  # the job's 8 virtual nodes, at least
    assert outputs(out) == expected
    assert len(expected["windows.jsonl"]) > 500 and expected["late.jsonl"]


def test_a_pinned_source_says_why_it_stays_and_nothing_new_lands_on_a_draining_node(home, tmp_path):
    path, _ = script(tmp_path, "pinned", 10**9, 1.0, at="node2")
    job = submit(home, path)
    source = next(vn for vn, info in status(home)["jobs"][job]["vnodes"].items() if "synthetic" in info["tasks"])
    r = cli("drain", "node2", "--home", str(home), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{job}/{source}: pinned: source 'synthetic' has at='node2'" in r.stderr
    assert "node2 stays cordoned" in r.stderr and "microstream undrain node2" in r.stderr
    assert on(home, job, "node2") == [source]  # everything else moved off
    agent = status(home)["agents"]["node2"]
    assert agent["drain"]["state"] == "stuck" and list(agent["drain"]["stuck"]) == [f"{job}/{source}"]
    # a job submitted now is placed around the draining node
    other, _ = script(tmp_path, "other", 10**9, 1.0)
    second = submit(home, other)
    assert "node2" not in {info["agent"] for info in status(home)["jobs"][second]["vnodes"].values()}
    undrain(home, "node2")
    for j in (job, second):
        assert cli("stop", j, "--home", str(home)).returncode == 0


def test_drain_errors_are_clear(home):
    r = cli("drain", "nope", "--home", str(home))
    assert r.returncode == 1 and "no agent 'nope'" in r.stderr and "node1" in r.stderr, r.stderr
    r = cli("drain", "--home", str(home))
    assert r.returncode == 2
