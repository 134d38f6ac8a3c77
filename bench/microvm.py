"""MicroVM host backend (issue 5, first part): what a virtual node costs inside a QEMU microVM, next to
a `process` host measured in the same run.

VM: image build (cold or cached) and sizes, the KVM probe's verdict, boot-to-ready (QEMU launch -> the
guest agent's hello on virtio-serial) split into kernel+init and Python start, control round trip,
`import numpy` in the guest, QEMU's RSS, and whole-VM save (QEMU migration stream through zstd -1)
and restore (new QEMU -> guest answering again).
Process: time until `python -c "import numpy"` reports ready, its RSS.
Template (issue 15 item 5): the agent's ready VM template (`unikernel_backend/template.py`: booted, numba
warmed, saved with its RAM in a file), built or found in the cache, then two VMs restored from it at once:
seconds until each answers, and each QEMU's RSS, PSS and USS (the template's RAM pages they have not written
are shared).
Cluster (`--cluster`): a keyed tumbling-window operator on a 2-agent embedded cluster, with
`backend="microvm"` started from the template (`microvm`), booted cold (`microvm_cold`:
MICROSTREAM_VM_TEMPLATE=off), and as a `process` host: time from submit to running, the host's memory
(QEMU's and the relay's RSS/PSS/USS for a VM), and the inputs-held downtime and total time of a tier-1 move
(barrier snapshot into a new host) and, for the VM, of a tier-2 move (QEMU live migration over TCP). From the
template, a second job's VM vnode runs beside the first for a while: both QEMUs' memory is taken then.

    python bench/microvm.py [--boots N] [--cold] [--cluster]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402

from microstream.unikernel_backend import template as templates  # noqa: E402
from microstream.unikernel_backend.image import build_image, default_cache_dir, ensure_host_tools  # noqa: E402
from microstream.unikernel_backend.relay import MEMORY_MB  # noqa: E402
from microstream.unikernel_backend.vm import MicroVM, probe_accel, smaps_rollup  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_host(repeat: int) -> dict[str, Any]:
    """A `process` host's floor: a Python subprocess that imports numpy and says it is ready."""
    ready, rss = [], []
    code = "import numpy, sys; print('ready', flush=True); sys.stdin.readline()"
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        ready.append(time.perf_counter() - start)
        rss.append(rss_mb(proc.pid))
        proc.stdin.close()
        proc.wait()
    return {"ready_s": statistics.median(ready), "ready_all_s": ready, "rss_mb": statistics.median(rss)}


def boot_once(image: Any, accel: str, workdir: Path) -> dict[str, Any]:
    with MicroVM(image, accel=accel, workdir=workdir) as vm:
        boot = vm.start(timeout=180)
        hello = vm.channel.hello or {}
        rss_boot = vm.rss_mb()
        pings = [vm.channel.ping() for _ in range(20)]
        numpy = vm.channel.import_module("numpy")
        mem = vm.channel.exec("dict(l.split(':') for l in open('/proc/meminfo').read().splitlines()[:3])")
        return {"boot_to_ready_s": boot, "guest_python_started_s": hello.get("python_started"),
                "guest_uptime_at_hello_s": hello.get("uptime"), "rss_after_boot_mb": rss_boot,
                "ping_ms": statistics.median(pings) * 1000, "import_numpy_s": numpy["seconds"],
                "rss_after_numpy_mb": vm.rss_mb(), "guest_meminfo": {k: v.strip() for k, v in mem.items()}}


def save_restore(image: Any, accel: str, workdir: Path) -> dict[str, Any]:
    vm = MicroVM(image, accel=accel, workdir=workdir / "a")
    restored = MicroVM(image, accel=accel, workdir=workdir / "b")
    try:
        vm.start(timeout=180)
        vm.channel.exec("import numpy; state = numpy.arange(1_000_000)")  # ~8 MB of guest state
        saved = vm.save(workdir / "vm.zst")
        start = time.perf_counter()
        info = restored.restore(workdir / "vm.zst")
        value = restored.channel.exec("int(state.sum())")
        answering = time.perf_counter() - start
        assert value == 499999500000, value
        return {"save_s": saved["seconds"], "state_mb": saved["bytes"] / 1e6, "restore_to_cont_s": info["seconds"],
                "restore_to_answer_s": answering, "pause_to_answer_s": saved["seconds"] + answering,
                "rss_after_restore_mb": restored.rss_mb()}
    finally:
        vm.cleanup()
        restored.cleanup()


