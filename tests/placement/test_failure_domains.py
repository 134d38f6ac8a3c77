"""Failure domains: vnodes that protect each other (a standby and what it stands in for) are never placed in one
failure domain — a node's `domain`, its domain/switch/rack label, else its site — by the MILP (against brute
force), the heuristic, and `place`, which says plainly when a pair can only be placed together."""

from __future__ import annotations

import math
import textwrap
import time

import numpy as np
import pytest

from microstream.placement import PlacementError, Topology, failure_domain, place
from microstream.placement.solvers import improve
from microstream.placement.synthetic import random_problem
from microstream.placement.topology import Link, PhysicalNode, Sensor

from .helpers import plan_of, racks, room_pipeline
from .test_milp import against_brute_force, brute_force


def test_a_nodes_failure_domain_comes_from_its_domain_key_its_labels_or_its_site(tmp_path):
    path = tmp_path / "rack.toml"
    path.write_text(textwrap.dedent("""
        [[site]]
        name = "hall"
        lan = { latency_ms = 0.5, bandwidth = "1Gbit" }
        [[node]]
        name = "a"
        site = "hall"
        domain = "rack-1"
        labels = { switch = "sw9" }
        [[node]]
        name = "b"
        site = "hall"
        labels = { switch = "sw2" }
        [[node]]
        name = "c"
        site = "hall"
        [[node]]
        name = "d"
        [[link]]
        a = "c"
        b = "d"
        bandwidth = "100Mbit"
    """))
    topo = Topology.load(path)
    assert topo.check() == []
    assert [topo.failure_domain(n) for n in "abcd"] == ["rack-1", "sw2", "hall", ""]
    assert failure_domain({"rack": "r3", "site": "x"}) == "r3" and failure_domain({"site": "x"}) == "x"


def _with_pairs(seed: int):
    """A small random instance whose nodes fall into 2-3 failure domains, with 1-3 pairs kept apart."""
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, int(rng.integers(4, 7)), int(rng.integers(3, 6)))
    problem.domain = rng.integers(0, int(rng.integers(2, 4)), problem.n_nodes)
    problem.domain_names = [f"d{k}" for k in range(int(problem.domain.max()) + 1)]
    pairs = {tuple(sorted(rng.choice(problem.n_vnodes, 2, replace=False).tolist()))
             for _ in range(int(rng.integers(1, 4)))}
    problem.apart = np.array(sorted(pairs), dtype=np.int64)
    problem.__post_init__()
    return problem


def test_the_milp_keeps_pairs_apart_and_equals_brute_force():
    def apart(problem, r, truth):
        assert problem.together(r.assign) == 0

    checked, infeasible = against_brute_force(((seed, _with_pairs(seed)) for seed in range(40)), apart)
    assert checked >= 20
    assert infeasible >= 1              # some instances' pins leave no way to keep a pair apart


def test_the_heuristic_keeps_pairs_apart_whenever_brute_force_can():
    apart_somewhere = 0
    for seed in range(40):
        problem = _with_pairs(seed)
        truth, _ = brute_force(problem)
        found = improve(problem, time_limit=0.3).assign
        if math.isinf(truth):
            assert not problem.feasible(found)
            continue
        assert problem.feasible(found) and problem.together(found) == 0, f"seed {seed}"
        assert problem.total(found) >= truth - 1e-9
        apart_somewhere += 1
    assert apart_somewhere >= 20


