"""The canonical workload through microstream and its peers, side by side in one run (issue 15, item 6).

The same input (bench/canonical.py's synthetic records, written once to an .npz every configuration reads), the
same job (drop values outside [-50, 150], key by sensor, 10 s tumbling event-time windows aligned to the epoch,
count/mean/min/max), through:

- a plain Python dict loop, numpy whole-array, a hand-written numba kernel (bench/canonical.py's, compiled or
  loaded before the timer);
- microstream local: `from_arrays`, and `from_iterable` of Python records (the dicts built before the timer);
- microstream on an embedded 3-agent cluster, windows with parallelism 2 (the records generated in the source's
  host by the same generator and seed): submit -> results, and the steady state without deployment,
  (N - 1000) / (t(N records) - t(1000 records)) over two jobs submitted back to back;
- streamz (1000-record batches) and Bytewax (1 worker; 2 workers, one process each), installed by this benchmark
  into their own virtualenv (never a dependency of microstream; cached in ~/.cache/microstream/peers-venv or
  $MICROSTREAM_PEERS_VENV), run from bench/peers/.

Each configuration runs in a fresh process, 3 times (the median is reported); each writes its aggregates and the
run checks that all of them are identical (a checksum over the sorted aggregates). Timers start after imports
and after the input is in memory; they include building the job. The load average is read at the start and the
end (the machine is shared).

    python bench/peers.py [--records N] [--repeat R] [--quick] [--no-peers]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from canonical import HI, LO, WINDOW, _canon, make_data, run_from_iterable, run_hand, run_python  # noqa: E402
from common import table, write_json  # noqa: E402

PEER_SCRIPTS = HERE / "peers"
PEER_PACKAGES = ["streamz", "numpy"]
BYTEWAX_CHOICES = ["bytewax==0.21.*", "bytewax"]  # 0.21 if it installs, else the newest that does
LOCAL = ["python_loop", "numpy", "hand_kernel", "ms_from_arrays", "ms_from_iterable"]
PEERS = ["streamz", "bytewax_1", "bytewax_2"]
LABELS = {
    "hand_kernel": "hand-written numba streaming kernel (compiled before the timer)",
    "numpy": "numpy whole-array",
    "ms_from_arrays": "microstream local, from_arrays",
    "python_loop": "plain Python dict loop",
    "ms_from_iterable": "microstream local, from_iterable of Python dicts",
    "streamz": "streamz, 1000-record batches",
    "cluster_submit": "microstream embedded cluster, 3 agents, windows x2 (submit -> results)",
    "cluster_steady": "microstream embedded cluster, steady state (deploy excluded)",
    "bytewax_2": "Bytewax {v}, 2 workers (2 processes)",
    "bytewax_1": "Bytewax {v}, 1 worker",
}


# -- the peers' virtualenv -------------------------------------------------------------------------------------

def venv_dir() -> Path:
    return Path(os.environ.get("MICROSTREAM_PEERS_VENV") or Path.home() / ".cache" / "microstream" / "peers-venv")


def peers_venv(path: Path | None = None, log: Any = print) -> tuple[Path | None, dict[str, Any]]:
    """The peers' virtualenv, built on first use (python -m venv, pip from PyPI) and reused after: (its python,
    {"bytewax": version, ...}), or (None, {"error": why}) if it cannot be built."""
    path = path or venv_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    python = path / "bin" / "python"
    marker = path / "microstream-peers.json"
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a benchmark and a test may both want it built
        if marker.exists() and python.exists():
            versions = _probe(python)
            if versions:
                return python, versions
        log(f"building the peers' virtualenv in {path} (streamz, Bytewax; once, then cached)")
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], capture_output=True, text=True)
        if made.returncode:
            return None, {"error": f"python -m venv failed: {made.stderr.strip()[-500:]}"}
        error = ""
        for bytewax in BYTEWAX_CHOICES:
            pip = subprocess.run([str(python), "-m", "pip", "install", "-q", bytewax, *PEER_PACKAGES],
                                 capture_output=True, text=True, timeout=900)
            if pip.returncode == 0:
                break
            error = pip.stderr.strip()[-800:]
            log(f"pip install {bytewax} failed; trying the next choice")
        else:
            return None, {"error": f"pip install failed: {error}"}
        versions = _probe(python)
        if not versions:
            return None, {"error": "the peers' packages installed but do not import"}
        marker.write_text(json.dumps(versions) + "\n")
        return python, versions


def _probe(python: Path) -> dict[str, Any] | None:
    code = ("import json, importlib.metadata as m, bytewax, streamz, numpy\n"
            "print(json.dumps({p: m.version(p) for p in ('bytewax', 'streamz', 'numpy')}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


# -- implementations that live here ------------------------------------------------------------------------------

def run_numpy(cols: dict[str, np.ndarray]) -> dict:
    """Whole-array numpy over dense [window, sensor] cells; `bincount` adds each cell's values in input order,
    so sums equal the sequential ones bit for bit."""
    v = cols["value"]
    keep = (v >= LO) & (v <= HI)
    t, s, v = cols["time"][keep], cols["sensor"][keep], v[keep]
    w = t // WINDOW
    w0, n_sensors = int(w.min()), int(s.max()) + 1
    cell = (w - w0) * n_sensors + s
    size = int(cell.max()) + 1
    cnt = np.bincount(cell, minlength=size)
    tot = np.bincount(cell, weights=v, minlength=size)
    mn = np.full(size, np.inf)
    mx = np.full(size, -np.inf)
    np.minimum.at(mn, cell, v)
    np.maximum.at(mx, cell, v)
    nz = np.flatnonzero(cnt)
    return _canon(nz % n_sensors, (nz // n_sensors + w0) * WINDOW, cnt[nz], tot[nz] / cnt[nz], mn[nz], mx[nz])


def cluster_pipeline(records: int, start: int) -> tuple[Any, Any]:
    """The canonical job with the same records generated in the source's host (same generator, seed and first
    time as the input file) and windows with parallelism 2."""
    import microstream as ms

    p = ms.Pipeline("canonical-peers")
    out = ms.sinks.collect()
    (p.synthetic(count=records, sensors=1000, rate=1000.0, glitch_rate=0.01, seed=42, start=start)
     .filter(lambda b: (b["value"] >= LO) & (b["value"] <= HI))
     .key_by("sensor").window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .with_parallelism(2).sink(out))
    return p, out


def _collected(out: Any) -> dict:
    b = out.batch()
    return _canon(b["sensor"], b["window_start"], b["n"], b["mean"], b["min"], b["max"])


# -- one configuration in a fresh process -----------------------------------------------------------------------

def child(config: str, input_path: str, out: str, home: str | None) -> None:
    with np.load(input_path) as data:
        cols = {k: data[k] for k in ("sensor", "time", "value")}
    report: dict[str, Any] = {}
    if config == "cluster":
        from microstream.cluster import embedded
        from microstream.cluster.client import Client

        assert home is not None
        with Client(embedded.address(Path(home)), timeout=120) as client:
            first = int(cols["time"][0])
            tiny, _ = cluster_pipeline(1000, first)
            start = time.perf_counter()
            client.submit(tiny, output=None)
            report["deploy_s"] = time.perf_counter() - start
            p, sink = cluster_pipeline(len(cols["time"]), first)
            start = time.perf_counter()
            client.submit(p, output=None)
            report["seconds"] = time.perf_counter() - start
        result = _collected(sink)
    elif config == "ms_from_iterable":
        records = [{"time": t, "sensor": k, "value": v} for t, k, v in
                   zip(cols["time"].tolist(), cols["sensor"].tolist(), cols["value"].tolist(), strict=True)]
        start = time.perf_counter()
        result = run_from_iterable(records)
        report["seconds"] = time.perf_counter() - start
    else:
        if config == "ms_from_arrays":
            from canonical import build_pipeline, run_microstream

            def fn() -> dict:
                p, sink = build_pipeline(cols)  # building the job is part of its cost
                return run_microstream(p, sink)
        else:
            fn = {"python_loop": lambda: run_python(cols), "numpy": lambda: run_numpy(cols),
                  "hand_kernel": lambda: run_hand(cols)}[config]
            if config == "hand_kernel":
                run_hand(make_data(1000))  # numba's start-up and the kernel (compiled or loaded) before the timer
        start = time.perf_counter()
        result = fn()
        report["seconds"] = time.perf_counter() - start
    np.savez(out, **result, late=np.zeros(0, np.int64))
    print(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_config(config: str, input_path: Path, work: Path, peer_python: Path | None, home: Path | None,
               run: int) -> tuple[dict[str, Any], dict]:
    """One run of `config` in fresh processes: (timings, canonical aggregates)."""
    out = work / f"{config}.{run}"
    timeout = 1800
    if config in PEERS:
        assert peer_python is not None
        if config == "bytewax_2":
            barrier = work / f"barrier.{run}"
            barrier.mkdir()
            addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(2))
            procs = [subprocess.Popen([str(peer_python), str(PEER_SCRIPTS / "bytewax_flow.py"), str(input_path),
                                       str(out), "--process", str(i), "--addresses", addresses, "--barrier",
                                       str(barrier), "--processes", "2"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for i in range(2)]
            outs = [p.communicate(timeout=timeout) for p in procs]
            for p, (_, err) in zip(procs, outs, strict=True):
                if p.returncode:
                    raise RuntimeError(f"{config} failed ({p.returncode}): {err[-2000:]}")
            spans = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
        else:
            script = "streamz_flow.py" if config == "streamz" else "bytewax_flow.py"
            done = subprocess.run([str(peer_python), str(PEER_SCRIPTS / script), str(input_path), str(out)],
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode:
                raise RuntimeError(f"{config} failed ({done.returncode}): {done.stderr[-2000:]}")
            spans = [json.loads(done.stdout.strip().splitlines()[-1])]
        timing = {"seconds": max(s["end"] for s in spans) - min(s["start"] for s in spans)}
    else:
        args = [sys.executable, __file__, "--child", config, "--input", str(input_path), "--out", str(out)]
        if home is not None:
            args += ["--home", str(home)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{config} failed ({done.returncode}): {done.stderr[-2000:]}")
        timing = json.loads(done.stdout.strip().splitlines()[-1])
    parts = [np.load(f) for f in sorted(work.glob(f"{out.name}.*npz"))]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}
    timing["late"] = int(cols["late"].sum())
    for f in work.glob(f"{out.name}.*npz"):
        f.unlink()
    return timing, _canon(cols["sensor"], cols["start"], cols["n"], cols["mean"], cols["min"], cols["max"])


def checksum(result: dict) -> str:
    h = hashlib.sha256()
    for name, dtype in (("sensor", np.int64), ("start", np.int64), ("n", np.int64), ("mean", np.float64),
                        ("min", np.float64), ("max", np.float64)):
        h.update(name.encode())
        h.update(np.ascontiguousarray(result[name], dtype=dtype).tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def embedded_cluster(nodes: int = 3) -> Any:
    from microstream.cluster import embedded

    with tempfile.TemporaryDirectory(prefix="ms-peers-cluster-") as tmp:
        home = Path(tmp)
        embedded.up(nodes, home, progress=lambda t: print(t, file=sys.stderr))
        try:
            yield home
        finally:
            embedded.down(home, progress=lambda t: print(t, file=sys.stderr))


# -- the run ----------------------------------------------------------------------------------------------------

def _rate(n: int, s: float) -> str:
    r = n / s
    return f"{r / 1e6:.2f} M" if r >= 1e6 else f"{r / 1e3:.0f} k"


def measure(records: int, repeat: int, configs: list[str], peer_python: Path | None, log: Any = print,
            start: int | None = None) -> dict[str, Any]:
    """Run every configuration `repeat` times, each in fresh processes; medians, checksums, identity."""
    cols = make_data(records) if start is None else _shifted(records, start)
    runs: dict[str, list[dict[str, Any]]] = {}
    sums: dict[str, set[str]] = {}
    windows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ms-peers-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        input_path = work / "input.npz"
        np.savez(input_path, **cols)
        home = None
        if "cluster" in configs:
            home = stack.enter_context(embedded_cluster())
            run_config("cluster", input_path, work, None, home, -1)  # the cluster's first job warms its hosts
        for r in range(repeat):  # interleaved, so a burst of load on the machine hits every configuration
            for config in configs:
                timing, result = run_config(config, input_path, work, peer_python, home, r)
                runs.setdefault(config, []).append(timing)
                sums.setdefault(config, set()).add(checksum(result))
                windows[config] = len(result["n"])
                log(f"  {config} run {r + 1}/{repeat}: {timing['seconds']:.3f} s")
    reference = sums.get("python_loop") or next(iter(sums.values()))
    return {"runs": runs, "checksums": {k: sorted(v) for k, v in sums.items()}, "windows": windows,
            "identical": all(v == reference for v in sums.values()) and all(
                t["late"] == 0 for rs in runs.values() for t in rs)}


def _shifted(records: int, start_ns: int) -> dict[str, np.ndarray]:
    """The canonical records starting at `start_ns` (windows then cut the stream mid-way, not at its start)."""
    from microstream.sources.synthetic import generate

    return generate(0, records, seed=42, sensors=1000, rate=1000.0, glitch_rate=0.01, start=start_ns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100,000 records, one run of each configuration")
    ap.add_argument("--no-peers", action="store_true", help="leave out streamz and Bytewax (no virtualenv)")
    ap.add_argument("--no-cluster", action="store_true", help="leave out the embedded cluster")
    ap.add_argument("--check", action="store_true",
                    help="correctness only: print the checksums as JSON, write no results, exit 1 if they differ")
    ap.add_argument("--start", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.input, args.out, args.home)
        return 0
    records, repeat = (100_000, 1) if args.quick else (args.records, args.repeat)

    load_start = os.getloadavg()
    configs = list(LOCAL) + ([] if args.no_cluster else ["cluster"])
    peer_python, versions = (None, {"error": "left out (--no-peers)"}) if args.no_peers else peers_venv()
    if peer_python is None:
        banner = "!" * 100
        print(f"{banner}\n!!! PEERS SKIPPED: streamz and Bytewax not measured: {versions['error']}\n{banner}",
              file=sys.stderr, flush=True)
    else:
        configs += PEERS
        print(f"peers: {', '.join(f'{k} {v}' for k, v in versions.items())} in {peer_python.parent.parent}")
    print(f"canonical workload, {records:,} records, {repeat} run(s) of each configuration, each in a fresh "
          f"process; load average at the start {load_start[0]:.1f} (1 min) on {os.cpu_count()} cpus", flush=True)
    res = measure(records, repeat, configs, peer_python, start=args.start)
    load_end = os.getloadavg()
    if args.check:
        print(json.dumps({"checksums": res["checksums"], "windows": res["windows"], "identical": res["identical"],
                          "late": {k: [t["late"] for t in v] for k, v in res["runs"].items()}, "versions": versions}))
        return 0 if res["identical"] else 1

    med = {k: statistics.median(t["seconds"] for t in v) for k, v in res["runs"].items()}
    if "cluster" in med:
        cl = res["runs"].pop("cluster")
        med.pop("cluster")
        med["cluster_submit"] = statistics.median(t["seconds"] for t in cl)
        steady = [(records - 1000) / (t["seconds"] - t["deploy_s"]) for t in cl]
        med["cluster_steady"] = records / statistics.median(steady)  # as seconds for N records
        deploy = statistics.median(t["deploy_s"] for t in cl)
        res["runs"]["cluster"] = cl
    order = [k for k in LABELS if k in med]
    order.sort(key=lambda k: med[k])
    hand, loop = med.get("hand_kernel"), med.get("python_loop")
    rows = [("configuration", "records/s", "seconds", "vs hand kernel", "vs Python loop")]
    bw = versions.get("bytewax", "")
    for k in order:
        rows.append((LABELS[k].format(v=bw), _rate(records, med[k]), f"{med[k]:.3f}",
                     f"{hand / med[k]:.3f}x" if hand else "-", f"{loop / med[k]:.2f}x" if loop else "-"))
    print(table(rows))
    if "cluster_submit" in med:
        print(f"cluster: deploying the same job on 1,000 records takes {deploy:.2f} s (median); steady state = "
              f"(N - 1000) / (submit->results - that)")
    same = res["identical"]
    print(f"identical aggregates in every run of every configuration: {same} "
          f"({next(iter(res['windows'].values())):,} windows; checksum {res['checksums']['python_loop'][0][:16]})")
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}")
    path = write_json("peers", {
        "records": records, "repeat": repeat, "identical": same, "checksums": res["checksums"],
        "windows": res["windows"], "versions": versions, "peers_skipped": peer_python is None,
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "seconds_median": med, "records_per_s": {k: records / v for k, v in med.items()},
        "ratio_vs_hand_kernel": {k: hand / v for k, v in med.items()} if hand else {},
        "ratio_vs_python_loop": {k: loop / v for k, v in med.items()} if loop else {},
        "cluster_deploy_s": deploy if "cluster_submit" in med else None, "runs": res["runs"]})
    print(f"wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
