"""The cost model: how much data flows where, and what a placement costs.

1. `estimate_flows` gives records/s and bytes/s on every task-to-task edge of a physical plan. It starts
   from estimates — a source's rate from the topology's sensor of the same name (or the sensors attached to
   its `at=` node), else `Estimates.default_rate`; bytes per record from the schema's dtypes (or the sensor's
   `record_bytes`); each operator multiplies its input rate by a selectivity (filters 0.5, windows 0.01, ...);
   a partitioned edge splits a rate evenly over the subtasks — and then takes measured rates where the
   runtime supplies them (`{(src_task, dst_task): bytes_per_s}`).
2. `build_problem` turns flows, pins, backends, node speeds and memory into arrays over virtual nodes ×
   physical nodes, which the solvers and `evaluate` share.
3. `evaluate` prices a placement (vnode → node):

   * **network** = Σ over vnode edges of bytes/s × Σ 1/bandwidth over the links the route crosses — the sum
     of link utilisations (1.0 = one link fully busy);
   * **latency** = the largest sum of link latencies (ms) along any source → sink path (dead letters aside);
   * **load** = the imbalance of CPU use: Σ over nodes of (used / capacity)² minus its least possible value
     (every node equally busy), so 0 = perfectly balanced; "used" is in Raspberry Pi 4 cores and a node's
     capacity is its cores × its speed (a Pi 5 core does about twice a Pi 4 core's work);
   * **moves** (re-placement only) = Σ `move_cost` of the vnodes not on their `current` node.

   total = `Weights.network` × network + `Weights.latency` × latency + `Weights.load` × load + moves. A
   placement is infeasible (total = inf, with the reasons) when a node would use more than
   `Weights.max_utilisation` of its cores or `Weights.max_memory` of its memory, a link would carry more than
   `Weights.max_link_utilisation` of its bandwidth (both directions together), a vnode is on a node without
   its backend or with no live agent, a pin is ignored, or two vnodes that protect each other (`apart`) share
   a failure domain.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import MicrostreamError
from ..core.schema import Schema
from ..graph.logical import DeadLetterHub, LogicalGraph, Node
from ..graph.physical import PhysicalPlan
from ..operators.base import DEAD
from .topology import Routes, Topology, format_bytes

__all__ = ["Cost", "Estimates", "Flows", "Pin", "PlacementError", "Problem", "Weights", "build_problem",
           "cost_of", "estimate_flows", "evaluate", "failure_domains", "find_pins", "node_speed", "record_bytes"]

EdgeKey = tuple[str, str]
OVERLOAD_PENALTY = 1e6   # search objective per unit of overload (cores over, memory or link use over ÷ capacity)
_SMALL = 48              # longest paths over at most this many edges run in plain Python


class PlacementError(MicrostreamError):
    """No placement can satisfy the job's pins and backend requirements on this topology."""


@dataclass(frozen=True)
class Weights:
    """How the cost terms add up, and the capacity limits.

    With the defaults, one fully used link (network 1.0) costs as much as 100 ms on the critical path, or as
    four pairs of equal nodes each with one node full and the other idle (imbalance 1² − 2 × 0.5² = 0.5 per
    pair, × 0.5): data volume first, then latency, then balance. The load term counts only imbalance — the
    part a placement can change — so the unavoidable Σ load² of a busy cluster does not swamp the others."""

    network: float = 1.0          # per unit of link utilisation (Σ bytes/s ÷ bandwidth over links crossed)
    latency: float = 0.01         # per ms of link latency on the critical source → sink path
    load: float = 0.5             # per unit of imbalance: Σ_nodes (used / capacity)² − its least possible value
    max_utilisation: float = 1.0  # a node may use at most this fraction of its cores (× speed)
    max_link_utilisation: float = 1.0   # a link may carry at most this fraction of its bandwidth
    max_memory: float = 0.8       # vnodes may use at most this fraction of a node's memory (the OS needs the rest)


@dataclass
class Estimates:
    """Rates assumed before anything is measured."""

    default_rate: float = 1000.0            # records/s of a source with no matching sensor
    selectivity: dict[str, float] = field(default_factory=lambda: {
        "filter": 0.5, "window_aggregate": 0.01, "window_join": 0.5, "flat_map": 1.0, "map_records": 1.0,
    })                                       # output records per input record, by operator kind (else 1.0)
    side_fraction: float = 0.001            # late records and dead letters, per input record
    str_bytes: float = 16.0                 # estimated size of a string value
    object_bytes: float = 64.0              # estimated size of an object value
    cpu_us: dict[str, float] = field(default_factory=lambda: {
        "filter": 0.2, "map": 0.3, "key_by": 0.1, "union": 0.1, "split": 0.3, "select": 0.2,
        "window_aggregate": 0.6, "window_join": 1.5, "stateful_map": 1.0, "map_records": 5.0, "flat_map": 0.6,
        "read_csv": 3.0, "read_jsonl": 4.0, "poll": 2.0, "from_iterable": 2.0, "from_arrays": 0.1,
        "synthetic": 0.2, "dead_letters": 1.0, "csv": 2.0, "jsonl": 3.0, "print": 5.0, "collect": 0.5,
        "callback": 2.0,
    })                                       # µs of one Raspberry Pi 4 core per record in (sources: per record out)
    default_cpu_us: float = 0.5
    task_overhead: float = 0.01             # cores per task, whatever its rate (its loop, heartbeats, channels)
    vnode_memory: float = 100e6             # bytes per vnode: its host process with numpy and numba loaded
    state_bytes: dict[str, float] = field(default_factory=lambda: {
        "window_aggregate": 2e6, "window_join": 8e6, "stateful_map": 2e6,
    })                                       # bytes of state per task, by operator kind (else 0)
    model_speed: dict[str, float] = field(default_factory=lambda: {
        "zero": 0.1, "zero2": 0.35, "pi3": 0.5, "cm3": 0.5, "pi4": 1.0, "pi400": 1.0, "cm4": 1.0,
        "pi5": 2.0, "cm5": 2.0,
    })                                       # work per core relative to a Pi 4, by a node's `model` label