def test_larger_instances_keep_pairs_apart_through_annealing_and_lns():
    rng = np.random.default_rng(7)
    problem = random_problem(rng, 40, 10)
    problem.domain = np.array([0] + [1 + j // 3 for j in range(problem.n_nodes - 1)])   # racks of three
    problem.domain_names = [f"rack{k}" for k in range(int(problem.domain.max()) + 1)]
    pairs, used = [], set()
    for e in np.argsort(-problem.traffic).tolist():     # heavy edges, whose ends would rather share a node
        s, d = int(problem.src[e]), int(problem.dst[e])
        if problem.pinned[s] < 0 and problem.pinned[d] < 0 and not {s, d} & used and len(pairs) < 8:
            pairs.append((s, d))
            used |= {s, d}
    problem.apart = np.array(pairs, dtype=np.int64)
    problem.__post_init__()
    free = improve(problem.__class__(**_fields(problem, apart=None)), time_limit=0.5).assign
    assert problem.together(free) > 0          # unconstrained, some pairs share a rack: the limit binds
    found = improve(problem, time_limit=1.0).assign
    assert problem.feasible(found) and problem.together(found) == 0


def _heavy_pairs(seed: int, count: int = 8):
    """40 vnodes × 10 nodes in racks of three, the ends of the heaviest free edges kept apart (they would rather
    share a node, so the limit binds)."""
    return racks(random_problem(np.random.default_rng(seed), 40, 10), count)


def test_the_annealer_never_puts_a_pair_together_and_prices_pairs_as_the_search_objective():
    """The compiled annealer on its own: from a placement with every pair apart, no walk ends with a pair in one
    domain (though the pairs' heavy edges pull them together: without the limit it joins some), and the objective
    it tracked is `search_objective`'s, pairs counted. From a start with pairs together it separates them and
    never joins one more."""
    from microstream.placement.anneal import anneal
    from microstream.placement.solvers import _movable

    joined = 0
    for s in range(3):
        problem = _heavy_pairs(s)
        start = improve(problem, time_limit=0.5).assign
        assert problem.together(start) == 0 and problem.feasible(start)
        movable = _movable(problem)
        free = problem.__class__(**_fields(problem, apart=None))
        loose, _ = anneal(free, start, movable, math.inf, s, 50_000, time.perf_counter, t_range=(1.0, 1e-3))
        joined += problem.together(loose)
        best, value = anneal(problem, start, movable, math.inf, s, 50_000, time.perf_counter, t_range=(1.0, 1e-3))
        assert problem.together(best) == 0, f"seed {s}"
        assert value == pytest.approx(problem.search_objective(best), rel=1e-9)
        # a start with pairs together: the walk separates them and never adds one
        bad = start.copy()
        for a, b in problem.apart.tolist():
            if problem.allowed[b, bad[a]]:
                bad[b] = bad[a]
        before = problem.together(bad)
        assert before > 0
        fixed, value = anneal(problem, bad, movable, math.inf, s, 50_000, time.perf_counter)
        assert problem.together(fixed) < before
        assert value == pytest.approx(problem.search_objective(fixed), rel=1e-9)
    assert joined > 0                   # the limit binds: a walk that ignores it joins pairs


def _fields(problem, **changes):
    names = ("vnodes", "nodes", "cpu", "cores", "allowed", "pinned", "src", "dst", "traffic", "on_path", "inv_bw",
             "latency_ms", "weights", "why_not", "routes", "links", "speed", "mem", "memory", "current", "move_cost",
             "domain", "apart", "domain_names")
    return {**{n: getattr(problem, n) for n in names}, **changes}


def _racks() -> Topology:
    """Four nodes in two racks (one switch each), the sensor 'co2' on a1."""
    nodes = [PhysicalNode(n, cores=4, labels={"switch": "sw-a" if n.startswith("a") else "sw-b"})
             for n in ("a1", "a2", "b1", "b2")]
    links = [Link("a1", "a2", 0.2, 125e6), Link("b1", "b2", 0.2, 125e6), Link("a1", "b1", 2.0, 12.5e6)]
    return Topology("racks", nodes, links, [Sensor("co2", "a1", 100.0, 40.0)])


def test_place_keeps_a_standby_off_the_node_and_the_switch_of_what_it_protects():
    plan, graph = plan_of(room_pipeline(par=2))
    vnodes = list(plan.vnodes)
    free = place(plan, graph, _racks())
    pairs = [(vnodes[0], v) for v in vnodes[1:]]
    assert any(free.problem.domain[free.problem.nodes.index(free.assignment[a])]
               == free.problem.domain[free.problem.nodes.index(free.assignment[b])] for a, b in pairs)
    kept = place(plan, graph, _racks(), apart=pairs[:1], solver="exact")
    a, b = pairs[0]
    assert kept.feasible and kept.gap is not None and kept.gap < 1e-4   # HiGHS stops at an absolute gap of 1e-6
    assert kept.assignment[a] == "a1" and kept.assignment[b] in ("b1", "b2")
    assert place(plan, graph, _racks(), apart=pairs[:1]).assignment[b] in ("b1", "b2")


def test_a_pair_that_can_only_run_together_is_a_clear_error():
    plan, graph = plan_of(room_pipeline(par=2, at="a1"))
    vnodes = list(plan.vnodes)
    topo = _racks()
    for node in topo.nodes:
        node.labels["switch"] = "sw-all"
    with pytest.raises(PlacementError, match="must run in different failure domains, but both may only run in "
                                             "'sw-all'"):
        place(plan, graph, topo, apart=[(vnodes[0], vnodes[1])])
    with pytest.raises(PlacementError, match="no virtual node 'vn99'"):
        place(plan, graph, _racks(), apart=[(vnodes[0], "vn99")])


def test_a_placement_that_puts_a_pair_together_says_so():
    problem = _with_pairs(3)
    a, b = problem.apart[0].tolist()
    assign = improve(problem, time_limit=0.2).assign.copy()
    assign[b] = assign[a]
    from microstream.placement.cost import evaluate

    cost = evaluate(problem, assign)
    assert not cost.feasible and math.isinf(cost.total)
    assert any(f"{problem.vnodes[a]} and {problem.vnodes[b]} protect each other but share failure domain" in r
               for r in cost.reasons)
