"""A process as Linux's /proc shows it: its state letter and its start time. With the pid, the start time names
one process (pids are reused: 32,768 of them go round in minutes on a busy machine). Elsewhere than Linux, every
process looks gone.

    >>> import os
    >>> state(os.getpid())
    'R'
    >>> start_time(os.getpid()) == start_time(os.getpid()) is not None
    True
"""

from __future__ import annotations

GONE = "X"  # the state of a process that does not exist (as /proc spells a dead one)


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): state first, start time at
    index 19; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str:
    """R running, S sleeping, D uninterruptible (in the kernel: an I/O that stalls), T stopped, Z zombie..."""
    fields = stat(pid)
    return fields[0] if fields else GONE


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), None if there is no such process."""
    fields = stat(pid)
    return fields[19] if fields else None
