"""A virtual node with tens of MB of state moves mid-stream with its state sent directly from the old host to the
new one (pre-copy, then only the delta at the barrier: runtime/statexfer.py): the output equals a local run's, and
the coordinator relayed a ticket, not the state. With MICROSTREAM_STATE_TRANSFER=coordinator the old path (the
whole snapshot through the coordinator) still works and says so."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.helpers import run_cli as cli

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a cluster of real processes

KEYS = 16_000  # x 513 float64 of state per key, over two parallel tasks: 33 MB in each virtual node
JOB = """
import numba
import numpy as np
import microstream as ms


@numba.njit
def ring_sum(state, t, x):
    # a ring of the key's last 512 values; the output is their sum, so any byte of state lost or stale shows
    i = int(state[0]) % (len(state) - 1) + 1
    state[i] = x
    state[0] += 1
    return np.sum(state[1:])


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


def _cluster(root: Path, transfer: str | None):
    before = os.environ.get("MICROSTREAM_STATE_TRANSFER")
    if transfer is not None:
        os.environ["MICROSTREAM_STATE_TRANSFER"] = transfer  # the coordinator's process inherits it
    try:
        cluster.up(2, root, progress=lambda _: None, coordinator_args=["--no-auto-place"])
    finally:
        if before is None:
            os.environ.pop("MICROSTREAM_STATE_TRANSFER", None)
        else:
            os.environ["MICROSTREAM_STATE_TRANSFER"] = before


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
    _cluster(root, "direct")
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
