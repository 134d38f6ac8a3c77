"""Build a single-application microVM image from Debian packages only.

An image is three files plus a manifest, cached under ``$MICROSTREAM_HOME/images/<key>`` (or
``~/.cache/microstream/images/<key>``), where the key hashes the exact package versions, the boot
recipe and the microstream files copied into the guest:

- ``kernel``: Debian's kernel, uncompressed (``vmlinux`` extracted from the bzImage on amd64, booted
  directly through its PVH entry point; the ``Image`` on arm64), so QEMU skips firmware and decompressor;
- ``initramfs.cpio``: a ~3 MB boot image: busybox-static as PID 1, the virtio and squashfs modules, an
  ``/init`` that mounts the root and runs the guest agent as its child;
- ``rootfs.squashfs``: a read-only root with Python 3.11, its standard library, numpy (+ BLAS/LAPACK)
  and the guest side of microstream under ``/opt/microstream``, with bytecode precompiled by the
  guest's own interpreter.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg -x``: no root filesystem tool,
no network inside the guest, nothing but the host's apt configuration.

    python -m microstream.unikernel_backend.image build [--arch amd64|arm64] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .guest import NUMBA_CACHE, NUMBA_ENV

RECIPE = 2  # bump when the way an image is assembled changes
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Arch:
    """What differs between target architectures."""

    name: str
    kernel_flavour: str
    triplet: str
    qemu: str
    qemu_package: str
    machine: str
    console: str


ARCHES = {
    "amd64": Arch("amd64", "amd64", "x86_64-linux-gnu", "qemu-system-x86_64", "qemu-system-x86", "pc-i440fx-7.2",
                  "ttyS0"),
    "arm64": Arch("arm64", "arm64", "aarch64-linux-gnu", "qemu-system-aarch64", "qemu-system-arm", "virt-7.2",
                  "ttyAMA0"),
}

# The guest's userland: the interpreter, its standard library, numpy, and the shared libraries they load.
ROOT_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libssl3", "libffi8", "libbz2-1.0", "liblzma5",
    "libuuid1", "libcrypt1", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
)
# The Python packages the in-VM host runtime needs besides the standard library are copied from the host's
# own environment rather than taken from Debian (see docs/microvm.md, "numba in the guest"): job specs,
# batches and application-level snapshots are pickles that must load on both sides of a move, which holds
# only with the same numpy and cloudpickle at both ends (Debian 12 has numpy 1.24, whose unpickler cannot
# load numpy 2 arrays), and the numba kernels must behave the same in a VM as in a process host. All four
# are pure Python or self-contained manylinux wheels (numpy and llvmlite bundle OpenBLAS and LLVM).
HOST_PACKAGES = ("numpy", "numba", "llvmlite", "cloudpickle")
SITE_DIR = "usr/lib/python3/dist-packages"
BOOT_PACKAGES = ("busybox-static",)
# Kernel modules the boot image loads (their dependencies are read from each module's modinfo).
MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "squashfs")
MODULE_DIRS = ("drivers/virtio/", "drivers/block/virtio_blk", "drivers/char/virtio_console", "fs/squashfs/")
# microstream files the guest needs, relative to the directory holding the `microstream` package.
# (all of microstream but the host-only parts: the CLI, the control plane, placement, the ZeroMQ runtime, QEMU
# control)
# (the runtime's ZeroMQ parts stay out too: the relay carries the guest's traffic)
GUEST_EXCLUDE = ("microstream/cli/", "microstream/cluster/", "microstream/placement/", "microstream/connectors/",
                 "microstream/unikernel_backend/", "microstream/runtime/channels.py",
                 "microstream/runtime/host_main.py", "microstream/runtime/protocol.py")
GUEST_INCLUDE = ("microstream/unikernel_backend/__init__.py", "microstream/unikernel_backend/guest.py",
                 "microstream/unikernel_backend/vmhost.py")


def _guest_files() -> tuple[str, ...]:
    base = Path(__file__).resolve().parents[2]
    found = [p.relative_to(base).as_posix() for p in (base / "microstream").rglob("*.py")
             if "__pycache__" not in p.parts]
    return tuple(sorted(rel for rel in found if rel in GUEST_INCLUDE or not rel.startswith(GUEST_EXCLUDE)))


GUEST_FILES = _guest_files()
GUEST_PREFIX = "/opt/microstream"
GUEST_COMMAND = ("/usr/bin/python3.11", "-s", "-m", "microstream.unikernel_backend.guest")
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/locale", "usr/share/bug",
    "usr/share/gdb", "usr/share/python3", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data", "usr/lib/python3/dist-packages/numpy/f2py",
    "usr/lib/python3/dist-packages/numpy/_pyinstaller", "usr/lib/python3/dist-packages/numba/cuda",
    "usr/lib/python3/dist-packages/numba/tests", "usr/lib/python3/dist-packages/llvmlite/tests",
)

KERNEL_CMDLINE = ("quiet loglevel=3 panic=-1 mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp "
                  "tsc=reliable no_timer_check cryptomgr.notests 8250.nr_uarts=1")

INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of a microstream microVM: load the virtio modules, mount the read-only root, run the guest agent
# as a child, power off when it exits.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "microstream-init: $*"; }
halt() { say "$*"; reboot -f; sleep 5; }
# the kernel silently truncates an initramfs it has no room to unpack: the sentinel is the archive's last file
[ -e /.complete ] || halt "initramfs truncated while unpacking: give the VM more memory"
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko || say "cannot load module $m"; done
n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 1000 ] && halt "no root disk /dev/vda"; usleep 10000
done
mount -t squashfs -o ro /dev/vda /root || halt "cannot mount the root file system"
mount -t tmpfs -o mode=1777,size=64m tmpfs /root/tmp
for d in dev proc sys; do mount -o bind /$d /root/$d; done
HOME=/tmp PYTHONPATH=@PREFIX@ PYTHONDONTWRITEBYTECODE=1 chroot /root @COMMAND@ &
wait
halt "guest agent exited"
"""


