"""Checkpoints and recovery on an embedded 3-agent cluster, with baselines measured in the same run.

1. Throughput with checkpoints every 10 s (the default) vs none: the canonical job (synthetic sensors at full
   speed, drop values outside [-50, 150], key by sensor, 10 s tumbling windows with count/mean/min/max,
   parallelism 2, a JSON-lines file sink) submitted with `checkpoint_every="10s"` and with `None`, in pairs run
   back to back (each configuration first in turn), with enough records that a run takes well over 30 s (at least
   3 checkpoints, checked); the ratio of the median job times (submitted -> finished, as the coordinator records
   them), and each pair's own ratio (its median, min and max: the spread the shared machine's load gives), with
   the load average before each run. The other engineers' work on the same 2 cores moves a run's time by up to 2x,
   so the CPU seconds the cluster's processes used per run (coordinator, agents, hosts: /proc, children included)
   are recorded too: the work checkpoints add, which that load does not change.
2. Recovery time at ~1, 10 and 100 MB of state: a real-time job whose keyed `stateful_map` keeps 128 float64 per
   key (1,024 keys: 1 MB; 102,400 keys: 100 MB), checkpoints every 5 s, then a keyed window on a few keys to a
   file. Once two checkpoints are complete, SIGKILL the stateful host ("host") or its agent ("agent", lost after
   `--agent-timeout` 4 s); measured: kill -> the job running again in a new epoch, and kill -> records flowing
   again (the wall time at which the restored stateful operator took its first batch, as its host stamps it). p50
   and p99 (with a handful of faults p99 is the worst), and every output checked against the same job without a
   fault.
3. Checkpoint size and time vs state size, incremental vs full: a real-time job whose keyed `stateful_map` holds
   ~1, 10 or 100 MB (1 KB per key), checkpoints every 2 s. The source first sends every key once, then only a
   hot 5% of the keys (each several times per interval): "clustered" (a contiguous run of keys, e.g. one
   building's sensors) or "scattered" (every 20th key: many 16 KB chunks hold one hot key). The same job with
   `incremental_checkpoints = False` (every chunk sent every time) is the baseline, run on the same cluster in the
   same run. Per checkpoint taken once the hot phase runs: the state's bytes, the bytes the hosts sent, the chunk
   bytes the coordinator's store wrote, the bytes of its replica to an agent, the seconds from the barrier to the
   checkpoint complete and the seconds the store took; medians per run and the ratios incremental / full.

The load average of the (shared) machine at the start and end of each part is recorded with its figures;
--skip-throughput / --skip-recovery keep that part's figures from the last run.

    python bench/checkpoints.py [--records 40000000] [--repeat 5] [--faults 3] [--sizes 1,10,100] [--kinds host,agent]
                                [--skip-throughput] [--skip-recovery] [--skip-incremental]
"""

from __future__ import annotations

import argparse
import json
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
AGENT_TIMEOUT = 4.0
SLOTS = 128  # float64 per key in the stateful operator: 1 KB of state per key

CANONICAL = """
import microstream as ms
p = ms.Pipeline("ckpt-throughput", checkpoint_every={every})
(p.synthetic(count={count}, sensors=1000, rate=1000.0, glitch_rate=0.01, seed=42)
 .filter(lambda b: (b["value"] >= -50) & (b["value"] <= 150))
 .key_by("sensor").window(ms.tumbling(seconds=10))
 .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
 .with_parallelism(2).sink(ms.sinks.jsonl("{out}")))
p.run()
"""

STATEFUL = """
import numba
import numpy as np
import microstream as ms

@numba.njit(cache=True)
def spread(state, t, x):  # touches every slot of the key's state, so all of it is live
    state[int(t) % {slots}] += x
    return state[0] + state[{slots} - 1]

p = ms.Pipeline("ckpt-state", checkpoint_every={every}, restarts=5)
src = p.synthetic(count={count}, sensors={keys}, rate={rate}, jitter=0.0, max_delay=0.2, seed=5, speed={speed},
                  batch_size=2000)
(src.key_by("sensor").stateful_map(spread, "value", out="s", state_size={slots},
                                   init=np.arange({slots}, dtype=np.float64)).with_parallelism(2)
 .filter(lambda b: b["sensor"] < 20)
 .key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), s=ms.agg.max("s"))
 .sink(ms.sinks.jsonl("{out}")))
p.run()
"""


