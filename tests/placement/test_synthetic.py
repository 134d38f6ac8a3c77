"""Random instances feasible by construction (`random_problem(fit_links=True)`): the same instance as without,
with the links a neutral placement (none of our solvers) overloads raised to carry it; nothing then proves them
infeasible, that placement is within every limit, and the heuristic places the benchmark's 1,000 × 100 ones
within their links."""

from __future__ import annotations

import time

import numpy as np
import pytest

from microstream.placement import Weights
from microstream.placement.bounds import infeasibility
from microstream.placement.solvers import improve, seed
from microstream.placement.synthetic import neutral_placement, random_problem


def _same_instance(plain, fitted) -> None:
    """Everything but link bandwidths as it was: vnodes, traffic, pins, cores, routes and latencies."""
    for name in ("cpu", "cores", "allowed", "pinned", "src", "dst", "traffic", "latency_ms"):
        assert np.array_equal(getattr(plain, name), getattr(fitted, name)), name
    assert fitted.routes.link_ids == plain.routes.link_ids
    assert [(lk.a, lk.b, lk.kind) for lk in fitted.links] == [(lk.a, lk.b, lk.kind) for lk in plain.links]
    assert (fitted.link_bw >= plain.link_bw).all()


def test_fitting_links_raises_only_the_links_a_neutral_placement_overloads():
    """Small instances, at the default link limit and at 30 % of it: the raised links (some, on some instances:
    the limits bind) carry the neutral placement at 80 % of their limit, the others keep their bandwidth; the
    network term agrees with the raised bandwidths (Σ over links of load ÷ bandwidth); the neutral placement is
    feasible, and no proof of infeasibility is found."""
    raised = 0
    for v, n in ((20, 6), (40, 10), (80, 16)):
        for s in range(4):
            for weights in (Weights(), Weights(max_link_utilisation=0.3)):
                plain = random_problem(np.random.default_rng(s), v, n, weights=weights)
                fitted = random_problem(np.random.default_rng(s), v, n, weights=weights, fit_links=True)
                _same_instance(plain, fitted)
                witness = neutral_placement(fitted)
                assert (witness == neutral_placement(plain)).all()
                assert fitted.feasible(witness), (v, n, s, fitted.overload(witness))
                up = fitted.link_bw > plain.link_bw
                raised += int(up.any())
                loads = fitted.link_loads(witness)
                assert (plain.link_loads(witness)[up] > plain.link_cap[up]).all()
                assert loads[up] == pytest.approx(0.8 * fitted.link_cap[up])
                network, *_ = fitted.terms(witness)
                assert network == pytest.approx(float((loads / fitted.link_bw).sum()))
                assert infeasibility(fitted) == [], (v, n, s)
    assert raised >= 6, raised


def test_fitting_links_cannot_fix_pins_over_a_nodes_cores():
    """An instance whose pinned vnodes alone exceed their node's cores: raising links cannot make it feasible,
    and the generator says so instead of returning an instance that is not."""
    rng = np.random.default_rng(257)
    v, n = int(rng.integers(4, 40)), int(rng.integers(3, 12))
    with pytest.raises(ValueError, match="the vnodes pinned to s2-n0 need more cores than it has"):
        random_problem(rng, v, n, fit_links=True)


def test_without_links_to_fit_nothing_changes():
    """With links priced but not limited there is nothing to fit: the same links, the same bandwidths."""
    weights = Weights(max_link_utilisation=float("inf"))
    plain = random_problem(np.random.default_rng(3), 60, 12, weights=weights)
    fitted = random_problem(np.random.default_rng(3), 60, 12, weights=weights, fit_links=True)
    _same_instance(plain, fitted)
    assert np.array_equal(plain.link_bw, fitted.link_bw)


@pytest.mark.slow
def test_the_benchmarks_campus_of_1000_vnodes_is_feasible_once_its_links_fit():
    """bench/placement.py's three 1,000 × 100 instances with bandwidth a limit: as drawn, each is proven to have
    no feasible placement (a site's pinned sources send more than its uplink carries); with fit_links, the same
    vnodes and traffic on raised links: no proof, and the neutral placement is within every limit."""
    for s in range(3):
        plain = random_problem(np.random.default_rng(s), 1000, 100)
        fitted = random_problem(np.random.default_rng(s), 1000, 100, fit_links=True)
        _same_instance(plain, fitted)
        assert infeasibility(plain), s
        assert fitted.feasible(neutral_placement(fitted)), s
        assert infeasibility(fitted) == [], s


@pytest.mark.slow
def test_the_heuristic_places_the_fitted_campus_of_1000_vnodes_within_its_links():
    """What the bench times: on the fitted 1,000 × 100 instances seeding alone still overloads links (they bind),
    and the heuristic ends within every link and core. With 3 s of CPU, not the bench's 1 s: how far 1 s of CPU
    gets depends on what else the machine runs (CI saw one instance still 0.78 over), and the bench times that."""
    for s in range(3):
        problem = random_problem(np.random.default_rng(s), 1000, 100, fit_links=True)
        assert problem.overload(seed(problem)) > 0.5, s
        found = improve(problem, time_limit=3.0, clock=time.process_time)
        assert problem.feasible(found.assign), (s, problem.overload(found.assign))
