"""MicroVM host backend (issue 5, first part): what a virtual node costs inside a QEMU microVM, next to
a `process` host measured in the same run.

VM: image build (cold or cached) and sizes, the KVM probe's verdict, boot-to-ready (QEMU launch -> the
guest agent's hello on virtio-serial) split into kernel+init and Python start, control round trip,
`import numpy` in the guest, QEMU's RSS, and whole-VM save (QEMU migration stream through zstd -1)
and restore (new QEMU -> guest answering again).
Process: time until `python -c "import numpy"` reports ready, its RSS.

    python bench/microvm.py [--boots N] [--cold]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time a cold image build (into a temporary cache)")
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
    print(f"KVM probe: {accel} ({results['probe_s']:.1f} s); cached image build {again.seconds:.2f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
