"""Ready microVM templates: boot the image once, warm the guest, save it; start VM vnodes by restoring it.

    image = build_image()
    template = template_for(image, memory_mb=384)   # found in the cache, else built now (~20-30 s under TCG)
    vm = template_vm(image, template, workdir=...)  # a MicroVM whose RAM is the template's, copy-on-write
    restore_template(vm, template)                   # ~0.1 s to `cont`; the guest answers at once, numba loaded

A template is a guest that has booted, loaded Python, numpy, numba and the common window kernels
(`vmhost.warm`) and is waiting for a job, saved with QEMU's own migration stream. Its RAM is a file
(`memory-backend-file`, mapped shared while the template runs, so the guest writes into it), and the
stream leaves that RAM out (QEMU's `x-ignore-shared` capability): the stream is the devices' and CPU's
state (~0.2 MB), the file is the memory. A VM restored from it maps the file *private*: pages it only
reads stay the page cache's, shared by every VM of the template, and a page it writes becomes its own
copy. So a restored VM starts in well under a second instead of a boot plus numba's warm-up, and its
PSS counts only what it changed.

Cache: `<image cache>/templates/<key>/` (`ram`, `state.zst`, `state.zst.json`, `manifest.json`). The key
hashes the image key, the QEMU version, the machine type, the accelerator, guest RAM and CPUs and
`RECIPE`: a new image, QEMU or memory size gives a new template, built at first need under a file lock
(several relays wanting one wait for the one build). A template is never changed in place (a running
VM maps its RAM file): it is built in a temporary directory and renamed into place, and a bad one is
renamed away before it is deleted (an unlinked file stays mapped where it is in use). Building one deletes all but
the newest `KEEP` + 1 templates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .image import ARCHES, ImagePaths, default_cache_dir, file_lock

RECIPE = 1  # bump when what a template holds changes (the warm-up, the RAM layout)
WARM = "import microstream.unikernel_backend.vmhost as _vmhost; _vmhost.warm()"
BUILD_TIMEOUT = 600.0     # boot + warm-up under TCG on a busy machine
RESTORE_TIMEOUT = 60.0    # new QEMU -> the restored guest answering (0.1-1 s here; a hung guest means a bad template)
MODES = ("on", "eager", "off")
KEEP = 2  # older templates kept beside the newest (another image or VM shape still in use); the rest are deleted


class TemplateError(RuntimeError):
    """No usable template (stale, corrupt, or it cannot be built or restored): boot cold instead."""


def mode() -> str:
    """`MICROSTREAM_VM_TEMPLATE`: "on" (default: built at the first VM vnode's need), "eager" (an agent builds it
    on a thread as it starts) or "off" (every VM boots cold)."""
    value = os.environ.get("MICROSTREAM_VM_TEMPLATE", "on").strip().lower() or "on"
    if value not in MODES:
        raise ValueError(f"MICROSTREAM_VM_TEMPLATE={value!r}: use one of {', '.join(MODES)}")
    return value


@dataclass(frozen=True)
class Template:
    directory: Path
    key: str
    info: dict[str, Any]

    @property
    def ram(self) -> Path:
        return self.directory / "ram"

    @property
    def state(self) -> Path:
        return self.directory / "state.zst"

    @property
    def memory_mb(self) -> int:
        return int(self.info["memory_mb"])

    @property
    def accel(self) -> str:
        return str(self.info["accel"])


def _qemu_version(image: ImagePaths) -> str:
    from .vm import qemu_version

    arch = ARCHES[image.arch]
    return qemu_version(shutil.which(arch.qemu) or arch.qemu)


def expected(image: ImagePaths, memory_mb: int, accel: str, cpus: int = 1) -> dict[str, Any]:
    """What a template for this image and VM shape must have been built with."""
    return {"recipe": RECIPE, "image_key": image.key, "arch": image.arch, "qemu": _qemu_version(image),
            "machine": image.info().get("machine", ARCHES[image.arch].machine), "accel": accel,
            "memory_mb": memory_mb, "cpus": cpus}


def template_key(want: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:16]


def templates_dir(cache_dir: str | Path | None = None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "templates"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check(directory: Path, want: dict[str, Any]) -> Template:
    """The template in `directory`, if it was built for `want` and its files are whole; else TemplateError."""
    try:
        info = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise TemplateError(f"template {directory.name}: unreadable manifest ({exc})") from exc
    stale = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
    if stale:
        what = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in sorted(stale.items()))
        raise TemplateError(f"template {directory.name} is stale: built for {what}")
    template = Template(directory, directory.name, info)
    try:
        if template.ram.stat().st_size != info["ram_bytes"]:
            raise TemplateError(f"template {directory.name} is corrupt: RAM file of {template.ram.stat().st_size} "
                                f"bytes, {info['ram_bytes']} expected")
        if file_sha256(template.state) != info["state_sha256"]:
            raise TemplateError(f"template {directory.name} is corrupt: its saved state does not match its checksum")
        json.loads(Path(f"{template.state}.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise TemplateError(f"template {directory.name} is incomplete: {exc}") from exc
    return template


def discard(directory: Path, log: Callable[[str], None] = print) -> None:
    """Move a bad template out of the way (a later VM vnode builds a new one) and delete it. Renamed first: a VM
    restoring from it keeps its open files, and no one finds it half deleted."""
    with contextlib.suppress(OSError):
        away = directory.with_name(f".discarded-{directory.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(directory, away)
        shutil.rmtree(away, ignore_errors=True)
        log(f"microvm template {directory.name}: discarded")


def template_for(image: ImagePaths, memory_mb: int, accel: str | None = None, cpus: int = 1,
                 cache_dir: str | Path | None = None, log: Callable[[str], None] = print,
                 build: bool = True) -> Template:
    """The template for `image` at this VM shape: from the cache, or built now (`build`) if there is none.

    A cached template that is stale or corrupt raises TemplateError (with the reason) after discarding it, so
    the caller boots cold this once and the next VM vnode builds a good one."""
    from .vm import probe_accel

    accel = accel or probe_accel(image, log=log)
    want = expected(image, memory_mb, accel, cpus)
    key = template_key(want)
    root = templates_dir(cache_dir)
    directory = root / key
    if (directory / "manifest.json").exists():
        try:
            return check(directory, want)
        except TemplateError:
            discard(directory, log)
            raise
    if not build:
        raise TemplateError(f"no template {key} yet")
    with file_lock(root / f".{key}.lock"):
        if (directory / "manifest.json").exists():  # another process built it while we waited
            return check(directory, want)
        return _build(image, want, key, root, log)


def _build(image: ImagePaths, want: dict[str, Any], key: str, root: Path, log: Callable[[str], None]) -> Template:
    from .vm import MicroVM

    log(f"microvm template {key}: building (boot, warm numba, save; {want['memory_mb']} MB, {want['accel']})")
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    out = work / "out"
    out.mkdir()
    started = time.monotonic()
    vm = MicroVM(image, memory_mb=want["memory_mb"], cpus=want["cpus"], accel=want["accel"], workdir=work / "vm",
                 name=f"template-{key}", ram_file=out / "ram", ram_shared=True, log=log)
    try:
        boot = vm.start(timeout=BUILD_TIMEOUT)
        warm_s = vm.channel.exec(WARM, timeout=BUILD_TIMEOUT)
        saved = vm.save(out / "state.zst")
    except Exception as exc:
        with contextlib.suppress(Exception):
            log(vm.diagnostics(15))
        shutil.rmtree(work, ignore_errors=True)
        raise TemplateError(f"template {key} could not be built: {exc}") from exc
    finally:
        vm.cleanup()
    info = {**want, "key": key, "ram_bytes": (out / "ram").stat().st_size,
            "state_bytes": saved["bytes"], "state_sha256": file_sha256(out / "state.zst"),
            "boot_s": round(boot, 2), "warm_s": round(float(warm_s), 2), "save_s": round(saved["seconds"], 3),
            "build_s": round(time.monotonic() - started, 1), "built": time.time()}
    (out / "manifest.json").write_text(json.dumps(info, indent=2))
    final = root / key
    os.rename(out, final)
    shutil.rmtree(work, ignore_errors=True)
    prune(root, log)
    log(f"microvm template {key}: built in {info['build_s']} s (boot {info['boot_s']} s, warm-up {info['warm_s']} s, "
        f"save {info['save_s']} s; {saved['bytes'] / 1e6:.1f} MB of device state, {info['ram_bytes'] >> 20} MB RAM)")
    return Template(final, key, info)


def prune(root: Path, log: Callable[[str], None] = print, keep: int = KEEP) -> list[str]:
    """Delete all but the newest `keep` + 1 templates under `root` (each is a RAM file of the guest's size: an
    image rebuilt for every code change would otherwise leave one behind each time). Returns the keys deleted."""
    built = []
    for manifest in root.glob("*/manifest.json"):
        with contextlib.suppress(OSError, ValueError):
            built.append((float(json.loads(manifest.read_text()).get("built", 0)), manifest.parent))
    built.sort(reverse=True)
    gone = []
    for _, directory in built[keep + 1:]:
        discard(directory, log)
        gone.append(directory.name)
    return gone


def template_vm(image: ImagePaths, template: Template, **kwargs: Any) -> Any:
    """A MicroVM shaped like the template, its RAM a private (copy-on-write) mapping of the template's."""
    from .vm import MicroVM

    return MicroVM(image, memory_mb=template.memory_mb, cpus=int(template.info["cpus"]), accel=template.accel,
                   ram_file=template.ram, ram_shared=False, **kwargs)


def restore_template(vm: Any, template: Template, timeout: float = RESTORE_TIMEOUT) -> float:
    """Start `vm` (from `template_vm`) as the template's guest: restore, resume, and give the guest this
    moment's clock (it wakes with the template's). Returns seconds until the guest answered."""
    start = time.monotonic()
    vm.restore(template.state, timeout=timeout)
    # the guest clock and the seeds of its random generators come from the template: set them apart
    vm.channel.exec(f"import time as _t, random as _r; _t.clock_settime(_t.CLOCK_REALTIME, {time.time()!r}); "
                    "_r.seed()", timeout=timeout)
    return time.monotonic() - start