@dataclass(frozen=True)
class ImagePaths:
    """A built image: the files QEMU boots, and the manifest describing them."""

    kernel: Path
    initramfs: Path
    rootfs: Path
    manifest: Path
    cached: bool = False
    seconds: float = 0.0
    key: str = ""
    arch: str = "amd64"

    def info(self) -> dict[str, Any]:
        return json.loads(self.manifest.read_text())

    @property
    def sizes(self) -> dict[str, int]:
        return {name: getattr(self, name).stat().st_size for name in ("kernel", "initramfs", "rootfs")}

    @property
    def cmdline(self) -> str:
        return self.info()["cmdline"]


@dataclass
class _Plan:
    arch: Arch
    kernel_package: str
    versions: dict[str, str] = field(default_factory=dict)
    guest_files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def key(self) -> str:
        recipe = {"recipe": RECIPE, "arch": self.arch.name, "versions": self.versions, "guest": self.guest_files,
                  "init": INIT_SCRIPT, "modules": MODULES, "cmdline": KERNEL_CMDLINE, "prune": PRUNE,
                  "command": GUEST_COMMAND, "warm": WARM_GROUPS, "numba": NUMBA_ENV, "host_packages": HOST_PACKAGES}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# -- host tools -----------------------------------------------------------------------------------------
def host_tools(arch: str = "amd64") -> dict[str, str]:
    """Commands the image build and the VM need on the host -> the Debian package providing each."""
    spec = ARCHES[arch]
    return {spec.qemu: spec.qemu_package, "mksquashfs": "squashfs-tools", "zstd": "zstd",
            "dpkg-deb": "dpkg", "apt-get": "apt"}


def missing_host_tools(arch: str = "amd64") -> dict[str, str]:
    return {cmd: pkg for cmd, pkg in host_tools(arch).items() if shutil.which(cmd) is None}


def ensure_host_tools(arch: str = "amd64", progress: Progress = print, install: bool = True) -> list[str]:
    """Install the missing host packages with apt-get (needs root); returns the packages installed.

    Raises RuntimeError when something is missing and cannot be installed."""
    missing = sorted(set(missing_host_tools(arch).values()))
    if not missing:
        return []
    from ..core.sysdeps import apt_install

    apt_install(missing, "the microVM host: QEMU and the image tools", progress, install)
    still = missing_host_tools(arch)
    if still:
        raise RuntimeError(f"still missing after installing: {', '.join(still)}")
    return missing


