"""Moving virtual nodes while a job runs: barrier-aligned migration, save to a file and restore.
No record may be lost or processed twice: the output must equal an unmigrated run's."""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client, ClusterError
from tests.helpers import run_cli as cli

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a cluster of real processes, jobs of 15 to 40 s each

# stateful, keyed, windowed, out of order (jitter within max_delay plus late records), several stages
JOB = """
import microstream as ms
p = ms.Pipeline("moving")
src = p.synthetic(count={count}, sensors=40, rate=4000, jitter=0.2, max_delay=0.1, seed=11, speed={speed},
                  batch_size=400, glitch_rate=0.01)
ok = src.filter(lambda b: (b["value"] > -50) & (b["value"] < 150))
win = ok.key_by("sensor").window(ms.tumbling(seconds=1), lateness=0.05).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value"), sd=ms.agg.std("value")).with_parallelism(2)
win.sink(ms.sinks.jsonl("{out}/windows.jsonl"))
win.late.sink(ms.sinks.jsonl("{out}/late.jsonl"))
ewma = ok.key_by("sensor").stateful_map(ms.state.ewma(0.2), "value", out="smooth").with_parallelism(2)
ewma.select("sensor", "smooth").sink(ms.sinks.csv("{out}/smooth.csv"))
p.run()
"""


def write_job(tmp: Path, name: str, count: int, speed: float | None) -> tuple[Path, Path]:
    out = tmp / name
    out.mkdir()
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(JOB.format(count=count, speed=speed, out=out)))
    return script, out


