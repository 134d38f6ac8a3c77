"""Re-placement policy: move virtual nodes toward the data they exchange, from measured traffic.

Every few seconds the coordinator gives the policy the measured bytes/s between virtual nodes.
For each movable virtual node the policy prices every live node: the bytes/s it would still send or
receive across links, each weighted by the link's cost (1 per byte between two machines without a
topology; the placement engine's link weights with one). A move is proposed only when

- the saving is at least `min_gain` bytes/s,
- the saving over `horizon` seconds outweighs moving the state (`state_bytes × cost_factor`),
- the same move was the best one at `confirm` evaluations in a row, and
- the virtual node has not moved in the last `cooldown` seconds,

so a brief burst never triggers a migration and two nodes never trade a virtual node back and forth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class PolicyParams:
    every: float = 2.0            # seconds between evaluations
    min_gain: float = 20_000.0    # bytes/s a move must save
    horizon: float = 60.0         # seconds over which the saving must repay the move
    cost_factor: float = 2.0      # a byte of state costs this many bytes of traffic
    confirm: int = 2              # evaluations in a row that must agree
    cooldown: float = 15.0        # seconds before the same virtual node may move again


@dataclass(frozen=True)
class Proposal:
    vnode: str
    source: str
    target: str
    gain: float                   # bytes/s of weighted cross-link traffic saved
    before: float
    after: float


def link_cost_uniform(a: str, b: str) -> float:
    return 0.0 if a == b else 1.0


def weighted_traffic(vnode: str, node: str, placement: Mapping[str, str],
                     traffic: Mapping[tuple[str, str], float], link_cost: Callable[[str, str], float]) -> float:
    """Cross-link bytes/s to and from `vnode` if it ran on `node`."""
    total = 0.0
    for (src, dst), rate in traffic.items():
        if src == vnode and dst != vnode and dst in placement:
            total += rate * link_cost(node, placement[dst])
        elif dst == vnode and src != vnode and src in placement:
            total += rate * link_cost(placement[src], node)
    return total


def best_move(placement: Mapping[str, str], traffic: Mapping[tuple[str, str], float], nodes: Iterable[str],
              pinned: Iterable[str], state_bytes: Mapping[str, float], params: PolicyParams,
              link_cost: Callable[[str, str], float] = link_cost_uniform) -> Proposal | None:
    """The single move that saves the most, if it is worth its cost; None otherwise."""
    nodes = sorted(nodes)
    pinned = set(pinned)
    best: Proposal | None = None
    for vnode, here in sorted(placement.items()):
        if vnode in pinned:
            continue
        before = weighted_traffic(vnode, here, placement, traffic, link_cost)
        for node in nodes:
            if node == here:
                continue
            after = weighted_traffic(vnode, node, placement, traffic, link_cost)
            gain = before - after
            if gain < params.min_gain:
                continue
            if gain * params.horizon < params.cost_factor * state_bytes.get(vnode, 1_000_000.0):
                continue
            if best is None or gain > best.gain:
                best = Proposal(vnode, here, node, gain, before, after)
    return best


@dataclass
class Policy:
    """Stateful wrapper: confirmation across evaluations and per-vnode cooldown."""

    params: PolicyParams = field(default_factory=PolicyParams)
    _streak: tuple[Proposal | None, int] = (None, 0)
    _moved_at: dict[str, float] = field(default_factory=dict)

    def evaluate(self, now: float, placement: Mapping[str, str], traffic: Mapping[tuple[str, str], float],
                 nodes: Iterable[str], pinned: Iterable[str], state_bytes: Mapping[str, float],
                 link_cost: Callable[[str, str], float] = link_cost_uniform) -> Proposal | None:
        cooling = {v for v, t in self._moved_at.items() if now - t < self.params.cooldown}
        proposal = best_move(placement, traffic, nodes, set(pinned) | cooling, state_bytes, self.params, link_cost)
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
