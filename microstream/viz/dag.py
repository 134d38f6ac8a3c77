"""Draw a dataflow DAG as Graphviz DOT text or as a self-contained SVG picture.

Only the Python standard library is used: the SVG is laid out here (no graphviz binary needed).

The SVG layout is a small Sugiyama-style layered drawing, left to right:

1. *layering* -- a node's layer is the length of the longest path reaching it from a source;
2. *dummy vertices* -- an edge spanning several layers gets one invisible vertex per crossed layer,
   so long edges take part in ordering and are drawn as one smooth chain of cubic Béziers;
3. *ordering* -- alternate down/up sweeps sort each layer by the barycentre of its neighbours in the
   previous layer; the order with the fewest crossings wins. With groups, a second round of sweeps
   keeps every group in one global horizontal "band" (same relative order in every layer);
4. *coordinates* -- columns are as wide as their widest node plus room for edge labels; vertical
   positions are pulled towards the neighbours' mean while keeping order and minimum spacing
   (isotonic regression, so the result is the best placement in the least-squares sense);
5. *group frames* -- bands are then moved down, in rank order, just far enough that group frames
   are disjoint and no foreign node or long edge runs through a frame.

Output is deterministic: no set/hash ordering is ever used, so equal input gives byte-equal output.

Example::

    nodes = [DrawNode("src", "source", kind="source"), DrawNode("out", "sink", kind="sink")]
    svg = to_svg(nodes, [DrawEdge("src", "out", label="forward")], title="demo")
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right, insort
from dataclasses import dataclass
from itertools import pairwise

__all__ = ["DrawEdge", "DrawNode", "KINDS", "STYLES", "to_dot", "to_svg"]

KINDS = ("source", "op", "sink", "side")
"""Known node kinds. An unknown kind is drawn with the ``op`` colours."""

STYLES = ("solid", "dashed", "dotted")
"""Known edge styles. An unknown style is drawn solid."""


@dataclass(frozen=True)
class DrawNode:
    """One box of the drawing.

    ``label`` is the bold first line, ``detail`` an optional smaller second line (truncated with
    "…" when long; the full text stays available as a tooltip). ``kind`` picks the colours and
    ``group`` (if not None/empty) draws a labelled rounded box around all nodes of that group.
    """

    id: str
    label: str
    detail: str = ""
    kind: str = "op"
    group: str | None = None


@dataclass(frozen=True)
class DrawEdge:
    """An arrow from node ``src`` to node ``dst`` with an optional ``label`` and a line ``style``."""

    src: str
    dst: str
    label: str = ""
    style: str = "solid"


# --------------------------------------------------------------------------------------------------
# look and geometry
# --------------------------------------------------------------------------------------------------

_PALETTE: dict[str, tuple[str, str]] = {  # kind -> (fill, stroke)
    "source": ("#d5f5e3", "#1e8449"),
    "op": ("#d6eaf8", "#2471a3"),
    "sink": ("#fdebd0", "#ca6f1e"),
    "side": ("#f4ecf7", "#7d3c98"),
}
_DASHES: dict[str, str] = {"dashed": "6 4", "dotted": "2 3"}
_FONT = "Helvetica, Arial, sans-serif"
_DOT_FONT = "Helvetica"
_EDGE_COLOUR = "#566573"
_GROUP_FILL, _GROUP_STROKE = "#f8f9f9", "#aab7b8"

_MARGIN = 20.0
_TITLE_H = 30.0
_TITLE_CHAR_W = 9.0  # bold 16 px
_LABEL_CHAR_W = 7.0  # bold 12 px
_DETAIL_CHAR_W = 6.0  # 10 px
_EDGE_CHAR_W = 6.0  # 10 px
_GROUP_CHAR_W = 6.5  # 11 px
_PAD_X = 12.0
_MIN_NODE_W = 70.0
_H_ONE_LINE = 28.0
_H_TWO_LINES = 44.0
_DUMMY_H = 6.0
_V_GAP = 18.0
_GROUP_V_GAP = 46.0
_MIN_COL_GAP = 70.0
_LABEL_GAP_EXTRA = 36.0
_GROUP_PAD = 10.0
_GROUP_LABEL_H = 16.0
_FRAME_CLEARANCE = 8.0
_MAX_LABEL_UNITS = 40
_MAX_DETAIL_UNITS = 56
_MAX_EDGE_LABEL_UNITS = 30
_ORDER_SWEEPS = 8
_Y_SWEEPS = 6
_Y_BALANCE_PASSES = 2


# --------------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Return ``text`` on one line without characters that XML 1.0 (or a terminal) cannot carry."""
    out: list[str] = []
    for ch in str(text):
        code = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in (0xFFFE, 0xFFFF):
            continue
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _char_units(ch: str) -> int:
    """Width of one character in "average character" units (wide CJK = 2, combining marks = 0)."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _units(text: str) -> int:
    """Estimated display width of ``text`` in character units."""
    return sum(_char_units(ch) for ch in text)


def _truncate(text: str, max_units: int) -> str:
    """Shorten ``text`` to at most ``max_units`` character units, ending in "…" if cut."""
    if _units(text) <= max_units:
        return text
    kept: list[str] = []
    used = 0
    for ch in text:
        width = _char_units(ch)
        if used + width > max_units - 1:
            break
        kept.append(ch)
        used += width
    return "".join(kept).rstrip() + "…"


def _xml(text: str) -> str:
    """Escape cleaned text for use in XML character data or a double-quoted attribute."""
    return _clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _num(value: float) -> str:
    """Format a coordinate compactly and deterministically (one decimal)."""
    text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def _dot_quote(text: str) -> str:
    """Quote ``text`` as a DOT string: backslashes and quotes escaped, line breaks as ``\\n``."""
    out: list[str] = []
    for ch in str(text):
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _colours(kind: str) -> tuple[str, str]:
    """Fill and stroke colour for a node kind (unknown kinds look like ``op``)."""
    return _PALETTE.get(kind, _PALETTE["op"])


def _group_of(node: DrawNode) -> str:
    """The node's group name, "" for no group."""
    return node.group or ""


