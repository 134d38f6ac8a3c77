"""The heuristic's search phases (annealing, large-neighbourhood search) on instances too large for it to solve
whole by MILP, and the consistency of what every solver reports about its gap: the cost of the placement
returned (an upper bound of the optimum) is never below the proven lower bound."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from microstream.placement import place
from microstream.placement.anneal import anneal
from microstream.placement.milp import relative_gap, solve_milp
from microstream.placement.solvers import _anneal, _halves, _movable, certify, improve, seed
from microstream.placement.synthetic import random_problem

from .helpers import CAMPUS, plan_of, racks, room_pipeline
from .test_failure_domains import _fields
from .test_milp import brute_force, small, tight


def mids(count: int, limits: bool):
    """`count` instances of 16-18 vnodes on 7-8 nodes whose movable vnodes × nodes exceed what the heuristic
    hands whole to the MILP (so it anneals and runs the LNS)."""
    found, s = 0, 0
    while found < count:
        rng = np.random.default_rng(1000 + s)
        s += 1
        problem = random_problem(rng, int(rng.integers(16, 19)), int(rng.integers(7, 9)), pin_fraction=0.3)
        if len(_movable(problem)) * problem.n_nodes <= 100:
            continue
        found += 1
        yield s, (tight(problem, rng) if limits else problem)


def test_heuristic_is_feasible_whenever_the_milp_finds_a_feasible_placement():
    """The MILP equals brute force on small instances (test_milp); here it is the oracle on instances where the
    heuristic anneals and runs the LNS instead of solving the problem whole."""
    checked = 0
    for s, problem in mids(8, limits=True):
        r = solve_milp(problem, time_limit=20.0)
        found = improve(problem, time_limit=0.3).assign
        assert problem.allowed[np.arange(problem.n_vnodes), found].all(), f"seed {s}: a pin or backend broken"
        if r.assign is not None and problem.feasible(r.assign):
            assert problem.feasible(found), f"seed {s}: overload {problem.overload(found)}"
            checked += 1
        if r.status == "optimal":
            assert problem.total(found) >= r.cost - 1e-9 * max(1.0, r.cost)
    assert checked >= 2                 # the tight limits leave some instances feasible


@pytest.mark.parametrize("limits", [False, True])
def test_annealing_returns_its_best_and_never_worse_than_its_start(limits):
    """The annealer prices its trials incrementally; the placement it returns, priced from scratch, is no worse
    than where it started (also from an overloaded seed), and every vnode stays where it may go."""
    for s, problem in mids(6, limits):
        start = seed(problem)
        before = problem.search_objective(start)
        out = _anneal(problem, start, time.perf_counter() + 0.2, np.random.default_rng(s))
        assert problem.allowed[np.arange(problem.n_vnodes), out].all()
        assert problem.search_objective(out) <= before + 1e-9 * max(1.0, before)


@pytest.mark.parametrize("limits", [False, True])
def test_compiled_annealer_tracks_the_objective_and_repeats_its_walk(limits):
    """The compiled annealer keeps network, load, memory, link and core overload, move costs and the longest
    path incrementally: the best placement it reports, priced from scratch, has the objective it tracked; and
    a walk of a fixed number of trials is the same walk again for the same seed."""
    for s, problem in mids(6, limits):
        start = seed(problem)
        movable = _movable(problem)
        best, value = anneal(problem, start, movable, math.inf, s, 30_000, time.perf_counter)
        assert problem.allowed[np.arange(problem.n_vnodes), best].all()
        # memory sums of ~1e9 bytes drift by ulps, which the overload penalty (1e6 per unit) magnifies
        assert value == pytest.approx(problem.search_objective(best), rel=1e-6, abs=1e-6)
        assert value <= problem.search_objective(start) + 1e-9 * max(1.0, value)
        again, _ = anneal(problem, start, movable, math.inf, s, 30_000, time.perf_counter)
        assert (again == best).all()


def _consistent(cost: float, bound: float, gap: float | None) -> None:
    if math.isfinite(bound):
        assert bound <= cost + 1e-9 * max(1.0, abs(cost)), "the lower bound exceeds the placement's cost"
    if gap is not None:
        assert 0.0 <= gap <= 1.0 + 1e-12
        assert gap == pytest.approx(relative_gap(cost, bound), abs=1e-12)


def test_reported_gap_is_consistent_with_brute_force():
    """upper bound (the cost returned) ≥ the true optimum ≥ the proven lower bound, for the heuristic and the
    MILP alike."""
    for s in range(12):
        problem = small(s, limits=bool(s % 2))
        truth, _ = brute_force(problem)
        if not math.isfinite(truth):
            continue
        for found in (improve(problem, time_limit=0.5), certify(problem, time_limit=10.0)):
            cost = problem.total(found.assign)
            assert cost >= truth - 1e-9 * max(1.0, truth)
            if math.isfinite(found.bound):
                assert found.bound <= truth + 1e-9 * max(1.0, truth), f"seed {s}: the bound is above the optimum"
            _consistent(cost, found.bound, found.gap(problem))


def test_reported_gap_is_consistent_beyond_what_the_milp_proves():
    for _, problem in mids(3, limits=False):
        found = certify(problem, improve(problem, time_limit=0.3).assign, time_limit=1.0)
        _consistent(problem.total(found.assign), found.bound, found.gap(problem))


def test_place_reports_cost_bound_and_gap_consistently():
    from microstream.placement import Topology

    plan, graph = plan_of(room_pipeline(par=3))
    placement = place(plan, graph, Topology.load(CAMPUS), solver="exact", time_limit=10.0)
    assert placement.bound is not None and placement.gap is not None
    _consistent(placement.cost.total, placement.bound, placement.gap)
    assert placement.quality == "optimal" or placement.quality.startswith("within ")


def test_a_campus_of_1000_vnodes_with_tight_links_is_placed_within_them():
    """1,000 vnodes × 100 nodes with bandwidth a limit, on uplinks three times the benchmark's (whose own
    instances have no feasible placement: test_bounds): seeding alone overloads links by almost three
    bandwidths; the search (a few CPU seconds, far from its limit) ends within every link and core."""
    from microstream.placement.bounds import infeasibility

    problem = random_problem(np.random.default_rng(2), 1000, 100)
    problem.link_cap = problem.link_cap * 3.0
    assert problem.overload(seed(problem)) > 2.0            # the limits bind
    found = improve(problem, time_limit=3.0, clock=time.process_time)
    assert problem.feasible(found.assign), problem.overload(found.assign)
    assert infeasibility(problem) == []


@pytest.mark.slow
def test_the_heuristic_repeats_its_placement_for_a_seed_and_a_work_budget():
    """The search's work (annealing trials, walks, LNS sub-problems) is planned from `work`, not read off the
    clock: given the time to do it, the same seed gives the same placement, whatever else the machine is doing
    — through the walks (18 vnodes), and through successive halving (80 and 150 vnodes)."""
    _, walks = next(mids(1, limits=False))
    cases = [walks, random_problem(np.random.default_rng(0), 80, 16), random_problem(np.random.default_rng(1), 150, 30)]
    assert not _halves(walks, _movable(walks)) and all(_halves(p, _movable(p)) for p in cases[1:])
    for problem in cases:
        runs = [improve(problem, time_limit=120.0, work=0.1, rng_seed=3, clock=time.process_time).assign
                for _ in range(2)]
        assert (runs[0] == runs[1]).all()
        assert problem.search_objective(runs[0]) <= problem.search_objective(seed(problem)) + 1e-9


@pytest.mark.slow
def test_successive_halving_keeps_pairs_apart_and_works_its_way_out_of_overload():
    """At 80 vnodes (annealing by successive halving, then LNS): pairs that protect each other end in different
    racks although they would rather share a node; and with links at half the bandwidth and memory that binds,
    where seeding overloads links, the search ends within every limit (the MILP, given 30 s, also finds
    feasible placements of these two instances)."""
    problem = racks(random_problem(np.random.default_rng(4), 80, 16), pairs=10)
    assert _halves(problem, _movable(problem))
    free = problem.__class__(**_fields(problem, apart=None))
    assert problem.together(improve(free, time_limit=0.5).assign) > 0    # unconstrained, some pairs share a rack
    found = improve(problem, time_limit=1.0).assign
    assert problem.feasible(found) and problem.together(found) == 0
    for s in (50, 51):
        rng = np.random.default_rng(s)
        limited = random_problem(rng, 80, 16)
        limited.link_cap = limited.link_cap * 0.5
        limited.mem = rng.uniform(50e6, 150e6, limited.n_vnodes)
        limited.memory = np.full(limited.n_nodes, 1.0e9)
        limited.mem_capacity = limited.memory * limited.weights.max_memory
        assert limited.overload(seed(limited)) > 1.0                      # the limits bind
        found = improve(limited, time_limit=1.0).assign
        assert limited.allowed[np.arange(limited.n_vnodes), found].all()
        assert limited.feasible(found), f"seed {s}: overload {limited.overload(found)}"
