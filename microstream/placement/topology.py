"""The physical world a job is placed on: machines, the links between them and the sensors attached to them.

A `Topology` is read from a TOML file (`Topology.load`), built from what a live cluster's agents report
(`Topology.from_agents`), or both merged. `check()` lists what is wrong with it, each message naming the item
and the fix. `routes()` gives all-pairs shortest paths (by latency, fewest hops on ties) as matrices the cost
model and the solvers index by node number: latency, Σ 1/bandwidth along the route, bottleneck bandwidth and
the sequence of links.

File format (see docs/placement.md)::

    name = "campus"
    [lan]                                   # the link assumed between live agents the file does not join
    latency_ms = 0.5
    bandwidth = "1Gbit"

    [[site]]                                # nodes of a site are joined pairwise by its LAN
    name = "library"
    lan = { latency_ms = 0.3, bandwidth = "1Gbit" }

    [[node]]
    name = "lib-pi1"
    cores = 4
    memory = "4GiB"
    arch = "aarch64"
    backends = ["process"]
    site = "library"
    labels = { room = "basement" }
    domain = "lib-switch"                   # failure domain (optional; else a domain/switch/rack label, else site)

    [[link]]                                # bidirectional
    a = "lib-pi1"
    b = "core"
    latency_ms = 4
    bandwidth = "10Mbit"

    [[sensor]]
    name = "library-co2"                    # a source of this name is pinned to `node`
    node = "lib-pi1"
    rate = 50                               # records/s (optional)
    record_bytes = 40                       # (optional)
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MicrostreamError, suggest

__all__ = ["DEFAULT_LAN", "DOMAIN_LABELS", "Link", "LinkSpec", "PhysicalNode", "Routes", "Sensor", "Topology",
           "TopologyError", "failure_domain", "format_bandwidth", "format_bytes", "format_share", "parse_bandwidth",
           "parse_memory"]


class TopologyError(MicrostreamError):
    """A topology file cannot be read or used; the message lists every problem and its fix."""


# -- units ----------------------------------------------------------------------------------------------

_PREFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_MEM_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
              "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")


def _split_quantity(value: Any) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a string, got {value!r}")
    if isinstance(value, int | float):
        return float(value), ""
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"cannot read {value!r}")
    return float(m.group(1)), m.group(2)


def parse_bandwidth(value: Any) -> float:
    """Bytes per second from "100Mbit", "1 Gbit/s", "54Mbps", "12.5MB/s" (capital B: bytes) or a bare number
    of bits/s.

    >>> parse_bandwidth("100Mbit"), parse_bandwidth("1Gbit/s"), parse_bandwidth("2MB/s"), parse_bandwidth(8000)
    (12500000.0, 125000000.0, 2000000.0, 1000.0)
    """
    number, unit = _split_quantity(value)
    u = unit[:-2] if unit.endswith("/s") or unit.endswith("ps") else unit
    if u.lower().endswith("bit"):
        prefix, per_unit = u[:-3], 1 / 8
    elif u.endswith("B"):
        prefix, per_unit = u[:-1], 1.0
    elif u.endswith("b"):
        prefix, per_unit = u[:-1], 1 / 8
    else:
        prefix, per_unit = u, 1 / 8
    if prefix.lower() not in _PREFIXES:
        raise ValueError(f"unknown bandwidth unit {unit!r} in {value!r}; use e.g. \"100Mbit\", \"1Gbit\" or \"2MB/s\"")
    return number * _PREFIXES[prefix.lower()] * per_unit


def parse_memory(value: Any) -> float:
    """Bytes from "4GiB", "512MiB", "2GB" or a bare number of bytes.

    >>> parse_memory("4GiB"), parse_memory("512 MiB"), parse_memory(1000)
    (4294967296.0, 536870912.0, 1000.0)
    """
    number, unit = _split_quantity(value)
    if unit.lower() not in _MEM_UNITS:
        raise ValueError(f"unknown memory unit {unit!r} in {value!r}; use e.g. \"4GiB\" or \"512MiB\"")
    return number * _MEM_UNITS[unit.lower()]


def format_share(x: float) -> str:
    """A fraction as a percentage that does not read "0.00%" when it is not 0.

    >>> format_share(0.0312), format_share(0.0000123), format_share(0.0)
    ('3.12%', '0.001%', '0.00%')
    """
    return f"{x:.2%}" if x >= 1e-4 or x <= 0 else f"{100 * x:.1g}%"


def format_bytes(n: float, per_s: bool = True) -> str:
    """ "1.2 MB/s" style (decimal units, as network rates are usually quoted).

    >>> format_bytes(1_234_000), format_bytes(512), format_bytes(0.04), format_bytes(0)
    ('1.23 MB/s', '512 B/s', '0.04 B/s', '0 B/s')
    """
    suffix = "/s" if per_s else ""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}{suffix}"
    if 0 < abs(n) < 1:                     # a trickle (dead letters, hourly alerts) is not "0 B/s"
        return f"{n:.1g} B{suffix}"
    return f"{n:.0f} B{suffix}"


def format_bandwidth(bytes_per_s: float) -> str:
    """Link speeds as people quote them, in bits/s.

    >>> format_bandwidth(12_500_000), format_bandwidth(125_000_000)
    ('100 Mbit/s', '1 Gbit/s')
    """
    bits = bytes_per_s * 8
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= size:
            return f"{bits / size:.3g} {unit}"
    return f"{bits:.0f} bit/s"


# -- items ----------------------------------------------------------------------------------------------

DOMAIN_LABELS = ("domain", "switch", "rack")    # labels naming a failure domain, the first present wins


def failure_domain(labels: Mapping[str, str] | None = None, site: str = "", domain: str = "") -> str:
    """The failure domain of a machine — what can fail with it (a switch, a rack, a power circuit): `domain`
    (a node's `domain = ...` key), else its `domain`, `switch` or `rack` label, else its site (a site's nodes
    share a LAN), else "" (the machine alone).

    >>> failure_domain({"switch": "sw2"}, site="labs"), failure_domain({}, site="labs"), failure_domain()
    ('sw2', 'labs', '')
    """
    if domain:
        return domain
    labels = labels or {}
    for key in DOMAIN_LABELS:
        if labels.get(key):
            return str(labels[key])
    return site or str(labels.get("site", "") or "")


@dataclass
class PhysicalNode:
    """A machine that can run virtual nodes (`available=False`: a router, or a machine with no live agent)."""

    name: str
    cores: float = 1.0
    memory: float = 1 * 2**30           # bytes
    arch: str = "aarch64"
    backends: tuple[str, ...] = ("process",)
    site: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    available: bool = True
    domain: str = ""                    # failure domain; "" = from labels or site (`failure_domain`)

    def describe(self) -> str:
        return f"{self.name} ({self.site})" if self.site else self.name

    @property
    def failure_domain(self) -> str:
        """What can fail with this machine (see `failure_domain`); "" = the machine alone."""
        return failure_domain(self.labels, self.site, self.domain)


@dataclass(frozen=True)
class LinkSpec:
    """Latency and bandwidth of a kind of link (a site's LAN, the default between live agents)."""

    latency_ms: float = 0.5
    bandwidth: float = 125e6             # bytes/s


DEFAULT_LAN = LinkSpec(0.5, 125e6)       # 1 Gbit/s Ethernet


@dataclass(frozen=True)
class Link:
    """A bidirectional link between two nodes."""

    a: str
    b: str
    latency_ms: float
    bandwidth: float                     # bytes/s
    kind: str = "link"                   # "link" (from the file), "lan" (a site's LAN), "default"

    def describe(self) -> str:
        return f"{self.a}–{self.b} ({format_bandwidth(self.bandwidth)}, {self.latency_ms:g} ms)"

    @property
    def label(self) -> str:
        return f"{self.a}–{self.b}"


@dataclass(frozen=True)
class Sensor:
    """A sensor attached to a node; a source of the same name is pinned there and takes its rate."""

    name: str
    node: str | None
    rate: float | None = None            # records/s
    record_bytes: float | None = None


@dataclass(frozen=True)
class Site:
    name: str
    lan: LinkSpec | None = None


# -- routes ---------------------------------------------------------------------------------------------

@dataclass
class Routes:
    """All-pairs shortest routes (by latency, then fewest hops), as matrices indexed by node number."""

    names: list[str]
    index: dict[str, int]
    latency_ms: np.ndarray               # [N, N] sum of link latencies; inf when unreachable
    inv_bandwidth: np.ndarray            # [N, N] Σ 1/bandwidth (s/byte) along the route: bytes/s × this = link use
    bottleneck: np.ndarray               # [N, N] smallest bandwidth on the route (bytes/s); inf on the diagonal
    hops: np.ndarray                     # [N, N] int
    link_ids: list[list[list[int]]]      # [i][j] -> indices into Topology.all_links() along the route

    def path(self, a: str, b: str) -> list[int]:
        """Indices of the links from node `a` to node `b` (empty when a == b)."""
        return self.link_ids[self.index[a]][self.index[b]]


def _floyd(n: int, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shortest distances and next-hop matrix (numpy Floyd–Warshall; -1 where unreachable)."""
    dist = weight.copy()
    nxt = np.where(np.isfinite(weight), np.arange(n)[None, :], -1)
    np.fill_diagonal(dist, 0.0)
    np.fill_diagonal(nxt, np.arange(n))
    for k in range(n):
        cand = dist[:, k:k + 1] + dist[k:k + 1, :]
        better = cand < dist
        if better.any():
            dist = np.where(better, cand, dist)
            nxt = np.where(better, nxt[:, k:k + 1], nxt)
    return dist, nxt


def compute_routes(names: list[str], links: list[Link]) -> Routes:
    """Shortest routes over `links`; between two nodes joined by several links, the fastest one is used."""
    n = len(names)
    index = {name: i for i, name in enumerate(names)}
    hop = 1e-6                                               # per-hop tie breaker: fewer hops on equal latency
    weight = np.full((n, n), np.inf)
    best: dict[tuple[int, int], int] = {}
    for li, link in enumerate(links):
        if link.a not in index or link.b not in index or link.a == link.b:
            continue
        i, j = index[link.a], index[link.b]
        w = link.latency_ms + hop
        cur = best.get((i, j))
        if cur is None or (w, -link.bandwidth) < (weight[i, j], -links[cur].bandwidth):
            weight[i, j] = weight[j, i] = w
            best[(i, j)] = best[(j, i)] = li
    _, nxt = _floyd(n, weight)
    lat = np.full((n, n), np.inf)
    inv = np.full((n, n), np.inf)
    neck = np.full((n, n), np.inf)
    hops = np.zeros((n, n), dtype=np.int64)
    ids: list[list[list[int]]] = [[[] for _ in range(n)] for _ in range(n)]
    for i in range(n):
        lat[i, i] = inv[i, i] = 0.0
        for j in range(i + 1, n):
            route = _walk(nxt, i, j, best)
            if route is None:
                continue
            ids[i][j] = route
            ids[j][i] = route[::-1]
            lat[i, j] = lat[j, i] = sum(links[li].latency_ms for li in route)
            inv[i, j] = inv[j, i] = sum(1.0 / links[li].bandwidth for li in route)
            neck[i, j] = neck[j, i] = min(links[li].bandwidth for li in route)
            hops[i, j] = hops[j, i] = len(route)
    return Routes(list(names), index, lat, inv, neck, hops, ids)


def _walk(nxt: np.ndarray, i: int, j: int, best: dict[tuple[int, int], int]) -> list[int] | None:
    if nxt[i, j] < 0:
        return None
    route, cur = [], i
    while cur != j:
        step = int(nxt[cur, j])
        route.append(best[(cur, step)])
        cur = step
    return route


# -- the topology ---------------------------------------------------------------------------------------

_NODE_KEYS = {"name", "cores", "memory", "arch", "backends", "site", "labels", "available", "domain"}
_LINK_KEYS = {"a", "b", "latency_ms", "bandwidth"}
_SENSOR_KEYS = {"name", "node", "rate", "record_bytes"}
_SITE_KEYS = {"name", "lan"}
_TOP_KEYS = {"name", "lan", "site", "node", "link", "sensor"}


@dataclass
class Topology:
    """Physical nodes, links and sensors. Lists keep what the file said (duplicates included) so `check()`
    can report it; lookups use the first item of each name."""

    name: str = "topology"
    nodes: list[PhysicalNode] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    sensors: list[Sensor] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    lan: LinkSpec = DEFAULT_LAN
    mesh: bool = False                   # join every pair of nodes not otherwise linked by `lan`
    source: str = ""                     # file it came from, for messages
    load_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _routes: Routes | None = field(default=None, repr=False, compare=False)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Topology:
        """Read a TOML topology. Syntax errors raise `TopologyError`; bad values are kept in `load_errors`
        and reported by `check()`, together with every other problem."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TopologyError(f"no such topology file: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> Topology:
        """Build from parsed TOML (the same tables as the file)."""
        errors: list[str] = []
        _unknown_keys(data, _TOP_KEYS, "the file", errors)
        topo = cls(name=str(data.get("name", Path(source).stem if source else "topology")), source=source)
        if "lan" in data:
            topo.lan = _link_spec(data["lan"], "[lan]", errors) or DEFAULT_LAN
        topo.sites = [_site(d, i, errors) for i, d in enumerate(_tables(data, "site", errors))]
        topo.nodes = [_node(d, i, errors) for i, d in enumerate(_tables(data, "node", errors))]
        topo.links = [_link(d, i, errors) for i, d in enumerate(_tables(data, "link", errors))]
        topo.sensors = [_sensor(d, i, errors) for i, d in enumerate(_tables(data, "sensor", errors))]
        topo.load_errors = errors
        return topo

    @classmethod
    def from_agents(cls, agents: Mapping[str, Mapping[str, Any]], base: Topology | None = None,
                    lan: LinkSpec | None = None) -> Topology:
        """The topology of a live cluster, from `Coordinator.status()["agents"]` (or agents' capabilities):
        `{name: {"up", "cores", "memory", "arch", "backends", "labels"}}`.

        Without `base`, every pair of live agents is joined by a default LAN link (`lan`, 1 Gbit/s, 0.5 ms).
        With `base` (e.g. a TOML file), its links, sites and sensors are kept; each agent's reported cores,
        memory, arch and backends replace the file's; nodes of the file with no live agent stay for routing
        but host nothing; an agent the file does not know joins its `site` label's LAN, or else is assumed
        to be on a LAN with every node (a warning says so)."""
        live = {name: info for name, info in agents.items() if info.get("up", True)}
        topo = cls(name=base.name if base else "cluster", lan=lan or (base.lan if base else DEFAULT_LAN),
                   source=base.source if base else "", mesh=base is None)
        if base is not None:
            topo.sites, topo.sensors = list(base.sites), list(base.sensors)
            topo.links, topo.load_errors = list(base.links), list(base.load_errors)
            topo.warnings = list(base.warnings)
        known = {n.name: n for n in base.nodes} if base else {}
        site_names = {s.name for s in topo.sites}
        for node in known.values():
            info = live.get(node.name)
            topo.nodes.append(_merge_agent(node, info) if info is not None else _replace_node(node, available=False))
        for name, info in live.items():
            if name in known:
                continue
            labels = {str(k): str(v) for k, v in (info.get("labels") or {}).items()}
            node = _merge_agent(PhysicalNode(name, site=labels.get("site", "")), info)
            topo.nodes.append(node)
            if base is not None and node.site not in site_names:
                topo.warnings.append(f"agent '{name}' is not in {base.source or 'the topology'}: assumed on a "
                                     f"LAN with every node; add it as a [[node]] (with links) for accurate costs")
                topo.links += [Link(name, other.name, topo.lan.latency_ms, topo.lan.bandwidth, "default")
                               for other in topo.nodes if other.name != name]
        return topo

    # -- lookups --------------------------------------------------------------------------------------------
    def node(self, name: str) -> PhysicalNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.nodes))

    def sensor(self, name: str) -> Sensor | None:
        return next((s for s in self.sensors if s.name == name), None)

    def sensors_at(self, node: str) -> list[Sensor]:
        return [s for s in self.sensors if s.node == node]

    def failure_domain(self, node: str) -> str:
        """The failure domain of a node (`PhysicalNode.failure_domain`); "" for an unknown node."""
        try:
            return self.node(node).failure_domain
        except KeyError:
            return ""

    def site_of(self, node: str) -> str:
        try:
            return self.node(node).site
        except KeyError:
            return ""

    def all_links(self) -> list[Link]:
        """The file's links, plus each site's LAN between its nodes, plus the default mesh if enabled."""
        links = list(self.links)
        joined = {frozenset((lk.a, lk.b)) for lk in links}
        lans = {s.name: s.lan for s in self.sites if s.lan is not None}
        names = self.node_names()
        site_of = {n.name: n.site for n in reversed(self.nodes)}     # as `site_of`: the first node of a name
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pair = frozenset((a, b))
                if pair in joined:
                    continue
                site = site_of[a]
                if site and site == site_of[b] and site in lans:
                    spec = lans[site]
                    links.append(Link(a, b, spec.latency_ms, spec.bandwidth, "lan"))
                elif self.mesh:
                    links.append(Link(a, b, self.lan.latency_ms, self.lan.bandwidth, "default"))
        return links

    def routes(self) -> Routes:
        """All-pairs shortest routes, computed once and cached (call `invalidate()` after editing)."""
        if self._routes is None:
            self._routes = compute_routes(self.node_names(), self.all_links())
        return self._routes

    def invalidate(self) -> None:
        self._routes = None

    def path(self, a: str, b: str) -> tuple[list[Link], float, float]:
        """(links along the route, total latency in ms, bottleneck bandwidth in bytes/s) from a to b."""
        routes = self.routes()
        i, j = routes.index[a], routes.index[b]
        links = self.all_links()
        return [links[k] for k in routes.link_ids[i][j]], float(routes.latency_ms[i, j]), float(routes.bottleneck[i, j])

    def link_cost(self, reference: float | None = None) -> Callable[[str, str], float]:
        """A function (node a, node b) -> the cost of one byte sent from a to b, in bytes on a `reference`
        link (default: this topology's LAN, 1 Gbit/s): Σ reference/bandwidth over the route's links. 0 on the
        same node; 1 between two nodes on one LAN hop; 100 for a 10 Mbit/s link against 1 Gbit/s; a node
        the topology does not know costs 1. For the coordinator's re-placement policy."""
        ref = reference or self.lan.bandwidth
        routes = self.routes()

        def cost(a: str, b: str) -> float:
            if a == b:
                return 0.0
            i, j = routes.index.get(a), routes.index.get(b)
            if i is None or j is None or not math.isfinite(routes.inv_bandwidth[i, j]):
                return 1.0
            return float(routes.inv_bandwidth[i, j] * ref)

        return cost

    # -- checking ---------------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Every problem, each naming the item and the fix; an empty list means the topology is usable."""
        errors = list(self.load_errors)
        errors += self._check_names()
        errors += self._check_capacities()
        errors += self._check_links()
        errors += self._check_sensors()
        errors += self._check_connected()
        return errors

    def _check_names(self) -> list[str]:
        errors = []
        for what, names in (("node", [n.name for n in self.nodes]), ("sensor", [s.name for s in self.sensors]),
                            ("site", [s.name for s in self.sites])):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    errors.append(f"{what} '{name}' is defined twice: give each {what} a unique name")
                seen.add(name)
        sites = {s.name for s in self.sites}
        for node in self.nodes:
            if sites and node.site and node.site not in sites:
                close = suggest(node.site, sorted(sites))
                hint = f" (did you mean '{close}'?)" if close else ""
                errors.append(f"node '{node.name}': site '{node.site}' is not a [[site]]{hint}: add it, or fix the "
                              "name (its nodes are not joined by a LAN otherwise)")
        return errors

    def _check_capacities(self) -> list[str]:
        errors = []
        for node in self.nodes:
            if not node.available:
                continue
            if not node.cores > 0 and not math.isnan(node.cores):
                errors.append(f"node '{node.name}': cores must be positive, got {node.cores:g}: set cores = 1 or "
                              "more (or available = false for a router)")
            if not node.memory > 0 and not math.isnan(node.memory):
                errors.append(f"node '{node.name}': memory must be positive, got {node.memory:g}: "
                              "set e.g. memory = \"1GiB\"")
            if not node.backends:
                errors.append(f"node '{node.name}': no backends: set backends = [\"process\"]")
        return errors

    def _check_links(self) -> list[str]:
        errors = []
        names = self.node_names()
        for link in self.links:
            for end in (link.a, link.b):
                if end not in names:
                    close = suggest(end, names)
                    hint = f"did you mean '{close}'? " if close else ""
                    errors.append(f"link {link.a}–{link.b}: unknown node '{end}': {hint}define it as a [[node]] "
                                  "or fix the name")
            if link.a == link.b:
                errors.append(f"link {link.a}–{link.b}: joins a node to itself: remove it")
            if not link.bandwidth > 0 and not math.isnan(link.bandwidth):
                errors.append(f"link {link.a}–{link.b}: bandwidth must be positive, got {link.bandwidth:g} bytes/s: "
                              "set e.g. bandwidth = \"100Mbit\"")
            if link.latency_ms < 0:
                errors.append(f"link {link.a}–{link.b}: latency_ms must not be negative, got {link.latency_ms:g}")
        for site in self.sites:
            if site.lan is not None and not site.lan.bandwidth > 0 and not math.isnan(site.lan.bandwidth):
                errors.append(f"site '{site.name}': LAN bandwidth must be positive: set e.g. lan = "
                              "{ latency_ms = 0.3, bandwidth = \"1Gbit\" }")
        return errors

    def _check_sensors(self) -> list[str]:
        errors = []
        names = self.node_names()
        for s in self.sensors:
            if not s.node:
                errors.append(f"sensor '{s.name}' is attached to no node: set node = \"...\", one of "
                              f"{', '.join(names)}")
            elif s.node not in names:
                close = suggest(s.node, names)
                hint = f"did you mean '{close}'? " if close else ""
                errors.append(f"sensor '{s.name}': unknown node '{s.node}': {hint}define it as a [[node]] or fix "
                              "the name")
            if s.rate is not None and not s.rate > 0:
                errors.append(f"sensor '{s.name}': rate must be positive (records/s), got {s.rate:g}")
            if s.record_bytes is not None and not s.record_bytes > 0:
                errors.append(f"sensor '{s.name}': record_bytes must be positive, got {s.record_bytes:g}")
        return errors

    def _check_connected(self) -> list[str]:
        names = self.node_names()
        if len(names) < 2:
            return [] if names else ["the topology has no nodes: add at least one [[node]]"]
        adj: dict[str, set[str]] = {n: set() for n in names}
        for link in self.all_links():
            if link.a in adj and link.b in adj and link.bandwidth > 0:
                adj[link.a].add(link.b)
                adj[link.b].add(link.a)
        seen, todo = {names[0]}, [names[0]]
        while todo:
            for nb in adj[todo.pop()]:
                if nb not in seen:
                    seen.add(nb)
                    todo.append(nb)
        return [f"node '{n}' is not connected to '{names[0]}': add a [[link]] joining it (or its site) to the "
                "rest of the network" for n in names if n not in seen]

    def summary(self) -> str:
        sites = sorted({n.site for n in self.nodes if n.site})
        return (f"{len(self.node_names())} nodes, {len(self.links)} links, {len(sites)} sites, "
                f"{len(self.sensors)} sensors")


