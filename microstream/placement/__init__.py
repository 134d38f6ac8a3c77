"""The placement engine: which physical node runs each virtual node of a job.

    >>> from pathlib import Path
    >>> from microstream.placement import Topology
    >>> campus = Topology.load(Path(__file__).parents[2] / "examples" / "topologies" / "campus.toml")
    >>> campus.check()
    []
    >>> links, latency_ms, bottleneck = campus.path("lib-pi2", "dorm-pi2")
    >>> [lk.label for lk in links], latency_ms
    (['lib-pi1–lib-pi2', 'lib-pi1–core', 'dorm-pi1–core', 'dorm-pi1–dorm-pi2'], 10.8)

Then `place(plan, graph, campus)` returns a `Placement` (assignment, cost breakdown, a reason per vnode);
`microstream.viz.placement` shows it (`report`, `placement_svg`); `migration_gain(...)` prices a
re-placement against the cost of moving state. See docs/placement.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: the CLI builds its parser (and agents start) without loading numpy.
_WHERE = {
    **dict.fromkeys(("Cost", "Estimates", "Flows", "PlacementError", "Problem", "Weights", "build_problem",
                     "cost_of", "estimate_flows", "evaluate", "find_pins"), ".cost"),
    **dict.fromkeys(("MigrationGain", "Placement", "exact", "heuristic", "migration_gain", "place",
                     "place_on_agents", "solve"), ".solvers"),
    **dict.fromkeys(("Link", "LinkSpec", "PhysicalNode", "Sensor", "Topology", "TopologyError", "failure_domain"),
                    ".topology"),
}

if TYPE_CHECKING:
    from .cost import (
        Cost,
        Estimates,
        Flows,
        PlacementError,
        Problem,
        Weights,
        build_problem,
        cost_of,
        estimate_flows,
        evaluate,
        find_pins,
    )
    from .solvers import MigrationGain, Placement, exact, heuristic, migration_gain, place, place_on_agents, solve
    from .topology import Link, LinkSpec, PhysicalNode, Sensor, Topology, TopologyError, failure_domain


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'microstream.placement' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Cost", "Estimates", "Flows", "Link", "LinkSpec", "MigrationGain", "PhysicalNode", "Placement", "PlacementError",
    "Problem", "Sensor", "Topology", "TopologyError", "Weights", "build_problem", "cost_of", "estimate_flows",
    "evaluate", "exact", "failure_domain", "find_pins", "heuristic", "migration_gain", "place", "place_on_agents",
    "solve",
]
