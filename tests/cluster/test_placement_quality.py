"""The coordinator keeps what the placement engine proved about a job's placement (its cost, the proven lower
bound and gap, "optimal" / "within x % of optimal" / "gap unknown"), which `status` reports per job."""

from __future__ import annotations

import math

from microstream.cluster.placing import Placer
from tests.placement.helpers import plan_of, room_pipeline


def _agents(n: int) -> dict[str, dict]:
    return {f"pi{i}": {"up": True, "cores": 2, "memory": 2**30, "arch": "aarch64", "backends": ["process"],
                       "labels": {}} for i in range(n)}


def test_placed_carries_the_engines_quality_and_a_consistent_gap():
    plan, graph = plan_of(room_pipeline(par=2))
    placed = Placer(policy=None, log=lambda _: None).place(plan, graph, _agents(2))
    q = placed.quality
    assert q["solver"] == "heuristic"
    assert q["quality"] == "optimal"               # small enough for the heuristic to solve it whole by MILP
    assert q["gap"] == 0.0 and q["bound"] is not None
    assert q["bound"] <= q["cost"] + 1e-9 * max(1.0, q["cost"])   # a lower bound never exceeds the cost
    assert set(placed.assignment) == set(plan.vnodes)


def test_quality_is_plain_data():
    """Status travels as JSON: no inf or NaN, only numbers, None and text."""
    plan, graph = plan_of(room_pipeline(par=3))
    q = Placer(policy=None, log=lambda _: None).place(plan, graph, _agents(3)).quality
    for value in q.values():
        assert value is None or isinstance(value, str) or math.isfinite(value)
