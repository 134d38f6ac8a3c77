"""`microstream warmup`: compile the numba kernels a typical job needs into numba's on-disk cache, once per machine.

A cold cache costs a small machine dearly: on a Raspberry Pi class CPU (measured under emulation, see
docs/arm64.md) the first run of a windowed example compiles for ~100 s and peaks at ~450 MB, where a warm one
starts in seconds. `warmup()` pays that once, at install time, with its memory bounded: the kernels are
compiled in groups, each in its own short-lived process, one after the other, so the peak is that of the
largest group rather than of everything a long-running host would accumulate.

The groups run small pipelines through the public API (the same code paths as a real job, so the cache keys
match what a job looks up): file parsing (CSV, then JSON lines, the usual timestamp shapes), ring windows
(tumbling and sliding), session windows, and joins with the built-in `ms.state` steps. Kernels that depend on
user code (`ms.agg.reduce` functions, custom `stateful_map` steps) cannot be compiled ahead and still compile
on first use.

The cache is wherever numba puts it for this environment: `NUMBA_CACHE_DIR` if set (the systemd units set
it), else next to microstream's sources, or ~/.cache/numba when those are read-only. Run warmup as the user and
with the environment of the service that will use it. numba keys its cache by CPU model: warm up on the
machine (or the CPU model) that runs the jobs.

    microstream warmup                  # all groups, a progress line per group
    microstream warmup --group windows --json    # one group, results as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]


# -- the workloads ------------------------------------------------------------------------------------------
def _synthetic(p: Any, filtered: bool) -> Any:
    src = p.synthetic(count=3000, sensors=16, rate=4000, jitter=0.2, max_delay=0.1, seed=1, batch_size=400,
                      glitch_rate=0.01)
    return src.filter(lambda b: (b["value"] > -50) & (b["value"] < 150)) if filtered else src


def _aggregates(ms: Any, column: str, times: bool) -> dict[str, Any]:
    aggs = dict(n=ms.agg.count(), mean=ms.agg.mean(column), sd=ms.agg.std(column), var=ms.agg.var(column),
                lo=ms.agg.min(column), hi=ms.agg.max(column), total=ms.agg.sum(column))
    if times:
        aggs.update(first=ms.agg.first(column), last=ms.agg.last(column))
    return aggs


def _windows(ms: Any, specs: tuple[Any, ...]) -> None:
    """Every specialisation of these window kernels without user-defined aggregates: x filtered or compacted
    input (a record mask or not), x with or without first/last (record times), keyed by int and by str."""
    import itertools

    for spec, filtered, times in itertools.product(specs, (False, True), (False, True)):
        p = ms.Pipeline("warmup")
        src = _synthetic(p, filtered)
        src.key_by("sensor").window(spec, lateness=0.05).aggregate(**_aggregates(ms, "value", times)).sink(
            ms.sinks.collect())
        if times:  # string keys (tags, names)
            named = src.with_columns(room=lambda b: (b["sensor"] % 4).astype(str))
            named.key_by("room").window(spec).aggregate(**_aggregates(ms, "value", False)).with_parallelism(
                2).sink(ms.sinks.collect())  # two tasks: keys hashed for partitioning
        p.run()


def _ring(ms: Any) -> None:
    _windows(ms, (ms.tumbling(seconds=1), ms.sliding({"seconds": 2}, {"seconds": 1})))


def _session(ms: Any) -> None:
    _windows(ms, (ms.session(seconds=1),))


def _joins_state(ms: Any) -> None:
    for filtered in (False, True):
        p = ms.Pipeline("warmup")
        keyed = _synthetic(p, filtered).key_by("sensor")
        for step in (ms.state.delta, ms.state.rate, ms.state.cumsum):
            keyed.stateful_map(step, "value", out="y", state_size=step.state_size).sink(ms.sinks.collect())
        keyed.stateful_map(ms.state.ewma(0.2), "value", out="smooth", state_size=2).sink(ms.sinks.collect())
        # integer keys outside [0, 2**20) (negative here) are interned through a typed dict: its own kernel
        _synthetic(p, filtered).with_columns(device=lambda b: b["sensor"] - 8).key_by("device").stateful_map(
            ms.state.delta, "value", out="y", state_size=ms.state.delta.state_size).sink(ms.sinks.collect())
        hourly = keyed.window(ms.tumbling(seconds=1)).aggregate(m=ms.agg.mean("value")).with_parallelism(2)
        stats = keyed.window(ms.sliding({"seconds": 2}, {"seconds": 1})).aggregate(sd=ms.agg.std("value"))
        hourly.join(stats, ms.tumbling(seconds=1)).sink(ms.sinks.collect())
        p.run()


def _files(ms: Any, fmt: str) -> None:
    """CSV or JSON lines with the usual column types and timestamp shapes, written out again."""
    with tempfile.TemporaryDirectory(prefix="microstream-warmup-") as tmp:
        d = Path(tmp)
        shapes = {  # timestamp column -> how the rows spell it
            "naive": lambda i: f"2015-02-04 17:{i // 60 % 60:02d}:{i % 60:02d}",
            "iso_offset": lambda i: f"2022-03-27T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+01:00",
            "iso_z": lambda i: f"2022-03-27T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.250Z",
            "epoch_s": lambda i: f"{1700000000 + i}",
            "epoch_frac": lambda i: f"{1700000000 + i}.5",
        }
        for shape, stamp in shapes.items():
            path = d / f"{shape}.{fmt}"
            if fmt == "csv":
                rows = [f"{stamp(i)},{i % 7},{20.5 + i % 13 * 0.25},{i % 2},room{i % 3},{'true' if i % 2 else 'false'}"
                        for i in range(600)]
                rows.append("not a time,1,2.5,0,room1,true")  # a malformed row: the dead-letter path
                path.write_text("time,id,value,flag,name,ok\n" + "\n".join(rows) + "\n")
            else:
                lines = [json.dumps({"time": stamp(i), "id": i % 7, "value": 20.5 + i % 13 * 0.25,
                                     "name": f"room{i % 3}", "ok": bool(i % 2)}) for i in range(600)]
                lines.append("{not json")
                path.write_text("\n".join(lines) + "\n")
            p = ms.Pipeline("warmup")
            stream = p.read_csv(path, time="time", tags={"site": "a"}) if fmt == "csv" else \
                p.read_jsonl(path, time="time")
            stream.filter(lambda b: b["value"] > 0).sink(ms.sinks.csv(d / f"out-{shape}.csv"))
            stream.sink(ms.sinks.jsonl(d / f"out-{shape}.jsonl"))
            stream.key_by("name").window(ms.tumbling(minutes=10)).aggregate(
                **_aggregates(ms, "value", False)).sink(ms.sinks.collect())
            p.dead_letters().sink(ms.sinks.jsonl(d / f"dead-{shape}.jsonl"))
            p.run()


def _moves(ms: Any) -> None:
    from .runtime.statexfer import warm

    warm()


def _placement(ms: Any) -> None:
    from .placement.anneal import warm

    warm()


# name -> (what it compiles, the workload); run in this order, one process each
GROUPS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "csv": ("CSV parsing, timestamps, file sinks", lambda ms: _files(ms, "csv")),
    "jsonl": ("JSON-lines parsing", lambda ms: _files(ms, "jsonl")),
    "windows": ("tumbling and sliding window kernels", _ring),
    "sessions": ("session window kernels", _session),
    "joins_state": ("joins and the ms.state steps", _joins_state),
    "moves": ("a live move's state transfer (chunk hashes, dirty rows)", _moves),
    "placement": ("the placement heuristic's annealer (a coordinator's)", _placement),
}


# -- counting compilations ----------------------------------------------------------------------------------
@contextlib.contextmanager
def compiles() -> Iterator[list[str]]:
    """Collect what numba compiles (not what it loads from its cache) inside the block, as `name(types)`.

    >>> with compiles() as done: pass
    >>> done
    []
    """
    from .runtime.progress import listen_to_compiles, stop_listening

    done: list[str] = []

    def seen(ev: Any) -> None:
        data = ev.data or {}
        name = getattr(getattr(data.get("dispatcher"), "py_func", None), "__qualname__", "?")
        done.append(f"{name}{tuple(data.get('args', ()))}")

    listener = listen_to_compiles(seen)
    try:
        yield done
    finally:
        stop_listening(listener)


def run_group(name: str) -> dict[str, Any]:
    """Run one group's workload in this process; what it compiled and how long it took."""
    import microstream as ms

    start = time.perf_counter()
    with compiles() as done:
        GROUPS[name][1](ms)
    return {"group": name, "seconds": round(time.perf_counter() - start, 2), "compiled": len(done)}