def template_restore(image: Any, accel: str) -> dict[str, Any]:
    """The agents' template (found, or built now) and two VMs restored from it at once."""
    start = time.perf_counter()
    tmpl = templates.template_for(image, MEMORY_MB, accel=accel, log=lambda _: None)
    out: dict[str, Any] = {"find_or_build_s": time.perf_counter() - start, "key": tmpl.key,
                           **{k: tmpl.info[k] for k in ("boot_s", "warm_s", "save_s", "build_s", "state_bytes",
                                                         "ram_bytes", "memory_mb", "qemu", "machine")}}
    vms = [templates.template_vm(image, tmpl, name=f"bench-t{i}") for i in range(2)]
    try:
        out["restore_to_answer_s"] = [templates.restore_template(vm, tmpl) for vm in vms]
        out["warm_in_guest"] = [vm.channel.exec("_vmhost._WARMED[0] > 0") for vm in vms]
        out["memory_mb_each"] = [vm.memory() for vm in vms]
    finally:
        for vm in vms:
            vm.cleanup()
    return out


def _memory(status: dict[str, Any]) -> dict[str, Any]:
    """A running vnode's host memory (MB): for a VM, its QEMU's and its relay's."""
    out: dict[str, Any] = {}
    vm = status.get("vm") or {}
    if vm.get("pid"):
        out["qemu"] = smaps_rollup(int(vm["pid"]))
    if status.get("pid"):
        out["relay" if vm else "host"] = smaps_rollup(int(status["pid"]))
    return out


def _wait_running(c: Any, name: str, timeout: float = 900) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job, status in c.status()["jobs"].items():
            if status["name"] == name and status["state"] == "running":
                return job, status
        time.sleep(0.1)
    raise TimeoutError(f"{name} not running within {timeout} s")


