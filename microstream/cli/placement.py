"""Command-line verbs of the placement engine (wired into `microstream` by `microstream.cli`):

    microstream plan script.py --topology campus.toml [--explain] [--svg out.svg] [--solver heuristic|exact] [--json]
    microstream topology check campus.toml [--json]
    microstream topology show campus.toml [--json]

Exit codes as elsewhere: 0 success, 1 a check or placement failed, 2 the command line or the pipeline is wrong.
With --json the result is one JSON document on stdout (`plan`: a list with one object per pipeline, see
`placement_json`; `topology show`: `topology_json`; `topology check`: {"file", "ok", "problems", "warnings"});
notices and errors go to stderr, an error as one line, and the exit codes stay the same.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI builds its parser without loading numpy; the functions import what they use
    from ..graph.logical import LogicalGraph
    from ..graph.physical import PhysicalPlan
    from ..placement.solvers import Placement
    from ..placement.topology import Link, LinkSpec, Topology

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

__all__ = ["load_checked", "placement_json", "plan_main", "plan_parser", "topology_json", "topology_main",
           "topology_parser"]


def plan_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of `microstream plan` (added to `parser` if given, e.g. a subcommand's parser)."""
    p = parser or argparse.ArgumentParser(prog="microstream plan",
                                          description="Place a pipeline's virtual nodes on a topology and "
                                                      "report where each goes, the traffic and the cost.")
    p.add_argument("script", type=Path, help="pipeline script (built, not run)")
    p.add_argument("--topology", "-t", type=Path, required=True, metavar="FILE", help="topology TOML file")
    p.add_argument("--explain", action="store_true", help="say why each virtual node went where it did")
    p.add_argument("--svg", type=Path, metavar="FILE", help="write a picture of the placement here (.svg)")
    p.add_argument("--solver", choices=("heuristic", "exact"), default="heuristic",
                   help="heuristic (default: local and large-neighbourhood search) or exact (the MILP; proves "
                        "its gap)")
    p.add_argument("--json", action="store_true",
                   help="the placement as JSON on stdout: a list with one object per pipeline (assignment, "
                        "vnodes with their reasons, cost terms, traffic per link)")
    return p


def plan_main(argv: Sequence[str] | None = None) -> int:
    """`microstream plan`: returns 0 (placed), 1 (no feasible placement) or 2 (usage/pipeline/topology)."""
    args = plan_parser().parse_args(argv)
    return run_plan(args.script, args.topology, explain=args.explain, svg=args.svg, solver=args.solver,
                    as_json=args.json)


