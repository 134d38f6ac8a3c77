"""`microstream plan` and `microstream topology` (plan_main / topology_main), and the placement picture."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from microstream.cli.placement import plan_main, topology_main
from microstream.placement import Topology, place
from microstream.viz.placement import placement_svg, report
from tests.placement.helpers import CAMPUS, plan_of, room_pipeline

SCRIPT = '''
import microstream as ms

p = ms.Pipeline("campus_co2")
rooms = [p.from_iterable([{"t": 0, "room": "r1", "co2": 600.0}], time="t", name=n)
         for n in ("library-co2", "labs-co2", "dorms-co2")]
co2 = p.union(*rooms, name="all_co2").filter(lambda b: b["co2"] > 0, name="plausible")
means = (co2.key_by("room").window(ms.tumbling(minutes=10))
         .aggregate(co2=ms.agg.mean("co2"), name="room_means").with_parallelism(2))
means.sink(ms.sinks.collect(), name="dashboard")

if __name__ == "__main__":
    p.run()
'''

SVG = "{http://www.w3.org/2000/svg}"


def write_script(tmp_path):
    path = tmp_path / "campus_co2.py"
    path.write_text(SCRIPT)
    return path


def test_plan_main_prints_the_report_and_writes_an_svg(tmp_path, capsys):
    svg = tmp_path / "out" / "plan.svg"
    code = plan_main([str(write_script(tmp_path)), "--topology", str(CAMPUS), "--explain", "--svg", str(svg)])
    out = capsys.readouterr().out
    assert code == 0
    assert "placement of 'campus_co2' on 'campus' (heuristic solver" in out
    assert "pinned: source 'library-co2' is attached to lib-pi1" in out
    assert "lib-pi1–core" in out and "10 Mbit/s" in out          # traffic per link
    assert "critical path:" in out
    root = ET.parse(svg).getroot()
    groups = {g.get("data-group") for g in root.iter(f"{SVG}g") if g.get("class") == "group"}
    assert {"lib-pi1 (library)", "labs-pi2 (labs)", "dorm-pi1 (dorms)"} <= groups
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "edge-label"]
    assert any(label and "B/s" in label for label in labels)


def test_plan_main_refuses_a_picture_file_that_is_not_svg(tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert plan_main([str(write_script(tmp_path)), "--topology", str(CAMPUS), "--svg", str(png)]) == 2
    assert "name a .svg file, not plan.png" in capsys.readouterr().err and not png.exists()


def test_plan_main_exact_solver(tmp_path, capsys):
    assert plan_main([str(write_script(tmp_path)), "--topology", str(CAMPUS), "--solver", "exact"]) == 0
    assert "(exact solver" in capsys.readouterr().out


def test_plan_main_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\n[[node]]\nname = "b"\n')
    assert plan_main([str(write_script(tmp_path)), "--topology", str(bad)]) == 2
    assert "node 'b' is not connected" in capsys.readouterr().err
    assert plan_main([str(tmp_path / "missing.py"), "--topology", str(CAMPUS)]) == 2


def test_topology_main(tmp_path, capsys):
    assert topology_main(["check", str(CAMPUS)]) == 0
    assert "ok: 8 nodes" in capsys.readouterr().out
    assert topology_main(["show", str(CAMPUS)]) == 0
    assert "longest route: lib-pi2 → dorm-pi2" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\ncores = -1\n[[link]]\na = "a"\nb = "z"\nbandwidth = "1Gbit"\n')
    assert topology_main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "node 'a': cores must be positive" in out and "unknown node 'z'" in out
    broken = tmp_path / "broken.toml"
    broken.write_text("[[node]\n")
    assert topology_main(["check", str(broken)]) == 1


def test_report_and_svg_api():
    campus = Topology.load(CAMPUS)
    plan, graph = plan_of(room_pipeline())
    placement = place(plan, graph, campus)
    text = report(plan, graph, campus, placement)
    assert "why" not in text.splitlines()[2]                       # reasons only with explain=True
    assert "why" in report(plan, graph, campus, placement, explain=True)
    root = ET.fromstring(placement_svg(plan, graph, campus, placement))
    assert root.tag == f"{SVG}svg"
