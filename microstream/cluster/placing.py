"""Where the coordinator asks the placement engine and the re-placement policy: once when a job is
submitted (`place`), and every few seconds for each running job (`propose`). Both call sites are here so
that the placement model can change without touching the coordinator's state machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import MicrostreamError
from ..placement.policy import Policy, PolicyParams, Proposal, measured_problem

if TYPE_CHECKING:
    from ..graph.logical import LogicalGraph
    from ..graph.physical import PhysicalPlan
    from .model import Job

DEFAULT_POLICY = PolicyParams()


@dataclass(frozen=True)
class Placed:
    assignment: dict[str, str]           # vnode -> agent name
    predicted: dict[str, float]          # link "a–b" -> bytes/s, from the placement engine's cost model
    pins: dict[str, str]                 # vnode -> node its sensor is attached to (the policy leaves it there)


class Placer:
    def __init__(self, topology: Any = None, policy: PolicyParams | None = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> None:
        self.topology = topology              # placement.Topology from a file, or None (agents only)
        self.policy_params = policy           # None: never move virtual nodes on its own
        self.clock = clock
        self.log = log
        self._next = 0.0

    def place(self, plan: PhysicalPlan, graph: LogicalGraph, agents: dict[str, dict[str, Any]]) -> Placed:
        """The placement engine over the live agents (and the topology file, if any): pins from `at=` and
        sensors, required backends, node capacity, traffic per link."""
        from ..placement import place_on_agents

        if not any(a["up"] for a in agents.values()):
            raise MicrostreamError("no agents are up: start one with `microstream agent` or `microstream cluster up`")
        placement = place_on_agents(plan, graph, agents, topology=self.topology)
        if not placement.feasible:
            self.log(f"coordinator: no placement fits every node's capacity; using the least overloaded one "
                     f"({'; '.join(placement.cost.reasons)})")
        problem = placement.problem
        if problem is None:
            return Placed(dict(placement.assignment), dict(placement.cost.link_traffic), {})
        pins = {vn: problem.nodes[int(n)] for vn, n in zip(problem.vnodes, problem.pinned, strict=True) if n >= 0}
        return Placed(dict(placement.assignment), dict(placement.cost.link_traffic), pins)

    def policy(self) -> Policy | None:
        """A job's own re-placement policy (it keeps the hysteresis: confirmations, cooldowns)."""
        return Policy(self.policy_params) if self.policy_params is not None else None

    def due(self) -> bool:
        """Time for another round of re-placement (every `PolicyParams.every` seconds)?"""
        if self.policy_params is None or self.clock() < self._next:
            return False
        self._next = self.clock() + self.policy_params.every
        return True

    def propose(self, job: Job, agents: dict[str, dict[str, Any]]) -> Proposal | None:
        """A move that would pay off for `job`, or None: the placement engine's model of the live cluster (the
        agents' capacities and backends, the topology file's links and pins) priced with the traffic measured
        between the job's virtual nodes, behind the policy's hysteresis."""
        from ..placement import PlacementError, Topology

        if job.policy is None:
            return None
        placement = {v: n for v, n in job.placement.items() if v not in job.results}
        sizes = {h["vnode"]: float(h.get("state_bytes", 0) or 1_000_000) for h in job.history}
        try:
            topology = Topology.from_agents(agents, base=self.topology)
            problem = measured_problem(job.plan, job.graph, topology, job.traffic, sizes, pins=job.pins)
        except PlacementError as exc:  # e.g. a vnode's backend is offered by no live agent: nowhere to go
            self.log(f"coordinator: no re-placement for {job.id}: {exc}")
            return None
        return job.policy.evaluate(self.clock(), problem, placement, job.traffic, job.pins, sizes)

    def moved(self, job: Job, vnode: str) -> None:
        """`vnode` of `job` just moved (or started to): its policy's cooldown starts now."""
        if job.policy is not None:
            job.policy.moved(vnode, self.clock())
