"""`microstream plan --json` and `microstream topology show|check --json`: one JSON document on stdout, what the
text report says (the same placement, the same topology file), notices and errors on stderr, the same exit codes."""

from __future__ import annotations

import json
import tomllib

from microstream.cli.placement import placement_json, plan_main, topology_main
from microstream.placement import Topology, place
from microstream.placement.topology import format_bytes, format_share
from microstream.viz.placement import report
from tests.cli.test_placement import SCRIPT
from tests.helpers import run_cli
from tests.placement.helpers import CAMPUS, plan_of, room_pipeline

PINNED = {"library-co2": "lib-pi1", "labs-co2": "labs-pi2", "dorms-co2": "dorm-pi1"}   # campus.toml's sensors

TINY = """
name = "tiny"
[[node]]
name = "a"
cores = 0.01
[[node]]
name = "b"
cores = 0.01
[[link]]
a = "a"
b = "b"
latency_ms = 5
bandwidth = "1Mbit"
[[sensor]]
name = "co2"
node = "a"
rate = 100000
record_bytes = 40
"""


def _script(tmp_path, text: str = SCRIPT):
    path = tmp_path / "job.py"
    path.write_text('print("the script says hello")\n' + text)
    return path


def test_plan_json_is_one_document_on_stdout_with_the_placement(tmp_path):
    r = run_cli("plan", str(_script(tmp_path)), "--topology", str(CAMPUS), "--json")
    assert r.returncode == 0, r.stderr
    assert "the script says hello" in r.stderr                   # what the script prints is not in the JSON
    [result] = json.loads(r.stdout)                              # always a list: one object per pipeline
    assert result["pipeline"] == "campus_co2" and result["topology"] == "campus"
    assert result["feasible"] is True and result["solver"] == "heuristic" and result["reasons"] == []
    assert result["quality"] in ("optimal", "gap unknown") or result["quality"].startswith("within ")
    assert set(result["assignment"]) == set(result["vnodes"])
    for vn, where in result["assignment"].items():
        info = result["vnodes"][vn]
        assert info["node"] == where and info["why"] and info["operators"] and info["cores"] > 0
        for source, node in PINNED.items():
            if source in info["operators"]:                      # a source named like a sensor is pinned to it
                assert where == node and f"attached to {node}" in info["why"]
    operators = [op for info in result["vnodes"].values() for op in info["operators"]]
    assert set(PINNED) | {"all_co2", "plausible", "room_means", "dashboard"} <= set(operators)
    # every link is one of the topology's, with its speed from the file; the traffic adds up to the report's
    shown = json.loads(run_cli("topology", "show", str(CAMPUS), "--json").stdout)
    links = {lk["link"]: lk for lk in shown["links"]}
    for lk in result["links"]:
        assert links[lk["link"]]["bandwidth_bytes_per_s"] == lk["bandwidth_bytes_per_s"]
        assert lk["use"] > 0 and lk["traffic_bytes_per_s"] > 0
    assert "lib-pi1–core" in {lk["link"] for lk in result["links"]}   # the library's readings leave by its uplink
    cost = result["cost"]
    w = cost["weights"]
    assert cost["total"] >= w["network"] * cost["network"] + w["latency"] * cost["latency_ms"] + w["load"] * cost[
        "load"] - 1e-9
    assert cost["latency_ms"] == result["critical_path"]["latency_ms"]
    assert set(result["critical_path"]["vnodes"]) <= set(result["assignment"])
    assert sum(n["vnodes"] for n in result["nodes"].values()) == len(result["assignment"])


def test_plan_json_says_what_the_report_says_of_the_same_placement():
    campus = Topology.load(CAMPUS)
    plan, graph = plan_of(room_pipeline())
    placement = place(plan, graph, campus)
    data = json.loads(json.dumps(placement_json(plan, graph, campus, placement)))
    lines = report(plan, graph, campus, placement, explain=True).splitlines()
    assert f"placement of '{data['pipeline']}' on '{data['topology']}' ({data['solver']} solver" in lines[0]
    assert f", {data['quality']}): cost {data['cost']['total']:.4g} = network" in lines[0]
    rows = {line.split()[0]: line for line in lines[4:4 + len(data["vnodes"])]}
    assert set(rows) == set(data["vnodes"])
    for vn, info in data["vnodes"].items():
        assert rows[vn].split()[1:4] == [info["node"], info["site"], f"{info['cores']:.2f}"]
        assert f"  {info['label']}  " in rows[vn] and rows[vn].endswith(info["why"])
        assert info["label"].startswith(", ".join(info["operators"]))
    text = "\n".join(lines)
    for lk in data["links"]:
        assert f"{format_bytes(lk['traffic_bytes_per_s'])}  {format_share(lk['use'])}" in text
    assert f"between nodes: {format_bytes(data['cost']['between_nodes_bytes_per_s'])} in all" in text
    assert f"critical path: {data['critical_path']['latency_ms']:.3g} ms" in text


