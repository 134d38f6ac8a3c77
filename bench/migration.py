"""Migration downtime (issue 4; issue 15 item 4): how long a virtual node's inputs are held when it moves between
two agents — from the barrier until the new host has processed its first record — for operator state of about
1 MB, 10 MB and 100 MB, p50/p99 over repeated moves. Real processes on an embedded cluster; the state is per-key
`stateful_map` state (keys × 128 float64, every key updated about once a second).

Both ways a state can travel are measured in the same run, each on its own cluster (both up at once, each size
measured on one then the other, so that both see the same load): the old path (the whole snapshot through the
coordinator, MICROSTREAM_STATE_TRANSFER=coordinator), the baseline, and the direct one, the default (pre-copied
from the old host to the new one by a thread of the old host while the vnode runs, then only what changed at the
barrier; runtime/statexfer.py). The load average before and after each measurement goes into the JSON (the machine
is shared).

Each move's downtime is also split where the records say: align + snapshot (coordinator's clock), the ticket's way
from the coordinator to the new host's start (`to_start`: what the other parts leave), the new host's wait for the
final round (`final_wait`), its restore (`restore`), and from the restore to the first record it processed
(`first_record`: the upstream channels' redirect and their first batch).

    python bench/migration.py [--moves N] [--paths coordinator,direct] [--sizes 2000,20000,200000]
"""

from __future__ import annotations

import argparse
import os
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
from microstream.cluster.client import Client, ClusterError  # noqa: E402

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


def _seen(status: dict, vnode: str) -> int:
    ops = status["vnodes"][vnode].get("operators", {})
    return sum(o.get("records_in", 0) for o in ops.values() if o.get("operator") == "stateful_map")


def measure(client: Client, keys: int, moves: int) -> dict:
    load_before = [round(x, 2) for x in os.getloadavg()]
    pipeline = job(keys, seconds=10.0 + moves * 5.0)  # a pre-copy of 100 MB on a loaded machine takes seconds
    job_id, _ = client.submit(pipeline, wait=False)
    deadline = time.monotonic() + 120
    vnode = None
    while time.monotonic() < deadline:  # every key has state (its half of the keys, twice over): sizes stay put
        status = client.status()["jobs"][job_id]
        vnode = vnode or next((v for v, info in status.get("vnodes", {}).items()
                               if "stateful_map[0]" in info["tasks"]), None)
        if status["state"] == "running" and vnode and _seen(status, vnode) >= keys:
            break
        time.sleep(0.1)
    assert vnode is not None, "the job never started"
    records: list[dict] = []
    called_off: list[str] = []
    for _ in range(moves):
        here = client.status()["jobs"][job_id]["vnodes"][vnode]["agent"]
        there = "node2" if here == "node1" else "node1"
        try:
            records.append(client.migrate(job_id, vnode, there))
        except ClusterError as exc:  # called off (the job ended first): counted, not measured
            print(f"  a move was called off: {exc}", file=sys.stderr)
            called_off.append(str(exc))
            break
        time.sleep(0.3)
    client.stop(job_id)
    if not records:
        raise RuntimeError(f"no move of {keys} keys' state completed: {called_off}")
    down = [r["downtime_s"] * 1000 for r in records if r.get("downtime_s") is not None]
    for r in records:  # the rest of the downtime: the ticket's way from the coordinator to the new host's start
        parts = [r.get(k) for k in ("downtime_s", "align_and_snapshot_s", "final_wait_s", "restore_s",
                                    "first_record_s")]
        if None not in parts[:2] and None not in parts[3:]:
            r["to_start_s"] = parts[0] - parts[1] - (parts[2] or 0.0) - parts[3] - parts[4]
    precopy = [r["precopy_s"] for r in records if r.get("precopy_s") is not None]
    return {"keys": keys, "state_bytes": int(statistics.median(r["state_bytes"] for r in records)),
            "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
            "precopy_s_median": statistics.median(precopy) if precopy else None,
            "precopy_fallbacks": sum(1 for r in records if r.get("precopy_fallback")),
            "coordinator_fallbacks": sum(1 for r in records if r.get("direct_fallback")),
            "moves": len(records), "called_off": called_off, "downtime_ms": down,
            "p50_ms": float(np.percentile(down, 50)), "p99_ms": float(np.percentile(down, 99)),
            "align_and_snapshot_ms_p50": 1000 * statistics.median(r.get("align_and_snapshot_s") or 0 for r in records),
            # the downtime after the state is on the new host, in two parts: its restore, then the wait for the
            # first record (the redirected upstream channels)
            **_parts_ms(records, ("to_start_s", "to_start"), ("final_wait_s", "final_wait"),
                        ("restore_s", "restore"), ("first_record_s", "first_record")),
            "total_s_median": statistics.median(r["total_s"] for r in records),
            "relayed_bytes_median": int(statistics.median(r.get("relayed_bytes", r["state_bytes"]) for r in records)),
            "final_bytes_median": int(statistics.median(r.get("final_bytes") or r["state_bytes"] for r in records)),
            "transfer": records[0].get("transfer", "coordinator"), "records": records}


def _parts_ms(records: list[dict], *parts: tuple[str, str]) -> dict:
    """p50 and p99 in ms of each part of the downtime the move records have (None where none has it)."""
    out: dict = {}
    for key, name in parts:
        values = [1000 * r[key] for r in records if r.get(key) is not None]
        out[f"{name}_ms_p50"] = float(np.percentile(values, 50)) if values else None
        out[f"{name}_ms_p99"] = float(np.percentile(values, 99)) if values else None
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


