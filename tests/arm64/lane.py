"""The arm64 lane's driver: an emulated Debian arm64 root on this x86 machine, with microstream in it.

- emulation: `qemu-user-static` and `debootstrap` (Debian packages, installed with apt-get), binfmt_misc mounted
  and the aarch64 interpreter registered with the `F` flag (so a chroot needs no copy of QEMU);
- the root: `debootstrap --arch=arm64 --variant=minbase bookworm` plus python3 and python3-venv, cached in
  `$MICROSTREAM_HOME/arm64` or `~/.cache/microstream/arm64` (the .debs too) and reused while its recipe holds;
  a venv at /opt/venv with microstream and its dependencies from the package registries' aarch64 wheels, pinned to
  the versions this machine runs (pip's cache stays in the root);
- a run: /proc, /dev and /dev/shm mounted in the root, the checkout seen at /src through an overlay (the tests
  and examples write into the overlay, never into the checkout), the host's CA bundle and resolver copied in.

    python -m tests.arm64.lane                # prepare (or reuse) the root and print where it is

Used by tests/arm64/test_arm64.py (`make test-arm64`) and bench/arm64.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from microstream.core.sysdeps import apt_install

CHECKOUT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBS = ("python3", "python3-venv", "ca-certificates")
# the Python packages, pinned to this machine's versions so both sides of a comparison run the same software
PINNED = ("numpy", "numba", "llvmlite", "pyzmq", "cloudpickle", "prometheus-client", "scipy", "pytest",
          "pytest-timeout", "hypothesis")
VENV = "/opt/venv"
NUMBA_CACHE = "/var/cache/microstream/numba"  # the lane's numba cache inside the root (cleared for cold runs)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
Progress = Callable[[str], None]


def cache_dir() -> Path:
    home = os.environ.get("MICROSTREAM_HOME")
    base = Path(home).expanduser() if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "microstream"
    return base / "arm64"


def pins() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in PINNED]


def recipe() -> dict[str, object]:
    return {"suite": SUITE, "variant": "minbase", "debs": DEBS, "pins": pins(), "venv": VENV}


def unavailable() -> str | None:
    """Why the lane cannot run here (None when it can)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "the lane emulates arm64 on an x86_64 Linux machine"
    if os.geteuid() != 0:
        return "the lane needs root (debootstrap, chroot, mounts)"
    if shutil.which("apt-get") is None:
        return "the lane needs apt-get (Debian) to install debootstrap and qemu-user-static"
    return None


# -- emulation --------------------------------------------------------------------------------------------
def ensure_emulation(progress: Progress = print) -> None:
    """qemu-user-static and debootstrap installed, binfmt_misc mounted, aarch64 registered."""
    missing = [pkg for cmd, pkg in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static"))
               if shutil.which(cmd) is None and shutil.which(cmd, path="/usr/sbin:/sbin") is None]
    if missing:
        apt_install(missing, "the arm64 lane: emulation and the root", progress)
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True, capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text().strip()
        (BINFMT / "register").write_text(conf)  # flags OPF: F opens the interpreter now, so chroots need no copy
        progress("registered qemu-aarch64 with binfmt_misc")
    if "enabled" not in entry.read_text():
        raise RuntimeError(f"binfmt_misc has qemu-aarch64 disabled: echo 1 > {entry}")


# -- the root ---------------------------------------------------------------------------------------------
def root_dir() -> Path:
    return cache_dir() / "root"


def ensure_root(progress: Progress = print) -> dict[str, float]:
    """Build (or reuse) the arm64 root and its venv; seconds per step that ran."""
    ensure_emulation(progress)
    root, stamp = root_dir(), root_dir() / ".microstream-lane.json"
    spent: dict[str, float] = {}
    want = recipe()
    have = json.loads(stamp.read_text()) if stamp.exists() else {}
    if have.get("suite") != SUITE or have.get("debs") != list(DEBS):
        t = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        debs = cache_dir() / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        progress(f"debootstrap: a minbase {SUITE} arm64 root in {root} (a few minutes; .debs cached in {debs})")
        done = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(DEBS)}",
                               f"--cache-dir={debs}", SUITE, str(root), MIRROR], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        spent["debootstrap"] = time.perf_counter() - t
        have = {"suite": SUITE, "debs": list(DEBS)}
        stamp.write_text(json.dumps(have))
    if have.get("pins") != want["pins"] or not (root / VENV.lstrip("/") / "bin/python").exists():
        t = time.perf_counter()
        progress(f"pip (in the root, aarch64 wheels): {' '.join(want['pins'])}")  # type: ignore[arg-type]
        with Chroot(root) as chroot:
            chroot.check(["/usr/bin/python3", "-m", "venv", VENV], timeout=600)
            chroot.check([f"{VENV}/bin/pip", "install", "-q", "--only-binary", ":all:", "setuptools>=68", *pins()],
                         timeout=3600)
        spent["pip"] = time.perf_counter() - t
        stamp.write_text(json.dumps(want))
    return spent


