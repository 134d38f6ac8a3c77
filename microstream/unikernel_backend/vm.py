"""Launch, drive, save and restore a microVM under QEMU.

    image = build_image()
    with MicroVM(image) as vm:          # accel="auto": KVM if a probe boot works here, else TCG
        vm.start()                      # returns boot-to-ready seconds (launch -> the guest agent's hello)
        vm.channel.exec("import numpy; numpy.arange(10).sum()")   # -> 45
        vm.save("state.zst")            # QEMU's migration stream, zstd-compressed; the VM is gone after
    vm = MicroVM(image); vm.restore("state.zst")   # same guest memory, channel re-attached

QEMU is driven over QMP (the `qemu.qmp` package; its synchronous shim runs a private asyncio loop, so
call a MicroVM from one thread at a time and not from inside a running asyncio loop). The guest is
booted directly from the image's kernel (PVH on amd64), with the squashfs root as a read-only virtio
disk and the control channel as a `virtserialport` on a unix-socket chardev (`channel.Channel`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .channel import Channel
from .image import ARCHES, ImagePaths, default_cache_dir

ACCELS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 20.0
_LIVE: weakref.WeakSet[MicroVM] = weakref.WeakSet()


class VMError(RuntimeError):
    """QEMU failed, or the guest did not come up."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned QEMU if we are killed


def _death_signal() -> Any:
    """PR_SET_PDEATHSIG fires when the launching *thread* ends: only safe from the main thread."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


class _Qmp:
    """A thread-safe wrapper of `qemu.qmp`'s synchronous client."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        try:
            from qemu.qmp.legacy import QEMUMonitorProtocol
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise VMError("the microvm backend needs the `qemu.qmp` package: pip install 'microstream[microvm]' "
                          "(or pip install qemu.qmp)") from exc
        self.lock = threading.Lock()
        deadline = time.monotonic() + timeout
        while True:
            self.client = QEMUMonitorProtocol(str(path))
            try:
                self.client.connect()
                break
            except Exception as exc:  # noqa: BLE001 - qemu.qmp raises ConnectError or OSError subclasses
                self._close_quietly()
                if time.monotonic() > deadline:
                    raise VMError(f"cannot connect to QMP at {path}: {exc}") from exc
                time.sleep(0.02)
        self.client.settimeout(60.0)

    def __call__(self, command: str, **args: Any) -> Any:
        with self.lock:
            return self.client.cmd(command, **args)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def close(self) -> None:
        with self.lock:
            self._close_quietly()


