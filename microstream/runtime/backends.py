"""Host backends: where a virtual node's host runs. One interface, several backends.

- `process` (the default): the host is a Python subprocess of the agent.
- `microvm`: the same host inside a single-application VM image under QEMU (`microstream.unikernel_backend`:
  `backend.MicroVMBackend`, `relay.py`, `vmhost.py`).

This module is the interface and the process backend; the agent (`microstream.cluster.agent`) registers
both backends and offers those this machine can run.

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
        return spawn_host("microstream.runtime.host_main", job, vnode, control_endpoint, log_path)


def spawn_host(module: str, job: str, vnode: str, control_endpoint: str, log_path: Path) -> ProcessHandle:
    """A Python subprocess running `module`'s host for `job`/`vnode`, wired to the agent's control endpoint."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, "--control", control_endpoint, "--job", job,
                                 "--vnode", vnode], stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    return ProcessHandle(proc)


KNOWN_BACKENDS = ("process", "microvm")  # what a job may require; agents advertise what they can run
