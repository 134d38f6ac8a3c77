"""Placement engine: the heuristic's quality against the exact optimum, and its speed at cluster scale.

1. **Quality** on `--instances` (default 120) random instances small enough to solve exactly (4–8 virtual
   nodes × 3–5 physical nodes; random campus-like topologies, pinned sources, CPU demand at about half the
   cores, some vnodes needing the microvm backend): the heuristic's cost ÷ the optimum (median, p90, worst,
   how many equal), and the time of each solver. Then both solvers on growing instances, where the exact
   solver's time explodes.
2. **Scale**: the heuristic on (a) a real pipeline of ~1,000 operators (`random_pipeline`: sources named after
   sensors, filters, maps, keyed windows with parallelism 2, unions, sinks) placed on 100 nodes with
   `place()` end to end (flows, problem, solve, explanations), and (b) 1,000 virtual nodes × 100 nodes given
   directly to the solver. Each beside two baselines priced in the same run by the same cost model: a
   random placement and the coordinator's round robin (both honour pins and backends, neither capacity).

Targets: median ratio ≤ 1.02, worst ≤ 1.10; heuristic < 1 s at 1,000 operators × 100 nodes. Times are CPU
seconds of this process (the machine is shared: wall-clock time is also recorded) and the best of
`--repeat` runs. Writes bench/results/placement.json.

    python bench/placement.py [--instances 120] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import random_pipeline, table, write_json  # noqa: E402

from microstream.graph.physical import build_plan  # noqa: E402
from microstream.placement import Problem, exact, heuristic, place  # noqa: E402
from microstream.placement.synthetic import random_problem, random_topology  # noqa: E402


def timed(fn, repeat: int = 1):
    """(best CPU seconds, best wall seconds, last result)."""
    cpu, wall, result = [], [], None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall), result


# -- baselines --------------------------------------------------------------------------------------------

def random_placement(p: Problem, rng: np.random.Generator) -> np.ndarray:
    return np.array([int(rng.choice(np.flatnonzero(p.allowed[v]))) for v in range(p.n_vnodes)], dtype=np.int64)


def round_robin(p: Problem) -> np.ndarray:
    """What the coordinator did before: pins kept, the rest dealt out in turn over the nodes allowed."""
    out, turn = np.empty(p.n_vnodes, dtype=np.int64), 0
    for v in range(p.n_vnodes):
        allowed = np.flatnonzero(p.allowed[v])
        if p.pinned[v] >= 0:
            out[v] = p.pinned[v]
            continue
        out[v] = int(allowed[turn % len(allowed)])
        turn += 1
    return out


def priced(p: Problem, assign: np.ndarray) -> dict:
    """Cost with capacity ignored (so infeasible baselines still compare), and whether it is feasible."""
    net, lat, load, used = p.terms(assign)
    w = p.weights
    return {"cost": w.network * net + w.latency * lat + w.load * load, "feasible": p.feasible(assign),
            "overloaded_nodes": int((used > p.capacity + 1e-9).sum()), "network": net, "latency_ms": lat, "load": load}


# -- 1. quality -------------------------------------------------------------------------------------------

def quality(n: int) -> dict:
    ratios, t_h, t_e = [], [], []
    for s in range(n):
        rng = np.random.default_rng(s)
        p = random_problem(rng, int(rng.integers(4, 9)), int(rng.integers(3, 6)))
        ch, _, h = timed(lambda p=p: heuristic(p))
        ce, _, e = timed(lambda p=p, h=h: exact(p, h))
        ratios.append(p.total(h) / p.total(e))
        t_h.append(ch)
        t_e.append(ce)
    r = np.array(ratios)
    return {"instances": n, "median": float(np.median(r)), "p90": float(np.percentile(r, 90)),
            "worst": float(r.max()), "equal": int(np.isclose(r, 1.0).sum()),
            "heuristic_ms_median": 1000 * statistics.median(t_h), "exact_ms_median": 1000 * statistics.median(t_e),
            "heuristic_s_total": sum(t_h), "exact_s_total": sum(t_e)}


def growth() -> list[dict]:
    rows = []
    for v, n in ((6, 4), (8, 5), (10, 6), (12, 6), (14, 7)):
        t_h, t_e, worst = [], [], 1.0
        for s in range(5):
            p = random_problem(np.random.default_rng(1000 + s), v, n)
            ch, _, h = timed(lambda p=p: heuristic(p))
            ce, _, e = timed(lambda p=p, h=h: exact(p, h))
            t_h.append(ch)
            t_e.append(ce)
            worst = max(worst, p.total(h) / p.total(e))
        rows.append({"vnodes": v, "nodes": n, "heuristic_ms": 1000 * statistics.median(t_h),
                     "exact_ms": 1000 * statistics.median(t_e), "worst_ratio": worst})
    return rows


# -- 2. scale ---------------------------------------------------------------------------------------------------

def scale_pipeline(repeat: int) -> dict:
    rng = np.random.default_rng(0)
    topo = random_topology(rng, 100)
    pipeline = random_pipeline(rng, 1000, topo)
    plan = build_plan(pipeline.graph)
    cpu, wall, placement = timed(lambda: place(plan, pipeline.graph, topo), repeat)
    p = placement.problem
    assign = np.array([p.nodes.index(placement.assignment[v]) for v in p.vnodes])
    return {"operators": len(pipeline.graph.nodes), "tasks": len(plan.tasks), "vnodes": len(plan.vnodes),
            "nodes": len(topo.node_names()), "place_cpu_s": cpu, "place_wall_s": wall,
            "heuristic": priced(p, assign), "random": priced(p, random_placement(p, np.random.default_rng(1))),
            "round_robin": priced(p, round_robin(p))}


def scale_problem(repeat: int, seeds: int = 3) -> dict:
    runs = []
    for s in range(seeds):
        p = random_problem(np.random.default_rng(s), 1000, 100)
        cpu, wall, found = timed(lambda p=p: heuristic(p), repeat)
        runs.append({"seed": s, "edges": len(p.src), "cpu_s": cpu, "wall_s": wall, "heuristic": priced(p, found),
                     "random": priced(p, random_placement(p, np.random.default_rng(1))),
                     "round_robin": priced(p, round_robin(p))})
    return {"vnodes": 1000, "nodes": 100, "runs": runs, "cpu_s_worst": max(r["cpu_s"] for r in runs)}


# -- output -------------------------------------------------------------------------------------------------------

def print_quality(q: dict, rows: list[dict]) -> None:
    print(f"\nheuristic vs exact on {q['instances']} random instances (4-8 vnodes x 3-5 nodes)")
    print(table([("cost / optimum", "median", "p90", "worst", "equal"),
                 ("heuristic", f"{q['median']:.4f}", f"{q['p90']:.4f}", f"{q['worst']:.4f}",
                  f"{q['equal']}/{q['instances']}"),
                 ("target", "<= 1.02", "", "<= 1.10", "")]))
    print(f"time per instance (median): heuristic {q['heuristic_ms_median']:.1f} ms, "
          f"exact {q['exact_ms_median']:.2f} ms")
    print("\nas instances grow (median of 5):")
    print(table([("vnodes x nodes", "heuristic ms", "exact ms", "worst ratio")] +
                [(f"{r['vnodes']} x {r['nodes']}", f"{r['heuristic_ms']:.1f}", f"{r['exact_ms']:.1f}",
                  f"{r['worst_ratio']:.4f}") for r in rows]))


def _cost_row(name: str, c: dict, ref: float) -> tuple[str, ...]:
    feas = "yes" if c["feasible"] else f"no ({c['overloaded_nodes']} nodes overloaded)"
    return (name, f"{c['cost']:.4g}", f"{c['cost'] / ref:.2f}x", f"{c['network']:.4g}", f"{c['latency_ms']:.3g}",
            f"{c['load']:.3g}", feas)


def print_scale(sp: dict, pr: dict) -> None:
    print(f"\nplace() on a pipeline of {sp['operators']} operators ({sp['tasks']} tasks, {sp['vnodes']} vnodes) "
          f"x {sp['nodes']} nodes: {sp['place_cpu_s']:.3f} s CPU ({sp['place_wall_s']:.3f} s wall), target < 1 s")
    ref = sp["heuristic"]["cost"]
    head = ("placement", "cost", "vs heuristic", "network", "latency ms", "load", "feasible")
    print(table([head] + [_cost_row(k, sp[k], ref) for k in ("heuristic", "round_robin", "random")]))
    print(f"\nheuristic on {pr['vnodes']} vnodes x {pr['nodes']} nodes given directly (3 seeds): worst "
          f"{pr['cpu_s_worst']:.3f} s CPU, target < 1 s")
    rows = [("seed", "CPU s", "wall s", "heuristic", "round robin", "random", "heuristic feasible")]
    for r in pr["runs"]:
        rows.append((str(r["seed"]), f"{r['cpu_s']:.3f}", f"{r['wall_s']:.3f}", f"{r['heuristic']['cost']:.4g}",
                     f"{r['round_robin']['cost']:.4g} ({r['round_robin']['cost'] / r['heuristic']['cost']:.2f}x)",
                     f"{r['random']['cost']:.4g} ({r['random']['cost'] / r['heuristic']['cost']:.2f}x)",
                     "yes" if r["heuristic"]["feasible"] else "no"))
    print(table(rows))
    print("(baselines priced with capacity ignored; their overloads are what the heuristic avoids)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    q = quality(args.instances)
    rows = growth()
    print_quality(q, rows)
    sp = scale_pipeline(args.repeat)
    pr = scale_problem(args.repeat)
    print_scale(sp, pr)
    targets = {"median_ratio_le_1.02": q["median"] <= 1.02, "worst_ratio_le_1.10": q["worst"] <= 1.10,
               "pipeline_1000_ops_under_1s": sp["place_cpu_s"] < 1.0, "vnodes_1000_under_1s": pr["cpu_s_worst"] < 1.0}
    print("\ntargets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    path = write_json("placement", {"quality": q, "growth": rows, "pipeline_1000_ops": sp, "vnodes_1000": pr,
                                    "targets": targets})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
