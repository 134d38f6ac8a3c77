"""The console's pictures, drawn by `viz.dag` from a job's status (`microstream status --json`, one job):

- the DAG: one box per operator; the edges into the dead-letter hub are grouped (every operator has one, and
  drawn one by one they converge on the hub and hide the job): the hub stands alone and says how many feed it;
- the placement: one box per virtual node, framed by the agent it runs on, edges labelled with the traffic
  measured between virtual nodes (⇄: it crosses machines); dead-letter edges only while they carry something.

The page puts the live figures (records/s, watermarks, backpressure, dead letters) on these boxes itself.
"""

from __future__ import annotations

from typing import Any

from ..placement.topology import format_bytes
from ..viz.dag import DrawEdge, DrawNode, to_svg


def _hubs(dag: dict[str, Any]) -> set[str]:
    """The dead-letter hub's id (the only node of kind `side` that edges converge on)."""
    return {n["id"] for n in dag.get("nodes", []) if n.get("kind") == "side"}


def dag_svg(job_id: str, info: dict[str, Any]) -> str:
    dag = info.get("dag") or {"nodes": [], "edges": []}
    hubs = _hubs(dag)
    grouped = sum(1 for e in dag["edges"] if e["dst"] in hubs)
    nodes = []
    for n in dag["nodes"]:
        if n["id"] in hubs:
            detail = f"dead letters of {grouped} operators (grouped)"
        else:
            tasks = len(n.get("tasks", []))
            detail = (f"×{tasks} · " if tasks > 1 else "") + n.get("detail", "")
        nodes.append(DrawNode(n["id"], n["name"], detail, n.get("kind", "op")))
    edges = [DrawEdge(e["src"], e["dst"], e.get("label", ""), "dashed" if e.get("side") else "solid")
             for e in dag["edges"] if e["dst"] not in hubs]
    return to_svg(nodes, edges, title=f"{job_id}: {info.get('state', '')}")


def placement_svg(job_id: str, info: dict[str, Any]) -> str:
    dag = info.get("dag") or {"nodes": [], "edges": []}
    hubs = _hubs(dag)
    kind_of = {t: n.get("kind", "op") for n in dag["nodes"] for t in n.get("tasks", [])}
    vnode_of = {t: vn for vn, v in info.get("vnodes", {}).items() for t in v.get("tasks", [])}
    nodes = []
    for vn, v in sorted(info.get("vnodes", {}).items(), key=lambda item: _vnode_order(item[0])):
        kinds = {kind_of.get(t, "op") for t in v.get("tasks", [])}
        kind = ("source" if "source" in kinds else "side" if kinds == {"side"} else
                "sink" if kinds == {"sink"} else "op")
        nodes.append(DrawNode(vn, vn, " → ".join(v.get("tasks", [])), kind, v.get("agent") or "(not placed)"))
    measured = {(r["from"], r["to"]): r for r in info.get("traffic", [])}
    pairs: dict[tuple[str, str], bool] = {}  # (vnode, vnode) -> into the dead-letter hub
    tasks_of = {n["id"]: n.get("tasks", []) for n in dag["nodes"]}
    for e in dag["edges"]:
        for s in tasks_of.get(e["src"], []):
            for d in tasks_of.get(e["dst"], []):
                a, b = vnode_of.get(s), vnode_of.get(d)
                if a and b and a != b:
                    pairs[(a, b)] = pairs.get((a, b), True) and e["dst"] in hubs
    for pair in measured:
        pairs.setdefault(pair, False)
    edges = []
    for (a, b), dead in sorted(pairs.items()):
        row = measured.get((a, b))
        rate = row["bytes_per_s"] if row else None
        if dead and not rate:
            continue  # a dead-letter edge that carries nothing
        label = "" if rate is None else format_bytes(rate) + (" ⇄" if row and row.get("crosses_link") else "")
        edges.append(DrawEdge(a, b, label, "dashed" if dead else "solid"))
    return to_svg(nodes, edges, title=f"{job_id}: placement, measured traffic")


def _vnode_order(vn: str) -> tuple[int, str]:
    digits = "".join(ch for ch in vn if ch.isdigit())
    return (int(digits) if digits else 0, vn)