# -- parsing helpers --------------------------------------------------------------------------------------

def _tables(data: Mapping[str, Any], key: str, errors: list[str]) -> list[Mapping[str, Any]]:
    items = data.get(key, [])
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        errors.append(f"'{key}' must be an array of tables: write [[{key}]] before each one")
        return []
    return items


def _unknown_keys(table: Mapping[str, Any], allowed: set[str], where: str, errors: list[str]) -> None:
    for key in table:
        if key not in allowed:
            close = suggest(key, sorted(allowed))
            hint = f"did you mean '{close}'?" if close else f"known keys: {sorted(allowed)}"
            errors.append(f"{where}: unknown key '{key}': {hint}")


def _label(d: Mapping[str, Any], kind: str, i: int) -> str:
    name = d.get("name")
    if name is not None:
        return f"{kind} '{name}'"
    if kind == "link":
        return f"link {d.get('a', '?')}–{d.get('b', '?')}"
    return f"{kind} #{i + 1}"


def _number(d: Mapping[str, Any], key: str, default: float | None, where: str, errors: list[str],
            parse: Any = None) -> float | None:
    if key not in d:
        return default
    try:
        return float(parse(d[key])) if parse else float(_split_number(d[key]))
    except (TypeError, ValueError) as exc:
        errors.append(f"{where}: {key}: {exc}")
        return math.nan


