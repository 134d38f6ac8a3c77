"""The MILP against brute force, priced by the project's own cost function (`Problem.total`): its optimum must
be the true optimum, with every term of the cost model switched on (bandwidth, memory and speed limits, re-placement
move costs) and on the large-neighbourhood sub-problems."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from microstream.placement import milp
from microstream.placement.cost import Weights
from microstream.placement.milp import gap_text, relative_gap, solve_milp
from microstream.placement.solvers import certify, improve
from microstream.placement.synthetic import random_problem


def brute_force(problem, free=None, assign=None, domains=None) -> tuple[float, np.ndarray | None]:
    """The cheapest feasible assignment by enumeration (only `free` vnodes move, within `domains`)."""
    choices = []
    for v in range(problem.n_vnodes):
        if free is not None and v not in set(free.tolist()):
            choices.append([int(assign[v])])
            continue
        ok = problem.allowed[v] & (domains[v] if domains is not None else True)
        if assign is not None:
            ok = ok.copy()
            ok[assign[v]] = problem.allowed[v, assign[v]]
        choices.append(np.flatnonzero(ok).tolist())
    best, best_assign = math.inf, None
    for combo in itertools.product(*choices):
        a = np.array(combo, dtype=np.int64)
        c = problem.total(a)
        if c < best:
            best, best_assign = c, a
    return best, best_assign


def against_brute_force(problems, check) -> tuple[int, int]:
    """The MILP on each (seed, problem): infeasible where enumeration finds nothing feasible, else optimal at the
    enumerated cost, then `check(problem, result, truth)`. Returns (instances checked, instances infeasible)."""
    checked = infeasible = 0
    for seed, problem in problems:
        truth, _ = brute_force(problem)
        r = solve_milp(problem, time_limit=30.0)
        if math.isinf(truth):
            assert r.status == "infeasible", f"seed {seed}: brute force finds nothing feasible, the MILP {r.status}"
            infeasible += 1
            continue
        assert r.status == "optimal", f"seed {seed}: {r.status}"
        assert problem.total(r.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12), f"seed {seed}"
        check(problem, r, truth)
        checked += 1
    return checked, infeasible


def tight(problem, rng):
    """The same instance with limits that bind: slower links, less memory, mixed node speeds, and moves that
    cost something."""
    problem.link_cap *= 0.1
    problem.mem = rng.uniform(100e6, 400e6, problem.n_vnodes)
    problem.memory = np.full(problem.n_nodes, 1.0e9)
    problem.mem_capacity = problem.memory * problem.weights.max_memory
    problem.current = np.array([int(rng.choice(np.flatnonzero(problem.allowed[v]))) for v in range(problem.n_vnodes)])
    problem.move_cost = rng.uniform(0.0, 0.05, problem.n_vnodes)
    return problem


def small(seed: int, limits: bool):
    rng = np.random.default_rng(seed)
    v, n = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    problem = random_problem(rng, v, n)
    problem.speed = rng.choice([0.5, 1.0, 2.0], problem.n_nodes)
    problem.__post_init__()
    return tight(problem, rng) if limits else problem


BACKENDS = ["highspy", "scipy"] if milp._highspy_module() is not None else ["scipy"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """HiGHS through highspy (its `objective_bound` as the cutoff) and through scipy (a cutoff row): both exact."""
    monkeypatch.setattr(milp, "BACKEND", request.param)
    return request.param


@pytest.fixture(params=["crossings", "pairs"])
def model(request, monkeypatch):
    """Whole problems priced by link crossings where the routes decompose (the default), or by a y[e, i, j] per
    pair of nodes (what sub-problems and other topologies get)."""
    monkeypatch.setattr(milp, "COMPACT", request.param == "crossings")
    return request.param


@pytest.mark.parametrize("limits", [False, True])
def test_milp_optimum_equals_brute_force(limits, backend, model):
    def proven(problem, r, truth):
        assert r.bound <= truth + 1e-9 * max(1.0, truth)
        assert r.optimal
        if backend == "highspy":        # its feasibility tolerance set to 1e-9: the bound closes on the optimum
            assert gap_text(r.gap) == "optimal"
        else:                           # scipy cannot set it: HiGHS stops within its default 1e-6
            assert r.cost - r.bound <= 1e-6

    problems = [(seed, small(seed, limits)) for seed in range(40)]
    checked, infeasible = against_brute_force(problems, proven)
    assert checked >= 20
    assert all(milp._crossings(p) is not None for _, p in problems)     # so "crossings" does price by them
    if limits:
        assert infeasible >= 1          # the tight limits do bind somewhere


def test_milp_sub_problems_equal_brute_force(backend):
    """Large-neighbourhood search's sub-problems: only `free` vnodes move, each within `domains`."""
    for seed in range(25):
        rng = np.random.default_rng(500 + seed)
        problem = tight(random_problem(rng, 9, 5), rng) if seed % 2 else random_problem(rng, 9, 5)
        start = improve(problem, time_limit=0.2).assign
        free = np.sort(rng.choice(problem.n_vnodes, size=4, replace=False))
        domains = rng.random((problem.n_vnodes, problem.n_nodes)) < 0.6
        truth, _ = brute_force(problem, free, start, domains)
        r = solve_milp(problem, time_limit=30.0, free=free, assign=start, domains=domains)
        if math.isinf(truth):
            assert r.assign is None
            continue
        assert problem.total(r.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12), f"seed {seed}"
        fixed = np.setdiff1d(np.arange(problem.n_vnodes), free)
        assert (r.assign[fixed] == start[fixed]).all()


