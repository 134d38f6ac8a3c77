"""Small pipelines and topologies shared by the placement tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import microstream as ms
from microstream.graph.physical import build_plan
from microstream.placement.topology import Link, PhysicalNode, Sensor, Topology

CAMPUS = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "campus.toml"


def room_pipeline(par: int = 2, at: str | None = None) -> ms.Pipeline:
    """co2 source -> filter 'ok' -> key_by -> window 'w' (parallelism `par`) -> sink 'out'."""
    p = ms.Pipeline("rooms")
    s = p.from_iterable([{"t": 0, "room": "a", "co2": 1.0}], time="t", name="co2", at=at)
    f = s.filter(lambda b: b["co2"] > 0, name="ok")
    w = f.key_by("room").window(ms.tumbling(seconds=10)).aggregate(n=ms.agg.count(), name="w")
    w.with_parallelism(par).sink(ms.sinks.collect(), name="out")
    return p


def two_nodes(cores_a: float = 2, cores_b: float = 4, backends_a: tuple[str, ...] = ("process",)) -> Topology:
    """a — b over a 1 Mbit/s (125,000 B/s), 5 ms link; sensor 'co2' (100 records/s of 40 bytes) on a."""
    return Topology("two", [PhysicalNode("a", cores=cores_a, backends=backends_a), PhysicalNode("b", cores=cores_b)],
                    [Link("a", "b", 5.0, 125_000.0)], [Sensor("co2", "a", 100.0, 40.0)])


def plan_of(pipeline: ms.Pipeline):
    return build_plan(pipeline.graph), pipeline.graph


def racks(problem, pairs: int):
    """`problem` with its nodes in racks of three (the first node alone) and the ends of its heaviest free edges
    kept apart, at most `pairs` of them (they would rather share a node, so the limit binds)."""
    problem.domain = np.array([0] + [1 + j // 3 for j in range(problem.n_nodes - 1)])
    problem.domain_names = [f"rack{k}" for k in range(int(problem.domain.max()) + 1)]
    chosen, used = [], set()
    for e in np.argsort(-problem.traffic).tolist():
        s, d = int(problem.src[e]), int(problem.dst[e])
        if problem.pinned[s] < 0 and problem.pinned[d] < 0 and not {s, d} & used and len(chosen) < pairs:
            chosen.append((s, d))
            used |= {s, d}
    problem.apart = np.array(chosen, dtype=np.int64)
    problem.__post_init__()
    return problem
