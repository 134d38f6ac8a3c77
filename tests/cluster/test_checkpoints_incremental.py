"""Incremental checkpoints on an embedded cluster: a keyed `stateful_map` holds 8 MB of state of which, once every
key has been seen, only a few keys change. After the first checkpoint, the hosts send only the chunks that changed
(a small fraction of the state's bytes), and the coordinator sends the agent that keeps the checkpoint's replica
only the chunks it lacks; the coordinator's store keeps each chunk once and deletes those no checkpoint refers to
any more. A host killed with SIGKILL after several incremental checkpoints, or a coordinator
killed and restarted in between, changes nothing in the output: it equals the local run's; the recovered hosts'
first checkpoint is incremental as well (against the one they were restored from)."""

from __future__ import annotations

import os
import signal
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from microstream.runtime.checkpoint_chunks import Manifest
from tests.cluster.test_cluster import cli
from tests.cluster.test_replicas import _restored_without_state
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEYS, SLOTS, HOT = 4_000, 256, 8   # 4,000 keys x 2 KB of state = 8 MB; then only 8 keys change
JOB = """
import numba
import numpy as np
import microstream as ms

FILL = 1_700_000_000 * 10**9 + 2 * 10**9   # the first 2 s of event time: every key once, then only the hot ones

@numba.njit(cache=True)
def acc(state, t, x):
    state[(t // 1_000_000) % {slots}] += x
    return state.sum()

p = ms.Pipeline("incremental", checkpoint_every="1s", restarts=3)
(p.synthetic(count=24_000, sensors={keys}, rate=2000, seed=3, speed={speed}, batch_size=200)
 .with_columns(k=lambda b: np.where(b["time"] < FILL, b["sensor"], b["sensor"] % {hot}))
 .key_by("k").stateful_map(acc, "value", out="s", state_size={slots})
 .filter(lambda b: b["k"] < {hot})
 .sink(ms.sinks.jsonl("{out}")))
p.run()
"""


def _script(path: Path, out: Path, speed: float | None) -> Path:
    path.write_text(textwrap.dedent(JOB.format(keys=KEYS, slots=SLOTS, hot=HOT, speed=speed, out=out)))
    return path


