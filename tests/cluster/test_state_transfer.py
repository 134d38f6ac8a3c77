"""A virtual node with tens of MB of state moves mid-stream with its state sent directly from the old host to the
new one (pre-copy on a thread of the old host, then only the delta at the barrier: runtime/statexfer.py), the
default: the output equals a local run's, and the coordinator relayed a ticket, not the state. Moves under
backpressure (a slow stage downstream holds every host back) pre-copy and complete while the job runs; a host that
cannot pre-copy (stuck in an operator) is cut anyway after MICROSTREAM_PRECOPY_TIMEOUT and its record says so. With
MICROSTREAM_STATE_TRANSFER=coordinator the old path (the whole snapshot through the coordinator) still works and
says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.cluster.test_recovery import JOB as WINDOWS  # keyed windows, checkpoints every second
from tests.cluster.test_recovery import _alive, _rows, checkpointed, start_job
from tests.helpers import run_cli as cli
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a cluster of real processes

KEYS = 16_000  # x 513 float64 of state per key, over two parallel tasks: 33 MB in each virtual node
RING_SUM = """
import time
import numba
import numpy as np
import microstream as ms


@numba.njit
def ring_sum(state, t, x):
    # a ring of the key's last values; the output is their sum, so any byte of state lost or stale shows
    i = int(state[0]) % (len(state) - 1) + 1
    state[i] = x
    state[0] += 1
    return np.sum(state[1:])

"""
JOB = RING_SUM + """
p = ms.Pipeline("big-state")
src = p.synthetic(count={count}, sensors={keys}, rate={rate}, speed={speed}, batch_size=2000, seed=3)
src.key_by("sensor").stateful_map(ring_sum, "value", out="total", state_size=513).with_parallelism(2) \\
    .select("sensor", "total").sink(ms.sinks.csv("{out}/totals.csv"))
p.run()
"""


def write_job(tmp: Path, name: str, count: int, speed: float | None) -> tuple[Path, Path]:
    out = tmp / name
    out.mkdir()
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(JOB.format(count=count, keys=KEYS, rate=float(KEYS), speed=speed, out=out)))
    return script, out


def lines(out: Path) -> list[str]:
    return sorted((out / "totals.csv").read_text().splitlines()[1:])


def _cluster(root: Path, transfer: str | None, coordinator_args: tuple[str, ...] = (), **env: str):
    """Two agents; the coordinator's process inherits `transfer` (None: the default) and `env`."""
    settings = {"MICROSTREAM_STATE_TRANSFER": transfer, **env}
    before = {k: os.environ.get(k) for k in settings}
    for k, v in settings.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        cluster.up(2, root, progress=lambda _: None, coordinator_args=["--no-auto-place", *coordinator_args])
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _moves(client: Client, job: str, times: int) -> list[dict]:
    """Once every key has state, move the stateful virtual node back and forth `times` times."""
    deadline = time.monotonic() + 120
    while True:
        status = client.status()["jobs"][job]
        assert status["state"] in ("deploying", "running"), status
        vnode = next((v for v, info in status.get("vnodes", {}).items() if "stateful_map[0]" in info["tasks"]), None)
        ops = status["vnodes"][vnode].get("operators", {}) if vnode else {}
        seen = sum(o.get("records_in", 0) for o in ops.values() if o.get("operator") == "stateful_map")
        if status["state"] == "running" and seen >= KEYS:  # its half of the keys, twice over
            break
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.1)
    records = []
    for _ in range(times):
        here = client.status()["jobs"][job]["vnodes"][vnode]["agent"]
        records.append(client.migrate(job, vnode, "node2" if here == "node1" else "node1"))
    return records


