"""arm64 under emulation (tests/arm64/lane.py) beside this machine's native x86 run, measured in the same run:

- cold start: an example's first run on an empty numba cache (seconds, peak RSS, kernels compiled);
- warm start: the same example's next run;
- `microstream warmup` on an empty cache: per group, seconds, kernels compiled and the peak RSS of its process
  (the memory compiling needs);
- first run of each example after warmup (kernels compiled: 0 expected);
- the resident set of each process of an idle one-agent embedded cluster (coordinator, agent, the agent's fork
  server, which each host of a virtual node is forked from).

On the emulated side, `make test-arm64`'s test has just run warmup on an empty cache and the examples after it (what
it asserts on); when it did so on the same sources in the same root (tests/arm64/lane.py `load_figures`), those
runs' figures are recorded here, saying so (`warmup_measured_by`), instead of compiling for another half hour. The
load average is recorded with each side's phases: the seconds depend on it, the memory figures do not.

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
import time
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


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _counted(run: Runner, src: str, example: str, cwd: str) -> dict[str, Any]:
    done = run(["python", f"{src}/tests/arm64/run_counted.py", f"{src}/examples/sensors/{example}.py"], cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{example} failed:\n{done.stderr[-3000:]}")
    return lane.counted_figures(done)


def _descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = list(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rss_by_role(pids: list[int]) -> dict[str, float]:
    """VmRSS (MB) of the cluster's processes by role (under emulation: QEMU's resident set)."""
    roles = {"microstream.cli coordinator": "coordinator", "microstream.cli agent": "agent",
             "microstream.runtime.forkserver": "agent's fork server (template of its hosts)"}
    rss: dict[str, float] = {}
    for pid in _descendants(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        role = next((name for key, name in roles.items() if key in cmdline), None)
        vm = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        if role and vm:
            rss[role] = round(int(vm[0]) / 1024, 1)
    return rss


def _processes(run: Runner, scratch: str, local: Callable[[str], Path]) -> dict[str, Any]:
    """An embedded cluster with one agent (`microstream cluster up`), idle: the resident set of each process once
    none of them has changed for 2 s (under qemu-user the agent has no fork server: it cannot become a child
    subreaper there, so it spawns its hosts)."""
    home = f"{scratch}/cluster"
    up = run(["microstream", "cluster", "up", "--nodes", "1", "--detach", "--home", home], scratch)
    try:
        if up.returncode != 0:
            return {"error": f"cluster up failed: {up.stderr.strip()[-800:]}"}
        pids = json.loads((local(home) / "cluster.json").read_text())["pids"]
        seen: list[tuple[float, dict[str, float]]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            rss = _rss_by_role(pids)
            if len(rss) < 2 or not seen or seen[-1][1] != rss:
                seen.append((time.monotonic(), rss))
            elif time.monotonic() - seen[-1][0] >= 2.0:
                return {"idle_rss_mb": rss, "seconds_to_idle": round(seen[-1][0] - seen[0][0], 1)}
            time.sleep(0.5)
        return {"error": f"not idle within 600 s: {seen[-1][1] if seen else {}}"}
    finally:
        run(["microstream", "cluster", "down", "--home", home], scratch)


def measure(run: Runner, src: str, clear: Callable[[], None], scratch: str,
            save: Callable[[dict[str, Any]], None], local: Callable[[str], Path],
            measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures for one side; `run(cmd, cwd)` runs a command there, `clear()` empties its numba cache, `save`
    records what is measured so far (a slow emulated run keeps its figures if it is stopped), `local(path)` is
    where a path there is here. `measured`: the warmup and after-warmup figures the lane's test took on these
    sources (recorded instead of measured again)."""
    out: dict[str, Any] = {"load_average": {"start": _load()}}
    clear()
    out["cold"] = _counted(run, src, "rooms", f"{scratch}/cold")
    save(out)
    out["warm"] = _counted(run, src, "rooms", f"{scratch}/warm")
    out["load_average"]["after_cold_warm"] = _load()
    save(out)
    out["processes"] = _processes(run, scratch, local)
    save(out)
    if measured is not None:
        out["warmup"], out["after_warmup"] = measured["warmup"], measured["after_warmup"]
        out["warmup_measured_by"] = (f"tests/arm64/test_arm64.py at {measured['when']} on the same sources "
                                     f"(load average {measured['load_average']})")
        save(out)
        return out
    clear()
    done = run(["python", "-m", "microstream.warmup", "--json"], scratch)
    if done.returncode != 0:
        raise RuntimeError(f"warmup failed:\n{done.stderr[-3000:]}")
    out["warmup"] = lane.warmup_figures(done)
    out["load_average"]["after_warmup"] = _load()
    save(out)
    out["after_warmup"] = {}
    for ex in EXAMPLES:
        out["after_warmup"][ex] = _counted(run, src, ex, f"{scratch}/after-{ex}")
        save(out)
    out["load_average"]["end"] = _load()
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
                       save, Path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def emulated(save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    with lane.lane(numba_cache="/var/cache/microstream/numba-bench") as chroot:  # apart from the tests' cache
        def run(cmd: list[str], cwd: str) -> lane.Run:
            (chroot.root / cwd.lstrip("/")).mkdir(parents=True, exist_ok=True)
            return chroot.run(cmd, cwd, timeout=7200)

        measured = lane.load_figures(chroot.source)
        print("warmup and the runs after it: " + ("the lane's test measured them on these sources" if measured
                                                   else "measuring them (no figures from the lane's test)"))
        return measure(run, "/src", chroot.clear_numba_cache, "/tmp/bench-arm64", save,
                       lambda path: chroot.root / path.lstrip("/"), measured)


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
    for role in arm["processes"].get("idle_rss_mb", {}):
        if role in x86["processes"].get("idle_rss_mb", {}):
            row(f"idle {role}: RSS", arm["processes"]["idle_rss_mb"][role], x86["processes"]["idle_rss_mb"][role],
                "MB")
    print(table(rows))
    path = write_json("arm64", {"arm64_emulated": arm, "x86_native": x86, "complete": True, "root": lane.recipe(),
                                "note": NOTE})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
