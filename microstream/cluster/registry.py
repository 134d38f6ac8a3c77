"""The coordinator's agent registry: who registered, from which socket identity, with which capabilities;
their heartbeats (with the hosts they run), and which agents are lost (no heartbeat for `timeout` s).

No sockets here: the coordinator hands in decoded messages, and the clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import MicrostreamError
from .messages import Heartbeat, Register
from .security import fingerprint
from .states import VnodeState

AGENT_TIMEOUT = 10.0   # seconds without a heartbeat: lost, its jobs recover elsewhere (Wi-Fi and SD cards stall)
SUSPECT_AFTER = 3.0    # seconds without a heartbeat: shown as suspect, nothing done yet


@dataclass
class AgentInfo:
    name: str
    identity: bytes
    caps: dict[str, Any]
    labels: dict[str, str]
    public_key: str | None
    metrics_port: int | None
    last_seen: float
    up: bool = True
    vnodes: dict[str, Any] = field(default_factory=dict)   # "job/vnode" -> {state, pid, stats}, last heartbeat
    down_reason: str = ""
    key: str | None = None   # the CURVE public key (z85) it registered with; None without keys


class NameTaken(MicrostreamError):
    """A registration under a name that a live agent registered with another key holds."""


class AgentRegistry:
    def __init__(self, timeout: float = AGENT_TIMEOUT, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = print) -> None:
        self.timeout = timeout
        self.clock = clock
        self.log = log
        self.agents: dict[str, AgentInfo] = {}
        self.cordoned: set[str] = set()   # draining nodes (drain.py): nothing new is placed there; kept by name, so
        # an agent restarted for an upgrade stays cordoned until `microstream undrain`
        self._takeovers_logged: set[tuple[str, str]] = set()

    def __iter__(self) -> Iterator[AgentInfo]:
        return iter(self.agents.values())

    def get(self, name: str | None) -> AgentInfo | None:
        return self.agents.get(name or "")

    def live(self, name: str | None) -> AgentInfo | None:
        """The agent called `name` if it is registered and up."""
        agent = self.get(name)
        return agent if agent is not None and agent.up else None

    def names_up(self) -> list[str]:
        return sorted(a.name for a in self.agents.values() if a.up)

    def name_of(self, identity: bytes) -> str | None:
        return next((a.name for a in self.agents.values() if a.identity == identity), None)

    def data_keys(self) -> list[str]:
        """The data-plane public keys of the live agents (which every host is to trust)."""
        return [a.public_key for a in self.agents.values() if a.public_key and a.up]

    def register(self, identity: bytes, m: Register, key: str | None = None) -> AgentInfo:
        """(Re-)register an agent with the hosts it reports; a new registration under a known name replaces the old
        one (the agent reconnected: to this coordinator after a stall, or to a restarted one). `key` is the CURVE key
        it connected with: a live agent's name cannot be taken over with another key (NameTaken, logged once)."""
        again = self.agents.get(m.name)
        if again is not None and again.up and again.key is not None and key is not None and again.key != key:
            silent = self.clock() - again.last_seen
            reason = (f"name '{m.name}' is held by a live agent that registered with another key (fingerprint "
                      f"{fingerprint(again.key)}, heard from {silent:.1f} s ago); key {fingerprint(key)} cannot take "
                      f"it over: the same key may register again, another one once that agent is lost (no heartbeat "
                      f"for {self.timeout:g} s)")
            if (m.name, key) not in self._takeovers_logged and len(self._takeovers_logged) < 10_000:
                self._takeovers_logged.add((m.name, key))
                self.log(f"coordinator: refused a registration: {reason}")
            raise NameTaken(reason)
        info = AgentInfo(m.name, identity, m.capabilities(), dict(m.labels), m.public_key, m.metrics_port,
                         last_seen=self.clock(), vnodes=dict(m.vnodes), key=key)
        self.agents[info.name] = info
        running = sum(1 for v in m.vnodes.values()
                      if v.get("epoch") is not None and not VnodeState(v.get("state", "done")).over)
        self.log(f"coordinator: agent {info.name} {'registered again' if again else 'registered'} "
                 f"({info.caps['cores']} cores, {info.caps['arch']}{f', {running} hosts running' if running else ''})")
        return info

    def heartbeat(self, identity: bytes, m: Heartbeat) -> AgentInfo | None:
        """Record a heartbeat; None if it comes from an agent that has not registered (from this identity)."""
        agent = self.agents.get(m.name)
        if agent is None or agent.identity != identity:
            return None
        now = self.clock()
        _add_rates(agent.vnodes, m.vnodes, now - agent.last_seen)
        agent.last_seen = now
        agent.vnodes = m.vnodes
        if not agent.up:
            agent.up = True
            self.log(f"coordinator: agent {agent.name} is back")
        return agent

    def check(self) -> list[AgentInfo]:
        """Mark agents silent for longer than `timeout` as lost; returns those lost just now."""
        now = self.clock()
        lost = []
        for agent in self.agents.values():
            if agent.up and now - agent.last_seen > self.timeout:
                agent.up = False
                agent.down_reason = f"no heartbeat for {now - agent.last_seen:.1f} s"
                self.log(f"coordinator: agent {agent.name} lost ({agent.down_reason})")
                lost.append(agent)
        return lost

    def status(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {a.name: {"up": a.up, "cores": a.caps.get("cores"), "arch": a.caps.get("arch"),
                         "backends": a.caps.get("backends"), "labels": a.labels, "metrics_port": a.metrics_port,
                         "last_seen_s": round(now - a.last_seen, 1), "health": self.health(a, now),
                         "reason": self.reason(a, now)}
                for a in self.agents.values()}

    def reason(self, agent: AgentInfo, now: float) -> str:
        """Why an agent is down or suspect, as of `now` (the silence goes on counting: not frozen at the moment it
        was found lost); "" for one that is up."""
        silent = f"no heartbeat for {now - agent.last_seen:.1f} s"
        if not agent.up:
            return silent if agent.down_reason.startswith("no heartbeat") else agent.down_reason
        return silent if self.health(agent, now) == "suspect" else ""

    def health(self, agent: AgentInfo, now: float) -> str:
        """up, suspect (silent for a while: a stall or a cut link, nothing done yet) or lost."""
        if not agent.up:
            return "lost"
        return "suspect" if now - agent.last_seen > min(SUSPECT_AFTER, self.timeout / 2) else "up"

    def placement_view(self) -> dict[str, dict[str, Any]]:
        """Every agent's capabilities, labels and liveness, as the placement engine takes them (`draining`: the
        placer puts nothing new there)."""
        return {a.name: {**a.caps, "labels": a.labels, "up": a.up, "draining": a.name in self.cordoned}
                for a in self.agents.values()}


def _add_rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> None:
    """Records per second into each operator since the previous heartbeat (out of a source, which takes none
    in: `status` showed every source at 0/s)."""
    if seconds <= 0:
        return
    for key, vn in after.items():
        old_ops = before.get(key, {}).get("stats", {}).get("operators", {})
        for task, op in vn.get("stats", {}).get("operators", {}).items():
            old = old_ops.get(task)
            if old is not None and not op.get("finished"):
                count = "records_in" if op["records_in"] or old["records_in"] else "records_out"
                op["rate"] = max(0.0, (op.get(count, 0) - old.get(count, 0)) / seconds)
