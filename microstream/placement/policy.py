"""Re-placement: the placement engine's model, asked every few seconds with measured traffic, behind hysteresis.

There is one placement model. At submit time the engine places a job from estimates; while it runs, the
coordinator rebuilds the same `Problem` (nodes, capacities, backends, pins, links) from the bytes/s it
*measures* between virtual nodes and asks `best_move` whether moving one virtual node lowers the engine's cost.
A candidate must be allowed by the engine (the node offers the vnode's backend, the vnode is not pinned) and
keep the placement feasible (capacity, memory, link bandwidth), so an automatic move never lands where a
submit could not have placed it. A move is proposed only when

- it lowers the engine's cost (or turns an infeasible placement feasible),
- the saving is at least `min_relative_gain` of the current cost and repays moving the state (bytes over the
  route, priced like traffic) within `horizon` seconds,
- when it is about traffic, it stops at least `min_gain` measured bytes/s from crossing machines,
- the same move was the best one at `confirm` evaluations in a row, and
- the virtual node has not moved in the last `cooldown` seconds,

so a brief burst never triggers a migration and two nodes never trade a virtual node back and forth. What a
proposal reports as traffic is what was measured: bytes/s to and from the virtual node that cross machines
where it runs and where it would run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..graph.logical import LogicalGraph
from ..graph.physical import PhysicalPlan
from .cost import Problem, as_array, build_problem, estimate_flows, evaluate
from .topology import Topology


@dataclass
class PolicyParams:
    every: float = 2.0               # seconds between evaluations
    min_gain: float = 20_000.0       # measured bytes/s a traffic-driven move must stop from crossing machines
    min_relative_gain: float = 0.05  # the engine's cost must drop by at least this fraction
    horizon: float = 60.0            # seconds over which the saving must repay moving the state
    confirm: int = 2                 # evaluations in a row that must agree
    cooldown: float = 15.0           # seconds before the same virtual node may move again


@dataclass(frozen=True)
class Proposal:
    vnode: str
    source: str
    target: str
    saved_bytes: float            # measured bytes/s that stop crossing machines (negative: more would cross)
    before: float                 # measured bytes/s to and from the vnode crossing machines where it runs
    after: float                  # ... and where it would run
    cost_before: float            # the engine's cost of the running placement (inf: infeasible)
    cost_after: float

    @property
    def reason(self) -> str:
        if not math.isfinite(self.cost_before):
            return f"auto: relieves an overloaded placement ({self.source} → {self.target})"
        if self.saved_bytes > 0:
            return f"auto: {self.saved_bytes:,.0f} B/s measured stop crossing machines"
        return f"auto: lowers the placement cost {self.cost_before:.3g} → {self.cost_after:.3g}"


def measured_problem(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology,
                     traffic: Mapping[tuple[str, str], float],
                     state_bytes: Mapping[str, float] | None = None,
                     pins: Mapping[str, str] | None = None) -> Problem:
    """The engine's problem for a running job: its measured bytes/s between virtual nodes (estimates where
    nothing was measured yet), measured state sizes, and the job's current pins (a pinned source moved by hand
    because its sensor's gateway failed over is pinned where it is now, not where the script said)."""
    flows = estimate_flows(plan, graph, topology, rates=traffic or None)
    problem = build_problem(plan, graph, topology, flows, state_bytes=state_bytes)
    index = {n: j for j, n in enumerate(problem.nodes)}
    for vnode, node in (pins or {}).items():
        if vnode in problem.vnodes and node in index:
            i, j = problem.vnodes.index(vnode), index[node]
            problem.allowed[i, :] = False
            problem.allowed[i, j] = True
            problem.pinned[i] = j
    return problem


def crossing_bytes(vnode: str, node: str, placement: Mapping[str, str],
                   traffic: Mapping[tuple[str, str], float]) -> float:
    """Measured bytes/s to and from `vnode` that would cross machines if it ran on `node`."""
    total = 0.0
    for (src, dst), rate in traffic.items():
        peer = dst if src == vnode else src if dst == vnode else None
        if peer is not None and peer != vnode and placement.get(peer, node) != node:
            total += rate
    return total


def best_move(problem: Problem, placement: Mapping[str, str], traffic: Mapping[tuple[str, str], float],
              pinned: Iterable[str], state_bytes: Mapping[str, float], params: PolicyParams) -> Proposal | None:
    """The single move of one virtual node that lowers the engine's cost the most, if it is worth moving its
    state; None otherwise. `placement` covers the running vnodes (finished ones may be left out)."""
    running = {v: n for v, n in placement.items() if v in problem.vnodes and n in problem.nodes}
    full = {v: running.get(v, problem.nodes[0]) for v in problem.vnodes}
    current = as_array(problem, full)
    base = evaluate(problem, current).total
    frozen = set(pinned)
    best: tuple[float, Proposal] | None = None
    for i, vnode in enumerate(problem.vnodes):
        if vnode not in running or vnode in frozen or problem.pinned[i] >= 0:
            continue
        here = current[i]
        before = crossing_bytes(vnode, running[vnode], running, traffic)
        for j in np.flatnonzero(problem.allowed[i]):
            if j == here:
                continue
            candidate = current.copy()
            candidate[i] = j
            after_cost = evaluate(problem, candidate).total
            if not math.isfinite(after_cost):  # over a node's capacity or memory, or a link's bandwidth
                continue
            target = problem.nodes[int(j)]
            after = crossing_bytes(vnode, target, running, traffic)
            saving = base - after_cost
            if not _worth(problem, saving, base, before - after, state_bytes.get(vnode, 1_000_000.0),
                          int(here), int(j), params):
                continue
            proposal = Proposal(vnode, running[vnode], target, before - after, before, after, base, after_cost)
            if best is None or saving > best[0]:
                best = (saving, proposal)
    return best[1] if best else None


def _worth(problem: Problem, saving: float, base: float, saved_bytes: float, state: float, here: int, there: int,
           params: PolicyParams) -> bool:
    if not math.isfinite(base):
        return True  # the running placement breaks a limit: any feasible move is better
    if saving <= 0 or saving < params.min_relative_gain * base:
        return False
    if saved_bytes > 0 and saved_bytes < params.min_gain:
        return False  # a traffic-driven move must be worth the name
    price = problem.weights.network * state * float(problem.inv_bw[here, there])  # shipping the state
    return price <= saving * params.horizon


@dataclass
class Policy:
    """Stateful wrapper: confirmation across evaluations and per-vnode cooldown."""

    params: PolicyParams = field(default_factory=PolicyParams)
    _streak: tuple[Proposal | None, int] = (None, 0)
    _moved_at: dict[str, float] = field(default_factory=dict)

    def evaluate(self, now: float, problem: Problem, placement: Mapping[str, str],
                 traffic: Mapping[tuple[str, str], float], pinned: Iterable[str],
                 state_bytes: Mapping[str, float]) -> Proposal | None:
        cooling = {v for v, t in self._moved_at.items() if now - t < self.params.cooldown}
        proposal = best_move(problem, placement, traffic, set(pinned) | cooling, state_bytes, self.params)
        previous, count = self._streak
        same = (proposal is not None and previous is not None and
                (proposal.vnode, proposal.target) == (previous.vnode, previous.target))
        count = count + 1 if same else (1 if proposal is not None else 0)
        self._streak = (proposal, count)
        if proposal is not None and count >= self.params.confirm:
            self._streak = (None, 0)
            return proposal
        return None

    def moved(self, vnode: str, now: float) -> None:
        self._moved_at[vnode] = now
