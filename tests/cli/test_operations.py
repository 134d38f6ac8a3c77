"""Operating a cluster from the command line: what human `status` shows (moves, traffic per link, reasons that keep
counting), `status --watch`, and signals: SIGTERM to a foreground `cluster up`, Ctrl-C on a foreground `submit`,
`status --json | head`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microstream.cli.main import format_status
from microstream.cluster import embedded as cluster
from microstream.cluster.messages import Register
from microstream.cluster.registry import AgentRegistry
from tests.cluster.deploy_helpers import alive, descendants
from tests.helpers import sigint_as_in_a_shell, wait_for

ROOT = Path(__file__).resolve().parents[2]

STATUS = {
    "agents": {"pi1": {"up": True, "cores": 4, "arch": "aarch64", "backends": ["process"], "metrics_port": 9100,
                       "reason": ""},
               "pi2": {"up": True, "cores": 4, "arch": "aarch64", "backends": ["process"], "metrics_port": 9100,
                       "reason": "no heartbeat for 4.2 s"},
               "pi3": {"up": False, "cores": 4, "arch": "aarch64", "backends": ["process"], "metrics_port": 9100,
                       "reason": "no heartbeat for 42.0 s"}},
    "jobs": {"rooms-1": {
        "name": "rooms", "state": "running", "reason": "",
        "vnodes": {"vn0": {"agent": "pi1", "tasks": ["synthetic"], "state": "running", "operators": {}},
                   "vn1": {"agent": "pi2", "tasks": ["window"], "state": "running", "operators": {}}},
        "traffic": [{"from": "vn0", "to": "vn1", "from_node": "pi1", "to_node": "pi2", "bytes_per_s": 12_300.0,
                     "crosses_link": True},
                    {"from": "vn1", "to": "vn2", "from_node": "pi2", "to_node": "pi2", "bytes_per_s": 800.0,
                     "crosses_link": False}],
        "migrations": [{"vnode": "vn1", "mode": "migrate", "from": "pi3", "to": "pi2", "total_s": 0.42,
                        "reason": "requested", "downtime_s": 0.038, "state_bytes": 1_200_000},
                       {"vnode": "vn0", "mode": "migrate", "from": "pi2", "to": "pi1", "total_s": 0.3,
                        "reason": "auto: saves 2.1 kB/s", "downtime_s": None, "state_bytes": 0}]}},
}


def test_human_status_shows_reasons_traffic_per_link_and_moves():
    text = format_status(STATUS)
    assert "suspect (no heartbeat for 4.2 s)" in text and "DOWN (no heartbeat for 42.0 s)" in text
    assert "      pi1 -> pi2                  12.3 kB/s  (vn0->vn1)" in text
    assert "      within nodes                  800 B/s" in text
    assert "vn1 migrate pi3 -> pi2  requested; inputs held 38 ms, state 1.2 MB, 0.42 s" in text
    assert "vn0 migrate pi2 -> pi1  auto: saves 2.1 kB/s; no records held" in text


def test_human_status_shows_dead_letters_and_the_newest_reason():
    job = STATUS["jobs"]["rooms-1"]
    failing = {**job["vnodes"]["vn0"], "dead_letters": 1203,
               "dead_recent": [{"operator": "co2", "reason": "the polled function raised OSError: sensor gone"}]}
    status = {**STATUS, "jobs": {"rooms-1": {**job, "vnodes": {**job["vnodes"], "vn0": failing}}}}
    text = format_status(status)
    assert "      dead letters 1,203 (newest: co2: the polled function raised OSError: sensor gone)" in text
    assert text.count("dead letters") == 1               # vn1 has none: no line


def test_a_down_agents_reason_keeps_counting():
    now = [100.0]
    registry = AgentRegistry(timeout=3.0, clock=lambda: now[0], log=lambda _: None)
    registry.register(b"id", Register(name="pi1", cores=4))
    now[0] = 103.1
    assert [a.name for a in registry.check()] == ["pi1"]
    assert registry.status()["pi1"]["reason"] == "no heartbeat for 3.1 s"
    now[0] = 142.0
    assert registry.status()["pi1"]["reason"] == "no heartbeat for 42.0 s"   # not frozen at the moment it was lost


def _cli(*args: str, home: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "microstream.cli", *args], cwd=ROOT,
                            env={**os.environ, "MICROSTREAM_HOME": str(home), "MICROSTREAM_BACKENDS": "process"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_in_a_shell, **kw)


@pytest.mark.slow
def test_sigterm_to_a_foreground_cluster_up_stops_everything_and_removes_its_state_file(tmp_path):
    home = tmp_path / "home"
    log = tmp_path / "up.log"
    up = subprocess.Popen([sys.executable, "-m", "microstream.cli", "cluster", "up", "--nodes", "2"], cwd=ROOT,
                          env={**os.environ, "MICROSTREAM_HOME": str(home), "MICROSTREAM_BACKENDS": "process"},
                          stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)  # noqa: SIM115
    try:
        wait_for(lambda: "press Ctrl-C" in log.read_text(), 120, "the cluster")
        pids = cluster.read_state(home)["pids"]   # type: ignore[index]
        below = [p for pid in pids for p in descendants(pid)]
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        err = log.read_text()
        assert up.returncode == 0, err
        assert "cluster down" in err
        assert not cluster.state_file(home).exists()
        assert not [p for p in pids + below if alive(p)]
    finally:
        if up.poll() is None:
            up.kill()
        cluster.down(home, progress=lambda _: None)


FOREVER = """
import microstream as ms
p = ms.Pipeline("forever")
p.synthetic(count=10**9, sensors=4, rate=100, speed=1.0).key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).sink(ms.sinks.collect())
p.run()
"""


@pytest.mark.slow
def test_ctrl_c_on_submit_says_the_job_runs_on_and_status_json_into_head_is_quiet(tmp_path):
    home = tmp_path / "home"
    cluster.up(1, home, progress=lambda _: None)
    try:
        script = tmp_path / "forever.py"
        script.write_text(FOREVER)
        submit = _cli("submit", str(script), home=home)
        job = submit.stdout.readline().strip()                    # type: ignore[union-attr]
        assert job.startswith("forever-")
        time.sleep(1.0)
        submit.send_signal(signal.SIGINT)
        out, err = submit.communicate(timeout=30)
        assert submit.returncode == 130, err
        assert f"job {job} keeps running" in err and f"microstream stop {job}" in err and "Traceback" not in err

        head = subprocess.run(f"{sys.executable} -m microstream.cli status --json | head -2", shell=True, cwd=ROOT,
                              env={**os.environ, "MICROSTREAM_HOME": str(home)}, capture_output=True, text=True,
                              timeout=60)
        assert head.stdout.splitlines() == ["{", '  "agents": {'] and "Error" not in head.stderr, head.stderr
        full = subprocess.run([sys.executable, "-m", "microstream.cli", "status", "--json"], cwd=ROOT,
                              env={**os.environ, "MICROSTREAM_HOME": str(home)}, capture_output=True, text=True)
        assert json.loads(full.stdout)["jobs"][job]["state"] == "running"   # Ctrl-C left it running, as it said

        watch = _cli("status", "--watch", "0.5", home=home)
        assert watch.stdout is not None
        seen = ""
        while seen.count("every 0.5 s") < 2:  # two frames (the CLI's start-up takes seconds on a loaded machine)
            line = watch.stdout.readline()
            assert line, (seen, watch.stderr.read() if watch.stderr else "")
            seen += line
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        out = seen + out
        assert watch.returncode == 0 and job in out, (out, err)
    finally:
        cluster.down(home, progress=lambda _: None)
