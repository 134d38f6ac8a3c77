"""Tests for microstream.viz.dag: DOT text and the self-made layered SVG layout."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from microstream.viz.dag import DrawEdge, DrawNode, to_dot, to_svg

NS = "{http://www.w3.org/2000/svg}"
Box = tuple[float, float, float, float]  # x, y, width, height


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    """Parse an SVG string; fails the test if it is not well-formed XML."""
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    """All ``tag`` elements with the given class attribute."""
    return [el for el in root.iter(f"{NS}{tag}") if el.get("class") == cls]


def rect_box(rect: ET.Element) -> Box:
    """x, y, width, height of a rect element."""
    return tuple(float(rect.get(k)) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


def node_boxes(root: ET.Element) -> dict[str, Box]:
    """Node id -> box of its rect."""
    boxes = {}
    for g in by_class(root, "g", "node"):
        rect = g.find(f"{NS}rect")
        assert rect is not None
        boxes[g.get("data-id")] = rect_box(rect)
    return boxes


def texts(root: ET.Element, cls: str) -> list[str]:
    """Text content of all text elements with the given class."""
    return [el.text or "" for el in by_class(root, "text", cls)]


def overlaps(a: Box, b: Box) -> bool:
    """True if two boxes intersect with positive area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def path_endpoints(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """First and last point of a path's data."""
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", d)]
    return (numbers[0], numbers[1]), (numbers[-2], numbers[-1])


def chain(*ids: str) -> list[DrawEdge]:
    """Edges a->b->c... along the given ids."""
    return [DrawEdge(a, b) for a, b in zip(ids, ids[1:], strict=False)]


def check_geometry(svg: str, nodes: list[DrawNode], edges: list[DrawEdge]) -> ET.Element:
    """Common invariants: labels present, one path per edge, left-to-right edges, no overlapping boxes."""
    root = parse(svg)
    labels = texts(root, "node-label")
    for node in nodes:
        assert node.label in labels
    paths = by_class(root, "path", "edge")
    assert len(paths) == len(edges)
    boxes = node_boxes(root)
    assert set(boxes) == {n.id for n in nodes}
    for path, edge in zip(paths, edges, strict=True):
        assert (path.get("data-src"), path.get("data-dst")) == (edge.src, edge.dst)
        src, dst = boxes[edge.src], boxes[edge.dst]
        assert src[0] + src[2] <= dst[0], f"{edge.src} should be left of {edge.dst}"
        (x0, y0), (x1, y1) = path_endpoints(path.get("d"))
        assert x0 == pytest.approx(src[0] + src[2], abs=0.06)
        assert src[1] <= y0 <= src[1] + src[3]
        assert x1 == pytest.approx(dst[0], abs=0.06)
        assert dst[1] <= y1 <= dst[1] + dst[3]
        assert path.get("marker-end") == "url(#ms-arrow)"
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert not overlaps(boxes[a], boxes[b]), f"boxes of {a} and {b} overlap"
    width, height = float(root.get("width")), float(root.get("height"))
    for x, y, w, h in boxes.values():
        assert x >= 0 and x + w <= width and y >= 0 and y + h <= height
    return root


def demo_pipeline() -> tuple[list[DrawNode], list[DrawEdge]]:
    """source -> filter -> key_by -> window -> sink, plus a dashed "late" side edge to a second sink."""
    nodes = [
        DrawNode("src", "mqtt_source", "sensors/+/co2", kind="source", group="pi-1"),
        DrawNode("filter", "filter", "CO2 > 0 and CO2 < 10000", group="pi-1"),
        DrawNode("key", "key_by", "room", group="pi-2"),
        DrawNode(
            "win",
            "window_aggregate",
            "tumbling 10 min · co2=mean(CO2), n=count(), peak=max(CO2), low=min(CO2), temp=mean(T)",
            group="pi-2",
        ),
        DrawNode("sink", "influx_sink", "bucket=co2", kind="sink"),
        DrawNode("late", "late_sink", "dead letters", kind="side"),
    ]
    edges = [
        DrawEdge("src", "filter", "forward"),
        DrawEdge("filter", "key"),
        DrawEdge("key", "win", "hash(room)"),
        DrawEdge("win", "sink"),
        DrawEdge("win", "late", "late", style="dashed"),
    ]
    return nodes, edges


def layered_random_dag(count: int, seed: int) -> tuple[list[DrawNode], list[DrawEdge]]:
    """A reproducible random DAG (edges only go from lower to higher index)."""
    rng = random.Random(seed)
    nodes = [DrawNode(f"n{i}", f"op_{i}", f"detail {i}" if i % 3 else "") for i in range(count)]
    edges = []
    for j in range(1, count):
        for i in sorted(rng.sample(range(j), min(j, rng.choice((1, 1, 2, 3))))):
            edges.append(DrawEdge(f"n{i}", f"n{j}", "hash(k)" if (i + j) % 4 == 0 else ""))
    return nodes, edges


# --------------------------------------------------------------------------------------------------
# SVG layout
# --------------------------------------------------------------------------------------------------


def test_single_node() -> None:
    nodes = [DrawNode("only", "lonely_op")]
    root = check_geometry(to_svg(nodes, [], title="one"), nodes, [])
    assert texts(root, "title") == ["one"]
    assert texts(root, "edge-label") == []


def test_empty_graph_is_well_formed() -> None:
    root = parse(to_svg([], []))
    assert by_class(root, "g", "node") == []


def test_diamond_split_then_union() -> None:
    nodes = [
        DrawNode("a", "split", kind="source"),
        DrawNode("b", "left"),
        DrawNode("c", "right"),
        DrawNode("d", "union", kind="sink"),
    ]
    edges = [DrawEdge("a", "b"), DrawEdge("a", "c"), DrawEdge("b", "d"), DrawEdge("c", "d")]
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    boxes = node_boxes(root)
    assert boxes["b"][0] == boxes["c"][0]  # same layer -> same column
    assert boxes["b"][1] != boxes["c"][1]
    centre = {k: y + h / 2 for k, (x, y, w, h) in boxes.items()}
    assert centre["a"] == pytest.approx(centre["d"])  # symmetric diamond
    assert min(centre["b"], centre["c"]) < centre["a"] < max(centre["b"], centre["c"])


def test_layer_is_longest_path_and_long_edge_is_one_path() -> None:
    nodes = [DrawNode(x, x) for x in "abcd"]
    edges = [*chain("a", "b", "c", "d"), DrawEdge("a", "d", "skip")]
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    xs = [node_boxes(root)[k][0] for k in "abcd"]
    assert xs == sorted(xs) and len(set(xs)) == 4
    long_path = by_class(root, "path", "edge")[-1]
    assert long_path.get("d").count("C") == 3  # one Bézier per crossed gap
    (label_x,) = [float(t.get("x")) for t in by_class(root, "text", "edge-label")]
    assert xs[0] < label_x < xs[3]


def test_thirty_plus_nodes() -> None:
    nodes, edges = layered_random_dag(36, seed=11)
    assert len(edges) > 36
    root = check_geometry(to_svg(nodes, edges, title="big"), nodes, edges)
    assert len(texts(root, "edge-label")) == sum(1 for e in edges if e.label)


def test_node_with_four_outputs_gets_distinct_ports() -> None:
    nodes = [DrawNode("s", "router"), *[DrawNode(f"o{i}", f"out_{i}", kind="sink") for i in range(4)]]
    edges = [DrawEdge("s", f"o{i}", f"p{i}") for i in range(4)]
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    starts = [path_endpoints(p.get("d"))[0][1] for p in by_class(root, "path", "edge")]
    assert len(set(starts)) == 4
    # ports are ordered like their targets, so the four edges do not cross
    boxes = node_boxes(root)
    target_y = [boxes[f"o{i}"][1] for i in range(4)]
    assert sorted(range(4), key=starts.__getitem__) == sorted(range(4), key=target_y.__getitem__)


def test_barycentre_ordering_removes_crossing() -> None:
    # input order puts y above x in layer 1, which would cross a->x and b->y
    nodes = [DrawNode("a", "a"), DrawNode("b", "b"), DrawNode("y", "y"), DrawNode("x", "x")]
    edges = [DrawEdge("a", "x"), DrawEdge("b", "y")]
    boxes = node_boxes(check_geometry(to_svg(nodes, edges), nodes, edges))
    assert (boxes["a"][1] < boxes["b"][1]) == (boxes["x"][1] < boxes["y"][1])


def test_empty_edge_labels_and_dashed_style() -> None:
    nodes = [DrawNode("a", "a"), DrawNode("b", "b"), DrawNode("c", "c", kind="side")]
    edges = [DrawEdge("a", "b"), DrawEdge("a", "c", "", style="dashed")]
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    assert texts(root, "edge-label") == []
    solid, dashed = by_class(root, "path", "edge")
    assert solid.get("stroke-dasharray") is None
    assert dashed.get("stroke-dasharray")


def test_unicode_and_xml_special_characters() -> None:
    nodes = [
        DrawNode("α", "Größe → ∑ 温度 🌡", "naïve <&> \"quoted\" 'single'", kind="source"),
        DrawNode("b<&>", 'sink "x" & <y>', "\x00ctl\x1fchars\ttab", kind="sink", group="Ünïcode & <group>"),
    ]
    edges = [DrawEdge("α", "b<&>", "é<late>&")]
    svg = to_svg(nodes, edges, title='T "<&>" ü')
    root = check_geometry(svg, nodes, edges)
    assert texts(root, "node-detail")[0] == "naïve <&> \"quoted\" 'single'"
    assert texts(root, "node-detail")[1] == "ctlchars tab"
    assert texts(root, "edge-label") == ["é<late>&"]
    assert texts(root, "group-label") == ["Ünïcode & <group>"]
    assert texts(root, "title") == ['T "<&>" ü']
    assert svg.encode("utf-8")  # no lone surrogates or other unencodable text


def test_long_detail_is_truncated_but_kept_in_tooltip() -> None:
    detail = "tumbling 10 min · " + ", ".join(f"c{i}=mean(C{i})" for i in range(20))
    nodes = [DrawNode("w", "window_aggregate", detail)]
    root = parse(to_svg(nodes, []))
    (shown,) = texts(root, "node-detail")
    assert shown.endswith("…") and len(shown) < len(detail)
    assert detail.startswith(shown[:-1].rstrip())
    tooltip = root.find(f".//{NS}g[@class='node']/{NS}title")
    assert tooltip is not None and tooltip.text == f"window_aggregate\n{detail}"
    width = node_boxes(root)["w"][2]
    assert width < 7 * len(detail)


def test_node_box_width_follows_text() -> None:
    nodes = [DrawNode("a", "x"), DrawNode("b", "a_much_longer_operator_label")]
    boxes = node_boxes(parse(to_svg(nodes, [])))
    assert boxes["b"][2] > boxes["a"][2]
    assert boxes["b"][2] >= 7 * len("a_much_longer_operator_label")


def straight_runs(d: str) -> list[tuple[float, float, float]]:
    """Horizontal ``L`` segments of a path (where a long edge passes a column) as (x1, x2, y)."""
    runs = []
    previous = (0.0, 0.0)
    for command, args in re.findall(r"([MCL])([^MCL]*)", d):
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        end = (numbers[-2], numbers[-1])
        if command == "L":
            runs.append((previous[0], end[0], end[1]))
        previous = end
    return runs


def check_frames(root: ET.Element, nodes: list[DrawNode]) -> dict[str, Box]:
    """Frames contain exactly their members, are pairwise disjoint, and no foreign long edge crosses one."""
    boxes = node_boxes(root)
    frames = {g.get("data-group"): rect_box(g.find(f"{NS}rect")) for g in by_class(root, "g", "group")}
    assert set(frames) == {n.group for n in nodes if n.group}
    for node in nodes:
        for group, frame in frames.items():
            if node.group == group:
                x, y, w, h = boxes[node.id]
                fx, fy, fw, fh = frame
                assert fx < x and x + w < fx + fw and fy < y and y + h < fy + fh, (node.id, group)
            else:
                assert not overlaps(boxes[node.id], frame), (node.id, group)
    names = sorted(frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not overlaps(frames[a], frames[b]), (a, b)
    group_of = {n.id: n.group for n in nodes}
    for path in by_class(root, "path", "edge"):
        shared = group_of[path.get("data-src")]
        if shared != group_of[path.get("data-dst")]:
            shared = None
        for x1, x2, y in straight_runs(path.get("d")):
            for group, (fx, fy, fw, fh) in frames.items():
                if group != shared:
                    assert not (fy < y < fy + fh and x1 < fx + fw and fx < x2), (path.get("d"), group)
    return frames


def test_groups_enclose_their_nodes_and_keep_others_out() -> None:
    nodes, edges = demo_pipeline()
    edges = [*edges, DrawEdge("src", "sink", "bypass")]  # long edge past both groups
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    frames = check_frames(root, nodes)
    assert list(frames) == ["pi-1", "pi-2"]
    assert texts(root, "group-label") == ["pi-1", "pi-2"]
    bypass = by_class(root, "path", "edge")[-1].get("d")
    assert len(straight_runs(bypass)) == 3  # passes three columns


def test_groups_sharing_columns_get_disjoint_frames() -> None:
    # pi-0 hosts the start and the end of the pipeline, the parallel windows run on pi-1..pi-3
    nodes = [
        DrawNode("s", "source", kind="source", group="pi-0"),
        DrawNode("k", "key_by", "room", group="pi-0"),
    ]
    nodes += [DrawNode(f"w{i}", f"window[{i}]", "tumbling 10 min", group=f"pi-{i + 1}") for i in range(3)]
    nodes += [
        DrawNode("u", "union", group="pi-0"),
        DrawNode("o", "sink", kind="sink", group="pi-0"),
        DrawNode("l", "late_sink", kind="side"),
    ]
    edges = [DrawEdge("s", "k"), *[DrawEdge("k", f"w{i}", f"hash(room)={i}") for i in range(3)]]
    edges += [DrawEdge(f"w{i}", "u") for i in range(3)]
    edges += [DrawEdge("u", "o"), DrawEdge("w1", "l", "late", "dashed"), DrawEdge("s", "o", "direct")]
    root = check_geometry(to_svg(nodes, edges, title="parallel windows"), nodes, edges)
    check_frames(root, nodes)


@pytest.mark.parametrize("seed", range(12))
def test_random_groups_never_tangle(seed: int) -> None:
    rng = random.Random(seed)
    nodes, edges = layered_random_dag(rng.randint(5, 30), seed)
    names = [None, "pi-1", "pi-2", "pi-3"]
    nodes = [DrawNode(n.id, n.label, n.detail, group=rng.choice(names)) for n in nodes]
    root = check_geometry(to_svg(nodes, edges), nodes, edges)
    check_frames(root, nodes)


def test_source_left_of_sink_and_title_on_top() -> None:
    nodes, edges = demo_pipeline()
    root = check_geometry(to_svg(nodes, edges, title="CO2 per room"), nodes, edges)
    boxes = node_boxes(root)
    assert boxes["src"][0] < boxes["filter"][0] < boxes["key"][0] < boxes["win"][0] < boxes["sink"][0]
    assert boxes["sink"][0] == pytest.approx(boxes["late"][0], abs=40)  # same layer
    title = by_class(root, "text", "title")[0]
    assert float(title.get("y")) < min(y for _, y, _, _ in boxes.values())


def test_output_is_deterministic_within_and_across_processes() -> None:
    nodes, edges = layered_random_dag(32, seed=3)
    assert to_svg(nodes, edges, "x") == to_svg(list(nodes), list(edges), "x")
    assert to_dot(nodes, edges, "x") == to_dot(nodes, edges, "x")
    script = (
        "from microstream.viz.dag import DrawNode, DrawEdge, to_svg\n"
        "nodes = [DrawNode(f'n{i}', f'op {i}', group=f'g{i % 3}') for i in range(12)]\n"
        "pairs = [(i, j) for i in range(12) for j in range(i + 1, 12) if (i * j) % 5 == 1]\n"
        "edges = [DrawEdge(f'n{i}', f'n{j}', 'e') for i, j in pairs]\n"
        "print(to_svg(nodes, edges, 'det'))\n"
    )
    repo_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH", "")]))
    outputs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": pythonpath}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    parse(outputs.pop())


def test_demo_pipeline_written_to_tmp() -> None:
    nodes, edges = demo_pipeline()
    path = Path("/tmp/render_demo.svg")
    path.write_text(to_svg(nodes, edges, title="CO2 per room (demo)"), encoding="utf-8")
    root = ET.parse(path).getroot()
    assert root.tag == f"{NS}svg"
    check_geometry(path.read_text(encoding="utf-8"), nodes, edges)
    assert "late" in texts(root, "edge-label")


# --------------------------------------------------------------------------------------------------
# DOT
# --------------------------------------------------------------------------------------------------


def test_dot_contains_every_edge_and_clusters() -> None:
    nodes, edges = demo_pipeline()
    dot = to_dot(nodes, edges, title="CO2")
    assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
    assert "rankdir=LR" in dot
    for edge in edges:
        assert f'"{edge.src}" -> "{edge.dst}"' in dot
    assert "subgraph cluster_0 {" in dot and 'label="pi-1"' in dot
    assert "subgraph cluster_1 {" in dot and 'label="pi-2"' in dot
    assert '"win" -> "late" [label="late", style="dashed"];' in dot
    assert '"filter" -> "key";' in dot
    assert dot.count("{") == dot.count("}")
    for node in nodes:
        assert f'"{node.id}" [label="{node.label}' in dot


def test_dot_escapes_quotes_and_backslashes() -> None:
    nodes = [DrawNode('a"1', 'say "hi"', "C:\\tmp\\x"), DrawNode("b\\", "ünï")]
    dot = to_dot(nodes, [DrawEdge('a"1', "b\\", 'q"\\')], title='t"')
    assert '"a\\"1" -> "b\\\\" [label="q\\"\\\\"];' in dot
    assert 'label="say \\"hi\\"\\nC:\\\\tmp\\\\x"' in dot
    assert 'label="t\\""' in dot
    # every quoted string is closed: strip escapes, then quotes must pair up on each line
    for line in dot.splitlines():
        assert re.sub(r"\\.", "", line).count('"') % 2 == 0, line


def test_dot_single_node_and_empty_graph() -> None:
    assert '"x" [label="x"' in to_dot([DrawNode("x", "x")], [])
    assert to_dot([], []).startswith("digraph ")


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("render", [to_svg, to_dot])
def test_unknown_edge_end_raises(render) -> None:
    nodes = [DrawNode("a", "a"), DrawNode("b", "b")]
    with pytest.raises(ValueError, match=r"unknown destination node id 'zz'"):
        render(nodes, [DrawEdge("a", "zz")])
    with pytest.raises(ValueError, match=r"unknown source node id 'yy'"):
        render(nodes, [DrawEdge("yy", "b")])


@pytest.mark.parametrize("render", [to_svg, to_dot])
def test_duplicate_id_raises(render) -> None:
    with pytest.raises(ValueError, match=r"duplicate node id 'a'"):
        render([DrawNode("a", "a"), DrawNode("b", "b"), DrawNode("a", "again")], [])


@pytest.mark.parametrize("render", [to_svg, to_dot])
def test_cycle_raises_and_names_the_cycle(render) -> None:
    nodes = [DrawNode(x, x) for x in ("src", "p", "q", "r", "out")]
    edges = [*chain("src", "p", "q", "r", "out"), DrawEdge("r", "p")]
    with pytest.raises(ValueError, match=r"cycle: 'p' -> 'q' -> 'r' -> 'p'"):
        render(nodes, edges)


@pytest.mark.parametrize("render", [to_svg, to_dot])
def test_self_loop_is_a_cycle(render) -> None:
    with pytest.raises(ValueError, match=r"cycle: 'a' -> 'a'"):
        render([DrawNode("a", "a")], [DrawEdge("a", "a")])