def _split_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _require_str(d: Mapping[str, Any], key: str, where: str, errors: list[str]) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        errors.append(f"{where}: missing {key} = \"...\"")
        return "" if value is None else str(value)
    return value


def _link_spec(d: Any, where: str, errors: list[str]) -> LinkSpec | None:
    if not isinstance(d, Mapping):
        errors.append(f"{where}: expected a table like {{ latency_ms = 0.5, bandwidth = \"1Gbit\" }}")
        return None
    _unknown_keys(d, {"latency_ms", "bandwidth"}, where, errors)
    lat = _number(d, "latency_ms", DEFAULT_LAN.latency_ms, where, errors)
    bw = _number(d, "bandwidth", DEFAULT_LAN.bandwidth, where, errors, parse_bandwidth)
    return LinkSpec(lat if lat is not None else 0.0, bw if bw is not None else DEFAULT_LAN.bandwidth)


def _site(d: Mapping[str, Any], i: int, errors: list[str]) -> Site:
    where = _label(d, "site", i)
    _unknown_keys(d, _SITE_KEYS, where, errors)
    return Site(_require_str(d, "name", where, errors), _link_spec(d["lan"], where + " lan", errors)
                if "lan" in d else None)


def _node(d: Mapping[str, Any], i: int, errors: list[str]) -> PhysicalNode:
    where = _label(d, "node", i)
    _unknown_keys(d, _NODE_KEYS, where, errors)
    backends = d.get("backends", ["process"])
    if isinstance(backends, str):
        backends = [backends]
    labels = d.get("labels", {})
    if not isinstance(labels, Mapping):
        errors.append(f"{where}: labels must be a table, e.g. labels = {{ floor = \"2\" }}")
        labels = {}
    return PhysicalNode(
        name=_require_str(d, "name", where, errors),
        cores=_number(d, "cores", 1.0, where, errors) or 0.0,
        memory=_number(d, "memory", float(2**30), where, errors, parse_memory) or 0.0,
        arch=str(d.get("arch", "aarch64")),
        backends=tuple(str(b) for b in backends),
        site=str(d.get("site", "")),
        labels={str(k): str(v) for k, v in labels.items()},
        available=bool(d.get("available", True)),
        domain=str(d.get("domain", "")),
    )