# -- cache ----------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """$MICROSTREAM_HOME/images, else ~/.cache/microstream/images."""
    home = os.environ.get("MICROSTREAM_HOME")
    if home:
        return Path(home).expanduser() / "images"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "microstream" / "images"


def _paths(directory: Path, key: str, arch: str, cached: bool, seconds: float) -> ImagePaths:
    return ImagePaths(directory / "kernel", directory / "initramfs.cpio", directory / "rootfs.squashfs",
                      directory / "manifest.json", cached, seconds, key, arch)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created, with its directory, if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_image(arch: str = "amd64", cache_dir: Path | str | None = None, progress: Progress = print,
                force: bool = False, deb_cache: Path | str | None = None) -> ImagePaths:
    """Build (or find in the cache) the microVM image for `arch`.

    `deb_cache` (default: `<cache_dir>/debs`) keeps downloaded packages across builds; `force` rebuilds
    even when an image with the same key exists. A cache hit is reported through `progress` and
    in `ImagePaths.cached`."""
    start = time.perf_counter()
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHES)}")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    plan = _plan(ARCHES[arch])
    key = plan.key()
    final = cache / f"{arch}-{key}"
    with file_lock(cache / ".lock"):
        if final.joinpath("manifest.json").exists() and not force:
            progress(f"microvm image {arch}-{key}: cache hit ({final})")
            return _paths(final, key, arch, True, time.perf_counter() - start)
        progress(f"microvm image {arch}-{key}: building in {final} (kernel {plan.kernel_package})")
        debs = Path(deb_cache).expanduser() if deb_cache else cache / "debs"
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
        try:
            _build(plan, key, work, debs, progress)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work / "out", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    progress(f"microvm image {arch}-{key}: built in {seconds:.1f} s")
    return _paths(final, key, arch, False, seconds)


