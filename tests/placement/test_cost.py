"""The cost model on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from microstream.core.schema import Schema
from microstream.placement import Estimates, build_problem, cost_of, estimate_flows, evaluate
from microstream.placement.cost import record_bytes

from .helpers import plan_of, room_pipeline, two_nodes

NO_CPU = Estimates(cpu_us={}, default_cpu_us=0.0, task_overhead=0.1)   # every task: 0.1 cores


def test_record_bytes_from_dtypes():
    assert record_bytes(Schema.of({"t": "int64", "co2": "float32", "ok": "bool", "room": "U", "x": object})) \
        == 8 + 4 + 1 + 16 + 64


def test_estimated_rates_follow_the_plan():
    plan, graph = plan_of(room_pipeline(par=2))
    flows = estimate_flows(plan, graph, two_nodes())
    e = flows.edges
    assert e[("co2", "ok")] == pytest.approx(100 * 40)             # the sensor's rate and record size
    assert e[("ok", "key_by")] == pytest.approx(50 * 32)           # filter keeps half; t, room, co2 = 32 bytes
    assert e[("key_by", "w[0]")] == e[("key_by", "w[1]")] == pytest.approx(800)   # hash edge: split evenly
    window_out = 0.5 * (16 + 8 + 8 + 8 + 16 + 8)   # 1 % of 50 records/s; room, start, end, time, pane, n
    assert e[("w[0]", "out")] == e[("w[1]", "out")] == pytest.approx(window_out / 2)
    assert flows.records_in["w[0]"] == pytest.approx(25)
    assert flows.source_rates["co2"] == (100.0, "sensor 'co2'")


def test_default_rate_without_a_sensor():
    plan, graph = plan_of(room_pipeline())
    flows = estimate_flows(plan, graph, None, estimates=Estimates(default_rate=10))
    assert flows.edges[("co2", "ok")] == pytest.approx(10 * 32)


def test_measured_rates_replace_estimates():
    plan, graph = plan_of(room_pipeline(par=2))
    flows = estimate_flows(plan, graph, two_nodes(), rates={("key_by", "w[0]"): 8000.0})
    assert flows.edges[("key_by", "w[0]")] == 8000.0
    assert flows.edges[("key_by", "w[1]")] == pytest.approx(800)
    assert flows.records_in["w[0]"] == pytest.approx(250)         # CPU follows the measured bytes
    vn_key = plan.vnode_of("key_by")
    vn_w0 = plan.vnode_of("w[0]")
    by_vnode = estimate_flows(plan, graph, two_nodes(), rates={(vn_key, vn_w0): 5000.0})
    assert by_vnode.edges[("key_by", "w[0]")] == pytest.approx(5000.0)


def split_assignment(plan):
    """The source's vnode on a, everything else on b."""
    first = plan.vnode_of("co2")
    return {vn: ("a" if vn == first else "b") for vn in plan.vnodes}


def test_cost_of_a_split_placement_by_hand():
    plan, graph = plan_of(room_pipeline(par=2))
    topo = two_nodes()
    cost = cost_of(plan, graph, topo, split_assignment(plan), estimates=NO_CPU)
    assert cost.feasible
    assert cost.network == pytest.approx(1600 / 125_000)            # both hash edges cross the 1 Mbit/s link
    assert cost.latency_ms == pytest.approx(5.0)
    assert cost.node_load == {"a": pytest.approx(0.3), "b": pytest.approx(0.3)}
    # imbalance: Σ (used / cores)² less its least possible value for 0.6 cores on 2 + 4 cores, 0.6² / (2² + 4²)
    assert cost.load == pytest.approx((0.3 / 2) ** 2 + (0.3 / 4) ** 2 - 0.6 ** 2 / (2 ** 2 + 4 ** 2))
    assert cost.total == pytest.approx(1600 / 125_000 + 0.01 * 5 + 0.5 * cost.load)
    assert cost.link_traffic == {"a–b": pytest.approx(1600)}
    assert cost.cross_bytes == pytest.approx(1600)
    assert cost.critical_path[0] == plan.vnode_of("co2")


