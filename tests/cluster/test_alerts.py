"""docs/alerts.yml and docs/grafana-dashboard.json: promtool accepts the rules, the agent-down and dead-letter alerts
fire as promtool evaluates them on synthetic series, and every metric the rules and the dashboard query is one that
microstream exports (the metric definitions, and the /metrics of a real embedded cluster's coordinator and agents
running a job)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.metrics import Metrics
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

# what Prometheus makes itself for every target: the only series the rules may use that microstream does not export
PROMETHEUS_SERIES = {"up"}
# PromQL words that are not metric names (functions are recognised by the parenthesis after them)
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "inf", "nan"}


def rule_exprs(text: str) -> list[str]:
    """The `expr:` of every rule in a rules file: one line, or a folded block (`>-`) of the lines indented below."""
    exprs, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        key, sep, value = line.strip().removeprefix("- ").partition("expr:")
        if key or not sep:
            continue
        if value.strip() not in (">-", ">", "|", "|-"):
            exprs.append(value.strip())
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for follow in lines[i + 1:]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            block.append(follow.strip())
        exprs.append(" ".join(block).strip())
    return exprs


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every query of the dashboard: its panels' targets (rows' nested panels too) and its template variables."""
    exprs = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, ranges, grouping
    clauses, function names, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d*)?([eE][+-]?\d+)?", " ", text)  # numbers, 1e3 included
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\blabel_values\s*\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r" \1 ", text)  # Grafana's variable query
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        word, rest = match.group(), text[match.end():].lstrip()
        if rest.startswith("(") or word in KEYWORDS:
            continue
        names.add(word)
    return names


def queried() -> dict[str, set[str]]:
    """Metric name -> where it is queried (rules, dashboard)."""
    where: dict[str, set[str]] = {}
    exprs = [("docs/alerts.yml", e) for e in rule_exprs(RULES.read_text())]
    exprs += [("docs/grafana-dashboard.json", e) for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))]
    for source, expr in exprs:
        for name in metric_names(expr):
            where.setdefault(name, set()).add(source)
    return where


def exported(exposition: str) -> set[str]:
    """The series names an exposition can have, from its `# TYPE` lines (families without samples yet included):
    a counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, family, kind = line.split()
        names.add(family)
        if kind == "counter":
            names |= {family if family.endswith("_total") else f"{family}_total", f"{family}_created"}
        elif kind in ("histogram", "summary"):
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
    return names


def test_the_query_parser_finds_metric_names():
    assert metric_names('sum by (job, operator) (rate(microstream_records_in_total{job=~"$job"}[1m]))') == {
        "microstream_records_in_total"}
    assert metric_names("(sum by (job) (increase(a_total[5m])) == 0) and on (job) (rate(b{x=\"y\"}[5m]) > 0.5)") == {
        "a_total", "b"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[15m]))) > 1e3") == {"h_bucket"}
    assert metric_names("label_values(microstream_records_in_total, job)") == {"microstream_records_in_total"}
    assert rule_exprs("  - alert: A\n    expr: >-\n      x > 1\n      and y\n    for: 1m\n  - expr: z == 0\n") == [
        "x > 1 and y", "z == 0"]


def test_rules_and_dashboard_query_only_metrics_microstream_defines():
    where = queried()
    assert len(rule_exprs(RULES.read_text())) >= 10 and len(where) >= 15, where
    defined = exported(Metrics().exposition().decode()) | PROMETHEUS_SERIES
    unknown = {name: sorted(files) for name, files in where.items() if name not in defined}
    assert not unknown, f"queried but not exported: {unknown}"
    for wanted in ("microstream_node_up", "microstream_jobs", "microstream_watermark_lag_seconds",
                   "microstream_dead_letters_total", "microstream_backpressure_seconds_total",
                   "microstream_channel_stalled_seconds", "microstream_checkpoints_total"):
        assert "docs/alerts.yml" in where.get(wanted, set()), f"no alert on {wanted}"


def test_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ids = []
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        ids.append(panel["id"])
        assert panel["targets"] and panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    assert len(ids) == len(set(ids)) and len(panels) >= 12


# -- with the Debian prometheus package's promtool ----------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool():
    from microstream.cluster.prometheus import ensure_prometheus

    try:
        binary = Path(ensure_prometheus(progress=lambda text: print(text, file=sys.stderr)))
    except RuntimeError as exc:  # pragma: no cover - only where apt-get cannot install it
        pytest.skip(f"PROMETHEUS NOT AVAILABLE, promtool did not run: {exc}")
    tool = binary.with_name("promtool")
    if not tool.exists():  # pragma: no cover - the Debian package ships it
        pytest.skip("PROMTOOL NOT AVAILABLE next to prometheus")
    return str(tool)


@pytest.mark.slow
def test_promtool_checks_the_rules(promtool):
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr


# promtool evaluates the rules on these series every 15 s: node2 stops answering after 1 min, the parser of job j1
# sends 3 records/s to dead letters (a counter growing by 45 per 15 s), the window none
RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'microstream_node_up{{node="node1"}}'
        values: '1x20'
      - series: 'microstream_node_up{{node="node2"}}'
        values: '1 1 1 1 0x16'
      - series: 'microstream_dead_letters_total{{job="j1",operator="parse",instance="a:1"}}'
        values: '0+45x40'
      - series: 'microstream_dead_letters_total{{job="j1",operator="window",instance="a:1"}}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 1m
        alertname: MicrostreamAgentDown
        exp_alerts: []
      - eval_time: 2m
        alertname: MicrostreamAgentDown
        exp_alerts:
          - exp_labels: {{severity: critical, node: node2}}
            exp_annotations:
              summary: "microstream agent node2 is down"
              description: "{down}"
      - eval_time: 4m
        alertname: MicrostreamDeadLetters
        exp_alerts: []
      - eval_time: 10m
        alertname: MicrostreamDeadLetters
        exp_alerts:
          - exp_labels: {{severity: warning, job: j1, operator: parse}}
            exp_annotations:
              summary: "j1/parse sends 3 records/s to dead letters"
              description: "{dead}"
"""