def _groups_in_order(nodes: list[DrawNode]) -> list[str]:
    """Distinct non-empty group names in order of first appearance."""
    seen: dict[str, None] = {}
    for node in nodes:
        if node.group:
            seen.setdefault(node.group, None)
    return list(seen)


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def _validate(nodes: list[DrawNode], edges: list[DrawEdge]) -> dict[str, int]:
    """Check ids, edge ends and acyclicity; return the map node id -> position in ``nodes``."""
    index: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if node.id in index:
            raise ValueError(f"duplicate node id {node.id!r} (nodes #{index[node.id]} and #{position})")
        index[node.id] = position
    for edge in edges:
        for role, name in (("source", edge.src), ("destination", edge.dst)):
            if name not in index:
                raise ValueError(f"edge {edge.src!r} -> {edge.dst!r}: unknown {role} node id {name!r}")
    successors: list[list[int]] = [[] for _ in nodes]
    for edge in edges:
        successors[index[edge.src]].append(index[edge.dst])
    cycle = _find_cycle(successors)
    if cycle is not None:
        names = " -> ".join(repr(nodes[i].id) for i in cycle)
        raise ValueError(f"graph is not a DAG, it has a cycle: {names}")
    return index


def _find_cycle(successors: list[list[int]]) -> list[int] | None:
    """Return one cycle as ``[a, b, ..., a]`` (iterative DFS), or None if the graph is acyclic."""
    state = [0] * len(successors)  # 0 unseen, 1 on the current path, 2 finished
    for root in range(len(successors)):
        if state[root]:
            continue
        state[root] = 1
        path, pending = [root], [iter(successors[root])]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                pending.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                pending.append(iter(successors[nxt]))
    return None


# --------------------------------------------------------------------------------------------------
# layout: layering, dummy vertices, ordering
# --------------------------------------------------------------------------------------------------


@dataclass
class _Vertex:
    """A real node or an invisible dummy vertex of a long edge; ``x``/``y`` are the box centre."""

    layer: int
    width: float
    height: float
    group: str
    node: DrawNode | None = None
    x: float = 0.0
    y: float = 0.0

    @property
    def top(self) -> float:
        """Upper edge of the box."""
        return self.y - self.height / 2

    @property
    def bottom(self) -> float:
        """Lower edge of the box."""
        return self.y + self.height / 2

    @property
    def left(self) -> float:
        """Left edge of the box."""
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        """Right edge of the box."""
        return self.x + self.width / 2


@dataclass
class _Layout:
    """Everything needed to emit the SVG."""

    vertices: list[_Vertex]
    chains: list[list[int]]  # per edge: vertex indices from source through dummies to destination
    col_left: list[float]
    col_right: list[float]
    width: float
    height: float


