"""Checkpoints and recovery on an embedded 3-agent cluster, with baselines measured in the same run.

1. Throughput with checkpoints vs none: the same job (synthetic sensors at full speed, key by sensor, 1 s
   tumbling windows with parallelism 2, a JSON-lines file sink) submitted with `checkpoint_every="1s"` (ten times
   the default rate, to make the cost visible) and with `checkpoint_every=None`, interleaved; the ratio of the
   median wall times from submit to result, and the checkpoints taken.
2. Recovery time: a real-time job (`speed=1.0`, checkpoints every second); a window host is killed with SIGKILL
   once two checkpoints are complete; the time from the kill to the job running again (every virtual node
   restored and started), and the whole job's output checked against a run without a fault. Repeated; p50 and
   max. Detection of a lost *agent* adds the agent timeout (`--agent-timeout`) on top.

    python bench/checkpoints.py [--records 400000] [--repeat 3] [--faults 3]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402

from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

JOB = """
import microstream as ms
p = ms.Pipeline("ckpt-bench", checkpoint_every={every})
src = p.synthetic(count={count}, sensors=200, rate={rate}, jitter=0.05, max_delay=0.2, seed=3, speed={speed},
                  batch_size=2000)
src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value")).with_parallelism(2).sink(ms.sinks.jsonl("{out}"))
p.run()
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _submit(home: Path, tmp: Path, name: str, **fmt: object) -> tuple[float, str]:
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(JOB.format(**fmt)))
    started = time.perf_counter()
    r = _cli("submit", str(script), "--home", str(home))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return time.perf_counter() - started, r.stdout


def throughput(home: Path, tmp: Path, records: int, repeat: int) -> dict:
    times: dict[str, list[float]] = {"checkpoints every 1 s": [], "no checkpoints": []}
    for i in range(repeat):
        for label, every in (("checkpoints every 1 s", '"1s"'), ("no checkpoints", "None")):
            seconds, _ = _submit(home, tmp, f"t{i}", every=every, count=records, rate=100_000, speed=None,
                                 out=tmp / f"t-{i}-{every.strip(chr(34))}.jsonl")
            times[label].append(seconds)
    with Client(cluster.address(home)) as client:
        jobs = client.status()["jobs"]
    taken = [len(j.get("checkpoints", [])) for j in jobs.values() if j["name"] == "ckpt-bench"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"records": records, "seconds": times, "median_s": med,
            "ratio_with_vs_without": med["no checkpoints"] / med["checkpoints every 1 s"],
            "checkpoints_kept_per_job_max": max(taken or [0])}


def recovery(home: Path, tmp: Path, faults: int) -> dict:
    expected_path = tmp / "fault-free.jsonl"
    local = tmp / "local.py"
    local.write_text(textwrap.dedent(JOB.format(every=None, count=30_000, rate=2_000, speed=None, out=expected_path)))
    assert _cli("run", str(local)).returncode == 0
    expected = sorted(expected_path.read_text().splitlines())
    downs: list[float] = []
    exact = 0
    for i in range(faults):
        out = tmp / f"fault-{i}.jsonl"
        script = tmp / f"fault-{i}.py"
        script.write_text(textwrap.dedent(JOB.format(every='"1s"', count=30_000, rate=2_000, speed=1.0, out=out)))
        r = _cli("submit", "--detach", str(script), "--home", str(home))
        job = r.stdout.strip().splitlines()[-1]
        with Client(cluster.address(home), timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = client.status()["jobs"][job]
                if status["state"] == "running" and len(status["checkpoints"]) >= 2:
                    break
                time.sleep(0.1)
            window = next(v for v in status["vnodes"].values() if any(t.startswith("window") for t in v["tasks"]))
            killed = time.time()
            os.kill(window["pid"], signal.SIGKILL)
            while not (status := client.status()["jobs"][job])["recoveries"] or status["state"] != "running":
                time.sleep(0.05)
            back = time.time()
            while client.status()["jobs"][job]["state"] not in ("finished", "failed"):
                time.sleep(0.2)
        downs.append(back - killed)
        exact += sorted(out.read_text().splitlines()) == expected
    return {"faults": faults, "kill_to_running_s": downs, "p50_s": statistics.median(downs), "max_s": max(downs),
            "outputs_equal_to_fault_free": exact}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--faults", type=int, default=3)
    args, _ = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        cluster.up(3, home, progress=lambda _: None, coordinator_args=["--no-auto-place"])
        try:
            thr = throughput(home, tmp, args.records, args.repeat)
            rec = recovery(home, tmp, args.faults)
        finally:
            cluster.down(home, progress=lambda _: None)
    print(table([
        ("job", "median s (submit to result)", "vs no checkpoints"),
        ("no checkpoints", f"{thr['median_s']['no checkpoints']:.2f}", "1.00x"),
        ("checkpoints every 1 s", f"{thr['median_s']['checkpoints every 1 s']:.2f}",
         f"{thr['ratio_with_vs_without']:.2f}x"),
    ]))
    print(f"\nrecovery after kill -9 of a window host ({rec['faults']} times): kill -> running again p50 "
          f"{rec['p50_s']:.2f} s, max {rec['max_s']:.2f} s; output equal to the fault-free run "
          f"{rec['outputs_equal_to_fault_free']}/{rec['faults']}")
    path = write_json("checkpoints", {"throughput": thr, "recovery": rec})
    print(f"wrote {path}")
    return 0 if rec["outputs_equal_to_fault_free"] == rec["faults"] else 1


if __name__ == "__main__":
    sys.exit(main())