@pytest.mark.parametrize("limits", [False, True])
def test_cutoff_finds_the_optimum_or_proves_the_incumbent_optimal(limits, backend):
    """`upper` (the cost of a placement the caller has) is a cutoff, not a warm start: against brute force, a
    cutoff at the optimum proves it, one above it still finds it, and one taken from a random feasible
    placement never yields a bound above the truth."""
    checked = 0
    for seed in range(40):
        problem = small(seed, limits)
        truth, best = brute_force(problem)
        if math.isinf(truth):
            continue
        at = solve_milp(problem, time_limit=30.0, upper=truth)
        assert at.status == "optimal", f"seed {seed}: {at.status}"
        assert at.cost == pytest.approx(truth, rel=1e-6, abs=1e-12) and at.bound <= truth + 1e-9 * max(1.0, truth)
        if at.assign is not None:
            assert problem.total(at.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12)
        above = solve_milp(problem, time_limit=30.0, upper=truth * 1.5 + 0.01)
        assert above.assign is not None, f"seed {seed}"
        assert problem.total(above.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12), f"seed {seed}"
        assert above.bound <= truth + 1e-9 * max(1.0, truth)
        rng = np.random.default_rng(seed)
        for _ in range(20):             # a feasible placement, not the optimum, as the caller's incumbent
            a = np.array([int(rng.choice(np.flatnonzero(problem.allowed[v]))) for v in range(problem.n_vnodes)])
            if problem.feasible(a):
                found = certify(problem, a, time_limit=30.0)
                assert found.status == "optimal" and found.bound <= truth + 1e-9 * max(1.0, truth)
                assert problem.total(found.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12), f"seed {seed}"
                break
        checked += 1
    assert checked >= 20


def test_soft_limits_price_overload_like_the_search_objective(backend):
    rng = np.random.default_rng(3)
    problem = tight(random_problem(rng, 6, 3), rng)
    problem.link_cap *= 0.01
    r = solve_milp(problem, time_limit=30.0, soft=True)
    assert r.assign is not None
    best = min(problem.search_objective(np.array(a)) for a in itertools.product(
        *[np.flatnonzero(problem.allowed[v]).tolist() for v in range(problem.n_vnodes)]))
    assert r.cost == pytest.approx(best, rel=1e-6)


def test_certify_reports_the_proven_gap():
    problem = random_problem(np.random.default_rng(11), 8, 4)
    found = certify(problem, time_limit=30.0)
    assert found.status == "optimal" and gap_text(found.gap(problem)) == "optimal"   # HiGHS's gap ≤ 1e-6
    truth, _ = brute_force(problem)
    assert problem.total(found.assign) == pytest.approx(truth, rel=1e-6)


def test_gap_text():
    assert gap_text(0.0) == "optimal"
    assert gap_text(0.003) == "within 0.3 % of optimal"
    assert gap_text(None) == gap_text(math.inf) == "gap unknown"
    assert relative_gap(1.0, 0.9) == pytest.approx(0.1)
    assert relative_gap(1.0, -math.inf) == math.inf


