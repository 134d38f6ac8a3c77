"""The physical plan: which parallel task instances exist, how data moves between them, and how
tasks are grouped into virtual nodes — the unit of placement, save/restore and migration.

Rules (after Flink's job graph):
- every operator has a parallelism (sources and sinks 1 unless set);
- an edge into a keyed, stateful operator (window, join, stateful_map) whose parallelism is above 1,
  or between operators of different parallelism, repartitions: by hash of the key when the stream
  is keyed, round robin otherwise; every other edge is *forward* (subtask i to subtask i);
- tasks joined by forward edges, where the downstream operator has a single input, are chained
  into the same virtual node (no serialisation between them); a source pinned to a physical node
  (`at=`) pins its whole virtual node there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..core.errors import PipelineError
from ..operators.base import DEAD
from .logical import DeadLetterHub, LogicalGraph, Node

FORWARD, HASH, REBALANCE = "forward", "hash", "rebalance"


@dataclass(frozen=True)
class Task:
    id: str            # "window_aggregate[2]"
    node_id: int
    index: int
    parallelism: int


@dataclass(frozen=True)
class PhysicalEdge:
    src_node: int
    src_port: str
    dst_node: int
    dst_input: int
    partition: str        # forward | hash | rebalance
    key: str | None = None


@dataclass
class VirtualNode:
    id: str                              # "vn0"
    tasks: list[str] = field(default_factory=list)
    at: str | None = None                # pinned physical node (from a source's at=)
    backend: str = "process"


@dataclass
class PhysicalPlan:
    job: str
    tasks: dict[str, Task]
    edges: list[PhysicalEdge]
    vnodes: dict[str, VirtualNode]

    def vnode_of(self, task_id: str) -> str:
        for vn in self.vnodes.values():
            if task_id in vn.tasks:
                return vn.id
        raise KeyError(task_id)

    def tasks_of(self, node_id: int) -> list[Task]:
        return sorted((t for t in self.tasks.values() if t.node_id == node_id), key=lambda t: t.index)

    def describe(self, graph: LogicalGraph) -> str:
        lines = []
        for vn in self.vnodes.values():
            pin = f" (pinned to {vn.at})" if vn.at else ""
            lines.append(f"{vn.id}{pin}: {', '.join(vn.tasks)}")
        for e in self.edges:
            if e.partition != FORWARD:
                src, dst = graph.nodes[e.src_node].name, graph.nodes[e.dst_node].name
                lines.append(f"  {src} -> {dst}: {e.partition}{f'({e.key})' if e.key else ''}")
        return "\n".join(lines)


class DisjointSets:
    """Union-find over hashable items (path halving): which items have been joined together."""

    def __init__(self, items) -> None:
        self.parent = {x: x for x in items}

    def find(self, x):
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def build_plan(graph: LogicalGraph) -> PhysicalPlan:
    graph.validate()
    order = graph.topo_order()
    tasks = {t.id: t for node in order for t in _tasks_of(node)}
    edges = _edges(graph, order)
    vnodes = _group(graph, order, tasks, edges)
    return PhysicalPlan(graph.name, tasks, edges, vnodes)


def _tasks_of(node: Node) -> list[Task]:
    par = node.parallelism
    if par < 1:
        raise PipelineError(node.name, f"parallelism must be >= 1, got {par}")
    if par > 1 and (node.is_source or node.is_sink or isinstance(node.op, DeadLetterHub)):
        raise PipelineError(node.name, "sources, sinks and the dead-letter stream run as one task",
                            "set parallelism on the operators between them")
    return [Task(f"{node.name}[{i}]" if par > 1 else node.name, node.id, i, par) for i in range(par)]


def _edges(graph: LogicalGraph, order: list[Node]) -> list[PhysicalEdge]:
    edges = []
    hub = graph.dead_letter_hub()
    for src, port, dst, idx in graph.edges():
        schema = src.out_schemas[port]
        keyed_dst = dst.op.keyed
        if src.parallelism == dst.parallelism and not (keyed_dst and dst.parallelism > 1):
            part, key = FORWARD, None
        elif schema.key is not None:
            part, key = HASH, schema.key
        elif keyed_dst:
            raise PipelineError(dst.name, "a keyed operator with parallelism > 1 needs a keyed input",
                                "call .key_by(...) before it")
        else:
            part, key = REBALANCE, None
        edges.append(PhysicalEdge(src.id, port, dst.id, idx, part, key))
    if hub is not None:  # every operator's dead letters go to the pipeline's dead-letter stream
        for node in order:
            if DEAD in node.out_schemas and node is not hub:
                part = FORWARD if node.parallelism == 1 else REBALANCE
                edges.append(PhysicalEdge(node.id, DEAD, hub.id, 0, part))
    return edges


def _group(graph: LogicalGraph, order: list[Node], tasks: dict[str, Task],
           edges: list[PhysicalEdge]) -> dict[str, VirtualNode]:
    sets = DisjointSets(tasks)
    find = sets.find
    pin_of = {t: graph.nodes[task.node_id].at for t, task in tasks.items()}   # per set (its root): its node, if any

    n_inputs: dict[int, int] = defaultdict(int)
    for e in edges:
        if e.src_port != DEAD:
            n_inputs[e.dst_node] += 1
    for e in edges:
        src, dst = graph.nodes[e.src_node], graph.nodes[e.dst_node]
        if e.partition != FORWARD or e.src_port == DEAD or n_inputs[dst.id] != 1:
            continue
        if src.at and dst.at and src.at != dst.at:
            continue
        if src.backend != dst.backend:  # a VM holds only the operators that asked for one (and vice versa)
            continue
        for s, d in zip(graph_tasks(tasks, src.id), graph_tasks(tasks, dst.id), strict=True):
            a, b = find(s), find(d)
            if pin_of[a] and pin_of[b] and pin_of[a] != pin_of[b]:
                continue        # a source pinned here, a sink pinned there: a channel between them, not a chain
            sets.union(b, a)
            pin_of[a] = pin_of[a] or pin_of[b]
    groups: dict[str, list[str]] = defaultdict(list)
    for node in order:
        for t in graph_tasks(tasks, node.id):
            groups[find(t)].append(t)
    vnodes: dict[str, VirtualNode] = {}
    for i, members in enumerate(groups.values()):
        backends = {graph.nodes[tasks[t].node_id].backend for t in members}
        backend = "microvm" if "microvm" in backends else "process"  # the strictest requirement wins
        vnodes[f"vn{i}"] = VirtualNode(f"vn{i}", members, pin_of[find(members[0])], backend)
    return vnodes


def single_vnode(plan: PhysicalPlan) -> PhysicalPlan:
    """The same tasks and edges with every task in one virtual node: how the local runtime runs a plan."""
    order = [t for vn in plan.vnodes.values() for t in vn.tasks]
    by_node = sorted(order, key=lambda t: (plan.tasks[t].node_id, plan.tasks[t].index))
    return PhysicalPlan(plan.job, plan.tasks, plan.edges, {"local": VirtualNode("local", by_node)})


def graph_tasks(tasks: dict[str, Task], node_id: int) -> list[str]:
    return [t.id for t in sorted(tasks.values(), key=lambda t: t.index) if t.node_id == node_id]


__all__ = ["FORWARD", "HASH", "REBALANCE", "DisjointSets", "PhysicalEdge", "PhysicalPlan", "Task", "VirtualNode",
           "build_plan", "single_vnode"]
