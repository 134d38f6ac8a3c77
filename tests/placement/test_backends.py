"""A job can require the microVM backend for an operator; placement honours it, a cluster without it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

import microstream as ms
from microstream.graph.physical import build_plan
from microstream.placement import Topology, place

CAMPUS = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "campus.toml"


def _pipeline() -> ms.Pipeline:
    p = ms.Pipeline("untrusted")
    src = p.synthetic(count=100, sensors=4)
    src.map(lambda b: {"sensor": b["sensor"], "v": b["value"] * 2}).with_backend("microvm").with_parallelism(2) \
        .sink(ms.sinks.collect())
    return p


def test_required_backend_reaches_the_virtual_node_and_placement():
    p = _pipeline()
    plan = build_plan(p.graph)
    vm_vnodes = [vn for vn in plan.vnodes.values() if vn.backend == "microvm"]
    assert len(vm_vnodes) == 2 and all(any("map" in t for t in vn.tasks) for vn in vm_vnodes)
    campus = Topology.load(CAMPUS)
    placement = place(plan, p.graph, campus)
    for vn in vm_vnodes:
        node = placement.assignment[vn.id]
        assert "microvm" in campus.node(node).backends


def test_unknown_backend_is_a_build_error():
    p = ms.Pipeline("x")
    with pytest.raises(ms.PipelineError, match="unknown host backend 'docker'"):
        p.from_iterable([{"v": 1}]).with_backend("docker")


def test_a_whole_job_can_require_the_backend_and_one_operator_can_opt_out():
    p = ms.Pipeline("untrusted_job", backend="microvm")
    src = p.synthetic(count=100, sensors=4)
    w = src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count())
    w.map(lambda b: {"n": b["n"]}, name="trusted").with_backend("process").sink(ms.sinks.collect())
    plan = build_plan(p.graph)
    backends = {t: vn.backend for vn in plan.vnodes.values() for t in vn.tasks}
    assert backends["trusted"] == "process"
    assert {b for t, b in backends.items() if t != "trusted"} == {"microvm"}  # sources, windows, sinks
    campus = Topology.load(CAMPUS)
    placement = place(plan, p.graph, campus)
    assert all("microvm" in campus.node(placement.assignment[vn.id]).backends
               for vn in plan.vnodes.values() if vn.backend == "microvm")
    with pytest.raises(ms.PipelineError, match="unknown host backend 'docker'"):
        ms.Pipeline("x", backend="docker")