class MicroVM:
    """One QEMU virtual machine running the image's guest agent.

    `accel`: "tcg" (software emulation), "kvm", or "auto" (KVM only where `probe_accel` saw a KVM boot
    succeed). `workdir` holds the sockets and logs (a private temporary directory by default).

    `ram_file`: guest RAM is that file, mapped shared (`ram_shared`: the guest writes into the file) or
    private (copy-on-write over the file: VMs started from one file share the pages they have not written).
    `save` and `restore` then skip the RAM (QEMU's `x-ignore-shared`): the file is the RAM part of the state."""

    def __init__(self, image: ImagePaths, memory_mb: int = 256, cpus: int = 1, accel: str = "auto",
                 workdir: str | Path | None = None, name: str = "microvm", extra_args: tuple[str, ...] = (),
                 log: Any = None, ram_file: str | Path | None = None, ram_shared: bool = False) -> None:
        if accel not in ACCELS:
            raise ValueError(f"accel must be one of {ACCELS}")
        self.image = image
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.requested_accel = accel
        self.accel: str | None = None if accel == "auto" else accel
        self.name = name
        self.extra_args = tuple(extra_args)
        self.log = log or (lambda _: None)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.channel = Channel(self.workdir / "channel.sock", log=self.log)
        self.proc: subprocess.Popen | None = None
        self.qmp: _Qmp | None = None
        self.launched_at: float | None = None
        self._log_at = 0  # where the last launch's output starts in qemu.log
        self.boot_seconds: float | None = None
        self.generation = 0  # QEMU processes started by this object (a restore starts a new one)
        self.ram_file = Path(ram_file).resolve() if ram_file else None
        self.ram_shared = ram_shared

    # -- QEMU command line --------------------------------------------------------------------------
    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    def command(self, incoming: str | None = None) -> list[str]:
        """The QEMU command line (`incoming`: a migration source to restore from)."""
        arch = ARCHES[self.image.arch]
        info = self.image.info()
        accel = self.accel or "tcg"
        machine = info.get("machine", arch.machine)
        if self.image.arch == "arm64" and accel == "kvm":
            machine += ",gic-version=host"  # the Pi's own interrupt controller (GIC-400 on Pi 4 and 5)
        cmd = [shutil.which(arch.qemu) or arch.qemu, "-name", self.name, "-M", machine,
               "-accel", accel, "-m", str(self.memory_mb), "-smp", str(self.cpus), *self._ram_args(),
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-kernel", str(self.image.kernel), "-initrd", str(self.image.initramfs), "-append", info["cmdline"],
               "-drive", f"file={self.image.rootfs},if=none,id=root,format=raw,readonly=on",
               "-device", "virtio-blk-pci,drive=root",
               "-device", "virtio-serial-pci,id=vser",
               "-chardev", f"socket,id=ctl,path={self.channel.path},server=on,wait=off",
               "-device", "virtserialport,bus=vser.0,chardev=ctl,name=microstream.0",
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
               "-serial", f"file:{self.console_path}"]
        if accel == "kvm":
            cmd += ["-cpu", "host"]
        elif self.image.arch == "amd64":
            cmd += ["-cpu", "max"]  # numpy 2's wheels need x86-64-v2 (SSE4.2, POPCNT); TCG's default qemu64 lacks it
        elif self.image.arch == "arm64":
            cmd += ["-cpu", "cortex-a72"]  # TCG on a non-arm host
        if incoming:
            cmd += ["-incoming", incoming]
        return [*cmd, *self.extra_args]

    def _ram_args(self) -> list[str]:
        """Guest RAM is always the backend `ram0` (anonymous, or a file): the RAM block has the same name in
        every VM, so a VM restored from a template and one booted cold can migrate into each other."""
        size = f"size={self.memory_mb}M"
        if self.ram_file is None:
            backend = f"memory-backend-ram,id=ram0,{size}"
        else:
            share = "on" if self.ram_shared else "off"
            backend = f"memory-backend-file,id=ram0,mem-path={self.ram_file},{size},share={share}"
        return ["-object", backend, "-machine", "memory-backend=ram0"]

    def _ignore_shared(self, on: bool = True) -> None:
        """Leave file-backed RAM out of the migration stream (the file itself carries it). Both ends of a
        stream need the same setting (it changes the stream's header), so a restored VM turns it off again."""
        if self.ram_file is not None:
            self.qmp("migrate-set-capabilities",  # type: ignore[misc]
                     capabilities=[{"capability": "x-ignore-shared", "state": on}])

    # -- life cycle -----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def launch(self, incoming: str | None = None, connect_channel: bool = True) -> None:
        """Start QEMU and connect QMP and the control channel (does not wait for the guest). With
        `connect_channel=False` (a VM arriving by live migration) the channel waits for `finish_incoming`."""
        if self.pid is not None:
            raise VMError(f"{self.name} is already running (pid {self.pid})")
        if self.accel is None:
            self.accel = probe_accel(self.image, log=self.log)
        for sock in (self.qmp_path, self.channel.path):
            sock.unlink(missing_ok=True)
        self.generation += 1
        qemu_log = open(self.workdir / "qemu.log", "ab")  # noqa: SIM115 - handed to the child
        self._log_at = qemu_log.tell()  # what this launch prints starts here
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(self.command(incoming), stdin=subprocess.DEVNULL, stdout=qemu_log,
                                     stderr=subprocess.STDOUT, preexec_fn=_death_signal())
        qemu_log.close()
        _LIVE.add(self)
        self.log(f"{self.name}: QEMU pid {self.proc.pid} ({self.accel})")
        try:
            self.qmp = _Qmp(self.qmp_path)
            self.channel.detach()
            if connect_channel:
                self.channel.connect(self.channel.path)
        except Exception as exc:
            self.kill()
            raise VMError(f"{self.name}: QEMU did not come up: {exc}\n{self.diagnostics()}") from exc

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait for the guest agent's hello; returns boot-to-ready seconds (launch -> hello)."""
        deadline = time.monotonic() + timeout
        while self.channel.hello is None:
            if self.proc is None or self.proc.poll() is not None:
                raise VMError(f"{self.name}: QEMU exited before the guest was ready\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: no hello from the guest agent within {timeout} s\n{self.diagnostics()}")
            with contextlib.suppress(TimeoutError):
                self.channel.wait_hello(0.2)
        assert self.channel.hello_at is not None and self.launched_at is not None
        self.boot_seconds = self.channel.hello_at - self.launched_at
        return self.boot_seconds

    def start(self, timeout: float = 120.0) -> float:
        """Boot the VM and wait until its guest agent is ready; returns boot-to-ready seconds."""
        self.launch()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def status(self) -> dict[str, Any]:
        """State ("created", "running", "paused", "inmigrate", "postmigrate", "exited", ...), pid, accel, timing."""
        state, detail = "created", None
        if self.proc is not None:
            if self.proc.poll() is not None:
                state, detail = "exited", self.proc.returncode
            elif self.qmp is not None:
                try:
                    state = self.qmp("query-status")["status"]
                except Exception as exc:  # noqa: BLE001 - QEMU going away
                    state, detail = "unknown", str(exc)
        return {"name": self.name, "state": state, "detail": detail, "pid": self.pid, "accel": self.accel,
                "memory_mb": self.memory_mb, "cpus": self.cpus, "boot_seconds": self.boot_seconds,
                "rss_mb": self.rss_mb(), "channel": self.channel.stats}

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the guest down (agent exits -> PID 1 reboots -> QEMU exits), else quit QEMU, else kill it."""
        if self.proc is not None and self.pid is not None and self.qmp is not None:
            if self.channel.connected and self.channel.hello is not None and self._state() == "running":
                with contextlib.suppress(Exception):
                    self.channel.request("shutdown", timeout=min(5.0, timeout / 2))
                    _wait(self.proc, timeout / 2)
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.qmp("quit")
                _wait(self.proc, 3.0)
        self.kill()

    def _state(self) -> str:
        try:
            return self.qmp("query-status")["status"] if self.qmp is not None else "unknown"
        except Exception:  # noqa: BLE001 - QEMU going away
            return "unknown"

    def kill(self) -> None:
        """End QEMU now (after stop's polite attempts) and release sockets; idempotent."""
        self.channel.detach()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            if not _wait(self.proc, 3.0):
                self.proc.kill()
                self.proc.wait(5)
        _LIVE.discard(self)

    def cleanup(self) -> None:
        """Stop, and remove the working directory if this object created it."""
        self.stop()
        self.channel.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MicroVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- whole-VM save / restore --------------------------------------------------------------------------
    def save(self, path: str | Path, compress: bool = True, timeout: float = 300.0) -> dict[str, Any]:
        """Pause the VM, write QEMU's migration stream to `path` (zstd -1 unless `compress` is False),
        then end QEMU. The channel's state goes to `<path>.json` so any host process can `restore`.

        Returns bytes written and seconds (pause -> file complete)."""
        if self.qmp is None or self.pid is None:
            raise VMError(f"{self.name} is not running")
        path = Path(path).resolve()
        sink = f"zstd -1 -q -T1 -c > {shlex.quote(str(path))}" if compress else f"cat > {shlex.quote(str(path))}"
        start = time.monotonic()
        self.qmp("stop")
        self.qmp("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        self._ignore_shared()
        self.qmp("migrate", uri=f"exec:{sink}")
        status = self._wait_migration(timeout)
        seconds = time.monotonic() - start
        if status != "completed":
            raise VMError(f"{self.name}: saving failed ({status})\n{self.diagnostics()}")
        self.channel.detach()
        sidecar = {"image_key": self.image.key, "arch": self.image.arch, "memory_mb": self.memory_mb,
                   "cpus": self.cpus, "accel": self.accel, "compressed": compress, "saved": time.time(),
                   "channel": self.channel.export_state(),
                   "ram_file": str(self.ram_file) if self.ram_file else None}
        Path(f"{path}.json").write_text(json.dumps(sidecar))
        with contextlib.suppress(Exception):
            self.qmp("quit")
        self.kill()
        return {"path": str(path), "bytes": path.stat().st_size, "seconds": seconds}

    def restore(self, path: str | Path, timeout: float = 120.0) -> dict[str, Any]:
        """Start a new QEMU from a file written by `save` and resume the guest where it was paused.

        The channel continues its sequence numbers (from this object, or from `<path>.json` for a fresh
        one) and resynchronises, so messages in flight at the save are resent, none twice."""
        path = Path(path).resolve()
        sidecar = json.loads(Path(f"{path}.json").read_text())
        if sidecar["image_key"] != self.image.key:
            raise VMError(f"{path} was saved from image {sidecar['image_key']}, not {self.image.key}")
        self.memory_mb, self.cpus, self.accel = sidecar["memory_mb"], sidecar["cpus"], sidecar["accel"]
        if bool(sidecar.get("ram_file")) != (self.ram_file is not None):
            where = f"in {sidecar['ram_file']}" if sidecar.get("ram_file") else "in the stream"
            raise VMError(f"{path} was saved with the guest's RAM {where}: restore it "
                          f"{'with' if sidecar.get('ram_file') else 'without'} a ram_file")
        if self.channel.session.next_seq == 1 and self.channel.session.delivered == 0:
            self.channel.load_state(sidecar["channel"])
        source = f"zstd -dc {shlex.quote(str(path))}" if sidecar["compressed"] else f"cat {shlex.quote(str(path))}"
        # QEMU runs it under /bin/sh -c: when it fails (a corrupt or truncated file), QEMU would wait in
        # 'inmigrate' for ever (seen with zstd); stop QEMU instead, so the failure shows at once
        source += " || kill $PPID"
        start = time.monotonic()
        if self.ram_file is None:
            self.launch(incoming=f"exec:{source}")
        else:  # the capability must be set before the stream is read
            self.launch(incoming="defer")
            self._ignore_shared()
            self.qmp("migrate-incoming", uri=f"exec:{source}")  # type: ignore[misc]
        state = self._wait_state(lambda s: s != "inmigrate", timeout)
        if state not in ("paused", "postmigrate", "running"):
            self.kill()
            why = self._qemu_said()
            raise VMError(f"{self.name}: restoring from {path} ended in state {state!r}{f': {why}' if why else ''}"
                          f"\n{self.diagnostics()}")
        self._ignore_shared(False)
        if state != "running":
            self.qmp("cont")  # type: ignore[misc]
        return {"seconds": time.monotonic() - start, "state_before_cont": state}

    def migrate_live(self, uri: str, timeout: float = 300.0, downtime_ms: int = 50) -> dict[str, Any]:
        """Migrate the running VM live to a QEMU started with `launch(incoming=uri, connect_channel=False)`
        (e.g. ``tcp:HOST:PORT``). On return the guest runs over there and this QEMU is paused
        (``postmigrate``): export the channel with `channel.export_state()` before `kill()`.

        Returns QEMU's figures: total and downtime (ms), RAM transferred (bytes)."""
        if self.qmp is None or self.pid is None:
            raise VMError(f"{self.name} is not running")
        start = time.monotonic()
        self.qmp("migrate-set-parameters", **{"max-bandwidth": 1 << 40, "downtime-limit": downtime_ms})
        self.qmp("migrate", uri=uri)
        status = self._wait_migration(timeout)
        info = self.qmp("query-migrate")
        if status != "completed":
            raise VMError(f"{self.name}: live migration to {uri} {status}: {info}\n{self.diagnostics()}")
        self.channel.detach()
        ram = info.get("ram", {})
        return {"seconds": time.monotonic() - start, "total_ms": info.get("total-time"),
                "downtime_ms": info.get("downtime"), "ram_bytes": ram.get("transferred"),
                "setup_ms": info.get("setup-time")}

    def finish_incoming(self, channel_state: dict[str, Any], timeout: float = 120.0) -> str:
        """After an incoming live migration: wait for it to land, take over the channel's sequence state,
        connect it to this QEMU and let the guest run. Returns the state the VM arrived in."""
        state = self._wait_state(lambda s: s != "inmigrate", timeout)
        if state not in ("paused", "postmigrate", "running"):
            self.kill()
            raise VMError(f"{self.name}: the incoming migration ended in state {state!r}\n{self.diagnostics()}")
        self.channel.load_state(channel_state)
        self.channel.connect(self.channel.path)
        if state != "running":
            self.qmp("cont")  # type: ignore[misc]
        return state

    def _wait_migration(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.qmp("query-migrate").get("status", "none")  # type: ignore[misc]
            if status in ("completed", "failed", "cancelled"):
                return status
            time.sleep(0.02)
        return "timeout"

    def _wait_state(self, done: Any, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                return "exited"
            try:
                status = self.qmp("query-status")["status"]  # type: ignore[misc]
            except Exception:
                if not _wait(self.proc, 2.0):
                    raise
                return "exited"  # it ended while answering
            if done(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    # -- diagnostics ------------------------------------------------------------------------------------
    def rss_mb(self) -> float | None:
        """Resident memory of the QEMU process (MB)."""
        if self.pid is None:
            return None
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return None

    def memory(self) -> dict[str, float]:
        """QEMU's memory (MB) from /proc/PID/smaps_rollup: `rss`, `pss` (shared pages split among the processes
        mapping them: a template's RAM file among its VMs) and `uss` (pages this VM alone holds)."""
        if self.pid is None:
            return {}
        return smaps_rollup(self.pid)

    def pss_mb(self) -> float | None:
        return self.memory().get("pss")

    def _qemu_said(self) -> str:
        """What QEMU (or its migration command, e.g. zstd) printed since the last launch, but warnings and its
        being stopped: why a restore failed."""
        with contextlib.suppress(OSError), open(self.workdir / "qemu.log", "rb") as log:
            log.seek(self._log_at)
            # a progress line ends in \r before the error that ends it: keep each line's last part
            lines = [line.rsplit("\r", 1)[-1] for line in log.read().decode(errors="replace").split("\n")]
            return "; ".join(line.strip() for line in lines if line.strip() and "warning:" not in line
                             and "terminating on signal" not in line)[:300]
        return ""

    def diagnostics(self, lines: int = 25) -> str:
        """The tails of the guest console and of QEMU's own output."""
        parts = []
        for name in ("console.log", "qemu.log"):
            with contextlib.suppress(OSError):
                text = (self.workdir / name).read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)


def smaps_rollup(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of a process, in MB; empty if it is gone."""
    fields: dict[str, float] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    if not fields:
        return {}
    return {"rss": fields.get("Rss", 0.0), "pss": fields.get("Pss", 0.0),
            "uss": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)}


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


# -- accelerator probe ----------------------------------------------------------------------------------
def qemu_version(binary: str) -> str:
    """The first line of `binary --version` ("missing" if it cannot run)."""
    with contextlib.suppress(OSError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "unknown"
    return "missing"


def _probe_key(image: ImagePaths) -> str:
    arch = ARCHES[image.arch]
    kernel = image.info().get("kernel", {}).get("release", "")
    return "|".join((platform.node(), os.uname().release, qemu_version(shutil.which(arch.qemu) or arch.qemu),
                     image.arch, kernel))


def probe_accel(image: ImagePaths, cache_dir: str | Path | None = None, timeout: float = PROBE_TIMEOUT,
                force: bool = False, log: Any = print) -> str:
    """"kvm" if a capped test boot of `image` under KVM reaches the guest agent, else "tcg".

    /dev/kvm alone proves nothing (e.g. a `kvm_pvm` device that runs only PVM guests). The verdict is
    cached per (host, host kernel, QEMU version, arch, guest kernel) in `<cache_dir>/accel.json`."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    verdicts_path = cache / "accel.json"
    key = _probe_key(image)
    verdicts = {}
    with contextlib.suppress(OSError, ValueError):
        verdicts = json.loads(verdicts_path.read_text())
    if key in verdicts and not force:
        return verdicts[key]["accel"]
    log(f"microvm: probing KVM with a test boot (at most {timeout:.0f} s)")
    verdict, detail, start = "tcg", "", time.monotonic()
    vm = MicroVM(image, accel="kvm", name="kvm-probe")
    try:
        vm.start(timeout=timeout)
        verdict = "kvm" if vm.channel.exec("1 + 1", timeout=10) == 2 else "tcg"
    except Exception as exc:  # noqa: BLE001 - any failure means no usable KVM
        detail = str(exc).splitlines()[0][:300]
    finally:
        vm.kill()
        vm.cleanup()
    seconds = time.monotonic() - start
    log(f"microvm: KVM probe -> {verdict} in {seconds:.1f} s{f' ({detail})' if detail else ''}")
    verdicts[key] = {"accel": verdict, "seconds": round(seconds, 1), "detail": detail, "when": time.time()}
    cache.mkdir(parents=True, exist_ok=True)
    verdicts_path.write_text(json.dumps(verdicts, indent=2))
    return verdict


@atexit.register
def _kill_all() -> None:
    """No QEMU outlives the Python process that started it."""
    for vm in list(_LIVE):
        with contextlib.suppress(Exception):
            vm.kill()
