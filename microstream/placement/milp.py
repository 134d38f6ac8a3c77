"""The cost model as a mixed-integer linear program, solved by HiGHS (through highspy where it is installed, else
through `scipy.optimize.milp`: the same solver).

The model is exact: at every integer point its objective equals `Problem.total` (tests check this against
brute force and the project's own cost function). Variables and how each term is linearised:

* **x[v, n]** ∈ {0, 1}: vnode v on node n (only for the nodes v may go to; a vnode with one choice — a pin,
  or fixed by the caller — is a constant). Σ_n x[v, n] = 1.
* **traffic across nodes**: an edge u → v is on the node pair (i, j) when x[u, i] · x[v, j] = 1. With both
  ends free, the product is a continuous y[e, i, j] ∈ [0, 1] tied by Σ_j y[e, i, j] = x[u, i] and
  Σ_i y[e, i, j] = x[v, j] (the Adams–Johnson linearisation: exact at integer x, and a much tighter
  relaxation than y ≥ x + x − 1). With one end fixed, the indicator is the other end's x.
  network = Σ traffic × Σ 1/bandwidth over the pair's route; a link's load = Σ traffic over the pairs
  whose route crosses it, ≤ its bandwidth × `Weights.max_link_utilisation`.
* **traffic by link crossings** (whole problems whose routes decompose, as a campus's do: LAN sites joined by a
  tree of links; `_crossings`): instead of ~N² y per edge, an edge with both ends free gets one z ≥ |X_u(S) −
  X_v(S)| per cut link (S: the nodes on one side; X_v(S) = Σ_{n ∈ S} x[v, n]) and one t per node of each LAN it
  may cross (½ Σ t = 1 iff its ends' nodes, seen from that LAN, differ). Network, latency and link rows read
  those; co-location on a node (for the load rows) is bounded by the crossings of the links at that node. Exact
  at every integer point, with columns per edge growing with the links instead of the pairs of nodes; its
  relaxation is the transport cost over each cut and LAN (no stronger than the pairs'). A LAN's single links
  get capacity rows only when a solution overloads one (then solved again).
* **latency**: D[v] ≥ D[u] + Σ_ij latency(i, j) · indicator for every data edge u → v, D ≥ 0, L ≥ D[v];
  minimising L makes it the longest path. Only vnodes downstream of a free vnode get a D; the others'
  longest paths are constants. D[v] ≥ Σ_j f[v, j] x[v, j], with f[v, j] a lower bound of the longest path to v
  when v is on node j (each in-edge's least way there, recursively from the pinned sources): valid at every
  integer point, it stops the relaxation from spreading a vnode over nodes far from its sources for free.
* **load**: U[n] = Σ_v cpu[v] · x[v, n] (≤ capacity: the core limit); U[n]² = U[n] · Σ_v cpu[v] x[v, n]
  = Σ_v cpu[v] · g[v, n] with g[v, n] = x[v, n] · U[n], linearised exactly for binary x by
  g ≥ U − M (1 − x), g ≥ (cpu[v] + fixed load) · x, g ≥ 0 (the objective pushes g down). s[n] ≥ U[n]² / C²
  is also bounded below by tangents of u² (valid, and they tighten the relaxation). Reformulation-linearisation
  (RLT) ties g to the edges: x[v, n] · U[n] ≥ x[v, n] (cpu[v] + fixed load) + Σ_w cpu[w] x[v, n] x[w, n] over v's
  free neighbours w, and x[v, n] x[w, n] is the edge's y[e, n, n], so a chain co-located in the relaxation
  pays for its load there too.
* **memory**: Σ_v mem[v] · x[v, n] ≤ memory × `Weights.max_memory`.
* **moves**: move_cost[v] · (1 − x[v, current[v]]).
* **failure domains**: for each pair of vnodes that protect each other (`Problem.apart`) and each domain d,
  Σ_{n ∈ d} x[a, n] + Σ_{n ∈ d} x[b, n] ≤ 1.

`soft=True` turns the capacity limits into penalties (`OVERLOAD_PENALTY` per unit of overload, as
`Problem.search_objective` counts it) so that a sub-problem of an overloaded placement still has a solution.

No warm start is handed to HiGHS: with HiGHS 1.16 a feasible start once produced an "optimal" objective
below the true optimum (confirmed by brute force). The solver starts from scratch; the caller compares the
result with its own incumbent. What the caller may hand over is the incumbent's *cost*, `upper`: a cutoff
(tests check it against brute force, through both interfaces), so HiGHS prunes every branch whose bound reaches it
and an infeasible answer proves the incumbent optimal. Through highspy it is HiGHS's `objective_bound` option,
its own upper limit, which it also uses to fix variables by reduced cost and which leaves its proven bound
readable when it finds nothing under the cutoff; `scipy.optimize.milp` has no such option, so there it is a row
"objective ≤ upper" (and the bound of a run that found nothing is the root LP's). The relaxation stays weak
where load and latency pull apart (fractional x balances every node's load while keeping each edge's ends
together), so the branching still does most of the work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..graph.physical import DisjointSets
from .cost import OVERLOAD_PENALTY, Problem

__all__ = ["MilpResult", "gap_text", "milp_available", "relative_gap", "solve_milp"]

_TANGENTS = 33           # tangent cuts of u² per node, at utilisations 0 .. the capacity
OPTIMAL_GAP = 1e-6       # a relative gap this small is reported as "optimal"
_ABS_GAP = 1e-6          # HiGHS's default absolute MIP gap: where it stops on a cost near 0
_CUTOFF_TOL = 1e-7       # relative slack of the cutoff row (`upper`): HiGHS's feasibility tolerance is 1e-6 absolute


@dataclass
class MilpResult:
    """The best placement HiGHS found and what it proved about it."""

    assign: np.ndarray | None     # node index per vnode; None when no solution was found
    cost: float                   # `Problem.total` of `assign` (or `search_objective` with soft=True); inf if none
    bound: float                  # proven lower bound of the optimum (-inf when unknown)
    status: str                   # "optimal", "time limit", "infeasible", "no solution"
    seconds: float
    variables: int = 0
    constraints: int = 0

    @property
    def gap(self) -> float:
        """(cost − bound) / cost: 0 = proven optimal; inf when unknown."""
        return relative_gap(self.cost, self.bound)

    @property
    def optimal(self) -> bool:
        """Proven optimal: within `OPTIMAL_GAP`, or within HiGHS's own absolute gap (1e-6) on a small cost."""
        return self.gap <= OPTIMAL_GAP or (math.isfinite(self.cost) and self.cost - self.bound <= _ABS_GAP)


