"""Host backends: where a virtual node's host runs. One interface, several backends.

- `process` (the default): the host is a Python subprocess of the agent.
- `microvm`: the same host inside a single-application VM image under QEMU (`relay.py`, `vmhost.py`).

A backend starts a host wired to the agent's control endpoint and returns a handle the agent polls
and stops. Saving, restoring and migrating a virtual node is done *above* the backend, by the
runtime's barrier snapshots (application-level state, portable across machine types), so every
backend gets it; a backend may add its own whole-host tier (e.g. a VM's memory image).
"""

from __future__ import annotations

import os
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path


class HostHandle(ABC):
    """A running host."""

    pid: int

    @abstractmethod
    def poll(self) -> int | None:
        """Exit code, or None while it runs."""

    @abstractmethod
    def stop(self, grace: float = 2.0) -> None:
        """Ask it to end, then make sure it has."""


class HostBackend(ABC):
    name: str

    def available(self) -> bool:
        return True

    @abstractmethod
    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        """Start the host of `job`/`vnode`; it connects to `control_endpoint` and says hello."""


class ProcessHandle(HostHandle):
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace: float = 2.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProcessBackend(HostBackend):
    """Each virtual node in its own Python subprocess (isolated memory, its own interpreter and GIL)."""

    name = "process"

    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        return _spawn("microstream.runtime.host_main", job, vnode, control_endpoint, log_path)


class MicroVMBackend(HostBackend):
    """Each virtual node inside its own QEMU microVM: a relay process (`relay.py`) speaks the agent's host
    protocol, boots the VM, runs the vnode's `HostRuntime` inside it and carries its data channels."""

    name = "microvm"

    def available(self) -> bool:
        """QEMU and the image tools are installed, and an image matching this code is built (`microstream
        image build`) or this agent may build one (root, with apt: the relay then builds it at the first
        deploy, ~1 min, and caches it). Checks files only (no boot, no apt call): the relay finds out about
        the accelerator when it boots (KVM only where a probe boot works, else TCG)."""
        from .image import find_built_image, missing_host_tools

        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
        if arch is None or missing_host_tools(arch):
            return False
        return find_built_image(arch) is not None or os.geteuid() == 0

    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        return _spawn("microstream.unikernel_backend.relay", job, vnode, control_endpoint, log_path)


def _spawn(module: str, job: str, vnode: str, control_endpoint: str, log_path: Path) -> ProcessHandle:
    """A Python subprocess running `module`'s host for `job`/`vnode`, wired to the agent's control endpoint."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, "--control", control_endpoint, "--job", job,
                                 "--vnode", vnode], stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    return ProcessHandle(proc)


BACKENDS: dict[str, type[HostBackend]] = {"process": ProcessBackend, "microvm": MicroVMBackend}
KNOWN_BACKENDS = ("process", "microvm")  # what a job may require; agents advertise what they can run


def available_backends() -> dict[str, HostBackend]:
    """The backends this machine can run, by name (agents advertise them to the coordinator).
    `MICROSTREAM_BACKENDS=process,...` limits an agent to those (e.g. a node that should run no VMs)."""
    allowed = {b.strip() for b in os.environ.get("MICROSTREAM_BACKENDS", "").split(",") if b.strip()}
    found = {}
    for name, cls in BACKENDS.items():
        if allowed and name not in allowed:
            continue
        backend = cls()
        if backend.available():
            found[name] = backend
    return found
