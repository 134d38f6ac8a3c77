"""Store and forward at the edge: a polled sensor reads into a local log on its own node, so neither a cut link nor
the death of its host loses a reading.

- Network namespaces (the cluster of tests/cluster/test_stalls.py: agents ns1 and ns2, the data plane on a direct
  veth link): the sensor on ns1 is cut off from the windows and sinks on ns2 for several seconds; it goes on
  reading, and after the heal every reading arrives, with the event time it was read at, and the windows are
  what the readings imply.
- An embedded cluster: kill -9 of the sensor's host; the job recovers from its last checkpoint on the same node and
  replays the readings from the log: every reading exactly once.

The sensor reads a value that is a function of the time it is read (`_value`), so each record shows that its event
time is its reading's, not its forwarding's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from microstream.cluster import embedded
from microstream.cluster.client import Client
from tests.cluster.test_netns import _can_make_namespaces, _ip
from tests.cluster.test_stalls import (  # noqa: F401 - fixtures
    ROOT,
    cluster,
    data_link,
    network,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INTERVAL_MS = 50

JOB = """
import time
import microstream as ms

def sensor():
    t = time.time_ns()
    return {{"time": t, "room": "r1", "v": float((t // 1_000_000) % 9973)}}

p = ms.Pipeline("edge", checkpoint_every="{every}")
src = p.poll(sensor, every="{interval}ms", limit={limit}, name="sensor", at="{at}")
src.sink(ms.sinks.jsonl("{raw}"), at="{far}")
win = src.key_by("room").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), total=ms.agg.sum("v"))
win.with_parallelism(2).sink(ms.sinks.jsonl("{windows}"), at="{far}")
p.run()
"""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ns(text: str) -> int:
    """An ISO time a file sink wrote, back to int64 ns."""
    import numpy as np

    return int(np.datetime64(text.rstrip("Z"), "ns").astype(np.int64))


def _check_readings(raw: Path, windows: Path, limit: int) -> list[int]:
    """Every reading exactly once, each with the value of its own reading time; the windows are what the readings
    imply. Returns the readings' times (ns)."""
    rows = _records(raw)
    times = [_ns(r["time"]) if isinstance(r["time"], str) else int(r["time"]) for r in rows]
    assert len(rows) == limit, f"{len(rows)} readings arrived of {limit} made"
    assert len(set(times)) == limit and times == sorted(times)          # no duplicates, in reading order
    assert all(r["v"] == float((t // 1_000_000) % 9973) for r, t in zip(rows, times, strict=True))
    implied: dict[int, list[float]] = defaultdict(list)
    for r, t in zip(rows, times, strict=True):
        implied[t // 1_000_000_000].append(r["v"])
    got = {_ns(w["window_start"]) // 1_000_000_000 if isinstance(w["window_start"], str)
           else int(w["window_start"]) // 1_000_000_000: (w["n"], w["total"]) for w in _records(windows)}
    assert got == {s: (len(v), sum(v)) for s, v in implied.items()}
    return times


def _job(client: Client, job: str) -> dict:
    return client.status(job)["jobs"][job]


def _source_log(client: Client, job: str) -> dict:
    """The sensor's log figures from its host's last report (status)."""
    for vnode in _job(client, job)["vnodes"].values():
        for op in (vnode.get("operators") or {}).values():
            if isinstance(op, dict) and op.get("source_log"):
                return op["source_log"]
    return {}


@pytest.mark.skipif(_can_make_namespaces() is not None, reason=str(_can_make_namespaces()))
def test_a_sensor_cut_off_keeps_reading_and_everything_it_read_arrives_after_the_heal(cluster, tmp_path):  # noqa: F811
    raw, windows = tmp_path / "raw.jsonl", tmp_path / "windows.jsonl"
    limit = 240  # 12 s of readings
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(every="2s", interval=INTERVAL_MS, limit=limit, at="ns1", far="ns2",
                                                 raw=raw, windows=windows)))
    submit = subprocess.Popen([sys.executable, "-m", "microstream.cli", "submit", str(script), "--coordinator",
                               cluster["endpoint"], "--home", str(cluster["home"])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert submit.stdout is not None
    job = submit.stdout.readline().strip()
    ns1, dev, _ = cluster["links"]["ns1"]
    try:
        with Client(cluster["addr"], timeout=30) as client:
            wait_for(lambda: _job(client, job)["state"] == "running" and _source_log(client, job).get("end", 0) > 20,
                     60, "the sensor to be read")
            _ip("-n", ns1, "link", "set", dev, "down")
            try:
                at_cut = _source_log(client, job)
                # the channel stalls and the sensor goes on reading into its log: 60 readings (3 s) pile up unsent
                log = wait_for(lambda: (s := _source_log(client, job)).get("unsent", 0) >= 60
                               and s.get("end", 0) >= at_cut.get("end", 0) + 60 and s, 60,
                               "readings to pile up in the log while the link is down")
                assert log["dropped"] == 0 and log["bytes"] > 0
            finally:
                _ip("-n", ns1, "link", "set", dev, "up")
        out, err = submit.communicate(timeout=240)
        assert submit.returncode == 0, err
    finally:
        if submit.poll() is None:
            submit.kill()
    _check_readings(raw, windows, limit)


def test_kill_9_of_the_sensors_host_replays_its_log_from_the_checkpoint_exactly_once(tmp_path):
    home = tmp_path / "home"
    embedded.up(2, home, progress=lambda _: None, coordinator_args=["--agent-timeout", "4"])
    raw, windows = tmp_path / "raw.jsonl", tmp_path / "windows.jsonl"
    limit = 240  # 12 s of readings
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(every="5s", interval=INTERVAL_MS, limit=limit, at="node1",
                                                 far="node2", raw=raw, windows=windows)))
    try:
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(script), "--home",
                            str(home)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        with Client(embedded.address(home), timeout=30) as client:
            status = wait_for(lambda: (s := _job(client, job))["state"] == "running" and s["checkpoints"] and s, 60,
                              "a checkpoint")
            after_checkpoint = time.time_ns()  # readings from now on come after the checkpoint a recovery uses
            # the log's figures come with the host's reports (once a second; on a loaded machine several may
            # arrive late at once), so 40 more readings than the last report alone can be readings made before
            # `after_checkpoint`: also let 2 s of readings (40 at 50 ms) be made after it
            logged = _source_log(client, job).get("end", 0)
            wait_for(lambda: _source_log(client, job).get("end", 0) >= logged + 40
                     and time.time_ns() - after_checkpoint >= 2_000_000_000, 30, "40 more readings")
            assert len(_job(client, job)["checkpoints"]) == len(status["checkpoints"])  # still the same one
            sensor = next(v for v in status["vnodes"].values() if any(t.startswith("sensor") for t in v["tasks"]))
            assert sensor["agent"] == "node1"
            killed = time.time_ns()
            os.kill(sensor["pid"], signal.SIGKILL)
            recovered = wait_for(lambda: (s := _job(client, job))["recoveries"] and s, 60, "a recovery")
            assert recovered["recoveries"][0]["checkpoint"] is not None
            final = wait_for(lambda: (s := _job(client, job))["state"] in ("finished", "failed") and s, 120,
                             "the job to end")
        assert final["state"] == "finished", final.get("reason")
        again = next(v for v in final["vnodes"].values() if any(t.startswith("sensor") for t in v["tasks"]))
        assert again["agent"] == "node1"  # pinned: recovered where its log is
        times = _check_readings(raw, windows, limit)
        # what the killed host read after the checkpoint was replayed from its log (read afresh, it would be missing)
        assert sum(after_checkpoint <= t < killed for t in times) >= 15
    finally:
        embedded.down(home, progress=lambda _: None)
