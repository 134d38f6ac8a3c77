"""Where the coordinator asks the placement engine and the re-placement policy: once when a job is
submitted (`place`), and every few seconds for each running job (`propose`). Both call sites are here so
that the placement model can change without touching the coordinator's state machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    quality: dict[str, Any] = field(default_factory=dict)   # solver, cost, proven bound, gap, "optimal" / ...


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
        sensors, required backends, node capacity, traffic per link; draining agents only when it must."""
        if not any(a["up"] for a in agents.values()):
            raise MicrostreamError("no agents are up: start one with `microstream agent` or `microstream cluster up`")
        placement = self._place_around_drains(plan, graph, agents)
        if not placement.feasible:
            self.log(f"coordinator: no placement fits every node's capacity; using the least overloaded one "
                     f"({'; '.join(placement.cost.reasons)})")
        quality = {"solver": placement.solver, "cost": placement.cost.total if placement.feasible else None,
                   "bound": placement.bound, "gap": placement.gap, "quality": placement.quality}
        problem = placement.problem
        if problem is None:
            return Placed(dict(placement.assignment), dict(placement.cost.link_traffic), {}, quality)
        pins = {vn: problem.nodes[int(n)] for vn, n in zip(problem.vnodes, problem.pinned, strict=True) if n >= 0}
        return Placed(dict(placement.assignment), dict(placement.cost.link_traffic), pins, quality)

    def _place_around_drains(self, plan: PhysicalPlan, graph: LogicalGraph, agents: dict[str, dict[str, Any]]) -> Any:
        """Place on the agents that are not draining; only if that cannot be done (a source pinned to a draining
        node, no other agent with a backend) on all of them: the drain then moves off what can move."""
        from ..placement import PlacementError, place_on_agents

        cordoned = {name for name, a in agents.items() if a.get("draining")}
        if cordoned and any(a["up"] and name not in cordoned for name, a in agents.items()):
            open_agents = {name: {**a, "up": a["up"] and name not in cordoned} for name, a in agents.items()}
            try:
                return place_on_agents(plan, graph, open_agents, topology=self.topology)
            except PlacementError as exc:
                self.log(f"coordinator: placing on draining node(s) {sorted(cordoned)} too: {exc}")
        return place_on_agents(plan, graph, agents, topology=self.topology)

    def evacuate(self, job: Job, vnode: str, agents: dict[str, dict[str, Any]]) -> str:
        """Where `vnode` of `job` goes when its node is drained: the node the placement engine prices lowest for it
        (measured traffic, capacities, backends, links) among the live agents that are not draining, the rest of
        the job staying where it is. A PlacementError says why there is none (pinned, no agent with its backend)."""
        import numpy as np

        from ..placement import PlacementError, Topology
        from ..placement.cost import as_array, evaluate, find_pins

        topology = Topology.from_agents(agents, base=self.topology)
        sizes = {h["vnode"]: float(h.get("state_bytes", 0) or 1_000_000) for h in job.history}
        problem = measured_problem(job.plan, job.graph, topology, job.traffic, sizes, pins=job.pins)
        i = problem.vnodes.index(vnode)
        if problem.pinned[i] >= 0 or vnode in job.pins:
            pin = find_pins(job.plan, job.graph, topology).get(vnode)
            why = pin.reason if pin is not None else f"pinned to {job.pins.get(vnode)}"
            raise PlacementError(f"{why}; it stays (if its sensor moved, `microstream migrate {job.id} {vnode} --to "
                                 f"NODE` moves it and pins it there)")
        running = {v: n for v, n in job.placement.items() if v not in job.results and n in problem.nodes}
        current = as_array(problem, {v: running.get(v, problem.nodes[0]) for v in problem.vnodes})
        w = problem.weights
        best: tuple[bool, float, str] | None = None   # (over a limit, cost, node): a feasible node first
        for j in np.flatnonzero(problem.allowed[i]):
            name = problem.nodes[int(j)]
            if agents.get(name, {}).get("draining") or not agents.get(name, {}).get("up"):
                continue
            candidate = current.copy()
            candidate[i] = j
            cost = evaluate(problem, candidate)
            # over a limit (the cluster is full without the drained node): the least loaded, as `place` does
            key = (not cost.feasible, cost.total if cost.feasible else
                   w.network * cost.network + w.latency * cost.latency_ms + w.load * cost.load, name)
            if best is None or key < best:
                best = key
        if best is None:
            backend = job.plan.vnodes[vnode].backend
            raise PlacementError(f"no other agent is up, not draining and has backend '{backend}'")
        if best[0]:
            self.log(f"coordinator: draining {job.id}/{vnode} overloads {best[2]}: no node has room for it")
        return best[2]

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
        cordoned = [j for j, n in enumerate(problem.nodes) if agents.get(n, {}).get("draining")]
        if any(n in {problem.nodes[j] for j in cordoned} for n in placement.values()):
            return None  # its drain moves it off first, one virtual node at a time
        problem.allowed[:, cordoned] = False  # nothing moves onto a draining node
        return job.policy.evaluate(self.clock(), problem, placement, job.traffic, job.pins, sizes)

    def moved(self, job: Job, vnode: str) -> None:
        """`vnode` of `job` just moved (or started to): its policy's cooldown starts now."""
        if job.policy is not None:
            job.policy.moved(vnode, self.clock())
