"""Virtual-node hosts forked from a warm template vs spawned, in one run (issue 15): for each, an embedded
cluster of one agent runs the same keyed-window job (4 virtual nodes) several times; per job, the time from
submit to `running` (the deployment) and, while it runs, each host's memory from /proc/PID/smaps_rollup: PSS
(shared pages divided among the processes sharing them: what a host really costs), USS (its private pages) and
RSS (what `ps` shows). The template's own PSS is reported beside them.

    python bench/hosts.py [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from common import table, write_json  # noqa: E402

import microstream as ms  # noqa: E402
from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client  # noqa: E402


def memory(pid: int) -> dict[str, float]:
    """PSS, USS and RSS of `pid` in MB (smaps_rollup: one read, summed by the kernel)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split()[:2]
        fields[name.rstrip(":")] = int(value) / 1024
    return {"pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"], "rss": fields["Rss"]}


def job(seconds: float) -> ms.Pipeline:
    p = ms.Pipeline("hosts", checkpoint_every=None)
    (p.synthetic(count=int(2000 * seconds), sensors=10, rate=2000, seed=3, speed=1.0, batch_size=200)
     .filter(lambda b: b["value"] > -50).key_by("sensor").window(ms.tumbling(seconds=1))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), hi=ms.agg.max("value"))
     .with_parallelism(3).sink(ms.sinks.collect()))
    return p


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == parent:
                found.append(int(entry))
    return found


def run_one(client: Client, agent: int) -> dict:
    """Submit, time submit -> running, measure the hosts' memory while running, wait for the end."""
    start = time.perf_counter()
    job_id, _ = client.submit(job(4.0), wait=False)
    deadline = time.monotonic() + 120
    while (status := client.status(job_id)["jobs"][job_id])["state"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job_id} not running after 120 s: {status['state']}")
        time.sleep(0.005)
    deploy = time.perf_counter() - start
    # a host's pid reaches status with its agent's next heartbeat (1 s), possibly after `running`
    while not all(v.get("pid") for v in status["vnodes"].values()) and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.status(job_id)["jobs"][job_id]
    pids = [v["pid"] for v in status["vnodes"].values() if v.get("pid")]
    time.sleep(1.0)  # let the hosts reach their steady state (channels open, state allocated)
    hosts = []
    for pid in pids:
        with contextlib.suppress(OSError):
            hosts.append(memory(pid))
    templates = [memory(pid) for pid in _children(agent) if pid not in pids
                 and b"microstream.runtime.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    done = client.wait(job_id, timeout=120)
    if done.state != "finished":
        raise RuntimeError(f"{job_id} ended {done.state}")
    return {"deploy_s": deploy, "hosts": hosts, "template": templates[0] if templates else None}


def measure(mode: str, jobs: int) -> dict:
    os.environ["MICROSTREAM_FORKSERVER"] = "1" if mode == "fork" else "0"
    os.environ["MICROSTREAM_BACKENDS"] = "process"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        state = cluster.up(1, home, progress=lambda t: print(t, file=sys.stderr))
        agent = state["pids"][1]
        try:
            with Client(cluster.address(home), timeout=60) as client:
                warm = run_one(client, agent)  # the template may still be warming up: not counted
                for _ in range(20):
                    if mode == "spawn" or warm["template"] is not None:
                        break
                    warm = run_one(client, agent)
                runs = [run_one(client, agent) for _ in range(jobs)]
        finally:
            cluster.down(home, progress=lambda t: print(t, file=sys.stderr))
    hosts = [h for r in runs for h in r["hosts"]]
    templates = [r["template"] for r in runs if r["template"]]
    return {"deploy_s": [r["deploy_s"] for r in runs],
            "deploy_s_median": statistics.median(r["deploy_s"] for r in runs),
            "host_pss_mb_median": statistics.median(h["pss"] for h in hosts),
            "host_uss_mb_median": statistics.median(h["uss"] for h in hosts),
            "host_rss_mb_median": statistics.median(h["rss"] for h in hosts),
            "hosts_per_job": max(len(r["hosts"]) for r in runs),
            "template_pss_mb": statistics.median(t["pss"] for t in templates) if templates else None,
            "template_rss_mb": statistics.median(t["rss"] for t in templates) if templates else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5)
    args = ap.parse_args()
    saved = {k: os.environ.get(k) for k in ("MICROSTREAM_FORKSERVER", "MICROSTREAM_BACKENDS")}
    try:
        results = {mode: measure(mode, args.jobs) for mode in ("spawn", "fork")}
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    spawn, fork = results["spawn"], results["fork"]
    rows = [("hosts", "submit -> running s (median)", "PSS MB/host", "USS MB/host", "RSS MB/host", "template PSS MB")]
    for mode, r in results.items():
        tpl = f"{r['template_pss_mb']:.1f}" if r["template_pss_mb"] else "-"
        rows.append((mode, f"{r['deploy_s_median']:.3f}", f"{r['host_pss_mb_median']:.1f}",
                     f"{r['host_uss_mb_median']:.1f}", f"{r['host_rss_mb_median']:.1f}", tpl))
    print(f"\none agent, a 4-virtual-node keyed-window job, {args.jobs} jobs each "
          f"({fork['hosts_per_job']} hosts per job):")
    print(table(rows))
    print(f"forked vs spawned: deploy {spawn['deploy_s_median'] / fork['deploy_s_median']:.1f}x faster, "
          f"PSS per host {spawn['host_pss_mb_median'] / fork['host_pss_mb_median']:.1f}x smaller")
    print(f"targets: PSS per host <= 40 MB: {'met' if fork['host_pss_mb_median'] <= 40 else 'NOT met'}; "
          f"deploy <= 0.3 s: {'met' if fork['deploy_s_median'] <= 0.3 else 'NOT met'}")
    path = write_json("hosts", {**results, "jobs": args.jobs, "target_host_pss_mb": 40, "target_deploy_s": 0.3,
                                "deploy_speedup": spawn["deploy_s_median"] / fork["deploy_s_median"],
                                "pss_ratio": spawn["host_pss_mb_median"] / fork["host_pss_mb_median"]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