def _assign_layers(count: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Longest-path layering (Kahn's topological order); the graph must be acyclic."""
    successors: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for src, dst in pairs:
        successors[src].append(dst)
        indegree[dst] += 1
    layer = [0] * count
    queue = [v for v in range(count) if indegree[v] == 0]
    head = 0
    while head < len(queue):
        v = queue[head]
        head += 1
        for w in successors[v]:
            layer[w] = max(layer[w], layer[v] + 1)
            indegree[w] -= 1
            if indegree[w] == 0:
                queue.append(w)
    return layer


def _node_size(node: DrawNode) -> tuple[float, float]:
    """Box width and height fitted to the (truncated) label and detail text."""
    label = _truncate(_clean(node.label), _MAX_LABEL_UNITS)
    detail = _truncate(_clean(node.detail), _MAX_DETAIL_UNITS)
    text_w = max(_units(label) * _LABEL_CHAR_W, _units(detail) * _DETAIL_CHAR_W)
    height = _H_TWO_LINES if detail else _H_ONE_LINE
    return max(_MIN_NODE_W, text_w + 2 * _PAD_X), height


def _build_vertices(
    nodes: list[DrawNode], edges: list[DrawEdge], index: dict[str, int], layer: list[int]
) -> tuple[list[_Vertex], list[list[int]]]:
    """Create one vertex per node plus dummy vertices on long edges; return vertices and edge chains."""
    vertices = [_Vertex(layer[i], *_node_size(node), _group_of(node), node) for i, node in enumerate(nodes)]
    chains: list[list[int]] = []
    for edge in edges:
        src, dst = index[edge.src], index[edge.dst]
        shared = vertices[src].group if vertices[src].group == vertices[dst].group else ""
        chain = [src]
        for k in range(layer[src] + 1, layer[dst]):
            vertices.append(_Vertex(k, 0.0, _DUMMY_H, shared))
            chain.append(len(vertices) - 1)
        chain.append(dst)
        chains.append(chain)
    return vertices, chains


def _neighbours(count: int, chains: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Per vertex: neighbours in the previous layer (up) and in the next layer (down)."""
    up: list[list[int]] = [[] for _ in range(count)]
    down: list[list[int]] = [[] for _ in range(count)]
    for chain in chains:
        for a, b in pairwise(chain):
            down[a].append(b)
            up[b].append(a)
    return up, down


def _sort_layer(
    layer: list[int], fixed: list[int], nbrs: list[list[int]], groups: list[str], rank: dict[str, int] | None
) -> list[int]:
    """Order ``layer`` by barycentre of neighbours in the ``fixed`` layer.

    Without ``rank`` the nodes of a group stay contiguous, placed at the group's mean barycentre;
    with ``rank`` (group -> band number) the layer is sorted by band first, then by barycentre.
    """
    pos = {v: i for i, v in enumerate(fixed)}
    bary: list[float] = []
    for i, v in enumerate(layer):
        ranks = [pos[u] for u in nbrs[v] if u in pos]
        bary.append(sum(ranks) / len(ranks) if ranks else float(i))
    group_sum: dict[str, list[float]] = {}
    for v, b in zip(layer, bary, strict=True):
        if groups[v]:
            acc = group_sum.setdefault(groups[v], [0.0, 0.0])
            acc[0] += b
            acc[1] += 1
    keys = []
    for i, (v, b) in enumerate(zip(layer, bary, strict=True)):
        if rank is not None:
            keys.append((float(rank[groups[v]]), "", b, i, v))
            continue
        total = group_sum.get(groups[v])
        keys.append((total[0] / total[1] if total else b, groups[v], b, i, v))
    return [key[-1] for key in sorted(keys)]


def _crossings(upper: list[int], lower: list[int], down: list[list[int]]) -> int:
    """Number of edge crossings between two adjacent layers (inversion count)."""
    pos = {v: i for i, v in enumerate(lower)}
    targets = [pos[w] for v in upper for w in sorted(down[v], key=pos.__getitem__)]
    seen: list[int] = []
    count = 0
    for t in targets:
        count += len(seen) - bisect_right(seen, t)
        insort(seen, t)
    return count


def _total_crossings(layers: list[list[int]], down: list[list[int]]) -> int:
    """Crossings summed over all pairs of adjacent layers."""
    return sum(_crossings(a, b, down) for a, b in pairwise(layers))


def _sweep(
    layers: list[list[int]],
    up: list[list[int]],
    down: list[list[int]],
    groups: list[str],
    rank: dict[str, int] | None,
) -> list[list[int]]:
    """Alternating down/up barycentre sweeps; returns the ordering with the fewest crossings."""
    current = [list(layer) for layer in layers]
    best, best_count = [list(layer) for layer in current], _total_crossings(current, down)
    for sweep in range(_ORDER_SWEEPS):
        if best_count == 0:
            break
        if sweep % 2 == 0:
            for k in range(1, len(current)):
                current[k] = _sort_layer(current[k], current[k - 1], up, groups, rank)
        else:
            for k in range(len(current) - 2, -1, -1):
                current[k] = _sort_layer(current[k], current[k + 1], down, groups, rank)
        count = _total_crossings(current, down)
        if count < best_count:
            best, best_count = [list(layer) for layer in current], count
    return best


def _band_ranks(layers: list[list[int]], groups: list[str]) -> dict[str, int]:
    """Global top-to-bottom order of groups ("" = ungrouped) by their mean relative position."""
    acc: dict[str, list[float]] = {}
    for layer in layers:
        for i, v in enumerate(layer):
            entry = acc.setdefault(groups[v], [0.0, 0.0])
            entry[0] += (i + 0.5) / len(layer)
            entry[1] += 1
    order = sorted(acc, key=lambda g: (acc[g][0] / acc[g][1], g))
    return {group: number for number, group in enumerate(order)}


def _order_layers(
    layers: list[list[int]], up: list[list[int]], down: list[list[int]], groups: list[str]
) -> tuple[list[list[int]], dict[str, int]]:
    """Crossing reduction; with groups, a second phase keeps each group in one global band.

    Returns the layer orders and the band rank of every group ("" for ungrouped vertices).
    """
    best = _sweep(layers, up, down, groups, None)
    rank = _band_ranks(best, groups)
    if len(rank) <= 1:
        return best, rank
    banded = [sorted(layer, key=lambda v: rank[groups[v]]) for layer in best]
    return _sweep(banded, up, down, groups, rank), rank


# --------------------------------------------------------------------------------------------------
# layout: coordinates
# --------------------------------------------------------------------------------------------------


def _isotonic(values: list[float]) -> list[float]:
    """Least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out.extend([total / count] * int(count))
    return out


def _separation(a: _Vertex, b: _Vertex) -> float:
    """Minimum centre distance between vertically adjacent vertices ``a`` (above) and ``b``."""
    gap = _V_GAP if a.group == b.group else _GROUP_V_GAP
    return a.height / 2 + gap + b.height / 2


def _place_layer(layer: list[int], targets: list[float], vertices: list[_Vertex]) -> None:
    """Set y of a layer's vertices as close as possible to ``targets`` keeping order and spacing."""
    offsets = [0.0]
    for a, b in pairwise(layer):
        offsets.append(offsets[-1] + _separation(vertices[a], vertices[b]))
    fitted = _isotonic([t - o for t, o in zip(targets, offsets, strict=True)])
    for v, z, o in zip(layer, fitted, offsets, strict=True):
        vertices[v].y = z + o


def _mean_y(vertices: list[_Vertex], others: list[int], default: float) -> float:
    """Mean centre y of ``others`` or ``default`` if there are none."""
    return sum(vertices[u].y for u in others) / len(others) if others else default


def _assign_y(
    vertices: list[_Vertex], layers: list[list[int]], up: list[list[int]], down: list[list[int]]
) -> None:
    """Vertical coordinates: stack each layer, then pull vertices towards their neighbours."""
    for layer in layers:
        _place_layer(layer, [0.0] * len(layer), vertices)
    for sweep in range(_Y_SWEEPS):
        if sweep % 2 == 0:
            order, nbrs = layers[1:], up
        else:
            order, nbrs = layers[-2::-1], down
        for layer in order:
            _place_layer(layer, [_mean_y(vertices, nbrs[v], vertices[v].y) for v in layer], vertices)
    for _ in range(_Y_BALANCE_PASSES):
        for layer in layers:
            targets = [_mean_y(vertices, up[v] + down[v], vertices[v].y) for v in layer]
            _place_layer(layer, targets, vertices)


def _frame_floor(boxes: list[tuple[int, int, float]], k1: int, k2: int) -> float:
    """Lowest bottom (plus clearance) among placed boxes whose columns overlap ``k1..k2``."""
    bottoms = [bottom for b1, b2, bottom in boxes if b1 <= k2 and k1 <= b2]
    return max(bottoms) + _FRAME_CLEARANCE if bottoms else float("-inf")


def _predecessor_need(
    v: int, layers: list[list[int]], slot: dict[int, int], vertices: list[_Vertex]
) -> float:
    """How far ``v`` must move down to keep its spacing to the vertex above it (of another band)."""
    layer = layers[vertices[v].layer]
    i = slot[v]
    if i == 0 or vertices[layer[i - 1]].group == vertices[v].group != "":
        return 0.0
    above, me = vertices[layer[i - 1]], vertices[v]
    return above.y + _separation(above, me) - me.y


def _place_group(
    members: list[int],
    boxes: list[tuple[int, int, float]],
    layers: list[list[int]],
    slot: dict[int, int],
    vertices: list[_Vertex],
) -> tuple[int, int, float]:
    """Shift a whole group down (if needed) below everything of lower rank; return its frame box."""
    real = [vertices[m] for m in members if vertices[m].node is not None]
    k1, k2 = min(v.layer for v in real), max(v.layer for v in real)
    top = min(_group_extent(v)[0] for v in real)
    need = max(0.0, _frame_floor(boxes, k1, k2) - top)
    for m in members:
        need = max(need, _predecessor_need(m, layers, slot, vertices))
    for m in members:
        vertices[m].y += need
    return k1, k2, max(_group_extent(v)[1] for v in real)


def _place_loose(
    loose: list[int],
    boxes: list[tuple[int, int, float]],
    layers: list[list[int]],
    slot: dict[int, int],
    vertices: list[_Vertex],
) -> list[tuple[int, int, float]]:
    """Move ungrouped vertices (top to bottom per layer) below lower-ranked frames; return their boxes."""
    placed = []
    for v in sorted(loose, key=lambda u: (vertices[u].layer, slot[u])):
        vertex = vertices[v]
        floor = _frame_floor(boxes, vertex.layer, vertex.layer) + vertex.height / 2
        vertex.y += max(0.0, floor - vertex.y, _predecessor_need(v, layers, slot, vertices))
        placed.append((vertex.layer, vertex.layer, vertex.bottom))
    return placed


def _separate_bands(vertices: list[_Vertex], layers: list[list[int]], rank: dict[str, int]) -> None:
    """Make group frames disjoint and keep foreign vertices (and edges) out of them.

    Bands (groups, and "" for ungrouped vertices) are handled in their global top-to-bottom rank; a
    band only ever moves down, below the frames/vertices of lower rank in the columns it spans.
    """
    if len(rank) <= 1:
        return
    slot = {v: i for layer in layers for i, v in enumerate(layer)}
    members: dict[str, list[int]] = {}
    for i, vertex in enumerate(vertices):
        members.setdefault(vertex.group, []).append(i)
    boxes: list[tuple[int, int, float]] = []
    for band in sorted(rank, key=rank.__getitem__):
        if band:
            boxes.append(_place_group(members[band], boxes, layers, slot, vertices))
        else:
            boxes += _place_loose(members[band], boxes, layers, slot, vertices)


def _label_leg(chain: list[int]) -> int:
    """Index of the gap (between two consecutive chain vertices) that carries the edge label."""
    return (len(chain) - 2) // 2


def _assign_x(
    vertices: list[_Vertex], layers: list[list[int]], chains: list[list[int]], edges: list[DrawEdge]
) -> tuple[list[float], list[float]]:
    """Column positions (wide enough for nodes and edge labels); sets each vertex's centre x."""
    col_width = [max((vertices[v].width for v in layer), default=0.0) for layer in layers]
    gaps = [_MIN_COL_GAP] * max(0, len(layers) - 1)
    for chain, edge in zip(chains, edges, strict=True):
        label = _truncate(_clean(edge.label), _MAX_EDGE_LABEL_UNITS)
        if label:
            gap = vertices[chain[0]].layer + _label_leg(chain)
            gaps[gap] = max(gaps[gap], _units(label) * _EDGE_CHAR_W + _LABEL_GAP_EXTRA)
    left, right = [], []
    x = _MARGIN + _GROUP_PAD
    for k, width in enumerate(col_width):
        left.append(x)
        right.append(x + width)
        x += width + (gaps[k] if k < len(gaps) else 0.0)
    for layer, l_x, r_x in zip(layers, left, right, strict=True):
        for v in layer:
            vertices[v].x = (l_x + r_x) / 2
    return left, right


def _group_extent(vertex: _Vertex) -> tuple[float, float]:
    """Vertical extent of a vertex including the group frame drawn around it."""
    if vertex.node is None or not vertex.group:
        return vertex.top, vertex.bottom
    return vertex.top - _GROUP_PAD - _GROUP_LABEL_H, vertex.bottom + _GROUP_PAD


def _compute_layout(
    nodes: list[DrawNode], edges: list[DrawEdge], index: dict[str, int], title: str
) -> _Layout:
    """Run all layout phases and move the picture below the title."""
    pairs = [(index[e.src], index[e.dst]) for e in edges]
    vertices, chains = _build_vertices(nodes, edges, index, _assign_layers(len(nodes), pairs))
    up, down = _neighbours(len(vertices), chains)
    layer_count = max((v.layer for v in vertices), default=-1) + 1
    layers: list[list[int]] = [[] for _ in range(layer_count)]
    for i, vertex in enumerate(vertices):
        layers[vertex.layer].append(i)
    layers, rank = _order_layers(layers, up, down, [v.group for v in vertices])
    _assign_y(vertices, layers, up, down)
    _separate_bands(vertices, layers, rank)
    col_left, col_right = _assign_x(vertices, layers, chains, edges)
    top = _MARGIN + (_TITLE_H if _clean(title) else 0.0)
    extents = [_group_extent(v) for v in vertices]
    shift = top - min((e[0] for e in extents), default=0.0)
    for vertex in vertices:
        vertex.y += shift
    bottom = max((e[1] + shift for e in extents), default=top)
    content_w = (col_right[-1] if col_right else _MARGIN) + _GROUP_PAD + _MARGIN
    title_w = 2 * _MARGIN + _units(_clean(title)) * _TITLE_CHAR_W
    return _Layout(vertices, chains, col_left, col_right, max(content_w, title_w), bottom + _MARGIN)


# --------------------------------------------------------------------------------------------------
# SVG emission
# --------------------------------------------------------------------------------------------------


def _spread(centre: float, height: float, count: int) -> list[float]:
    """``count`` port positions spread symmetrically around ``centre`` within a box of ``height``."""
    if count <= 1:
        return [centre] * count
    step = min(10.0, (height - 10.0) / (count - 1))
    return [centre + (i - (count - 1) / 2) * step for i in range(count)]


def _ports(layout: _Layout) -> tuple[dict[int, float], dict[int, float]]:
    """Per edge: y where it leaves its source and y where it enters its destination."""
    outgoing: dict[int, list[tuple[float, int]]] = {}
    incoming: dict[int, list[tuple[float, int]]] = {}
    vs = layout.vertices
    for i, chain in enumerate(layout.chains):
        outgoing.setdefault(chain[0], []).append((vs[chain[1]].y, i))
        incoming.setdefault(chain[-1], []).append((vs[chain[-2]].y, i))
    out_y: dict[int, float] = {}
    in_y: dict[int, float] = {}
    for table, result in ((outgoing, out_y), (incoming, in_y)):
        for v, items in table.items():
            items.sort()
            for (_, edge), y in zip(items, _spread(vs[v].y, vs[v].height, len(items)), strict=True):
                result[edge] = y
    return out_y, in_y


def _route(layout: _Layout, chain: list[int], y_out: float, y_in: float) -> list[tuple[float, float]]:
    """Polyline of an edge: source port, through each dummy column, to the destination port."""
    vs = layout.vertices
    points = [(vs[chain[0]].right, y_out)]
    for v in chain[1:-1]:
        points.append((layout.col_left[vs[v].layer], vs[v].y))
        points.append((layout.col_right[vs[v].layer], vs[v].y))
    points.append((vs[chain[-1]].left, y_in))
    return points


def _path_data(points: list[tuple[float, float]]) -> str:
    """SVG path: horizontal-tangent cubic Béziers across gaps, straight lines through dummy columns."""
    parts = [f"M{_num(points[0][0])},{_num(points[0][1])}"]
    for i, ((xa, ya), (xb, yb)) in enumerate(pairwise(points)):
        if i % 2 == 0:
            xm = _num((xa + xb) / 2)
            parts.append(f"C{xm},{_num(ya)} {xm},{_num(yb)} {_num(xb)},{_num(yb)}")
        else:
            parts.append(f"L{_num(xb)},{_num(yb)}")
    return " ".join(parts)


def _svg_header(layout: _Layout, title: str) -> list[str]:
    """Root element, accessible title, arrow marker, white background and the visible title."""
    w, h = _num(layout.width), _num(layout.height)
    clean_title = _clean(title)
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="{_FONT}" role="img" aria-label="{_xml(clean_title or "dataflow graph")}">',
        f"<title>{_xml(clean_title or 'dataflow graph')}</title>",
        "<defs>",
        '<marker id="ms-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{_EDGE_COLOUR}"/></marker>',
        "</defs>",
        '<rect class="background" x="0" y="0" width="100%" height="100%" fill="#ffffff"/>',
    ]
    if clean_title:
        lines.append(
            f'<text class="title" x="{_num(_MARGIN)}" y="{_num(_MARGIN + 16)}" font-size="16" '
            f'font-weight="bold" fill="#1c2833">{_xml(clean_title)}</text>'
        )
    return lines


def _svg_groups(layout: _Layout) -> list[str]:
    """Rounded labelled frames around the nodes of each group, drawn behind everything else."""
    boxes: dict[str, list[float]] = {}
    for v in layout.vertices:
        if v.node is None or not v.group:
            continue
        box = boxes.setdefault(v.group, [v.left, v.top, v.right, v.bottom])
        box[:] = [min(box[0], v.left), min(box[1], v.top), max(box[2], v.right), max(box[3], v.bottom)]
    lines = ['<g class="groups">']
    for name, (x1, y1, x2, y2) in boxes.items():
        x1, y1 = x1 - _GROUP_PAD, y1 - _GROUP_PAD - _GROUP_LABEL_H
        x2, y2 = x2 + _GROUP_PAD, y2 + _GROUP_PAD
        label = _truncate(_clean(name), max(1, int((x2 - x1 - 12) / _GROUP_CHAR_W)))
        lines += [
            f'<g class="group" data-group="{_xml(name)}">',
            f'<rect class="group-box" x="{_num(x1)}" y="{_num(y1)}" width="{_num(x2 - x1)}" '
            f'height="{_num(y2 - y1)}" rx="10" ry="10" fill="{_GROUP_FILL}" stroke="{_GROUP_STROKE}"/>',
            f'<text class="group-label" x="{_num(x1 + 8)}" y="{_num(y1 + 13)}" font-size="11" '
            f'fill="#566573">{_xml(label)}</text>',
            "</g>",
        ]
    lines.append("</g>")
    return lines


def _svg_edges(layout: _Layout, edges: list[DrawEdge]) -> list[str]:
    """Edge paths first, then all edge labels (with a white halo) on top of them."""
    out_y, in_y = _ports(layout)
    paths, labels = ['<g class="edges" fill="none">'], ['<g class="edge-labels" font-size="10">']
    for i, (edge, chain) in enumerate(zip(edges, layout.chains, strict=True)):
        points = _route(layout, chain, out_y[i], in_y[i])
        dash = _DASHES.get(edge.style)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        paths.append(
            f'<path class="edge" data-src="{_xml(edge.src)}" data-dst="{_xml(edge.dst)}" '
            f'd="{_path_data(points)}" stroke="{_EDGE_COLOUR}" stroke-width="1.4"{dash_attr} '
            'marker-end="url(#ms-arrow)"/>'
        )
        label = _truncate(_clean(edge.label), _MAX_EDGE_LABEL_UNITS)
        if label:
            leg = 2 * _label_leg(chain)
            (xa, ya), (xb, yb) = points[leg], points[leg + 1]
            labels.append(
                f'<text class="edge-label" x="{_num((xa + xb) / 2)}" y="{_num((ya + yb) / 2 + 3.5)}" '
                f'text-anchor="middle" fill="#1c2833" stroke="#ffffff" stroke-width="3" '
                f'stroke-linejoin="round" paint-order="stroke">{_xml(label)}</text>'
            )
    return paths + ["</g>"] + labels + ["</g>"]


def _svg_node(v: _Vertex) -> list[str]:
    """One node: tooltip, rounded box, bold label and optional smaller detail line."""
    node = v.node
    assert node is not None
    fill, stroke = _colours(node.kind)
    label = _truncate(_clean(node.label), _MAX_LABEL_UNITS)
    detail = _truncate(_clean(node.detail), _MAX_DETAIL_UNITS)
    tooltip = _xml(node.label) + (f"&#10;{_xml(node.detail)}" if _clean(node.detail) else "")
    label_y = v.y - 3 if detail else v.y + 4
    lines = [
        f'<g class="node" data-id="{_xml(node.id)}" data-kind="{_xml(node.kind)}">',
        f"<title>{tooltip}</title>",
        f'<rect class="node-box" x="{_num(v.left)}" y="{_num(v.top)}" width="{_num(v.width)}" '
        f'height="{_num(v.height)}" rx="6" ry="6" fill="{fill}" stroke="{stroke}" stroke-width="1.2"/>',
        f'<text class="node-label" x="{_num(v.x)}" y="{_num(label_y)}" text-anchor="middle" '
        f'font-size="12" font-weight="bold" fill="#1c2833">{_xml(label)}</text>',
    ]
    if detail:
        lines.append(
            f'<text class="node-detail" x="{_num(v.x)}" y="{_num(v.y + 12)}" text-anchor="middle" '
            f'font-size="10" fill="#424949">{_xml(detail)}</text>'
        )
    lines.append("</g>")
    return lines


def to_svg(nodes: list[DrawNode], edges: list[DrawEdge], title: str = "") -> str:
    """Lay the DAG out left to right and return a self-contained SVG document (UTF-8 text).

    Elements carry classes for inspection: ``g.node[data-id]`` > ``rect.node-box``, ``text.node-label``,
    ``text.node-detail``; ``path.edge[data-src][data-dst]`` (one per edge); ``text.edge-label``;
    ``g.group[data-group]`` > ``rect.group-box``. Raises ValueError for duplicate node ids, edges to
    unknown ids and cycles.
    """
    nodes, edges = list(nodes), list(edges)
    index = _validate(nodes, edges)
    layout = _compute_layout(nodes, edges, index, title)
    lines = _svg_header(layout, title) + _svg_groups(layout) + _svg_edges(layout, edges)
    lines.append('<g class="nodes">')
    for vertex in layout.vertices[: len(nodes)]:
        lines += _svg_node(vertex)
    lines += ["</g>", "</svg>"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# DOT emission
# --------------------------------------------------------------------------------------------------


def _dot_node(node: DrawNode, indent: str) -> str:
    """A DOT node statement with a two-line label, colours and the full text as tooltip."""
    fill, stroke = _colours(node.kind)
    label = _truncate(_clean(node.label), _MAX_LABEL_UNITS)
    detail = _truncate(_clean(node.detail), _MAX_DETAIL_UNITS)
    text = label + ("\n" + detail if detail else "")
    tooltip = _clean(node.label) + ("\n" + _clean(node.detail) if node.detail else "")
    return (
        f"{indent}{_dot_quote(node.id)} [label={_dot_quote(text)}, tooltip={_dot_quote(tooltip)}, "
        f'fillcolor="{fill}", color="{stroke}"];'
    )


def _dot_edge(edge: DrawEdge) -> str:
    """A DOT edge statement with optional label and style."""
    attrs = []
    label = _clean(edge.label)
    if label:
        attrs.append(f"label={_dot_quote(label)}")
    if edge.style != "solid":
        attrs.append(f"style={_dot_quote(edge.style if edge.style in STYLES else 'solid')}")
    suffix = f" [{', '.join(attrs)}]" if attrs else ""
    return f"  {_dot_quote(edge.src)} -> {_dot_quote(edge.dst)}{suffix};"


def to_dot(nodes: list[DrawNode], edges: list[DrawEdge], title: str = "") -> str:
    """Return Graphviz DOT text (``rankdir=LR``; one ``subgraph cluster_N`` per group).

    Raises ValueError for duplicate node ids, edges to unknown ids and cycles (like :func:`to_svg`).
    """
    nodes, edges = list(nodes), list(edges)
    _validate(nodes, edges)
    graph_attrs = f'rankdir=LR, fontname="{_DOT_FONT}", nodesep=0.3, ranksep=0.6'
    if _clean(title):
        graph_attrs += f", label={_dot_quote(_clean(title))}, labelloc=t, labeljust=l, fontsize=16"
    lines = [
        "digraph microstream {",
        f"  graph [{graph_attrs}];",
        f'  node [shape=box, style="rounded,filled", fontname="{_DOT_FONT}", fontsize=12];',
        f'  edge [fontname="{_DOT_FONT}", fontsize=10, color="{_EDGE_COLOUR}"];',
    ]
    for number, group in enumerate(_groups_in_order(nodes)):
        lines.append(f"  subgraph cluster_{number} {{")
        lines.append(
            f'    label={_dot_quote(_clean(group))}; style="rounded,filled"; '
            f'fillcolor="{_GROUP_FILL}"; color="{_GROUP_STROKE}";'
        )
        lines += [_dot_node(node, "    ") for node in nodes if node.group == group]
        lines.append("  }")
    lines += [_dot_node(node, "  ") for node in nodes if not node.group]
    lines += [_dot_edge(edge) for edge in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
