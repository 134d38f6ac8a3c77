"""Random placement instances, for tests and benchmarks (seeded: the same seed gives the same instance).

* `random_topology`: sites of Pis on a LAN, each joined to a core node by an uplink of random speed, plus a
  few links between sites (a mesh), sensors on some nodes;
* `random_problem`: a solver instance directly (a random DAG of vnodes with traffic and CPU demand, some
  pinned, some needing the microvm backend) on a random topology; with `fit_links=True`, the same instance with
  the links a neutral placement overloads raised until it fits them (feasible by construction);
* `neutral_placement`: that placement (no solver of ours: each vnode next to its heaviest upstream vnode).

(`bench/common.py` has `random_pipeline`: a real `Pipeline` of about `n_operators` operators over a topology's
sensors, built through the public API, which this layer may not import.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .cost import Problem, Weights
from .topology import Link, LinkSpec, PhysicalNode, Routes, Sensor, Site, Topology, compute_routes

__all__ = ["neutral_placement", "random_problem", "random_topology"]

_UPLINKS_MBIT = (10, 20, 50, 100, 1000)
_HEADROOM = 0.8          # fit_links: a raised link carries this fraction of its limit under the neutral placement


def random_topology(rng: np.random.Generator, n_nodes: int, site_size: tuple[int, int] = (2, 5),
                    sensors_per_node: float = 0.5) -> Topology:
    """A campus-like topology: node 0 is the core, the rest in sites joined to it through their first node."""
    nodes = [PhysicalNode("core", cores=8, memory=16 * 2**30, arch="x86_64", backends=("process", "microvm"),
                          site="core")]
    sites, links = [Site("core")], []
    gateways = []
    while len(nodes) < n_nodes:
        s = len(sites)
        size = min(int(rng.integers(site_size[0], site_size[1] + 1)), n_nodes - len(nodes))
        sites.append(Site(f"s{s}", LinkSpec(float(rng.uniform(0.1, 1.0)), 125e6 if rng.random() < 0.7 else 12.5e6)))
        for k in range(size):
            backends = ("process", "microvm") if rng.random() < 0.2 else ("process",)
            nodes.append(PhysicalNode(f"s{s}-n{k}", cores=float(rng.choice([1, 2, 4])), memory=2**30,
                                      backends=backends, site=f"s{s}"))
        gateway = nodes[-size].name
        gateways.append(gateway)
        links.append(Link(gateway, "core", float(rng.uniform(1, 20)), float(rng.choice(_UPLINKS_MBIT)) * 1e6 / 8))
    for _ in range(max(0, len(gateways) // 4)):
        a, b = rng.choice(len(gateways), size=2, replace=False) if len(gateways) > 1 else (0, 0)
        if a != b:
            links.append(Link(gateways[a], gateways[b], float(rng.uniform(2, 30)), 20e6 / 8))
    sensors = [Sensor(f"sensor{i}", n.name, float(rng.choice([10, 100, 1000, 5000])), 40.0)
               for i, n in enumerate(nodes[1:]) if rng.random() < sensors_per_node]
    return Topology("random", nodes, links, sensors, sites)


def random_problem(rng: np.random.Generator, n_vnodes: int, n_nodes: int, weights: Weights | None = None,
                   pin_fraction: float = 0.6, load: float = 0.5, backend_fraction: float = 0.1,
                   fit_links: bool = False) -> Problem:
    """A random DAG of `n_vnodes` on a random topology of `n_nodes`; `load` ≈ total CPU demand ÷ total cores.

    Sources are pinned to random nodes whatever their uplink, so with bandwidth a limit a large instance may
    have no feasible placement at all (a site whose pinned sources send more than its uplink carries:
    `bounds.infeasibility` proves it). `fit_links=True` gives the same instance (the same random draws: same
    vnodes, traffic, pins, cores, latencies) feasible by construction, as a real campus is — its sensors'
    rates fit the links they sit behind: `neutral_placement` (no solver of ours) places it, and every link
    that placement loads beyond `Weights.max_link_utilisation` gets the bandwidth to carry it at 80 % of its
    limit (20 % headroom); the others keep theirs. The links are raised, not the traffic scaled down: the
    campus bought the uplink its sensors need, and the workload (traffic, hence the network term and the
    cost ratios) stays the one the other instances of the seed have. Routes go by latency, so they stay as
    they were; `Routes.inv_bandwidth` is recomputed from the raised links. Raises ValueError when the
    neutral placement does not fit the nodes' cores or memory (pins alone over a node's cores: links cannot
    help there), RuntimeError if it did not end within every link (a bug).

    >>> p = random_problem(np.random.default_rng(0), 30, 8, fit_links=True)
    >>> bool(p.feasible(neutral_placement(p)))
    True
    """
    topo = random_topology(rng, n_nodes, site_size=(1, 3) if n_nodes <= 8 else (2, 5))
    routes = topo.routes()
    n = len(routes.names)
    phys = [topo.node(name) for name in routes.names]
    cores = np.array([p.cores for p in phys])
    n_src = max(1, min(n_vnodes // 3, int(rng.integers(1, 4)) if n_vnodes < 20 else n_vnodes // 10))
    src, dst, traffic = [], [], []
    for v in range(n_src, n_vnodes):
        k = 1 if rng.random() < 0.7 or v < 2 else 2
        for u in rng.choice(v, size=min(k, v), replace=False).tolist():
            src.append(u)
            dst.append(v)
            traffic.append(float(rng.lognormal(np.log(2e5), 1.0)))
    cpu = rng.uniform(0.2, 1.0, n_vnodes)
    cpu *= load * cores.sum() / cpu.sum()
    cpu = np.minimum(cpu, cores.max() * 0.9)
    allowed = np.ones((n_vnodes, n), dtype=bool)
    pinned = np.full(n_vnodes, -1, dtype=np.int64)
    why: dict[int, str] = {}
    microvm = np.array(["microvm" in p.backends for p in phys])
    for v in range(n_vnodes):
        if v < n_src and rng.random() < pin_fraction:
            j = int(rng.integers(n))
            pinned[v] = j
            allowed[v] = False
            allowed[v, j] = True
            cpu[v] = min(cpu[v], cores[j] * 0.5)
        elif rng.random() < backend_fraction:
            allowed[v] = microvm
            why[v] = "needs backend 'microvm'"

    def build(routes: Routes, links: list[Link]) -> Problem:
        return Problem([f"vn{i}" for i in range(n_vnodes)], list(routes.names), cpu, cores, allowed, pinned,
                       np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(traffic),
                       np.ones(len(src), dtype=bool), routes.inv_bandwidth, routes.latency_ms, weights or Weights(),
                       why, routes, links)

    problem = build(routes, topo.all_links())
    return _fit_links(problem, build) if fit_links else problem


def neutral_placement(problem: Problem) -> np.ndarray:
    """A placement made without the solvers, as an operator might by hand: vnodes in topological order, a
    pinned vnode on its node, any other on the node with the most free cores in its heaviest upstream vnode's
    site (that vnode's node and the nodes a site LAN joins it to), else on the nearest node (route latency;
    the core, usually) with room, else — a source with nothing upstream — on the node with the most free
    cores; always a node the vnode may use with room in cores and memory, where one exists. Where that order
    leaves a vnode no room (a few large vnodes on a small instance), the same rules with the largest vnodes
    first (pinned ones before all). Blind to links and to the cost: `random_problem(fit_links=True)` raises
    links until this placement fits them.

    >>> p = random_problem(np.random.default_rng(1), 12, 5)
    >>> a = neutral_placement(p)
    >>> bool(p.allowed[range(12), a].all()), bool(a[p.pinned >= 0].tolist() == p.pinned[p.pinned >= 0].tolist())
    (True, True)
    """
    p, n = problem, problem.n_nodes
    index = {name: j for j, name in enumerate(p.nodes)}
    site = np.eye(n, dtype=bool)
    for lk in p.links:
        if lk.kind == "lan" and lk.a in index and lk.b in index:
            site[index[lk.a], index[lk.b]] = site[index[lk.b], index[lk.a]] = True
    upstream = np.full(p.n_vnodes, -1, dtype=np.int64)       # each vnode's heaviest incoming edge's source
    if len(p.src):
        by = np.lexsort((p.traffic, p.dst))
        last = np.r_[p.dst[by][1:] != p.dst[by][:-1], True]
        upstream[p.dst[by][last]] = p.src[by][last]
    assign = _neutral(p, p.order, site, upstream)
    if _fits_nodes(p, assign):
        return assign
    largest_first = np.lexsort((-p.cpu, p.pinned < 0))
    return _neutral(p, largest_first, site, upstream)


def _neutral(p: Problem, order: np.ndarray, site: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    free, free_mem = p.capacity.astype(float), p.mem_capacity.astype(float)
    assign = np.full(p.n_vnodes, -1, dtype=np.int64)
    for v in order.tolist():
        if p.pinned[v] >= 0:
            j = int(p.pinned[v])
        else:
            room = p.allowed[v] & (free >= p.cpu[v] - 1e-9) & (free_mem >= p.mem[v] - 1e-9)
            up = int(assign[upstream[v]]) if upstream[v] >= 0 else -1     # -1: none, or not placed yet
            if up >= 0 and (room & site[up]).any():
                j = int(np.argmax(np.where(room & site[up], free, -np.inf)))
            elif up >= 0 and room.any():
                cand = np.flatnonzero(room)
                j = int(cand[np.lexsort((-free[cand], p.latency_ms[up, cand]))[0]])
            else:
                j = int(np.argmax(np.where(room if room.any() else p.allowed[v], free, -np.inf)))
        assign[v] = j
        free[j] -= p.cpu[v]
        free_mem[j] -= p.mem[v]
    return assign


def _fits_nodes(p: Problem, assign: np.ndarray) -> bool:
    """Within every node's cores and memory (links aside)."""
    used = np.bincount(assign, weights=p.cpu, minlength=p.n_nodes)
    mem = np.bincount(assign, weights=p.mem, minlength=p.n_nodes)
    return bool((used <= p.capacity + 1e-9).all() and (mem <= p.mem_capacity + 1e-9).all())


