"""A coordinator that can crash (issue 12, item 5), on an embedded cluster of real processes:

1. restart: kill -9 the coordinator while a job runs, start a new one on the same port, keys and state
   directory; seconds until it listens (Python and its imports), until every agent has registered again, and
   until the job runs again (adopted where it ran), over `--restarts` kills;
2. growth: the coordinator's RSS (/proc) over `--jobs` short jobs that each collect `--collect` records, with
   the default history of 100 ended jobs, and the job label values left in its metrics; the state
   directory's writes (count, mean ms).

    python bench/restart.py [--restarts N] [--jobs N] [--collect N] [--before DIR]

`--before DIR`: the growth part only, with the microstream package found in DIR (e.g. an export of the commit
before the coordinator persisted anything), for comparison.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json  # noqa: E402

JOB = """
import microstream as ms
p = ms.Pipeline("restart", checkpoint_every="1s")
p.synthetic(count=10**9, sensors=20, rate=500, speed=1.0, seed=3).key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.jsonl("{out}"))
p.run()
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def restarts(n: int, tmp: Path) -> dict:
    from microstream.cluster import embedded as cluster
    from microstream.cluster.client import Client

    home = tmp / "restart-home"
    state = cluster.up(3, home, progress=lambda _: None)
    script = tmp / "job.py"
    script.write_text(textwrap.dedent(JOB.format(out=tmp / "out.jsonl")))
    listen, agents, running = [], [], []
    try:
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(script), "--home",
                            str(home)], capture_output=True, text=True, check=True)
        job = r.stdout.split()[0]
        for _ in range(n):
            with Client(cluster.address(home), timeout=30) as client:
                while client.status()["jobs"][job]["state"] != "running":
                    time.sleep(0.05)
            os.kill(state["pids"][0], signal.SIGKILL)
            started = time.monotonic()
            state = cluster.restart_coordinator(home, progress=lambda _: None, wait_for_agents=False)
            listening = time.monotonic()
            with Client(cluster.address(home), timeout=30) as client:
                while sum(a["up"] for a in client.status()["agents"].values()) < 3:
                    time.sleep(0.01)
                back = time.monotonic()
                while (s := client.status()["jobs"][job])["state"] == "adopting":
                    time.sleep(0.01)
                assert s["state"] == "running" and s["restarts"] == 0, s
            listen.append(listening - started)
            agents.append(back - listening)
            running.append(time.monotonic() - listening)
            time.sleep(2.0)
    finally:
        cluster.down(home, progress=lambda _: None)
    return {"kills": n, "listening_s": _figures(listen), "agents_back_s": _figures(agents),
            "job_running_again_s": _figures(running)}


def growth(jobs: int, collect: int, tmp: Path, before: str | None) -> dict:
    import microstream as ms
    from microstream.cluster import embedded as cluster
    from microstream.cluster.client import Client

    home = tmp / "growth-home"
    os.environ["MICROSTREAM_BACKENDS"] = "process"
    state = cluster.up(2, home, progress=lambda _: None)
    pid = state["pids"][0]
    rss, seconds = {}, []
    try:
        with Client(cluster.address(home), timeout=60) as client:
            for i in range(1, jobs + 1):
                p = ms.Pipeline(f"short{i}")
                p.from_iterable([{"sensor": j % 7, "value": float(j)} for j in range(collect)]).key_by(
                    "sensor").map(lambda b: {"v": b["value"] * 2.0, "w": b["value"] + 1.0}).sink(ms.sinks.collect())
                started = time.perf_counter()
                client.submit(p)
                seconds.append(time.perf_counter() - started)
                if i in (10, 25, 50, 100, 150, 200, 300) or i == jobs:
                    rss[i] = round(rss_mb(pid), 2)
            status = client.status()
            text = urllib.request.urlopen(f"http://127.0.0.1:{status['metrics_port']}/metrics").read().decode()
            labels = {line.split('job="')[1].split('"')[0] for line in text.splitlines() if 'job="' in line}
    finally:
        cluster.down(home, progress=lambda _: None)
    marks = sorted(rss)
    late = [m for m in marks if m >= min(100, marks[-1] // 2)] if before is None else marks[len(marks) // 2:]
    slope = (rss[late[-1]] - rss[late[0]]) / (late[-1] - late[0]) * 1024 if len(late) > 1 else None
    return {"code": before or "this checkout", "jobs": jobs, "records_collected_per_job": collect,
            "rss_mb_after_jobs": rss, "kb_per_job_late": None if slope is None else round(slope, 1),
            "seconds_per_job_median": round(statistics.median(seconds), 3), "jobs_in_status": len(status["jobs"]),
            "job_label_values_in_metrics": len(labels), "state_writes": status.get("state")}


def _figures(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3),
            "all": [round(v, 3) for v in values]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--collect", type=int, default=2000)
    ap.add_argument("--before", metavar="DIR")
    args = ap.parse_args()
    if args.before:
        sys.path.insert(0, args.before)
        os.environ["PYTHONPATH"] = args.before
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"growth": growth(args.jobs, args.collect, tmp, args.before)}
        if not args.before:
            result["restart"] = restarts(args.restarts, tmp)
    print(result)
    if not args.before:
        write_json("restart", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