def _vm_stats(c: Any, job: str, vn: str, vm: bool = True, timeout: float = 60) -> dict[str, Any]:
    """The vnode's status once its host has reported stats (for a VM: its QEMU's pid and how it started)."""
    deadline = time.monotonic() + timeout
    while True:
        status = c.status()["jobs"][job]["vnodes"][vn]
        if ((status.get("vm") or {}).get("pid") if vm else status.get("pid")) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def cluster_moves(backend: str, tmpdir: Path, template: str = "on") -> dict[str, Any]:
    """One job on an embedded 2-agent cluster, its window vnode moved mid-stream (tier 2 then 1 for a VM)."""
    import os
    import threading

    import microstream as ms
    from microstream.cluster import embedded as cluster
    from microstream.cluster.client import Client

    def pipeline(name: str) -> Any:
        p = ms.Pipeline(name)
        # 300 s of stream at most (the job is stopped once measured): a cold VM's tier-1 move takes a boot
        src = p.synthetic(count=300_000, sensors=20, rate=4000, seed=11, speed=0.25, batch_size=400)
        win = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(),
                                                                            mean=ms.agg.mean("value"))
        win.with_backend(backend).sink(ms.sinks.collect())
        return p

    p = pipeline("benchvm")
    home = tmpdir / f"cluster-{backend}-{template}"
    os.environ["TMPDIR"] = str(tmpdir)
    os.environ["MICROSTREAM_VM_TEMPLATE"] = template  # the agents (and their relays) inherit it
    cluster.up(2, home, progress=lambda _: None, coordinator_args=["--no-auto-place"])
    out: dict[str, Any] = {"template_mode": template if backend == "microvm" else None}
    try:
        with Client(cluster.address(home), timeout=300) as sub, Client(cluster.address(home), timeout=300) as c:
            start = time.perf_counter()
            ended: dict[str, Any] = {}

            def submit() -> None:
                try:
                    ended["result"] = sub.submit(p)
                except Exception as exc:  # noqa: BLE001 - stopped by us once measured
                    ended["error"] = str(exc)

            thread = threading.Thread(target=submit)
            thread.start()
            job, status = _wait_running(c, "benchvm")
            out["submit_to_running_s"] = time.perf_counter() - start
            vn = next(v for v, i in status["vnodes"].items() if "window_aggregate" in i["tasks"])
            time.sleep(3)
            stats = _vm_stats(c, job, vn, vm=backend == "microvm")
            out["host_stats"] = {k: stats.get(k) for k in ("state", "agent", "vm")}
            out["memory_mb"] = _memory(stats)
            if backend == "microvm" and template == "on":  # a second VM vnode from the same template, beside it
                start = time.perf_counter()
                job2 = sub.submit(pipeline("benchvm2"), wait=False)
                job2, status2 = _wait_running(c, "benchvm2")
                second: dict[str, Any] = {"submit_to_running_s": time.perf_counter() - start}
                vn2 = next(v for v, i in status2["vnodes"].items() if "window_aggregate" in i["tasks"])
                time.sleep(3)
                both = [_vm_stats(c, job, vn), _vm_stats(c, job2, vn2)]
                second["memory_mb_both"] = [_memory(s) for s in both]
                second["start"] = [(s.get("vm") or {}).get("start") for s in both]
                out["second_vnode"] = second
                c.stop(job2)
            def move(whole: bool) -> dict[str, Any]:
                here = c.status()["jobs"][job]["vnodes"][vn]["agent"]
                r = c.migrate(job, vn, "node1" if here == "node2" else "node2", timeout=300, whole=whole)
                figures = {"downtime_s": r.get("downtime_s"), "total_s": r["total_s"],
                           "state_bytes": r.get("state_bytes"), "vm": r.get("vm"),
                           "align_and_snapshot_s": r.get("align_and_snapshot_s")}
                time.sleep(2)
                if not whole and backend == "microvm":  # how the tier-1 move's new VM started
                    figures["new_vm"] = (_vm_stats(c, job, vn).get("vm") or {})
                return figures

            # tier 1 first, from the VM the job started with (3 moves from the template: their median; one from
            # a cold boot, ~2 min each here), then tier 2 (whole VM), then for a VM one more tier-1 move (of the
            # VM that arrived whole, into a new one)
            ones = [move(False) for _ in range(3 if template == "on" or backend == "process" else 1)]
            out["tier1_all"] = ones
            out["tier1"] = sorted(ones, key=lambda m: m["total_s"])[len(ones) // 2]
            if backend == "microvm":
                out["tier2"] = move(True)
                if template == "on":
                    out["tier1_after_tier2"] = move(False)
            c.stop(job)  # measured: no need to wait for the stream's end
            thread.join(300)
    finally:
        cluster.down(home, progress=lambda _: None)
        os.environ.pop("MICROSTREAM_VM_TEMPLATE", None)
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time a cold image build (into a temporary cache)")
    ap.add_argument("--cluster", action="store_true", help="also move a window vnode on an embedded cluster")
    args = ap.parse_args()
    installed = ensure_host_tools()
    results: dict[str, Any] = {"host_packages_installed": installed, "load_at_start": _load()}
    with tempfile.TemporaryDirectory(prefix="bench-microvm-") as tmp:
        tmpdir = Path(tmp)
        if args.cold:
            cold = build_image(cache_dir=tmpdir / "cold", deb_cache=default_cache_dir() / "debs")
            results["cold_build_s"] = cold.seconds
        image = build_image()
        again = build_image(progress=lambda _: None)
        results.update(image_key=image.key, cached_build_s=again.seconds, sizes_bytes=image.sizes)
        start = time.perf_counter()
        accel = probe_accel(image)
        results.update(accel=accel, probe_s=time.perf_counter() - start)
        boots = [boot_once(image, accel, tmpdir / f"boot{i}") for i in range(args.boots)]
        results["boots"] = boots
        results["save_restore"] = save_restore(image, accel, tmpdir / "migrate")
        results["template"] = template_restore(image, accel)
        if args.cluster:
            results["cluster"] = {"microvm": cluster_moves("microvm", tmpdir, "on"),
                                  "microvm_cold": cluster_moves("microvm", tmpdir, "off"),
                                  "process": cluster_moves("process", tmpdir)}
    results["load_at_end"] = _load()
    if max(results["load_at_start"] + results["load_at_end"]) > 4:
        results["note"] = ("load average above 4 at the start or end of this run (2 cores shared with other "
                           "benchmarks and tests): the timings are slower than on a quiet machine")
    results["process"] = process_host(args.boots)
    vm_boot = statistics.median(b["boot_to_ready_s"] for b in boots)
    vm_numpy = statistics.median(b["boot_to_ready_s"] + b["import_numpy_s"] for b in boots)
    results["summary"] = {"vm_boot_to_ready_s": vm_boot, "vm_ready_with_numpy_s": vm_numpy,
                          "template_restore_to_answer_s": max(results["template"]["restore_to_answer_s"]),
                          "process_ready_with_numpy_s": results["process"]["ready_s"],
                          "vm_rss_mb": statistics.median(b["rss_after_numpy_mb"] for b in boots),
                          "process_rss_mb": results["process"]["rss_mb"]}
    if "cluster" in results:
        cl = results["cluster"]
        results["summary"].update(
            vm_submit_to_running_s={"template": cl["microvm"]["submit_to_running_s"],
                                    "cold": cl["microvm_cold"]["submit_to_running_s"]},
            vm_tier1_total_s={"template": cl["microvm"]["tier1"]["total_s"],
                              "cold": cl["microvm_cold"]["tier1"]["total_s"]},
            vm_qemu_memory_mb={"template": cl["microvm"]["memory_mb"].get("qemu"),
                               "cold": cl["microvm_cold"]["memory_mb"].get("qemu")})
    path = write_json("microvm", results)
    sizes = image.sizes
    sr = results["save_restore"]
    proc = results["process"]
    rows = [("", "microVM (" + accel + ")", "process host"),
            ("ready (s)", f"{vm_boot:.2f} boot, {vm_numpy:.2f} with numpy", f"{proc['ready_s']:.2f} with numpy"),
            ("RSS (MB)", f"{results['summary']['vm_rss_mb']:.0f}", f"{proc['rss_mb']:.0f}"),
            ("image (MB)", f"kernel {sizes['kernel'] / 1e6:.1f}, initramfs {sizes['initramfs'] / 1e6:.1f}, "
             f"root {sizes['rootfs'] / 1e6:.1f}", "-"),
            ("save (s, MB)", f"{sr['save_s']:.2f} s, {sr['state_mb']:.1f} MB", "n/a (no CRIU here)"),
            ("restore (s)", f"{sr['restore_to_cont_s']:.2f} to cont, {sr['restore_to_answer_s']:.2f} answering",
             "n/a"),
            ("control ping (ms)", f"{statistics.median(b['ping_ms'] for b in boots):.1f}", "-")]
    print(table(rows))
    tr = results["template"]
    print(table([("template", f"{tr['key']}, {tr['memory_mb']} MB guest"),
                 ("built (s)", f"{tr['build_s']} (boot {tr['boot_s']}, warm-up {tr['warm_s']}, save {tr['save_s']})"),
                 ("files (MB)", f"device state {tr['state_bytes'] / 1e6:.2f}, RAM file {tr['ram_bytes'] / 1e6:.0f}"),
                 ("2 VMs restored at once", ", ".join(f"{s:.2f} s" for s in tr["restore_to_answer_s"]) + " to answer"),
                 ("each QEMU (MB)", "; ".join(f"RSS {m['rss']:.0f} PSS {m['pss']:.0f} USS {m['uss']:.0f}"
                                               for m in tr["memory_mb_each"]))]))
    if args.cluster:
        cl = results["cluster"]
        vmc, cold, prc = cl["microvm"], cl["microvm_cold"], cl["process"]

        def move(m: dict) -> str:
            return f"held {m['downtime_s']:.2f} s, total {m['total_s']:.1f} s" if m else "-"

        def memory(m: dict) -> str:
            q = m.get("qemu") or m.get("host") or {}
            return f"RSS {q.get('rss', 0):.0f} / PSS {q.get('pss', 0):.0f}"

        start_ratio = cold["submit_to_running_s"] / vmc["submit_to_running_s"]
        move_ratio = cold["tier1"]["total_s"] / vmc["tier1"]["total_s"]
        print(table([("cluster", "microVM (template)", "microVM (cold)", "process", "cold / template"),
                     ("submit -> running (s)", f"{vmc['submit_to_running_s']:.1f}",
                      f"{cold['submit_to_running_s']:.1f}", f"{prc['submit_to_running_s']:.1f}", f"{start_ratio:.1f}x"),
                     ("tier 1 move", move(vmc["tier1"]), move(cold["tier1"]), move(prc["tier1"]),
                      f"{move_ratio:.1f}x total"),
                     ("tier 2 move (whole VM)", move(vmc["tier2"]), move(cold["tier2"]), "n/a", "-"),
                     ("tier 1 after tier 2", move(vmc.get("tier1_after_tier2", {})), "-", "-", "-"),
                     ("QEMU / host memory (MB)", memory(vmc["memory_mb"]), memory(cold["memory_mb"]),
                      memory(prc["memory_mb"]), "-")]))
        second = vmc.get("second_vnode")
        if second:
            print("two VM vnodes from one template: " + "; ".join(memory(m) for m in second["memory_mb_both"]) + " MB")
    print(f"KVM probe: {accel} ({results['probe_s']:.1f} s); cached image build {again.seconds:.2f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