def milp_available() -> bool:
    """Is scipy (with HiGHS) installed? Without it the heuristic skips its large-neighbourhood search. Imports
    highspy too where it is installed (0.1 s), so that a timed search does not pay for it."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    _highspy_module()
    return True


def milp_interface() -> str:
    """How HiGHS is called: "highspy" or "scipy" (`scipy.optimize.milp`)."""
    return "highspy" if BACKEND == "highspy" and _highspy_module() is not None else "scipy"


def relative_gap(cost: float, bound: float) -> float:
    if not (math.isfinite(cost) and math.isfinite(bound)):
        return math.inf
    diff = max(0.0, cost - bound)
    if diff <= 1e-12 * max(1.0, abs(cost)):
        return 0.0
    return diff / abs(cost) if cost != 0 else math.inf


def gap_text(gap: float | None) -> str:
    """ "optimal", "within 0.3 % of optimal" or "gap unknown"."""
    if gap is None or not math.isfinite(gap):
        return "gap unknown"
    if gap <= OPTIMAL_GAP:
        return "optimal"
    return f"within {100 * gap:.2g} % of optimal"


class _Model:
    """Columns and sparse rows, appended in numpy blocks."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.n = 0
        self.r: list[np.ndarray] = []
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.infeasible = False          # a constraint among fixed vnodes alone is violated
        self.cutoff_row = False          # the row "objective ≤ cutoff" is in (scipy)

    def cols(self, count: int, lb: float | np.ndarray = 0.0, ub: float | np.ndarray = np.inf,
             cost: float | np.ndarray = 0.0, integer: bool = False) -> np.ndarray:
        idx = np.arange(self.n, self.n + count)
        self.n += count
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=float), (count,)).copy())
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=float), (count,)).copy())
        self.c.append(np.broadcast_to(np.asarray(cost, dtype=float), (count,)).copy())
        self.integer.append(np.full(count, 1 if integer else 0, dtype=np.int8))
        return idx

    def row(self, cols, vals, lo: float = -np.inf, hi: float = np.inf) -> None:
        i = len(self.lo)
        cols = np.asarray(cols, dtype=np.int64)
        self.r.append(np.full(len(cols), i, dtype=np.int64))
        self.k.append(cols)
        self.v.append(np.broadcast_to(np.asarray(vals, dtype=float), (len(cols),)))
        self.lo.append(lo)
        self.hi.append(hi)

    def rows(self, row_of: np.ndarray, cols: np.ndarray, vals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Many rows at once: entry t goes to new row `row_of[t]` (0-based among the added rows)."""
        base = len(self.lo)
        self.r.append(base + np.asarray(row_of, dtype=np.int64))
        self.k.append(np.asarray(cols, dtype=np.int64))
        self.v.append(np.asarray(vals, dtype=float))
        self.lo.extend(np.asarray(lo, dtype=float).tolist())
        self.hi.extend(np.asarray(hi, dtype=float).tolist())

    def add_cost(self, cols: np.ndarray, vals: np.ndarray) -> None:
        c = np.concatenate(self.c) if len(self.c) > 1 else self.c[0]
        np.add.at(c, np.asarray(cols, dtype=np.int64), vals)
        self.c = [c]

    def solve(self, time_limit: float, gap: float, integral: bool = True, cutoff: float = math.inf,
              backend: str | None = None) -> _Answer:
        """HiGHS on the model: through highspy where it is installed (`_highspy`), else through
        `scipy.optimize.milp`. `cutoff`: only solutions of objective ≤ it are looked for — highspy's
        `objective_bound` option, else a row "objective ≤ cutoff"."""
        from ..core.optional import require

        require("scipy.optimize", "the exact placement solver (HiGHS)")  # missing: says which extra installs it
        if (backend or BACKEND) == "highspy" and _highspy_module() is not None:
            return self._highspy(time_limit, gap, integral, cutoff)
        if math.isfinite(cutoff) and not self.cutoff_row:
            c = np.concatenate(self.c)
            nz = np.flatnonzero(c)
            self.row(nz, c[nz], -np.inf, cutoff)
            self.cutoff_row = True
        return self._scipy(time_limit, gap, integral)

    def _matrix(self, fmt: str):
        from scipy.sparse import csc_array, csr_array

        kind = csr_array if fmt == "csr" else csc_array
        a = kind((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.k))),
                 shape=(len(self.lo), self.n))
        a.sum_duplicates()
        return a

    def _scipy(self, time_limit: float, gap: float, integral: bool) -> _Answer:
        from scipy.optimize import Bounds, LinearConstraint, milp

        c = np.concatenate(self.c)
        bounds = Bounds(np.concatenate(self.lb), np.concatenate(self.ub))
        integrality = np.concatenate(self.integer) if integral else np.zeros(self.n, dtype=np.int8)
        constraints = []
        if self.lo:
            constraints = [LinearConstraint(self._matrix("csr"), np.array(self.lo), np.array(self.hi))]
        res = milp(c, integrality=integrality, bounds=bounds, constraints=constraints,
                   options={"time_limit": max(0.01, time_limit), "mip_rel_gap": gap, "disp": False})
        bound = getattr(res, "mip_dual_bound", None)
        return _Answer(res.x, int(res.status) if res.status in (0, 1, 2) else 1,
                       float(res.fun) if res.fun is not None else math.nan,
                       float(bound) if bound is not None and np.isfinite(bound) else -math.inf)

    def _highspy(self, time_limit: float, gap: float, integral: bool, cutoff: float) -> _Answer:
        hs = _highspy_module()
        inf = hs.kHighsInf
        h = getattr(hs._core, "_Highs", hs.Highs)()     # the bare solver: highspy.Highs prints a banner on stdout
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(max(0.01, time_limit)))
        # HiGHS measures its gap without the objective's constant (presolve makes it an offset), so on this
        # model its relative gap reads smaller than ours: ask for a tenth, and no absolute gap
        h.setOptionValue("mip_rel_gap", float(gap) * 0.1)
        h.setOptionValue("mip_abs_gap", _ABS_GAP * 1e-3)
        # its default (1e-6) also prunes nodes within 1e-6 of the incumbent, leaving a proven bound that far below
        # an optimum it has found (the scipy path's HiGHS closes it): 1e-9, so "optimal" means a gap of 0
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        if math.isfinite(cutoff) and integral:
            # the incumbent's cost as HiGHS's own upper limit: it prunes by it and fixes variables by reduced
            # cost against it from the root on (a row "objective ≤ cutoff" does the pruning only)
            h.setOptionValue("objective_bound", float(cutoff))
        lp = hs.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, len(self.lo)
        clip = (lambda x: np.clip(np.asarray(x, dtype=float), -inf, inf))
        lp.col_cost_ = np.concatenate(self.c)
        lp.col_lower_, lp.col_upper_ = clip(np.concatenate(self.lb)), clip(np.concatenate(self.ub))
        lp.row_lower_, lp.row_upper_ = clip(self.lo), clip(self.hi)
        if self.lo:
            a = self._matrix("csc")
            lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
            lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = self.n, len(self.lo)
        if integral:
            kinds = (hs.HighsVarType.kContinuous, hs.HighsVarType.kInteger)
            lp.integrality_ = [kinds[t] for t in np.concatenate(self.integer).tolist()]
        h.passModel(lp)
        h.run()
        st, info = h.getModelStatus(), h.getInfo()
        status = 0 if st == hs.HighsModelStatus.kOptimal else 2 if st == hs.HighsModelStatus.kInfeasible else 1
        has = info.primal_solution_status == 2                     # kSolutionStatusFeasible
        x = np.asarray(h.getSolution().col_value, dtype=float) if has else None
        bound = float(info.mip_dual_bound) if integral else (float(info.objective_function_value)
                                                               if status == 0 else -math.inf)
        return _Answer(x, status, float(info.objective_function_value) if has else math.nan,
                       bound if math.isfinite(bound) else -math.inf)


@dataclass
class _Answer:
    """What HiGHS answered, whichever way it was called: status 0 optimal, 1 a limit, 2 infeasible."""

    x: np.ndarray | None
    status: int
    fun: float
    bound: float                # HiGHS's proven lower bound (-inf when it gave none)


BACKEND = "highspy"              # "scipy": through scipy.optimize.milp even where highspy is installed (tests)
COMPACT = True                   # False: every free-free edge through y[e, i, j] (tests compare the two)


def _highspy_module():
    try:
        import highspy
    except ImportError:
        return None
    return highspy


def solve_milp(problem: Problem, time_limit: float = 10.0, free: np.ndarray | None = None,
               assign: np.ndarray | None = None, domains: np.ndarray | None = None, soft: bool = False,
               gap: float = OPTIMAL_GAP, upper: float | None = None) -> MilpResult:
    """Solve the placement exactly (to a relative `gap`) within `time_limit` seconds.

    `upper`: the cost of a placement the caller already has (e.g. the heuristic's; `search_objective` with
    soft=True). Only cheaper placements are searched for — a cutoff row, not a warm start — and when none
    exists the result is status "optimal" with `assign` None and cost = bound = `upper`: the caller's
    placement is the optimum. The bound is then min(HiGHS's bound, `upper`).

    With `free` (vnode indices) and `assign`, only the free vnodes move (each within `domains[v]` if given,
    a [V, N] bool mask, plus its node in `assign`); the others stay as in `assign` — the sub-problems of
    large-neighbourhood search. `soft`: capacity limits become penalties (for repairing an overloaded
    placement). Returns the best placement found, its cost by the project's own cost function, and the
    proven lower bound.

    A whole problem whose routes decompose (`_crossings`: sites of LANs joined by a tree of links) prices its
    edges by crossings, a much smaller model; the single links of a LAN get capacity rows only once a
    solution overloads one (each solve is then a relaxation of the next, so its bound holds throughout)."""
    started = time.perf_counter()
    crossings = _crossings(problem) if COMPACT and free is None and not soft else None
    rows_for: set[int] = set()                  # LAN links whose capacity rows are in
    while True:
        left = time_limit - (time.perf_counter() - started)
        r = _solve(problem, left, free, assign, domains, soft, gap, upper, crossings, frozenset(rows_for))
        r.seconds = time.perf_counter() - started
        if crossings is None or r.assign is None or problem.feasible(r.assign):
            return r
        loaded = np.flatnonzero(problem.link_loads(r.assign) > problem.link_cap).tolist()
        over = {k for k in loaded if k in crossings.label_of} - rows_for     # a LAN's links only: the rest have rows
        if not over:
            return r                                    # over a limit by HiGHS's tolerance: as without crossings
        if time.perf_counter() - started >= time_limit:
            # the bound stands (a relaxation's); the placement breaks a LAN link's limit: none found
            return MilpResult(None, math.inf, r.bound, "no solution", r.seconds, r.variables, r.constraints)
        rows_for |= over


def _solve(problem: Problem, time_limit: float, free: np.ndarray | None, assign: np.ndarray | None,
           domains: np.ndarray | None, soft: bool, gap: float, upper: float | None, crossings: _Crossings | None,
           rows_for: frozenset[int]) -> MilpResult:
    """`solve_milp` once: with `crossings`, free-free edges priced by them and LAN capacity rows only for the
    links in `rows_for`."""
    started = time.perf_counter()
    p, w = problem, problem.weights
    v_count, n_count = p.n_vnodes, p.n_nodes
    dom = p.allowed.copy()
    if free is not None:
        if assign is None:
            raise ValueError("solve_milp(free=...) needs the assignment the other vnodes keep")
        keep = np.ones(v_count, dtype=bool)
        keep[np.asarray(free, dtype=np.int64)] = False
        dom[keep] = False
        dom[keep, assign[keep]] = True
        if domains is not None:
            sub = dom[~keep] & domains[~keep]
            sub[np.arange(len(sub)), assign[~keep]] = True
            dom[~keep] = sub
    if not dom.any(axis=1).all():
        return MilpResult(None, math.inf, -math.inf, "infeasible", time.perf_counter() - started)
    counts = dom.sum(axis=1)
    fixed = np.where(counts == 1, np.argmax(dom, axis=1), -1)
    m = _Model()
    const = 0.0

    # -- x ------------------------------------------------------------------------------------------------
    xcol = np.full((v_count, n_count), -1, dtype=np.int64)
    movable = np.flatnonzero(counts > 1)
    vv, nn = np.nonzero(dom[movable])
    vv = movable[vv]
    xcol[vv, nn] = m.cols(len(vv), 0.0, 1.0, integer=True)
    for v in movable.tolist():
        m.row(xcol[v, dom[v]], 1.0, 1.0, 1.0)

    # -- edge indicators: (edge, i, j, column); constant pairs separately -------------------------------------
    pe_parts: list[np.ndarray] = []   # edge, node i, node j, column: one array per edge, concatenated below
    pi_parts: list[np.ndarray] = []
    pj_parts: list[np.ndarray] = []
    pc_parts: list[np.ndarray] = []
    const_pairs = []                 # (edge, i, j)
    diag: list[tuple[int, int, int, int]] = []   # (vnode, its free neighbour, node, y column of both there)
    compact: list[int] = []          # free-free edges priced through `crossings`
    for e, (s, d) in enumerate(zip(p.src.tolist(), p.dst.tolist(), strict=True)):
        fs, fd = fixed[s], fixed[d]
        if fs >= 0 and fd >= 0:
            const_pairs.append((e, fs, fd))
        elif fs < 0 and fd < 0 and crossings is not None:
            compact.append(e)
        elif fs >= 0:
            js = np.flatnonzero(dom[d])
            pe_parts.append(np.full(len(js), e))
            pi_parts.append(np.full(len(js), fs))
            pj_parts.append(js)
            pc_parts.append(xcol[d, js])
        elif fd >= 0:
            is_ = np.flatnonzero(dom[s])
            pe_parts.append(np.full(len(is_), e))
            pi_parts.append(is_)
            pj_parts.append(np.full(len(is_), fd))
            pc_parts.append(xcol[s, is_])
        else:
            is_, js = np.flatnonzero(dom[s]), np.flatnonzero(dom[d])
            ii, jj = np.repeat(is_, len(js)), np.tile(js, len(is_))
            y = m.cols(len(ii), 0.0, 1.0)
            pe_parts.append(np.full(len(ii), e))
            pi_parts.append(ii)
            pj_parts.append(jj)
            pc_parts.append(y)
            for t in np.flatnonzero(ii == jj).tolist():
                diag.append((s, d, int(ii[t]), int(y[t])))
                diag.append((d, s, int(ii[t]), int(y[t])))
            # Σ_j y[i, j] = x[s, i];  Σ_i y[i, j] = x[d, j]
            ri = np.searchsorted(is_, ii)
            m.rows(np.concatenate([ri, np.arange(len(is_))]), np.concatenate([y, xcol[s, is_]]),
                   np.concatenate([np.ones(len(y)), -np.ones(len(is_))]), np.zeros(len(is_)), np.zeros(len(is_)))
            rj = np.searchsorted(js, jj)
            m.rows(np.concatenate([rj, np.arange(len(js))]), np.concatenate([y, xcol[d, js]]),
                   np.concatenate([np.ones(len(y)), -np.ones(len(js))]), np.zeros(len(js)), np.zeros(len(js)))
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dtype=dt))
    pe, pi = cat(pe_parts, np.int64), cat(pi_parts, np.int64)
    pj, pc = cat(pj_parts, np.int64), cat(pc_parts, np.int64)
    ce = np.array([c[0] for c in const_pairs], dtype=np.int64)
    ci = np.array([c[1] for c in const_pairs], dtype=np.int64)
    cj = np.array([c[2] for c in const_pairs], dtype=np.int64)

    # -- network ----------------------------------------------------------------------------------------------
    if len(pc):
        m.add_cost(pc, w.network * p.traffic[pe] * p.inv_bw[pi, pj])
    const += w.network * float(np.dot(p.traffic[ce], p.inv_bw[ci, cj])) if len(ce) else 0.0
    terms = _Terms()
    if compact and crossings is not None:
        terms = _compact_edges(m, p, crossings, dom, xcol, compact, rows_for)
        diag.extend(terms.diag)

    # -- links --------------------------------------------------------------------------------------------------
    if len(p.link_cap):
        _links(m, p, pe, pi, pj, pc, ce, ci, cj, soft, terms)

    # -- latency --------------------------------------------------------------------------------------------------
    const += _latency(m, p, fixed, dom, xcol, pe, pi, pj, pc, terms.latency)

    # -- load and memory -----------------------------------------------------------------------------------
    const += _load(m, p, fixed, dom, xcol, soft, diag)
    _memory(m, p, fixed, dom, xcol, soft)
    const += _apart(m, p, fixed, dom, xcol, soft)
    if free is None:
        _symmetry(m, p, fixed, dom, xcol)

    # -- moves ----------------------------------------------------------------------------------------------------
    for v in np.flatnonzero((p.current >= 0) & (p.move_cost > 0)).tolist():
        cur = int(p.current[v])
        if fixed[v] >= 0:
            const += p.move_cost[v] if fixed[v] != cur else 0.0
        else:
            const += p.move_cost[v]
            if dom[v, cur]:
                m.add_cost(np.array([xcol[v, cur]]), np.array([-p.move_cost[v]]))

    m.cols(1, 1.0, 1.0, const)       # the constant, so HiGHS's relative gap is the gap of the true cost
    if m.infeasible:
        return MilpResult(None, math.inf, math.inf, "infeasible", time.perf_counter() - started, m.n, len(m.lo))
    up = float(upper) if upper is not None else math.inf
    cutoff = math.isfinite(up)
    limit = up + _CUTOFF_TOL * max(1.0, abs(up)) if cutoff else math.inf
    # only placements cheaper than `upper` (a cost the caller has achieved): HiGHS prunes every branch whose
    # bound reaches it from the start, instead of waiting to find as good a placement itself
    # LNS sub-problems through scipy: through highspy the heuristic ended 3-15 % worse at 80 and 150 vnodes
    # (bench 2026-12-07 01:47-01:51 UTC: HiGHS's threads spend its CPU budget faster)
    res = m.solve(time_limit - (time.perf_counter() - started), gap, cutoff=limit,
                  backend="scipy" if free is not None else None)
    out = np.where(fixed >= 0, fixed, 0).astype(np.int64)
    bound = res.bound
    if res.x is not None and cutoff and not res.fun <= limit:
        # a placement above the cutoff is not what was asked for ("optimal" there: nothing is below it)
        res = _Answer(None, 2 if res.status == 0 else res.status, math.nan, bound)
    if res.x is None:
        seconds = time.perf_counter() - started
        if cutoff and res.status == 2:          # nothing cheaper than `upper` exists: it is optimal
            return MilpResult(None, up, up, "optimal", seconds, m.n, len(m.lo))
        if cutoff:
            # the bound, if HiGHS gave none (scipy passes none on without a solution): the root LP's, for the whole
            # problem only (0.1 s at 40 x 10, 3 s at 80 x 16); an LNS sub-problem has no use for it
            if not math.isfinite(bound) and free is None:
                lp = m.solve(max(5.0, time_limit - seconds), gap, integral=False, cutoff=limit, backend="scipy")
                bound = float(lp.fun) if lp.status == 0 else (up if lp.status == 2 else -math.inf)
            bound = min(bound, up)
            return MilpResult(None, math.inf, bound, "no solution", time.perf_counter() - started, m.n, len(m.lo))
        status = "infeasible" if res.status == 2 else "no solution"
        return MilpResult(None, math.inf, math.inf if res.status == 2 else bound, status, seconds, m.n, len(m.lo))
    x = res.x
    for v in movable.tolist():
        nodes = np.flatnonzero(dom[v])
        out[v] = int(nodes[np.argmax(x[xcol[v, nodes]])])
    cost = p.search_objective(out) if soft else p.total(out)
    status = "optimal" if res.status == 0 else "time limit"
    if res.status == 0 and not math.isfinite(bound):
        bound = float(res.fun)
    if cutoff:
        bound = min(bound, up)                  # a placement costing more than `upper` was never looked for
    return MilpResult(out, cost, min(bound, cost) if math.isfinite(cost) else bound, status,
                      time.perf_counter() - started, m.n, len(m.lo))


def _expand_links(p: Problem, pe: np.ndarray, pi: np.ndarray, pj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (edge, i, j) entry, its route's links: (entry index, link index) pairs."""
    pair = pi * p.n_nodes + pj
    start, stop = p.link_ptr[pair], p.link_ptr[pair + 1]
    counts = stop - start
    entry = np.repeat(np.arange(len(pair)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return entry, p.link_idx[np.repeat(start, counts) + offsets]


def _links(m: _Model, p: Problem, pe, pi, pj, pc, ce, ci, cj, soft: bool, terms: _Terms) -> None:
    """Σ traffic over the pairs whose route crosses a link ≤ its capacity (rows only for links a free vnode
    can load)."""
    fixed_load = np.zeros(len(p.link_cap))
    if len(ce):
        entry, link = _expand_links(p, ce, ci, cj)
        np.add.at(fixed_load, link, p.traffic[ce[entry]])
    entry, link = _expand_links(p, pe, pi, pj)
    extra_link, extra_col, extra_traffic = zip(*terms.link_rows, strict=True) if terms.link_rows else ((), (), ())
    link = np.concatenate([link, np.asarray(extra_link, dtype=np.int64)])
    cols = np.concatenate([pc[entry], np.asarray(extra_col, dtype=np.int64)])
    traffic = np.concatenate([p.traffic[pe[entry]], np.asarray(extra_traffic, dtype=float)])
    if not len(link):
        return
    used = np.unique(link)
    row_of = np.searchsorted(used, link)
    bw = np.maximum(p.link_bw[used], 1e-12)                    # rows in units of bandwidth
    cap = (p.link_cap[used] - fixed_load[used]) / bw
    vals = traffic / bw[row_of]
    lo = np.full(len(used), -np.inf)
    if soft:
        slack = m.cols(len(used), 0.0, np.inf, OVERLOAD_PENALTY)
        m.rows(np.concatenate([row_of, np.arange(len(used))]), np.concatenate([cols, slack]),
               np.concatenate([vals, -np.ones(len(used))]), lo, cap)
    else:
        m.rows(row_of, cols, vals, lo, cap)


def _latency(m: _Model, p: Problem, fixed: np.ndarray, dom: np.ndarray, xcol: np.ndarray, pe, pi, pj, pc,
             extra: dict[int, tuple[list[int], list[float]]]) -> float:
    """Longest-path rows; returns the constant part of the objective (the whole latency term when no free
    vnode is on a data path)."""
    w = p.weights
    lat_e = np.flatnonzero(p.on_path)
    if not len(lat_e) or w.latency == 0:
        return 0.0
    v_count = p.n_vnodes
    # vnodes downstream of a free vnode (inclusive): their longest path to them varies
    succ: list[list[int]] = [[] for _ in range(v_count)]
    for e in lat_e.tolist():
        succ[int(p.src[e])].append(int(p.dst[e]))
    cone = np.zeros(v_count, dtype=bool)
    stack = np.flatnonzero(fixed < 0).tolist()
    while stack:
        u = stack.pop()
        if cone[u]:
            continue
        cone[u] = True
        stack.extend(x for x in succ[u] if not cone[x])
    probe = np.where(fixed >= 0, fixed, np.argmax(dom, axis=1))
    dist = p.longest_to(probe)                       # exact for vnodes outside the cone
    outside = float(dist[~cone].max()) if (~cone).any() else 0.0
    if not cone.any():
        return w.latency * float(dist.max())
    dcol = np.full(v_count, -1, dtype=np.int64)
    cone_v = np.flatnonzero(cone)
    dcol[cone_v] = m.cols(len(cone_v), 0.0, np.inf)
    lcol = m.cols(1, outside, np.inf, w.latency)[0]
    # pair entries per latency edge
    on = p.on_path[pe] if len(pe) else np.zeros(0, dtype=bool)
    by_edge: dict[int, list[int]] = {}
    for t in np.flatnonzero(on).tolist():
        by_edge.setdefault(int(pe[t]), []).append(t)
    has_succ = np.zeros(v_count, dtype=bool)
    for e in lat_e.tolist():
        s, d = int(p.src[e]), int(p.dst[e])
        if not cone[d]:
            continue
        has_succ[s] = True
        cols, vals, lo = [dcol[d]], [1.0], 0.0
        if cone[s]:
            cols.append(dcol[s])
            vals.append(-1.0)
        else:
            lo += dist[s]
        ts = by_edge.get(e)
        if ts:
            ts_a = np.asarray(ts)
            cols.extend(pc[ts_a].tolist())
            vals.extend((-p.latency_ms[pi[ts_a], pj[ts_a]]).tolist())
        elif e in extra:                             # both ends free, priced by crossings
            cols.extend(extra[e][0])
            vals.extend(-v for v in extra[e][1])
        elif fixed[s] >= 0 and fixed[d] >= 0:        # both ends fixed
            lo += p.latency_ms[fixed[s], fixed[d]]
        m.row(cols, vals, lo, np.inf)
    for v in cone_v.tolist():
        if not has_succ[v]:
            m.row([lcol, dcol[v]], [1.0, -1.0], 0.0, np.inf)
    # D[v] ≥ Σ_j f[v, j] x[v, j]: the longest path to v if v is on node j is at least f[v, j], the longest over
    # v's in-edges of the least way there (`_latency_floor`). Valid at every integer point, so the optimum is
    # unchanged; the relaxation can no longer spread a vnode over nodes far from its pinned sources for free.
    floor = _latency_floor(p, fixed, dom, dist, cone)
    for v in cone_v.tolist():
        if fixed[v] >= 0:
            f = float(floor[v, fixed[v]])
            if f > 0:
                m.row([dcol[v]], [1.0], f, np.inf)
            continue
        nodes = np.flatnonzero(dom[v] & (floor[v] > 0))
        if len(nodes):
            m.row(np.concatenate([[dcol[v]], xcol[v, nodes]]), np.concatenate([[1.0], -floor[v, nodes]]), 0.0, np.inf)
    return 0.0


def _latency_floor(p: Problem, fixed: np.ndarray, dom: np.ndarray, dist: np.ndarray, cone: np.ndarray) -> np.ndarray:
    """[V, N] a lower bound of the longest path to v when v is on node j: the largest, over v's in-edges u → v,
    of the least f[u, i] + latency(i, j) over u's nodes i (exact for vnodes outside `cone`, whose placement is
    fixed). No triangle inequality needed: every path into v passes through an in-edge."""
    v_count, n_count = p.n_vnodes, p.n_nodes
    floor = np.zeros((v_count, n_count))
    lat = p.latency_ms
    into: list[list[int]] = [[] for _ in range(v_count)]
    for s, d in zip(p.lat_src.tolist(), p.lat_dst.tolist(), strict=True):
        into[d].append(s)
    for v in p.order.tolist():
        if not cone[v]:
            floor[v] = dist[v]
            continue
        for u in into[v]:
            nodes = np.flatnonzero(dom[u])
            best = (floor[u, nodes][:, None] + lat[nodes]).min(axis=0)
            np.maximum(floor[v], best, out=floor[v])
    floor[~dom] = 0.0
    return floor


def _load(m: _Model, p: Problem, fixed: np.ndarray, dom: np.ndarray, xcol: np.ndarray, soft: bool,
          diag: list[tuple[int, int, int, int]]) -> float:
    """U[n], g[v, n] = x[v, n] U[n], s[n] ≥ U[n]² / C²; returns the constant part of the load term."""
    w = p.weights
    base = np.bincount(fixed[fixed >= 0], weights=p.cpu[fixed >= 0], minlength=p.n_nodes)
    const = -w.load * p.load_floor
    for n in range(p.n_nodes):
        vs = np.flatnonzero(dom[:, n] & (fixed < 0))
        c2 = p.cores2[n]
        k = base[n]
        if not len(vs):
            const += w.load * k * k / c2
            m.infeasible |= k > p.capacity[n] + 1e-9 and not soft      # a fixed overload
            continue
        cpu = p.cpu[vs]
        top = k + float(cpu.sum())
        hard_cap = min(top, p.capacity[n]) if not soft else top
        m.infeasible |= k > p.capacity[n] + 1e-9 and not soft
        u = m.cols(1, k, max(k, hard_cap))[0]
        m.row(np.concatenate([[u], xcol[vs, n]]), np.concatenate([[1.0], -cpu]), k, k)
        if soft and top > p.capacity[n]:
            o = m.cols(1, 0.0, np.inf, OVERLOAD_PENALTY)[0]
            m.row([u, o], [1.0, -1.0], -np.inf, p.capacity[n])
        big = max(k, hard_cap)
        g = m.cols(len(vs), 0.0, big)
        # g ≥ U − M (1 − x)  ⇔  g − U − M x ≥ −M
        rows = np.repeat(np.arange(len(vs)), 3)
        cols = np.stack([g, np.full(len(vs), u), xcol[vs, n]], axis=1).ravel()
        vals = np.stack([np.ones(len(vs)), -np.ones(len(vs)), -np.full(len(vs), big)], axis=1).ravel()
        m.rows(rows, cols, vals, np.full(len(vs), -big), np.full(len(vs), np.inf))
        # g ≥ (cpu[v] + k) x + Σ cpu[w] y[v on n, w on n] over v's free neighbours w (x[v, n] U[n] with
        # U[n] ≥ cpu[v] + k + Σ those: RLT, so co-locating a chain costs load in the relaxation too)
        rows = np.repeat(np.arange(len(vs)), 2)
        cols = np.stack([g, xcol[vs, n]], axis=1).ravel()
        vals = np.stack([np.ones(len(vs)), -(cpu + k)], axis=1).ravel()
        pos = {int(v): i for i, v in enumerate(vs.tolist())}
        extra = [(pos[v], col, -p.cpu[w]) for v, w, node, col in diag if node == n and v in pos]
        if extra:
            rows = np.concatenate([rows, [e[0] for e in extra]])
            cols = np.concatenate([cols, [e[1] for e in extra]])
            vals = np.concatenate([vals, [e[2] for e in extra]])
        m.rows(rows, cols, vals, np.zeros(len(vs)), np.full(len(vs), np.inf))
        s = m.cols(1, 0.0, np.inf, w.load)[0]
        # s ≥ (k U + Σ cpu g) / C²
        m.row(np.concatenate([[s, u], g]), np.concatenate([[1.0, -k / c2], -cpu / c2]), 0.0, np.inf)
        # tangents of (U / C)²: s ≥ 2 a (U / C) − a²
        c = math.sqrt(c2)
        for a in np.linspace(0.0, big / c, _TANGENTS)[1:].tolist():
            m.row([s, u], [1.0, -2.0 * a / c], -a * a, np.inf)
    return const


def _memory(m: _Model, p: Problem, fixed: np.ndarray, dom: np.ndarray, xcol: np.ndarray, soft: bool) -> None:
    if not p.mem.any():
        return
    base = np.bincount(fixed[fixed >= 0], weights=p.mem[fixed >= 0], minlength=p.n_nodes)
    for n in np.flatnonzero(np.isfinite(p.mem_capacity)).tolist():
        vs = np.flatnonzero(dom[:, n] & (fixed < 0))
        room = p.mem_capacity[n] - base[n]
        if not len(vs):
            m.infeasible |= room < -1e-9 * p.memory[n] and not soft
            continue
        if float(p.mem[vs].sum()) <= room:
            continue                                   # cannot bind
        scale = max(p.memory[n], 1.0)
        if soft:
            o = m.cols(1, 0.0, np.inf, OVERLOAD_PENALTY)[0]
            m.row(np.concatenate([xcol[vs, n], [o]]), np.concatenate([p.mem[vs] / scale, [-1.0]]),
                  -np.inf, room / scale)
        else:
            m.row(xcol[vs, n], p.mem[vs] / scale, -np.inf, room / scale)


def interchangeable(p: Problem, dom: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of nodes (i < j) that swapping maps the problem onto itself: the same capacity, speed, memory and
    vnodes allowed; the same bandwidth and latency to every other node, with each route's links mapped onto links
    of the same bandwidth; failure domains and move costs that do not tell them apart."""
    n = p.n_nodes
    out: list[tuple[int, int]] = []
    moving = (p.current >= 0) & (p.move_cost > 0)
    homes = set(p.current[moving].tolist())
    dom_count = np.bincount(p.domain, minlength=int(p.domain.max()) + 1 if n else 0)
    for i in range(n):
        for j in range(i + 1, n):
            if (p.capacity[i] != p.capacity[j] or p.cores2[i] != p.cores2[j] or p.speed[i] != p.speed[j]
                    or p.mem_capacity[i] != p.mem_capacity[j] or p.memory[i] != p.memory[j]
                    or not (dom[:, i] == dom[:, j]).all()
                    or i in homes or j in homes):
                continue
            if p.domain[i] != p.domain[j] and (len(p.apart) and (dom_count[p.domain[i]] > 1
                                                                 or dom_count[p.domain[j]] > 1)):
                continue
            if _swap_maps_routes(p, i, j):
                out.append((i, j))
    return out


def _swap_maps_routes(p: Problem, i: int, j: int) -> bool:
    n = p.n_nodes
    sigma = np.arange(n)
    sigma[i], sigma[j] = j, i
    for mat in (p.inv_bw, p.latency_ms):
        if not np.array_equal(mat[np.ix_(sigma, sigma)], mat):
            return False
    if not len(p.link_cap):
        return True
    image: dict[int, int] = {}
    for a in range(n):
        for b in range(n):
            here, there = p.route_links(a, b), p.route_links(int(sigma[a]), int(sigma[b]))
            if len(here) != len(there):
                return False
            for x, y in zip(here.tolist(), there.tolist(), strict=True):
                if image.setdefault(x, y) != y or p.link_cap[x] != p.link_cap[y] or p.link_bw[x] != p.link_bw[y]:
                    return False
    return len(set(image.values())) == len(image)


def _symmetry(m: _Model, p: Problem, fixed: np.ndarray, dom: np.ndarray, xcol: np.ndarray) -> None:
    """For nodes that swapping leaves the problem unchanged (`interchangeable`), only the placements where, of
    two such nodes in a row, the first holds the lowest-numbered vnode of the two: x[v, j] ≤ Σ_{u < v} x[u, i]
    (any placement becomes one of those by swapping the nodes, at the same cost; empty nodes come last)."""
    pairs = interchangeable(p, dom)
    classes = DisjointSets(range(p.n_nodes))            # of interchangeable nodes
    for i, j in pairs:
        classes.union(j, i)
    find = classes.find
    linked = set(pairs)
    for i, j in sorted(linked):
        # consecutive members of a class only (swaps compose: every permutation of a class is a symmetry)
        if find(i) != find(j) or any(find(k) == find(i) for k in range(i + 1, j)) or (i, j) not in linked:
            continue
        vs = np.flatnonzero(dom[:, i] & (fixed < 0))
        for k, v in enumerate(vs.tolist()):
            m.row(np.concatenate([[xcol[v, j]], xcol[vs[:k], i]]), np.concatenate([[1.0], -np.ones(k)]), -np.inf, 0.0)


def _apart(m: _Model, p: Problem, fixed: np.ndarray, dom: np.ndarray, xcol: np.ndarray, soft: bool) -> float:
    """Pairs that protect each other: at most one of the two in each failure domain. Returns the constant part
    of the objective (soft: a penalty per pair that fixed vnodes alone put together)."""
    const = 0.0
    for a, b in p.apart.tolist():
        if fixed[a] >= 0 and fixed[b] >= 0:
            if p.domain[fixed[a]] == p.domain[fixed[b]]:
                m.infeasible |= not soft
                const += OVERLOAD_PENALTY
            continue
        for d in np.unique(p.domain[dom[a] | dom[b]]).tolist():
            cols: list[int] = []
            room, there = 1.0, 0
            for v in (a, b):
                if fixed[v] >= 0:
                    room -= float(p.domain[fixed[v]] == d)
                else:
                    here = xcol[v, np.flatnonzero(dom[v] & (p.domain == d))].tolist()
                    cols.extend(here)
                    there += bool(here)
            if not cols or (there == 1 and room >= 1.0):
                continue                                # cannot bind
            vals = [1.0] * len(cols)
            if soft:
                cols.append(int(m.cols(1, 0.0, np.inf, OVERLOAD_PENALTY)[0]))
                vals.append(-1.0)
            m.row(cols, vals, -np.inf, room)
    return const


# -- the compact network model ----------------------------------------------------------------------------------

@dataclass
class _Crossings:
    """Which links a route crosses, as functions of the two ends' nodes (`_crossings`).

    A *cut* link splits the nodes in two (`side`): a route crosses it iff its ends are on different sides (every
    link of a tree of sites: an uplink, a one-node site's LAN link). The other links come in *groups* of equal
    bandwidth and latency (a site's LAN): with `label` mapping each node to a node of the group (the node
    itself inside it, the node through which its routes enter the group outside it), a route crosses exactly one
    of the group's links iff its ends' labels differ, and none otherwise."""

    cut: list[tuple[int, np.ndarray]]                        # (link, side [N] bool)
    groups: list[tuple[np.ndarray, np.ndarray, float, float]]  # (links, label [N], 1 / bandwidth, latency)
    ends: list[tuple[int, int]]                              # each link's two nodes
    label_of: dict[int, np.ndarray]                          # a group's link -> its group's label


def _crossings(p: Problem) -> _Crossings | None:
    """The decomposition of every route into cut links and groups, or None when the routes do not decompose
    so (links between sites that close a cycle, LAN links of unequal speed, a problem without links)."""
    n, count = p.n_nodes, len(p.link_bw)
    if not count or len(p.links) != count or not (p.link_bw > 0).all():
        return None
    index = {name: i for i, name in enumerate(p.nodes)}
    ends = []
    for lk in p.links:
        if lk.a not in index or lk.b not in index:
            return None
        ends.append((index[lk.a], index[lk.b]))
    pairs = np.repeat(np.arange(n * n), np.diff(p.link_ptr))      # the (i, j) of each route entry
    latency = np.array([lk.latency_ms for lk in p.links], dtype=float)
    off = ~np.eye(n, dtype=bool)
    inv = np.bincount(pairs, weights=1.0 / p.link_bw[p.link_idx], minlength=n * n).reshape(n, n)
    lat = np.bincount(pairs, weights=latency[p.link_idx], minlength=n * n).reshape(n, n)
    if not (np.isfinite(p.inv_bw[off]).all() and np.allclose(inv, p.inv_bw, rtol=1e-9, atol=0.0)
            and np.allclose(lat, p.latency_ms, rtol=1e-9, atol=1e-12)):
        return None                                   # matrices not made from these links' routes
    by_link = np.argsort(p.link_idx, kind="stable")
    start = np.searchsorted(p.link_idx[by_link], np.arange(count + 1))

    def crossed(links: list[int]) -> np.ndarray:
        """[N, N] how many of `links` the route from i to j crosses (one link at a time: no [links, N, N])."""
        entries = np.concatenate([by_link[start[k]:start[k + 1]] for k in links])
        return np.bincount(pairs[entries], minlength=n * n).reshape(n, n)

    cut: list[tuple[int, np.ndarray]] = []
    rest: list[int] = []
    for link in range(count):
        if start[link] == start[link + 1]:
            continue                                  # on no route
        pattern = crossed([link]) > 0
        side = ~pattern[ends[link][0]]
        if np.array_equal(pattern, side[:, None] != side[None, :]):
            cut.append((link, side))
        else:
            rest.append(link)
    joined = DisjointSets(range(n))                     # nodes joined by the links that are no cut
    for link in rest:
        joined.union(*ends[link])
    members: dict[int, list[int]] = {}
    for link in rest:
        members.setdefault(joined.find(ends[link][0]), []).append(link)
    groups = []
    for links in members.values():
        ls = np.array(links, dtype=np.int64)
        if np.ptp(p.link_bw[ls]) > 0 or np.ptp(latency[ls]) > 0:
            return None
        inside = np.unique(np.array([ends[k] for k in links]).ravel())
        count_in = crossed(links)
        label = np.arange(n)
        for j in np.setdiff1d(np.arange(n), inside).tolist():
            entry = inside[count_in[j, inside] == 0]
            if not len(entry):
                return None
            label[j] = entry[0]
        if not np.array_equal(count_in, (label[:, None] != label[None, :]).astype(count_in.dtype)):
            return None
        groups.append((ls, label, 1.0 / float(p.link_bw[ls[0]]), float(latency[ls[0]])))
    return _Crossings(cut, groups, ends, {int(k): g[1] for g in groups for k in g[0].tolist()})


@dataclass
class _Terms:
    """What the compact edges add to the other parts of the model."""

    link_rows: list[tuple[int, int, float]] = field(default_factory=list)   # capacity rows: link, column, traffic
    latency: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)   # edge -> columns, ms
    diag: list[tuple[int, int, int, int]] = field(default_factory=list)   # as solve_milp's `diag`


def _compact_edges(m: _Model, p: Problem, cr: _Crossings, dom: np.ndarray, xcol: np.ndarray,
                   edges: list[int], rows_for: frozenset[int]) -> _Terms:
    """Edges with both ends free, priced by which side of each cut link their ends are on and whether their
    labels differ in each group (`_Crossings`), instead of a y[e, i, j] per pair of nodes:

    * cut link with side S: z ≥ |X_u(S) − X_v(S)|, X_v(S) = Σ_{n ∈ S} x[v, n] — the link's crossing indicator;
    * group: t_k ≥ |X_u(label⁻¹ k) − X_v(label⁻¹ k)| for each label k; ½ Σ_k t_k is 1 iff the labels differ;
    * co-location on node n (for the load rows): c ≥ x[u, n] − Σ (the z and t of the links at n), likewise for
      v: when one end is on n and the other is not, the route leaves n through one of those links.

    Exact at every integer point (each is 0 or 1 there, and the objective pushes it down to that); the
    relaxation is the transport cost between the two ends' distributions over each cut and group. Link capacity
    rows get the cut links' z, and the links of a group in `rows_for` a crossing indicator
    c ≥ X_u(label⁻¹ a) + X_v(label⁻¹ b) − 1 (and with u, v swapped) for their nodes a, b."""
    w = p.weights
    out = _Terms()
    for e in edges:
        s, d = int(p.src[e]), int(p.dst[e])
        ds, dd = dom[s], dom[d]
        both = np.flatnonzero(ds & dd)
        at: dict[int, list[int]] = {int(n): [] for n in both.tolist()}
        lat_cols: list[int] = []
        lat_vals: list[float] = []
        price: list[tuple[int, float]] = []
        traffic = float(p.traffic[e])
        for link, side in cr.cut:
            if not ((ds | dd) & side).any() or not ((ds | dd) & ~side).any():
                continue                                  # never crossed
            z = int(m.cols(1, 0.0, 1.0)[0])
            _abs_rows(m, z, xcol[s, ds & side], xcol[d, dd & side])
            price.append((z, traffic * float(1.0 / p.link_bw[link])))
            out.link_rows.append((link, z, traffic))
            lat_cols.append(z)
            lat_vals.append(float(p.links[link].latency_ms))
            for n in cr.ends[link]:
                if n in at:
                    at[n].append(z)
        for _links_of, label, inv, lat in cr.groups:
            classes = np.unique(label[ds | dd])
            if len(classes) <= 1:
                continue                                  # never crossed
            ts = m.cols(len(classes), 0.0, 1.0)
            for k, t in zip(classes.tolist(), ts.tolist(), strict=True):
                _abs_rows(m, t, xcol[s, ds & (label == k)], xcol[d, dd & (label == k)])
                price.append((t, traffic * inv / 2))
                lat_cols.append(t)
                lat_vals.append(lat / 2)
                if k in at:
                    at[k].append(t)
        for link in sorted(rows_for):
            label, (a, b) = cr.label_of[link], cr.ends[link]
            ends = [(xcol[s, ds & (label == a)], xcol[d, dd & (label == b)]),
                    (xcol[s, ds & (label == b)], xcol[d, dd & (label == a)])]
            if not any(len(one) and len(other) for one, other in ends):
                continue                                  # never crossed
            c = int(m.cols(1, 0.0, 1.0)[0])
            for one, other in ends:
                if len(one) and len(other):
                    m.row(np.concatenate([[c], one, other]), np.concatenate([[1.0], -np.ones(len(one) + len(other))]),
                          -1.0, np.inf)
            out.link_rows.append((link, c, traffic))
        if price:
            m.add_cost(np.array([c for c, _ in price]), w.network * np.array([v for _, v in price]))
        out.latency[e] = (lat_cols, lat_vals)
        for n, seps in at.items():
            c = int(m.cols(1, 0.0, 1.0)[0])
            for v in (s, d):
                m.row([c, int(xcol[v, n]), *seps], [1.0, -1.0, *([1.0] * len(seps))], 0.0, np.inf)
            out.diag.append((s, d, n, c))
            out.diag.append((d, s, n, c))
    return out


def _abs_rows(m: _Model, z: int, a: np.ndarray, b: np.ndarray) -> None:
    """z ≥ |Σ a − Σ b| (columns)."""
    cols = np.concatenate([[z], a, b])
    for sign in (1.0, -1.0):
        m.row(cols, np.concatenate([[1.0], -sign * np.ones(len(a)), sign * np.ones(len(b))]), 0.0, np.inf)
