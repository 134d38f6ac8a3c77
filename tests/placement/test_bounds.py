"""Proofs that no placement fits (`bounds.infeasibility`): sound against brute force on small instances, and
what they find on the benchmark's 1,000 × 100 instances with bandwidth a limit."""

from __future__ import annotations

import numpy as np
import pytest

import microstream as ms
from microstream.graph.physical import build_plan
from microstream.placement import Topology, place
from microstream.placement.bounds import infeasibility
from microstream.placement.synthetic import random_problem
from microstream.placement.topology import Link, PhysicalNode, Sensor

from .test_milp import brute_force


def test_a_proof_is_never_wrong_and_often_found():
    """Whenever a proof is given, brute force finds no feasible placement; and among the instances brute force
    finds infeasible, some are proven (the test can fail both ways)."""
    proven = infeasible = 0
    for s in range(80):
        rng = np.random.default_rng(700 + s)
        p = random_problem(rng, int(rng.integers(4, 8)), int(rng.integers(3, 6)))
        p.link_cap = p.link_cap * float(rng.choice([0.02, 0.1, 0.3, 1.0]))   # limits that bind
        proofs = infeasibility(p)
        best, _ = brute_force(p)
        if proofs:
            proven += 1
            assert not np.isfinite(best), f"instance {s}: 'infeasible' but brute force places it at {best}"
            for proof in proofs:
                assert proof.least_bytes > proof.boundary_bytes
        infeasible += not np.isfinite(best)
    assert infeasible >= 10 and proven >= infeasible // 3, (proven, infeasible)


def test_the_benchmarks_campus_of_1000_vnodes_is_proven_infeasible():
    """bench/placement.py's first 1,000 × 100 instance: site s20's five pinned sources send at least 4.0 MB/s
    out whichever vnodes join them on its 10 cores; its uplink and mesh link carry 3.75 MB/s."""
    p = random_problem(np.random.default_rng(0), 1000, 100)
    proofs = infeasibility(p)
    assert [sorted(x.nodes) for x in proofs] == [["s20-n0", "s20-n1", "s20-n2"]]
    assert proofs[0].boundary_bytes == pytest.approx(3.75e6)
    assert proofs[0].least_bytes > 3.9e6
    assert "vn35" in proofs[0].pinned


def test_place_says_why_nothing_fits():
    """A sensor's 4 kB/s stream must reach windows that do not fit the gateway's memory over a 1 kB/s uplink:
    no placement fits, and the first reason says which nodes' links cannot carry what must leave them."""
    topo = Topology("thin", [PhysicalNode("gw", cores=4, memory=200_000_000), PhysicalNode("core", cores=8)],
                    [Link("gw", "core", 1.0, 1_000.0)], [Sensor("co2", "gw", 100.0, 40.0)])
    p = ms.Pipeline("thin")
    (p.poll(lambda: {"room": "a", "co2": 1.0}, every=0.01, name="co2").key_by("room")
     .window(ms.tumbling(seconds=10)).aggregate(n=ms.agg.count(), name="w").with_parallelism(2)
     .sink(ms.sinks.collect(), name="out"))
    placement = place(build_plan(p.graph), p.graph, topo)
    assert not placement.feasible
    first = placement.cost.reasons[0]
    assert first.startswith("no feasible placement exists: the vnodes that must run on gw (vn0) send at least"), first
    assert "its links may carry 1 kB/s" in first, first
