"""The console's pictures, drawn from a job's status as the coordinator builds it: the DAG with the dead-letter
edges grouped, and the placement framed by agent with the measured traffic."""

from __future__ import annotations

import re

import microstream as ms
from microstream.cluster.jobs import dag_of
from microstream.cluster.model import Job
from microstream.console.views import dag_svg, placement_svg
from microstream.graph.physical import build_plan


def job_status() -> tuple[dict, list[str]]:
    p = ms.Pipeline("views")
    src = p.from_iterable([{"room": "a", "v": 1.0}] * 4)
    parsed = src.map_records(lambda r: {**r, "v": r["v"] * 2})
    ok = parsed.filter(lambda b: b["v"] > 0)
    ok.key_by("room").stateful_map(ms.state.cumsum, "v", out="total").with_parallelism(2).sink(ms.sinks.collect())
    p.dead_letters().sink(ms.sinks.collect())
    graph = p.build()
    plan = build_plan(graph)
    vnodes = sorted(plan.vnodes)
    placement = {vn: ("node1" if i % 2 == 0 else "node2") for i, vn in enumerate(vnodes)}
    job = Job("views-1", "views", graph, plan, placement)
    status = {"state": "running", "epoch": 0, "dag": dag_of(job),
              "vnodes": {vn: {"agent": placement[vn], "tasks": plan.vnodes[vn].tasks} for vn in vnodes},
              "traffic": [{"from": vnodes[0], "to": vnodes[1], "from_node": "node1", "to_node": "node2",
                           "bytes_per_s": 123_000.0, "crosses_link": True}]}
    return status, vnodes


def test_the_dag_groups_the_dead_letter_edges():
    status, _ = job_status()
    dag = status["dag"]
    hub = next(n for n in dag["nodes"] if n["kind"] == "side")
    into_hub = [e for e in dag["edges"] if e["dst"] == hub["id"]]
    assert len(into_hub) >= 3                     # every operator that can refuse a record has one
    svg = dag_svg("views-1", status)
    drawn = re.findall(r'<path class="edge" data-src="([^"]+)" data-dst="([^"]+)"', svg)
    assert drawn and all(dst != hub["id"] for _, dst in drawn)
    assert len(drawn) == len(dag["edges"]) - len(into_hub)
    assert f"dead letters of {len(into_hub)} operators (grouped)" in svg
    for node in dag["nodes"]:                     # every operator is a box the page can find by id
        assert f'data-id="{node["id"]}"' in svg


def test_the_placement_frames_virtual_nodes_by_agent_with_measured_traffic():
    status, vnodes = job_status()
    svg = placement_svg("views-1", status)
    assert 'data-group="node1"' in svg and 'data-group="node2"' in svg
    for vn in vnodes:
        assert f'data-id="{vn}"' in svg
    assert "123 kB/s ⇄" in svg                    # crosses machines
    assert f'data-src="{vnodes[0]}" data-dst="{vnodes[1]}"' in svg
