"""Small pipelines and topologies shared by the placement tests."""

from __future__ import annotations

from pathlib import Path

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