SIZE_JOB = """
import numba
import numpy as np
import microstream as ms

FILL = 1_700_000_000 * 10**9 + int({fill_s} * 10**9)   # event time by which every key has been seen once

@numba.njit(cache=True)
def spread(state, t, x):
    state[int(t) % {slots}] += x
    return state[0] + state[{slots} - 1]

p = ms.Pipeline("ckpt-size", checkpoint_every="{every}s", restarts=0)
p.graph.incremental_checkpoints = {incremental}
src = p.synthetic(count={count}, sensors={keys}, rate={rate}, seed=5, speed=1.0, batch_size=2000)
(src.with_columns(k=lambda b: np.where(b["time"] < FILL, b["sensor"], {hot}))
 .key_by("k").stateful_map(spread, "value", out="s", state_size={slots}, init=np.arange({slots}, dtype=np.float64))
 .filter(lambda b: b["k"] < 20)
 .key_by("k").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), s=ms.agg.max("s"))
 .sink(ms.sinks.jsonl("{out}")))
p.run()
"""
HOT_SHARE = 20          # 1 in 20 keys (5%) changes per interval once every key has been seen
SIZE_EVERY = 2.0        # seconds between checkpoints in part 3
SIZE_HOT_SECONDS = 16   # seconds of the hot phase


def incremental(home: Path, tmp: Path, mb: int) -> list[dict]:
    """Part 3 at one state size: full, then incremental with clustered and with scattered hot keys."""
    keys, rate = 1024 * mb, 20_000
    fill_s = keys / rate
    n_hot = keys // HOT_SHARE
    hot = {"clustered": f'b["sensor"] % {n_hot}', "scattered": f'(b["sensor"] % {n_hot}) * {HOT_SHARE}'}
    runs = []
    for mode, pattern in (("full", "clustered"), ("incremental", "clustered"), ("incremental", "scattered")):
        out = tmp / f"size-{mb}-{mode}-{pattern}.jsonl"
        script = out.with_suffix(".py")
        script.write_text(textwrap.dedent(SIZE_JOB.format(
            fill_s=fill_s, slots=SLOTS, every=SIZE_EVERY, incremental=mode == "incremental",
            count=int(rate * (fill_s + SIZE_HOT_SECONDS)), keys=keys, rate=float(rate), hot=hot[pattern], out=out)))
        load = _load()[0]
        failures = []
        while True:  # a run that fails (the shared machine's load) is run again once, and the failure recorded
            seen, running, s = _sized_run(home, script)
            if s["state"] == "finished":
                break
            failures.append(s["reason"])
            print(f"  {script.name} failed: {s['reason']}", file=sys.stderr)
            if len(failures) > 1:
                raise RuntimeError(f"{script.name}: {failures}")
        # the hot phase's: after the fill and one more interval (the one the fill ended in changed more)
        steady = [c for _, c in sorted(seen.items()) if c["at"] > running + fill_s + SIZE_EVERY + 1.0]
        if len(steady) < 3:
            raise RuntimeError(f"{script.name}: only {len(steady)} checkpoints in the hot phase: {sorted(seen)}")

        def median(key: str, of: list[dict] = steady) -> float:
            return statistics.median(c.get(key, 0) for c in of)

        runs.append({"state_mb": mb, "mode": mode, "hot_keys": pattern if mode == "incremental" else "any",
                     "keys": keys, "hot_share": 1 / HOT_SHARE, "checkpoints": steady,
                     "state_bytes": median("bytes"), "sent_bytes": median("sent_bytes"),
                     "stored_bytes": median("stored_bytes"), "replica_bytes": median("replica_bytes"),
                     "seconds": median("seconds"),
                     "store_s": median("store_s"), "load_before": load, "failed_runs": failures})
        print(f"  {mb} MB {mode} ({runs[-1]['hot_keys']}): sent {runs[-1]['sent_bytes'] / 1e6:.2f} of "
              f"{runs[-1]['state_bytes'] / 1e6:.1f} MB, {runs[-1]['seconds']:.2f} s + store "
              f"{runs[-1]['store_s']:.2f} s", file=sys.stderr)
    full = runs[0]
    for run in runs:
        run["sent_vs_full"] = run["sent_bytes"] / full["sent_bytes"]
        run["stored_vs_full"] = run["stored_bytes"] / max(1, full["stored_bytes"])
        run["seconds_vs_full"] = run["seconds"] / full["seconds"]
        run["store_s_vs_full"] = run["store_s"] / full["store_s"] if full["store_s"] else None
    return runs