def install_microstream(chroot: Chroot) -> float:
    """Install this checkout's microstream into the root's venv (a wheel built from a copy; no dependency
    changes: they are the pinned ones)."""
    t = time.perf_counter()
    build = chroot.root / f"tmp/microstream-src-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, build / name)
    shutil.copytree(CHECKOUT / "microstream", build / "microstream",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    chroot.check([f"{VENV}/bin/pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  f"/{build.relative_to(chroot.root)}"], timeout=1800)
    shutil.rmtree(build, ignore_errors=True)
    return time.perf_counter() - t


def root_digest() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def source_digest() -> str:
    """What a run in the root executes from this checkout: microstream, the examples, the counting wrapper."""
    h = hashlib.sha256()
    files = [CHECKOUT / "pyproject.toml", CHECKOUT / "tests/arm64/run_counted.py",
             *sorted((CHECKOUT / "microstream").rglob("*.py")), *sorted((CHECKOUT / "examples/sensors").rglob("*.py"))]
    for path in files:
        h.update(str(path.relative_to(CHECKOUT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# -- figures the tests measured, for the bench ----------------------------------------------------------
# The test measures `microstream warmup` on an empty cache and the examples' first runs after it (that is what it
# asserts on); the bench records those same runs instead of repeating half an hour of emulated compiling, when
# they ran on the same sources and root.
def figures_path() -> Path:
    return cache_dir() / "figures.json"


def warmup_figures(done: Run) -> dict[str, object]:
    """`microstream warmup --json`'s run: wall seconds, per group (seconds, kernels, peak RSS), the largest peak."""
    groups = json.loads(done.stdout)
    return {"seconds": round(done.seconds, 1), "groups": groups,
            "peak_rss_mb": max(g["peak_rss_mb"] for g in groups)}


def counted_figures(done: Run) -> dict[str, object]:
    """A `run_counted.py` run: wall seconds, peak RSS of the process, kernels compiled."""
    return {"seconds": round(done.seconds, 2), "peak_rss_mb": done.peak_rss_mb,
            "compiled": len(done.last_json()["compiled"])}


def save_figures(source: str, figures: dict[str, object], complete: bool) -> None:
    figures_path().write_text(json.dumps({"source": source, "root": root_digest(), "complete": complete,
                                          "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          **figures}, indent=2))


def load_figures(source: str) -> dict[str, object] | None:
    """The test's figures if it passed on these sources in this root (else None)."""
    try:
        found = json.loads(figures_path().read_text())
    except (OSError, ValueError):
        return None
    same = found.get("source") == source and found.get("root") == root_digest()
    return found if same and found.get("complete") is True else None


# -- running in the root ----------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished command: exit code, output, wall seconds, the peak resident set of its process (under
    emulation: QEMU's, translated code included) and of its largest waited-for descendant."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float

    def last_json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout: float = 1800) -> Run:
    """Run `cmd`, measuring its wall time and (wait4) its peak RSS."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                   time.perf_counter() - start, round(usage.ru_maxrss / 1024, 1))


class Chroot:
    """The root with /proc, /dev, /dev/shm mounted and the checkout at /src (an overlay: writes stay in a
    scratch directory); unmounted on exit."""

    def __init__(self, root: Path, checkout: bool = False, numba_cache: str = NUMBA_CACHE) -> None:
        self.root = root
        self.checkout = checkout
        self.numba_cache = numba_cache
        self.mounts: list[Path] = []
        self.scratch: Path | None = None
        self.source = ""  # source_digest() of the microstream installed in it (set by `lane`)

    def __enter__(self) -> Chroot:
        try:
            self._mount("proc", self.root / "proc", "-t", "proc")
            self._mount("/dev", self.root / "dev", "--bind")
            self._mount("tmpfs", self.root / "dev/shm", "-t", "tmpfs")
            if self.checkout:
                self.scratch = Path(tempfile.mkdtemp(prefix="overlay-", dir=cache_dir()))
                (self.scratch / "upper").mkdir()
                (self.scratch / "work").mkdir()
                self._mount("overlay", self.root / "src", "-t", "overlay", "-o",
                            f"lowerdir={CHECKOUT},upperdir={self.scratch / 'upper'},workdir={self.scratch / 'work'}")
        except BaseException:
            self.__exit__()
            raise
        for name in ("etc/resolv.conf", CA_BUNDLE.lstrip("/")):
            target = self.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                target.unlink()
            shutil.copy(Path("/") / name, target)
        return self

    def _mount(self, source: str, target: Path, *opts: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *opts, source, str(target)], check=True, capture_output=True)
        self.mounts.append(target)

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        self.mounts.clear()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{VENV}/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8",
                "PIP_CERT": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "NUMBA_CACHE_DIR": self.numba_cache, "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def run(self, cmd: list[str], cwd: str = "/", timeout: float = 1800, **env: str) -> Run:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return run_measured([chroot, str(self.root), "/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *cmd],
                            env=self.env(**env), timeout=timeout)

    def check(self, cmd: list[str], cwd: str = "/", timeout: float = 1800, **env: str) -> Run:
        done = self.run(cmd, cwd, timeout, **env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in the arm64 root (exit {done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def clear_numba_cache(self) -> None:
        shutil.rmtree(self.root / self.numba_cache.lstrip("/"), ignore_errors=True)


@contextlib.contextmanager
def lane(progress: Progress = print, numba_cache: str = NUMBA_CACHE) -> Iterator[Chroot]:
    """The prepared root with this checkout installed and mounted at /src; `numba_cache` is where numba's cache
    goes inside it."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    ensure_root(progress)
    with Chroot(root_dir(), checkout=True, numba_cache=numba_cache) as chroot:
        chroot.source = source_digest()
        # reinstalled only when the sources changed: a reinstall gives every file a new mtime, which makes numba's
        # cache entries of the installed code stale (and would pull files from under a lane already running)
        installed = chroot.root / VENV.lstrip("/") / ".microstream-source"
        if installed.exists() and installed.read_text() == chroot.source:
            progress(f"microstream {chroot.source} already installed in the arm64 root")
        else:
            progress(f"microstream installed in the arm64 root in {install_microstream(chroot):.0f} s")
            installed.write_text(chroot.source)
        yield chroot


def main() -> int:
    spent = ensure_root()
    print(json.dumps({"root": str(root_dir()), "recipe": recipe(), "seconds": spent}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
