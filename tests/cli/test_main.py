"""The `microstream` command: run, describe, graph; exit codes; errors point at the script's line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.helpers import run_cli as cli

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    return script


GOOD = """
    import microstream as ms
    p = ms.Pipeline("job")
    out = ms.sinks.jsonl("{out}")
    src = p.from_iterable([{{"room": "a", "t": i * 10**9, "v": float(i)}} for i in range(30)], time="t")
    src.key_by("room").window(ms.tumbling(seconds=10)).aggregate(n=ms.agg.count()).sink(out)
    p.run()
"""


def test_help_and_version():
    r = cli("--help")
    assert r.returncode == 0 and "run" in r.stdout and "describe" in r.stdout
    assert cli("--version").stdout.startswith("microstream ")
    assert cli().returncode == 2  # no command: usage on stderr, exit 2


def test_run_writes_results(tmp_path):
    out = tmp_path / "o.jsonl"
    r = cli("run", str(write(tmp_path, GOOD.format(out=out))))
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 3


def test_describe_and_graph_do_not_run_the_job(tmp_path):
    out = tmp_path / "o.jsonl"
    script = write(tmp_path, GOOD.format(out=out))
    r = cli("describe", str(script))
    assert r.returncode == 0 and "window_aggregate" in r.stdout and "tumbling 10 s" in r.stdout
    svg = tmp_path / "g.svg"
    assert cli("graph", str(script), "-o", str(svg)).returncode == 0
    ET.parse(svg)
    dot = tmp_path / "g.dot"
    assert cli("graph", str(script), "-o", str(dot)).returncode == 0 and "->" in dot.read_text()
    assert not out.exists()


def test_pipeline_error_exits_2_with_operator_and_line(tmp_path):
    script = write(tmp_path, """
        import microstream as ms
        p = ms.Pipeline("bad")
        src = p.from_iterable([{"v": 1.0}])
        src.filter(lambda b: b["w"] > 0, name="check").sink(ms.sinks.collect())
        p.run()
    """)
    r = cli("run", str(script))
    assert r.returncode == 2
    assert "job.py:5" in r.stderr and "check" in r.stderr and "Traceback" not in r.stderr


def test_script_error_reports_its_line_not_a_runtime_traceback(tmp_path):
    script = write(tmp_path, """
        import microstream as ms
        p = ms.Pipeline("bad")
        x = 1 / 0
    """)
    r = cli("run", str(script))
    assert r.returncode == 1
    assert "job.py:4" in r.stderr and "ZeroDivisionError" in r.stderr and "Traceback" not in r.stderr


def test_missing_script_is_a_usage_error(tmp_path):
    r = cli("run", str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "no such script" in r.stderr


def test_the_example_runs_from_a_clean_directory(tmp_path):
    r = cli("run", str(ROOT / "examples" / "sensors" / "rooms.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "rooms.jsonl").stat().st_size > 0


def test_verbs_with_their_own_parser_are_found(tmp_path):
    # `keys` and `image` are handed to their modules by name: a moved module must not leave them dangling
    r = cli("keys", "list", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    assert "own keypairs: none" in r.stdout
    r = cli("image", "--help")
    assert r.returncode == 0 and "usage: microstream image" in r.stdout, r.stderr


def test_an_unknown_option_is_refused_with_the_verbs_usage(tmp_path):
    r = cli("run", "--nope", str(tmp_path / "job.py"))
    assert r.returncode == 2
    assert "usage: microstream run" in r.stderr and "unrecognized arguments: --nope" in r.stderr


def test_a_graph_is_written_as_svg_or_dot_only(tmp_path):
    out = tmp_path / "o.jsonl"
    script = write(tmp_path, GOOD.format(out=out))
    png = tmp_path / "g.png"
    r = cli("graph", str(script), "-o", str(png))
    assert r.returncode == 2 and ".svg or a .dot" in r.stderr and not png.exists()
    r = cli("run", str(script), "--graph", str(png))
    assert r.returncode == 2 and not png.exists() and not out.exists()  # refused before anything ran


ENDLESS = """
    import itertools
    import microstream as ms

    count = itertools.count()

    def read():  # a sensor that never stops: says once that it is being read
        n = next(count)
        if n == 1:
            print("reading", flush=True)
        return {"room": "a", "v": float(n)}

    p = ms.Pipeline("endless")
    p.poll(read, every="10ms").sink(ms.sinks.collect())
    p.run()
"""


def test_sigterm_stops_run_as_ctrl_c_does_one_line_exit_130_and_its_clean_up_runs(tmp_path):
    script = write(tmp_path, ENDLESS)
    temp = tmp_path / "tmp"   # where the run keeps the sensor's local log while it lasts
    temp.mkdir()
    run = subprocess.Popen([sys.executable, "-m", "microstream.cli", "run", str(script)], cwd=ROOT,
                           env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert run.stdout is not None and run.stderr is not None
        line = run.stdout.readline()                 # the sensor has been read twice: the run is under way
        assert line == "reading\n", run.stderr.read()
        assert list(temp.glob("microstream-log-*"))
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, err
    assert err == "microstream: interrupted\n"       # one line, as after Ctrl-C: no traceback
    assert not list(temp.glob("microstream-log-*"))  # the run's clean-up ran (a kill leaves the log behind)
