"""Migration downtime (issue 4): how long a virtual node's inputs are held when it moves between two
agents — from the barrier until the new host has processed its first record — for operator state
of about 1 MB, 10 MB and 100 MB, p50/p99 over repeated moves, next to the job's own batch interval
(the baseline a user notices). Real processes on an embedded cluster; the state is per-key
`stateful_map` state (keys × 128 float64).

    python bench/migration.py [--moves N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402

import microstream as ms  # noqa: E402
from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client  # noqa: E402

STATE_FLOATS = 128


@numba.njit
def remember(state, t, x):
    """Keeps a ring of the key's last 128 values: 1 KB of state per key."""
    i = int(state[0]) % (len(state) - 1) + 1
    state[i] = x
    state[0] += 1
    return x


def job(keys: int, seconds: float) -> ms.Pipeline:
    rate = max(20_000.0, keys / 1.0)  # every key seen within the first second
    p = ms.Pipeline(f"state-{keys}")
    src = p.synthetic(count=int(rate * seconds), sensors=keys, rate=rate, speed=1.0, batch_size=2000)
    src.key_by("sensor").stateful_map(remember, "value", out="v", state_size=STATE_FLOATS).with_parallelism(2) \
        .select("sensor").sink(ms.sinks.callback(lambda b: None))
    return p


def measure(client: Client, keys: int, moves: int) -> dict:
    pipeline = job(keys, seconds=8.0 + moves * 2.0)
    job_id, _ = client.submit(pipeline, wait=False)
    deadline = time.monotonic() + 60
    while client.status()["jobs"][job_id]["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # let every key arrive
    status = client.status()["jobs"][job_id]
    vnode = next(v for v, info in status["vnodes"].items() if "stateful_map[0]" in info["tasks"])
    records = []
    for _ in range(moves):
        here = client.status()["jobs"][job_id]["vnodes"][vnode]["agent"]
        there = "node2" if here == "node1" else "node1"
        records.append(client.migrate(job_id, vnode, there))
        time.sleep(0.3)
    client.stop(job_id)
    down = [r["downtime_s"] * 1000 for r in records if r.get("downtime_s") is not None]
    return {"keys": keys, "state_bytes": int(statistics.median(r["state_bytes"] for r in records)),
            "moves": len(records), "downtime_ms": down,
            "p50_ms": float(np.percentile(down, 50)), "p99_ms": float(np.percentile(down, 99)),
            "align_and_snapshot_ms_p50": 1000 * statistics.median(r.get("align_and_snapshot_s") or 0 for r in records),
            "total_s_median": statistics.median(r["total_s"] for r in records)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=6)
    args = ap.parse_args()
    # two parallel tasks share the keys: per virtual node about 1, 10 and 100 MB
    sizes = [(2_000, args.moves), (20_000, args.moves), (200_000, max(3, args.moves // 2))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        cluster.up(2, home, progress=lambda t: print(t, file=sys.stderr),
                   coordinator_args=["--no-auto-place"])
        try:
            with Client(cluster.address(home), timeout=300) as client:
                for keys, moves in sizes:
                    results.append(measure(client, keys, moves))
                    print(f"  {results[-1]['state_bytes'] / 1e6:.1f} MB: p50 {results[-1]['p50_ms']:.0f} ms",
                          file=sys.stderr)
        finally:
            cluster.down(home, progress=lambda t: print(t, file=sys.stderr))
    base = results[0]
    rows = [("state", "moves", "downtime p50", "p99", "p50 vs 1 MB", "of which align+snapshot", "whole move")]
    for r in results:
        rows.append((f"{r['state_bytes'] / 1e6:.1f} MB", str(r["moves"]), f"{r['p50_ms']:.0f} ms",
                     f"{r['p99_ms']:.0f} ms", f"{r['p50_ms'] / base['p50_ms']:.1f}x",
                     f"{r['align_and_snapshot_ms_p50']:.0f} ms", f"{r['total_s_median']:.2f} s"))
    print("\nmigration downtime between two agents (inputs held from the barrier to the first record processed "
          "on the new host):")
    print(table(rows))
    print("target: p50 < 50 ms at 1 MB:", "met" if base["p50_ms"] < 50 else "NOT met")
    path = write_json("migration", {"sizes": results, "target_p50_ms_at_1mb": 50})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
