"""Pictures and tables of a placement: an SVG with each vnode's tasks framed by the physical node they run on
and edges labelled with predicted traffic, and a text report of where everything goes and what it costs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..graph.logical import DeadLetterHub, LogicalGraph
from ..graph.physical import PhysicalPlan
from ..placement.solvers import Placement
from ..placement.topology import Topology, format_bandwidth, format_bytes, format_share
from .dag import DrawEdge, DrawNode, to_svg

__all__ = ["placement_svg", "report"]


def _group(topology: Topology, node: str) -> str:
    site = topology.site_of(node)
    return f"{node} ({site})" if site else node


def placement_svg(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, placement: Placement) -> str:
    """The plan's tasks, framed by physical node ("lib-pi1 (library)"), edges labelled with bytes/s (dead-letter
    edges only where records are expected to flow on them)."""
    task_vn = {t: vn.id for vn in plan.vnodes.values() for t in vn.tasks}
    nodes = []
    for task in sorted(plan.tasks.values(), key=lambda t: (t.node_id, t.index)):
        op = graph.nodes[task.node_id]
        kind = "source" if op.is_source else "sink" if op.is_sink else "op"
        if isinstance(op.op, DeadLetterHub):
            kind = "side"
        vn = task_vn[task.id]
        where = placement.assignment[vn]
        nodes.append(DrawNode(task.id, task.id, f"{vn} · {op.op.kind}", kind, _group(topology, where)))
    flows = placement.flows.edges if placement.flows else {}
    dead = {(s, d) for (s, d) in flows} - (placement.flows.data_edges if placement.flows else set())
    edges = []
    for (s, d), rate in flows.items():
        if (s, d) in dead and rate <= 0:
            continue  # a dead-letter edge that carries nothing: drawing every operator's would hide the job
        crosses = placement.assignment[task_vn[s]] != placement.assignment[task_vn[d]]
        label = format_bytes(rate) + (" ⇄" if crosses else "")
        style = "dashed" if (s, d) in dead else "solid"
        edges.append(DrawEdge(s, d, label, style))
    cost = placement.cost
    title = (f"{plan.job} on {topology.name}: {placement.solver}, cost {cost.total:.4g}, {placement.quality} "
             f"(latency {cost.latency_ms:.3g} ms, {format_bytes(cost.cross_bytes)} between nodes)")
    return to_svg(nodes, edges, title=title)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def report(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, placement: Placement,
           explain: bool = False) -> str:
    """A text report: each vnode's node and operators (with the reason if `explain`), predicted traffic per
    link, load per node, the critical path and the cost breakdown."""
    from ..placement.explain import vnode_labels

    cost = placement.cost
    weights = placement.problem.weights if placement.problem else None
    labels = vnode_labels(plan, graph)
    cpu = _vnode_cpu(plan, placement)
    lines = [f"placement of '{plan.job}' on '{topology.name}' ({placement.solver} solver, "
             f"{placement.seconds * 1000:.0f} ms, {placement.quality}): cost {cost.describe(weights)}", ""]
    header = ("vnode", "node", "site", "cores", "operators") + (("why",) if explain else ())
    rows = [header]
    for vn, node in placement.assignment.items():
        row = (vn, node, topology.site_of(node) or "-", f"{cpu.get(vn, 0.0):.2f}", labels[vn])
        rows.append(row + ((placement.explain.get(vn, ""),) if explain else ()))
    lines += _table(rows) + [""]
    lines += _links_table(topology, placement) + [""]
    lines += _nodes_table(topology, placement) + [""]
    path = " → ".join(f"{labels[v].split(',')[0]} ({placement.assignment[v]})" for v in cost.critical_path)
    lines.append(f"critical path: {cost.latency_ms:.3g} ms of link latency: {path or '-'}")
    lines.append(f"between nodes: {format_bytes(cost.cross_bytes)} in all")
    for text in cost.reasons + cost.warnings:
        lines.append(f"warning: {text}")
    return "\n".join(lines)


def _vnode_cpu(plan: PhysicalPlan, placement: Placement) -> dict[str, float]:
    if placement.flows is None:
        return {}
    return {vn.id: sum(placement.flows.cpu.get(t, 0.0) for t in vn.tasks) for vn in plan.vnodes.values()}


def _links_table(topology: Topology, placement: Placement) -> list[str]:
    cost = placement.cost
    if not cost.link_traffic:
        return ["links: no traffic between nodes"]
    speed = {lk.label: lk for lk in topology.all_links()}
    rows = [("link", "bandwidth", "latency", "traffic", "use")]
    for label, rate in cost.link_traffic.items():
        lk = speed[label]
        rows.append((label, format_bandwidth(lk.bandwidth), f"{lk.latency_ms:g} ms", format_bytes(rate),
                     format_share(cost.link_utilisation[label])))
    return _table(rows)


def _nodes_table(topology: Topology, placement: Placement) -> list[str]:
    count: dict[str, int] = defaultdict(int)
    for node in placement.assignment.values():
        count[node] += 1
    rows = [("node", "site", "cores", "used", "load", "vnodes")]
    for node in topology.node_names():
        phys = topology.node(node)
        used = placement.cost.node_load.get(node, 0.0)
        if not count[node] and not used:
            continue
        rows.append((node, phys.site or "-", f"{phys.cores:g}", f"{used:.2f}",
                     f"{used / phys.cores:.0%}" if phys.cores else "-", str(count[node])))
    return _table(rows)