def _description(alert: str) -> str:
    """The rule's description as promtool renders it (a folded block: lines joined by spaces)."""
    text = RULES.read_text()
    block = text[text.index(f"alert: {alert}"):]
    block = block[block.index("description: >-") + len("description: >-"):]
    lines = []
    for line in block.splitlines()[1:]:
        if not line.startswith(" " * 12):
            break
        lines.append(line.strip())
    return " ".join(lines).replace("{{ $labels.node }}", "node2").replace('"', '\\"')


@pytest.mark.slow
def test_promtool_fires_agent_down_and_dead_letter_alerts(promtool, tmp_path):
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(textwrap.dedent(RULE_TESTS.format(rules=json.dumps(str(RULES)),
                                                       down=_description("MicrostreamAgentDown"),
                                                       dead=_description("MicrostreamDeadLetters"))))
    r = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    # and it can fail: the agent-down alert does not fire while the node is up
    tests.write_text(tests.read_text().replace("'1 1 1 1 0x16'", "'1x20'"))
    r = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert r.returncode != 0 and "MicrostreamAgentDown" in r.stdout + r.stderr


# -- against a real cluster -------------------------------------------------------------------------------------------

JOB = """
import microstream as ms
p = ms.Pipeline("watched")
p.synthetic(count=10**9, sensors=20, rate=400, speed=1.0, glitch_rate=0.05).key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.collect())
p.run()
"""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_running_cluster(tmp_path):
    home = tmp_path / "home"
    cluster.up(2, home, progress=lambda _: None)
    try:
        (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "submit", "--detach", str(tmp_path / "job.py"),
                            "--home", str(home)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]

        def status() -> dict:
            out = subprocess.run([sys.executable, "-m", "microstream.cli", "status", "--json", "--home", str(home)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
            return json.loads(out)

        first = wait_for(lambda: (s := status())["jobs"][job]["state"] == "running" and s, 120, "the job to run")
        ports = [first["metrics_port"], *(a["metrics_port"] for a in first["agents"].values())]
        # the agents export the job's series once their hosts have reported
        wait_for(lambda: all(f'microstream_records_in_total{{job="{job}"' in _scrape(p) or p == ports[0]
                             for p in ports[:1]) and any(f'job="{job}"' in _scrape(p) for p in ports[1:]),
                 60, "the job's series on an agent")
        scraped = [_scrape(port) for port in ports]
        names = set().union(*(exported(text) for text in scraped)) | PROMETHEUS_SERIES
        unknown = {name: sorted(files) for name, files in queried().items() if name not in names}
        assert not unknown, f"queried but not exported by the running cluster: {unknown}"
        # what is exported has samples where it matters: node liveness on the coordinator, the job on an agent
        assert 'microstream_node_up{node="node1"} 1.0' in scraped[0]
        assert any(f'microstream_records_in_total{{job="{job}"' in text for text in scraped[1:])
        subprocess.run([sys.executable, "-m", "microstream.cli", "stop", job, "--home", str(home)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        cluster.down(home, progress=lambda _: None)