def test_heuristic_solves_small_problems_whole_and_proves_it():
    problem = random_problem(np.random.default_rng(4), 6, 3, weights=Weights())
    found = improve(problem, time_limit=5.0)
    assert found.status == "optimal"
    assert problem.total(found.assign) == pytest.approx(brute_force(problem)[0], rel=1e-6)


def test_heuristic_is_feasible_whenever_a_feasible_placement_exists():
    for seed in range(30):
        problem = small(seed, limits=True)
        truth, _ = brute_force(problem)
        found = improve(problem, time_limit=0.5).assign
        if math.isfinite(truth):
            assert problem.feasible(found), f"seed {seed}: {problem.overload(found)}"
            assert problem.total(found) >= truth - 1e-9


def test_latency_floor_is_below_every_placements_longest_path_and_binds():
    """The MILP's rows D[v] ≥ Σ_j f[v, j] x[v, j] are valid: for every assignment of small instances, the longest
    path into each vnode is at least f[v, its node]; and on some it is exact (the rows do cut something)."""
    tight_somewhere = 0
    for seed in range(15):
        problem = small(seed, limits=False)
        dom = problem.allowed
        fixed = np.where(dom.sum(axis=1) == 1, np.argmax(dom, axis=1), -1)
        cone = fixed < 0                 # every vnode's floor by the recursion (outside-cone vnodes are exact)
        floor = milp._latency_floor(problem, fixed, dom, np.zeros(problem.n_vnodes), np.ones_like(cone))
        for combo in itertools.product(*[np.flatnonzero(dom[v]).tolist() for v in range(problem.n_vnodes)]):
            a = np.array(combo, dtype=np.int64)
            dist = problem.longest_to(a)
            below = floor[np.arange(problem.n_vnodes), a]
            assert (dist >= below - 1e-9).all(), f"seed {seed}"
            tight_somewhere += int(((below > 0) & np.isclose(dist, below)).any())
    assert tight_somewhere > 0


def symmetric(seed: int):
    """A small instance whose nodes all have 2 cores and every backend, so that nodes of one site other than its
    gateway are interchangeable."""
    rng = np.random.default_rng(3000 + seed)
    problem = random_problem(rng, int(rng.integers(4, 7)), int(rng.integers(5, 7)), pin_fraction=0.5)
    problem.cores = np.full(problem.n_nodes, 2.0)
    problem.cpu = problem.cpu * (0.5 * problem.cores.sum() / problem.cpu.sum())   # half the cores, as before
    problem.allowed[problem.pinned < 0] = True
    problem.__post_init__()
    return problem


def test_symmetry_rows_keep_the_optimum_against_brute_force(backend):
    """Interchangeable nodes: the MILP keeps only placements where the first of two holds the lower-numbered
    vnode; brute force over every placement finds no cheaper one, with and without a cutoff."""
    problems = [(seed, symmetric(seed)) for seed in range(60)]
    with_pairs = [(seed, p) for seed, p in problems if milp.interchangeable(p, p.allowed)]
    assert len(with_pairs) >= 16
    with_pairs = with_pairs[:16]     # of 25: half the time, and still >= 8 feasible ones (checked below)

    def cutoff_too(problem, r, truth):
        at = solve_milp(problem, time_limit=30.0, upper=truth)
        assert at.status == "optimal" and at.bound <= truth + 1e-9 * max(1.0, truth)
        above = solve_milp(problem, time_limit=30.0, upper=truth * 1.5 + 0.01)
        assert problem.total(above.assign) == pytest.approx(truth, rel=1e-6, abs=1e-12)

    checked, _ = against_brute_force(with_pairs, cutoff_too)
    assert checked >= 8


def test_interchangeable_nodes_are_told_apart_by_what_differs():
    problem = symmetric(next(s for s in range(40) if milp.interchangeable(symmetric(s), symmetric(s).allowed)))
    i, j = milp.interchangeable(problem, problem.allowed)[0]
    for change in ("cores", "allowed", "link", "current"):
        p = problem.__class__(
            problem.vnodes, problem.nodes, problem.cpu, problem.cores.copy(), problem.allowed.copy(), problem.pinned,
            problem.src, problem.dst, problem.traffic, problem.on_path, problem.inv_bw.copy(),
            problem.latency_ms.copy(), problem.weights, routes=problem.routes, links=problem.links)
        if change == "cores":
            p.cores[j] = 4.0
        elif change == "allowed":
            p.allowed[0, j] = not p.allowed[0, i]
        elif change == "link":
            k = next(k for k in range(p.n_nodes) if k not in (i, j))
            p.inv_bw[j, k] = p.inv_bw[k, j] = p.inv_bw[j, k] * 2 + 1e-9
        else:
            p.current = np.full(p.n_vnodes, -1)
            p.current[0], p.move_cost = j, np.full(p.n_vnodes, 0.01)
        p.__post_init__()
        assert (i, j) not in milp.interchangeable(p, p.allowed), change


