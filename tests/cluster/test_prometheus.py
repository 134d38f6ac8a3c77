"""A real Prometheus server (the Debian `prometheus` binary) scraping an embedded cluster of real processes:
the coordinator as a static target, the agents through file-based service discovery, both every second;
the running job's metrics are then found through Prometheus's HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from microstream.cluster.prometheus import ensure_prometheus, file_sd, scrape_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a real Prometheus server (apt-get) and a cluster of real processes

JOB = """
import microstream as ms
p = ms.Pipeline("scraped")
p.synthetic(count=10**9, sensors=20, rate=400, speed=1.0, at="node2").key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.collect())
p.run()
"""


@pytest.fixture(scope="module")
def prometheus():
    try:
        return ensure_prometheus(progress=lambda text: print(text, file=sys.stderr))
    except RuntimeError as exc:  # pragma: no cover - only where apt-get cannot install it
        pytest.skip(f"PROMETHEUS NOT AVAILABLE, the real-server test did not run: {exc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def _until(what: str, fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except OSError as exc:  # not listening yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_real_prometheus_scrapes_coordinator_and_agents(prometheus, tmp_path):
    home = tmp_path / "home"
    cluster.up(3, home, progress=lambda _: None)
    server = None
    try:
        job_script = tmp_path / "job.py"
        job_script.write_text(textwrap.dedent(JOB))
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(job_script),
                            "--home", str(home)], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        with Client(cluster.address(home)) as client:
            status = _until("the job to run", lambda: (s := client.status())["jobs"][job]["state"] == "running" and s)

        # the scrape configuration of docs/prometheus.md, with this cluster's ports
        agents = {name: f"127.0.0.1:{a['metrics_port']}" for name, a in status["agents"].items()}
        assert len(agents) == 3 and all(a["metrics_port"] for a in status["agents"].values())
        (tmp_path / "agents.json").write_text(file_sd(agents))
        config = tmp_path / "prometheus.yml"
        config.write_text(scrape_config(f"127.0.0.1:{status['metrics_port']}", interval="1s",
                                        agents_file=str(tmp_path / "agents.json"), coordinator_interval="1s"))
        promtool = Path(prometheus).with_name("promtool")
        if promtool.exists():
            check = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with open(tmp_path / "prometheus.log", "w") as log:  # the server keeps its own descriptor
            args = [f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
            server = subprocess.Popen([prometheus, *args], stdout=log, stderr=subprocess.STDOUT)
        _until("prometheus to be ready", lambda: server.poll() is None and
               urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200)

        def all_up():
            active = _api(base, "/api/v1/targets", state="active")["activeTargets"]
            return len(active) == 4 and all(t["health"] == "up" for t in active) and active
        targets = _until("4 healthy targets", all_up)
        by_job = {}
        for t in targets:
            by_job.setdefault(t["labels"]["job"], []).append(t)
        assert len(by_job["microstream-coordinator"]) == 1
        assert sorted(t["labels"]["microstream_agent"] for t in by_job["microstream-agents"]) == sorted(agents)

        # per-job metrics come from the agents whose hosts run the operators, labelled with the microstream
        # job (honor_labels) and the agent (the target label of the file_sd file)
        query = f'microstream_records_out_total{{job="{job}"}}'
        first = _until("the job's records", lambda: (res := _api(base, "/api/v1/query", query=query)["result"]) and
                       {"synthetic", "window_aggregate"} <= {s["metric"]["operator"] for s in res} and res)
        assert all(s["metric"]["job"] == job and s["metric"]["microstream_agent"] in agents for s in first)
        source = [s for s in first if s["metric"]["operator"] == "synthetic"]
        assert [s["metric"]["microstream_agent"] for s in source] == ["node2"]  # at="node2"
        total = float(source[0]["value"][1])
        _until("the counter to grow", lambda: [
            s for s in _api(base, "/api/v1/query", query=query)["result"]
            if s["metric"]["operator"] == "synthetic" and float(s["value"][1]) > total > 0])
        windows_in = _until("records into the windows", lambda: [s for s in _api(base, "/api/v1/query", query=(
            f'sum(microstream_records_in_total{{job="{job}",operator="window_aggregate"}})'))["result"]
            if float(s["value"][1]) > 0])
        assert float(windows_in[0]["value"][1]) <= float(source[0]["value"][1]) + 400 * 5
        # the source emits 400 records/s in real time (hosts report every second or so: allow for that)
        _until("a records rate of about 400/s", lambda: [s for s in _api(base, "/api/v1/query", query=(
            f'sum(rate(microstream_records_out_total{{job="{job}",operator="synthetic"}}[8s]))'))["result"]
            if 250 < float(s["value"][1]) < 600])
        cpu = _until("host CPU series from agents", lambda: _api(
            base, "/api/v1/query", query='sum by (microstream_agent) (microstream_host_cpu_seconds_total)')["result"])
        assert {s["metric"]["microstream_agent"] for s in cpu} <= set(agents)

        # the coordinator: liveness of every node and job counts
        coordinator = f"127.0.0.1:{status['metrics_port']}"
        up = _api(base, "/api/v1/query", query=f'microstream_node_up{{instance="{coordinator}"}}')["result"]
        assert {s["metric"]["node"]: s["value"][1] for s in up} == {"node1": "1", "node2": "1", "node3": "1"}
        running = _api(base, "/api/v1/query", query='microstream_jobs{state="running"}')["result"]
        assert [(s["metric"]["instance"], s["value"][1]) for s in running] == [(coordinator, "1")]

        subprocess.run([sys.executable, "-m", "microstream.cli", "stop", job, "--home", str(home)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.down(home, progress=lambda _: None)


def test_documented_scrape_config_is_valid(prometheus, tmp_path):
    promtool = Path(prometheus).with_name("promtool")
    if not promtool.exists():  # pragma: no cover - the Debian package ships it
        pytest.skip("PROMTOOL NOT AVAILABLE next to prometheus")
    r = subprocess.run([str(promtool), "check", "config", str(ROOT / "docs" / "prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    groups = json.loads((ROOT / "docs" / "microstream-agents.json").read_text())
    assert all(g["targets"] and "microstream_agent" in g["labels"] for g in groups)
    static = tmp_path / "static.yml"
    static.write_text(scrape_config("10.0.0.1:9464", agents=["10.0.0.2:9465", "10.0.0.3:9465"]))
    r = subprocess.run([str(promtool), "check", "config", str(static)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(ValueError, match="needs agents"):
        scrape_config("10.0.0.1:9464")