def node_speed(node, est: Estimates | None = None) -> float:
    """Work per core relative to a Raspberry Pi 4 core: the node's `speed` label if it has one, else its
    `model` label looked up in `Estimates.model_speed`, else 1.

    >>> from microstream.placement.topology import PhysicalNode
    >>> node_speed(PhysicalNode("a", labels={"model": "pi5"})), node_speed(PhysicalNode("b", labels={"speed": "0.5"}))
    (2.0, 0.5)
    """
    est = est or Estimates()
    labels = getattr(node, "labels", {}) or {}
    if "speed" in labels:
        try:
            value = float(labels["speed"])
        except ValueError:
            value = 0.0
        if value > 0 and math.isfinite(value):
            return value
    return float(est.model_speed.get(str(labels.get("model", "")).lower(), 1.0))


# -- flows ----------------------------------------------------------------------------------------------

@dataclass
class Flows:
    """Predicted rates of one physical plan (per second)."""

    records_in: dict[str, float]            # task -> records/s into it (a source: records/s out of it)
    cpu: dict[str, float]                    # task -> cores
    edges: dict[EdgeKey, float]              # (src task, dst task) -> bytes/s, summed over ports
    data_edges: set[EdgeKey]                 # the edges on source → sink paths (not dead letters)
    source_rates: dict[str, tuple[float, str]]  # source operator -> (records/s, where the figure came from)


def record_bytes(schema: Schema, est: Estimates | None = None) -> float:
    """Estimated bytes per record of a schema, from its dtypes.

    >>> from microstream.core.schema import Schema
    >>> record_bytes(Schema.of({"t": "int64", "co2": "float64", "room": "U"}))
    32.0
    """
    est = est or Estimates()
    total = 0.0
    for _, dtype in schema.fields:
        if dtype.kind == "U":
            total += est.str_bytes
        elif dtype.kind == "O":
            total += est.object_bytes
        else:
            total += dtype.itemsize
    return total


def _source_rate(node: Node, topology: Topology | None, est: Estimates) -> tuple[float, float | None, str]:
    """(records/s, record bytes or None, where the figure came from) for a source operator."""
    if topology is not None:
        sensor = topology.sensor(node.name)
        if sensor is not None and sensor.rate:
            return sensor.rate, sensor.record_bytes, f"sensor '{sensor.name}'"
        if node.at:
            found = [s for s in topology.sensors_at(node.at) if s.rate]
            if found:
                size = [s.record_bytes for s in found if s.record_bytes]
                return (sum(s.rate or 0.0 for s in found), (sum(size) / len(size)) if size else None,
                        f"sensors at {node.at}: " + ", ".join(s.name for s in found))
    return est.default_rate, None, "default"


def _logical_order(graph: LogicalGraph, plan: PhysicalPlan) -> list[Node]:
    """Operators in an order where every plan edge (dead letters included) goes forwards."""
    indeg = {nid: 0 for nid in graph.nodes}
    out: dict[int, list[int]] = defaultdict(list)
    for e in plan.edges:
        indeg[e.dst_node] += 1
        out[e.src_node].append(e.dst_node)
    ready = deque(sorted(nid for nid, d in indeg.items() if d == 0))
    order = []
    while ready:
        nid = ready.popleft()
        order.append(graph.nodes[nid])
        for dst in out[nid]:
            indeg[dst] -= 1
            if indeg[dst] == 0:
                ready.append(dst)
    return order


def _port_rates(node: Node, rate_in: float, est: Estimates) -> dict[str, float]:
    """Records/s out of each port of an operator receiving `rate_in` records/s."""
    side = set(node.op.side_ports())
    main = [p for p in node.out_schemas if p not in side and p != DEAD]
    sel = est.selectivity.get(node.op.kind, 1.0)
    rates = {p: est.side_fraction * rate_in for p in node.out_schemas if p in side or p == DEAD}
    for p in main:
        rates[p] = rate_in * sel / len(main)
    return rates


def estimate_flows(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology | None = None,
                   rates: Mapping[EdgeKey, float] | None = None, estimates: Estimates | None = None) -> Flows:
    """Records/s and bytes/s on every task edge: estimates, replaced by `rates` (measured bytes/s per
    (src_task, dst_task), or per (src_vnode, dst_vnode) as the coordinator measures them) where given; CPU
    per task follows the measured bytes."""
    est = estimates or Estimates()
    out_rate: dict[tuple[int, str], float] = {}
    in_rate: dict[int, float] = defaultdict(float)
    sizes: dict[tuple[int, str], float] = {}
    source_rates: dict[str, tuple[float, str]] = {}
    leaving: dict[int, list] = defaultdict(list)
    for e in plan.edges:
        leaving[e.src_node].append(e)
    for node in _logical_order(graph, plan):
        if node.is_source and not isinstance(node.op, DeadLetterHub):
            rate, size, why = _source_rate(node, topology, est)
            source_rates[node.name] = (rate, why)
            in_rate[node.id] = rate
            ports = {p: (rate if p != DEAD else est.side_fraction * rate) for p in node.out_schemas}
        else:
            ports = _port_rates(node, in_rate[node.id], est)
            size = None
        for port, r in ports.items():
            out_rate[(node.id, port)] = r
            sizes[(node.id, port)] = size if (size and port != DEAD) else record_bytes(node.out_schemas[port], est)
        for e in leaving[node.id]:
            in_rate[e.dst_node] += out_rate.get((node.id, e.src_port), 0.0)
    return _task_flows(plan, graph, out_rate, sizes, in_rate, source_rates, rates, est)


