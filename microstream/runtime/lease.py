"""An agent's lease on its hosts: a host whose agent is frozen or stuck stops by itself.

The agent renews the lease on every pass of its loop (the loop that also sends its heartbeats) by writing the time
into a small shared file; each of its process hosts maps that file and reads it. When the lease has not been renewed
for the host's `lease` seconds (a heartbeat interval less than the coordinator's loss limit), the host stops: by then
the coordinator is about to count the agent lost and run the host's work elsewhere, and two copies of a virtual node
must not run at once (an MQTT source's two copies would take one broker session from each other).

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

_STAMP = struct.Struct("=d")   # one float64: the agent's time.monotonic() at its last renewal
EXIT_LEASE_EXPIRED = 75        # a host's exit status when it stopped because its lease expired (EX_TEMPFAIL)


class AgentLease:
    """The agent's end: renews the lease (an aligned 8-byte write into a shared mapping)."""

    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path = path
        self._map = mapping

    @classmethod
    def create(cls, path: Path) -> AgentLease:
        path.write_bytes(_STAMP.pack(time.monotonic()))
        with open(path, "r+b") as f:
            return cls(path, mmap.mmap(f.fileno(), _STAMP.size))

    def renew(self) -> None:
        _STAMP.pack_into(self._map, 0, time.monotonic())


class HostLease:
    """A host's end: how long ago its agent last renewed the lease, and whether that is longer than `lease`."""

    def __init__(self, path: str | os.PathLike[str], lease: float) -> None:
        self.lease = lease
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), _STAMP.size, access=mmap.ACCESS_READ)

    def age(self) -> float:
        return time.monotonic() - _STAMP.unpack_from(self._map, 0)[0]

    def expired(self) -> bool:
        return self.age() > self.lease