def test_all_on_one_node_costs_no_network():
    plan, graph = plan_of(room_pipeline())
    cost = cost_of(plan, graph, two_nodes(), {vn: "a" for vn in plan.vnodes}, estimates=NO_CPU)
    assert (cost.network, cost.latency_ms, cost.cross_bytes) == (0.0, 0.0, 0.0)
    assert cost.load == pytest.approx((0.6 / 2) ** 2 - 0.6 ** 2 / (2 ** 2 + 4 ** 2))


def test_ignoring_a_pin_is_infeasible():
    plan, graph = plan_of(room_pipeline())
    cost = cost_of(plan, graph, two_nodes(), {vn: "b" for vn in plan.vnodes})
    assert not cost.feasible and math.isinf(cost.total)
    assert any("pinned to a, not b" in r for r in cost.reasons)


def test_missing_backend_is_infeasible():
    plan, graph = plan_of(room_pipeline())
    vm = plan.vnode_of("out")
    plan.vnodes[vm].backend = "microvm"
    topo = two_nodes(backends_a=("process", "microvm"))
    problem = build_problem(plan, graph, topo, estimate_flows(plan, graph, topo))
    cost = evaluate(problem, split_assignment(plan))
    assert not cost.feasible
    assert any(f"{vm} needs backend 'microvm': b cannot host it" in r for r in cost.reasons)


def test_overload_is_infeasible():
    plan, graph = plan_of(room_pipeline(par=2))
    cost = cost_of(plan, graph, two_nodes(cores_b=0.2), split_assignment(plan), estimates=NO_CPU)
    assert not cost.feasible
    assert any("b is overloaded: 0.30 cores needed, 0.20 available" in r for r in cost.reasons)


def test_link_bandwidth_is_a_limit():
    plan, graph = plan_of(room_pipeline(par=2))
    slow = two_nodes()
    slow.links[0] = type(slow.links[0])("a", "b", 5.0, 1000.0)     # 8 kbit/s: 1,600 B/s cannot cross it
    slow.invalidate()
    cost = cost_of(plan, graph, slow, split_assignment(plan), estimates=NO_CPU)
    assert not cost.feasible and math.isinf(cost.total)
    assert any("link a–b would carry 1.6 kB/s, 160% of its bandwidth" in r for r in cost.reasons)


def test_memory_is_a_limit():
    plan, graph = plan_of(room_pipeline(par=2))
    topo = two_nodes()
    topo.nodes[1].memory = 250e6                 # b: 80 % of 250 MB for 3 vnodes of 100 MB + two 2 MB windows
    cost = cost_of(plan, graph, topo, split_assignment(plan), estimates=NO_CPU)
    assert not cost.feasible
    assert any(r.startswith("b is out of memory: 304 MB needed, 200 MB available") for r in cost.reasons)
    # measured state replaces the estimate
    flows = estimate_flows(plan, graph, topo, estimates=NO_CPU)
    problem = build_problem(plan, graph, topo, flows, estimates=NO_CPU, state_bytes={plan.vnode_of("w[0]"): 0.0})
    assert problem.mem[problem.vnodes.index(plan.vnode_of("w[0]"))] == pytest.approx(100e6)


def test_node_speed_scales_capacity_and_load():
    from microstream.placement.cost import node_speed
    from microstream.placement.topology import PhysicalNode

    assert node_speed(PhysicalNode("z", labels={"model": "zero2"})) == pytest.approx(0.35)
    assert node_speed(PhysicalNode("x")) == 1.0
    plan, graph = plan_of(room_pipeline(par=2))
    topo = two_nodes()
    topo.nodes[1].labels = {"speed": "0.5"}                          # b: 4 cores at half a Pi 4's speed
    cost = cost_of(plan, graph, topo, split_assignment(plan), estimates=NO_CPU)
    assert cost.node_load["b"] == pytest.approx(0.6)                 # 0.3 Pi 4 cores take 0.6 of b's cores
    assert cost.load == pytest.approx((0.3 / 2) ** 2 + (0.3 / 2) ** 2 - 0.6 ** 2 / (2 ** 2 + 2 ** 2))