def _wait_end(client: Client, job: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = client.status()["jobs"][job]
        if status["state"] not in ("deploying", "running"):
            return status
        time.sleep(0.2)
    raise AssertionError("job did not end")


def _run_and_move(tmp_path: Path, home: Path, times: int) -> tuple[list[dict], dict]:
    count = 30 * KEYS  # thirty readings per key: ~30 s at speed 1
    local_script, local_out = write_job(tmp_path, "local", count, None)
    assert cli("run", str(local_script)).returncode == 0
    script, out = write_job(tmp_path, "remote", count, 1.0)
    r = cli("submit", "--detach", str(script), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=120) as client:
        records = _moves(client, job, times)
        final = _wait_end(client, job)
    assert final["state"] == "finished", final
    assert lines(out) == lines(local_out)
    assert len(lines(local_out)) == count
    return records, final


@pytest.fixture(scope="module")
def direct_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("xfer-home")
    _cluster(root, None)  # the default path: direct
    yield root
    cluster.down(root, progress=lambda _: None)


def test_large_state_moves_directly_mid_stream(direct_home, tmp_path):
    records, final = _run_and_move(tmp_path, direct_home, times=2)
    for record in records:
        assert record["transfer"] == "direct", record
        assert record["state_bytes"] > 30e6, record       # the state moved ...
        assert record["relayed_bytes"] < 4096, record     # ... and the coordinator carried only the ticket
        assert record["precopy_bytes"] >= record["state_bytes"], repr(record)  # pre-copied in full while it ran
        assert record["final_bytes"] is not None and record["final_bytes"] <= record["state_bytes"], record
        assert record["downtime_s"] is not None
        assert record["precopy_fallback"] is None and not record["stop_and_copy"], record
        # a converged pre-copy sends the ticket first; the new host says how long it then waited for the rest
        assert record["ticket_first"] and record["final_wait_s"] is not None, record
        # and the rest of the downtime in its two parts: the restore, then the wait for the first record
        assert record["restore_s"] is not None and record["first_record_s"] is not None, record
    assert len(final["migrations"]) == 2


def test_the_old_path_through_the_coordinator_stays_selectable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _cluster(home, "coordinator")
    try:
        records, _ = _run_and_move(tmp_path, home, times=1)
    finally:
        cluster.down(home, progress=lambda _: None)
    assert records[0]["transfer"] == "coordinator"
    assert records[0]["relayed_bytes"] == records[0]["state_bytes"] > 30e6


PRESSED = RING_SUM + """
def slow(b):
    time.sleep({delay})  # downstream of the state, slower than the source: every host upstream waits on credits
    return b["total"] * 2


p = ms.Pipeline("pressed-state")
src = p.synthetic(count={count}, sensors={keys}, rate=1e9, batch_size=1000, seed=4)
totals = src.key_by("sensor").stateful_map(ring_sum, "value", out="total", state_size=257).with_parallelism(2)
twice = totals.with_columns(twice=slow).with_parallelism(1)
twice.select("sensor", "total", "twice").sink(ms.sinks.csv("{out}/totals.csv"))
p.run()
"""


def _write_pressed(tmp: Path, name: str, delay: float) -> tuple[Path, Path]:
    out = tmp / name
    out.mkdir()
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(PRESSED.format(count=200_000, keys=4000, delay=delay, out=out)))
    return script, out


def _vnode_of(client: Client, job: str, task: str) -> str:
    def find():
        status = client.status()["jobs"][job]
        assert status["state"] in ("deploying", "running"), status
        return status["state"] == "running" and next(
            (v for v, info in status.get("vnodes", {}).items() if any(task in t for t in info["tasks"])), None)
    return wait_for(find, 120, f"a running vnode with {task}")