def _rows(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("local")
    assert cli("run", str(_script(tmp / "local.py", tmp / "local.jsonl", None))).returncode == 0
    rows = _rows(tmp / "local.jsonl")
    assert len(rows) > 20_000
    return rows


def _stored(home: Path, job: str) -> tuple[set[str], set[str]]:
    """The chunk keys in the coordinator's store for `job`, and those its stored checkpoint's manifests name."""
    db = sqlite3.connect(f"file:{cluster.state_dir(home) / 'coordinator.db'}?mode=ro", uri=True)
    try:
        stored = {key for (key,) in db.execute("SELECT key FROM chunks WHERE job=?", (job,))}
        named = {key for (blob,) in db.execute("SELECT blob FROM snapshots WHERE job=?", (job,))
                 for key in Manifest.from_bytes(blob).all_keys()}
    finally:
        db.close()
    return stored, named


def _incremental(status: dict) -> list[dict]:
    """The checkpoints status shows (the last two), once both were taken well after the state was filled (the
    source's event time is past FILL 2 s in; checkpoints come every second): [] before."""
    shown = status["checkpoints"]
    return shown if len(shown) >= 2 and min(c["id"] for c in shown) >= 5 else []


@pytest.fixture
def running(tmp_path) -> Iterator[tuple[Path, dict, Path]]:
    """An embedded 2-agent cluster (its home and state) and the cluster run's output file; down afterwards."""
    home = tmp_path / "home"
    state = cluster.up(2, home, progress=lambda _: None, coordinator_args=["--agent-timeout", "4"])
    try:
        yield home, state, tmp_path / "cluster.jsonl"
    finally:
        cluster.down(home, progress=lambda _: None)


def _submit(home: Path, out: Path, ready: Callable[[dict], Any], what: str) -> tuple[str, dict]:
    """Submit the job (real time) and wait until its status satisfies `ready`: its id and that status."""
    r = cli("submit", "--detach", str(_script(out.with_name("job.py"), out, 1.0)), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=30) as client:
        return job, wait_for(lambda: ready(s := client.status()["jobs"][job]) and s, 60, what)


@pytest.mark.parametrize("restart_coordinator", [False, True], ids=["host killed", "coordinator restarted too"])
def test_only_changed_chunks_travel_and_a_killed_host_recovers_exactly(restart_coordinator, expected, running):
    home, state, out = running
    job, status = _submit(home, out, _incremental, "incremental checkpoints after the state was filled")
    for figures in _incremental(status):  # every key's state is in it; a few keys' chunks travelled
        assert figures["bytes"] > KEYS * SLOTS * 8, figures
        assert figures["sent_bytes"] < 0.05 * figures["bytes"], figures
    # and to the agent that keeps its replica, only the chunks it lacked (the older one: its replica is packed)
    assert status["checkpoints"][0]["replica_bytes"] < 0.05 * status["checkpoints"][0]["bytes"], status
    stored, named = _stored(home, job)
    assert stored == named and len(stored) < 1.2 * KEYS * SLOTS * 8 / (16 << 10)  # retention deleted the rest
    if restart_coordinator:
        os.kill(state["pids"][0], signal.SIGKILL)
        cluster.restart_coordinator(home, progress=lambda _: None)
    with Client(cluster.address(home), timeout=30) as client:
        if restart_coordinator:  # it joins the hosts' next changes with the checkpoint it read back
            last = status["checkpoints"][-1]["id"]
            status = wait_for(lambda: (s := client.status()["jobs"][job])["state"] == "running"
                              and [c for c in s["checkpoints"] if c["id"] > last] and s, 60,
                              "a checkpoint after the restart")
            after = [c for c in status["checkpoints"] if c["id"] > last]
            assert after[-1]["sent_bytes"] < 0.05 * after[-1]["bytes"], after
        stateful = next(v for v in status["vnodes"].values()
                        if any(t.startswith("stateful_map") for t in v["tasks"]))
        os.kill(stateful["pid"], signal.SIGKILL)
        # the restored hosts hash the checkpoint they started from: their first checkpoint is incremental too
        status = wait_for(lambda: ((s := client.status()["jobs"][job])["state"] == "finished"
                                   or any(c["epoch"] > 0 for c in s["checkpoints"])) and s, 60,
                          "a checkpoint after the recovery")
        recovered = [c for c in status["checkpoints"] if c["epoch"] > 0]
        assert recovered and recovered[0]["sent_bytes"] < 0.05 * recovered[0]["bytes"], status["checkpoints"]
        final = wait_for(lambda: (s := client.status()["jobs"][job])["state"] in ("finished", "failed") and s,
                         120, "the job to end")
    assert final["state"] == "finished", final["reason"]
    assert final["restarts"] >= 1 and final["recoveries"][0]["checkpoint"] is not None, final["recoveries"]
    assert _rows(out) == expected  # restored from chunks joined over several checkpoints: exactly once
    wait_for(lambda: _stored(home, job) == (set(), set()), 15, "a job that ended to leave no chunk behind")


def test_a_replica_sent_as_changed_chunks_restores_the_job_after_the_coordinator_and_its_disk_are_lost(expected,
                                                                                                     running):
    """The coordinator (its state directory deleted) and the stateful host die together: the job is restored from
    the replica an agent put together from the chunks it was sent over several checkpoints, and recovers from it."""
    home, state, out = running
    job, status = _submit(home, out, lambda s: s["state"] == "running" and _incremental(s)
                          and s["checkpoints"][0].get("replicas"), "incremental replicas")
    first = status["checkpoints"][0]
    assert first["replica_bytes"] < 0.05 * first["bytes"], first
    stateful = next(v for v in status["vnodes"].values() if any(t.startswith("stateful_map") for t in v["tasks"]))
    os.kill(state["pids"][0], signal.SIGKILL)
    os.kill(stateful["pid"], signal.SIGKILL)
    final = _restored_without_state(home, state, job)
    assert final["state"] == "finished", final["reason"]
    assert final["restored_from"]["checkpoint"] >= first["id"], final["restored_from"]
    assert final["recoveries"][0]["checkpoint"] == final["restored_from"]["checkpoint"], final["recoveries"]
    assert _rows(out) == expected
