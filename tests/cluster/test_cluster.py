"""The cluster runtime with real processes and sockets: an embedded coordinator and agents on this
machine, jobs submitted with the CLI, results identical to a local run, security, failure detection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.agent import Agent
from microstream.cluster.client import Client, ClusterAddress, ClusterError
from microstream.cluster.security import KeyStore
from tests.helpers import run_cli as cli
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # clusters of real processes and sockets

JOB = """
import microstream as ms
p = ms.Pipeline("campus")
src = p.synthetic(count=60_000, sensors=40, rate=2000, jitter=0.02, glitch_rate=0.01, seed=5)
ok = src.filter(lambda b: (b["value"] > -50) & (b["value"] < 150))
agg = ok.key_by("sensor").window(ms.tumbling(seconds=2)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value"), hi=ms.agg.max("value")).with_parallelism(3)
agg.sink(ms.sinks.jsonl("{out}"))
p.run()
"""

FOREVER = """
import microstream as ms
p = ms.Pipeline("forever")
p.synthetic(count=10**9, sensors=10, rate=200, speed=1.0, at="node2").key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.collect())
p.run()
"""


def script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-home")
    os.environ["MICROSTREAM_BACKENDS"] = "process"  # these agents offer no microVMs (tests/unikernel_backend do)
    try:
        cluster.up(3, root, progress=lambda _: None)
    finally:
        os.environ.pop("MICROSTREAM_BACKENDS")
    yield root
    cluster.down(root, progress=lambda _: None)


def _lines(path: Path) -> list[dict]:
    records = (json.loads(x) for x in path.read_text().splitlines())
    return sorted(records, key=lambda r: (r["sensor"], r["window_start"]))


def test_submitted_job_matches_local_run(home, tmp_path):
    local_out, cluster_out = tmp_path / "local.jsonl", tmp_path / "cluster.jsonl"
    r = cli("run", str(script(tmp_path, "local.py", JOB.format(out=local_out))))
    assert r.returncode == 0, r.stderr
    r = cli("submit", str(script(tmp_path, "remote.py", JOB.format(out=cluster_out))), "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert "placed" in r.stderr or "submitted" in r.stderr
    local, remote = _lines(local_out), _lines(cluster_out)
    assert len(local) > 100 and remote == local


def test_status_shows_nodes_jobs_and_placement(home, tmp_path):
    out = tmp_path / "o.jsonl"
    assert cli("submit", str(script(tmp_path, "j.py", JOB.format(out=out))), "--home", str(home)).returncode == 0
    r = cli("status", "--json", "--home", str(home))
    status = json.loads(r.stdout)
    assert sorted(status["agents"]) == ["node1", "node2", "node3"]
    assert all(a["up"] for a in status["agents"].values())
    job_id, job = next((i, j) for i, j in status["jobs"].items() if j["name"] == "campus" and j["state"] == "finished")
    agents = {v["agent"] for v in job["vnodes"].values()}
    assert len(job["vnodes"]) >= 4 and agents <= {"node1", "node2", "node3"}
    text = cli("status", "--home", str(home)).stdout
    assert "node1" in text and f"{job_id}  finished" in text  # an ended job: one line in the cluster's list
    text = cli("status", job_id, "--home", str(home)).stdout   # and all of it on its own
    assert "NODES" not in text and "window_aggregate[2]" in text


def test_prometheus_endpoints_can_be_scraped(home, tmp_path):
    status = json.loads(cli("status", "--json", "--home", str(home)).stdout)
    coord = urllib.request.urlopen(f"http://127.0.0.1:{status['metrics_port']}/metrics", timeout=5).read().decode()
    assert 'microstream_node_up{node="node1"} 1.0' in coord
    scraped = "".join(urllib.request.urlopen(f"http://127.0.0.1:{a['metrics_port']}/metrics", timeout=5).read()
                      .decode() for a in status["agents"].values())
    assert "microstream_records_in_total" in scraped and 'operator="window_aggregate"' in scraped


def test_untrusted_client_cannot_submit_or_query(home, tmp_path):
    stranger = KeyStore(tmp_path / "keys").create("stranger")
    server = KeyStore(home / "keys").pair("coordinator").public
    addr = ClusterAddress(cluster.read_state(home)["coordinator"], stranger, server)
    with Client(addr, timeout=30) as client, pytest.raises(ClusterError, match=r"refused this key \(not trusted\)"):
        client.status()
    # the coordinator says why, with the key's fingerprint
    log = (home / "logs" / "coordinator.log").read_text()
    assert "untrusted key" in log and stranger.fingerprint in log


def test_plaintext_client_cannot_reach_a_secure_coordinator(home):
    with Client(ClusterAddress(cluster.read_state(home)["coordinator"]), timeout=2) as client, \
            pytest.raises(ClusterError):
        client.status()


def test_untrusted_agent_cannot_register(home, tmp_path):
    stranger = KeyStore(tmp_path / "keys").create("rogue")
    server = KeyStore(home / "keys").pair("coordinator").public
    agent = Agent("rogue", cluster.read_state(home)["coordinator"], stranger, server, metrics_port=None,
                  log=lambda _: None)
    agent._open()
    try:
        assert agent.register(timeout=2) is False
    finally:
        agent.shutdown()
    status = json.loads(cli("status", "--json", "--home", str(home)).stdout)
    assert "rogue" not in status["agents"]


def test_pipeline_error_in_submitted_script_points_at_its_line(home, tmp_path):
    bad = script(tmp_path, "bad.py", """
        import microstream as ms
        p = ms.Pipeline("bad")
        p.from_iterable([{"v": 1}]).filter(lambda b: b["nope"] > 1).sink(ms.sinks.collect())
        p.run()
    """)
    r = cli("submit", str(bad), "--home", str(home))
    assert r.returncode == 2 and "bad.py:4" in r.stderr and "Traceback" not in r.stderr


def test_stop_a_running_job(home, tmp_path):
    r = cli("submit", "--detach", str(script(tmp_path, "f.py", FOREVER)), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    r = cli("stop", job, "--home", str(home))
    assert r.returncode == 0 and "stopped" in r.stdout
    status = json.loads(cli("status", "--json", "--home", str(home)).stdout)
    assert status["jobs"][job]["state"] == "stopped"


def test_a_lost_agent_shows_in_status_and_its_pinned_job_waits_for_its_node(tmp_path):
    home = tmp_path / "home"
    state = cluster.up(2, home, progress=lambda _: None, coordinator_args=["--agent-timeout", "3"])
    try:
        r = cli("submit", "--detach", str(script(tmp_path, "f.py", FOREVER)), "--home", str(home))
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        with Client(cluster.address(home)) as client:  # deployed on node2 before node2 goes
            wait_for(lambda: client.status()["jobs"][job]["state"] == "running", 60, f"{job} to run")
        os.killpg(state["pids"][2], signal.SIGKILL)  # node2 and its hosts vanish
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = json.loads(cli("status", "--json", "--home", str(home)).stdout)
            if status["jobs"][job]["state"] == "recovering":
                break
            time.sleep(0.5)
        assert not status["agents"]["node2"]["up"]
        # its source is pinned to node2 (at="node2"): the job cannot run elsewhere, and says what it waits for
        assert status["jobs"][job]["state"] == "recovering"
        assert "waiting to recover" in status["jobs"][job]["reason"] and "node2" in status["jobs"][job]["reason"]
        assert "DOWN" in cli("status", "--home", str(home)).stdout
    finally:
        cluster.down(home, progress=lambda _: None)


def test_agent_without_address_finds_the_coordinator_by_beacon(tmp_path):
    from microstream.cluster.discovery import multicast_problem

    problem = multicast_problem("127.0.0.1")
    if problem:
        pytest.skip(f"multicast unavailable here: {problem}")
    keys = KeyStore(tmp_path / "keys")
    for name in ("coordinator", "client", "scout"):
        keys.create(name)
        if name != "coordinator":
            keys.trust(tmp_path / "keys" / f"{name}.key")
    port_file = tmp_path / "port"
    beacon_port = str(47100 + os.getpid() % 500)
    common = ["--keys", str(keys.root), "--interface", "127.0.0.1", "--beacon-port", beacon_port]
    coord = subprocess.Popen([sys.executable, "-m", "microstream.cli", "coordinator", "--bind", "tcp://127.0.0.1:0",
                              "--port-file", str(port_file), "--metrics-port", "0", "--beacon", "--no-state", *common],
                             stderr=subprocess.DEVNULL, cwd=ROOT)
    agent = None
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = subprocess.Popen([sys.executable, "-m", "microstream.cli", "agent", "--name", "scout",
                                  "--metrics-port", "0", *common], stderr=subprocess.PIPE, text=True, cwd=ROOT)
        addr = ClusterAddress(port_file.read_text().strip(), keys.pair("client"), keys.pair("coordinator").public)
        with Client(addr) as client:
            while time.monotonic() < deadline and "scout" not in client.status()["agents"]:
                time.sleep(0.2)
            assert "scout" in client.status()["agents"]
    finally:
        for proc in (agent, coord):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def test_a_job_needing_a_backend_no_agent_offers_is_refused(home, tmp_path):
    job = script(tmp_path, "vm.py", """
        import microstream as ms
        p = ms.Pipeline("isolated")
        p.synthetic(count=100).map(lambda b: {"v": b["value"]}).with_backend("microvm").sink(ms.sinks.collect())
        p.run()
    """)
    r = cli("submit", str(job), "--home", str(home))
    assert r.returncode == 1
    assert "needs backend 'microvm'" in r.stderr and "process" in r.stderr


def test_cluster_result_counts_late_records_as_the_local_run_does(home):
    import microstream as ms

    def job() -> ms.Pipeline:
        p = ms.Pipeline("late")
        src = p.synthetic(count=20_000, sensors=10, rate=2000, jitter=0.3, max_delay=0.05, seed=9)
        win = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2)
        win.sink(ms.sinks.collect())
        win.late.sink(ms.sinks.collect())
        return p

    local = job().run(verbose=False)
    with Client(cluster.address(home), timeout=120) as client:
        _, remote = client.submit(job())
    assert local.late_count > 100
    assert remote.late_count == local.late_count


def _union_of_twelve():
    import numpy as np

    import microstream as ms

    p = ms.Pipeline("twelve")
    streams = [p.from_arrays({"sensor": np.full(500, i, dtype=np.int64),
                              "time": np.arange(500, dtype=np.int64) * 10**8 + i,
                              "v": np.arange(500, dtype=np.float64) * (i + 1)}, time="time", batch_size=64)
               for i in range(12)]
    both = streams[0].union(*streams[1:])
    out = ms.sinks.collect()
    both.key_by("sensor").window(ms.tumbling(seconds=5)).aggregate(
        n=ms.agg.count(), s=ms.agg.sum("v")).with_parallelism(2).sink(out)
    return p, out


def test_union_of_twelve_streams_runs_on_the_cluster_as_locally(home):
    p, out = _union_of_twelve()
    local = p.run(verbose=False)
    local_rows = sorted(map(tuple, (r.values() for r in out.records())))
    with Client(cluster.address(home), timeout=120) as client:
        _, remote = client.submit(p)          # the same Pipeline object, after a local run
    remote_rows = sorted(map(tuple, (r.values() for r in out.records())))
    assert len(local_rows) == 12 * 10 and remote_rows == local_rows
    assert remote.records_in == local.records_in and remote.records_out == local.records_out


def _refuse(batch):
    if (batch["v"] < 0).any():  # only real readings: the build-time probe of the filter passes
        raise ValueError("sensor 7 is not calibrated")
    return batch["v"] > 0


def test_a_failing_user_function_names_its_operator_on_the_cluster_too(home):
    import microstream as ms
    from microstream.core.errors import OperatorError

    def job() -> ms.Pipeline:
        p = ms.Pipeline("fails")
        p.from_iterable([{"v": 1.0}, {"v": -1.0}]).filter(_refuse, name="calibrated").sink(ms.sinks.collect())
        return p

    with pytest.raises(OperatorError, match="calibrated.*ValueError: sensor 7") as local:
        job().run(verbose=False)
    with Client(cluster.address(home), timeout=120) as client, \
            pytest.raises(OperatorError, match="calibrated.*ValueError: sensor 7") as remote:
        client.submit(job())
    assert remote.value.operator == local.value.operator == "calibrated"


def _quit_quietly(batch):
    if (batch["v"] < 0).any():  # a library that calls exit(0) on bad input: the host ends cleanly, having said nothing
        os._exit(0)
    return batch["v"] > 0


def test_a_host_that_exits_cleanly_without_finishing_fails_its_job_and_says_so(home):
    """Exit code 0 is not "done": a host that exits before it has reported its end fails its virtual node (once
    its last words have had time to arrive), and the job ends failed rather than waiting for it forever."""
    import microstream as ms

    p = ms.Pipeline("quits")
    p.from_iterable([{"v": 1.0}, {"v": -1.0}]).filter(_quit_quietly, name="strict").sink(ms.sinks.collect())
    with Client(cluster.address(home), timeout=120) as client, pytest.raises(ClusterError) as failed:
        client.submit(p)
    assert "exited with code 0" in str(failed.value), failed.value
