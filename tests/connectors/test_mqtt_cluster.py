"""An MQTT source on an embedded cluster of real processes, migrated to another agent mid-stream while a publisher
publishes: with QoS 1 and its persistent session, the job's output equals the same data computed locally."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import microstream as ms
from microstream.runtime import cluster
from microstream.runtime.client import Client
from tests.connectors.conftest import connect, prime

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
N = 6000

JOB = """
import microstream as ms

{build}

p = ms.Pipeline("mqtt_moving")
src = p.read_mqtt("aq/+/readings", "{broker}", schema={{"pm25": "float", "i": "int"}}, topic_columns=("station",),
                  client_id="cluster-src", limit={n}, max_delay="1h", batch_size=16, name="mqtt_in")
build(p, src, "{out}")
p.run()
"""


def build(p, src, out):
    win = src.key_by("station").window(ms.tumbling(seconds=10)).aggregate(
        n=ms.agg.count(), mean=ms.agg.mean("pm25"), total=ms.agg.sum("i"))
    win.sink(ms.sinks.jsonl(f"{out}/windows.jsonl"))
    src.select("station", "i").sink(ms.sinks.jsonl(f"{out}/records.jsonl"))


def reading(i: int) -> dict:
    return {"time": T0 + i * 0.05, "pm25": (i % 50) * 0.5, "i": i}


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def test_migrating_the_mqtt_source_loses_and_repeats_nothing(broker, tmp_path):
    local = tmp_path / "local"
    remote = tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    # the reference: the same readings, from memory, on the local runtime
    p = ms.Pipeline("reference")
    recs = [{"time": round((T0 + i * 0.05) * 1e9), "station": f"st{i % 3}", "pm25": (i % 50) * 0.5, "i": i}
            for i in range(N)]
    build(p, p.from_iterable(recs, time="time", max_delay=3600 * 10**9), local)
    p.run()

    script = tmp_path / "job.py"  # the same operators (build) on the MQTT source
    script.write_text(textwrap.dedent(JOB).format(build=inspect.getsource(build), broker=broker.url, n=N, out=remote))
    prime(broker, "cluster-src", "aq/+/readings")  # messages published before the source subscribes wait for it
    home = tmp_path / "home"
    cluster.up(2, home, progress=lambda _: None)
    try:
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(script),
                            "--home", str(home)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        published = 0

        def publisher():
            nonlocal published
            client = connect(broker, "cluster-publisher")
            infos = []
            for i in range(N):
                infos.append(client.publish(f"aq/st{i % 3}/readings", json.dumps(reading(i)), qos=1))
                published = i + 1
                time.sleep(1 / 3000)
            for info in infos:
                info.wait_for_publish(30)
            client.disconnect()
            client.loop_stop()

        with Client(cluster.address(home), timeout=60) as client:
            deadline = time.monotonic() + 60
            status = client.status()["jobs"][job]
            while status["state"] == "deploying" and time.monotonic() < deadline:
                time.sleep(0.05)
                status = client.status()["jobs"][job]
            assert status["state"] == "running", status
            thread = threading.Thread(target=publisher)
            thread.start()
            while published < N // 4 and thread.is_alive():
                time.sleep(0.01)
            vnode, info = next((v, i) for v, i in status["vnodes"].items() if "mqtt_in" in i["tasks"])
            there = next(a for a in ("node1", "node2") if a != info["agent"])
            moved = client.migrate(job, vnode, there)
            at_move = published
            thread.join(60)
            deadline = time.monotonic() + 60
            while status["state"] in ("deploying", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
                status = client.status()["jobs"][job]
    finally:
        cluster.down(home, progress=lambda _: None)
    assert status["state"] == "finished", status
    assert status["vnodes"][vnode]["agent"] == there and len(status["migrations"]) == 1, status["migrations"]
    assert at_move < N, "the migration must land mid-stream"
    got = [json.loads(x)["i"] for x in lines(remote / "records.jsonl")]
    assert sorted(got) == list(range(N)), "every published reading exactly once"
    assert lines(remote / "windows.jsonl") == lines(local / "windows.jsonl")
    assert len(lines(local / "windows.jsonl")) > 30
    assert moved  # the coordinator's report of the move (downtime, state size)
    print(f"migrated after {at_move} of {N} published: {moved}")