def _build(plan: _Plan, key: str, work: Path, debs: Path, progress: Progress) -> None:
    out = work / "out"
    out.mkdir()
    t0 = time.perf_counter()
    files = _download(plan, debs, progress)
    progress(f"  packages ready ({len(files)} .debs) in {time.perf_counter() - t0:.1f} s")
    t = time.perf_counter()
    kdir = work / "kernel"
    _extract_kernel(files[plan.kernel_package], kdir)
    kernel_info = _write_kernel(kdir, out / "kernel", plan.arch)
    modules = _module_order(kdir)
    progress(f"  kernel {kernel_info['release']} ({kernel_info['format']}) and {len(modules)} modules "
             f"in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    root = work / "root"
    _assemble_root(plan, files, root)
    progress(f"  root unpacked and pruned ({_du(root) / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    compiled = _precompile(root, plan.arch)
    progress(f"  {compiled} .pyc precompiled in {time.perf_counter() - t:.1f} s")
    _smoke_test(root, plan.arch)
    t = time.perf_counter()
    kernels = _warm_numba_cache(root, plan.arch)
    progress(f"  {kernels} numba cache files for a generic CPU in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    _mksquashfs(root, out / "rootfs.squashfs")
    progress(f"  squashfs root {(out / 'rootfs.squashfs').stat().st_size / 1e6:.1f} MB "
             f"in {time.perf_counter() - t:.1f} s")
    busybox = work / "busybox"
    _dpkg_x(files["busybox-static"], busybox)
    _write_initramfs(out / "initramfs.cpio", busybox / "bin" / "busybox", kdir, modules)
    manifest = {"key": key, "arch": plan.arch.name, "recipe": RECIPE, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "packages": plan.versions, "kernel": kernel_info, "modules": modules, "guest_files": plan.guest_files,
                "cmdline": _cmdline(plan.arch), "machine": plan.arch.machine, "qemu": plan.arch.qemu,
                "guest_command": list(GUEST_COMMAND), "pyc": compiled,
                "sizes": {p.name: p.stat().st_size for p in out.iterdir()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _cmdline(arch: Arch) -> str:
    return f"console={arch.console} {KERNEL_CMDLINE}"


# -- packages -------------------------------------------------------------------------------------------
def _apt_name(name: str, arch: Arch) -> str:
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    return name if arch.name == native else f"{name}:{arch.name}"


def _apt_show(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Candidate stanzas by package name (`apt-cache show --no-all-versions`)."""
    names = list(names)
    done = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        done = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"apt-cache show failed: {done.stderr.strip()[-1000:]}")
    stanzas = {}
    for block in done.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", block, re.M))
        if "Package" in fields:
            stanzas[fields["Package"]] = fields
    return stanzas


def _plan(arch: Arch) -> _Plan:
    if arch.name != _native_arch() and arch.name not in _foreign_arches():
        raise RuntimeError(f"apt does not know architecture {arch.name}: run `dpkg --add-architecture {arch.name} "
                           "&& apt-get update` first (see docs/microvm.md)")
    meta = _apt_show([_apt_name(f"linux-image-{arch.kernel_flavour}", arch)])
    depends = next(iter(meta.values()))["Depends"]
    kernel = depends.split(",")[0].split()[0].split(":")[0]
    names = [kernel, *BOOT_PACKAGES, *ROOT_PACKAGES]
    stanzas = _apt_show(_apt_name(n, arch) for n in names)
    missing = [n for n in names if n not in stanzas]
    if missing:
        raise RuntimeError(f"apt has no candidate for {', '.join(missing)} ({arch.name})")
    base = Path(__file__).resolve().parents[2]
    guest = {rel: hashlib.sha256((base / rel).read_bytes()).hexdigest() for rel in GUEST_FILES}
    guest.update({f"python:{name}": version for name, version in host_package_versions().items()})
    return _Plan(arch, kernel, {n: stanzas[n]["Version"] for n in names}, guest)


def host_package_versions() -> dict[str, str]:
    """The versions of `HOST_PACKAGES` installed here (what goes into the guest)."""
    from importlib import metadata

    found = {}
    for name in HOST_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(f"the microVM image needs the Python package {name!r} installed here "
                               "(it is copied into the guest)") from exc
    return found


def _copy_host_packages(root: Path, arch: Arch) -> None:
    """Copy `HOST_PACKAGES` (and the shared libraries their wheels bundle) from this interpreter's
    environment into the guest's site directory. Binary wheels only fit a guest of this machine's type."""
    import importlib.util

    if arch.name != _native_arch():
        raise RuntimeError(f"cannot put this machine's numpy/numba into an {arch.name} guest: build the "
                           f"{arch.name} image on an {arch.name} machine (see docs/microvm.md)")
    site = root / SITE_DIR
    site.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "testing", "*.pyi", "*.h", "include")
    for name in HOST_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot find the Python package {name!r} to copy into the guest")
        src = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(src, site / name, ignore=skip, dirs_exist_ok=True)
        libs = src.parent / f"{name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, dirs_exist_ok=True)


def find_built_image(arch: str = "amd64", cache_dir: Path | str | None = None) -> Path | None:
    """A built image in the cache whose guest side matches this code (microstream's guest files and the
    Python packages copied into it), without asking apt: cheap enough for an agent's start-up.
    (`build_image` also checks the Debian package versions, and rebuilds if an apt update changed them.)"""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not cache.is_dir():
        return None
    base = Path(__file__).resolve().parents[2]
    try:
        want = {rel: hashlib.sha256((base / rel).read_bytes()).hexdigest() for rel in GUEST_FILES}
        want.update({f"python:{name}": version for name, version in host_package_versions().items()})
    except (OSError, RuntimeError):
        return None
    for manifest in sorted(cache.glob(f"{arch}-*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(manifest.read_text())
            if info.get("recipe") == RECIPE and info.get("guest_files") == want:
                return manifest.parent
    return None


def cached_image(arch: str = "amd64", cache_dir: Path | str | None = None) -> ImagePaths | None:
    """The built image `find_built_image` finds, as `ImagePaths` (files only, no apt call: what a VM vnode's relay
    uses, so that starting one does not spend seconds asking apt); None if there is none."""
    directory = find_built_image(arch, cache_dir)
    if directory is None:
        return None
    with contextlib.suppress(OSError, ValueError, KeyError):
        return _paths(directory, json.loads((directory / "manifest.json").read_text())["key"], arch, True, 0.0)
    return None


def _native_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


def _foreign_arches() -> list[str]:
    done = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
    return done.stdout.split()


def _deb_glob(name: str, version: str) -> str:
    return f"{name}_{version.replace(':', '%3a')}_*.deb"


def _download(plan: _Plan, debs: Path, progress: Progress) -> dict[str, Path]:
    """The .deb of every planned package, downloading those not in `debs` yet."""
    debs.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        shutil.chown(debs, "_apt")  # lets apt download sandboxed instead of warning
    wanted = {n: v for n, v in plan.versions.items() if not list(debs.glob(_deb_glob(n, v)))}
    if wanted:
        progress(f"  downloading {len(wanted)} packages: {' '.join(sorted(wanted))}")
        specs = [f"{_apt_name(n, plan.arch)}={v}" for n, v in wanted.items()]
        done = subprocess.run(["apt-get", "download", "-q", *specs], cwd=debs, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get download failed: {done.stderr.strip()[-2000:]}")
    files = {}
    for name, version in plan.versions.items():
        found = sorted(debs.glob(_deb_glob(name, version)))
        if not found:
            raise RuntimeError(f"{name} {version} was not downloaded into {debs}")
        files[name] = found[-1]
    return files


def _dpkg_x(deb: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, capture_output=True)


# -- kernel ---------------------------------------------------------------------------------------------
def _extract_kernel(deb: Path, target: Path) -> None:
    """Only the kernel and the modules the boot image may need (the full package is ~400 MB unpacked)."""
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            wanted = name.startswith("boot/vmlinuz-") or (
                name.startswith("lib/modules/") and any(f"/kernel/{d}" in name for d in MODULE_DIRS))
            if wanted and member.isfile():
                tar.extract(member, target, filter="data")
    if proc.wait() != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed")


def _write_kernel(kdir: Path, out: Path, arch: Arch) -> dict[str, str]:
    vmlinuz = next((kdir / "boot").glob("vmlinuz-*"))
    release = vmlinuz.name.removeprefix("vmlinuz-")
    data = vmlinuz.read_bytes()
    if arch.name == "amd64":
        out.write_bytes(extract_vmlinux(data))
        fmt = "vmlinux (ELF, PVH entry) from bzImage"
    else:
        out.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        fmt = "Image"
    return {"release": release, "format": fmt}


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside an x86 bzImage (what scripts/extract-vmlinux does).

    The boot protocol header gives the compressed payload's offset and length (protocol >= 2.08)."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS boot header)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    out = _decompress(payload)
    if out[:4] != b"\x7fELF":
        raise ValueError("the decompressed bzImage payload is not an ELF file")
    return out


def _decompress(payload: bytes) -> bytes:
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if payload[:2] == b"\x1f\x8b":
        return zlib.decompressobj(31).decompress(payload)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    raise ValueError(f"unknown kernel compression (magic {payload[:6].hex()})")


def _module_files(kdir: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".ko"): p for p in kdir.glob("lib/modules/*/kernel/**/*.ko")}


def module_depends(path: Path) -> list[str]:
    """The `depends=` of a kernel module's modinfo."""
    found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
    return [d for d in (found.group(1).decode().split(",") if found else []) if d]


def _module_order(kdir: Path) -> list[str]:
    """MODULES and their dependencies, dependencies first."""
    files = _module_files(kdir)
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in files:
            raise RuntimeError(f"kernel module {name} (needed by {' <- '.join(chain) or 'the boot image'}) "
                               "is not in the kernel package; is it built in?")
        for dep in module_depends(files[name]):
            visit(dep, (name, *chain))
        order.append(name)

    for module in MODULES:
        visit(module, ())
    return order


# -- root file system -----------------------------------------------------------------------------------
def _assemble_root(plan: _Plan, files: dict[str, Path], root: Path) -> None:
    for name in ROOT_PACKAGES:
        _dpkg_x(files[name], root)
    for rel in PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    for tests in list((root / "usr/lib/python3/dist-packages").glob("**/tests")):
        shutil.rmtree(tests, ignore_errors=True)
    for d in ("dev", "proc", "sys", "tmp", "run", "etc"):
        (root / d).mkdir(exist_ok=True)
    _alternatives(root, plan.arch)
    _copy_host_packages(root, plan.arch)
    _install_guest_files(root)
    if plan.arch.name == _native_arch() and shutil.which("ldconfig"):
        subprocess.run(["ldconfig", "-r", str(root)], capture_output=True)


def _alternatives(root: Path, arch: Arch) -> None:
    """The update-alternatives links dpkg -x does not make (libblas.so.3, liblapack.so.3)."""
    lib = root / "usr/lib" / arch.triplet
    for name, sub in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        target = lib / sub / name
        link = lib / name
        if target.exists() and not link.exists():
            link.symlink_to(f"{sub}/{name}")


def _install_guest_files(root: Path) -> None:
    base = Path(__file__).resolve().parents[2]
    prefix = root / GUEST_PREFIX.lstrip("/")
    for rel in GUEST_FILES:
        dest = prefix / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / rel, dest)
        for parent in Path(rel).parents:  # stub packages: the real __init__s may import host-only things
            init = prefix / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text('"""microstream, guest side (copied into the microVM image)."""\n')


def _precompile(root: Path, arch: Arch) -> int:
    """Compile every .py of the root to .pyc with the guest's interpreter (in a chroot when it can run here).

    Sequential on purpose: `compileall -j0` in a bare chroot silently wrote nothing. The root is
    read-only in the VM, so the .pyc are `unchecked-hash` (no source stat on import)."""
    dirs = ["/usr/lib/python3.11", "/usr/lib/python3/dist-packages", GUEST_PREFIX]
    opts = ["-q", "-f", "--invalidation-mode", "unchecked-hash"]
    if arch.name == _native_arch() and os.geteuid() == 0:  # two processes: the stdlib, the rest
        compile_ = [_chroot(), str(root), "/usr/bin/python3.11", "-s", "-m", "compileall", *opts]
        procs = [subprocess.Popen([*compile_, *group], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=_guest_env()) for group in (dirs[:1], dirs[1:])]
        for proc in procs:
            proc.wait()
    elif sys.version_info[:2] == (3, 11):  # another architecture: same bytecode from this 3.11
        for d in dirs:
            subprocess.run([sys.executable, "-m", "compileall", *opts, "-s", str(root), "-p", "/",
                            str(root / d.lstrip("/"))], capture_output=True)
    else:
        raise RuntimeError("cannot precompile the guest's bytecode: needs the guest's Python 3.11 to run here")
    count = sum(1 for _ in root.glob("**/__pycache__/*.pyc"))
    if count < 500:
        raise RuntimeError(f"only {count} .pyc were written while precompiling the guest's bytecode")
    return count


def _chroot() -> str:
    return shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin") or "/usr/sbin/chroot"


def _guest_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": GUEST_PREFIX}


def _smoke_test(root: Path, arch: Arch) -> None:
    """Import what the guest needs with the guest's interpreter, where it can run here."""
    if arch.name != _native_arch() or os.geteuid() != 0:
        return
    code = ("import numpy, json, ssl, ctypes, zlib, numba, cloudpickle, microstream.unikernel_backend.guest\n"
            "import microstream.unikernel_backend.vmhost, microstream.runtime.host\n"
            "assert numpy.arange(10).sum() == 45")
    done = subprocess.run([_chroot(), str(root), "/usr/bin/python3.11", "-s", "-c", code], capture_output=True,
                          text=True, env=_guest_env())
    if done.returncode != 0:
        raise RuntimeError(f"the guest root cannot run its Python: {done.stderr.strip()[-2000:]}")


# The `microstream warmup` groups the build runs in the guest's root to fill numba's cache (the kernels of a keyed,
# windowed job; microstream/warmup.py, a guest file, so its content is in the image key).
WARM_GROUPS = ("windows", "sessions")


def _warm_numba_cache(root: Path, arch: Arch) -> int:
    """Compile the operator kernels into `NUMBA_CACHE` with the guest's interpreter, for a generic CPU."""
    if arch.name != _native_arch() or os.geteuid() != 0:
        return 0
    # two processes at once (ring and session kernels, the long compiles; a build machine is not a Pi); numba
    # writes its cache files atomically, and the few kernels both compile come out identical
    procs = [subprocess.Popen([_chroot(), str(root), "/usr/bin/python3.11", "-s", "-m", "microstream.warmup",
                               "--child", group],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**_guest_env(), **NUMBA_ENV}) for group in WARM_GROUPS]
    errors = [proc.communicate()[1] for proc in procs]
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"warming the guest's numba cache failed: {err.strip()[-2000:]}")
    return sum(1 for _ in (root / NUMBA_CACHE.lstrip("/")).rglob("*.nbc"))


def _mksquashfs(root: Path, out: Path) -> None:
    # zstd level 6: 99 MB in ~4 s here; the default level 15 gave 91 MB in 29 s
    cmd = ["mksquashfs", str(root), str(out), "-comp", "zstd", "-Xcompression-level", "6", "-noappend", "-all-root",
           "-no-xattrs", "-quiet", "-no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mksquashfs failed: {done.stderr.strip()[-2000:]}")


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


# -- boot image -----------------------------------------------------------------------------------------
class CpioWriter:
    """A `newc` cpio archive (what the kernel unpacks as an initramfs), written without root or cpio(1).

    >>> w = CpioWriter(); w.directory("bin"); w.file("bin/x", b"hi", 0o755); len(w.finish()) % 4
    0
    """

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self.out.write(data)
        self._pad()
        self.ino += 1

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def init_script() -> str:
    return INIT_SCRIPT.replace("@PREFIX@", GUEST_PREFIX).replace("@COMMAND@", " ".join(GUEST_COMMAND))


def _write_initramfs(out: Path, busybox: Path, kdir: Path, modules: list[str]) -> None:
    files = _module_files(kdir)
    w = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "root", "etc", "lib", "lib/modules"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "insmod", "chroot", "reboot", "sleep", "usleep", "cat", "echo"):
        w.symlink(f"bin/{applet}", "busybox")
    w.file("init", init_script().encode(), 0o755)
    w.file("etc/modules.order", "\n".join(modules).encode() + b"\n")
    for name in modules:
        w.file(f"lib/modules/{name}.ko", files[name].read_bytes())
    w.file(".complete", b"")  # the sentinel /init checks: last, so a truncated unpack misses it
    out.write_bytes(w.finish())


# -- command line -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    examples = ("examples:\n  microstream image build\n  microstream image build --arch arm64 --cache-dir "
                "/var/cache/microstream/images\n  microstream image build --force")
    ap = argparse.ArgumentParser(prog="microstream image", description="Build the microVM image.", epilog=examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    text = ("build (or find in the cache) the microVM image for --arch: a kernel, an initramfs and a read-only root "
            "with Python, numpy and microstream's guest side, from Debian packages; prints their paths as JSON")
    build = sub.add_parser("build", help="build (or find in the cache) the image", epilog=examples,
                           description=textwrap.fill(text[:1].upper() + text[1:] + "."),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--arch", choices=sorted(ARCHES), default=_default_arch(),
                       help="the guest's architecture (default: this machine's, %(default)s)")
    build.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help="where images are built and kept (default: $MICROSTREAM_HOME/images, else "
                            "~/.cache/microstream/images)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    args, extra = ap.parse_known_args(argv)
    if extra:  # refused with `image build`'s usage, which lists its options (argparse would show `image`'s)
        build.error(f"unrecognized arguments: {' '.join(extra)}")
    # progress on stderr: stdout is the JSON, for scripts to read
    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    ensure_host_tools(args.arch, progress=progress)
    image = build_image(args.arch, args.cache_dir, force=args.force, progress=progress)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(image).items()}  # cached stays a bool
    print(json.dumps({**fields, "sizes": image.sizes}, indent=2, default=str))
    return 0


def _default_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")


if __name__ == "__main__":
    sys.exit(main())
