"""Random placement instances, for tests and benchmarks (seeded: the same seed gives the same instance).

* `random_topology`: sites of Pis on a LAN, each joined to a core node by an uplink of random speed, plus a
  few links between sites (a mesh), sensors on some nodes;
* `random_problem`: a solver instance directly (a random DAG of vnodes with traffic and CPU demand, some
  pinned, some needing the microvm backend) on a random topology.

(`bench/common.py` has `random_pipeline`: a real `Pipeline` of about `n_operators` operators over a topology's
sensors, built through the public API, which this layer may not import.)
"""

from __future__ import annotations

import numpy as np

from .cost import Problem, Weights
from .topology import Link, LinkSpec, PhysicalNode, Sensor, Site, Topology

__all__ = ["random_problem", "random_topology"]

_UPLINKS_MBIT = (10, 20, 50, 100, 1000)


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
                   pin_fraction: float = 0.6, load: float = 0.5, backend_fraction: float = 0.1) -> Problem:
    """A random DAG of `n_vnodes` on a random topology of `n_nodes`; `load` ≈ total CPU demand ÷ total cores."""
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
    return Problem([f"vn{i}" for i in range(n_vnodes)], list(routes.names), cpu, cores, allowed, pinned,
                   np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(traffic),
                   np.ones(len(src), dtype=bool), routes.inv_bandwidth, routes.latency_ms, weights or Weights(), why,
                   routes, topo.all_links())
