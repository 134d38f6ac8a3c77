"""arm64 under emulation (tests/arm64/lane.py) beside this machine's native x86 run, measured in the same run:

- cold start: an example's first run on an empty numba cache (seconds, peak RSS, kernels compiled);
- warm start: the same example's next run;
- `microstream warmup` on an empty cache: per group, seconds, kernels compiled and the peak RSS of its process
  (the memory compiling needs);
- first run of each example after warmup (kernels compiled: 0 expected).

Peak RSS under emulation is QEMU's (guest memory plus translated code): an upper bound for a real Pi. Throughput
under emulation means little (TCG is ~10x slower than a Cortex-A72 at LLVM work); the seconds are for ratios.

    python bench/arm64.py           # `make test-arm64` runs it after the lane's tests; needs root (chroot)

Writes bench/results/arm64.json."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import table, write_json  # noqa: E402

from tests.arm64 import lane  # noqa: E402

EXAMPLES = ("rooms", "water_flow")
NOTE = ("peak RSS under emulation is QEMU's (translated code included); seconds under TCG (on a shared, loaded "
        "machine) are not a Pi's")
Runner = Callable[[list[str], str], lane.Run]


def _counted(run: Runner, src: str, example: str, cwd: str) -> dict[str, Any]:
    done = run(["python", f"{src}/tests/arm64/run_counted.py", f"{src}/examples/sensors/{example}.py"], cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{example} failed:\n{done.stderr[-3000:]}")
    report = done.last_json()
    return {"seconds": round(done.seconds, 2), "peak_rss_mb": done.peak_rss_mb, "compiled": len(report["compiled"])}


def measure(run: Runner, src: str, clear: Callable[[], None], scratch: str,
            save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The figures for one side; `run(cmd, cwd)` runs a command there, `clear()` empties its numba cache, `save`
    records what is measured so far (a slow emulated run keeps its figures if it is stopped)."""
    out: dict[str, Any] = {}
    clear()
    out["cold"] = _counted(run, src, "rooms", f"{scratch}/cold")
    save(out)
    out["warm"] = _counted(run, src, "rooms", f"{scratch}/warm")
    save(out)
    clear()
    done = run(["python", "-m", "microstream.warmup", "--json"], scratch)
    if done.returncode != 0:
        raise RuntimeError(f"warmup failed:\n{done.stderr[-3000:]}")
    groups = json.loads(done.stdout)
    out["warmup"] = {"seconds": round(done.seconds, 1), "groups": groups,
                     "peak_rss_mb": max(g["peak_rss_mb"] for g in groups)}
    save(out)
    out["after_warmup"] = {}
    for ex in EXAMPLES:
        out["after_warmup"][ex] = _counted(run, src, ex, f"{scratch}/after-{ex}")
        save(out)
    return out


def native(save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-arm64-"))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp / "numba"), "PYTHONPATH": str(lane.CHECKOUT)}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}:{env['PATH']}"

    def run(cmd: list[str], cwd: str) -> lane.Run:
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return lane.run_measured(cmd, env=env, cwd=cwd, timeout=3600)

    try:
        return measure(run, str(lane.CHECKOUT), lambda: shutil.rmtree(tmp / "numba", ignore_errors=True), str(tmp),
                       save)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def emulated(save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    with lane.lane(numba_cache="/var/cache/microstream/numba-bench") as chroot:  # apart from the tests' cache
        def run(cmd: list[str], cwd: str) -> lane.Run:
            (chroot.root / cwd.lstrip("/")).mkdir(parents=True, exist_ok=True)
            return chroot.run(cmd, cwd, timeout=7200)

        return measure(run, "/src", chroot.clear_numba_cache, "/tmp/bench-arm64", save)


def main() -> int:
    reason = lane.unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    found: dict[str, Any] = {"arm64_emulated": {}, "x86_native": {}}

    def saver(side: str) -> Callable[[dict[str, Any]], None]:
        def save(figures: dict[str, Any]) -> None:
            found[side] = figures
            write_json("arm64", {**found, "complete": False, "root": lane.recipe(), "note": NOTE})
        return save

    arm = emulated(saver("arm64_emulated"))
    x86 = native(saver("x86_native"))
    rows = [("figure", "arm64 (emulated)", "x86 (native)", "ratio")]

    def row(name: str, a: float, b: float, unit: str) -> None:
        rows.append((name, f"{a:.1f} {unit}", f"{b:.1f} {unit}", f"{a / b:.1f}x" if b else "-"))

    row("rooms, cold cache", arm["cold"]["seconds"], x86["cold"]["seconds"], "s")
    row("rooms, cold: peak RSS", arm["cold"]["peak_rss_mb"], x86["cold"]["peak_rss_mb"], "MB")
    row("rooms, warm cache", arm["warm"]["seconds"], x86["warm"]["seconds"], "s")
    row("rooms, warm: peak RSS", arm["warm"]["peak_rss_mb"], x86["warm"]["peak_rss_mb"], "MB")
    row("warmup, all groups", arm["warmup"]["seconds"], x86["warmup"]["seconds"], "s")
    for ga, gx in zip(arm["warmup"]["groups"], x86["warmup"]["groups"], strict=True):
        row(f"warmup {ga['group']}: peak RSS", ga["peak_rss_mb"], gx["peak_rss_mb"], "MB")
    for ex in EXAMPLES:
        a, x = arm["after_warmup"][ex], x86["after_warmup"][ex]
        row(f"{ex} after warmup ({a['compiled']} compiled)", a["seconds"], x["seconds"], "s")
        row(f"{ex} after warmup: peak RSS", a["peak_rss_mb"], x["peak_rss_mb"], "MB")
    print(table(rows))
    path = write_json("arm64", {"arm64_emulated": arm, "x86_native": x86, "complete": True, "root": lane.recipe(),
                                "note": NOTE})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