def outputs(out: Path) -> dict[str, list[str]]:
    return {f.name: sorted(f.read_text().splitlines()[1 if f.suffix == ".csv" else 0:]) for f in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("migration-home")
    cluster.up(3, root, progress=lambda _: None)
    yield root
    cluster.down(root, progress=lambda _: None)


def _running(client: Client, job: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        status = client.status()["jobs"][job]
        if status["state"] != "deploying":
            return status
        time.sleep(0.05)
    raise AssertionError("job never started")


def _wait_end(client: Client, job: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.status()["jobs"][job]
        if status["state"] not in ("deploying", "running"):
            return status
        time.sleep(0.2)
    raise AssertionError("job did not end")


def _move_randomly(client: Client, job: str, rng: random.Random, pause: tuple[float, float],
                   movable=lambda tasks: True) -> int:
    """Move random virtual nodes to random other agents until the job ends; returns how many moves happened."""
    moved = 0
    status = _running(client, job, time.monotonic() + 60)
    while status["state"] == "running":
        time.sleep(rng.uniform(*pause))
        vnode = rng.choice(sorted(v for v, info in status["vnodes"].items() if movable(" ".join(info["tasks"]))))
        here = status["vnodes"][vnode]["agent"]
        try:
            client.migrate(job, vnode, rng.choice([a for a in ("node1", "node2", "node3") if a != here]))
            moved += 1
        except ClusterError as exc:  # the job (or that vnode) finished first, or the re-placement policy is moving one
            assert "finished" in str(exc) or "already moving" in str(exc), (
                exc, client.status()["jobs"][job].get("recoveries"))
        status = client.status()["jobs"][job]
    return moved


def test_random_migrations_lose_and_repeat_nothing(home, tmp_path):
    count, speed = 60_000, 1.0   # about 15 s of replay: migrations land mid-window and mid-stream, even on a
    # loaded machine where starting a new host takes seconds
    local_script, local_out = write_job(tmp_path, "local", count, None)
    assert cli("run", str(local_script)).returncode == 0
    script, out = write_job(tmp_path, "remote", count, speed)
    r = cli("submit", "--detach", str(script), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=60) as client:
        moved = _move_randomly(client, job, random.Random(7), (0.0, 0.25))
        final = _wait_end(client, job)
    assert final["state"] == "finished", final
    assert moved >= 3, f"only {moved} migrations happened"
    assert len(final["migrations"]) == moved
    # the coordinator's Prometheus endpoint counts the moves and their downtime
    import json
    import urllib.request

    port = json.loads(cli("status", "--json", "--home", str(home)).stdout)["metrics_port"]
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'microstream_migrations_total{{job="{job}",mode="migrate",reason="requested"}} {float(moved)}' in scraped
    assert "microstream_migration_downtime_seconds_bucket" in scraped
    expected, got = outputs(local_out), outputs(out)
    assert got == expected
    assert len(expected["windows.jsonl"]) > 500 and expected["late.jsonl"]


def test_save_to_file_then_restore_elsewhere(home, tmp_path):
    count, speed = 80_000, 2.0  # 20 s of readings at 2x: 10 s of stream, time for a CLI save and restore (each
    # CLI call starts a Python process: 1-3 s on a loaded machine, where 5 s of stream once ended before the save)
    local_script, local_out = write_job(tmp_path, "local", count, None)
    assert cli("run", str(local_script)).returncode == 0
    script, out = write_job(tmp_path, "remote", count, speed)
    r = cli("submit", "--detach", str(script), "--home", str(home))
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=60) as client:
        status = _running(client, job, time.monotonic() + 60)
        windows = next(v for v, info in status["vnodes"].items() if "window_aggregate[0]" in info["tasks"])
        here = status["vnodes"][windows]["agent"]
    time.sleep(0.5)
    saved = tmp_path / "vnode.state"
    r = cli("save", job, windows, str(saved), "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert saved.stat().st_size > 0 and "saved" in r.stdout
    time.sleep(0.5)  # suspended: upstream holds the records meanwhile
    status = cli("status", "--json", "--home", str(home))
    assert '"suspended"' in status.stdout
    there = next(a for a in ("node1", "node2", "node3") if a != here)
    r = cli("restore", job, windows, str(saved), "--to", there, "--home", str(home))
    assert r.returncode == 0, r.stderr
    with Client(cluster.address(home), timeout=60) as client:
        final = _wait_end(client, job)
    assert final["state"] == "finished", final
    assert final["vnodes"][windows]["agent"] == there
    assert outputs(out) == outputs(local_out)


def test_migrate_errors_are_clear(home, tmp_path):
    with Client(cluster.address(home)) as client, pytest.raises(ClusterError, match="no job 'nope'"):
        client.migrate("nope", "vn0", "node1")


SLOW_JOB = """
import time
import microstream as ms

def slow_double(b):
    time.sleep(0.03)  # a slow consumer: the source outruns it and blocks on credits (backpressure)
    return b["value"] * 2

p = ms.Pipeline("pressed")
# out of order only within max_delay: the windows here read from two parallel tasks, so on a cluster their
# watermark is the slower task's (late-data decisions may differ from a local run; on-time results may not)
src = p.synthetic(count=60_000, sensors=40, rate=4000, jitter=0.05, max_delay=0.1, seed=12, batch_size=200)
slow = src.key_by("sensor").with_columns(v2=slow_double).with_parallelism(2)
slow.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), s=ms.agg.sum("v2")) \\
    .with_parallelism(2).sink(ms.sinks.jsonl("{out}/windows.jsonl"))
p.run()
"""


def test_migrations_under_backpressure(home, tmp_path):
    outs = {}
    for name in ("local", "remote"):
        outs[name] = tmp_path / name
        outs[name].mkdir()
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(SLOW_JOB.format(out=outs[name])))
    assert cli("run", str(tmp_path / "local.py")).returncode == 0
    r = cli("submit", "--detach", str(tmp_path / "remote.py"), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=60) as client:
        moved = _move_randomly(client, job, random.Random(3), (0.1, 0.3),
                               movable=lambda tasks: "with_columns" in tasks or "window" in tasks)
        final = _wait_end(client, job)
    assert final["state"] == "finished", final
    assert moved >= 2
    assert outputs(outs["remote"]) == outputs(outs["local"])


QUIET_JOB = """
import microstream as ms
p = ms.Pipeline("quiet-move")
src = p.poll(lambda: None, every="100ms", schema={{"value": "float64"}}, name="nothing", at="node1")
src.map(lambda b: {{"v": b["value"] * 2}}, name="double").sink(ms.sinks.jsonl("{out}/v.jsonl"), at="node1")
p.run()
"""


def test_a_vnode_with_nothing_to_read_moves_and_stays_moved(home, tmp_path):
    """A stream with nothing to read sends nothing, not even watermarks: the new host says it resumed quietly
    (`host.QUIET_RESUME_S` after its start), so the move is done, not taken for a stalled one (called off, or the
    job recovered) once the coordinator's move timeout passes without a first record."""
    (tmp_path / "quiet.py").write_text(textwrap.dedent(QUIET_JOB.format(out=tmp_path)))
    r = cli("submit", "--detach", str(tmp_path / "quiet.py"), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=60) as client:
        status = _running(client, job, time.monotonic() + 60)
        (vnode,) = (v for v, info in status["vnodes"].items() if any("double" in t for t in info["tasks"]))
        here = status["vnodes"][vnode]["agent"]
        to = next(a for a in ("node2", "node3") if a != here)
        record = client.migrate(job, vnode, to, timeout=50)  # under the coordinator's 60 s move timeout
        assert record["to"] == to and record["downtime_s"] is not None and record["quiet"] is True, record
        status = client.status()["jobs"][job]
        assert status["state"] == "running" and status["vnodes"][vnode]["agent"] == to, status
        assert not status.get("recoveries"), status["recoveries"]
        client.stop(job)
