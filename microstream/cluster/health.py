"""Is a running job moving? One health line per job, from what its hosts report about their channels.

Every host reports, per outgoing channel (`ChannelClient.stats`), what is in flight (messages and bytes the
consumer has not acked), for how long nothing has been acked while something was (`stalled_seconds`), for how
long it has been out of credits (`waiting_seconds`, and the total `blocked_seconds`), and when the consumer was
last heard (`peer_silent_seconds`). The coordinator gets these in the agents' heartbeats; `JobHealth` keeps the
little history a verdict needs and says, per running job, one of:

* **stalled**: a channel has had messages in flight and none delivered for `STALL_AFTER` seconds or more:
  ``stalled: no progress for 14 s on channel vn1→vn3 (node1→node3: peer not heard for 14 s)``. A stall spreads
  upstream (a blocked host acks nothing), so the channel named is the most downstream stalled one: the cause.
* **backpressured**: a channel's sender spent at least half its time waiting for credits for `PRESSURE_AFTER`
  seconds or more, while the consumer kept acking: ``backpressured: vn2 waiting for credits from vn3 for 6 s``.
  The job moves, as fast as its slowest consumer.
* **idle**: no operator took or emitted a record for `IDLE_AFTER` seconds and nothing is in flight: the sources
  have nothing to read. Not a fault.
* **unknown**: a host has not reported for `STALL_AFTER` seconds (its agent is silent, or the host is frozen):
  what it said last is stale.
* **healthy**: otherwise.

No sockets here: `jobs.py` feeds heartbeats in and asks for the verdict when it builds a job's status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

STALL_AFTER = 5.0      # seconds with messages in flight and none acked (a dead TCP connection fails within 5 s)
PRESSURE_AFTER = 2.0   # seconds a sender has been waiting for credits most of the time
IDLE_AFTER = 5.0       # seconds without a record anywhere in the job, and nothing in flight
_PRESSURED = 0.5       # share of the time between two reports spent waiting for credits that counts as pressure


@dataclass
class _Vnode:
    reports: Any = None        # the host's report counter last seen
    reported_at: float = 0.0   # when that counter was first seen (the stats' age counts from there)
    channels: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (blocked seconds, when)
    pressured_since: dict[str, float] = field(default_factory=dict)         # id -> waiting most of the time since


@dataclass
class _Job:
    epoch: int = -1
    records: dict[str, int] = field(default_factory=dict)  # vnode -> records in + out, last seen
    moved_at: float = 0.0                                   # a record count last changed
    vnodes: dict[str, _Vnode] = field(default_factory=dict)


class JobHealth:
    """Per job: the history the verdict needs (report counters, blocked seconds, record totals)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._jobs: dict[str, _Job] = {}

    def observe(self, job_id: str, epoch: int, vnode: str, stats: Mapping[str, Any], now: float) -> None:
        """One host's stats, as a heartbeat brought them (`now`: when it arrived)."""
        job = self._jobs.get(job_id)
        if job is None or job.epoch != epoch:  # a recovery's new hosts start from nothing
            job = self._jobs[job_id] = _Job(epoch=epoch, moved_at=now)
        vn = job.vnodes.setdefault(vnode, _Vnode(reported_at=now))
        reports = stats.get("reports")
        if reports is not None and reports == vn.reports:
            return  # the agent passed on the same report again: nothing new (the stats' age grows)
        vn.reports, vn.reported_at = reports, now
        records = sum(int(op.get("records_in", 0)) + int(op.get("records_out", 0))
                      for op in (stats.get("operators") or {}).values())
        if records != job.records.get(vnode):
            job.records[vnode] = records
            job.moved_at = now
        for cid, ch in (stats.get("channels") or {}).items():
            blocked = float(ch.get("blocked_seconds") or 0.0)
            last = vn.channels.get(cid)
            vn.channels[cid] = (blocked, now)
            if last is None or now <= last[1]:
                continue
            if (blocked - last[0]) / (now - last[1]) >= _PRESSURED:
                vn.pressured_since.setdefault(cid, last[1])
            else:
                vn.pressured_since.pop(cid, None)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def verdict(self, job_id: str, epoch: int, live: Mapping[str, Mapping[str, Any]],
                placement: Mapping[str, str | None]) -> dict[str, Any]:
        """The health of a running job: {"state", "line", "channels": [...]}. `live` is vnode -> the stats its
        host reported last (vnodes whose host has finished are left out); `placement` vnode -> node."""
        now = self.clock()
        job = self._jobs.get(job_id)
        if job is None or job.epoch != epoch:
            job = _Job(epoch=epoch, moved_at=now)
        channels = []
        silent = []
        for vnode, stats in sorted(live.items()):
            vn = job.vnodes.get(vnode)
            age = now - vn.reported_at if vn is not None else 0.0
            if age >= STALL_AFTER:
                silent.append((age, vnode))
            for cid, ch in sorted((stats.get("channels") or {}).items()):
                if "stalled_seconds" not in ch:
                    continue  # a channel that cannot say (a microVM's proxy)
                stalled = float(ch["stalled_seconds"])
                peer = ch.get("peer_silent_seconds")
                since = vn.pressured_since.get(cid) if vn is not None else None
                dst = str(ch.get("to", ""))
                channels.append({
                    "channel": cid, "from": vnode, "to": dst, "from_node": placement.get(vnode),
                    "to_node": placement.get(dst), "acked_through": ch.get("acked_through"),
                    "unacked": ch.get("unacked", 0), "unacked_bytes": ch.get("unacked_bytes", 0),
                    "stalled_s": stalled + age if stalled > 0 else 0.0,
                    "waiting_s": float(ch["waiting_seconds"]) + age if ch.get("waiting_seconds") else 0.0,
                    "backpressured_s": now - since if since is not None else 0.0,
                    "peer_silent_s": None if peer is None else float(peer) + age})
        state, line = self._line(channels, silent, job, now)
        return {"state": state, "line": line, "channels": channels}

    @staticmethod
    def _line(channels: list[dict[str, Any]], silent: list[tuple[float, str]], job: _Job,
              now: float) -> tuple[str, str]:
        stalled = [c for c in channels if c["stalled_s"] >= STALL_AFTER]
        if stalled:
            stuck_senders = {c["from"] for c in stalled}
            # the most downstream stall is the cause: its consumer is not itself stuck sending
            causes = [c for c in stalled if c["to"] not in stuck_senders] or stalled
            c = max(causes, key=lambda c: c["stalled_s"])
            peer = c["peer_silent_s"]
            why = (f"peer not heard for {peer:.0f} s" if peer is not None and peer >= STALL_AFTER
                   else "peer connected, acks nothing" if peer is not None else "peer never heard")
            return "stalled", (f"stalled: no progress for {c['stalled_s']:.0f} s on channel {c['from']}→{c['to']} "
                               f"({c['from_node']}→{c['to_node']}: {why}; {c['unacked']} messages, "
                               f"{c['unacked_bytes']:,} bytes in flight)")
        if silent:
            age, vnode = max(silent)
            return "unknown", f"unknown: the host of {vnode} has not reported for {age:.0f} s"
        pressured = [c for c in channels if c["backpressured_s"] >= PRESSURE_AFTER]
        if pressured:
            c = max(pressured, key=lambda c: c["backpressured_s"])
            return "backpressured", (f"backpressured: {c['from']} waiting for credits from {c['to']} for "
                                     f"{c['backpressured_s']:.0f} s (the consumer is the slowest part)")
        quiet = now - job.moved_at
        if quiet >= IDLE_AFTER and not any(c["unacked"] for c in channels):
            return "idle", f"idle: no records for {quiet:.0f} s, nothing in flight (the sources have nothing to read)"
        return "healthy", "healthy"