def lan_limited(seed: int):
    """A small instance with a site of several nodes whose LAN links each carry less than any edge's traffic:
    a placement that puts an edge across one breaks its limit."""
    rng = np.random.default_rng(900 + seed)
    problem = random_problem(rng, 7, 5)
    crossings = milp._crossings(problem)
    if crossings is None or not crossings.groups:
        return None
    problem.link_cap[sorted(crossings.label_of)] = problem.traffic.min() * 0.5
    return problem


def test_lan_link_limits_join_the_model_when_a_solution_breaks_one(monkeypatch):
    """A LAN's single links get capacity rows only once a solution overloads one; the next solve has them. Against
    brute force, on instances where that happens (through the default interface: the loop is the same for both)."""
    solves: list[int] = []
    real = milp._solve

    def counted(*args):
        solves.append(len(args[-1]))
        return real(*args)

    monkeypatch.setattr(milp, "_solve", counted)
    problems = [(seed, p) for seed in range(30) if (p := lan_limited(seed)) is not None]
    again = 0
    for seed, problem in problems:
        solves.clear()
        against_brute_force([(seed, problem)], lambda *_: None)
        again += len(solves) > 1
        assert solves[0] == 0 and solves == sorted(solves)      # rows only added, first none
    assert again >= 2


def test_pricing_by_crossings_equals_pricing_by_pairs_on_larger_instances(monkeypatch):
    """Beyond brute force's reach (16 vnodes, 6 nodes): both models prove the same optimum, the crossings model
    with fewer variables."""
    for seed in range(3):
        problem = random_problem(np.random.default_rng(40 + seed), 16, 6)
        assert milp._crossings(problem) is not None
        found = {}
        for compact in (True, False):
            monkeypatch.setattr(milp, "COMPACT", compact)
            found[compact] = solve_milp(problem, time_limit=120.0)
            assert found[compact].optimal, f"seed {seed}"
        assert found[True].cost == pytest.approx(found[False].cost, rel=1e-6), f"seed {seed}"
        assert found[True].variables < found[False].variables


def test_routes_that_do_not_decompose_are_priced_by_pairs():
    """Three nodes in a triangle of links of different speeds: no link is a cut and they are not one LAN, so the
    MILP prices by pairs; with equal links they are one LAN, priced by crossings. Both equal brute force."""
    from microstream.placement.cost import Problem
    from microstream.placement.topology import Link, compute_routes

    names = ["a", "b", "c"]
    links = [Link("a", "b", 1.0, 1e6), Link("b", "c", 1.0, 2e6), Link("a", "c", 1.0, 4e6)]
    routes = compute_routes(names, links)
    problem = Problem(["s", "m", "t"], names, np.array([0.5, 0.8, 0.5]), np.array([1.0, 1.0, 2.0]),
                      np.array([[True, False, False], [True, True, True], [False, False, True]]),
                      np.array([0, -1, 2]), np.array([0, 1]), np.array([1, 2]), np.array([3e5, 2e5]),
                      np.ones(2, dtype=bool), routes.inv_bandwidth, routes.latency_ms, routes=routes, links=links)
    assert milp._crossings(problem) is None
    links = [Link("a", "b", 1.0, 1e6), Link("b", "c", 1.0, 1e6), Link("a", "c", 1.0, 1e6)]   # one LAN: it does
    lan = compute_routes(names, links)
    one_lan = Problem(problem.vnodes, names, problem.cpu, problem.cores, problem.allowed, problem.pinned,
                      problem.src, problem.dst, problem.traffic, problem.on_path, lan.inv_bandwidth, lan.latency_ms,
                      routes=lan, links=links)
    assert milp._crossings(one_lan) is not None
    for p in (problem, one_lan):
        truth, _ = brute_force(p)
        r = solve_milp(p, time_limit=30.0)
        assert r.status == "optimal" and p.total(r.assign) == pytest.approx(truth, rel=1e-9)
