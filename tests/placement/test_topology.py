"""Topology files: loading, every kind of check error, shortest routes, live agents."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from microstream.placement.topology import (
    Link,
    PhysicalNode,
    Topology,
    TopologyError,
    parse_bandwidth,
    parse_memory,
)

CAMPUS = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "campus.toml"

GOOD = """
name = "t"
[[site]]
name = "s"
lan = { latency_ms = 0.5, bandwidth = "1Gbit" }
[[node]]
name = "a"
cores = 2
site = "s"
[[node]]
name = "b"
cores = 2
site = "s"
[[node]]
name = "c"
cores = 4
[[link]]
a = "b"
b = "c"
latency_ms = 5
bandwidth = "10Mbit"
[[sensor]]
name = "co2"
node = "a"
rate = 10
"""


def load(tmp_path: Path, text: str) -> Topology:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return Topology.load(path)


def test_campus_example_is_clean():
    campus = Topology.load(CAMPUS)
    assert campus.check() == []
    assert {n.site for n in campus.nodes} == {"library", "labs", "dorms", "core"}
    assert len(campus.sensors) >= 6
    assert campus.node("lib-pi1").memory == 4 * 2**30
    assert campus.node("core").backends == ("process", "microvm")


def test_units():
    assert parse_bandwidth("100Mbit") == 12.5e6
    assert parse_bandwidth("1 Gbit/s") == 125e6
    assert parse_bandwidth("54Mbps") == 54e6 / 8
    assert parse_bandwidth("2MB/s") == 2e6
    assert parse_bandwidth(8e6) == 1e6          # a bare number is bits/s
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("2GB") == 2e9
    with pytest.raises(ValueError, match="unknown bandwidth unit"):
        parse_bandwidth("10 furlongs")
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_good_file_loads(tmp_path):
    t = load(tmp_path, GOOD)
    assert t.check() == []
    kinds = sorted(lk.kind for lk in t.all_links())
    assert kinds == ["lan", "link"]             # a–b joined by the site's LAN, b–c by the file


@pytest.mark.parametrize("change, expected", [
    (GOOD.replace('a = "b"\nb = "c"', 'a = "b"\nb = "cc"'), ["link b–cc: unknown node 'cc'", "did you mean 'c'?"]),
    (GOOD.replace('node = "a"\nrate', 'rate'), ["sensor 'co2' is attached to no node", "set node ="]),
    (GOOD.replace('node = "a"\nrate', 'node = "x"\nrate'), ["sensor 'co2': unknown node 'x'", "[[node]]"]),
    (GOOD + '[[node]]\nname = "island"\n', ["node 'island' is not connected", "add a [[link]]"]),
    (GOOD + '[[node]]\nname = "c"\n', ["node 'c' is defined twice", "unique name"]),
    (GOOD + '[[sensor]]\nname = "co2"\nnode = "b"\n', ["sensor 'co2' is defined twice"]),
    (GOOD.replace("cores = 4", "cores = 0"), ["node 'c': cores must be positive", "cores = 1"]),
    (GOOD.replace('bandwidth = "10Mbit"', 'bandwidth = "0Mbit"'), ["link b–c: bandwidth must be positive"]),
    (GOOD.replace('bandwidth = "10Mbit"', 'bandwidth = "fast"'), ["link b–c: bandwidth", "cannot read 'fast'"]),
    (GOOD.replace("latency_ms = 5", "latency_ms = 5\nbandwith = 3"), ["unknown key 'bandwith'", "'bandwidth'"]),
    (GOOD + '[[link]]\na = "a"\nb = "a"\nbandwidth = "1Gbit"\n', ["link a–a: joins a node to itself"]),
    (GOOD.replace('site = "s"\n[[node]]\nname = "b"', 'site = "t"\n[[node]]\nname = "b"'),
     ["node 'a': site 't' is not a [[site]]"]),
])
def test_check_names_the_item_and_the_fix(tmp_path, change, expected):
    errors = load(tmp_path, change).check()
    text = "\n".join(errors)
    for part in expected:
        assert part in text, text


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="not valid TOML"):
        load(tmp_path, "[[node]\nname=")
    with pytest.raises(TopologyError, match="no such topology file"):
        Topology.load(tmp_path / "missing.toml")


def triangle() -> Topology:
    nodes = [PhysicalNode(n) for n in "abcd"]
    links = [Link("a", "b", 1.0, 12.5e6), Link("b", "c", 2.0, 1.25e6), Link("a", "c", 10.0, 125e6),
             Link("c", "d", 1.0, 125e6), Link("c", "d", 5.0, 250e6)]   # two links c–d: the faster one is used
    return Topology("tri", nodes, links)


def test_shortest_routes_by_latency():
    t = triangle()
    links, latency, bottleneck = t.path("a", "d")
    assert [lk.label for lk in links] == ["a–b", "b–c", "c–d"]
    assert latency == pytest.approx(4.0)
    assert bottleneck == 1.25e6
    r = t.routes()
    i, j = r.index["a"], r.index["d"]
    assert r.inv_bandwidth[i, j] == pytest.approx(1 / 12.5e6 + 1 / 1.25e6 + 1 / 125e6)
    assert r.hops[i, j] == 3
    assert (r.latency_ms == r.latency_ms.T).all() and (r.inv_bandwidth == r.inv_bandwidth.T).all()
    assert t.path("d", "a")[1] == pytest.approx(4.0)
    assert t.path("b", "b") == ([], 0.0, math.inf)
    assert t.routes() is r                      # cached


def test_ties_prefer_fewer_hops():
    nodes = [PhysicalNode(n) for n in "abc"]
    t = Topology("tie", nodes, [Link("a", "b", 0.0, 1e6), Link("b", "c", 0.0, 1e6), Link("a", "c", 0.0, 1e6)])
    assert [lk.label for lk in t.path("a", "c")[0]] == ["a–c"]


def test_from_agents_meshes_live_agents():
    agents = {"pi1": {"up": True, "cores": 4, "memory": 2**31, "arch": "aarch64", "backends": ["process"]},
              "pi2": {"up": True, "cores": 2, "arch": "aarch64", "backends": ["process", "microvm"]},
              "gone": {"up": False, "cores": 4}}
    t = Topology.from_agents(agents)
    assert t.check() == []
    assert t.node_names() == ["pi1", "pi2"]
    assert t.node("pi2").backends == ("process", "microvm")
    (link,), latency, _ = t.path("pi1", "pi2")
    assert link.kind == "default" and latency == 0.5


def test_from_agents_merges_a_file():
    campus = Topology.load(CAMPUS)
    agents = {"lib-pi1": {"cores": 2, "memory": 2**30, "arch": "aarch64", "backends": ["process"]},
              "core": {"cores": 16, "backends": ["process"]},
              "labs-pi9": {"cores": 4, "labels": {"site": "labs"}},
              "stray": {"cores": 1}}
    t = Topology.from_agents(agents, base=campus)
    assert t.check() == []
    assert t.node("lib-pi1").cores == 2 and t.node("core").cores == 16
    assert t.node("core").backends == ("process",)           # what the agent reports wins
    assert not t.node("dorm-pi2").available                  # in the file, no agent: routes only
    assert t.node("labs-pi9").site == "labs"
    assert t.path("labs-pi9", "labs-pi2")[0][0].kind == "lan"
    assert any("stray" in w for w in t.warnings)
    assert t.path("stray", "lib-pi1")[0][0].kind == "default"
    assert len(t.sensors) == len(campus.sensors)


def test_link_cost_in_lan_bytes():
    campus = Topology.load(CAMPUS)
    cost = campus.link_cost()
    assert cost("core", "core") == 0.0
    assert cost("lib-pi1", "lib-pi2") == pytest.approx(1.0)        # one 1 Gbit/s hop
    assert cost("lib-pi1", "core") == pytest.approx(100.0)         # the 10 Mbit/s uplink
    assert cost("lib-pi1", "unknown") == 1.0


@pytest.mark.parametrize("path", sorted(CAMPUS.parent.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_topology_is_clean(path):
    assert Topology.load(path).check() == []