def _fit_links(problem: Problem, build: Callable[[Routes, list[Link]], Problem]) -> Problem:
    """`problem` rebuilt with every link the neutral placement overloads raised to carry it at `_HEADROOM` of
    its limit (see `random_problem`)."""
    witness = neutral_placement(problem)
    if not _fits_nodes(problem, witness):
        pins = np.where(problem.pinned >= 0, problem.pinned, problem.n_nodes)
        used = np.bincount(pins, weights=problem.cpu, minlength=problem.n_nodes + 1)[:-1]
        over = np.flatnonzero(used > problem.capacity + 1e-9)
        why = (f"the vnodes pinned to {problem.nodes[over[0]]} need more cores than it has" if len(over) else
               "the neutral placement finds no room within the nodes' cores and memory")
        raise ValueError(f"fit_links: {why}; links cannot fix that: try another seed")
    loads = problem.link_loads(witness)
    raise_ = np.flatnonzero(loads > problem.link_cap)
    if len(raise_):
        util = problem.weights.max_link_utilisation
        links = list(problem.links)
        for i in raise_.tolist():
            links[i] = dataclasses.replace(links[i], bandwidth=float(loads[i]) / (_HEADROOM * util))
        problem = build(compute_routes(list(problem.nodes), links), links)
    if not problem.feasible(witness):
        raise RuntimeError(f"fit_links: the neutral placement still overloads {problem.overload(witness):.3g} "
                           "units after raising links")
    return problem
