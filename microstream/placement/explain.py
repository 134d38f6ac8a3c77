"""Why each virtual node went where it did, in one sentence.

For every vnode the reason is read off the cost model with the other vnodes fixed: a pin; a better node it
could not take because that would exceed the node's cores; the neighbour it is co-located with and the
traffic that saves (and over which link it would otherwise go); or, when it talks to several nodes, the
trade-off that made its node the cheapest meeting point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..graph.logical import LogicalGraph
from ..graph.physical import PhysicalPlan
from .cost import Problem
from .topology import format_bandwidth, format_bytes, format_share

__all__ = ["explain", "vnode_labels"]


def vnode_labels(plan: PhysicalPlan, graph: LogicalGraph) -> dict[str, str]:
    """vnode -> its operators' names, e.g. "union, plausible_co2" (one name per logical operator)."""
    labels = {}
    for vn in plan.vnodes.values():
        names = list(dict.fromkeys(graph.nodes[plan.tasks[t].node_id].name for t in vn.tasks))
        index = {plan.tasks[t].index for t in vn.tasks}
        suffix = f"[{index.pop()}]" if len(index) == 1 and any(plan.tasks[t].parallelism > 1 for t in vn.tasks) else ""
        labels[vn.id] = ", ".join(names) + suffix
    return labels


def explain(st: Any, labels: Mapping[str, str], pins: Mapping[str, str],
            current: Mapping[str, str] | None = None) -> dict[str, str]:
    """vnode -> the reason it is on its node. `st` is the solvers' view of an assignment (`st.p` the problem,
    `st.a` the node of each vnode, and the per-node loads and paths the explanations read), made by the caller
    so that this module needs nothing from `solvers.py`."""
    problem, assign = st.p, st.a
    out = {}
    for v, vn in enumerate(problem.vnodes):
        if problem.pinned[v] >= 0:
            out[vn] = pins.get(vn, f"pinned to {problem.nodes[problem.pinned[v]]}")
            continue
        text = _blocked(st, v) or ""
        text = (text + "; " if text else "") + _because(st, v, labels)
        if problem.why_not.get(v):
            allowed = [problem.nodes[j] for j in np.flatnonzero(problem.allowed[v])]
            text += f" ({problem.why_not[v]}: only {', '.join(allowed)})"
        if current is not None and current.get(vn) == problem.nodes[assign[v]]:
            text += " (stays where it runs)"
        out[vn] = text
    return out


def _name(labels: Mapping[str, str], problem: Problem, v: int) -> str:
    return labels.get(problem.vnodes[v], problem.vnodes[v]).split(",")[0]


def _blocked(st, v: int) -> str | None:
    """ "moved off X: it would exceed its N cores" when a cheaper node, or the node of the vnode it exchanges
    most data with, lacked the room."""
    p = st.p
    here = int(st.a[v])
    free = st.free_deltas(v)
    candidates = [int(np.argmin(free))] if free.min() < -1e-12 else []
    if len(st.nb_idx[v]):
        candidates.append(int(st.a[st.nb_idx[v][int(np.argmax(st.nb_b[v]))]]))
    for n in candidates:
        if n != here and p.allowed[v, n] and st.used[n] + p.cpu[v] > p.capacity[n] + 1e-9:
            return (f"moved off {p.nodes[n]}: it would exceed its {p.cores[n]:g} cores "
                    f"({st.used[n]:.2f} in use + {p.cpu[v]:.2f} needed)")
    return None


def _because(st, v: int, labels: Mapping[str, str]) -> str:
    p, a = st.p, st.a
    here = int(a[v])
    idx, b = st.nb_idx[v], st.nb_b[v]
    if not len(idx) or b.max() <= 0:
        return f"on {p.nodes[here]}: it exchanges no data with other vnodes; chosen for spare cores"
    local = a[idx] == here
    if local.any() and b[local].sum() >= 0.5 * b.sum():
        k = int(np.argmax(np.where(local, b, -1.0)))
        w = int(idx[k])
        role = "upstream" if _is_edge(p, w, v) else "downstream"
        alt, term = _next_best(st, v, here)
        if term == "network" or alt < 0:
            return (f"co-located with its {role} '{_name(labels, p, w)}' to avoid {format_bytes(b[k])}"
                    + _over(st, v, here))
        return f"co-located with its {role} '{_name(labels, p, w)}' ({format_bytes(b[k])})" + _versus(st, v, here)
    parts = ", ".join(f"'{_name(labels, p, int(u))}' ({p.nodes[a[u]]}, {format_bytes(x)})"
                      for u, x in sorted(zip(idx.tolist(), b.tolist(), strict=True), key=lambda t: -t[1])[:3])
    return f"on {p.nodes[here]}: the cheapest meeting point for {parts}" + _versus(st, v, here)


def _next_best(st, v: int, here: int) -> tuple[int, str]:
    """(the next best node or -1, the cost term that makes it worse: network, latency or load)."""
    w = st.p.weights
    d = st.deltas(v)
    d[here] = np.inf
    alt = int(np.argmin(d))
    if not np.isfinite(d[alt]):
        return -1, ""
    terms = {"network": w.network * st._net(v)[alt], "latency": w.latency * st._latency(v)[alt],
             "load": w.load * st._load(v)[alt]}
    return alt, max(terms, key=lambda k: terms[k])


def _versus(st, v: int, here: int) -> str:
    """ "; on labs-pi1 the critical path would be 4 ms longer": what the next best node would cost more."""
    p = st.p
    alt, term = _next_best(st, v, here)
    if alt < 0:
        return " (no other node has the room)" if p.allowed[v].sum() > 1 else " (no other node may host it)"
    if term == "latency" and st._latency(v)[alt] > 0:
        return f"; on {p.nodes[alt]} the critical path would be {st._latency(v)[alt]:.3g} ms longer"
    if term == "network" and st._net(v)[alt] > 0:
        return f"; on {p.nodes[alt]} link use would grow by {format_share(st._net(v)[alt])} of a link"
    if term == "load":
        return f"; {p.nodes[alt]} is busier"
    return f" (as cheap as {p.nodes[alt]})"


def _over(st, v: int, here: int) -> str:
    """ " over the lib-pi1–core link (10 Mbit/s)": the slowest link to the next best node."""
    p = st.p
    d = st.deltas(v)
    d[here] = np.inf
    alt = int(np.argmin(d))
    if not np.isfinite(d[alt]) or p.routes is None:
        return " (no other node has the room)" if p.allowed[v].sum() > 1 else " (no other node may host it)"
    route = p.routes.link_ids[here][alt]
    if not route:
        return ""
    slowest = min((p.links[li] for li in route), key=lambda lk: lk.bandwidth)
    return (f" over the {slowest.label} link ({format_bandwidth(slowest.bandwidth)}) to {p.nodes[alt]}, "
            "the next best node")


def _is_edge(p: Problem, s: int, d: int) -> bool:
    return bool(np.any((p.src == s) & (p.dst == d)))
