"""Cluster runtime figures (issue 3), in one run on an embedded cluster of real processes:

1. end-to-end latency p50/p99 at 10 %, 50 % and 90 % of the measured maximum rate of a two-stage
   pipeline whose records cross a channel between processes;
2. idle agent RSS, against a bare Python process with pyzmq, and what importing numba would add;
3. the canonical workload (2 M synthetic records, filter, key_by, 10 s tumbling, count/mean/min/max)
   on a 3-agent embedded cluster against the local runtime;
4. the data path's steady state (issue 15, item 3): bench/peers.py's canonical job (windows with parallelism 2, the
   records generated in the source's host) on the cluster and in the local runtime, alternately, `--repeat` times
   each. Steady state is records / the time records flowed: from the moment the source began reading its first
   batch to the moment the sink took in its last (`RunResult.flow_seconds`, stamped by the task runner the same way
   in both runtimes), so it leaves out what a cluster job adds before and after: deployment (submit -> the first
   batch read) and the results' trip back to the client (the last batch in the sink -> `submit` returns), which
   are reported beside it. Writes bench/results/cluster_steady.json (with the load average: the machine is shared).

    python bench/cluster.py [--records N] [--part all|steady] [--steady-records N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402
from peers import checksum, cluster_pipeline  # noqa: E402

import microstream as ms  # noqa: E402
from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client  # noqa: E402
from microstream.sinks.base import Sink  # noqa: E402


class LatencySink(Sink):
    """Records, per record, wall clock now minus the wall clock stamped at the source."""

    kind = "latency"

    def __init__(self) -> None:
        self.samples: list[np.ndarray] = []

    def write(self, batch) -> None:
        self.samples.append((time.time_ns() - batch["sent"]) / 1e6)

    def close(self):
        from microstream.core.batch import Batch

        self._batches = [Batch({"latency_ms": np.concatenate(self.samples) if self.samples else np.empty(0)})]
        return []

    def batches(self):
        return self._batches


def latency_pipeline(count: int, rate: float | None) -> tuple[ms.Pipeline, ms.sinks.Collect]:
    p = ms.Pipeline("latency")
    out = ms.sinks.collect()
    src = p.synthetic(count=count, sensors=100, rate=rate or 100_000.0, speed=1.0 if rate else None,
                      batch_size=4096)
    stamped = src.with_columns(sent=lambda b: np.full(b.num_rows, time.time_ns(), dtype=np.int64))
    work = stamped.key_by("sensor").map(lambda b: {"sensor": b["sensor"], "sent": b["sent"],
                                                   "v2": b["value"] * 2.0}).with_parallelism(2)
    work.map(lambda b: {"latency_ms": (time.time_ns() - b["sent"]) / 1e6}).sink(out)
    return p, out


def measure_latency(client: Client) -> dict:
    count = 200_000
    p, _ = latency_pipeline(count, None)
    start = time.perf_counter()
    client.submit(p)
    max_rate = count / (time.perf_counter() - start)
    results = {"max_rate_records_per_s": max_rate, "levels": {}}
    for share in (0.1, 0.5, 0.9):
        rate = max_rate * share
        n = int(min(rate * 4.0, 400_000))  # about four seconds of data at this rate
        p, out = latency_pipeline(n, rate)
        client.submit(p)
        lat = out.batch()["latency_ms"]
        results["levels"][f"{int(share * 100)}%"] = {
            "rate": rate, "records": int(len(lat)), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}
    return results


def rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def baseline_rss(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code + "\nimport pathlib\nprint([l for l in pathlib.Path("
                          "'/proc/self/status').read_text().splitlines() if l.startswith('VmRSS')][0].split()[1])"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def canonical(records: int) -> tuple[ms.Pipeline, ms.sinks.Collect]:
    p = ms.Pipeline("canonical")
    out = ms.sinks.collect()
    (p.synthetic(count=records, sensors=1000, rate=1000.0, glitch_rate=0.01, seed=42)
     .filter(lambda b: (b["value"] >= -50) & (b["value"] <= 150))
     .key_by("sensor").window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .with_parallelism(3).sink(out))
    return p, out


STEADY_START = 1_700_000_000 * 10**9  # the first event time of bench/peers.py's input


def _aggregates(out: ms.sinks.Collect) -> str:
    b = out.batch()
    cols = {"sensor": b["sensor"], "start": b["window_start"], "n": b["n"], "mean": b["mean"], "min": b["min"],
            "max": b["max"]}
    order = np.lexsort((cols["start"], cols["sensor"]))
    return checksum({k: v[order] for k, v in cols.items()})


def steady_state(client: Client, records: int, repeat: int) -> dict:
    """The canonical job's steady state on the cluster and locally, alternately (see the module's docstring)."""
    local_p, local_out = cluster_pipeline(records, STEADY_START)
    local_p.run()  # numba's cache for this job, in this process
    tiny, _ = cluster_pipeline(1000, STEADY_START)
    client.submit(tiny, output=None)  # the cluster's hosts for this job, forked once (their template warm)
    runs: dict[str, list[dict]] = {"local": [], "cluster": [], "deploy_1000_records": []}
    sums: set[str] = set()
    for r in range(repeat):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        result = local_p.run()
        wall = time.perf_counter() - start
        assert result.flow_seconds
        runs["local"].append({"seconds": wall, "flow_seconds": result.flow_seconds, "load_1min": load,
                              "cpu_seconds": result.cpu_seconds})
        sums.add(_aggregates(local_out))
        p, out = cluster_pipeline(records, STEADY_START)
        load = os.getloadavg()[0]
        submitted = time.time()
        start = time.perf_counter()
        _, result = client.submit(p, output=None)
        wall = time.perf_counter() - start
        returned = time.time()
        assert result is not None and result.flow_start is not None and result.flow_end is not None
        runs["cluster"].append({"seconds": wall, "flow_seconds": result.flow_seconds, "load_1min": load,
                                "deploy_s": result.flow_start - submitted, "results_s": returned - result.flow_end,
                                "cpu_seconds": result.cpu_seconds})
        sums.add(_aggregates(out))
        start = time.perf_counter()
        client.submit(tiny, output=None)
        runs["deploy_1000_records"].append({"seconds": time.perf_counter() - start})
        print(f"  steady state run {r + 1}/{repeat}: local {records / runs['local'][-1]['flow_seconds'] / 1e6:.2f} M, "
              f"cluster {records / runs['cluster'][-1]['flow_seconds'] / 1e6:.2f} M records/s (load {load:.1f})",
              file=sys.stderr, flush=True)
    med = {k: statistics.median(x["flow_seconds"] for x in v) for k, v in runs.items() if k != "deploy_1000_records"}
    rate = {k: records / v for k, v in med.items()}
    pairs = [lo["flow_seconds"] / cl["flow_seconds"] for lo, cl in zip(runs["local"], runs["cluster"], strict=True)]
    # CPU per record moves far less with the machine's load than wall-clock rates: what the cluster's data path
    # costs beyond the work (the hosts' CPU from their start, deployment included; local: the run's process)
    cpu = {k: statistics.median(x["cpu_seconds"] for x in runs[k]) for k in ("local", "cluster")}
    return {"records": records, "repeat": repeat, "job": "bench/peers.py cluster_pipeline (windows x2)",
            "identical": len(sums) == 1, "checksum": sorted(sums),
            "steady_records_per_s": rate, "cluster_vs_local": rate["cluster"] / rate["local"],
            "cluster_vs_local_each_pair": pairs, "target_cluster_vs_local": 0.5,
            "cpu_seconds": cpu, "records_per_cpu_second": {k: records / v for k, v in cpu.items()},
            "cpu_cluster_vs_local": cpu["cluster"] / cpu["local"],
            "submit_to_results_records_per_s": records / statistics.median(x["seconds"] for x in runs["cluster"]),
            "local_run_records_per_s": records / statistics.median(x["seconds"] for x in runs["local"]),
            "cluster_deploy_s": statistics.median(x["deploy_s"] for x in runs["cluster"]),
            "cluster_results_s": statistics.median(x["results_s"] for x in runs["cluster"]),
            "deploy_same_job_1000_records_s": statistics.median(x["seconds"] for x in runs["deploy_1000_records"]),
            "runs": runs}


def print_steady(s: dict) -> None:
    records = s["records"]
    print(f"\ndata path steady state, canonical job (windows x2), {records:,} records, {s['repeat']} runs each, "
          "alternating (records / time from the source's first batch to the sink's last):")
    print(table([("runtime", "steady records/s", "vs local", "submit -> results records/s"),
                 ("local runtime (1 process)", f"{s['steady_records_per_s']['local']:,.0f}", "1.00x",
                  f"{s['local_run_records_per_s']:,.0f}"),
                 ("embedded cluster, 3 agents", f"{s['steady_records_per_s']['cluster']:,.0f}",
                  f"{s['cluster_vs_local']:.2f}x", f"{s['submit_to_results_records_per_s']:,.0f}")]))
    print(f"each pair: {', '.join(f'{x:.2f}x' for x in s['cluster_vs_local_each_pair'])} (target >= "
          f"{s['target_cluster_vs_local']}x); identical aggregates: {s['identical']}")
    print(f"CPU for the job (medians): cluster hosts {s['cpu_seconds']['cluster']:.2f} s, local "
          f"{s['cpu_seconds']['local']:.2f} s: {s['cpu_cluster_vs_local']:.2f}x")
    print(f"cluster, outside the steady state (medians): submit -> first batch read {s['cluster_deploy_s']:.2f} s, "
          f"last batch in the sink -> results at the client {s['cluster_results_s']:.2f} s; the same job on 1,000 "
          f"records submit -> results {s['deploy_same_job_1000_records_s']:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--part", choices=("all", "steady"), default="all",
                    help="steady: only the data path's steady state")
    ap.add_argument("--steady-records", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=7, help="steady state: runs of each runtime")
    args, _ = ap.parse_known_args()  # bench/run.py passes every benchmark the same arguments
    if args.part == "steady":
        return run_steady(args.steady_records, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        state = cluster.up(3, home, progress=lambda t: print(t, file=sys.stderr))
        try:
            time.sleep(2.0)  # let the agents settle before reading their idle memory
            agent_rss = [rss_of(pid) for pid in state["pids"][1:]]
            with Client(cluster.address(home), timeout=60) as client:
                lat = measure_latency(client)
                p, out = canonical(args.records)
                p.run()  # local, warms numba's cache for this pipeline too
                local_rows = sorted(map(tuple, zip(*[out.batch()[c].tolist() for c in ("sensor", "window_start",
                                                                                       "n", "mean")], strict=True)))
                start = time.perf_counter()
                p.run()
                t_local = time.perf_counter() - start
                start = time.perf_counter()
                client.submit(p)
                t_cluster = time.perf_counter() - start
                tiny, _ = canonical(1000)  # the same job on 1,000 records: the fixed cost of deploying it
                start = time.perf_counter()
                client.submit(tiny)
                t_deploy = time.perf_counter() - start
                cluster_rows = sorted(map(tuple, zip(*[out.batch()[c].tolist() for c in ("sensor", "window_start",
                                                                                         "n", "mean")], strict=True)))
                steady = steady_state(client, args.steady_records, args.repeat)
        finally:
            cluster.down(home, progress=lambda t: print(t, file=sys.stderr))
    bare = baseline_rss("import zmq")
    with_numba = baseline_rss("import zmq, numba, numpy")

    print(f"\nend-to-end latency, source -> channel -> 2 parallel tasks -> channel -> sink (3 agents); "
          f"max rate {lat['max_rate_records_per_s']:,.0f} records/s")
    rows = [("load", "records/s", "records", "p50 ms", "p99 ms")]
    for level, r in lat["levels"].items():
        rows.append((level, f"{r['rate']:,.0f}", f"{r['records']:,}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"))
    print(table(rows))
    print(f"\nidle agent RSS: {np.mean(agent_rss):.0f} MB (target <= 80 MB); a bare python+pyzmq process "
          f"{bare:.0f} MB; importing numba+numpy would add {with_numba - bare:.0f} MB (agents never import it)")
    same = local_rows == cluster_rows
    print(f"\ncanonical workload, {args.records:,} records:")
    print(table([("runtime", "seconds", "records/s", "vs local"),
                 ("local runtime (1 process)", f"{t_local:.2f}", f"{args.records / t_local:,.0f}", "1.00x"),
                 ("embedded cluster, 3 agents", f"{t_cluster:.2f}", f"{args.records / t_cluster:,.0f}",
                  f"{t_local / t_cluster:.2f}x")]))
    print(f"identical results: {same} ({len(local_rows):,} windows)")
    print(f"of the cluster's {t_cluster:.2f} s, {t_deploy:.2f} s is the fixed cost of a job (the same job on 1,000 "
          f"records: planning, starting host processes that import numba, connecting channels)")
    path = write_json("cluster", {
        "load_average_end": list(os.getloadavg()),
        "latency": lat, "idle_agent_rss_mb": agent_rss, "bare_python_zmq_rss_mb": bare,
        "numba_import_adds_mb": with_numba - bare, "target_idle_agent_rss_mb": 80,
        "canonical": {"records": args.records, "local_s": t_local, "cluster_s": t_cluster,
                      "cluster_vs_local": t_local / t_cluster, "identical": same,
                      "deploy_s_same_job_1000_records": t_deploy}})
    print(f"wrote {path}")
    print_steady(steady)
    print(f"wrote {write_steady(steady)}")
    return 0 if same and steady["identical"] else 1


def write_steady(steady: dict) -> Path:
    return write_json("cluster_steady", {"load_average_end": list(os.getloadavg()), **steady})


def run_steady(records: int, repeat: int) -> int:
    load = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        cluster.up(3, home, progress=lambda t: print(t, file=sys.stderr))
        try:
            with Client(cluster.address(home), timeout=120) as client:
                steady = steady_state(client, records, repeat)
        finally:
            cluster.down(home, progress=lambda t: print(t, file=sys.stderr))
    steady["load_average_start"] = load
    print_steady(steady)
    print(f"wrote {write_steady(steady)}")
    return 0 if steady["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
