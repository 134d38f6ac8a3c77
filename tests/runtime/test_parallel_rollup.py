"""A keyed window after a *parallel* window (room windows in 3 tasks, then a per-floor rollup) on a cluster:
the rollup's input has three producers, and each batch carries its producer's own watermarks. The host holds
them back to the slowest other producer (as `union` does across inputs), so a floor window fires only once
every room window for it has arrived, and the floors count what the local run counts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a cluster of real processes

JOB = """
import json
import numpy as np
import microstream as ms
S = 10**9
p = ms.Pipeline("rollup")
n = 24_000
t = np.repeat(np.arange(n // 8, dtype=np.int64) * 60 * S, 8)
room = np.tile(np.array([f"F{{i % 4}}.{{i}}" for i in range(8)]), n // 8)
src = p.from_arrays({{"t": t, "room": room, "v": np.ones(len(t))}}, time="t")
rooms = src.key_by("room").window(ms.tumbling(minutes=10)).aggregate(n=ms.agg.count()).with_parallelism(3)
floors = rooms.with_columns(floor=lambda b: np.char.partition(b["room"].astype(str), ".")[:, 0]).key_by(
    "floor").window(ms.tumbling(minutes=10)).aggregate(rooms=ms.agg.count(), n=ms.agg.sum("n"))
out = ms.sinks.collect()
floors.sink(out)
p.run()
with open("{out}", "w") as f:
    json.dump(sorted((r["floor"], r["window_start"], r["rooms"], r["n"]) for r in out.records()), f)
"""



def test_rollup_after_parallel_windows_matches_local_run(tmp_path):
    results = {}
    home = tmp_path / "home"
    cluster.up(3, home, progress=lambda _: None)
    try:
        for how in ("run", "submit"):
            job = tmp_path / f"{how}.py"
            job.write_text(textwrap.dedent(JOB.format(out=tmp_path / f"{how}.json")))
            args = [sys.executable, "-m", "microstream.cli", how, str(job)] + (["--home", str(home)] if how == "submit"
                                                                              else [])
            r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert r.returncode == 0, r.stderr
            results[how] = json.loads((tmp_path / f"{how}.json").read_text())
    finally:
        cluster.down(home, progress=lambda _: None)
    local = results["run"]
    assert len(local) == 4 * 300 and all(rooms == 2 and n == 20 for _, _, rooms, n in local)
    assert results["submit"] == local