def _task_flows(plan: PhysicalPlan, graph: LogicalGraph, out_rate: dict[tuple[int, str], float],
                sizes: dict[tuple[int, str], float], in_rate: dict[int, float],
                source_rates: dict[str, tuple[float, str]], measured: Mapping[EdgeKey, float] | None,
                est: Estimates) -> Flows:
    by_node: dict[int, list[str]] = defaultdict(list)
    for task in sorted(plan.tasks.values(), key=lambda t: (t.node_id, t.index)):
        by_node[task.node_id].append(task.id)
    edges: dict[EdgeKey, float] = defaultdict(float)
    data: set[EdgeKey] = set()
    per_record: dict[EdgeKey, float] = {}
    for e in plan.edges:
        srcs, dsts = by_node[e.src_node], by_node[e.dst_node]
        total = out_rate.get((e.src_node, e.src_port), 0.0) * sizes[(e.src_node, e.src_port)]
        pairs = list(zip(srcs, dsts, strict=True)) if e.partition == "forward" else \
            [(s, d) for s in srcs for d in dsts]
        for pair in pairs:
            edges[pair] += total / len(pairs)
            per_record[pair] = sizes[(e.src_node, e.src_port)]
            if e.src_port != DEAD:
                data.add(pair)
    records = {t: in_rate[task.node_id] / task.parallelism for t, task in plan.tasks.items()}
    if measured:
        measured = _task_pairs(measured, plan, edges)
        _apply_measured(edges, records, per_record, data, measured, plan)
    cpu: dict[str, float] = {}
    for t, task in plan.tasks.items():
        kind = graph.nodes[task.node_id].op.kind
        cpu[t] = est.task_overhead + records[t] * est.cpu_us.get(kind, est.default_cpu_us) * 1e-6
    return Flows(records, cpu, dict(edges), data, source_rates)


def _task_pairs(measured: Mapping[EdgeKey, float], plan: PhysicalPlan,
                edges: Mapping[EdgeKey, float]) -> dict[EdgeKey, float]:
    """Measured rates keyed by task pairs; a (src vnode, dst vnode) pair — what the coordinator measures —
    is shared over the task edges between the two vnodes in proportion to their estimates."""
    out: dict[EdgeKey, float] = {}
    vn_of = {t: vn.id for vn in plan.vnodes.values() for t in vn.tasks}
    between: dict[EdgeKey, list[EdgeKey]] = defaultdict(list)
    for s, d in edges:
        between[(vn_of[s], vn_of[d])].append((s, d))
    for (a, b), rate in measured.items():
        if a in plan.tasks and b in plan.tasks:
            out[(a, b)] = float(rate)
        elif a in plan.vnodes and b in plan.vnodes and between.get((a, b)):
            pairs = between[(a, b)]
            total = sum(edges[k] for k in pairs)
            for k in pairs:
                out[k] = float(rate) * (edges[k] / total if total > 0 else 1.0 / len(pairs))
    return out


def _apply_measured(edges: dict[EdgeKey, float], records: dict[str, float], per_record: dict[EdgeKey, float],
                    data: set[EdgeKey], measured: Mapping[EdgeKey, float], plan: PhysicalPlan) -> None:
    """Replace estimated bytes/s by measured ones; scale each receiving task's records/s to match."""
    est_in: dict[str, float] = defaultdict(float)
    new_in: dict[str, float] = defaultdict(float)
    for (_, d), b in edges.items():
        est_in[d] += b
    for (s, d), b in measured.items():
        if s not in plan.tasks or d not in plan.tasks:
            continue
        if (s, d) not in edges:
            data.add((s, d))
        edges[(s, d)] = float(b)
    for (_, d), b in edges.items():
        new_in[d] += b
    for t in {d for _, d in measured if d in plan.tasks}:
        if est_in[t] > 0:
            records[t] *= new_in[t] / est_in[t]
        else:
            size = next((per_record[k] for k in per_record if k[1] == t), 32.0)
            records[t] = new_in[t] / size


# -- pins -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    node: str
    reason: str               # "pinned: source 'co2' is attached to lib-pi1 (sensor 'co2')"


def find_pins(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology) -> dict[str, Pin]:
    """The vnodes that must go to one node: a source with `at=`, or a source named like a sensor."""
    pins = {}
    for vn in plan.vnodes.values():
        ops = [graph.nodes[plan.tasks[t].node_id] for t in vn.tasks]
        if vn.at is not None:
            who = next((o for o in ops if o.at == vn.at), ops[0])
            pins[vn.id] = Pin(vn.at, f"pinned: source '{who.name}' has at='{vn.at}'")
            continue
        for op in ops:
            sensor = topology.sensor(op.name) if op.is_source else None
            if sensor is not None and sensor.node:
                pins[vn.id] = Pin(sensor.node, f"pinned: source '{op.name}' is attached to {sensor.node} "
                                               f"(sensor '{sensor.name}')")
                break
    return pins


# -- the problem as arrays ----------------------------------------------------------------------------------

