"""Host backends: where a virtual node's host runs. One interface, several backends.

- `process` (the default): the host is a Python process, child of the agent, forked from a warm template
  (`forkserver.py`) or spawned.
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

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from . import forkserver
from .forkserver import ForkServer


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

    def prepare(self, workdir: Path, log: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """The agent is starting: get ready to start hosts fast (e.g. warm a template process)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The agent is ending (its hosts have been stopped)."""

    @abstractmethod
    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        """Start the host of `job`/`vnode`; it connects to `control_endpoint` and says hello."""

    def start_many(self, hosts: list[tuple[str, str, str, Path]]) -> list[HostHandle]:
        """`start` for each (job, vnode, control endpoint, log path): a job's deployment arrives as a burst, which
        a backend may start faster together than one by one."""
        return [self.start(*host) for host in hosts]


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


class ForkedHandle(HostHandle):
    """A host forked by the template (`forkserver.py`) and adopted by this process, the agent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None

    def poll(self) -> int | None:
        if self._code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not adopted yet (its intermediate parent is exiting), or reaped elsewhere
                try:
                    os.kill(self.pid, 0)
                    return None
                except ProcessLookupError:
                    self._code = -1  # it has ended; how is unknown
                    return self._code
            if pid == self.pid:
                self._code = os.waitstatus_to_exitcode(status)  # a signal as its negative number, as Popen
        return self._code

    def stop(self, grace: float = 2.0) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            while self.poll() is None:
                time.sleep(0.005)


class ProcessBackend(HostBackend):
    """Each virtual node in its own Python process (isolated memory, its own interpreter and GIL), forked from a
    warm template (`forkserver.py`: milliseconds, pages shared copy-on-write) or, when there is no ready template
    (`MICROSTREAM_FORKSERVER=0`, not Linux, still warming up, died), spawned."""

    name = "process"

    def __init__(self) -> None:
        self.forkserver: ForkServer | None = None

    def prepare(self, workdir: Path, log: Callable[[str], None]) -> None:
        if forkserver.enabled():
            server = ForkServer(workdir / "forkserver.log", log)
            if server.start():
                self.forkserver = server

    def start(self, job: str, vnode: str, control_endpoint: str, log_path: Path) -> HostHandle:
        return self.start_many([(job, vnode, control_endpoint, log_path)])[0]

    def start_many(self, hosts: list[tuple[str, str, str, Path]]) -> list[HostHandle]:
        module = "microstream.runtime.host_main"
        pids: list[int | None] = [None] * len(hosts)
        if self.forkserver is not None:
            pids = self.forkserver.fork_many([(module, host_args(job, vnode, control), log_path)
                                              for job, vnode, control, log_path in hosts])
        return [ForkedHandle(pid) if pid is not None else spawn_host(module, job, vnode, control, log_path)
                for pid, (job, vnode, control, log_path) in zip(pids, hosts, strict=True)]

    def close(self) -> None:
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None


def host_args(job: str, vnode: str, control_endpoint: str) -> list[str]:
    return ["--control", control_endpoint, "--job", job, "--vnode", vnode]


def spawn_host(module: str, job: str, vnode: str, control_endpoint: str, log_path: Path) -> ProcessHandle:
    """A Python subprocess running `module`'s host for `job`/`vnode`, wired to the agent's control endpoint."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *host_args(job, vnode, control_endpoint)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    return ProcessHandle(proc)


KNOWN_BACKENDS = ("process", "microvm")  # what a job may require; agents advertise what they can run