def run_plan(script: Path, topology_file: Path, explain: bool = False, svg: Path | None = None,
             solver: str = "heuristic", as_json: bool = False) -> int:
    """Place each pipeline `script` builds and print the report (`as_json`: one JSON list on stdout, printed once
    every pipeline is placed, so a failure leaves stdout empty rather than half a document)."""
    from contextlib import nullcontext, redirect_stdout

    from ..core.errors import MicrostreamError
    from ..core.optional import MissingDependency
    from ..graph.physical import build_plan
    from ..placement.cost import PlacementError
    from ..placement.solvers import place
    from ..runtime.progress import compile_notice
    from ..viz.placement import placement_svg, report
    from .script import pipelines_of

    if svg is not None and svg.suffix.lower() != ".svg":  # before placing: out.png would hold SVG text
        print(f"microstream plan: --svg writes SVG: name a .svg file, not {svg.name}", file=sys.stderr)
        return EXIT_USAGE
    topology, code = load_checked(topology_file, one_line=as_json)
    if topology is None:
        return code
    with redirect_stdout(sys.stderr) if as_json else nullcontext():  # what the script prints is not the JSON
        code, pipelines = pipelines_of(script)
    if code:
        return code
    status = EXIT_OK
    results: list[dict[str, Any]] = []
    for i, pipeline in enumerate(pipelines):
        try:
            plan = build_plan(pipeline.graph)
            # a cold numba cache compiles the search's kernels first: say so in a terminal rather than go quiet
            with compile_notice() if sys.stderr.isatty() else nullcontext():
                placement = place(plan, pipeline.graph, topology, solver=solver)
        except PlacementError as exc:
            print(f"microstream: {_say(exc, as_json)}", file=sys.stderr)
            return EXIT_FAILED
        except MissingDependency as exc:          # --solver exact without the [placement] extra: no pipeline error
            print(f"microstream: {_say(exc, as_json)}", file=sys.stderr)
            return EXIT_USAGE
        except MicrostreamError as exc:
            print(f"microstream: pipeline error: {_say(exc, as_json)}", file=sys.stderr)
            return EXIT_USAGE
        path = None
        if svg is not None:
            path = svg if len(pipelines) == 1 else svg.with_name(f"{svg.stem}-{i}{svg.suffix}")
        if as_json:
            results.append(placement_json(plan, pipeline.graph, topology, placement))
            if path is not None:
                results[-1]["svg"] = str(path)
        else:
            print(report(plan, pipeline.graph, topology, placement, explain=explain))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(placement_svg(plan, pipeline.graph, topology, placement), encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
        if not placement.feasible:
            print("microstream: no feasible placement: " + _say("; ".join(placement.cost.reasons), as_json),
                  file=sys.stderr)
            status = EXIT_FAILED
    if as_json:
        print(_dumps(results))
    return status


def placement_json(plan: PhysicalPlan, graph: LogicalGraph, topology: Topology,
                   placement: Placement) -> dict[str, Any]:
    """What `plan --json` prints per pipeline: the report's figures (`viz.placement.report`), in plain units.

    {"pipeline", "topology", "feasible", "solver", "seconds", "quality" ("optimal", "within x % of optimal" or
    "gap unknown"), "gap" (proven, a fraction; null when unknown), "bound",
    "cost": {"total" (null when infeasible), "network", "latency_ms", "load", "moves", "between_nodes_bytes_per_s",
             "weights": {"network", "latency", "load"}},
    "assignment": {vnode: node},
    "vnodes": {vnode: {"node", "site", "cores", "operators": [names], "label" (as in the report), "tasks", "why"}},
    "links": [{"link", "a", "b", "bandwidth_bytes_per_s", "latency_ms", "traffic_bytes_per_s", "use"}],
    "nodes": {node: {"site", "cores", "used", "memory_bytes", "vnodes"}} (the nodes that host or carry something),
    "critical_path": {"latency_ms", "vnodes": [...]}, "reasons": [...], "warnings": [...]}"""
    from ..placement.cost import Weights
    from ..placement.explain import vnode_labels

    cost = placement.cost
    weights = placement.problem.weights if placement.problem else Weights()
    labels = vnode_labels(plan, graph)
    cpu = placement.flows.cpu if placement.flows is not None else {}
    vnodes = {}
    for vn, node in placement.assignment.items():
        tasks = plan.vnodes[vn].tasks
        vnodes[vn] = {"node": node, "site": topology.site_of(node) or None,
                      "cores": sum(cpu.get(t, 0.0) for t in tasks),
                      "operators": list(dict.fromkeys(graph.nodes[plan.tasks[t].node_id].name for t in tasks)),
                      "label": labels[vn], "tasks": list(tasks), "why": placement.explain.get(vn, "")}
    by_label = {lk.label: lk for lk in topology.all_links()}
    links = [{**_link_json(by_label[label]), "traffic_bytes_per_s": rate, "use": cost.link_utilisation[label]}
             for label, rate in cost.link_traffic.items()]
    hosted = {n: sum(1 for where in placement.assignment.values() if where == n) for n in topology.node_names()}
    nodes = {n: {"site": topology.node(n).site or None, "cores": topology.node(n).cores,
                 "used": cost.node_load.get(n, 0.0), "memory_bytes": cost.node_memory.get(n, 0.0),
                 "vnodes": hosted[n]}
             for n in topology.node_names() if hosted[n] or cost.node_load.get(n)}
    return _finite({
        "pipeline": plan.job, "topology": topology.name, "feasible": placement.feasible, "solver": placement.solver,
        "seconds": placement.seconds, "quality": placement.quality,
        "gap": placement.gap if placement.feasible else None, "bound": placement.bound,
        "cost": {"total": cost.total, "network": cost.network, "latency_ms": cost.latency_ms, "load": cost.load,
                 "moves": cost.moves, "between_nodes_bytes_per_s": cost.cross_bytes,
                 "weights": {"network": weights.network, "latency": weights.latency, "load": weights.load}},
        "assignment": dict(placement.assignment), "vnodes": vnodes, "links": links, "nodes": nodes,
        "critical_path": {"latency_ms": cost.latency_ms, "vnodes": list(cost.critical_path)},
        "reasons": list(cost.reasons), "warnings": list(cost.warnings)})


def _link_json(lk: Link) -> dict[str, Any]:
    return {"link": lk.label, "a": lk.a, "b": lk.b, "bandwidth_bytes_per_s": lk.bandwidth,
            "latency_ms": lk.latency_ms}


def _finite(value: Any) -> Any:
    """`value` with numpy numbers as Python ones and inf/NaN as None: JSON has no Infinity (an infeasible
    placement's total), and a reader's json.loads would take it only by luck."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if hasattr(value, "item"):  # a numpy scalar
        return _finite(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_finite(value), indent=2, allow_nan=False)


def _say(error: object, one_line: bool) -> str:
    """An error's text; on one line for --json ("... has errors: a; b"), whose stderr a caller reads a line."""
    text = str(error)
    if not one_line:
        return text
    first, *rest = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    return first + (" " + "; ".join(rest) if rest else "")


def load_checked(path: Path, one_line: bool = False) -> tuple[Topology | None, int]:
    """The topology in `path`, checked; (None, 2) with the reasons on stderr when it is missing, invalid or
    inconsistent (`plan`, `coordinator --topology`; `one_line`: the reasons on one line, as `plan --json` says
    an error)."""
    from ..placement.topology import Topology, TopologyError

    try:
        topology = Topology.load(path)
    except TopologyError as exc:
        print(f"microstream: {exc}", file=sys.stderr)
        return None, EXIT_USAGE
    except OSError as exc:  # a directory, a file it may not read
        print(f"microstream: cannot read the topology file {path}: {exc.strerror or exc}", file=sys.stderr)
        return None, EXIT_USAGE
    errors = topology.check()
    if errors:
        problems = " " + "; ".join(errors) if one_line else "".join(f"\n  {e}" for e in errors)
        print(f"microstream: {path} has {len(errors)} problem(s):{problems}", file=sys.stderr)
        return None, EXIT_USAGE
    return topology, EXIT_OK


def topology_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of `microstream topology` (check | show FILE [--json])."""
    p = parser or argparse.ArgumentParser(prog="microstream topology", description="Check or show a topology file.")
    p.add_argument("action", choices=("check", "show"), help="check: list problems; show: nodes, links, routes")
    p.add_argument("file", type=Path, help="topology TOML file")
    p.add_argument("--json", action="store_true",
                   help="the result as JSON on stdout (show: nodes, links, sites, sensors and the longest route; "
                        "check: the problems and warnings)")
    return p


def topology_main(argv: Sequence[str] | None = None) -> int:
    """`microstream topology check FILE` (0 ok, 1 problems listed) or `... show FILE`."""
    args = topology_parser().parse_args(argv)
    return run_topology(args.action, args.file, as_json=args.json)


def run_topology(action: str, file: Path, as_json: bool = False) -> int:
    from ..placement.topology import Topology, TopologyError

    try:
        topology = Topology.load(file)
    except TopologyError as exc:
        print(f"microstream: {_say(exc, as_json)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a directory, a file it may not read
        print(f"microstream: cannot read the topology file {file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    errors = topology.check()
    if as_json:
        if action == "check":  # the problems are what check reports: on stdout, as without --json
            print(_dumps({"file": str(file), "ok": not errors, "problems": errors,
                          "warnings": list(topology.warnings)}))
        elif errors:
            print(f"microstream: {file} has {len(errors)} problem(s): " + "; ".join(errors), file=sys.stderr)
        else:
            print(_dumps(topology_json(topology)))
        return EXIT_FAILED if errors else EXIT_OK
    if errors:
        print(f"{file}: {len(errors)} problem(s):")
        for e in errors:
            print(f"  {e}")
        return EXIT_FAILED
    print(f"{file}: ok: {topology.summary()}")
    for w in topology.warnings:
        print(f"  warning: {w}")
    if action == "show":
        print(describe_topology(topology))
    return EXIT_OK


def topology_json(topology: Topology) -> dict[str, Any]:
    """What `topology show --json` prints: the checked topology as the engine reads it, in plain units.

    {"name", "source", "lan": {"latency_ms", "bandwidth_bytes_per_s"}, "sites": [{"name", "lan": {...} | null}],
    "nodes": [{"name", "site", "cores", "memory_bytes", "arch", "backends", "labels", "available", "domain",
               "failure_domain"}],
    "links": [{"link", "a", "b", "bandwidth_bytes_per_s", "latency_ms", "kind"}] (every link the routes use: the
             file's ("link"), each site's LAN between its nodes ("lan"), the default mesh ("default")),
    "sensors": [{"name", "node", "rate", "record_bytes", "bytes_per_s"}] (rates in records/s; null when unknown),
    "longest_route": {"from", "to", "latency_ms", "links": [...], "bottleneck_bytes_per_s"} | null,
    "warnings": [...]}"""
    def spec(lan: LinkSpec | None) -> dict[str, float] | None:
        return None if lan is None else {"latency_ms": lan.latency_ms, "bandwidth_bytes_per_s": lan.bandwidth}

    longest = _longest_route(topology)
    return _finite({
        "name": topology.name, "source": topology.source or None, "lan": spec(topology.lan),
        "sites": [{"name": s.name, "lan": spec(s.lan)} for s in topology.sites],
        "nodes": [{"name": n.name, "site": n.site or None, "cores": n.cores, "memory_bytes": n.memory,
                   "arch": n.arch, "backends": list(n.backends), "labels": dict(n.labels), "available": n.available,
                   "domain": n.domain or None, "failure_domain": n.failure_domain or None} for n in topology.nodes],
        "links": [{**_link_json(lk), "kind": lk.kind} for lk in topology.all_links()],
        "sensors": [{"name": s.name, "node": s.node, "rate": s.rate, "record_bytes": s.record_bytes,
                     "bytes_per_s": s.rate * s.record_bytes if s.rate and s.record_bytes else None}
                    for s in topology.sensors],
        "longest_route": None if longest is None else {
            "from": longest[0], "to": longest[1], "latency_ms": longest[3],
            "links": [lk.label for lk in longest[2]], "bottleneck_bytes_per_s": longest[4]},
        "warnings": list(topology.warnings)})


def _longest_route(topology: Topology) -> tuple[str, str, list[Link], float, float] | None:
    """The slowest route between any two nodes: (from, to, its links, latency ms, bottleneck bytes/s)."""
    routes = topology.routes()
    worst = max(((routes.latency_ms[i, j], a, b) for i, a in enumerate(routes.names)
                 for j, b in enumerate(routes.names) if i < j), default=None)
    if worst is None:
        return None
    links, lat, neck = topology.path(worst[1], worst[2])
    return worst[1], worst[2], links, lat, neck


def describe_topology(topology: Topology) -> str:
    """Nodes, links and sensors, and the slowest route between any two sites."""
    from ..placement.topology import format_bandwidth, format_bytes

    lines = ["", "nodes:"]
    for n in topology.nodes:
        extra = "" if n.available else "  (hosts nothing)"
        lines.append(f"  {n.name:<14} {n.site or '-':<10} {n.cores:g} cores  {n.memory / 2**30:.3g} GiB  {n.arch:<8} "
                     f"{','.join(n.backends)}{extra}")
    lines.append("links:")
    for lk in topology.all_links():
        if lk.kind != "lan":
            lines.append(f"  {lk.describe()}")
    for site in topology.sites:
        if site.lan is not None:
            lines.append(f"  site {site.name}: LAN {format_bandwidth(site.lan.bandwidth)}, {site.lan.latency_ms:g} ms")
    if topology.sensors:
        lines.append("sensors:")
        for s in topology.sensors:
            rate = f"{s.rate:g} records/s" if s.rate else "rate unknown"
            size = f" ({format_bytes((s.rate or 0) * (s.record_bytes or 0))})" if s.rate and s.record_bytes else ""
            lines.append(f"  {s.name:<16} on {s.node}: {rate}{size}")
    longest = _longest_route(topology)
    if longest is not None:
        a, b, links, lat, neck = longest
        lines.append(f"longest route: {a} → {b}: {lat:.3g} ms over {len(links)} links, "
                     f"bottleneck {format_bandwidth(neck)}")
    return "\n".join(lines)
