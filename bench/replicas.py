"""Checkpoint replicas on the agents (microstream/cluster/replicas.py, docs/faults.md): what they cost and what a
coordinator that lost its state directory takes to restore a job from one.

On an embedded 3-agent cluster with CURVE (the coordinator's node is node1, `--node node1`), the keyed
`stateful_map` job of bench/checkpoints.py with ~1, 10 and 50 MB of state and a checkpoint every 3 s runs in real
time. Per state size:

- **size and time**: for each checkpoint, its snapshots' bytes and time (the baseline, from the same run) against its
  replica's bytes and the time from the checkpoint's completion to the replica being on its holder's disk (the
  replica's transfer runs after the checkpoint, a few 1 MB parts per pass of the coordinator's loop);
- **restore**: kill -9 the coordinator, delete its state directory, start a new one on the same port and keys:
  seconds from the new coordinator listening to the job running again (restored from the replica: adopted where
  its hosts run on, or recovered from the replica's checkpoint), and whether the job's output equals a local
  run's.

    python bench/replicas.py [--sizes 1,10,50]

Writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import SLOTS, STATEFUL, _poll  # noqa: E402 - the same job as the checkpoint benchmark
from common import table, write_json  # noqa: E402

from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = 20_000


def _script(tmp: Path, name: str, mb: int, speed: str, seconds: float) -> tuple[Path, Path]:
    out = tmp / f"{name}.jsonl"
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(STATEFUL.format(every='"3s"', count=int(RATE * seconds), keys=1024 * mb,
                                                      rate=float(RATE), speed=speed, slots=SLOTS, out=out)))
    return script, out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def one(tmp: Path, mb: int, seconds: float) -> dict:
    local, local_out = _script(tmp, f"local-{mb}", mb, "None", seconds)
    r = _cli("run", str(local))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    expected = sorted(local_out.read_text().splitlines())
    home = tmp / f"home-{mb}"
    state = cluster.up(3, home, progress=lambda _: None, coordinator_args=["--node", "node1"])
    try:
        script, out = _script(tmp, f"cluster-{mb}", mb, "1.0", seconds)
        r = _cli("submit", str(script), "--detach", "--home", str(home))
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        job = r.stdout.strip().splitlines()[0]
        taken: dict[int, dict] = {}
        with Client(cluster.address(home), timeout=60) as client:
            def replicated() -> bool:
                for f in client.status()["jobs"][job]["checkpoints"]:
                    if f.get("replicas"):
                        taken[f["id"]] = f
                return len(taken) >= 3

            _poll("three checkpoints replicated", replicated, 240, 0.2)
        figures = sorted(taken.values(), key=lambda f: f["id"])
        os.kill(state["pids"][0], signal.SIGKILL)
        _poll("the coordinator to die", lambda: not _alive(state["pids"][0]), 10)
        shutil.rmtree(cluster.state_dir(home))
        cluster.state_dir(home).mkdir()
        cluster.restart_coordinator(home, progress=lambda _: None, wait_for_agents=False)
        listening = time.monotonic()
        with Client(cluster.address(home), timeout=60) as client:
            status = _poll("the job to run again", lambda: (s := client.status()["jobs"].get(job)) is not None
                           and s["state"] in ("running", "finished", "failed") and s["restored_from"] and s, 240,
                           0.02)
            restored = time.monotonic() - listening
            final = _poll("the job to end", lambda: (s := client.status()["jobs"][job])["state"]
                          in ("finished", "failed") and s, 600, 0.5)
        got = sorted(out.read_text().splitlines()) if out.exists() else []
        replica = final["restored_from"]
    finally:
        cluster.down(home, progress=lambda _: None)
    ckpt_bytes = statistics.median(f["bytes"] for f in figures)
    ckpt_s = statistics.median(f["seconds"] for f in figures)
    rep_bytes = statistics.median(f["replica_bytes"] for f in figures)
    rep_s = statistics.median(f["replicas"][0]["seconds"] for f in figures)
    return {"state_mb": mb, "checkpoints": figures, "checkpoint_bytes_median": ckpt_bytes,
            "checkpoint_seconds_median": ckpt_s, "replica_bytes_median": rep_bytes,
            "replica_seconds_median": rep_s, "replica_over_checkpoint_bytes": rep_bytes / ckpt_bytes,
            "replica_over_checkpoint_seconds": rep_s / ckpt_s if ckpt_s else None,
            "holders": sorted({h["agent"] for f in figures for h in f["replicas"]}),
            "restore_listening_to_running_s": restored, "restored_from": replica, "restarts": final["restarts"],
            "state_after_restore": status["state"], "final_state": final["state"],
            "output_equal_to_local_run": final["state"] == "finished" and got == expected}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10,50", help="state sizes in MB (comma-separated)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the real-time job")
    args, _ = ap.parse_known_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        for mb in (int(s) for s in args.sizes.split(",")):
            load = os.getloadavg()[0]
            r = one(Path(tmp), mb, args.seconds)
            r["load_average"] = [load, os.getloadavg()[0]]
            results.append(r)
            print(f"  {mb} MB: checkpoint {r['checkpoint_bytes_median'] / 1e6:.1f} MB in "
                  f"{r['checkpoint_seconds_median']:.2f} s, replica {r['replica_bytes_median'] / 1e6:.1f} MB on disk "
                  f"{r['replica_seconds_median']:.2f} s after; restored in {r['restore_listening_to_running_s']:.2f} s,"
                  f" output {'equal' if r['output_equal_to_local_run'] else 'DIFFERENT'}", file=sys.stderr)
    rows = [("state", "checkpoint MB", "checkpoint s", "replica MB", "replica s (after)", "replica/ckpt time",
             "holders", "restore s", "output equal")]
    for r in results:
        ratio = r["replica_over_checkpoint_seconds"]
        rows.append((f"{r['state_mb']} MB", f"{r['checkpoint_bytes_median'] / 1e6:.1f}",
                     f"{r['checkpoint_seconds_median']:.2f}", f"{r['replica_bytes_median'] / 1e6:.1f}",
                     f"{r['replica_seconds_median']:.2f}", f"{ratio:.2f}x" if ratio is not None else "-",
                     ",".join(r["holders"]), f"{r['restore_listening_to_running_s']:.2f}",
                     str(r["output_equal_to_local_run"])))
    print(table(rows))
    path = write_json("replicas", {"setup": "embedded 3-agent cluster with CURVE, --node node1, 1 replica, checkpoint "
                                            "every 3 s, keyed stateful_map (bench/checkpoints.py's job), real time",
                                   "sizes": results})
    print(f"wrote {path}")
    return 0 if all(r["output_equal_to_local_run"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