class PathCluster:
    """A two-agent cluster whose coordinator moves state by `path` (MICROSTREAM_STATE_TRANSFER, inherited)."""

    def __init__(self, path: str, home: Path) -> None:
        self.path, self.home = path, home
        before = os.environ.get("MICROSTREAM_STATE_TRANSFER")
        os.environ["MICROSTREAM_STATE_TRANSFER"] = path
        try:
            cluster.up(2, home, progress=lambda t: print(t, file=sys.stderr), coordinator_args=["--no-auto-place"])
        finally:
            if before is None:
                os.environ.pop("MICROSTREAM_STATE_TRANSFER", None)
            else:
                os.environ["MICROSTREAM_STATE_TRANSFER"] = before
        self.client = Client(cluster.address(home), timeout=300)

    def measure(self, keys: int, moves: int) -> dict:
        r = measure(self.client, keys, moves)
        print(f"  {self.path}: {r['state_bytes'] / 1e6:.1f} MB: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
              f"(load {r['load_average']['before'][0]:.1f})", file=sys.stderr)
        return r

    def down(self) -> None:
        self.client.close()
        cluster.down(self.home, progress=lambda t: print(t, file=sys.stderr))


def run_paths(paths: list[str], sizes: list[tuple[int, int]]) -> dict[str, list[dict]]:
    """Every size on each path's cluster, one path after the other per size."""
    results: dict[str, list[dict]] = {path: [] for path in paths}
    with tempfile.TemporaryDirectory() as tmp:
        clusters: list[PathCluster] = []
        try:
            for path in paths:
                (Path(tmp) / path).mkdir()
                clusters.append(PathCluster(path, Path(tmp) / path))
            for keys, moves in sizes:
                for c in clusters:
                    results[c.path].append(c.measure(keys, moves))
        finally:
            for c in clusters:
                c.down()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=8)
    ap.add_argument("--paths", default="coordinator,direct", help="which state transfers to measure")
    ap.add_argument("--sizes", default="2000,20000,200000",
                    help="keys per job (two parallel tasks share them: 1 KB of state per key)")
    args = ap.parse_args()
    # two parallel tasks share the keys: per virtual node about 1, 10 and 100 MB
    sizes = [(int(keys), args.moves) for keys in args.sizes.split(",")]
    load_start = [round(x, 2) for x in os.getloadavg()]
    by_path = run_paths(args.paths.split(","), sizes)
    old, new = by_path.get("coordinator"), by_path.get("direct")
    print("\nmigration downtime between two agents (inputs held from the barrier to the first record processed "
          "on the new host):")
    for path, results in by_path.items():
        rows = [("state", "moves", "downtime p50", "p99", "align+snapshot p50", "to start p50/p99",
                 "final wait p50/p99",
                 "restore p50/p99", "first record p50/p99", "final delta", "via coordinator", "pre-copy",
                 "whole move", "fallbacks", "load")]
        for r in results:
            pre = r["precopy_s_median"]
            rows.append((f"{r['state_bytes'] / 1e6:.1f} MB", str(r["moves"]), f"{r['p50_ms']:.0f} ms",
                         f"{r['p99_ms']:.0f} ms", f"{r['align_and_snapshot_ms_p50']:.0f} ms",
                         f"{_ms(r['to_start_ms_p50'])} / {_ms(r['to_start_ms_p99'])}",
                         f"{_ms(r['final_wait_ms_p50'])} / {_ms(r['final_wait_ms_p99'])}",
                         f"{_ms(r['restore_ms_p50'])} / {_ms(r['restore_ms_p99'])}",
                         f"{_ms(r['first_record_ms_p50'])} / {_ms(r['first_record_ms_p99'])}",
                         f"{r['final_bytes_median'] / 1e6:.2f} MB", f"{r['relayed_bytes_median'] / 1e6:.2f} MB",
                         "-" if pre is None else f"{pre:.2f} s", f"{r['total_s_median']:.2f} s",
                         str(r["precopy_fallbacks"] + r["coordinator_fallbacks"]),
                         f"{r['load_average']['before'][0]:.1f}"))
        print(f"\n{path}:")
        print(table(rows))
    if old and new:
        rows = [("state", "p50 old -> direct", "ratio", "p99 old -> direct", "ratio")]
        for o, n in zip(old, new, strict=True):
            rows.append((f"{n['state_bytes'] / 1e6:.0f} MB", f"{o['p50_ms']:.0f} -> {n['p50_ms']:.0f} ms",
                         f"{o['p50_ms'] / n['p50_ms']:.1f}x less", f"{o['p99_ms']:.0f} -> {n['p99_ms']:.0f} ms",
                         f"{o['p99_ms'] / n['p99_ms']:.1f}x less"))
        print("\nside by side (same run, same job):")
        print(table(rows))
    if new:
        print("targets: p50 < 50 ms at every size:", "met" if all(r["p50_ms"] < 50 for r in new) else "NOT met",
              "| p99 < 100 ms at 100 MB:", "not measured" if new[-1]["state_bytes"] < 90e6
              else "met" if new[-1]["p99_ms"] < 100 else "NOT met")
    path = write_json("migration", {"paths": by_path, "sizes": new or old, "target_p50_ms": 50,
                                    "target_p99_ms_at_100mb": 100,
                                    "load_average": {"start": load_start,
                                                     "end": [round(x, 2) for x in os.getloadavg()]}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