def _sized_run(home: Path, script: Path) -> tuple[dict[int, dict], float, dict]:
    """Submit a part-3 job and follow it to its end: its checkpoints' figures by id (status shows the last two:
    collected as they come), when it was running, its final status."""
    r = _cli("submit", "--detach", str(script), "--home", str(home))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    job = r.stdout.strip().splitlines()[-1]
    seen: dict[int, dict] = {}
    with Client(cluster.address(home), timeout=60) as client:
        running = _poll("the job to run", lambda: _job(client, job)["state"] in ("running", "finished")
                        and time.time(), 120, 0.05)
        while (s := _job(client, job))["state"] not in ("finished", "failed"):
            seen.update({c["id"]: c for c in s["checkpoints"]})
            time.sleep(0.25)
    return seen, running, s


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def _job(client: Client, job: str) -> dict:
    return client.status()["jobs"][job]


def _poll(what: str, condition, timeout: float = 120.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def throughput(home: Path, tmp: Path, records: int, repeat: int) -> dict:
    labels = {"checkpoints every 10 s": '"10s"', "no checkpoints": "None"}
    times: dict[str, list[float]] = {label: [] for label in labels}   # submitted -> finished (the coordinator's)
    walls: dict[str, list[float]] = {label: [] for label in labels}   # submit -> result (the client's)
    cpu: dict[str, list[float]] = {label: [] for label in labels}     # CPU seconds of the cluster's processes
    loads: dict[str, list[float]] = {label: [] for label in labels}   # 1-minute load average before each run
    taken: list[int] = []
    figures: list[dict] = []
    for every in labels.values():  # warm up (host templates, numba caches): not counted
        script = tmp / f"warm-{every.strip(chr(34))}.py"
        script.write_text(textwrap.dedent(CANONICAL.format(every=every, count=200_000, out=script.with_suffix(".j"))))
        if (r := _cli("submit", str(script), "--home", str(home))).returncode != 0:
            raise RuntimeError(r.stderr)
    for i in range(repeat):
        for label, every in sorted(labels.items(), reverse=bool(i % 2)):  # each goes first in turn
            script = tmp / f"t{i}-{every.strip(chr(34))}.py"
            out = script.with_suffix(".jsonl")
            script.write_text(textwrap.dedent(CANONICAL.format(every=every, count=records, out=out)))
            idle = set(_cluster_processes(home))
            cpu_before = _cpu_seconds(home, idle)
            loads[label].append(_load()[0])
            started = time.perf_counter()
            r = _cli("submit", str(script), "--home", str(home))
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            walls[label].append(time.perf_counter() - started)
            cpu[label].append(_cpu_seconds(home, idle) - cpu_before)
            out.unlink(missing_ok=True)  # ~1 GB of JSON lines a run: the next runs need the disk
            job = r.stdout.strip().splitlines()[0]
            with Client(cluster.address(home)) as client:
                status = _job(client, job)
            times[label].append(status["finished"] - status["submitted"])
            if every != "None":
                last = status["checkpoints"]  # the last two: id, bytes, seconds
                taken.append(max([c["id"] for c in last] or [0]))
                figures += last
            print(f"  {label}: job {times[label][-1]:.1f} s, CPU {cpu[label][-1]:.1f} s, load {loads[label][-1]:.1f}",
                  file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    with_, without = times["checkpoints every 10 s"], times["no checkpoints"]
    pairs = [b / a for a, b in zip(with_, without, strict=True)]
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    return {"records": records, "seconds": times, "median_s": med,
            "records_per_s": {k: records / v for k, v in med.items()},
            "ratio_with_vs_without": med["no checkpoints"] / med["checkpoints every 10 s"],
            "pair_ratios": pairs, "pair_ratio_median": statistics.median(pairs),
            "pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs),
            "submit_to_result_s": walls, "cpu_s": cpu, "cpu_median_s": cpu_med,
            "cpu_ratio_with_vs_without": cpu_med["no checkpoints"] / cpu_med["checkpoints every 10 s"],
            "load_before_run": loads, "checkpoints_taken": taken, "checkpoints": figures}


def _stateful(tmp: Path, name: str, mb: int, every: str, speed: str, seconds: float) -> tuple[Path, Path]:
    rate = 20_000
    out = tmp / f"{name}.jsonl"
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(STATEFUL.format(every=every, count=int(rate * seconds), keys=1024 * mb,
                                                      rate=float(rate), speed=speed, slots=SLOTS, out=out)))
    return script, out


def _fault(home: Path, script: Path, kind: str) -> tuple[float, float, list[dict], dict, str]:
    """Submit the stateful job, kill its stateful host (or that host's agent) once two checkpoints are complete:
    (kill -> running again s, kill -> records flowing s, the checkpoints before the fault, the final status,
    the agent of the stateful host)."""
    agent_pids = {f"node{i}": pid for i, pid in enumerate((cluster.read_state(home) or {})["pids"][1:], start=1)}
    r = _cli("submit", "--detach", str(script), "--home", str(home))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    job = r.stdout.strip().splitlines()[-1]
    with Client(cluster.address(home), timeout=60) as client:
        status = _poll("two checkpoints", lambda: (s := _job(client, job))["state"] == "running"
                       and len(s["checkpoints"]) >= 2 and s, 180)
        vn, stateful = next((v, s) for v, s in status["vnodes"].items()
                            if any(t.startswith("stateful_map") for t in s["tasks"]))
        op = next(t for t in stateful["tasks"] if t.startswith("stateful_map"))
        killed = time.time()
        os.kill(stateful["pid"] if kind == "host" else agent_pids[stateful["agent"]], signal.SIGKILL)
        _poll("the job to run again", lambda: (s := _job(client, job))["epoch"] > 0 and s["state"] == "running",
              120, 0.02)
        running = time.time() - killed

        def first_input() -> float | None:  # when the restored operator took its first batch (-1: the job ended)
            s = _job(client, job)
            if s["state"] != "running":
                return -1.0 if s["state"] in ("finished", "failed") else None
            at = (s["vnodes"][vn]["operators"].get(op) or {}).get("first_input_at")
            return at if at is not None and at > killed else None  # not the killed host's last report

        # the host stamps its first batch in (hosts report once a second: the report's arrival would add up to 1 s)
        at = _poll("records to flow again", lambda: first_input(), 60, 0.02)
        flowing = (at if at > 0 else time.time()) - killed
        final = _poll("the job to end", lambda: (s := _job(client, job))["state"] in ("finished", "failed") and s,
                      300, 0.5)
    return running, flowing, status["checkpoints"], final, stateful["agent"]


def recovery(home: Path, tmp: Path, mb: int, kind: str, faults: int, expected: list[str]) -> dict:
    running_s: list[float] = []
    flowing_s: list[float] = []
    checkpoints: list[dict] = []
    outcomes: list[dict] = []
    exact = 0
    for i in range(faults):
        script, out = _stateful(tmp, f"{mb}mb-{kind}-{i}", mb, '"5s"', "1.0", 40)
        running, flowing, taken, final, agent = _fault(home, script, kind)
        running_s.append(running)
        flowing_s.append(flowing)
        checkpoints += taken
        if kind == "agent":  # back for the next run
            cluster.restart_agent(home, agent, progress=lambda _: None)
        got = sorted(out.read_text().splitlines()) if out.exists() else []
        same = final["state"] == "finished" and got == expected
        exact += same
        if not same:  # say how it differs
            missing, extra = len(set(expected) - set(got)), len(set(got) - set(expected))
            outcomes.append({"run": i, "state": final["state"], "reason": final["reason"], "lines": len(got),
                             "expected": len(expected), "missing": missing, "extra": extra,
                             "duplicates": len(got) - len(set(got)), "restarts": final["restarts"]})
        print(f"  {mb} MB, kill the {kind}: running again after {running:.2f} s, records flowing after "
              f"{flowing:.2f} s, output {'equal' if same else 'DIFFERENT'}", file=sys.stderr)
    return {"state_mb": mb, "fault": f"kill -9 the stateful operator's {kind}", "faults": faults,
            "kill_to_running_s": running_s, "kill_to_flowing_s": flowing_s,
            "running_p50_s": statistics.median(running_s), "running_p99_s": _p99(running_s),
            "flowing_p50_s": statistics.median(flowing_s), "flowing_p99_s": _p99(flowing_s),
            "checkpoints": checkpoints, "checkpoint_bytes_median": statistics.median(c["bytes"] for c in checkpoints),
            "checkpoint_seconds_median": statistics.median(c["seconds"] for c in checkpoints),
            "outputs_equal_to_fault_free": exact, "outputs_different": outcomes}


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _cluster_processes(home: Path) -> dict[int, list[str]]:
    """The /proc/PID/stat fields (after the command) of the coordinator, the agents and every descendant."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
    tree, grew = set((cluster.read_state(home) or {}).get("pids", [])), True
    while grew:
        more = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        tree |= more
        grew = bool(more)
    return {pid: stats[pid] for pid in tree if pid in stats}


def _cpu_seconds(home: Path, before: set[int], timeout: float = 30.0) -> float:
    """CPU seconds (user + system) the cluster's processes have used so far, children they reaped included, once
    the processes a run added (its hosts) are gone (reaped: their CPU is in their parents' figures)."""
    deadline = time.monotonic() + timeout
    while set(processes := _cluster_processes(home)) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    ticks = sum(int(x) for fields in processes.values() for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _load() -> list[float]:
    return list(os.getloadavg())


def _previous() -> dict:
    """The last run's figures (a part skipped in this run keeps them, with their own date and load average)."""
    path = Path(__file__).parent / "results" / "checkpoints.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=40_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="pairs of throughput runs (one of each configuration)")
    ap.add_argument("--faults", type=int, default=3)
    ap.add_argument("--sizes", default="1,10,100", help="state sizes in MB (comma-separated)")
    ap.add_argument("--kinds", default="host,agent", help="what to kill: host, agent (comma-separated)")
    ap.add_argument("--skip-throughput", action="store_true", help="keep the last run's throughput figures")
    ap.add_argument("--skip-recovery", action="store_true", help="keep the last run's recovery figures")
    ap.add_argument("--skip-incremental", action="store_true",
                    help="keep the last run's checkpoint size and time figures (part 3)")
    args, _ = ap.parse_known_args()
    previous = _previous()
    thr, recs = previous.get("throughput"), previous.get("recovery", [])
    sizes = previous.get("size_and_time")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        cluster.up(3, home, progress=lambda _: None,
                   coordinator_args=["--no-auto-place", "--agent-timeout", str(AGENT_TIMEOUT)])
        try:
            if not args.skip_throughput:
                load = _load()
                thr = throughput(home, tmp, args.records, args.repeat)
                thr["load_average"] = {"start": load, "end": _load()}
                thr["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if not args.skip_recovery:
                recs = []
                for mb in (int(s) for s in args.sizes.split(",")):
                    script, out = _stateful(tmp, f"{mb}mb-local", mb, "None", "None", 40)
                    r = _cli("run", str(script))
                    if r.returncode != 0:
                        raise RuntimeError(r.stderr)
                    expected = sorted(out.read_text().splitlines())
                    for kind in args.kinds.split(","):
                        load = _load()
                        recs.append(recovery(home, tmp, mb, kind, args.faults, expected))
                        recs[-1]["load_average"] = {"start": load, "end": _load()}
                        recs[-1]["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if not args.skip_incremental:
                load = _load()
                sizes = {"runs": [run for mb in (int(s) for s in args.sizes.split(",")) for run in
                                  incremental(home, tmp, mb)],
                         "every_s": SIZE_EVERY, "load_average": {"start": load, "end": _load()},
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        finally:
            cluster.down(home, progress=lambda _: None)
    if thr is not None:
        cpu_med = thr.get("cpu_median_s", {})
        print(table([
            ("canonical job", "median job s", "records/s", "vs no checkpoints", "median CPU s"),
            ("no checkpoints", f"{thr['median_s']['no checkpoints']:.2f}",
             f"{thr['records_per_s']['no checkpoints']:,.0f}", "1.00x", f"{cpu_med.get('no checkpoints', 0):.1f}"),
            ("checkpoints every 10 s", f"{thr['median_s']['checkpoints every 10 s']:.2f}",
             f"{thr['records_per_s']['checkpoints every 10 s']:,.0f}", f"{thr['ratio_with_vs_without']:.2f}x",
             f"{cpu_med.get('checkpoints every 10 s', 0):.1f}"),
        ]))
        if "pair_ratios" in thr:
            print(f"pairs run back to back: ratio median {thr['pair_ratio_median']:.2f}x, min "
                  f"{thr['pair_ratio_min']:.2f}x, max {thr['pair_ratio_max']:.2f}x "
                  f"({', '.join(f'{r:.2f}' for r in thr['pair_ratios'])}); CPU ratio "
                  f"{thr['cpu_ratio_with_vs_without']:.2f}x")
        print(f"checkpoints taken per run: {thr['checkpoints_taken']}; load average (1, 5, 15 min) "
              f"{thr.get('load_average')}\n")
    print(table([("state", "fault", "n", "running again p50/p99 s", "records flowing p50/p99 s",
                  "checkpoint MB", "checkpoint s", "output exact", "load (1 min)")] + [
        (f"{r['state_mb']} MB", r["fault"], str(r["faults"]), f"{r['running_p50_s']:.2f} / {r['running_p99_s']:.2f}",
         f"{r['flowing_p50_s']:.2f} / {r['flowing_p99_s']:.2f}", f"{r['checkpoint_bytes_median'] / 1e6:.1f}",
         f"{r['checkpoint_seconds_median']:.2f}", f"{r['outputs_equal_to_fault_free']}/{r['faults']}",
         f"{r.get('load_average', {}).get('start', [0])[0]:.1f}")
        for r in recs]))
    if sizes is not None:
        print(table([("state", "checkpoints", "hot keys", "sent MB", "vs full", "stored MB", "replica MB", "seconds",
                      "vs full", "store s")] + [
            (f"{r['state_mb']} MB", r["mode"], r["hot_keys"], f"{r['sent_bytes'] / 1e6:.2f}",
             f"{r['sent_vs_full']:.3f}x", f"{r['stored_bytes'] / 1e6:.2f}", f"{r.get('replica_bytes', 0) / 1e6:.2f}",
             f"{r['seconds']:.2f}", f"{r['seconds_vs_full']:.2f}x", f"{r['store_s']:.2f}") for r in sizes["runs"]]))
    path = write_json("checkpoints", {"agent_timeout_s": AGENT_TIMEOUT, "throughput": thr, "recovery": recs,
                                      "size_and_time": sizes})
    print(f"wrote {path}")
    return 0 if all(r["outputs_equal_to_fault_free"] == r["faults"] for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