def _link(d: Mapping[str, Any], i: int, errors: list[str]) -> Link:
    where = _label(d, "link", i)
    _unknown_keys(d, _LINK_KEYS, where, errors)
    lat = _number(d, "latency_ms", 1.0, where, errors)
    bw = _number(d, "bandwidth", None, where, errors, parse_bandwidth)
    if bw is None:
        errors.append(f"{where}: missing bandwidth = \"100Mbit\" (or another speed)")
        bw = math.nan
    return Link(_require_str(d, "a", where, errors), _require_str(d, "b", where, errors),
                lat if lat is not None and not math.isnan(lat) else 0.0, bw)


def _sensor(d: Mapping[str, Any], i: int, errors: list[str]) -> Sensor:
    where = _label(d, "sensor", i)
    _unknown_keys(d, _SENSOR_KEYS, where, errors)
    node = d.get("node")
    return Sensor(_require_str(d, "name", where, errors), str(node) if node else None,
                  _number(d, "rate", None, where, errors), _number(d, "record_bytes", None, where, errors))


def _replace_node(node: PhysicalNode, **changes: Any) -> PhysicalNode:
    from dataclasses import replace

    return replace(node, **changes)


def _merge_agent(node: PhysicalNode, info: Mapping[str, Any]) -> PhysicalNode:
    """The file's node with what its live agent reports (cores, memory, arch, backends, labels)."""
    labels = {**node.labels, **{str(k): str(v) for k, v in (info.get("labels") or {}).items()}}
    changes: dict[str, Any] = {"labels": labels, "available": True}
    if info.get("cores"):
        changes["cores"] = float(info["cores"])
    if info.get("memory"):
        changes["memory"] = float(info["memory"])
    if info.get("arch"):
        changes["arch"] = str(info["arch"])
    if info.get("backends"):
        changes["backends"] = tuple(str(b) for b in info["backends"])
    if not node.site and labels.get("site"):
        changes["site"] = labels["site"]
    return _replace_node(node, **changes)