def test_moves_under_backpressure_precopy_and_finish_before_the_job(direct_home, tmp_path):
    """Every host upstream of a slow stage spends its time blocked on a full channel (the source runs as fast as
    credits let it): moves of the stateful vnode (4 MB, blocked sending) and of the slow one (never idle) pre-copy,
    complete while the job runs, and the output is exactly once."""
    local_script, local_out = _write_pressed(tmp_path, "local", 0.0)
    assert cli("run", str(local_script)).returncode == 0
    script, out = _write_pressed(tmp_path, "remote", 0.06)  # ~400 batches into the slow stage: ~25 s
    r = cli("submit", "--detach", str(script), "--home", str(direct_home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    records = []
    with Client(cluster.address(direct_home), timeout=120) as client:
        stateful = _vnode_of(client, job, "stateful_map[0]")
        busy = _vnode_of(client, job, "with_columns")
        for vnode in (stateful, busy, stateful):
            here = client.status()["jobs"][job]["vnodes"][vnode]["agent"]
            records.append(client.migrate(job, vnode, "node2" if here == "node1" else "node1"))  # never called off
        ended_after = client.status()["jobs"][job]["state"]
        final = _wait_end(client, job)
    assert ended_after == "running", "the job ended before the moves were done: make it slower"
    assert final["state"] == "finished", final
    for record in records:
        assert record["transfer"] == "direct", record
        assert record["precopy_rounds"] >= 1 and record["precopy_fallback"] is None, record
        assert record["downtime_s"] is not None, record
    assert records[0]["state_bytes"] > 4e6, records[0]
    assert lines(out) == lines(local_out)
    assert len(lines(local_out)) == 200_000


STUCK = """
import os
import time
import microstream as ms


def stuck_once(b):
    if os.path.exists("{flag}"):  # the test asks for a move meanwhile: this host can neither pre-copy nor align
        os.remove("{flag}")
        time.sleep(15)
    return b["s"] * 2


p = ms.Pipeline("stuck")
src = p.synthetic(count=40_000, sensors=50, rate=1000, speed={speed}, batch_size=100, seed=8)
counts = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), s=ms.agg.sum("value"))
counts.with_columns(twice=stuck_once).sink(ms.sinks.jsonl("{out}/windows.jsonl"))
p.run()
"""


def test_a_host_that_cannot_precopy_is_cut_after_the_timeout_and_the_record_says_so(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _cluster(home, None, MICROSTREAM_PRECOPY_TIMEOUT="2")
    try:
        scripts = {}
        for name, speed in (("local", None), ("remote", 1.0)):
            (tmp_path / name).mkdir()
            scripts[name] = tmp_path / f"{name}.py"
            scripts[name].write_text(textwrap.dedent(STUCK.format(flag=tmp_path / "stick", speed=speed,
                                                                  out=tmp_path / name)))
        assert cli("run", str(scripts["local"])).returncode == 0
        r = cli("submit", "--detach", str(scripts["remote"]), "--home", str(home))
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        with Client(cluster.address(home), timeout=120) as client:
            vnode = _vnode_of(client, job, "with_columns")
            here = client.status()["jobs"][job]["vnodes"][vnode]["agent"]
            (tmp_path / "stick").touch()
            wait_for(lambda: not (tmp_path / "stick").exists(), 60, "the operator to take the flag")
            r = cli("migrate", job, vnode, "--to", "node2" if here == "node1" else "node1", "--home", str(home))
            assert r.returncode == 0, r.stderr
            assert "sent directly" in r.stdout and "no pre-copy within 2 s" in r.stdout, r.stdout  # says how it went
            record = client.status()["jobs"][job]["migrations"][-1]
            final = _wait_end(client, job)
    finally:
        cluster.down(home, progress=lambda _: None)
    assert final["state"] == "finished", final
    assert record["transfer"] == "direct" and record["stop_and_copy"], record
    assert "no pre-copy within 2 s" in record["precopy_fallback"], record
    got = sorted((tmp_path / "remote" / "windows.jsonl").read_text().splitlines())
    assert got == sorted((tmp_path / "local" / "windows.jsonl").read_text().splitlines()) and got


def test_an_unknown_state_transfer_is_refused_naming_the_choices(tmp_path):
    r = subprocess.run([sys.executable, "-m", "microstream.cli", "coordinator", "--no-state", "--insecure",
                        "--bind", "tcp://127.0.0.1:0", "--no-console"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env={**os.environ, "MICROSTREAM_STATE_TRANSFER": "relay"})
    assert r.returncode == 1
    assert "MICROSTREAM_STATE_TRANSFER='relay': expected one of direct, coordinator" in r.stderr


@pytest.mark.parametrize("fault", ["kill the old host", "freeze the old agent"])
def test_the_old_host_lost_between_its_ticket_and_its_final_round_ends_in_a_recovery(fault, tmp_path):
    """The window of a ticket-first move: the new host has its ticket, the final round of the state has not left the
    old host (held there by MICROSTREAM_TEST_HOLD_FINAL_ROUND, tests only) when the old host is killed -9, or its
    agent freezes past the loss limit (SIGSTOP: a node frozen, a link cut). The coordinator hears of it (the agent
    reports the exit; the agent is lost), calls the move off and recovers the job from its last checkpoint (the new
    host, waiting for a state that will not come, is stopped): the job finishes with exactly the fault-free output,
    and its status says why it recovered. Before, nothing was reported: the new host waited 60 s, and the coordinator
    then called off a move whose old host was gone (stopping the new host: the virtual node could run nowhere)."""
    local = tmp_path / "local.py"
    local.write_text(textwrap.dedent(WINDOWS.format(speed=None, out=tmp_path / "local.jsonl")))
    assert cli("run", str(local)).returncode == 0
    expected = _rows(tmp_path / "local.jsonl")
    home = tmp_path / "home"
    home.mkdir()
    _cluster(home, None, ("--agent-timeout", "4"), MICROSTREAM_TEST_HOLD_FINAL_ROUND="120")
    agents = {f"node{i}": pid for i, pid in enumerate(cluster.read_state(home)["pids"][1:], start=1)}
    moved: dict = {}
    frozen = None
    try:
        job, out = start_job(home, tmp_path)
        with Client(cluster.address(home), timeout=30) as client:
            status = checkpointed(client, job)
            vnode, info = next((v, i) for v, i in status["vnodes"].items() if any(t.startswith("window")
                                                                                    for t in i["tasks"]))
            old_pid, source = info["pid"], info["agent"]
            target = "node2" if source == "node1" else "node1"

            def migrate() -> None:
                with Client(cluster.address(home), timeout=120) as mover:
                    try:
                        moved["record"] = mover.migrate(job, vnode, target)
                    except Exception as exc:  # noqa: BLE001 - what the client is told is the test's to check
                        moved["error"] = str(exc)

            mover = threading.Thread(target=migrate)
            mover.start()
            # the ticket went: the coordinator pointed the vnode at its new host as it sent that host the ticket
            wait_for(lambda: client.status()["jobs"][job]["vnodes"][vnode]["agent"] == target, 60, "the ticket")
            assert _alive(old_pid), "the old host should hold its final round (MICROSTREAM_TEST_HOLD_FINAL_ROUND)"
            struck = time.time()
            if fault == "kill the old host":
                os.kill(old_pid, signal.SIGKILL)
            else:
                frozen = agents[source]
                os.kill(frozen, signal.SIGSTOP)
            status = wait_for(lambda: (s := client.status()["jobs"][job])["recoveries"] and s, 50, "a recovery")
            recovery = status["recoveries"][0]
            running = wait_for(lambda: (s := client.status()["jobs"][job])["recoveries"][0].get("restarted_s")
                               is not None and s, 60, "the job to run again")
            if frozen is not None:
                os.kill(frozen, signal.SIGCONT)  # it comes back: its hosts of the old epoch are stopped
                frozen = None
            final = _wait_end(client, job)
            mover.join(timeout=120)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        cluster.down(home, progress=lambda _: None)
    restarted = running["recoveries"][0]["restarted_s"]
    print(f"{fault} between ticket and final round: recovery began {recovery['at'] - struck:.2f} s after it, the "
          f"job ran again {restarted:.2f} s after that (epoch {final['epoch']}, from checkpoint "
          f"{recovery['checkpoint']}); the mover was told: {moved}")
    assert final["state"] == "finished", final["reason"]
    assert recovery["checkpoint"] is not None, recovery
    why = ("final round of its state reached the new host" if fault == "kill the old host"
           else f"the agent of its old host, {source}, was lost")
    assert recovery["reason"].startswith(f"{vnode} was lost moving {source} -> {target}: ") and why in \
        recovery["reason"], recovery
    assert recovery["move"]["vnode"] == vnode and recovery["move"]["to"] == target, recovery
    assert "record" not in moved and "called off" in moved.get("error", ""), moved
    assert final["migrations"] == [], final["migrations"]  # no move is recorded as done
    assert _rows(out) == expected and len(expected) > 200  # exactly once: nothing lost, nothing twice
