"""Solvers: where each virtual node should run.

* **heuristic** (the default, for live clusters; `improve`): *seeding* places pinned vnodes (sources with `at=`
  or attached to a sensor) first, then every other vnode in topological order on the node that adds least cost
  given what is already placed; *local search* applies improving single moves, pairwise swaps and chain moves
  until none gains (deltas incremental: the network term from the vnode's neighbours, the load term from two
  nodes, the latency term from longest paths to and from the vnode). A small problem is then solved whole by
  the MILP; otherwise *simulated annealing* (`_anneal`, compiled in `anneal.py`: moves, swaps and chain moves
  on incremental sums, with a mean-sink-latency surrogate while hot, because the latency term is a maximum that
  single moves rarely lower; several walks, each from the best so far; from 30 to 400 movable vnodes
  successive halving, `_halving`: many walks through the hot band, the best half continued cooler, and so on),
  then *large-neighbourhood search* re-solving a few nodes' vnodes exactly with the MILP. The work (trials,
  walks, sub-problems) is planned from the budget, so a seed gives the same placement at any load; the clock
  only cuts it short. Beyond `_LARGE` movable vnodes × nodes a cool walk comes first, as local search from the
  seed alone would take the whole budget. An overloaded result is repaired by the whole MILP with hard limits
  (`_repair`).
* **exact** (`certify`): the MILP (`milp.solve_milp`, HiGHS) on the whole problem, with its proven bound, given the
  heuristic's cost as a cutoff (HiGHS looks only for cheaper placements; none found = the heuristic's is optimal).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..graph.logical import LogicalGraph
from ..graph.physical import DisjointSets, PhysicalPlan
from .anneal import anneal, warm
from .anneal import ready as anneal_ready
from .bounds import infeasibility
from .cost import (
    OVERLOAD_PENALTY,
    Cost,
    EdgeKey,
    Estimates,
    Flows,
    PlacementError,
    Problem,
    Weights,
    as_array,
    build_problem,
    critical_path,
    estimate_flows,
    evaluate,
    find_pins,
)
from .milp import gap_text, milp_available, relative_gap, solve_milp
from .topology import Topology

__all__ = ["MigrationGain", "Placement", "exact", "heuristic", "migration_gain", "place", "place_on_agents", "solve"]

_TOL = 1e-12
_OVERLOAD = OVERLOAD_PENALTY   # per unit of overload while searching from an infeasible start
_MAX_BLOCKED = 64        # large instances: swaps tried per round for the vnodes most held back by capacity
_MAX_PARTNERS = 12       # ... each with at most this many vnodes of the node it wants
_LNS_FREE = (4, 10, 20)  # vnodes freed per large-neighbourhood sub-problem: least, first, most (adapts: +1 after a
                         # sub-problem solved to optimality, -3 after one cut by its time limit)
_LNS_FAST = 0.05         # beyond `_HALVING[1]` movable vnodes: a sub-problem solved this fast grows the next by 2 ...
_LNS_LARGEST = 40        # ... up to this many vnodes
_LNS_MAX_NODES = 4       # ... over at most this many nodes
_LNS_STEP = 0.25         # seconds for one sub-problem at most (a safety limit: the sizes below solve far faster)
_LNS_PATIENCE = 5        # stop after this many sub-problems per node in a row without a gain
_LNS_PER_SECOND = 40     # sub-problems planned per second of the budget (a count, not the clock: reproducible)
_EXHAUSTIVE = 100        # movable vnodes × nodes up to which local search tries every swap and group move
_WHOLE_MILP = 100        # movable vnodes × nodes up to which the heuristic solves the whole problem by MILP
_REPAIR_MILP = 40_000    # edges × nodes² up to which an overloaded search result is repaired by the whole MILP
_REPAIR_SECONDS = 2.0    # ... given at least this long, even past the budget
_GROUP_MIN_GAIN = 1e-3   # large instances: group-move rounds continue while a round gains this fraction
_ANNEAL_SHARE = 0.75     # of the time left after local search: simulated annealing (the rest: LNS)
_ANNEAL_T = (0.3, 1e-4)  # annealing temperature, start and end, as fractions of the start's cost
_ANNEAL_RATE = 2e6       # trials planned per second of the budget's annealing share (compressed if slower)
_ANNEAL_CYCLES = ((100, 8), (400, 4))   # (movable vnodes up to, walks): each walk restarts hot from the best
_ANNEAL_SURROGATE = 1.0  # weight of the mean sink latency beside the critical path's (falls to 0 as it cools)
_ANNEAL_SWAP = 0.2       # share of annealing trials that swap two vnodes rather than move one ...
_ANNEAL_CHAIN = 0.3      # ... or move one with its co-located movable neighbours (80 x 16 and 150 x 30, three
                         # runs each of four instances: median 1.06 -> 1.00 of the best known, worst 1.14 -> 1.07)
_HALVING = (30, 400)     # movable vnodes from .. to (and movable x nodes up to `_LARGE`): annealing by successive
                         # halving (`_halving`), not walks
_HALVING_RATE = 1.2e6    # trials planned per second of the budget for it (~0.8 s CPU at 80-150 vnodes here)
# (walks, share of the trials, T from, T to): 16 walks from the seed through the hot band, the best half of them
# continued cooler, and so on. One walk's result depends on its luck in that band (150 x 30 seed 0, five walks
# of 1.2 M trials each: 1.01-1.28 of the best known); keeping the best of many there, 1.00-1.09 over eight seeds
# for the same work, median 1.014 (by hand; its first walks from 10 % of the cost: 1.015-1.056, median 1.042)
_HALVING_STAGES = ((16, 0.33, 0.05, 0.01), (8, 0.26, 0.01, 0.004), (4, 0.20, 0.004, 1e-3), (2, 0.16, 1e-3, 1e-4),
                   (1, 0.05, 1e-4, 1e-5))
_HALVING_SMALL = (60, 0.1)  # below this many movable vnodes the first walks start from this share of the cost
                            # (40 x 10 seed 2 from 5 %: one of three seeds ended at 1.94x the optimum; 6 of 6 at 1.000)
_HALVING_SHARE = 0.9     # of the time left: the halving's walks may take this much before they are cut
_SLACK = 1.5             # a walk may take this many times its planned share of the time left before it is cut
_LARGE = 20_000          # movable vnodes × nodes beyond which a cool walk comes before local search ...
_LARGE_WALK = 0.35       # ... for this share of the budget
_LARGE_T = (0.03, 1e-4)  # ... and walks start cooler (a hot walk over 1,000 vnodes undoes the seeding for nothing)

Clock = Callable[[], float]


@dataclass
class Placement:
    """Where each virtual node goes, what that costs, and why."""

    assignment: dict[str, str]
    cost: Cost
    explain: dict[str, str]
    solver: str = "heuristic"
    seconds: float = 0.0
    flows: Flows | None = field(default=None, repr=False)
    problem: Problem | None = field(default=None, repr=False)
    gap: float | None = None            # proven (cost − lower bound) / cost; None when unknown
    bound: float | None = None          # the proven lower bound of the optimum's cost

    @property
    def feasible(self) -> bool:
        return self.cost.feasible

    @property
    def quality(self) -> str:
        """ "optimal", "within 0.3 % of optimal" or "gap unknown"."""
        return gap_text(self.gap if self.feasible else None)


# -- incremental state for local search -------------------------------------------------------------------

class _State:
    """An assignment with what the deltas need: cores used per node, longest paths to and from each vnode."""

    def __init__(self, p: Problem, assign: np.ndarray) -> None:
        self.p = p
        self.a = assign.astype(np.int64).copy()
        v = p.n_vnodes
        nb: list[dict[int, float]] = [{} for _ in range(v)]
        preds: list[list[int]] = [[] for _ in range(v)]
        succs: list[list[int]] = [[] for _ in range(v)]
        for s, d, b in zip(p.src.tolist(), p.dst.tolist(), p.traffic.tolist(), strict=True):
            nb[s][d] = nb[s].get(d, 0.0) + b
            nb[d][s] = nb[d].get(s, 0.0) + b
        for s, d in zip(p.lat_src.tolist(), p.lat_dst.tolist(), strict=True):
            succs[s].append(d)
            preds[d].append(s)
        self.nb_idx = [np.fromiter(m.keys(), np.int64, len(m)) for m in nb]
        self.nb_b = [np.fromiter(m.values(), float, len(m)) for m in nb]
        self.preds = [np.asarray(x, dtype=np.int64) for x in preds]
        self.succs = [np.asarray(x, dtype=np.int64) for x in succs]
        self.pred_l, self.succ_l = preds, succs
        self.pos = np.empty(v, dtype=np.int64)
        self.pos[p.order] = np.arange(v)
        self.lat = p.latency_ms.tolist()
        self.cores2 = p.cores2
        self.nb_total = np.array([float(b.sum()) for b in self.nb_b])
        self.has_mem = bool(p.mem.any()) and bool(np.isfinite(p.mem_capacity).any())
        self.has_links = bool(len(p.link_cap))
        self.has_moves = bool(((p.current >= 0) & (p.move_cost != 0)).any())
        self.link_bw = p.link_bw
        partners: list[list[int]] = [[] for _ in range(v)]
        for x, y in p.apart.tolist():
            partners[x].append(y)
            partners[y].append(x)
        self.partners = [np.asarray(x, dtype=np.int64) for x in partners]
        self._incidence: np.ndarray | None = None
        self.refresh()

    def refresh(self) -> None:
        p, a = self.p, self.a
        self.al = a.tolist()
        self.net = float(np.dot(p.traffic, p.inv_bw[a[p.src], a[p.dst]]))
        self.used = np.bincount(a, weights=p.cpu, minlength=p.n_nodes)
        self.mem_used = np.bincount(a, weights=p.mem, minlength=p.n_nodes)
        self.link_load = p.link_loads(a)
        self.dsrc = p.longest_to(a)
        self.dsink = p.longest_from(a)
        self.L = float(self.dsrc.max()) if p.n_vnodes else 0.0
        self.version = getattr(self, "version", 0) + 1

    def objective(self) -> float:
        """The search objective (`Problem.search_objective`: cost plus a penalty per unit of overload), from
        the tracked state."""
        p, w = self.p, self.p.weights
        load = max(0.0, float(np.sum(self.used ** 2 / self.cores2)) - p.load_floor)
        moves = p.moves(self.a) if self.has_moves else 0.0
        return w.network * self.net + w.latency * self.L + w.load * load + moves + _OVERLOAD * self.overload()

    def overload(self) -> float:
        """Cores over + memory over ÷ memory + link traffic over ÷ bandwidth, from the tracked state."""
        p = self.p
        over = float(np.maximum(0.0, self.used - p.capacity).sum())
        if self.has_mem:
            fin = np.isfinite(p.mem_capacity)
            over += float((np.maximum(0.0, self.mem_used - p.mem_capacity)[fin]
                           / np.maximum(p.memory[fin], 1.0)).sum())
        if self.has_links:
            over += float((np.maximum(0.0, self.link_load - p.link_cap) / np.maximum(self.link_bw, 1e-12)).sum())
        return over + p.together(self.a)

    def objective_full(self) -> float:
        """The same, recomputed from scratch (for checking the incremental bookkeeping)."""
        return self.p.search_objective(self.a)

    def deltas(self, v: int, capacity: bool = True) -> np.ndarray:
        """[N] change of the objective if vnode v moved to each node (inf where it may not go)."""
        free = self.free_deltas(v)
        return self.constrain(v, free) if capacity else free

    def free_deltas(self, v: int) -> np.ndarray:
        """Like `deltas`, ignoring the target's cores (pins and backends still hold)."""
        p, w = self.p, self.p.weights
        cur = self.a[v]
        total = self._load(v)
        total *= w.load
        idx = self.nb_idx[v]
        if len(idx):
            d = self.nb_b[v] @ p.inv_bw[self.a[idx]]
            total += w.network * (d - d[cur])
        if self.pred_l[v] or self.succ_l[v]:
            total += w.latency * self._latency(v)
        over = self.used[cur] - p.capacity[cur]
        if over > 0:
            total -= _OVERLOAD * min(over, p.cpu[v])
        if self.has_mem:
            over = self.mem_used[cur] - p.mem_capacity[cur]
            if over > 0:
                total -= _OVERLOAD * min(over, p.mem[v]) / max(p.memory[cur], 1.0)
        if self.has_links and self.nb_total[v] > 0:
            links = self._link_deltas(v)
            if links is not None:
                total += _OVERLOAD * links
        if len(self.partners[v]):
            # a pair that protects each other in one failure domain: a unit of overload per pair
            theirs = p.domain[self.a[self.partners[v]]]
            clash = (p.domain[:, None] == theirs[None, :]).sum(axis=1).astype(float)
            total += _OVERLOAD * (clash - clash[cur])
        cur0 = p.current[v]
        if cur0 >= 0 and p.move_cost[v]:
            total += p.move_cost[v] * ((np.arange(p.n_nodes) != cur0).astype(float) - float(cur != cur0))
        total[~p.allowed[v]] = np.inf
        total[cur] = 0.0
        return total

    def constrain(self, v: int, free: np.ndarray) -> np.ndarray:
        """`free` with the nodes that lack the room (cores or memory) for v set to inf."""
        p = self.p
        full = self.used + p.cpu[v] > p.capacity + 1e-9
        if self.has_mem:
            full |= self.mem_used + p.mem[v] > p.mem_capacity * (1 + 1e-12)
        out = np.where(full, np.inf, free)
        out[self.a[v]] = 0.0
        return out

    def incidence(self) -> np.ndarray:
        """[N, N, links] float32: 1 where the route from node i to node j crosses the link (built on first use)."""
        if self._incidence is None:
            p = self.p
            n, k = p.n_nodes, len(p.link_cap)
            inc = np.zeros((n * n, k), dtype=np.float32)
            counts = np.diff(p.link_ptr)
            rows = np.repeat(np.arange(n * n), counts)
            inc[rows, p.link_idx] = 1.0
            self._incidence = inc.reshape(n, n, k)
        return self._incidence

    def _link_deltas(self, v: int) -> np.ndarray | None:
        """[N] change of the link overload (Σ traffic over ÷ bandwidth) if v moved to each node; None when no
        link can go over. Only the links whose spare bandwidth is below v's traffic are looked at."""
        p = self.p
        tight = np.flatnonzero(p.link_cap - self.link_load < self.nb_total[v])
        if not len(tight):
            return None
        inc = self.incidence()
        idx, b = self.nb_idx[v], self.nb_b[v]
        far = self.a[idx]
        cur = int(self.a[v])
        sub = inc[:, far][:, :, tight].astype(float)                     # [N, k, tight links]
        base = self.link_load[tight] - b @ sub[cur]
        moved = np.einsum("k,nkl->nl", b, sub)
        cap, bw = p.link_cap[tight], np.maximum(self.link_bw[tight], 1e-12)
        over = (np.maximum(0.0, base[None, :] + moved - cap[None, :]) / bw).sum(axis=1)
        now = float((np.maximum(0.0, self.link_load[tight] - cap) / bw).sum())
        return over - now

    def delta_at(self, v: int, n: int) -> float:
        """Estimated change of moving v to node n (latency: only an increase is counted)."""
        p, w, a = self.p, self.p.weights, self.a
        cur = int(a[v])
        if n == cur:
            return 0.0
        out = 0.0
        idx = self.nb_idx[v]
        if len(idx):
            out += w.network * float(self.nb_b[v] @ (p.inv_bw[n, a[idx]] - p.inv_bw[cur, a[idx]]))
        c, used = p.cpu[v], self.used
        out += w.load * (((used[n] + c) ** 2 - used[n] ** 2) / self.cores2[n]
                         + ((used[cur] - c) ** 2 - used[cur] ** 2) / self.cores2[cur])
        pr, su = self.preds[v], self.succs[v]
        if len(pr) or len(su):
            din = float((self.dsrc[pr] + p.latency_ms[a[pr], n]).max()) if len(pr) else 0.0
            dout = float((p.latency_ms[n, a[su]] + self.dsink[su]).max()) if len(su) else 0.0
            out += w.latency * max(0.0, din + dout - self.L)
        return out

    def _net(self, v: int) -> np.ndarray:
        """[N] change of the network term (unweighted) if v moved to each node."""
        idx = self.nb_idx[v]
        if not len(idx):
            return np.zeros(self.p.n_nodes)
        d = self.nb_b[v] @ self.p.inv_bw[self.a[idx]]
        return d - d[self.a[v]]

    def _load(self, v: int) -> np.ndarray:
        c, cur, used = self.p.cpu[v], self.a[v], self.used
        gain = (2.0 * c) * used
        gain += c * c
        gain /= self.cores2
        gain += (c * c - 2.0 * c * used[cur]) / self.cores2[cur]
        return gain

    def _through(self, v: int) -> np.ndarray:
        """[N] longest latency of a path through v, were v on each node (paths elsewhere unchanged)."""
        p, a, lat = self.p, self.a, self.p.latency_ms
        pr, su = self.pred_l[v], self.succ_l[v]
        if len(pr) == 1:
            din = lat[a[pr[0]]] + self.dsrc[pr[0]]
        elif pr:
            idx = self.preds[v]
            din = (self.dsrc[idx][:, None] + lat[a[idx]]).max(axis=0)
        else:
            din = np.zeros(p.n_nodes)
        if len(su) == 1:
            din = din + (lat[a[su[0]]] + self.dsink[su[0]])      # latency is symmetric: column = row
        elif su:
            idx = self.succs[v]
            din = din + (lat[a[idx]] + self.dsink[idx][:, None]).max(axis=0)
        return din

    def _latency(self, v: int) -> np.ndarray:
        through = self._through(v)
        cur = self.a[v]
        if through[cur] >= self.L - 1e-9 and self._essential(v):   # every critical path runs through v
            rest = float(self.p.longest_to(self.a, skip=v).max())
        else:
            rest = self.L
        return np.maximum(rest, through) - self.L

    def _essential(self, v: int) -> bool:
        """Does every path of the largest latency pass through v? (counts of such paths, cached per state)"""
        if getattr(self, "_crit_version", -1) != self.version:
            self._cin, self._cout, self._paths = self._critical_counts()
            self._crit_version = self.version
        through = self._cin[v] * self._cout[v]
        return not np.isfinite(self._paths) or through >= self._paths * (1 - 1e-9)

    def _critical_counts(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Numbers of largest-latency paths ending at and starting from each vnode (tight edges only)."""
        p, a, eps = self.p, self.a, 1e-9 * max(1.0, self.L)
        cin = ((self.dsrc <= eps) & (self.dsink >= self.L - eps)).astype(float)
        cout = ((self.dsink <= eps) & (self.dsrc >= self.L - eps)).astype(float)
        for s, d in p._fwd:
            tight = self.dsrc[s] + p.latency_ms[a[s], a[d]] + self.dsink[d] >= self.L - eps
            np.add.at(cin, d[tight], cin[s[tight]])
        for s, d in p._back:
            tight = self.dsrc[s] + p.latency_ms[a[s], a[d]] + self.dsink[d] >= self.L - eps
            np.add.at(cout, s[tight], cout[d[tight]])
        total = float(np.sum(cin * ((self.dsink <= eps) & (self.dsrc >= self.L - eps))))
        return cin, cout, total

    def move(self, v: int, n: int) -> None:
        p, cur = self.p, self.a[v]
        if n == cur:
            return
        idx = self.nb_idx[v]
        if len(idx):
            far = self.a[idx]
            self.net += float(self.nb_b[v] @ (p.inv_bw[n, far] - p.inv_bw[cur, far]))
        self.used[cur] -= p.cpu[v]
        self.used[n] += p.cpu[v]
        if self.has_mem:
            self.mem_used[cur] -= p.mem[v]
            self.mem_used[n] += p.mem[v]
        if self.has_links and len(idx):
            inc = self.incidence()
            far = self.a[idx]
            self.link_load += self.nb_b[v] @ (inc[n, far] - inc[cur, far])
        self.a[v] = n
        self.al[v] = n
        if self.pred_l[v] or self.succ_l[v]:
            self._forward([v, *self.succ_l[v]])
            self._backward([v, *self.pred_l[v]])
            self.L = float(self.dsrc.max())
            self.version += 1

    def _forward(self, start: list[int]) -> None:
        """Update longest paths to vnodes downstream of a move, in topological order, stopping where
        nothing changes."""
        dsrc, al, lat, pos = self.dsrc, self.al, self.lat, self.pos
        heap = [(int(pos[x]), x) for x in start]
        heapq.heapify(heap)
        queued = set(start)
        while heap:
            _, x = heapq.heappop(heap)
            row = al[x]
            new = 0.0
            for u in self.pred_l[x]:
                val = dsrc[u] + lat[al[u]][row]
                if val > new:
                    new = val
            if new != dsrc[x]:
                dsrc[x] = new
                for y in self.succ_l[x]:
                    if y not in queued:
                        queued.add(y)
                        heapq.heappush(heap, (int(pos[y]), y))

    def _backward(self, start: list[int]) -> None:
        """The same upstream for the longest paths from each vnode."""
        dsink, al, lat, pos = self.dsink, self.al, self.lat, self.pos
        heap = [(-int(pos[x]), x) for x in start]
        heapq.heapify(heap)
        queued = set(start)
        while heap:
            _, x = heapq.heappop(heap)
            row = lat[al[x]]
            new = 0.0
            for y in self.succ_l[x]:
                val = dsink[y] + row[al[y]]
                if val > new:
                    new = val
            if new != dsink[x]:
                dsink[x] = new
                for u in self.pred_l[x]:
                    if u not in queued:
                        queued.add(u)
                        heapq.heappush(heap, (-int(pos[u]), u))


# -- heuristic ----------------------------------------------------------------------------------------------

def seed(problem: Problem) -> np.ndarray:
    """Pinned vnodes first, then each vnode in topological order on the node adding least cost so far."""
    p, w = problem, problem.weights
    assign = np.where(p.pinned >= 0, p.pinned, -1)
    used = np.bincount(assign[assign >= 0], weights=p.cpu[assign >= 0], minlength=p.n_nodes)
    cores2 = np.where(p.cores > 0, p.cores, 1.0) ** 2
    dist = np.zeros(p.n_vnodes)
    nb: list[list[tuple[int, float]]] = [[] for _ in range(p.n_vnodes)]
    for s, d, b in zip(p.src.tolist(), p.dst.tolist(), p.traffic.tolist(), strict=True):
        nb[s].append((d, b))
        nb[d].append((s, b))
    preds: list[list[int]] = [[] for _ in range(p.n_vnodes)]
    for s, d in zip(p.lat_src.tolist(), p.lat_dst.tolist(), strict=True):
        preds[d].append(s)
    latency = 0.0
    partners: list[list[int]] = [[] for _ in range(p.n_vnodes)]
    for a, b in p.apart.tolist():
        partners[a].append(b)
        partners[b].append(a)
    for v in p.order.tolist():
        din = np.zeros(p.n_nodes)
        for u in preds[v]:
            din = np.maximum(din, dist[u] + p.latency_ms[assign[u]])
        if assign[v] < 0:
            cost = w.latency * (np.maximum(latency, din) - latency)
            cost += w.load * ((used + p.cpu[v]) ** 2 - used ** 2) / cores2
            for u, b in nb[v]:
                if assign[u] >= 0:
                    cost += w.network * b * p.inv_bw[assign[u]]
            cost[~p.allowed[v]] = np.inf
            placed = [u for u in partners[v] if assign[u] >= 0]
            if placed:                              # off the failure domains of what it protects
                cost[np.isin(p.domain, p.domain[assign[placed]])] += _OVERLOAD
            room = used + p.cpu[v] <= p.capacity + 1e-9
            if (room & p.allowed[v]).any():
                cost[~room] = np.inf
                assign[v] = int(np.argmin(cost))
            else:                                   # nothing fits: least overload
                spare = np.where(p.allowed[v], p.capacity - used, -np.inf)
                assign[v] = int(np.argmax(spare))
            used[assign[v]] += p.cpu[v]
        dist[v] = din[assign[v]]
        latency = max(latency, dist[v])
    return assign


def _movable(p: Problem) -> list[int]:
    counts = p.allowed.sum(axis=1)
    return [v for v in p.order.tolist() if p.pinned[v] < 0 and counts[v] > 1]


Blocked = dict[int, tuple[int, float]]      # vnode -> (the node it would rather be on, estimated gain)


def _try_move(st: _State, v: int, blocked: Blocked) -> int:
    """Move v to its best node if that gains; return the node it left (or -1). If its best node lacks the
    room, note it in `blocked`."""
    free = st.free_deltas(v)
    d = st.constrain(v, free)
    n = int(np.argmin(d))
    cur = int(st.a[v])
    blocked.pop(v, None)
    if d[n] < -_TOL * max(1.0, abs(st.L)) and n != cur:
        st.move(v, n)
        return cur
    m = int(np.argmin(free))
    if free[m] < d[n] - 1e-12 and m != cur:
        blocked[v] = (m, float(d[n] - free[m]))
    return -1


def _sweep(st: _State, queue: list[int], is_movable: np.ndarray, blocked: Blocked) -> int:
    """Improving single moves for the queued vnodes, re-queueing the neighbours of each vnode that moves and
    the vnodes on the two nodes whose load changed, until the queue is empty; returns the number of moves."""
    todo = deque(queue)
    queued = set(queue)
    moves = 0
    while todo:
        v = todo.popleft()
        queued.discard(v)
        left = _try_move(st, v, blocked)
        if left < 0:
            continue
        moves += 1
        near = np.flatnonzero((st.a == left) | (st.a == st.a[v])).tolist()   # their load changed
        for u in [*st.nb_idx[v].tolist(), *near]:
            if u not in queued and is_movable[u]:
                todo.append(u)
                queued.add(u)
    return moves


def _swap_candidates(st: _State, movable: list[int], exhaustive: bool, blocked: Blocked) -> list[tuple[int, int]]:
    """Every pair on small instances; otherwise, for each vnode kept off its best node only by that node's
    cores, the vnode there whose move back is estimated to cost least."""
    if exhaustive:
        return [(u, v) for i, u in enumerate(movable) for v in movable[i + 1:] if st.a[u] != st.a[v]]
    p = st.p
    mov = set(movable)
    pairs = []
    for u, (n, _) in sorted(blocked.items(), key=lambda b: -b[1][1])[:_MAX_BLOCKED]:
        a = int(st.a[u])
        if a == n:
            continue
        best, best_d = None, -st.delta_at(u, n)
        for w in np.flatnonzero(st.a == n).tolist()[:_MAX_PARTNERS]:
            if w not in mov or not p.allowed[w, a]:
                continue
            if st.used[n] - p.cpu[w] + p.cpu[u] > p.capacity[n] + 1e-9:
                continue
            dw = st.delta_at(w, a)
            if dw < best_d:
                best, best_d = w, dw
        if best is not None:
            pairs.append((u, best))
    return pairs


def _swaps(st: _State, movable: list[int], exhaustive: bool, blocked: Blocked) -> list[int]:
    """Apply improving pairwise swaps; returns the vnodes that moved."""
    touched = []
    for u, v in _swap_candidates(st, movable, exhaustive, blocked):
        p = st.p
        a, b = int(st.a[u]), int(st.a[v])
        if a != b and p.allowed[u, b] and p.allowed[v, a] and _try_changes(st, [(u, b), (v, a)]):
            touched += [u, v]
    return touched


def _try_changes(st: _State, changes: list[tuple[int, int]]) -> bool:
    """Apply moves; keep them if the objective drops, else undo them."""
    before = st.objective()
    undo = [(v, int(st.a[v])) for v, _ in changes][::-1]
    for v, n in changes:
        st.move(v, n)
    if st.objective() < before - _TOL * max(1.0, abs(before)):
        return True
    for v, n in undo:
        st.move(v, n)
    return False


def _components(st: _State, movable: list[int]) -> list[list[int]]:
    """Groups of movable vnodes on the same node joined by traffic (a chain that should move as one)."""
    ok = set(movable)
    sets = DisjointSets(movable)
    find = sets.find

    for s, d in zip(st.p.src.tolist(), st.p.dst.tolist(), strict=True):
        if s in ok and d in ok and st.a[s] == st.a[d]:
            sets.union(s, d)
    groups: dict[int, list[int]] = {}
    for v in movable:
        groups.setdefault(find(v), []).append(v)
    return list(groups.values())


def _try_group(st: _State, group: list[int], n: int, movable: set[int], limit: int) -> list[int]:
    """Move `group` to node n, evicting one vnode of n to its best node if n lacks room; keep it if better.
    Returns the vnodes that moved."""
    p = st.p
    if not p.allowed[group, n].all():
        return []
    before = st.objective()
    undo = [(v, int(st.a[v])) for v in group]
    for v in group:
        st.move(v, n)
    moved = list(group)
    if st.used[n] > p.capacity[n] + 1e-9:
        evict = _best_eviction(st, group, n, movable, limit)
        if evict is not None:
            undo.insert(0, (evict[0], n))
            st.move(*evict)
            moved.append(evict[0])
    if st.objective() < before - _TOL * max(1.0, abs(before)):
        return moved
    for v, m in undo:
        st.move(v, m)
    return []


def _best_eviction(st: _State, group: list[int], n: int, movable: set[int], limit: int) -> tuple[int, int] | None:
    p = st.p
    best, best_d = None, np.inf
    others = [w for w in np.flatnonzero(st.a == n).tolist() if w in movable and w not in group][:limit]
    for w in others:
        if st.used[n] - p.cpu[w] > p.capacity[n] + 1e-9:
            continue
        d = st.deltas(w)
        d[n] = np.inf
        m = int(np.argmin(d))
        if d[m] < best_d:
            best, best_d = (w, m), d[m]
    return best


def _group_moves(st: _State, movable: list[int], exhaustive: bool) -> list[int]:
    """Move chains of co-located vnodes (and, on small instances, both ends of an edge) together to another
    node; returns the vnodes that moved."""
    mov = set(movable)
    groups = _components(st, movable)
    if exhaustive:
        groups += [[s, d] for s, d in zip(st.p.src.tolist(), st.p.dst.tolist(), strict=True)
                   if s in mov and d in mov and st.a[s] != st.a[d]]
    touched: list[int] = []
    for group in groups:
        if not exhaustive and len(group) > 6:
            continue
        targets = range(st.p.n_nodes) if exhaustive else _neighbour_nodes(st, group)
        for n in targets:
            if (st.a[group] == n).all():
                continue
            if not exhaustive and len(group) == 1 and st.used[n] + st.p.cpu[group[0]] <= st.p.capacity[n]:
                continue                       # a plain move, which the sweep has already declined
            moved = _try_group(st, group, n, mov, 1_000 if exhaustive else 8)
            if moved:
                touched += moved
                break
    return touched


def _neighbour_nodes(st: _State, group: list[int]) -> list[int]:
    return sorted({int(st.a[u]) for v in group for u in st.nb_idx[v].tolist()})


def _local_search(p: Problem, start: np.ndarray, deadline: float, queue: list[int] | None = None,
                  clock: Clock = time.perf_counter) -> np.ndarray:
    """Single moves and swaps until none gains (certified by a full pass without a move), then a round of
    group moves, and again. After a swap or group move only the vnodes it touched and their neighbours are
    re-examined."""
    st = _State(p, start)
    movable = _movable(p)
    exhaustive = len(movable) * p.n_nodes <= _EXHAUSTIVE
    is_movable = np.zeros(p.n_vnodes, dtype=bool)
    is_movable[movable] = True
    blocked: Blocked = {}
    queue = list(movable) if queue is None else queue
    groups = True
    while clock() < deadline:
        _sweep(st, queue, is_movable, blocked)
        touched = _swaps(st, movable, exhaustive, blocked)
        if not touched:
            if _sweep(st, movable, is_movable, blocked):    # certify: a full pass with no move
                queue = []
                continue
            if not groups:
                break
            before = st.objective()
            touched = _group_moves(st, movable, exhaustive)
            if not touched:
                break
            # on large instances, stop group moves once a round of them gains under 0.1 %
            groups = exhaustive or before - st.objective() >= _GROUP_MIN_GAIN * abs(before)
        queue = sorted({u for v in touched for u in [v, *st.nb_idx[v].tolist()] if is_movable[u]})
    return st.a


def _random_start(p: Problem, rng: np.random.Generator) -> np.ndarray:
    assign = np.empty(p.n_vnodes, dtype=np.int64)
    for v in range(p.n_vnodes):
        choices = np.flatnonzero(p.allowed[v])
        assign[v] = int(rng.choice(choices))
    return assign


@dataclass
class Solution:
    """A solver's answer: node index per vnode, and what is proven about it."""

    assign: np.ndarray
    bound: float = -math.inf      # proven lower bound of the optimum (-inf: none)
    status: str = "heuristic"     # or the MILP's: "optimal", "time limit", ...

    def gap(self, problem: Problem) -> float | None:
        """(cost − bound) / cost, None when unknown (no bound, or an infeasible placement)."""
        g = relative_gap(problem.total(self.assign), self.bound)
        return g if math.isfinite(g) else None


def heuristic(problem: Problem, start: np.ndarray | None = None, restarts: int | None = None,
              time_limit: float = 1.0, rng_seed: int = 0) -> np.ndarray:
    """Node index per vnode: seeding (or `start`, e.g. the current placement), local search, then
    large-neighbourhood search until `time_limit` seconds (see `improve`)."""
    return improve(problem, start, restarts, time_limit, rng_seed).assign


def improve(problem: Problem, start: np.ndarray | None = None, restarts: int | None = None,
            time_limit: float = 1.0, rng_seed: int = 0, clock: Clock = time.perf_counter,
            work: float | None = None) -> Solution:
    """The heuristic, with what it proved: seeding (or `start`) then local search (single moves, pairwise
    swaps, chain moves); small instances also try `restarts` random starts (default: 2 when vnodes × nodes ≤
    400); beyond `_LARGE` movable vnodes × nodes a cool annealing walk comes before local search. A problem
    small enough is solved whole by the MILP, which also proves the bound. Otherwise simulated annealing
    (`_anneal`: several walks) for most of the time left, then large-neighbourhood search until
    `time_limit`: free the vnodes of a few nodes (or a connected group of vnodes), re-solve that sub-problem
    exactly with the MILP, keep it if it gains, and polish with local search. `clock` measures the budget
    (wall time by default; `time.process_time` counts this process's CPU seconds, for benchmarks on a
    shared machine).

    The search's work (annealing trials, walks, LNS sub-problems) is planned from `work` — seconds of the
    nominal rates, `time_limit` by default — not from the clock, so for a seed the same problem gets the same
    placement whatever the machine's load; the clock only cuts the search short (then the rest of a walk's
    cooling is compressed into the time left) when the work does not fit into `time_limit`."""
    milp_available()                           # import scipy (once per process, ~1 s) before the clock starts
    warm()                                     # ... and load the compiled annealer (compiled once per machine)
    deadline = clock() + time_limit
    work = time_limit if work is None else work
    first = start.astype(np.int64) if start is not None else seed(problem)
    rng = np.random.default_rng(rng_seed)
    movable = _movable(problem)
    if len(movable) * problem.n_nodes > _LARGE:
        # local search from the seed alone took the whole budget here (1,000 x 100: 0.8-1.1 s CPU); a cool walk
        # gets further in half of it (the search objective: never worse than the seed)
        trials = int(_ANNEAL_RATE * _LARGE_WALK * work)
        first = _anneal(problem, first, clock() + _LARGE_WALK * time_limit, rng, clock, trials)
    if _halves(problem, movable) and anneal_ready():
        best = first                           # the halving starts hot: local search first would be undone
    else:
        best = _local_search(problem, first, deadline, clock=clock)
    best_cost = problem.search_objective(best)
    if restarts is None:
        restarts = 2 if problem.n_vnodes * problem.n_nodes <= 400 and start is None else 0
    for i in range(restarts):
        if clock() > deadline:
            break
        if i % 2 == 0 or not movable:           # alternately a fresh random start, and a kick of the best
            start_i = _random_start(problem, rng)
        else:
            start_i = best.copy()
            for v in rng.choice(movable, size=min(3, len(movable)), replace=False).tolist():
                start_i[v] = int(rng.choice(np.flatnonzero(problem.allowed[v])))
        cand = _local_search(problem, start_i, deadline, clock=clock)
        c = problem.search_objective(cand)
        if c < best_cost - 1e-12:
            best, best_cost = cand, c
    found = _lns(problem, best, deadline, rng, clock, work, time_limit / max(work, 1e-9))
    if not problem.feasible(found.assign) and found.status != "infeasible":
        found = Solution(_repair(problem, found.assign, deadline, clock))
    return found


def _repair(p: Problem, best: np.ndarray, deadline: float, clock: Clock) -> np.ndarray:
    """An overloaded placement the search could not fix (tight links, say): the whole problem with hard limits,
    stopping at the MILP's first feasible placement, finds one where one exists — feasibility before the
    budget, so it gets at least `_REPAIR_SECONDS`. Only for problems small enough to build whole."""
    if not milp_available() or len(p.src) * p.n_nodes ** 2 > _REPAIR_MILP or not _movable(p):
        return best
    r = solve_milp(p, time_limit=max(0.5 * (deadline - clock()), _REPAIR_SECONDS), gap=0.99)
    if r.assign is None or not p.feasible(r.assign):
        return best
    return _local_search(p, r.assign, max(deadline, clock() + 0.1), clock=clock)


def _anneal(p: Problem, start: np.ndarray, deadline: float, rng: np.random.Generator,
            clock: Clock = time.perf_counter, trials: int | None = None,
            t_range: tuple[float, float] | None = None) -> np.ndarray:
    """Simulated annealing from `start` (`anneal.anneal`, compiled): trial moves (a vnode to a random allowed
    node or to a neighbour's node) and swaps, kept if they gain or with probability exp(−Δ / T), T cooling
    geometrically from `_ANNEAL_T[0]` to `_ANNEAL_T[1]` × the start's cost over `trials` trials (by default
    `_ANNEAL_RATE` per second until `deadline`; compressed into the time left if the deadline comes first).
    Returns the best placement by the search objective, never worse than `start`."""
    if trials is None:
        trials = int(_ANNEAL_RATE * max(0.0, deadline - clock()))
    movable = _movable(p)
    if t_range is None:
        t_range = _LARGE_T if len(movable) * p.n_nodes > _LARGE else _ANNEAL_T
    return anneal(p, start, movable, deadline, int(rng.integers(2**31 - 1)), trials, clock, t_range,
                  _ANNEAL_SURROGATE, _ANNEAL_SWAP, _ANNEAL_CHAIN)[0]


def _halves(p: Problem, movable: list[int]) -> bool:
    """Is the annealing of this problem done by successive halving (`_halving`)?"""
    # not beyond `_LARGE`: a cool walk comes first there, and its walks are cut by the clock anyway (not measured
    # to gain there; the scale figures were measured with walks)
    return _HALVING[0] <= len(movable) <= _HALVING[1] and _WHOLE_MILP < len(movable) * p.n_nodes <= _LARGE


def _walk_deadline(now: float, end: float, share: float, left: float) -> float:
    """When a walk of `share` of the `left` work still planned before `end` is cut: its proportional part of
    the time left, with `_SLACK` (so a walk is cut only when the machine is that much slower than planned)."""
    return min(end, now + max(0.0, end - now) * _SLACK * share / max(left, 1e-12))


def _halving(p: Problem, start: np.ndarray, end: float, deadline: float, rng: np.random.Generator, clock: Clock,
             trials: int) -> np.ndarray:
    """Annealing by successive halving (`_HALVING_STAGES`): many walks from `start` through the hot band of
    temperatures, then the best half of them continued cooler, and so on to one; `trials` in all, planned,
    so for a seed the result is the same on any machine unless `end` cuts the walks short. Ends with local
    search; never worse than `start`."""
    movable = _movable(p)
    pop = [start]
    left = float(sum(share for _, share, _, _ in _HALVING_STAGES))
    for stage, (width, share, hot, cold) in enumerate(_HALVING_STAGES):
        if stage == 0 and len(movable) < _HALVING_SMALL[0]:
            hot = _HALVING_SMALL[1]
        pop = sorted(pop, key=p.search_objective)
        pop = [pop[i % len(pop)] for i in range(width)]      # the best first; from one start: copies of it
        each = max(1, int(trials * share / width))
        out = []
        for a in pop:
            walk_end = _walk_deadline(clock(), end, share / width, left)
            left -= share / width
            out.append(anneal(p, a, movable, walk_end, int(rng.integers(2**31 - 1)), each, clock, (hot, cold),
                              _ANNEAL_SURROGATE, _ANNEAL_SWAP, _ANNEAL_CHAIN)[0])
        pop = out
    best = _local_search(p, min(pop, key=p.search_objective), deadline, clock=clock)
    return best if p.search_objective(best) < p.search_objective(start) else start


def _lns(p: Problem, best: np.ndarray, deadline: float, rng: np.random.Generator,
         clock: Clock = time.perf_counter, budget: float = 1.0, slack: float = 1.0) -> Solution:
    """A small problem whole by the MILP; otherwise simulated annealing (`budget` seconds of planned work),
    then large-neighbourhood search with exact sub-problems: `_LNS_PER_SECOND` × `budget` of them, fewer if
    `deadline` comes first or `_LNS_PATIENCE` × nodes sub-problems in a row gain nothing. A sub-problem's time
    limit is `_LNS_STEP` × `slack` (the caller's time ÷ its planned work)."""
    movable = _movable(p)
    if not movable or clock() >= deadline:
        return Solution(best)
    has_milp = milp_available()
    if has_milp and len(movable) * p.n_nodes <= _WHOLE_MILP:
        upper = p.total(best)
        r = solve_milp(p, time_limit=deadline - clock(), upper=upper if math.isfinite(upper) else None)
        if r.assign is not None and p.total(r.assign) <= p.search_objective(best) + 1e-12:
            best = r.assign
        if r.status == "infeasible":
            return Solution(best, math.inf, "infeasible")
        if r.status == "optimal":
            return Solution(best, r.bound, "optimal")
    share = _ANNEAL_SHARE if has_milp else 1.0
    if _halves(p, movable):
        share = _HALVING_SHARE if has_milp else 1.0
        best = _halving(p, best, clock() + (deadline - clock()) * share, deadline, rng, clock,
                        int(_HALVING_RATE * budget))
    else:
        # several walks, each from the best so far: one walk depends on its luck (40 x 10: 1.00-1.21 of the
        # optimum over two seeds with one walk of 1.2 M trials; 1.00-1.02 with 4-8 walks of the same total)
        cycles = next((c for up, c in _ANNEAL_CYCLES if len(movable) <= up), 1)
        trials = int(_ANNEAL_RATE * budget * share / cycles)     # from the budget, not the clock: reproducible
        end = clock() + (deadline - clock()) * share
        for i in range(cycles):
            walk_end = _walk_deadline(clock(), end, 1, cycles - i)
            annealed = _local_search(p, _anneal(p, best, walk_end, rng, clock, trials), deadline, clock=clock)
            if p.search_objective(annealed) < p.search_objective(best) - 1e-12:
                best = annealed
    if not has_milp:
        return Solution(best)
    if not p.feasible(best):
        best = _repair(p, best, deadline, clock)
    best_cost = p.search_objective(best)
    feasible = p.feasible(best)
    stale, patience, k = 0, max(_LNS_PATIENCE * p.n_nodes, 30), 0
    size = _LNS_FREE[1]
    tried: set[bytes] = set()                  # sub-problems already solved at this incumbent
    # up to `_HALVING[1]` movable vnodes a number of sub-problems, grown on their answers: the same for a seed at
    # any load. Beyond, until the deadline, grown while they are fast (as before work was planned: at 1,000 x 100
    # a count and sizes up to 20 left the 10 s result 2 % worse), since a walk over 1,000 vnodes is cut anyway
    planned = max(1, int(_LNS_PER_SECOND * budget)) if len(movable) <= _HALVING[1] else math.inf
    while clock() < deadline and stale < patience and k < planned:
        free, domains = _neighbourhood(p, best, movable, rng, k, size)
        k += 1
        key = free.tobytes() + np.packbits(domains[free]).tobytes()
        if len(free) == 0 or key in tried:
            stale += 1
            continue
        tried.add(key)
        step = min(_LNS_STEP * max(slack, 1.0), deadline - clock())
        r = solve_milp(p, time_limit=step, free=free, assign=best, domains=domains, soft=not feasible,
                       upper=best_cost)
        # grown on its answer, not its speed (which depends on the machine's load): the same sub-problems
        # for a seed on any machine, as long as none reaches its time limit
        if r.status != "optimal":
            size = max(_LNS_FREE[0], size - 3)
        elif planned < math.inf:
            size = min(_LNS_FREE[2], size + 1)
        elif r.seconds < _LNS_FAST:
            size = min(_LNS_LARGEST, size + 2)
        if r.assign is None:
            stale += 1
            continue
        cand = r.assign
        cost = p.search_objective(cand)
        if cost < best_cost - 1e-9 * max(1.0, abs(best_cost)):
            touched = set(free.tolist())
            queue = sorted({u for v in touched for u in [v, *np.flatnonzero((p.src == v) | (p.dst == v))]})
            cand = _local_search(p, cand, deadline, queue=[u for u in queue if u in set(movable)], clock=clock)
            best, best_cost = cand, p.search_objective(cand)
            feasible = p.feasible(best)
            stale = 0
            tried.clear()
        else:
            stale += 1
    return Solution(best)


def _neighbourhood(p: Problem, assign: np.ndarray, movable: list[int], rng: np.random.Generator,
                   k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(at most `size` vnodes to free, [V, N] nodes each may go to). Alternately: the vnodes of a random node
    and of the nodes it exchanges most traffic with; or a connected group of vnodes grown from a random
    one, over their nodes and their neighbours' nodes; or the vnodes of the critical (largest-latency) path
    and their neighbours."""
    n = p.n_nodes
    mov = np.zeros(p.n_vnodes, dtype=bool)
    mov[movable] = True
    if k % 3 == 2 and len(p.lat_src):
        return _critical_neighbourhood(p, assign, mov, rng, size)
    if k % 3 == 0:
        hosts = np.unique(assign[movable])
        first = int(rng.choice(hosts))
        talk = np.zeros((n, n))
        np.add.at(talk, (assign[p.src], assign[p.dst]), p.traffic * (1.0 + p.inv_bw[assign[p.src], assign[p.dst]]))
        talk = talk + talk.T
        row = talk[first].copy()
        row[first] = -1.0
        order = np.argsort(-row + rng.random(n) * 1e-9)
        nodes = [first] + [int(j) for j in order[:_LNS_MAX_NODES - 1] if row[j] > 0]
        if len(nodes) < 2:                              # nothing exchanged: the nearest nodes
            nearest = np.argsort(p.latency_ms[first] + rng.random(n) * 1e-6)
            nodes += [int(j) for j in nearest if j not in nodes and p.cores[j] > 0][:_LNS_MAX_NODES - len(nodes)]
        free = np.flatnonzero(mov & np.isin(assign, nodes))
        if len(free) > size:
            free = np.sort(rng.choice(free, size=size, replace=False))
    else:
        start = int(rng.choice(movable))
        adj = _adjacency(p)
        seen, queue = {start}, [start]
        group: list[int] = []
        while queue and len(group) < size:
            v = queue.pop(int(rng.integers(len(queue))))
            if mov[v]:
                group.append(v)
            for u in adj[v]:
                if u not in seen:
                    seen.add(u)
                    queue.append(u)
        free = np.array(sorted(group), dtype=np.int64)
        near = [int(assign[u]) for v in group for u in [v, *adj[v]]]
        counts = np.bincount(near, minlength=n)
        nodes = [int(j) for j in np.argsort(-counts)[:_LNS_MAX_NODES + 1] if counts[j] > 0]
    domains = np.zeros((p.n_vnodes, n), dtype=bool)
    if len(free):
        domains[np.ix_(free, np.asarray(nodes, dtype=np.int64))] = True
    return free, domains


def _critical_neighbourhood(p: Problem, assign: np.ndarray, mov: np.ndarray, rng: np.random.Generator,
                            size: int) -> tuple[np.ndarray, np.ndarray]:
    """The movable vnodes of a largest-latency path (and then their neighbours), over the nodes they and
    their neighbours are on."""
    path = [p.vnodes.index(v) for v in critical_path(p, assign)]
    adj = _adjacency(p)
    group = [v for v in path if mov[v]]
    if len(group) > size:
        group = sorted(rng.choice(group, size=size, replace=False).tolist())
    extra = [u for v in path for u in adj[v] if mov[u] and u not in group]
    rng.shuffle(extra)
    group = list(dict.fromkeys(group + extra))[:size]
    near = [int(assign[u]) for v in path for u in [v, *adj[v]]]
    counts = np.bincount(near, minlength=p.n_nodes)
    nodes = [int(j) for j in np.argsort(-counts)[:_LNS_MAX_NODES + 2] if counts[j] > 0]
    free = np.array(sorted(group), dtype=np.int64)
    domains = np.zeros((p.n_vnodes, p.n_nodes), dtype=bool)
    if len(free):
        domains[np.ix_(free, np.asarray(nodes, dtype=np.int64))] = True
    return free, domains


def _adjacency(p: Problem) -> list[list[int]]:
    cached = p._adjacency_cache
    if cached is None:
        cached = [[] for _ in range(p.n_vnodes)]
        for s, d in zip(p.src.tolist(), p.dst.tolist(), strict=True):
            cached[s].append(d)
            cached[d].append(s)
        p._adjacency_cache = cached
    return cached


# -- exact ----------------------------------------------------------------------------------------------------

def exact(problem: Problem, upper: np.ndarray | None = None, time_limit: float = 10.0) -> np.ndarray:
    """The optimal feasible placement by the MILP (`milp.solve_milp`), or the best found within `time_limit`
    seconds (`certify` says how close it is proven to be). Raises `PlacementError` if no feasible placement
    exists."""
    return certify(problem, upper, time_limit).assign


def certify(problem: Problem, upper: np.ndarray | None = None, time_limit: float = 10.0) -> Solution:
    """The MILP on the whole problem for `time_limit` seconds: the better of its placement and `upper` (e.g.
    the heuristic's, priced by the project's own cost function), with the proven lower bound. No warm start
    is handed to HiGHS (see `milp`): `upper`'s cost is a cutoff, so HiGHS searches only for cheaper
    placements and proves `upper` optimal when there are none (40 x 10: 3 of 4 proven in 20-25 s CPU with the
    cutoff, none in 30 s without)."""
    cutoff = problem.total(upper) if upper is not None else math.inf
    r = solve_milp(problem, time_limit=time_limit, upper=cutoff if math.isfinite(cutoff) else None)
    if r.status == "infeasible":
        raise PlacementError("no feasible placement: the vnodes' CPU, memory or traffic exceed what the nodes "
                             "and links allowed to carry them have")
    best = r.assign
    if upper is not None and (best is None or problem.total(upper) < problem.total(best)):
        best = upper
    if best is None:
        best = heuristic(problem)
    return Solution(best, r.bound, r.status)


def solve(problem: Problem, solver: str = "heuristic", start: np.ndarray | None = None,
          time_limit: float | None = None) -> np.ndarray:
    """Node index per vnode, by the named solver."""
    return solve_with_bound(problem, solver, start, time_limit).assign


def solve_with_bound(problem: Problem, solver: str = "heuristic", start: np.ndarray | None = None,
                     time_limit: float | None = None, work: float | None = None) -> Solution:
    """`solve`, with the proven lower bound when there is one. Time limits: the heuristic 1 s by default,
    exact 10 s (plus the heuristic's second, whose placement it must beat). `work`: the heuristic's planned
    work (`improve`)."""
    if solver == "heuristic":
        return improve(problem, start, time_limit=1.0 if time_limit is None else time_limit, work=work)
    if solver == "exact":
        first = improve(problem, start, time_limit=1.0)
        if first.status == "optimal":
            return first
        return certify(problem, first.assign, 10.0 if time_limit is None else time_limit)
    raise ValueError(f"unknown solver '{solver}': use 'heuristic' or 'exact'")


# -- the public entry point -------------------------------------------------------------------------------------

_SEARCH_SHARE = 0.8      # of place()'s budget planned for the heuristic's search
_PRICING_PER_SETUP = 2.5  # pricing and explaining a placement ÷ building its problem (1,000 operators: 0.08 / 0.04 s)


def place(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology,
          rates: Mapping[EdgeKey, float] | None = None, solver: str = "heuristic",
          current: Mapping[str, str] | None = None, weights: Weights | None = None,
          estimates: Estimates | None = None, time_limit: float | None = None,
          move_cost: Mapping[str, float] | float | None = None,
          state_bytes: Mapping[str, float] | None = None,
          apart: Iterable[tuple[str, str]] | None = None) -> Placement:
    """Place a physical plan on a topology.

    `rates` are measured bytes/s per (src_task, dst_task) (estimates otherwise); `current` (vnode → node)
    starts the search from the running placement, so only moves that gain are proposed; with `move_cost`
    (per vnode, or one figure for all, in the cost's units per second: e.g. a move's one-off price ÷ the
    horizon it must pay back in) the objective charges each vnode placed off its current node, so the solver
    answers "is there an assignment whose saving repays the moves?". `state_bytes` (vnode → bytes, e.g.
    measured snapshots) replace the estimated state in the memory limit. `apart` (pairs of vnodes that
    protect each other: a standby and what it stands in for) are kept on different nodes and in different
    failure domains (`Topology.failure_domain`: a node's `domain`, its domain/switch/rack label, or its site);
    a pair that can only be placed together raises `PlacementError`, one the solver cannot separate leaves the
    placement infeasible with the reason. `time_limit`: seconds for the whole call (heuristic 1 s by default:
    building the problem and explaining the result included; exact: 10 s for the MILP after the heuristic's
    second; loading the search's compiled kernels, once per process, is not counted: on a machine whose numba
    cache is cold that compiles them, which `microstream warmup` does ahead). Raises `PlacementError` if the
    topology has errors or a
    pin/backend cannot be met; an overloaded result is returned with `placement.feasible == False` and the
    reasons in `placement.cost.reasons` — first, where one is found, a proof that no placement fits
    (`bounds.infeasibility`: the traffic that must leave a group of nodes exceeds its links)."""
    milp_available()     # scipy imported and the annealer loaded before the clock starts (`improve` does the
    warm()               # same): `Placement.seconds` is then the placement's, not a cold cache's compile time
    started = time.perf_counter()
    errors = topology.check()
    if errors:
        raise PlacementError(f"the topology {topology.source or topology.name} has errors:\n  " + "\n  ".join(errors))
    flows = estimate_flows(plan, graph, topology, rates, estimates)
    problem = build_problem(plan, graph, topology, flows, weights, estimates, state_bytes, apart)
    start = None
    if current is not None:
        start = _start_from(problem, current)
        if move_cost is not None:
            _charge_moves(problem, current, move_cost)
    if solver == "heuristic":
        # the budget is the whole call's: the search plans a fixed share of it (so a seed gives the same
        # placement at any load); the clock stops it early when building the problem, or a loaded machine,
        # leaves less than that before the time kept for pricing
        budget = 1.0 if time_limit is None else time_limit
        setup = time.perf_counter() - started
        left = budget - max(setup * (1.0 + _PRICING_PER_SETUP), 0.1 * budget)
        found = solve_with_bound(problem, solver, start, max(left, 0.05 * budget), work=budget * _SEARCH_SHARE)
    else:
        found = solve_with_bound(problem, solver, start, time_limit)
    placement = _priced(plan, graph, topology, flows, problem, found.assign, solver,
                        time.perf_counter() - started, current)
    placement.gap = found.gap(problem)
    placement.bound = found.bound if math.isfinite(found.bound) else None
    if not placement.feasible and milp_available():
        # say whether any placement could fit: a proof names the nodes whose links cannot carry what must leave
        placement.cost.reasons[:0] = [proof.describe() for proof in infeasibility(problem)]
    return placement


def _charge_moves(problem: Problem, current: Mapping[str, str], move_cost: Mapping[str, float] | float) -> None:
    index = {n: i for i, n in enumerate(problem.nodes)}
    for v, vn in enumerate(problem.vnodes):
        j = index.get(current.get(vn, ""), -1)
        if j >= 0:
            problem.current[v] = j
            problem.move_cost[v] = float(move_cost.get(vn, 0.0) if isinstance(move_cost, Mapping) else move_cost)


def placement_of(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, assignment: Mapping[str, str],
                 rates: Mapping[EdgeKey, float] | None = None, solver: str = "as running") -> Placement:
    """A given assignment (e.g. where a job runs now, after its moves) priced and explained like `place`'s
    result, so that it can be reported and drawn the same way."""
    flows = estimate_flows(plan, graph, topology, rates)
    problem = build_problem(plan, graph, topology, flows)
    return _priced(plan, graph, topology, flows, problem, as_array(problem, assignment), solver, 0.0,
                   dict(assignment))


def _priced(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, flows: Flows, problem: Problem,
            assign: np.ndarray, solver: str, seconds: float, current: Mapping[str, str] | None) -> Placement:
    from .explain import explain, vnode_labels

    assignment = {vn: problem.nodes[int(n)] for vn, n in zip(problem.vnodes, assign, strict=True)}
    pins = {vn: pin.reason for vn, pin in find_pins(plan, graph, topology).items()}
    why = explain(_State(problem, assign), vnode_labels(plan, graph), pins, current)
    return Placement(assignment, evaluate(problem, assign), why, solver, seconds, flows, problem)


def place_on_agents(plan: PhysicalPlan, graph: LogicalGraph, agents: Mapping[str, Mapping],
                    topology: Topology | None = None, rates: Mapping[EdgeKey, float] | None = None,
                    current: Mapping[str, str] | None = None, solver: str = "heuristic") -> Placement:
    """`place` on a live cluster: `agents` as the coordinator knows them, `{name: {"up", "cores", "memory",
    "arch", "backends", "labels"}}`, merged with `topology` (e.g. the cluster's TOML) if given. Raises
    `PlacementError` when no agent is up or a pin/backend cannot be met."""
    if not any(info.get("up", True) for info in agents.values()):
        raise PlacementError("no agents are up: start one with `microstream agent` or `microstream cluster up`")
    return place(plan, graph, Topology.from_agents(agents, base=topology), rates=rates, solver=solver,
                 current=current)


def _start_from(problem: Problem, current: Mapping[str, str]) -> np.ndarray:
    """The current placement as a start; vnodes it does not cover (or cannot keep) are seeded afresh."""
    fresh = seed(problem)
    index = {n: i for i, n in enumerate(problem.nodes)}
    start = fresh.copy()
    for v, vn in enumerate(problem.vnodes):
        j = index.get(current.get(vn, ""), -1)
        if j >= 0 and problem.allowed[v, j]:
            start[v] = j
    return start


# -- re-placement support -----------------------------------------------------------------------------------------

@dataclass
class MigrationGain:
    """Is moving from `current` to `proposed` worth it? Costs are per second (the cost model's units: one
    fully used link for one second = `Weights.network`); the migration is a one-off price in the same units."""

    current_cost: float
    proposed_cost: float
    saving_per_s: float           # current − proposed (inf when only the proposal is feasible)
    migration_cost: float         # Weights.network × Σ state bytes × Σ 1/bandwidth on the route it travels
    payback_s: float              # migration_cost / saving_per_s (inf when nothing is saved)
    moved: dict[str, tuple[str, str]]

    def worth(self, horizon_s: float = 300.0, min_relative_gain: float = 0.05) -> bool:
        """Migrate if it pays back within `horizon_s` and saves at least `min_relative_gain` of the cost
        (hysteresis: small or slow gains do not make vnodes flap between nodes)."""
        if not self.moved or self.saving_per_s <= 0:
            return False
        if math.isinf(self.saving_per_s):
            return True
        relative = self.saving_per_s / self.current_cost if self.current_cost > 0 else math.inf
        return self.payback_s <= horizon_s and relative >= min_relative_gain


def migration_gain(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, current: Mapping[str, str],
                   proposed: Mapping[str, str], state_bytes: Mapping[str, float] | float = 0.0,
                   rates: Mapping[EdgeKey, float] | None = None, weights: Weights | None = None,
                   per_vnode_cost: float = 0.0) -> MigrationGain:
    """The predicted saving per second of `proposed` over `current` against the one-off cost of shipping
    each moved vnode's state (`state_bytes`: per vnode, or one figure for all) over the network, plus
    `per_vnode_cost` per moved vnode (e.g. the pause, in cost units)."""
    flows = estimate_flows(plan, graph, topology, rates)
    problem = build_problem(plan, graph, topology, flows, weights)
    cur = evaluate(problem, as_array(problem, current)).total
    new = evaluate(problem, as_array(problem, proposed)).total
    routes = topology.routes()
    moved = {vn: (current[vn], proposed[vn]) for vn in problem.vnodes if current[vn] != proposed[vn]}
    price = 0.0
    for vn, (a, b) in moved.items():
        size = state_bytes.get(vn, 0.0) if isinstance(state_bytes, Mapping) else float(state_bytes)
        price += problem.weights.network * size * float(routes.inv_bandwidth[routes.index[a], routes.index[b]])
        price += per_vnode_cost
    if math.isinf(cur) and math.isfinite(new):
        saving = math.inf
    elif math.isinf(new):
        saving = -math.inf
    else:
        saving = cur - new
    payback = price / saving if saving > 0 and math.isfinite(saving) else (0.0 if saving == math.inf else math.inf)
    return MigrationGain(cur, new, saving, price, payback, moved)
