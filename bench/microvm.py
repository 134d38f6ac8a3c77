"""MicroVM host backend (issue 5, first part): what a virtual node costs inside a QEMU microVM, next to
a `process` host measured in the same run.

VM: image build (cold or cached) and sizes, the KVM probe's verdict, boot-to-ready (QEMU launch -> the
guest agent's hello on virtio-serial) split into kernel+init and Python start, control round trip,
`import numpy` in the guest, QEMU's RSS, and whole-VM save (QEMU migration stream through zstd -1)
and restore (new QEMU -> guest answering again).
Process: time until `python -c "import numpy"` reports ready, its RSS.
Cluster (`--cluster`): a keyed tumbling-window operator on a 2-agent embedded cluster, once with
`backend="microvm"` and once as a `process` host: time from submit to running, the host's RSS, and the
inputs-held downtime and total time of a tier-1 move (barrier snapshot into a new host) and, for the VM,
of a tier-2 move (QEMU live migration over TCP).

    python bench/microvm.py [--boots N] [--cold] [--cluster]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json  # noqa: E402

from microstream.unikernel_backend.image import build_image, default_cache_dir, ensure_host_tools  # noqa: E402
from microstream.unikernel_backend.vm import MicroVM, probe_accel  # noqa: E402


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


def cluster_moves(backend: str, tmpdir: Path) -> dict[str, Any]:
    """One job on an embedded 2-agent cluster, its window vnode moved mid-stream (tier 2 then 1 for a VM)."""
    import os
    import threading

    import microstream as ms
    from microstream.cluster import embedded as cluster
    from microstream.cluster.client import Client

    p = ms.Pipeline("benchvm")
    src = p.synthetic(count=200_000, sensors=20, rate=4000, seed=11, speed=0.5, batch_size=400)
    win = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"))
    win.with_backend(backend).sink(ms.sinks.collect())
    home = tmpdir / f"cluster-{backend}"
    os.environ["TMPDIR"] = str(tmpdir)
    cluster.up(2, home, progress=lambda _: None, coordinator_args=["--no-auto-place"])
    out: dict[str, Any] = {}
    try:
        with Client(cluster.address(home), timeout=300) as sub, Client(cluster.address(home), timeout=300) as c:
            start = time.perf_counter()
            thread = threading.Thread(target=lambda: sub.submit(p))
            thread.start()
            while not c.status()["jobs"] or next(iter(c.status()["jobs"].values()))["state"] != "running":
                time.sleep(0.2)
            out["submit_to_running_s"] = time.perf_counter() - start
            job, status = next(iter(c.status()["jobs"].items()))
            vn = next(v for v, i in status["vnodes"].items() if "window_aggregate" in i["tasks"])
            time.sleep(3)
            stats = c.status()["jobs"][job]["vnodes"][vn]
            out["host_stats"] = {k: stats.get(k) for k in ("state", "agent")}
            for tier, whole in ((2, True), (1, False)) if backend == "microvm" else ((1, False),):
                here = c.status()["jobs"][job]["vnodes"][vn]["agent"]
                r = c.migrate(job, vn, "node1" if here == "node2" else "node2", timeout=300, whole=whole)
                out[f"tier{tier}"] = {"downtime_s": r.get("downtime_s"), "total_s": r["total_s"],
                                      "state_bytes": r.get("state_bytes"), "vm": r.get("vm")}
                time.sleep(2)
            thread.join(300)
    finally:
        cluster.down(home, progress=lambda _: None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time a cold image build (into a temporary cache)")
    ap.add_argument("--cluster", action="store_true", help="also move a window vnode on an embedded cluster")
    args = ap.parse_args()
    installed = ensure_host_tools()
    results: dict[str, Any] = {"host_packages_installed": installed}
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
        if args.cluster:
            results["cluster"] = {b: cluster_moves(b, tmpdir) for b in ("microvm", "process")}
    results["process"] = process_host(args.boots)
    vm_boot = statistics.median(b["boot_to_ready_s"] for b in boots)
    vm_numpy = statistics.median(b["boot_to_ready_s"] + b["import_numpy_s"] for b in boots)
    results["summary"] = {"vm_boot_to_ready_s": vm_boot, "vm_ready_with_numpy_s": vm_numpy,
                          "process_ready_with_numpy_s": results["process"]["ready_s"],
                          "vm_rss_mb": statistics.median(b["rss_after_numpy_mb"] for b in boots),
                          "process_rss_mb": results["process"]["rss_mb"]}
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
    if args.cluster:
        vmc, prc = results["cluster"]["microvm"], results["cluster"]["process"]

        def move(m: dict) -> str:
            return f"held {m['downtime_s']:.2f} s, total {m['total_s']:.1f} s" if m else "-"

        print(table([("cluster", "microVM", "process", "ratio"),
                     ("submit -> running (s)", f"{vmc['submit_to_running_s']:.1f}", f"{prc['submit_to_running_s']:.1f}",
                      f"{vmc['submit_to_running_s'] / prc['submit_to_running_s']:.0f}x"),
                     ("tier 1 move", move(vmc["tier1"]), move(prc["tier1"]),
                      f"{vmc['tier1']['total_s'] / prc['tier1']['total_s']:.0f}x total"),
                     ("tier 2 move (whole VM)", move(vmc["tier2"]) + f", VM paused {vmc['tier2']['vm']['downtime_ms']} "
                      f"ms, {vmc['tier2']['vm']['ram_bytes'] / 1e6:.0f} MB sent", "n/a", "-")]))
    print(f"KVM probe: {accel} ({results['probe_s']:.1f} s); cached image build {again.seconds:.2f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
