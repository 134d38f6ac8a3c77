"""A coordinator that crashes, on an embedded cluster of real processes: kill -9 it while a job with keyed windows
and a file sink runs, start a new one on the same port, keys and state directory. The agents come back, the job
goes on where it ran (or, if its hosts are gone too, recovers from the checkpoint the first coordinator
persisted), the file holds exactly what a run without a fault writes, and the client that waited in `submit`
gets its result. A coordinator stopped on purpose leaves its agents running; `cluster down` stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.cluster.test_cluster import ROOT
from tests.cluster.test_recovery import JOB, _alive, _rows, expected  # noqa: F401 - `expected`: the fixture
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _submit(script, home) -> tuple[subprocess.Popen, str]:
    """`microstream submit` waiting for the job's end, in the background; the job id is its first line."""
    proc = subprocess.Popen([sys.executable, "-m", "microstream.cli", "submit", str(script), "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _running_with_checkpoints(client: Client, job: str) -> dict:
    return wait_for(lambda: (s := client.status()["jobs"][job])["state"] == "running" and len(s["checkpoints"]) >= 2
                    and s, 60, "the job to run and take two checkpoints")


@pytest.mark.parametrize("down_for", [0.0, 12.0], ids=["restarted at once", "down past the agents' timeout"])
def test_a_coordinator_killed_mid_job_is_replaced_and_the_job_finishes_as_without_a_fault(down_for, request,
                                                                                          tmp_path, capsys):
    fault_free = request.getfixturevalue("expected")  # the local run's rows
    home = tmp_path / "home"
    state = cluster.up(3, home, progress=lambda _: None)
    out = tmp_path / "cluster.jsonl"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(speed=1.0, out=out)))  # 12 s of real-time readings
    proc = None
    try:
        proc, job = _submit(script, home)
        with Client(cluster.address(home), timeout=30) as client:
            status = _running_with_checkpoints(client, job)
        hosts = sorted(v["pid"] for v in status["vnodes"].values())
        os.kill(state["pids"][0], signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(down_for)  # 12 s: the job's sources run out meanwhile; agents hold what their hosts reported
        restarted = time.monotonic()
        cluster.restart_coordinator(home, progress=lambda _: None, wait_for_agents=False)
        listening = time.monotonic()  # the new coordinator is bound (its start is Python's and its imports')
        with Client(cluster.address(home), timeout=30) as client:
            wait_for(lambda: sum(a["up"] for a in client.status()["agents"].values()) == 3, 30, "the agents")
            agents_back = time.monotonic() - listening
            status = wait_for(lambda: (s := client.status()["jobs"][job])["state"] != "adopting" and s, 30,
                              "the job to be adopted")
            adopted = time.monotonic() - listening
            assert status["state"] in ("running", "finished"), status["reason"]
            assert status["epoch"] == 0 and status["restarts"] == 0  # adopted where it ran: no recovery
            if status["state"] == "running":  # the same host processes (those that have not finished meanwhile)
                running = [v["pid"] for v in status["vnodes"].values() if v["pid"] is not None]
                assert set(running) <= set(hosts), (running, hosts)
        stdout, stderr = proc.communicate(timeout=120)  # the client that waited in `submit` gets its result
        assert proc.returncode == 0, stderr
        assert "24,000 records in" in stderr
        assert _rows(out) == fault_free  # exactly once: nothing lost, nothing twice
        wait_for(lambda: not [pid for pid in hosts if _alive(pid)], 15, "the hosts to end with the job")
        with capsys.disabled():
            print(f"\n[coordinator down {restarted - killed:.1f} s, the new one listening after "
                  f"{listening - restarted:.2f} s] agents back {agents_back:.2f} s and the job {status['state']} "
                  f"again {adopted:.2f} s after it listened")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.down(home, progress=lambda _: None)


def test_a_job_whose_hosts_died_with_the_coordinator_recovers_from_the_persisted_checkpoint(request, tmp_path):
    fault_free = request.getfixturevalue("expected")
    home = tmp_path / "home"
    state = cluster.up(3, home, progress=lambda _: None, coordinator_args=["--agent-timeout", "3"])
    agent_pids = {f"node{i}": pid for i, pid in enumerate(state["pids"][1:], start=1)}
    out = tmp_path / "cluster.jsonl"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(speed=1.0, out=out)))
    proc = None
    try:
        proc, job = _submit(script, home)
        with Client(cluster.address(home), timeout=30) as client:
            status = _running_with_checkpoints(client, job)
        windows = next(v for v in status["vnodes"].values() if any(t.startswith("window") for t in v["tasks"]))
        os.kill(state["pids"][0], signal.SIGKILL)
        os.kill(agent_pids[windows["agent"]], signal.SIGKILL)  # its hosts end with it
        cluster.restart_coordinator(home, progress=lambda _: None)
        with Client(cluster.address(home), timeout=30) as client:
            final = wait_for(lambda: (s := client.status()["jobs"][job])["state"] in ("finished", "failed") and s,
                             120, "the job to end")
        assert final["state"] == "finished", final["reason"]
        assert final["restarts"] == 1 and final["epoch"] == 1
        recovery = final["recoveries"][-1]
        assert recovery["checkpoint"] is not None and "the coordinator restarted and" in recovery["reason"]
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert _rows(out) == fault_free
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.down(home, progress=lambda _: None)