@dataclass(init=False)
class Problem:
    """A placement instance as arrays: V virtual nodes, N physical nodes, E directed vnode edges (a DAG).
    `inv_bw` and `latency_ms` are symmetric, as links are bidirectional. CPU demand is in Raspberry Pi 4
    cores; a node's capacity is its cores × `speed`. Optional: `mem` [V] and `memory` [N] bytes (no memory
    limit when absent), `current` [V] node per vnode (-1: none) with `move_cost` [V] charged when a vnode
    is placed elsewhere (re-placement), `domain` [N] failure domain per node with `apart` [P, 2] pairs of
    vnodes that protect each other (a standby and what it stands in for) and may never share one — a hard
    limit: each pair together counts one unit of overload. The optional arrays may be left out of the
    constructor; they are always set afterwards (`__post_init__`)."""

    vnodes: list[str]
    nodes: list[str]
    cpu: np.ndarray               # [V] Pi 4 cores
    cores: np.ndarray             # [N]
    allowed: np.ndarray           # [V, N] bool: backend present, node available, pin respected
    pinned: np.ndarray            # [V] node index or -1
    src: np.ndarray               # [E] vnode index
    dst: np.ndarray               # [E]
    traffic: np.ndarray           # [E] bytes/s
    on_path: np.ndarray           # [E] bool: counts for latency (not dead letters)
    inv_bw: np.ndarray            # [N, N] s/byte summed over the route
    latency_ms: np.ndarray        # [N, N]
    weights: Weights
    why_not: dict[int, str]       # vnode -> why some nodes are not allowed
    routes: Routes | None
    links: list
    speed: np.ndarray             # [N] work per core relative to a Pi 4 (default 1)
    mem: np.ndarray               # [V] bytes (default 0)
    memory: np.ndarray            # [N] bytes (default inf)
    current: np.ndarray           # [V] node index or -1 (default -1)
    move_cost: np.ndarray         # [V] cost (per second, the total's unit) of not staying on `current` (default 0)
    domain: np.ndarray            # [N] failure domain number per node (default: each node its own)
    apart: np.ndarray             # [P, 2] vnode pairs that protect each other: never in one failure domain
    domain_names: list[str]       # [D] the failure domains' names (a node's name where it has no domain)

    def __init__(self, vnodes: list[str], nodes: list[str], cpu: np.ndarray, cores: np.ndarray,
                 allowed: np.ndarray, pinned: np.ndarray, src: np.ndarray, dst: np.ndarray, traffic: np.ndarray,
                 on_path: np.ndarray, inv_bw: np.ndarray, latency_ms: np.ndarray, weights: Weights | None = None,
                 why_not: dict[int, str] | None = None, routes: Routes | None = None, links: list | None = None,
                 speed: np.ndarray | None = None, mem: np.ndarray | None = None, memory: np.ndarray | None = None,
                 current: np.ndarray | None = None, move_cost: np.ndarray | None = None,
                 domain: np.ndarray | None = None, apart: np.ndarray | None = None,
                 domain_names: list[str] | None = None) -> None:
        self.vnodes, self.nodes, self.cpu, self.cores = vnodes, nodes, cpu, cores
        self.allowed, self.pinned, self.src, self.dst = allowed, pinned, src, dst
        self.traffic, self.on_path, self.inv_bw, self.latency_ms = traffic, on_path, inv_bw, latency_ms
        self.weights = Weights() if weights is None else weights
        self.why_not = {} if why_not is None else why_not
        self.routes = routes
        self.links = [] if links is None else links
        n, v = len(nodes), len(vnodes)
        self.speed = np.ones(n) if speed is None else speed
        self.mem = np.zeros(v) if mem is None else mem
        self.memory = np.full(n, np.inf) if memory is None else memory
        self.current = np.full(v, -1, dtype=np.int64) if current is None else current
        self.move_cost = np.zeros(v) if move_cost is None else move_cost
        self.domain = np.arange(n, dtype=np.int64) if domain is None else domain
        self.apart = np.zeros((0, 2), dtype=np.int64) if apart is None else apart
        self.domain_names = list(nodes) if domain_names is None else domain_names
        self._adjacency_cache: list[list[int]] | None = None   # solvers._adjacency: neighbours of each vnode
        self.__post_init__()

    def __post_init__(self) -> None:
        """The derived arrays; called again after a test changes `speed`, `mem`, ... in place."""
        w = self.weights
        self.speed = np.asarray(self.speed, dtype=float)
        self.eff_cores = self.cores * self.speed
        self.capacity = self.eff_cores * w.max_utilisation
        self.cores2 = np.where(self.eff_cores > 0, self.eff_cores, 1.0) ** 2
        hosts = self.eff_cores > 0
        total_cpu = float(self.cpu.sum())
        self.load_floor = total_cpu ** 2 / float(self.cores2[hosts].sum()) if hosts.any() else 0.0
        self.mem = np.asarray(self.mem, dtype=float)
        self.memory = np.asarray(self.memory, dtype=float)
        self.mem_capacity = self.memory * w.max_memory
        self.current = np.asarray(self.current, np.int64)
        self.move_cost = np.asarray(self.move_cost, dtype=float)
        self.domain = np.asarray(self.domain, dtype=np.int64)
        self.apart = np.asarray(self.apart, dtype=np.int64).reshape(-1, 2)
        self._link_incidence()
        self._levels()

    @property
    def n_vnodes(self) -> int:
        return len(self.vnodes)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def _link_incidence(self) -> None:
        """`pair_links[i * N + j]`: the links of the route from node i to node j, as CSR arrays (`link_ptr`,
        `link_idx`); `link_cap`: the bytes/s each link may carry. No links known: no bandwidth limits."""
        n = self.n_nodes
        ptr = np.zeros(n * n + 1, dtype=np.int64)
        idx: list[int] = []
        if self.routes is not None and self.links:
            for i in range(n):
                for j in range(n):
                    ids = self.routes.link_ids[i][j] if i != j else []
                    idx.extend(ids)
                    ptr[i * n + j + 1] = len(idx)
            self.link_bw = np.array([lk.bandwidth for lk in self.links], dtype=float)
        else:
            self.link_bw = np.zeros(0)
        self.link_cap = self.link_bw * self.weights.max_link_utilisation
        self.link_ptr, self.link_idx = ptr, np.asarray(idx, dtype=np.int64)

    def route_links(self, i: int, j: int) -> np.ndarray:
        """Indices of the links on the route from node i to node j."""
        k = i * self.n_nodes + j
        return self.link_idx[self.link_ptr[k]:self.link_ptr[k + 1]]

    def link_loads(self, assign: np.ndarray) -> np.ndarray:
        """[links] bytes/s each link carries (both directions together)."""
        if not len(self.link_cap):
            return np.zeros(0)
        pair = assign[self.src] * self.n_nodes + assign[self.dst]
        start, stop = self.link_ptr[pair], self.link_ptr[pair + 1]
        counts = stop - start
        if not counts.sum():
            return np.zeros(len(self.link_cap))
        rows = np.repeat(np.arange(len(pair)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        ids = self.link_idx[np.repeat(start, counts) + offsets]
        return np.bincount(ids, weights=self.traffic[rows], minlength=len(self.link_cap))

    def _levels(self) -> None:
        """Vnode topological order, and latency edges grouped for level-by-level longest paths."""
        v = self.n_vnodes
        succ: list[list[int]] = [[] for _ in range(v)]
        indeg = np.zeros(v, dtype=np.int64)
        for s, d in zip(self.src.tolist(), self.dst.tolist(), strict=True):
            succ[s].append(d)
            indeg[d] += 1
        level = np.zeros(v, dtype=np.int64)
        ready = deque(i for i in range(v) if indeg[i] == 0)
        order = []
        while ready:
            i = ready.popleft()
            order.append(i)
            for j in succ[i]:
                level[j] = max(level[j], level[i] + 1)
                indeg[j] -= 1
                if indeg[j] == 0:
                    ready.append(j)
        if len(order) != v:
            raise ValueError("the virtual-node graph has a cycle")
        self.order = np.asarray(order, dtype=np.int64)
        self.level = level
        lat = np.flatnonzero(self.on_path)
        self.lat_src, self.lat_dst = self.src[lat], self.dst[lat]
        fwd = np.argsort(level[self.lat_src], kind="stable")
        self._fwd = [(self.lat_src[fwd][m], self.lat_dst[fwd][m])
                     for m in _groups(level[self.lat_src][fwd])]
        back = np.argsort(-level[self.lat_dst], kind="stable")
        self._back = [(self.lat_src[back][m], self.lat_dst[back][m])
                      for m in _groups(-level[self.lat_dst][back])]
        self._fwd_pairs = list(zip(self.lat_src[fwd].tolist(), self.lat_dst[fwd].tolist(), strict=True))
        self._back_pairs = list(zip(self.lat_src[back].tolist(), self.lat_dst[back].tolist(), strict=True))
        self._lat_rows = self.latency_ms.tolist()

    def longest_to(self, assign: np.ndarray, skip: int = -1) -> np.ndarray:
        """[V] longest latency of a path ending at each vnode (edges touching `skip` left out)."""
        if len(self.lat_src) <= _SMALL:
            return np.asarray(self._longest_small(assign.tolist(), skip, forward=True))
        dist = np.zeros(self.n_vnodes)
        for s, d in self._fwd:
            w = self.latency_ms[assign[s], assign[d]]
            if skip >= 0:
                w = np.where((s == skip) | (d == skip), -np.inf, w)
            np.maximum.at(dist, d, dist[s] + w)
        return dist

    def longest_from(self, assign: np.ndarray) -> np.ndarray:
        """[V] longest latency of a path starting at each vnode."""
        if len(self.lat_src) <= _SMALL:
            return np.asarray(self._longest_small(assign.tolist(), -1, forward=False))
        dist = np.zeros(self.n_vnodes)
        for s, d in self._back:
            np.maximum.at(dist, s, dist[d] + self.latency_ms[assign[s], assign[d]])
        return dist

    def _longest_small(self, a: list[int], skip: int, forward: bool) -> list[float]:
        """The same in plain Python: faster for a few dozen edges."""
        lat = self._lat_rows
        dist = [0.0] * self.n_vnodes
        if forward:
            for s, d in self._fwd_pairs:
                if s != skip and d != skip:
                    x = dist[s] + lat[a[s]][a[d]]
                    if x > dist[d]:
                        dist[d] = x
        else:
            for s, d in self._back_pairs:
                x = dist[d] + lat[a[s]][a[d]]
                if x > dist[s]:
                    dist[s] = x
        return dist

    def terms(self, assign: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """(network, latency ms, load imbalance, Pi 4 cores used per node) of a complete assignment."""
        network = float(np.dot(self.traffic, self.inv_bw[assign[self.src], assign[self.dst]]))
        latency = float(self.longest_to(assign).max()) if self.n_vnodes else 0.0
        used = np.bincount(assign, weights=self.cpu, minlength=self.n_nodes)
        return network, latency, self.imbalance(used), used

    def imbalance(self, used: np.ndarray) -> float:
        """Σ (used / capacity)² over nodes, less its least possible value for this demand (≥ 0)."""
        return max(0.0, float(np.sum(used ** 2 / self.cores2)) - self.load_floor)

    def moves(self, assign: np.ndarray) -> float:
        """Σ move_cost of the vnodes placed off their `current` node."""
        away = (self.current >= 0) & (assign != self.current)
        return float(self.move_cost[away].sum())

    def total(self, assign: np.ndarray) -> float:
        """The weighted cost, inf when infeasible."""
        if not self.feasible(assign):
            return math.inf
        network, latency, load, _ = self.terms(assign)
        w = self.weights
        return w.network * network + w.latency * latency + w.load * load + self.moves(assign)

    def overload(self, assign: np.ndarray) -> float:
        """How far a placement exceeds capacities: cores over + memory over ÷ memory + link traffic over ÷
        bandwidth (0 when within every limit)."""
        used = np.bincount(assign, weights=self.cpu, minlength=self.n_nodes)
        over = float(np.maximum(0.0, used - self.capacity).sum())
        if self.mem.any():
            mem = np.bincount(assign, weights=self.mem, minlength=self.n_nodes)
            fin = np.isfinite(self.mem_capacity)
            over += float((np.maximum(0.0, mem - self.mem_capacity)[fin] / np.maximum(self.memory[fin], 1.0)).sum())
        if len(self.link_cap):
            bw = np.maximum(self.link_bw, 1e-12)
            over += float((np.maximum(0.0, self.link_loads(assign) - self.link_cap) / bw).sum())
        return over + self.together(assign)

    def together(self, assign: np.ndarray) -> int:
        """How many of the `apart` pairs (vnodes that protect each other) share a failure domain."""
        if not len(self.apart):
            return 0
        dom = self.domain[assign]
        return int((dom[self.apart[:, 0]] == dom[self.apart[:, 1]]).sum())

    def search_objective(self, assign: np.ndarray) -> float:
        """The cost with capacity limits as penalties (`OVERLOAD_PENALTY` per unit of overload): what the
        solvers minimise while a placement is overloaded. Pins and backends still hold."""
        net, lat, load, _ = self.terms(assign)
        w = self.weights
        return (w.network * net + w.latency * lat + w.load * load + self.moves(assign)
                + OVERLOAD_PENALTY * self.overload(assign))

    def feasible(self, assign: np.ndarray) -> bool:
        if not self.allowed[np.arange(self.n_vnodes), assign].all():
            return False
        return self.overload(assign) <= 1e-9
def _groups(keys: np.ndarray) -> list[slice]:
    """Slices of equal consecutive values of a sorted array."""
    if len(keys) == 0:
        return []
    cuts = np.flatnonzero(np.diff(keys)) + 1
    bounds = [0, *cuts.tolist(), len(keys)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def build_problem(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, flows: Flows,
                  weights: Weights | None = None, estimates: Estimates | None = None,
                  state_bytes: Mapping[str, float] | None = None,
                  apart: Iterable[tuple[str, str]] | None = None) -> Problem:
    """Arrays for the solvers; raises `PlacementError` when a vnode has no node it may go to. A vnode's
    memory is `Estimates.vnode_memory` plus its tasks' state (`Estimates.state_bytes` by operator kind, or
    the measured `state_bytes[vnode]`). `apart`: pairs of vnodes that protect each other, kept in different
    failure domains (`Topology.failure_domain`; a node without one is a domain of its own); `PlacementError`
    when a pair can only be placed together."""
    weights = weights or Weights()
    est = estimates or Estimates()
    routes = topology.routes()
    nodes = routes.names
    vnodes = list(plan.vnodes)
    vindex = {vn: i for i, vn in enumerate(vnodes)}
    task_vn = {t: vindex[vn.id] for vn in plan.vnodes.values() for t in vn.tasks}
    cpu = np.array([sum(flows.cpu.get(t, 0.0) for t in plan.vnodes[vn].tasks) for vn in vnodes])
    mem = np.array([est.vnode_memory + (state_bytes[vn] if state_bytes and vn in state_bytes else
                                        sum(est.state_bytes.get(graph.nodes[plan.tasks[t].node_id].op.kind, 0.0)
                                            for t in plan.vnodes[vn].tasks)) for vn in vnodes])
    phys = [topology.node(n) for n in nodes]
    cores = np.array([p.cores if p.available else 0.0 for p in phys], dtype=float)
    speed = np.array([node_speed(p, est) for p in phys])
    memory = np.array([p.memory for p in phys], dtype=float)
    allowed, pinned, why = _allowed(plan, graph, topology, vnodes, nodes, phys)
    traffic: dict[tuple[int, int], float] = defaultdict(float)
    on_path: dict[tuple[int, int], bool] = defaultdict(bool)
    for (s, d), b in flows.edges.items():
        a, c = task_vn[s], task_vn[d]
        if a != c:
            traffic[(a, c)] += b
            on_path[(a, c)] |= (s, d) in flows.data_edges
    keys = list(traffic)
    domain, names = failure_domains([p.failure_domain for p in phys], nodes)
    pairs = _apart_pairs(apart, vindex, allowed, domain, names, nodes)
    return Problem(
        vnodes, nodes, cpu, cores, allowed, pinned,
        np.array([k[0] for k in keys], dtype=np.int64), np.array([k[1] for k in keys], dtype=np.int64),
        np.array([traffic[k] for k in keys], dtype=float), np.array([on_path[k] for k in keys], dtype=bool),
        routes.inv_bandwidth, routes.latency_ms, weights, why, routes, topology.all_links(),
        speed=speed, mem=mem, memory=memory, domain=domain, apart=pairs, domain_names=names,
    )


def failure_domains(labels: list[str], nodes: list[str]) -> tuple[np.ndarray, list[str]]:
    """([N] domain number per node, the domains' names) from each node's failure domain ("" = the node alone)."""
    names: list[str] = []
    index: dict[str, int] = {}
    out = np.empty(len(nodes), dtype=np.int64)
    for j, (label, node) in enumerate(zip(labels, nodes, strict=True)):
        key = label or f"\0{node}"
        if key not in index:
            index[key] = len(names)
            names.append(label or node)
        out[j] = index[key]
    return out, names


def _apart_pairs(apart: Iterable[tuple[str, str]] | None, vindex: Mapping[str, int], allowed: np.ndarray,
                 domain: np.ndarray, names: list[str], nodes: list[str]) -> np.ndarray:
    """[P, 2] vnode indices; `PlacementError` naming the fix when a pair is unknown or can only be together."""
    pairs, problems = [], []
    for a, b in apart or ():
        missing = [v for v in (a, b) if v not in vindex]
        if missing:
            problems.append(f"apart ({a}, {b}): no virtual node {', '.join(map(repr, missing))} in this job "
                            f"(it has {', '.join(list(vindex)[:8])}{'...' if len(vindex) > 8 else ''})")
            continue
        i, j = vindex[a], vindex[b]
        if i == j:
            problems.append(f"apart ({a}, {b}): a virtual node cannot be kept apart from itself")
            continue
        da, db = set(domain[allowed[i]].tolist()), set(domain[allowed[j]].tolist())
        if len(da | db) == 1:
            where = names[next(iter(da))]
            hosts = [nodes[k] for k in np.flatnonzero(allowed[i] | allowed[j]).tolist()]
            problems.append(f"{a} and {b} protect each other, so they must run in different failure domains, but "
                            f"both may only run in '{where}' ({', '.join(hosts)}): unpin one of them, give another "
                            f"node its backend, or set the nodes' domain = \"...\" in the topology")
            continue
        pairs.append((i, j))
    if problems:
        raise PlacementError("cannot place the job:\n  " + "\n  ".join(problems))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _allowed(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, vnodes: list[str], nodes: list[str],
             phys: list) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    pins = find_pins(plan, graph, topology)
    allowed = np.ones((len(vnodes), len(nodes)), dtype=bool)
    pinned = np.full(len(vnodes), -1, dtype=np.int64)
    available = np.array([p.available for p in phys])
    problems, why = [], {}
    for i, vn_id in enumerate(vnodes):
        vn = plan.vnodes[vn_id]
        has = np.array([vn.backend in p.backends for p in phys])
        allowed[i] = has & available
        if not has.all():
            why[i] = f"needs backend '{vn.backend}'"
        pin = pins.get(vn_id)
        if pin is not None:
            if pin.node not in nodes:
                problems.append(f"{vn_id} ({', '.join(vn.tasks)}): {pin.reason}, but the topology has no node "
                                f"'{pin.node}' (nodes: {', '.join(nodes)}): fix the name or add the node")
                continue
            j = nodes.index(pin.node)
            if not available[j]:
                problems.append(f"{vn_id} ({', '.join(vn.tasks)}): {pin.reason}, but {pin.node} has no live agent: "
                                f"start `microstream agent --name {pin.node}` there")
            elif not has[j]:
                problems.append(f"{vn_id} ({', '.join(vn.tasks)}): {pin.reason}, but {pin.node} lacks backend "
                                f"'{vn.backend}' (it has {list(phys[j].backends)})")
            allowed[i] = False
            allowed[i, j] = True
            pinned[i] = j
        elif not allowed[i].any():
            problems.append(f"{vn_id} ({', '.join(vn.tasks)}) needs backend '{vn.backend}', which no available node "
                            f"has: add it to a node's backends, or run the job with the 'process' backend")
    if problems:
        raise PlacementError("cannot place the job:\n  " + "\n  ".join(problems))
    return allowed, pinned, why


# -- pricing a placement ----------------------------------------------------------------------------------

@dataclass
class Cost:
    """A placement's cost and where it comes from."""

    total: float
    network: float                       # Σ link utilisation
    latency_ms: float                    # critical source → sink path
    load: float                          # imbalance: Σ (used / capacity)² less its least possible value
    feasible: bool = True
    reasons: list[str] = field(default_factory=list)
    node_load: dict[str, float] = field(default_factory=dict)      # cores used
    link_traffic: dict[str, float] = field(default_factory=dict)   # "a–b" -> bytes/s
    link_utilisation: dict[str, float] = field(default_factory=dict)
    cross_bytes: float = 0.0             # bytes/s sent between nodes (each edge counted once)
    critical_path: list[str] = field(default_factory=list)         # vnodes
    warnings: list[str] = field(default_factory=list)
    node_memory: dict[str, float] = field(default_factory=dict)    # bytes
    moves: float = 0.0                   # Σ move_cost of the vnodes not on their current node

    def describe(self, weights: Weights | None = None) -> str:
        w = weights or Weights()
        if not self.feasible:
            return "infeasible: " + "; ".join(self.reasons)
        moves = f" + moves {self.moves:.3g}" if self.moves else ""
        return (f"{self.total:.4g} = network {self.network:.3g} × {w.network:g} + latency {self.latency_ms:.3g} ms × "
                f"{w.latency:g} + load imbalance {self.load:.3g} × {w.load:g}{moves}")


def evaluate(problem: Problem, assignment: Mapping[str, str] | np.ndarray) -> Cost:
    """The cost of a placement, with its breakdown (traffic per link, load per node, critical path)."""
    assign = as_array(problem, assignment)
    network, latency, load, used = problem.terms(assign)
    w = problem.weights
    reasons = _infeasibility(problem, assign, used)
    moves = problem.moves(assign)
    total = w.network * network + w.latency * latency + w.load * load + moves if not reasons else math.inf
    mem = np.bincount(assign, weights=problem.mem, minlength=problem.n_nodes)
    cost = Cost(total, network, latency, load, not reasons, reasons,
                {n: float(u / s) for n, u, s in zip(problem.nodes, used, problem.speed, strict=True) if u > 0},
                node_memory={n: float(m) for n, m in zip(problem.nodes, mem, strict=True) if m > 0}, moves=moves)
    _link_details(problem, assign, cost)
    if not cost.feasible:
        cost.total = math.inf
    cost.critical_path = critical_path(problem, assign)
    return cost


def as_array(problem: Problem, assignment: Mapping[str, str] | np.ndarray) -> np.ndarray:
    if isinstance(assignment, np.ndarray):
        return assignment.astype(np.int64)
    index = {n: i for i, n in enumerate(problem.nodes)}
    missing = [v for v in problem.vnodes if assignment.get(v) not in index]
    if missing:
        raise PlacementError(f"the placement leaves {missing} unplaced or on unknown nodes")
    return np.array([index[assignment[v]] for v in problem.vnodes], dtype=np.int64)


def _infeasibility(problem: Problem, assign: np.ndarray, used: np.ndarray) -> list[str]:
    reasons = []
    for i in np.flatnonzero(~problem.allowed[np.arange(problem.n_vnodes), assign]):
        node = problem.nodes[assign[i]]
        if problem.pinned[i] >= 0:
            reasons.append(f"{problem.vnodes[i]} is pinned to {problem.nodes[problem.pinned[i]]}, not {node}")
        else:
            why = problem.why_not.get(int(i), "is not allowed there")
            reasons.append(f"{problem.vnodes[i]} {why}: {node} cannot host it")
    speed = problem.speed
    for j in np.flatnonzero(used > problem.capacity + 1e-9):
        reasons.append(f"{problem.nodes[j]} is overloaded: {used[j] / speed[j]:.2f} cores needed, "
                       f"{problem.capacity[j] / speed[j]:.2f} available")
    mem = np.bincount(assign, weights=problem.mem, minlength=problem.n_nodes)
    dom = problem.domain[assign]
    for a, b in problem.apart.tolist():
        if dom[a] == dom[b]:
            where = problem.nodes[assign[a]] if assign[a] == assign[b] else \
                f"{problem.nodes[assign[a]]} and {problem.nodes[assign[b]]}"
            reasons.append(f"{problem.vnodes[a]} and {problem.vnodes[b]} protect each other but share failure "
                           f"domain '{problem.domain_names[dom[a]]}' ({where})")
    for j in np.flatnonzero(mem > problem.mem_capacity * (1 + 1e-9)):
        reasons.append(f"{problem.nodes[j]} is out of memory: {format_bytes(mem[j], per_s=False)} needed, "
                       f"{format_bytes(problem.mem_capacity[j], per_s=False)} available "
                       f"({problem.weights.max_memory:.0%} of {format_bytes(problem.memory[j], per_s=False)})")
    return reasons


def _link_details(problem: Problem, assign: np.ndarray, cost: Cost) -> None:
    if problem.routes is None:
        return
    traffic: dict[str, float] = defaultdict(float)
    for s, d, b in zip(problem.src.tolist(), problem.dst.tolist(), problem.traffic.tolist(), strict=True):
        a, c = int(assign[s]), int(assign[d])
        if a == c:
            continue
        cost.cross_bytes += b
        for li in problem.routes.link_ids[a][c]:
            traffic[problem.links[li].label] += b
    bw = {lk.label: lk.bandwidth for lk in problem.links}
    cost.link_traffic = dict(sorted(traffic.items(), key=lambda kv: -kv[1]))
    cost.link_utilisation = {k: v / bw[k] for k, v in cost.link_traffic.items()}
    limit = problem.weights.max_link_utilisation
    for k, u in cost.link_utilisation.items():
        if u > limit * (1 + 1e-9) and len(problem.link_cap):
            cost.reasons.append(f"link {k} would carry {format_bytes(cost.link_traffic[k])}, {u:.0%} of its "
                                f"bandwidth (at most {limit:.0%})")
            cost.feasible = False


def critical_path(problem: Problem, assign: np.ndarray) -> list[str]:
    """The vnodes of the source → sink path with the most link latency (ties: the longest in edges)."""
    if not problem.n_vnodes:
        return []
    dist = problem.longest_to(assign)
    end = int(np.argmax(dist))
    path = [end]
    while True:
        cur = path[-1]
        into = np.flatnonzero(problem.lat_dst == cur)
        best = None
        for e in into:
            s = int(problem.lat_src[e])
            if abs(dist[s] + problem.latency_ms[assign[s], assign[cur]] - dist[cur]) < 1e-9:
                best = s
                break
        if best is None:
            break
        path.append(best)
    return [problem.vnodes[i] for i in reversed(path)]


def cost_of(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology, assignment: Mapping[str, str],
            rates: Mapping[EdgeKey, float] | None = None, weights: Weights | None = None,
            estimates: Estimates | None = None) -> Cost:
    """Price any placement of a plan (e.g. the coordinator's round robin) with the same model."""
    flows = estimate_flows(plan, graph, topology, rates, estimates)
    return evaluate(build_problem(plan, graph, topology, flows, weights, estimates), assignment)
