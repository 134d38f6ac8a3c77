"""Draining a node for maintenance (`microstream drain NODE`): its virtual nodes move off it with the live migration
of `moves.py`, one at a time, and nothing new is placed there until `microstream undrain NODE`.

A drain *cordons* the node (`AgentRegistry.cordoned`: submits and recoveries place around it, the re-placement
policy moves nothing onto it) and then, every tick of the coordinator, looks at what still runs there:

- a virtual node pinned to it (a source with `at=`, or reading a sensor attached there) cannot move: *stuck*, with
  the pin's reason;
- a virtual node of a job that is not running (deploying, recovering, adopting) or that is moving another virtual
  node or taking a checkpoint *waits* (a job allows one move at a time; moves wait behind pending checkpoints);
- otherwise the placement engine picks its new node (`Placer.evacuate`) and the move starts; the next one starts
  once it is done. A move that is called off is tried again, `ATTEMPTS` times in all, then it is stuck with the
  reason.

The drain is *drained* when nothing that has not finished runs there, *stuck* when only stuck virtual nodes are
left. Either way the node stays cordoned (an agent stopped and started again for an upgrade re-registers cordoned)
until it is undrained. The cordon lives in the coordinator's memory: a restarted coordinator has forgotten it.
No sockets here: the coordinator hands in decoded messages and a `send`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import MicrostreamError
from .jobs import JobLifecycle, Send
from .messages import DrainRequest, DrainStatus, Error
from .model import Job
from .moves import Moves
from .placing import Placer
from .registry import AgentRegistry
from .states import JobState

ATTEMPTS = 3           # moves of one virtual node a drain starts before it calls that virtual node stuck
NOWHERE_AGAIN = 5.0    # seconds before asking the placement engine again for a virtual node it had no node for
DRAINING, DRAINED, STUCK, UNDRAINED = "draining", "drained", "stuck", "undrained"


@dataclass
class Drain:
    node: str
    started: float                                          # wall clock
    moved: list[dict[str, Any]] = field(default_factory=list)   # the moves done, in order (job, vnode, from, to...)
    left: list[str] = field(default_factory=list)           # "job/vnode" still on the node, not finished
    stuck: dict[str, str] = field(default_factory=dict)     # "job/vnode" -> why it cannot move
    waiting: dict[str, str] = field(default_factory=dict)   # "job/vnode" -> what its move waits for
    current: tuple[str, str, str] | None = None             # (job, vnode, target) moving now
    attempts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)    # "job/vnode" -> why its moves were called off
    nowhere: dict[str, tuple[str, float]] = field(default_factory=dict)  # no node for it: (why, when; asked again)
    pinned: dict[str, str] = field(default_factory=dict)    # "job/vnode" -> the pin's reason (found once)
    state: str = DRAINING

    def report(self) -> dict[str, Any]:
        moving = None if self.current is None else {"job": self.current[0], "vnode": self.current[1],
                                                    "to": self.current[2]}
        return {"node": self.node, "state": self.state, "started": self.started, "moved": list(self.moved),
                "left": list(self.left), "stuck": dict(self.stuck), "waiting": dict(self.waiting), "moving": moving}


class Drains:
    def __init__(self, lifecycle: JobLifecycle, registry: AgentRegistry, moves: Moves, placer: Placer, send: Send,
                 log: Callable[[str], None] = print, wall: Callable[[], float] = time.time) -> None:
        self.lifecycle = lifecycle
        self.registry = registry
        self.moves = moves
        self.placer = placer
        self.send = send
        self.log = log
        self.wall = wall
        self.drains: dict[str, Drain] = {}

    # -- requests ---------------------------------------------------------------------------------------------
    def request(self, identity: bytes, m: DrainRequest) -> None:
        if self.registry.get(m.node) is None:
            self.send(identity, Error(error=f"no agent '{m.node}' (agents: {sorted(self.registry.agents)})"))
            return
        if m.action == "drain":
            if m.node not in self.drains:
                self.registry.cordoned.add(m.node)
                self.drains[m.node] = Drain(m.node, self.wall())
                self.log(f"coordinator: draining {m.node}: nothing new is placed there; its virtual nodes move off")
                self.tick()
            self.send(identity, DrainStatus(drain=self.drains[m.node].report()))
        elif m.action == "undrain":
            self.registry.cordoned.discard(m.node)
            drain = self.drains.pop(m.node, None)
            report = drain.report() if drain is not None else {"node": m.node, "moved": [], "left": [], "stuck": {},
                                                                "waiting": {}, "moving": None}
            self.log(f"coordinator: {m.node} undrained: back in service")
            self.send(identity, DrainStatus(drain={**report, "state": UNDRAINED}))
        elif m.action == "status":
            drain = self.drains.get(m.node)
            if drain is None:
                self.send(identity, Error(error=f"{m.node} is not draining (`microstream drain {m.node}`)"))
            else:
                self.send(identity, DrainStatus(drain=drain.report()))
        else:
            self.send(identity, Error(error=f"unknown drain action '{m.action}': use drain, undrain or status"))

    def status(self, agents: dict[str, dict[str, Any]]) -> None:
        """Add to the cluster status's `agents` whether each is `draining` (cordoned) and its drain (state, moved,
        left, stuck)."""
        for name, agent in agents.items():
            agent["draining"] = name in self.registry.cordoned
            if name in self.drains:
                agent["drain"] = self.drains[name].report()

    # -- the periodic work ------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Follow the move in flight; start the next one when none is (one move at a time for all drains)."""
        for drain in self.drains.values():
            self._follow(drain)
        for drain in self.drains.values():
            self._survey(drain)
        if any(d.current is not None for d in self.drains.values()):
            return
        for drain in self.drains.values():
            if self._start_next(drain):
                return

    def _follow(self, drain: Drain) -> None:
        """The drain's move in flight: still going, done (recorded) or called off (tried again later)."""
        if drain.current is None:
            return
        job_id, vnode, target = drain.current
        job = self.lifecycle.get(job_id)
        if job is not None and job.move is not None and job.move.vnode == vnode:
            return
        drain.current = None
        key = f"{job_id}/{vnode}"
        if job is None or vnode in job.results:
            return  # the job ended or the virtual node finished: nothing left to move
        if job.placement.get(vnode) != drain.node:
            record: dict[str, Any] = next((h for h in reversed(job.history) if h["vnode"] == vnode), {})
            drain.moved.append({"job": job_id, "vnode": vnode, "from": drain.node, "to": job.placement.get(vnode),
                                "downtime_s": record.get("downtime_s"), "total_s": record.get("total_s"),
                                "state_bytes": record.get("state_bytes")})
            self.log(f"coordinator: drain of {drain.node}: {key} moved to {job.placement.get(vnode)}")
        else:
            drain.failed[key] = self.moves.called_off.pop(key, "it was called off")

    def _left(self, drain: Drain) -> list[tuple[Job, str]]:
        """What still runs on the node: virtual nodes of jobs that have not ended, that have not finished."""
        return [(job, vnode) for job in self.lifecycle for vnode, node in sorted(job.placement.items())
                if node == drain.node and vnode not in job.results]

    def _survey(self, drain: Drain) -> None:
        """Sort what is left into stuck and waiting; set the drain's state."""
        left = self._left(drain)
        now = self.wall()
        drain.left = [f"{job.id}/{vnode}" for job, vnode in left]
        drain.waiting, drain.stuck = {}, {}
        for job, vnode in left:
            key = f"{job.id}/{vnode}"
            nowhere = drain.nowhere.get(key)
            if drain.current is not None and drain.current[:2] == (job.id, vnode):
                continue
            if vnode in job.pins:
                if key not in drain.pinned:
                    drain.pinned[key] = self._pin_reason(job, vnode)
                drain.stuck[key] = drain.pinned[key]
            elif drain.attempts.get(key, 0) >= ATTEMPTS:
                drain.stuck[key] = f"{ATTEMPTS} moves were called off, the last because {drain.failed.get(key, '?')}"
            elif nowhere is not None and now - nowhere[1] < NOWHERE_AGAIN:
                drain.stuck[key] = nowhere[0]
            elif job.state is JobState.SUSPENDED:
                drain.stuck[key] = (f"job {job.id} is suspended (a virtual node was saved): `microstream restore` "
                                    "it, and the drain goes on")
            elif job.state is not JobState.RUNNING:
                drain.waiting[key] = f"job {job.id} is {job.state}"
            elif job.pending is not None:
                drain.waiting[key] = f"checkpoint {job.pending.id} of job {job.id} is being taken"
            elif job.move is not None:
                drain.waiting[key] = f"{job.move.vnode} of job {job.id} is moving"
        self._settle(drain)

    def _settle(self, drain: Drain) -> None:
        if drain.current is not None or any(k not in drain.stuck for k in drain.left):
            drain.state = DRAINING
        else:
            drain.state = STUCK if drain.left else DRAINED

    def _pin_reason(self, job: Job, vnode: str) -> str:
        try:
            self.placer.evacuate(job, vnode, self.registry.placement_view())
        except MicrostreamError as exc:
            return str(exc)
        return f"pinned to {job.pins[vnode]}"

    def _start_next(self, drain: Drain) -> bool:
        """Start the move of the first virtual node that can move now; True if one started."""
        for job, vnode in self._left(drain):
            key = f"{job.id}/{vnode}"
            if key in drain.stuck or key in drain.waiting:
                continue
            try:
                target = self.placer.evacuate(job, vnode, self.registry.placement_view())
            except MicrostreamError as exc:  # e.g. no other agent has its backend: asked again later
                drain.nowhere[key] = (str(exc), self.wall())
                drain.stuck[key] = str(exc)
                continue
            drain.nowhere.pop(key, None)
            drain.attempts[key] = drain.attempts.get(key, 0) + 1
            drain.current = (job.id, vnode, target)
            self.log(f"coordinator: drain of {drain.node}: moving {key} to {target} (the placement engine's choice)")
            self.moves.start(job, vnode, drain.node, target, f"drain: {drain.node} is being drained")
            self._settle(drain)
            return True
        self._settle(drain)
        return False