def test_a_stopped_coordinator_leaves_its_agents_running_and_cluster_down_stops_everything(tmp_path):
    home = tmp_path / "home"
    state = cluster.up(2, home, progress=lambda _: None)
    pids = state["pids"]
    try:
        os.kill(pids[0], signal.SIGTERM)  # a plain stop (a restart, a reboot): not a shutdown of the cluster
        wait_for(lambda: not _alive(pids[0]), 10, "the coordinator to stop")
        time.sleep(2.0)
        assert all(_alive(pid) for pid in pids[1:])  # the agents (and any hosts) run on
        state = cluster.up(2, home, progress=lambda _: None)  # only the coordinator is started again
        assert state["pids"][1:] == pids[1:] and state["pids"][0] != pids[0]
        with Client(cluster.address(home)) as client:
            assert all(a["up"] for a in client.status()["agents"].values())
    finally:
        cluster.down(home, progress=lambda _: None)
    assert not [pid for pid in state["pids"] if _alive(pid)]


def test_the_coordinator_does_not_grow_per_finished_job(tmp_path, monkeypatch, capsys):
    """60 short jobs, each collecting 2,000 records: what stays of an ended job is its status, in a bounded history
    (here 10); results live in the state directory. Before, the coordinator grew by ~0.56 MB per such job."""
    import microstream as ms

    home = tmp_path / "home"
    monkeypatch.setenv("MICROSTREAM_BACKENDS", "process")
    state = cluster.up(2, home, progress=lambda _: None, coordinator_args=["--keep-jobs", "10"])
    rss: dict[int, float] = {}
    try:
        with Client(cluster.address(home), timeout=60) as client:
            for i in range(1, 61):
                p = ms.Pipeline(f"short{i}")
                p.from_iterable([{"sensor": j % 7, "value": float(j)} for j in range(2000)]).key_by("sensor").map(
                    lambda b: {"v": b["value"] * 2.0, "w": b["value"] + 1.0}).sink(ms.sinks.collect())
                _, result = client.submit(p)
                assert result is not None and sum(result.records_out.values()) == 2000
                if i in (20, 60):
                    with open(f"/proc/{state['pids'][0]}/status") as f:
                        rss[i] = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
            status = client.status()
            assert len(status["jobs"]) == 10
            first = next(iter(client.status(_first_id(home))["jobs"].values()))  # an old one, from the store
            assert first["state"] == "finished"
    finally:
        cluster.down(home, progress=lambda _: None)
    growth = rss[60] - rss[20]
    with capsys.disabled():
        print(f"\n[coordinator RSS] {rss[20]:.1f} MB after 20 jobs, {rss[60]:.1f} MB after 60: "
              f"{growth * 1024 / 40:.0f} KB per job")
    assert growth < 5.0, f"the coordinator grew by {growth:.1f} MB over 40 jobs"


def _first_id(home) -> str:
    """The first job's id, from the coordinator's state directory (it is no longer in its memory)."""
    import sqlite3

    db = sqlite3.connect(cluster.state_dir(home) / "coordinator.db")
    try:
        return db.execute("SELECT id FROM jobs WHERE name='short1'").fetchone()[0]
    finally:
        db.close()
