"""Proofs that no placement fits: the traffic that must leave a group of nodes against the links that leave it.

A group of nodes T (a site, say: the nodes on one side of a link) hosts the vnodes that may only run there (its
pinned sources); whichever other vnodes it hosts must fit its cores and memory. Every vnode edge with one end
inside T and one outside crosses a link with exactly one end in T (its route leaves T), and each link carries
at most `Weights.max_link_utilisation` of its bandwidth (both directions together). So if the least traffic
any such choice of vnodes sends across T's boundary — a minimum cut with a knapsack on cores and memory, a
small MILP — exceeds what T's boundary links may carry, no placement is feasible. This is what the heuristic
cannot tell apart from a hard instance: on the benchmark's 1,000 × 100 instances with bandwidth limits,
sites behind a 10 Mbit/s uplink whose pinned sources send 1.7–4 MB/s that no choice within the site's cores
keeps inside.

`infeasibility(problem)` tries the node groups cut off by each link (and each node alone), skipping those
where keeping only the pinned vnodes inside already fits, and returns one `CutProof` per group it proves
overloaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .cost import Problem
from .topology import format_bytes

__all__ = ["CutProof", "infeasibility", "node_groups"]

_STEP = 0.5          # seconds per group's MILP at most (its proven bound is used, optimal or not)


@dataclass
class CutProof:
    """Group `nodes` must send at least `least_bytes` bytes/s across links that may carry `boundary_bytes`."""

    nodes: list[str]
    least_bytes: float
    boundary_bytes: float
    pinned: list[str]            # the vnodes that may only run in the group

    def describe(self) -> str:
        head = ", ".join(self.nodes[:4]) + (f" and {len(self.nodes) - 4} more" if len(self.nodes) > 4 else "")
        if math.isinf(self.least_bytes):
            return (f"no feasible placement exists: the vnodes that must run on {head} ({', '.join(self.pinned[:4])}"
                    f"{'...' if len(self.pinned) > 4 else ''}) need more cores or memory than it has")
        return (f"no feasible placement exists: the vnodes that must run on {head} ({', '.join(self.pinned[:4])}"
                f"{'...' if len(self.pinned) > 4 else ''}) send at least {format_bytes(self.least_bytes)} out of "
                f"it whichever vnodes join them within its cores and memory, and its links may carry "
                f"{format_bytes(self.boundary_bytes)}: add bandwidth, cores there, or unpin a source")


def node_groups(problem: Problem) -> list[np.ndarray]:
    """The node groups whose boundary is checked: each side of each link (the nodes whose route to the link's
    far end crosses it) and each node alone; deduplicated, the whole set left out."""
    p, n = problem, problem.n_nodes
    index = {name: i for i, name in enumerate(p.nodes)}
    seen: set[bytes] = set()
    groups = []
    cands = [np.array([j]) for j in range(n)]
    for lid, lk in enumerate(p.links):
        for far in (lk.a, lk.b):
            f = index.get(far)
            if f is None:
                continue
            side = [j for j in range(n) if lid in p.route_links(j, f).tolist()]
            if side:
                cands.append(np.asarray(side))
    for g in cands:
        mask = np.zeros(n, dtype=bool)
        mask[g] = True
        key = np.packbits(mask).tobytes()
        if key in seen or mask.all():
            continue
        seen.add(key)
        groups.append(np.flatnonzero(mask))
    return groups


def infeasibility(problem: Problem, time_limit: float = 5.0) -> list[CutProof]:
    """Groups of nodes proven unable to carry the traffic that must leave them (empty: nothing proven — which
    does not mean a feasible placement exists)."""
    p = problem
    if not len(p.link_cap) or not len(p.src):
        return []
    deadline = time.perf_counter() + time_limit
    index = {name: i for i, name in enumerate(p.nodes)}
    ends = np.array([[index.get(lk.a, -1), index.get(lk.b, -1)] for lk in p.links], dtype=np.int64)
    proofs: list[CutProof] = []
    kept: list[np.ndarray] = []
    for group in sorted(node_groups(p), key=len):           # the smaller side of a link first ...
        if time.perf_counter() > deadline:
            break
        if any(len(g) + len(group) == p.n_nodes and not np.isin(group, g).any() for g in kept):
            continue                                         # ... and not its complement as well
        proof = _group_proof(p, group, ends, deadline)
        if proof is not None:
            proofs.append(proof)
            kept.append(group)
    return proofs


def _group_proof(p: Problem, group: np.ndarray, ends: np.ndarray, deadline: float) -> CutProof | None:
    inside = np.zeros(p.n_nodes, dtype=bool)
    inside[group] = True
    in_a = np.where(ends[:, 0] >= 0, inside[np.maximum(ends[:, 0], 0)], False)
    in_b = np.where(ends[:, 1] >= 0, inside[np.maximum(ends[:, 1], 0)], False)
    boundary = float(p.link_cap[in_a != in_b].sum())
    must_in = np.logical_not(p.allowed[:, ~inside].any(axis=1))
    must_out = np.logical_not(p.allowed[:, inside].any(axis=1))
    if not must_in.any():
        return None
    crossing = must_in[p.src] != must_in[p.dst]
    if float(p.traffic[crossing].sum()) <= boundary * (1 + 1e-9):
        return None                    # the pinned vnodes alone, with nothing else inside, fit
    least = _least_cut(p, group, must_in, must_out, min(_STEP, deadline - time.perf_counter()))
    if least <= boundary * (1 + 1e-6) + 1e-6:
        return None
    return CutProof([p.nodes[j] for j in group.tolist()], least, boundary,
                    [p.vnodes[v] for v in np.flatnonzero(must_in).tolist()])


def _least_cut(p: Problem, group: np.ndarray, must_in: np.ndarray, must_out: np.ndarray, limit: float) -> float:
    """A proven lower bound of the traffic across the group's boundary: z[v] = 1 inside, c[e] ≥ |z[u] − z[v]|,
    Σ cpu z ≤ the group's cores (and memory), minimise Σ traffic c (HiGHS's dual bound)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    v_count, e_count = p.n_vnodes, len(p.src)
    lb = np.concatenate([must_in.astype(float), np.zeros(e_count)])
    ub = np.concatenate([np.where(must_out, 0.0, 1.0), np.ones(e_count)])
    cost = np.concatenate([np.zeros(v_count), p.traffic / 1e6])       # MB/s: a well-scaled objective
    e = np.arange(e_count)
    rows = np.concatenate([np.repeat(2 * e, 3), np.repeat(2 * e + 1, 3)])
    cols = np.concatenate([np.stack([v_count + e, p.src, p.dst], axis=1).ravel(),
                           np.stack([v_count + e, p.src, p.dst], axis=1).ravel()])
    vals = np.concatenate([np.tile([1.0, -1.0, 1.0], e_count), np.tile([1.0, 1.0, -1.0], e_count)])
    lo, hi = [np.zeros(2 * e_count)], [np.full(2 * e_count, np.inf)]
    extra = [(p.cpu, float(p.capacity[group].sum()))]
    if p.mem.any() and np.isfinite(p.mem_capacity[group]).all():
        extra.append((p.mem, float(p.mem_capacity[group].sum())))
    for k, (weight, cap) in enumerate(extra):
        rows = np.concatenate([rows, np.full(v_count, 2 * e_count + k)])
        cols = np.concatenate([cols, np.arange(v_count)])
        vals = np.concatenate([vals, weight])
        lo.append(np.array([-np.inf]))
        hi.append(np.array([cap * (1 + 1e-9)]))
    a = csr_array((vals, (rows, cols)), shape=(2 * e_count + len(extra), v_count + e_count))
    res = milp(cost, integrality=np.concatenate([np.ones(v_count), np.zeros(e_count)]), bounds=Bounds(lb, ub),
               constraints=[LinearConstraint(a, np.concatenate(lo), np.concatenate(hi))],
               options={"time_limit": max(0.01, limit), "disp": False})
    if res.status == 2:                  # even the group's pinned vnodes exceed its cores: no placement at all
        return math.inf
    bound = getattr(res, "mip_dual_bound", None)
    if bound is None or not np.isfinite(bound):
        return 0.0
    return float(bound) * 1e6