# -- the driver ---------------------------------------------------------------------------------------------
@dataclass
class GroupResult:
    """One group's run: wall time, kernels compiled (0 when the cache had them all) and the peak resident set
    of its process (what compiling costs in memory)."""

    group: str
    seconds: float
    compiled: int
    peak_rss_mb: float


def cache_location() -> str:
    """Where numba's cache goes in this environment (for the progress output)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    return "next to microstream's sources (__pycache__), or ~/.cache/numba where they are read-only"


def warmup(groups: list[str] | None = None, progress: Progress = print, python: str = sys.executable,
           env: dict[str, str] | None = None, timeout: float | None = None) -> list[GroupResult]:
    """Compile `groups` (default: all, in `GROUPS` order) into numba's cache, one process per group, sequentially.

    `timeout` (seconds per group, default none: a slow machine, or an emulated one, may take tens of minutes)
    ends a group that takes longer. Raises RuntimeError (with the group's error output) if a group fails."""
    names = list(GROUPS) if groups is None else groups
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown warmup group {', '.join(unknown)}: one of {', '.join(GROUPS)}")
    environment = {**os.environ, **(env or {}), "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    progress(f"warming numba's cache ({environment.get('NUMBA_CACHE_DIR') or cache_location()}): "
             f"{len(names)} groups, one process each")
    results = []
    for i, name in enumerate(names, 1):
        progress(f"[{i}/{len(names)}] {name}: {GROUPS[name][0]} ...")
        result = _run_child(name, python, environment, timeout)
        results.append(result)
        progress(f"[{i}/{len(names)}] {name}: {result.compiled} kernels compiled in {result.seconds:.1f} s, "
                 f"peak {result.peak_rss_mb:.0f} MB")
    return results


def _run_child(name: str, python: str, env: dict[str, str], timeout: float | None) -> GroupResult:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([python, "-m", "microstream.warmup", "--child", name], stdout=out, stderr=err,
                                env=env)
        peak_kb = _wait_peak_rss_kb(proc, name, timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"warmup group {name!r} failed (exit {proc.returncode}):\n{stderr.strip()[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return GroupResult(name, report["seconds"], report["compiled"], round(peak_kb / 1024, 1))


def _wait_peak_rss_kb(proc: subprocess.Popen, name: str, timeout: float | None) -> int:
    """Wait for `proc` and return its peak resident set in KiB (ru_maxrss from wait4: the process's own
    high-water mark, not inherited from its parent)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return int(usage.ru_maxrss)
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"warmup group {name!r} timed out after {timeout:.0f} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="microstream warmup",
                                 description=textwrap.fill("Compile the numba kernels a typical job needs into "
                                                           "numba's cache (once per machine, at install time), "
                                                           "one process per group."),
                                 epilog="examples:\n  microstream warmup\n  microstream warmup --group windows "
                                        "--group csv --timeout 600\n  microstream warmup --json",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=sorted(GROUPS), action="append", dest="groups",
                    help="only this group (repeatable; default: all)")
    ap.add_argument("--json", action="store_true", help="print the per-group results as JSON")
    ap.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="end a group that takes longer than S seconds (default: no limit)")
    ap.add_argument("--child", choices=sorted(GROUPS), help=argparse.SUPPRESS)  # what warmup() runs per group
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_group(args.child)))
        return 0
    try:
        results = warmup(args.groups, progress=(lambda line: print(line, file=sys.stderr)) if args.json else print,
                         timeout=args.timeout)
    except RuntimeError as exc:
        print(f"microstream warmup: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
