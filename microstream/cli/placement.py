"""Command-line verbs of the placement engine (wired into `microstream` by `microstream.cli`):

    microstream plan script.py --topology campus.toml [--explain] [--svg out.svg] [--solver heuristic|exact]
    microstream topology check campus.toml
    microstream topology show campus.toml

Exit codes as elsewhere: 0 success, 1 a check or placement failed, 2 the command line or the pipeline is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI builds its parser without loading numpy; the functions import what they use
    from ..placement.topology import Topology

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

__all__ = ["load_checked", "plan_main", "plan_parser", "topology_main", "topology_parser"]


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
    return p


def plan_main(argv: Sequence[str] | None = None) -> int:
    """`microstream plan`: returns 0 (placed), 1 (no feasible placement) or 2 (usage/pipeline/topology)."""
    args = plan_parser().parse_args(argv)
    return run_plan(args.script, args.topology, explain=args.explain, svg=args.svg, solver=args.solver)


def run_plan(script: Path, topology_file: Path, explain: bool = False, svg: Path | None = None,
             solver: str = "heuristic") -> int:
    from contextlib import nullcontext

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
    topology, code = load_checked(topology_file)
    if topology is None:
        return code
    code, pipelines = pipelines_of(script)
    if code:
        return code
    status = EXIT_OK
    for i, pipeline in enumerate(pipelines):
        try:
            plan = build_plan(pipeline.graph)
            # a cold numba cache compiles the search's kernels first: say so in a terminal rather than go quiet
            with compile_notice() if sys.stderr.isatty() else nullcontext():
                placement = place(plan, pipeline.graph, topology, solver=solver)
        except PlacementError as exc:
            print(f"microstream: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except MissingDependency as exc:          # --solver exact without the [placement] extra: no pipeline error
            print(f"microstream: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except MicrostreamError as exc:
            print(f"microstream: pipeline error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(report(plan, pipeline.graph, topology, placement, explain=explain))
        if svg is not None:
            path = svg if len(pipelines) == 1 else svg.with_name(f"{svg.stem}-{i}{svg.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(placement_svg(plan, pipeline.graph, topology, placement), encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
        if not placement.feasible:
            print("microstream: no feasible placement: " + "; ".join(placement.cost.reasons), file=sys.stderr)
            status = EXIT_FAILED
    return status


def load_checked(path: Path) -> tuple[Topology | None, int]:
    """The topology in `path`, checked; (None, 2) with the reasons on stderr when it is missing, invalid or
    inconsistent (`plan`, `coordinator --topology`)."""
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
        print(f"microstream: {path} has {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return None, EXIT_USAGE
    return topology, EXIT_OK


def topology_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of `microstream topology` (check | show FILE)."""
    p = parser or argparse.ArgumentParser(prog="microstream topology", description="Check or show a topology file.")
    p.add_argument("action", choices=("check", "show"), help="check: list problems; show: nodes, links, routes")
    p.add_argument("file", type=Path, help="topology TOML file")
    return p


def topology_main(argv: Sequence[str] | None = None) -> int:
    """`microstream topology check FILE` (0 ok, 1 problems listed) or `... show FILE`."""
    args = topology_parser().parse_args(argv)
    return run_topology(args.action, args.file)


def run_topology(action: str, file: Path) -> int:
    from ..placement.topology import Topology, TopologyError

    try:
        topology = Topology.load(file)
    except TopologyError as exc:
        print(f"microstream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a directory, a file it may not read
        print(f"microstream: cannot read the topology file {file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    errors = topology.check()
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


def describe_topology(topology: Topology) -> str:
    from ..placement.topology import format_bandwidth, format_bytes

    """Nodes, links and sensors, and the slowest route between any two sites."""
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
    routes = topology.routes()
    worst = max(((routes.latency_ms[i, j], a, b) for i, a in enumerate(routes.names)
                 for j, b in enumerate(routes.names) if i < j), default=None)
    if worst is not None:
        links, lat, neck = topology.path(worst[1], worst[2])
        lines.append(f"longest route: {worst[1]} → {worst[2]}: {lat:.3g} ms over {len(links)} links, "
                     f"bottleneck {format_bandwidth(neck)}")
    return "\n".join(lines)
