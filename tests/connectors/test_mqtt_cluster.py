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

import pytest

import microstream as ms
from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.connectors.conftest import connect, prime

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a broker and a cluster of real processes, a move mid-stream
T0 = 1_700_000_000
N = 6000

JOB = """
import microstream as ms

{build}

p = ms.Pipeline("mqtt_moving")
src = p.read_mqtt("aq/+/readings", "{broker}", schema={{"pm25": "float", "i": "int"}}, topic_columns=("station",),
                  client_id="{client_id}", limit={n}, max_delay="1h", batch_size=16, name="mqtt_in")
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


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("mqtt-cluster")
    cluster.up(2, root, progress=lambda _: None)
    yield root
    cluster.down(root, progress=lambda _: None)


def run_moving(broker, tmp_path, home, move, client_id: str) -> tuple[dict, dict, int]:
    """Run the job on the cluster while a publisher publishes N readings; `move(client, job, vnode, here, there)`
    moves the source's virtual node once a quarter is published. Checks the output against a local run."""
    local = tmp_path / "local"
    remote = tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    # the reference: the same readings, from memory, on the local runtime
    p = ms.Pipeline("reference")
    recs = [{"time": round((T0 + i * 0.05) * 1e9), "station": f"st{i % 3}", "pm25": (i % 50) * 0.5, "i": i}
            for i in range(N)]
    build(p, p.from_iterable(recs, time="time", max_delay="1h"), local)
    p.run()

    script = tmp_path / "job.py"  # the same operators (build) on the MQTT source
    script.write_text(textwrap.dedent(JOB).format(build=inspect.getsource(build), broker=broker.url, n=N, out=remote,
                                                  client_id=client_id))
    prime(broker, client_id, "aq/+/readings")  # messages published before the source subscribes wait for it
    r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(script),
                        "--home", str(home)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    published = 0
    moved = threading.Event()

    def publisher():  # steadily while the move runs; the last readings only once it is over
        nonlocal published
        client = connect(broker, f"{client_id}-publisher")
        infos = []
        for i in range(N):
            if i == N - 500:
                moved.wait(120)
            infos.append(client.publish(f"aq/st{i % 3}/readings", json.dumps(reading(i)), qos=1))
            published = i + 1
            time.sleep(1 / 3000)
        for info in infos:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=publisher)
    with Client(cluster.address(home), timeout=60) as client:
        deadline = time.monotonic() + 60
        status = client.status()["jobs"][job]
        while status["state"] == "deploying" and time.monotonic() < deadline:
            time.sleep(0.05)
            status = client.status()["jobs"][job]
        assert status["state"] == "running", status
        thread.start()
        while published < N // 4 and thread.is_alive():
            time.sleep(0.01)
        vnode, info = next((v, i) for v, i in status["vnodes"].items() if "mqtt_in" in i["tasks"])
        there = next(a for a in ("node1", "node2") if a != info["agent"])
        at_request = published
        report = move(client, job, vnode, info["agent"], there)
        at_move = published
        moved.set()
        thread.join(60)
        deadline = time.monotonic() + 60
        while status["state"] in ("deploying", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            status = client.status()["jobs"][job]
    assert status["state"] == "finished", status
    assert status["vnodes"][vnode]["agent"] == there, status["vnodes"]
    assert at_request < at_move < N, "the move must land mid-stream, with readings published during and after it"
    got = [json.loads(x)["i"] for x in lines(remote / "records.jsonl")]
    assert sorted(got) == list(range(N)), "every published reading exactly once"
    assert lines(remote / "windows.jsonl") == lines(local / "windows.jsonl")
    assert len(lines(local / "windows.jsonl")) > 30
    print(f"moved between {at_request} and {at_move} of {N} published: {report}")
    return status, report, at_move


def test_migrating_the_mqtt_source_loses_and_repeats_nothing(broker, tmp_path, home):
    def migrate(client, job, vnode, here, there):
        return client.migrate(job, vnode, there)

    status, report, _ = run_moving(broker, tmp_path, home, migrate, "cluster-migrate")
    assert len(status["migrations"]) == 1 and report["mode"] == "migrate" and report["downtime_s"] is not None


def test_save_and_restore_the_mqtt_source_elsewhere(broker, tmp_path, home):
    """Saved, the source is gone from the broker for a while (its session queues what is published); restored on
    the other agent, it resumes the session and misses nothing."""
    def save_restore(client, job, vnode, here, there):
        header, blob = client.save(job, vnode)
        assert blob and client.status()["jobs"][job]["state"] == "suspended"
        time.sleep(0.5)  # published meanwhile: queued for the session
        return {**header, **client.restore(job, vnode, blob, to=there)}

    run_moving(broker, tmp_path, home, save_restore, "cluster-save")
