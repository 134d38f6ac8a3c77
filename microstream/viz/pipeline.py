"""The logical graph as a picture: operators as boxes (sources, operators, sinks, the dead-letter hub) and
edges labelled with their partitioning, drawn by `dag.py` (SVG) or as Graphviz text."""

from __future__ import annotations

from ..graph.logical import DeadLetterHub, LogicalGraph
from ..operators.base import OUT
from .dag import DrawEdge, DrawNode, to_dot, to_svg


def drawing(graph: LogicalGraph, groups: dict[str, str] | None = None) -> tuple[list[DrawNode], list[DrawEdge]]:
    """The graph's operators and edges as boxes and arrows (`groups`: operator name -> box group)."""
    nodes, edges = [], []
    for node in graph.topo_order():
        kind = "source" if node.is_source else "sink" if node.is_sink else "op"
        if isinstance(node.op, DeadLetterHub):
            kind = "side"
        detail = node.op.describe()
        nodes.append(DrawNode(str(node.id), node.name, detail, kind, (groups or {}).get(node.name)))
    for src, port, dst, _ in graph.edges():
        label = port if port != OUT else ""
        if dst.op.kind == "key_by":
            label = label or f"hash({dst.op.key})"  # type: ignore[attr-defined]
        style = "dashed" if port in src.op.side_ports() else "solid"
        edges.append(DrawEdge(str(src.id), str(dst.id), label, style))
    return nodes, edges


def graph_dot(graph: LogicalGraph) -> str:
    """Graphviz text of the logical graph."""
    return to_dot(*drawing(graph), title=graph.name)


def graph_svg(graph: LogicalGraph) -> str:
    """An SVG picture of the logical graph."""
    return to_svg(*drawing(graph), title=graph.name)
