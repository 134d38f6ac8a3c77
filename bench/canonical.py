"""The canonical workload (issue 2): microstream's local runtime against a hand-written numba kernel
(the ceiling) and a plain Python dict loop (the floor), on the same columnar arrays, in one run.

2,000,000 synthetic records (1,000 sensors, ~1 ms apart, one float value, 1 % glitches), drop values
outside [-50, 150], key by sensor, 10 s tumbling event-time windows, count/mean/min/max per key and
window. All three must produce identical aggregates. Also: peak RSS and numba compile time on a cold
and a warm cache (each measured in a fresh subprocess).

    python bench/canonical.py [--records N] [--repeat R]
    python bench/canonical.py --fresh-only [--fresh-records N] [--repeat R]   # the fresh first job only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, peak_rss_mb, table, write_json  # noqa: E402

import microstream as ms  # noqa: E402
from microstream.sources.synthetic import generate  # noqa: E402

WINDOW = 10 * 10**9
LO, HI = -50.0, 150.0


def make_data(n: int) -> dict[str, np.ndarray]:
    return generate(0, n, seed=42, sensors=1000, rate=1000.0, glitch_rate=0.01)


# -- (1) microstream -----------------------------------------------------------------------------

def build_pipeline(cols: dict[str, np.ndarray]) -> tuple[ms.Pipeline, ms.sinks.Collect]:
    p = ms.Pipeline("canonical")
    out = ms.sinks.collect()
    (p.from_arrays(cols, time="time", batch_size=65536)
     .filter(lambda b: (b["value"] >= LO) & (b["value"] <= HI))
     .key_by("sensor")
     .window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .sink(out))
    return p, out


def run_microstream(p: ms.Pipeline, out: ms.sinks.Collect) -> dict:
    p.run(verbose=False)
    b = out.batch()
    return _canon(b["sensor"], b["window_start"], b["n"], b["mean"], b["min"], b["max"])


# -- (2) the ceiling: one hand-written numba loop over dense arrays ---------------------------------

@numba.njit(cache=True)
def _hand_kernel(sensor, t, v, size, n_sensors, lo, hi):
    w0 = t.min() // size
    n_win = t.max() // size - w0 + 1
    cnt = np.zeros((n_win, n_sensors), np.int64)
    tot = np.zeros((n_win, n_sensors))
    mn = np.full((n_win, n_sensors), np.inf)
    mx = np.full((n_win, n_sensors), -np.inf)
    for i in range(len(t)):
        x = v[i]
        if x < lo or x > hi:
            continue
        w = t[i] // size - w0
        k = sensor[i]
        cnt[w, k] += 1
        tot[w, k] += x
        if x < mn[w, k]:
            mn[w, k] = x
        if x > mx[w, k]:
            mx[w, k] = x
    return w0, cnt, tot, mn, mx


def run_hand(cols: dict[str, np.ndarray]) -> dict:
    w0, cnt, tot, mn, mx = _hand_kernel(cols["sensor"], cols["time"], cols["value"], WINDOW, 1000, LO, HI)
    w, k = np.nonzero(cnt)
    return _canon(k, (w + w0) * WINDOW, cnt[w, k], tot[w, k] / cnt[w, k], mn[w, k], mx[w, k])


# -- (3) the floor: a plain Python dict loop ----------------------------------------------------------

def run_python(cols: dict[str, np.ndarray]) -> dict:
    acc: dict[tuple[int, int], list] = {}
    for s, t, x in zip(cols["sensor"].tolist(), cols["time"].tolist(), cols["value"].tolist(), strict=True):
        if x < LO or x > HI:
            continue
        key = (s, t // WINDOW * WINDOW)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, x, x, x]
        else:
            a[0] += 1
            a[1] += x
            if x < a[2]:
                a[2] = x
            if x > a[3]:
                a[3] = x
    return _from_loop(acc)


def _from_loop(acc: dict[tuple[int, int], list]) -> dict:
    """A Python loop's (sensor, window start) -> [count, sum, min, max], as the other implementations' columns."""
    keys = list(acc)
    vals = np.array([acc[k] for k in keys])
    ks = np.array(keys)
    return _canon(ks[:, 0], ks[:, 1], vals[:, 0].astype(np.int64), vals[:, 1] / vals[:, 0], vals[:, 2], vals[:, 3])


def _canon(sensor, start, n, mean, lo, hi) -> dict:
    order = np.lexsort((np.asarray(sensor), np.asarray(start)))
    return {name: np.asarray(col)[order] for name, col in
            (("sensor", sensor), ("start", start), ("n", n), ("mean", mean), ("min", lo), ("max", hi))}


def identical(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


# -- compile time and RSS, each in a fresh process -----------------------------------------------------

def child(records: int) -> None:
    """Build and run the pipeline once; print compile+run time and peak RSS as JSON."""
    rss_import = peak_rss_mb()
    cols = make_data(records)
    rss_data = peak_rss_mb()
    start = time.perf_counter()
    p, out = build_pipeline(cols)
    run_microstream(p, out)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run_microstream(p, out)
    second = time.perf_counter() - start
    rss = peak_rss_mb()
    print(json.dumps({"first_run_s": first, "second_run_s": second, "peak_rss_mb": rss,
                      "rss_after_import_mb": rss_import, "rss_after_data_mb": rss_data}))


def run_python_records(records: list[dict]) -> dict:
    """The floor for Python records: the same dict loop over dicts (what `from_iterable` is given)."""
    acc: dict[tuple[int, int], list] = {}
    for r in records:
        x = r["value"]
        if x < LO or x > HI:
            continue
        key = (r["sensor"], r["time"] // WINDOW * WINDOW)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, x, x, x]
        else:
            a[0] += 1
            a[1] += x
            if x < a[2]:
                a[2] = x
            if x > a[3]:
                a[3] = x
    return _from_loop(acc)


def run_from_iterable(records: list[dict]) -> dict:
    p = ms.Pipeline("canonical-records")
    out = ms.sinks.collect()
    (p.from_iterable(records, time="time")
     .filter(lambda b: (b["value"] >= LO) & (b["value"] <= HI))
     .key_by("sensor").window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .sink(out))
    return run_microstream(p, out)


def fresh_child(records: int) -> None:
    """A fresh process, warm cache: the first job's build + run, against the hand kernel compiled (loaded) before
    its timer as in issue 15; then from_iterable of Python dicts against the dict loop over the same dicts."""
    cols = make_data(records)
    run_hand(make_data(1000))  # numba's own start-up and the hand kernel, before any timer
    start = time.perf_counter()
    p, out = build_pipeline(cols)
    r_ms = run_microstream(p, out)
    first = time.perf_counter() - start
    start = time.perf_counter()
    r_hand = run_hand(cols)
    hand = time.perf_counter() - start
    recs = [{"time": t, "sensor": k, "value": v} for t, k, v in
            zip(cols["time"].tolist(), cols["sensor"].tolist(), cols["value"].tolist(), strict=True)]
    start = time.perf_counter()
    r_it = run_from_iterable(recs)
    it = time.perf_counter() - start
    start = time.perf_counter()
    r_py = run_python_records(recs)
    py = time.perf_counter() - start
    same = identical(r_ms, r_hand) and identical(r_ms, r_it) and identical(r_ms, r_py)
    print(json.dumps({"first_run_s": first, "hand_s": hand, "from_iterable_s": it, "python_records_s": py,
                      "identical": same}))


def breakdown_child(records: int) -> None:
    """Where a fresh process's first job goes, against its second: as `fresh_child`, with the job in phases
    (importing microstream's runtime, building, running, collecting the result), the time numba spends loading
    kernels from the cache (its dispatcher's compile path) and the time in garbage collections. Instrumented, so
    not the timed runs: only the split is read from it."""
    import gc
    import resource

    from numba.core.dispatcher import Dispatcher

    cols = make_data(records)
    run_hand(make_data(1000))
    loads: list[float] = []
    compile_for_args = getattr(Dispatcher, "_compile_for_args")  # noqa: B009 - numba's private compile/load path

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return compile_for_args(self, *args, **kwargs)
        finally:
            loads.append(time.perf_counter() - start)

    setattr(Dispatcher, "_compile_for_args", timed)  # noqa: B010
    collections: list[float] = []
    gc.callbacks.append(lambda phase, info: collections.append(time.perf_counter() * (1 if phase == "stop" else -1)))

    def job(first: bool) -> dict[str, float]:
        phases, faults = {}, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loads.clear()
        collections.clear()
        start = time.perf_counter()
        if first:
            ms.Pipeline, ms.sinks, ms.agg, ms.tumbling  # noqa: B018 - the lazy imports, as build_pipeline does
            import microstream.runtime.local  # noqa: F401 - what the first run() imports
        phases["import_s"] = time.perf_counter() - start
        mark = time.perf_counter()
        p, out = build_pipeline(cols)
        phases["build_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        p.run(verbose=False)
        phases["run_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        b = out.batch()
        _canon(b["sensor"], b["window_start"], b["n"], b["mean"], b["min"], b["max"])
        phases["result_s"] = time.perf_counter() - mark
        phases["total_s"] = time.perf_counter() - start
        phases["kernel_loads_s"], phases["kernels_loaded"] = sum(loads), len(loads)
        phases["gc_s"] = sum(collections)  # -start + stop of each collection
        phases["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return phases

    first = job(True)
    second = job(False)
    print(json.dumps({"first_job": first, "second_job": second}))


def fresh(records: int, cache_dir: str, pyc_dir: str, mode: str = "--fresh") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(NUMBA_CACHE_DIR=cache_dir, PYTHONPYCACHEPREFIX=pyc_dir)  # compiled .py as installed, numba warm
    out = subprocess.run([sys.executable, __file__, mode, "--records", str(records)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# a user's script in a fresh process, as it is run: nothing warmed before the timer; with scipy installed or not
# (the `placement` extra: numba imports scipy.linalg wherever it is installed, when it first loads a kernel)
SCRIPT = """
import importlib.abc, json, sys, time
if {block}:
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "scipy":
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
start = time.perf_counter()
import microstream as ms
from microstream.sources.synthetic import generate
imported = time.perf_counter() - start
cols = generate(0, {records}, seed=42, sensors=1000, rate=1000.0, glitch_rate=0.01)

def job():
    p = ms.Pipeline("canonical")
    out = ms.sinks.collect()
    (p.from_arrays(cols, time="time").filter(lambda b: (b["value"] >= {lo}) & (b["value"] <= {hi}))
     .key_by("sensor").window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .sink(out))
    p.run(verbose=False)
    return len(out.batch()["n"])

cpu, start = time.process_time(), time.perf_counter(); windows = job()
first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
start = time.perf_counter(); job(); second = time.perf_counter() - start
print(json.dumps({{"import_s": imported, "first_job_s": first, "first_job_cpu_s": first_cpu, "second_job_s": second,
                  "windows": windows,
                  "scipy_imported": any(m.split(".")[0] == "scipy" for m in sys.modules)}}))
"""


def fresh_script(records: int, cache_dir: str, pyc_dir: str, block_scipy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(NUMBA_CACHE_DIR=cache_dir, PYTHONPYCACHEPREFIX=pyc_dir)
    code = SCRIPT.format(block=block_scipy, records=records, lo=LO, hi=HI)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_child(records: int, cache_dir: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, __file__, "--child", "--records", str(records)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def breakdown(records: int, cache: str, pyc: str, repeat: int) -> dict:
    """The median split of `repeat` instrumented fresh processes (`breakdown_child`), and each run's."""
    runs = [fresh(records, cache, pyc, "--breakdown") for _ in range(repeat)]
    med = {job: {k: statistics.median(r[job][k] for r in runs) for k in runs[0][job]}
           for job in ("first_job", "second_job")}
    return {**med, "runs": runs}


def print_breakdown(split: dict) -> None:
    first, second = split["first_job"], split["second_job"]
    rows: list[tuple[str, ...]] = [("ms (median)", "import", "build", "run", "of it: kernel loads", "result",
                                     "total", "in GC", "page faults")]
    for name, j in (("first job", first), ("second job", second)):
        rows.append((name, *(f"{j[k] * 1000:.1f}" for k in ("import_s", "build_s", "run_s", "kernel_loads_s",
                                                             "result_s", "total_s", "gc_s")),
                     f"{j['page_faults']:,.0f}"))
    print(f"where the first job's time goes (instrumented fresh processes; {first['kernels_loaded']:.0f} kernels "
          f"loaded from the cache):")
    print(table(rows))


def fresh_only(records: int, repeat: int) -> int:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as pyc:
        fresh(records, cache, pyc)  # writes the .pyc files and fills the cache
        runs = [fresh(records, cache, pyc) for _ in range(repeat)]
        split = breakdown(records, cache, pyc, repeat)
    print_breakdown(split)
    first, hand = (statistics.median(r[k] for r in runs) for k in ("first_run_s", "hand_s"))
    for r in runs:
        print(f"first job {r['first_run_s']:.3f} s, hand kernel {r['hand_s']:.3f} s, identical {r['identical']}")
    print(f"{records:,} records, median of {repeat} fresh processes: first job {first:.3f} s, hand kernel "
          f"{hand:.3f} s: {hand / first:.2f}x (target 0.5x)")
    return 0 if all(r["identical"] for r in runs) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fresh-records", type=int, default=1_000_000)
    ap.add_argument("--fresh-only", action="store_true",
                    help="only the fresh-process first job against the hand kernel (median of --repeat processes on "
                         "a cache filled first); prints, writes no JSON")
    args = ap.parse_args()
    if args.child:
        child(args.records)
        return 0
    if args.fresh:
        fresh_child(args.records)
        return 0
    if args.breakdown:
        breakdown_child(args.records)
        return 0
    if args.fresh_only:
        return fresh_only(args.fresh_records, args.repeat)

    n = args.records
    print(f"canonical workload: {n:,} records, 1,000 sensors, filter, key_by, 10 s tumbling, count/mean/min/max")
    cols = make_data(n)
    p, out = build_pipeline(cols)
    run_microstream(p, out)  # warm-up (compiles or loads numba's cache)
    run_hand(cols)
    t_ms, best_ms, r_ms = best_of(lambda: run_microstream(p, out), args.repeat)
    t_hand, best_hand, r_hand = best_of(lambda: run_hand(cols), args.repeat)
    t_py, best_py, r_py = best_of(lambda: run_python(cols), 1)
    same = identical(r_ms, r_hand) and identical(r_ms, r_py)

    with tempfile.TemporaryDirectory() as cache:
        cold = in_child(n, cache)
        warm = in_child(n, cache)
        with tempfile.TemporaryDirectory() as pyc:
            fresh(args.fresh_records, cache, pyc)  # writes the .pyc files and fills the cache
            runs = [fresh(args.fresh_records, cache, pyc) for _ in range(3)]
            split = breakdown(args.fresh_records, cache, pyc, 3)
            fresh_script(args.fresh_records, cache, pyc, False)  # the script's own .pyc
            scripts: dict[str, list[dict]] = {"with_scipy": [], "without_scipy": []}
            for _ in range(3):  # interleaved: both see the same load
                scripts["with_scipy"].append(fresh_script(args.fresh_records, cache, pyc, False))
                scripts["without_scipy"].append(fresh_script(args.fresh_records, cache, pyc, True))
    med = {k: statistics.median(r[k] for r in runs) for k in ("first_run_s", "hand_s", "from_iterable_s",
                                                               "python_records_s")}
    fresh_same = all(r["identical"] for r in runs)
    compile_cold = cold["first_run_s"] - cold["second_run_s"]
    compile_warm = warm["first_run_s"] - warm["second_run_s"]

    rows = [("", "records/s (median)", "seconds", "vs hand kernel", "vs python loop")]
    for name, t in (("microstream local runtime", t_ms), ("hand-written numba kernel", t_hand),
                    ("python dict loop", t_py)):
        rows.append((name, f"{n / t:,.0f}", f"{t:.4f}", f"{t_hand / t:.2f}x", f"{t_py / t:.1f}x"))
    print(table(rows))
    print(f"identical aggregates: {same} ({len(r_ms['n']):,} windows)")
    print(f"peak RSS (warm cache): {warm['peak_rss_mb']:.0f} MB in all; {warm['rss_after_import_mb']:.0f} MB after "
          f"importing microstream, {warm['rss_after_data_mb']:.0f} MB with the input arrays, so running the "
          f"pipeline added {warm['peak_rss_mb'] - warm['rss_after_data_mb']:.0f} MB")
    print(f"numba compile+load overhead of the first run: cold cache {compile_cold:.2f} s, "
          f"warm cache {compile_warm:.2f} s")
    target = t_hand / t_ms
    print(f"target microstream >= 0.5x hand kernel: {'met' if target >= 0.5 else 'NOT met'} ({target:.2f}x)")
    m = args.fresh_records
    fresh_ratio, it_ratio = med["hand_s"] / med["first_run_s"], med["python_records_s"] / med["from_iterable_s"]
    print(f"\n{m:,} records, each in a fresh process with a warm cache (median of 3), identical: {fresh_same}")
    print(table([("", "seconds", "records/s", "ratio"),
                 ("microstream first job (build + run)", f"{med['first_run_s']:.3f}", f"{m / med['first_run_s']:,.0f}",
                  f"{fresh_ratio:.2f}x the hand kernel"),
                 ("hand-written numba kernel", f"{med['hand_s']:.3f}", f"{m / med['hand_s']:,.0f}", "1.00x"),
                 ("microstream from_iterable of dicts", f"{med['from_iterable_s']:.3f}",
                  f"{m / med['from_iterable_s']:,.0f}", f"{it_ratio:.2f}x the dict loop"),
                 ("python dict loop over the same dicts", f"{med['python_records_s']:.3f}",
                  f"{m / med['python_records_s']:,.0f}", "1.00x")]))
    print(f"targets: first job >= 0.5x hand kernel {'met' if fresh_ratio >= 0.5 else 'NOT met'}; from_iterable "
          f">= 1.0x dict loop {'met' if it_ratio >= 1.0 else 'NOT met'}")
    print_breakdown(split)
    script_med = {name: {k: statistics.median(r[k] for r in rs)
                         for k in ("import_s", "first_job_s", "first_job_cpu_s", "second_job_s")}
                  for name, rs in scripts.items()}
    with_s, without_s = script_med["with_scipy"], script_med["without_scipy"]
    print(f"\na fresh script (import microstream, then the {m:,}-record job twice; nothing warmed; median of 3):")
    print(table([("", "import", "first job", "its CPU", "second job", "first job's fixed cost"),
                 *[(name.replace("_", " "), f"{s['import_s']:.3f}", f"{s['first_job_s']:.3f}",
                    f"{s['first_job_cpu_s']:.3f}", f"{s['second_job_s']:.3f}",
                    f"{s['first_job_s'] - s['second_job_s']:.3f}") for name, s in script_med.items()]]))
    script_ratio = without_s["first_job_s"] / with_s["first_job_s"]
    cpu_ratio = without_s["first_job_cpu_s"] / with_s["first_job_cpu_s"]
    print(f"first job without scipy installed: {script_ratio:.2f}x the time with it ({cpu_ratio:.2f}x its CPU)")
    path = write_json("canonical", {
        "records": n, "windows": int(len(r_ms["n"])), "identical": bool(same),
        "records_per_s": {"microstream": n / t_ms, "hand_kernel": n / t_hand, "python_loop": n / t_py},
        "seconds_median": {"microstream": t_ms, "hand_kernel": t_hand, "python_loop": t_py},
        "seconds_min": {"microstream": best_ms, "hand_kernel": best_hand, "python_loop": best_py},
        "ratio_vs_hand_kernel": target, "ratio_vs_python_loop": t_py / t_ms,
        "peak_rss_mb": warm["peak_rss_mb"], "rss_after_import_mb": warm["rss_after_import_mb"],
        "rss_after_data_mb": warm["rss_after_data_mb"],
        "compile_s": {"cold_cache": compile_cold, "warm_cache": compile_warm},
        "target_ratio_vs_hand_kernel": 0.5,
        "fresh_process": {"records": m, "identical": fresh_same, "seconds_median": med, "runs": runs,
                          "first_job_vs_hand_kernel": fresh_ratio, "from_iterable_vs_dict_loop": it_ratio,
                          "targets": {"first_job_vs_hand_kernel": 0.5, "from_iterable_vs_dict_loop": 1.0},
                          "breakdown": split},
        "fresh_script": {"records": m, "seconds_median": script_med, "runs": scripts,
                         "first_job_without_vs_with_scipy": script_ratio,
                         "first_job_cpu_without_vs_with_scipy": cpu_ratio,
                         "scipy_imported": {k: [r["scipy_imported"] for r in rs] for k, rs in scripts.items()}}})
    print(f"wrote {path}")
    return 0 if same and fresh_same else 1


if __name__ == "__main__":
    sys.exit(main())
