"""An agent's lease on its hosts: a host whose agent is frozen or stuck stops by itself.

The agent renews the lease as it sends each heartbeat (and all the time while no coordinator is there to count it
lost) by writing the time into a small shared file; each of its process hosts maps that file and reads it. When
the lease has not been renewed for the host's `lease` seconds (half a second less than the coordinator's loss
limit), the host stops: by then the coordinator is about to count the agent lost and run the host's work
elsewhere, and two copies of a virtual node must not run at once (an MQTT source's two copies would take one
broker session from each other).

Only an agent that is not running counts: when the lease runs out, the host looks at the agent's process, and stops
if it is stopped (SIGSTOP), in uninterruptible sleep (an SD card that stalls) or gone. An agent that runs but is
slow (starved of CPU on a loaded Pi) is never taken for frozen: the coordinator decides about it, and epoch
fencing stops whatever it replaced (a host that stopped needlessly would cost its job a recovery, or fail a job
without checkpoints).

A file rather than a message: a host that is busy or frozen itself never has leases pile up in its control queue,
and reading the lease costs a few hundred nanoseconds. One clock for both ends: `time.monotonic()` is the system's
CLOCK_MONOTONIC, the same in every process of a machine (and it does not jump with NTP).

    >>> import tempfile, time
    >>> from pathlib import Path
    >>> agent = AgentLease.create(Path(tempfile.mkdtemp()) / "lease")
    >>> agent.renew()
    >>> host = HostLease(agent.path, lease=5.0)
    >>> host.expired()
    False
    >>> host.age() < 1.0
    True
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

from ..core import procs

# the agent's time.monotonic() at its last renewal (rewritten), and its pid (written once)
_LEASE = struct.Struct("=dq")
_STAMP = struct.Struct("=d")   # what a renewal rewrites: one aligned 8-byte store
EXIT_LEASE_EXPIRED = 75        # a host's exit status when it stopped because its lease expired (EX_TEMPFAIL)
_NOT_RUNNING = frozenset("TtDZX")  # stopped, traced, uninterruptible sleep, zombie, dead (/proc/PID/stat)


class AgentLease:
    """The agent's end: renews the lease (an aligned 8-byte write into a shared mapping)."""

    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path = path
        self._map = mapping

    @classmethod
    def create(cls, path: Path) -> AgentLease:
        path.write_bytes(_LEASE.pack(time.monotonic(), os.getpid()))
        with open(path, "r+b") as f:
            return cls(path, mmap.mmap(f.fileno(), _LEASE.size))

    def renew(self) -> None:
        _STAMP.pack_into(self._map, 0, time.monotonic())


class HostLease:
    """A host's end: how long ago its agent last renewed the lease, and whether the host should stop."""

    def __init__(self, path: str | os.PathLike[str], lease: float) -> None:
        self.lease = lease
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), _LEASE.size, access=mmap.ACCESS_READ)
        self.agent = _LEASE.unpack_from(self._map, 0)[1]

    def age(self) -> float:
        return time.monotonic() - _LEASE.unpack_from(self._map, 0)[0]

    def expired(self) -> bool:
        """Not renewed for `lease` seconds, and the agent is not running (stopped, stalled in the kernel, gone)."""
        return self.age() > self.lease and procs.state(self.agent) in _NOT_RUNNING

