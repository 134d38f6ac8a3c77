"""The `microvm` host backend: each virtual node inside its own QEMU microVM (`relay.py`, `vmhost.py`), behind
the interface of `microstream.runtime.backends`."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..runtime.backends import HostBackend, HostHandle, spawn_host


class MicroVMBackend(HostBackend):
    """Each virtual node inside its own QEMU microVM: a relay process (`relay.py`) speaks the agent's host
    protocol, boots the VM, runs the vnode's `HostRuntime` inside it and carries its data channels."""

    name = "microvm"

    def available(self) -> bool:
        """QEMU and the image tools are installed, and an image matching this code is built (`microstream
        image build`) or this agent may build one (root, with apt: the relay then builds it at the first
        deploy, ~1 min, and caches it). Checks files only (no boot, no apt call): the relay finds out about
        the accelerator when it boots (KVM only where a probe boot works, else TCG)."""
        from ..unikernel_backend.image import find_built_image, missing_host_tools

        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
        if arch is None or missing_host_tools(arch) or not _qmp_installed():
            return False
        return find_built_image(arch) is not None or os.geteuid() == 0

    def prepare(self, workdir: Path, log: Callable[[str], None]) -> None:
        """With `MICROSTREAM_VM_TEMPLATE=eager`, build this machine's VM template (`template.py`) on a thread as
        the agent starts, so even its first VM vnode starts from it; by default the first VM vnode builds it."""
        from . import template

        if template.mode() == "eager":
            threading.Thread(target=_build_template, args=(log,), name="microvm-template", daemon=True).start()

    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        return spawn_host("microstream.unikernel_backend.relay", job, vnode, control_endpoint, log_path)


def _build_template(log: Callable[[str], None]) -> None:
    from .image import build_image
    from .relay import MEMORY_MB
    from .template import template_for

    try:
        template = template_for(build_image(progress=log), MEMORY_MB, log=log)
        log(f"microvm template {template.key}: ready ({template.directory})")
    except Exception as exc:  # noqa: BLE001 - an agent runs on without it: its VM vnodes boot cold
        log(f"microvm template: not built, VM vnodes will boot cold: {exc}")


def _qmp_installed() -> bool:
    """The `[microvm]` extra (qemu.qmp) is installed: an agent without it does not offer the backend."""
    import importlib.util

    try:
        return importlib.util.find_spec("qemu.qmp") is not None
    except ImportError:  # no `qemu` package at all
        return False