def test_plan_json_of_an_infeasible_placement_exits_1_with_the_reasons(tmp_path):
    topology = tmp_path / "tiny.toml"
    topology.write_text(TINY)
    job = _script(tmp_path, 'import microstream as ms\np = ms.Pipeline("tiny_job")\n'
                            'p.from_iterable([{"t": 0, "co2": 1.0}], time="t", name="co2")'
                            '.filter(lambda b: b["co2"] > 0, name="ok").sink(ms.sinks.collect(), name="out")\n'
                            'p.run()\n')
    r = run_cli("plan", str(job), "--topology", str(topology), "--json")
    assert r.returncode == 1
    [result] = json.loads(r.stdout)                              # valid JSON: no Infinity for the cost
    assert result["feasible"] is False and result["cost"]["total"] is None and result["gap"] is None
    assert result["quality"] == "gap unknown"
    assert any("a is overloaded" in reason for reason in result["reasons"])
    assert "microstream: no feasible placement: " in r.stderr.splitlines()[-1]


def test_plan_json_errors_are_one_line_on_stderr_and_nothing_on_stdout(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\n[[node]]\nname = "b"\ncores = 0\n')
    job = _script(tmp_path)
    assert plan_main([str(job), "--topology", str(bad), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"{bad} has 2 problem(s): " in err and "cores must be positive" in err and "is not connected" in err
    assert plan_main([str(job), "--topology", str(bad)]) == 2    # without --json: a problem a line, as before
    assert capsys.readouterr().err.count("\n") == 3
    assert plan_main([str(tmp_path / "missing.py"), "--topology", str(CAMPUS), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"microstream: no such script: {tmp_path / 'missing.py'}\n"


def test_plan_json_with_svg_names_the_picture(tmp_path, capsys):
    svg = tmp_path / "plan.svg"
    assert plan_main([str(_script(tmp_path)), "--topology", str(CAMPUS), "--json", "--svg", str(svg)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["svg"] == str(svg) and svg.read_text().startswith("<svg")
    assert f"wrote {svg}" in err


def test_topology_show_json_is_the_file(tmp_path):
    r = run_cli("topology", "show", str(CAMPUS), "--json")
    assert r.returncode == 0 and r.stderr == ""
    shown = json.loads(r.stdout)
    text = run_cli("topology", "show", str(CAMPUS)).stdout
    data = tomllib.loads(CAMPUS.read_text())
    assert shown["name"] == data["name"] == "campus" and shown["source"] == str(CAMPUS)
    assert [n["name"] for n in shown["nodes"]] == [n["name"] for n in data["node"]]
    for node, spec in zip(shown["nodes"], data["node"], strict=True):
        assert (node["cores"], node["site"], node["arch"], node["backends"], node["labels"]) == (
            spec["cores"], spec["site"], spec["arch"], spec["backends"], spec["labels"])
        assert node["available"] is True and node["failure_domain"] == spec["site"]
    assert shown["nodes"][0]["memory_bytes"] == 4 * 2**30                          # "4GiB"
    assert [s["name"] for s in shown["sites"]] == [s["name"] for s in data["site"]]
    assert shown["sites"][0]["lan"] == {"latency_ms": 0.3, "bandwidth_bytes_per_s": 125e6}   # "1Gbit"
    assert next(s for s in shown["sites"] if s["name"] == "core")["lan"] is None
    from_file = [lk for lk in shown["links"] if lk["kind"] == "link"]
    assert [(lk["a"], lk["b"], lk["latency_ms"]) for lk in from_file] == [
        (lk["a"], lk["b"], lk["latency_ms"]) for lk in data["link"]]
    assert from_file[0]["bandwidth_bytes_per_s"] == 10e6 / 8                        # "10Mbit"
    lan = next(lk for lk in shown["links"] if lk["link"] == "labs-pi1–labs-pi2")    # a site's LAN, as routes use it
    assert lan["kind"] == "lan" and lan["latency_ms"] == 0.2
    assert [(s["name"], s["node"], s["rate"], s["record_bytes"]) for s in shown["sensors"]] == [
        (s["name"], s["node"], s["rate"], s["record_bytes"]) for s in data["sensor"]]
    assert shown["sensors"][0]["bytes_per_s"] == 60 * 40
    route = shown["longest_route"]
    assert f"longest route: {route['from']} → {route['to']}: {route['latency_ms']:.3g} ms over " \
           f"{len(route['links'])} links" in text
    assert shown["warnings"] == []


def test_topology_check_json_lists_the_problems_with_exit_1(tmp_path, capsys):
    assert topology_main(["check", str(CAMPUS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"file": str(CAMPUS), "ok": True, "problems": [], "warnings": []}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\ncores = -1\n[[link]]\na = "a"\nb = "z"\nbandwidth = "1Gbit"\n')
    assert topology_main(["check", str(bad)]) == 1
    listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert topology_main(["check", str(bad), "--json"]) == 1
    checked = json.loads(capsys.readouterr().out)
    assert checked["ok"] is False and checked["problems"] == listed and len(listed) >= 2
    assert topology_main(["show", str(bad), "--json"]) == 1     # show: nothing to show, the error on stderr
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"{bad} has {len(listed)} problem(s): " in err
    assert topology_main(["show", str(tmp_path / "missing.toml"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no such topology file" in err


def test_help_shows_json_with_an_example():
    for verb in ("plan", "topology"):
        r = run_cli(verb, "--help")
        assert r.returncode == 0 and "--json" in r.stdout
        assert "--json" in r.stdout.split("\nexamples:\n")[1], r.stdout
