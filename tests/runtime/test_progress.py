"""Runs that talk: the progress hook, the progress line and the closing report (fitted to the terminal), quiet
when not in a terminal or with --quiet, and a script that runs no pipeline is exit 2."""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import numpy as np

import microstream as ms
from microstream.cli.main import main
from microstream.runtime.local import LocalRuntime
from microstream.runtime.progress import (
    COMPILE_NOTICE,
    Progress,
    ProgressLine,
    compile_notice,
    fit_table,
    progress_text,
)
from microstream.runtime.results import RunResult, report

T0 = 1_700_000_000 * 10**9
TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "demo3.toml"


def test_the_progress_hook_sees_records_event_time_and_the_share_read():
    p = ms.Pipeline("replay")
    n = 50_000
    p.from_arrays({"t": T0 + np.arange(n) * 10**6, "v": np.ones(n)}, time="t", batch_size=1000).sink(ms.sinks.collect())
    seen: list[Progress] = []
    p.build()
    LocalRuntime(p.graph, verbose=False, progress=seen.append, progress_every=0.0).run()
    assert len(seen) > 10 and seen[-1].done
    assert [s.records for s in seen] == sorted(s.records for s in seen)
    assert seen[-1].records == n and seen[-1].fraction == 1.0 and seen[-1].event_time == T0 + (n - 1) * 10**6
    middle = [s.fraction for s in seen[:-1]]
    assert all(f is not None and 0 <= f <= 1 for f in middle) and any(0 < f < 1 for f in middle)


def test_files_report_the_share_of_bytes_read(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("t,v\n" + "".join(f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,{i}\n" for i in range(3600)))
    p = ms.Pipeline("file")
    p.read_csv(path, time="t", batch_size=100).sink(ms.sinks.collect())
    p.build()
    seen: list[Progress] = []
    LocalRuntime(p.graph, verbose=False, progress=seen.append, progress_every=0.0).run()
    assert seen[-1].fraction == 1.0 and all(s.fraction is not None for s in seen)


def test_live_sources_have_no_share_or_eta():
    p = ms.Pipeline("live")
    p.poll(lambda: {"v": 1.0}, every=0.001, limit=30).sink(ms.sinks.collect())
    p.build()
    seen: list[Progress] = []
    LocalRuntime(p.graph, verbose=False, progress=seen.append, progress_every=0.0).run()
    assert all(s.fraction is None and s.eta is None for s in seen[:-1])


def test_the_progress_line_fits_the_width_and_is_cleared(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    out = io.StringIO()
    line = ProgressLine(out, every=0.0, after=0.0)
    line(Progress("a-long-pipeline-name", 3.0, 9_000_000, T0, 0.4))
    line.close()
    drawn = [part for part in out.getvalue().split("\r\x1b[K") if part]
    assert drawn and all(len(d) <= 49 for d in drawn)
    assert out.getvalue().endswith("\r\x1b[K")
    text = progress_text(Progress("rooms", 10.0, 1_000, T0, 0.5), 200)
    assert "1,000 records" in text and "100/s" in text and "2023-11-14 22:13:20" in text and "50%" in text
    assert "ETA 10 s" in text


def test_the_report_fits_the_width_whatever_the_paths():
    r = RunResult("rooms", 2.0, {"read_csv": 8143, "a-source-with-a-very-long-name-indeed": 5},
                  {"jsonl": 2059, "csv": 12}, 3, [{"operator": "read_csv", "position": "x.csv:4", "reason": "bad"}],
                  late_count=1, outputs={"jsonl": "/very/long/path/" * 8 + "rooms.jsonl", "csv": "out/s.csv"})
    for columns in (40, 60, 100):
        lines = report(r, columns).splitlines()
        assert all(len(line) <= columns for line in lines), (columns, lines)
    text = report(r, 200)
    assert "8,148 records in 2.00 s" in text and "3 dead letters, 1 late record" in text
    assert "rooms.jsonl" in text and "first dead letter: read_csv at x.csv:4: bad" in text


def test_describe_tables_are_wrapped_to_the_width():
    p = ms.Pipeline("rooms")
    s = p.read_csv("examples/sensors/data/datatraining.txt", time="date", tags={"room": "A"}, key="room")
    s.window(ms.tumbling("10min")).aggregate(co2=ms.agg.mean("CO2"), n=ms.agg.count()).sink(ms.sinks.collect())
    table = p.describe()
    for columns in (80, 100, 120):  # the last column starts past half of each width
        fitted = fit_table(table, columns)
        assert all(len(line) <= columns for line in fitted.splitlines()), columns
        assert re.sub(r"\s+", "", fitted) == re.sub(r"\s+", "", table)
        # no word is cut in two (a 100-column terminal once showed 'o' / 'utput columns' and 'd' / 'ate:time')
        assert set(fitted.split()) <= set(table.split()), columns
        # each operator's row still starts with its name, its output columns on the lines after it
        assert [line.split()[0] for line in fitted.splitlines() if not line.startswith(" ")][2:] == \
            [line.split()[0] for line in table.splitlines()][2:]
    assert fit_table(table, 1000) == table


def _script(tmp_path, body: str):
    path = tmp_path / "job.py"
    path.write_text("import microstream as ms\n" + textwrap.dedent(body))
    return path


def test_runs_are_quiet_outside_a_terminal(capsys):
    p = ms.Pipeline("quiet")
    p.from_iterable([{"v": 1.0}]).sink(ms.sinks.collect())
    p.run()
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_says_once_when_numba_compiles_and_stops_listening_when_closed():
    import numba

    def twice(x):
        return 2 * x

    out = io.StringIO()
    line = ProgressLine(out, every=0.0, after=0.0)
    line(Progress("rooms", 3.0, 9_000, T0, 0.4))
    numba.njit(twice)(1)                       # a real compilation (no cache: a fresh dispatcher)
    numba.njit(twice)(2.5)
    line.close()
    numba.njit(twice)(3)                       # after the run: not its business
    assert out.getvalue().count(COMPILE_NOTICE) == 1
    assert "\r\x1b[K" + COMPILE_NOTICE in out.getvalue()       # the progress line is cleared first
    assert "microstream warmup" in COMPILE_NOTICE


def test_compile_notice_says_once_inside_its_block():
    import numba

    def thrice(x):
        return 3 * x

    out = io.StringIO()
    with compile_notice(out):
        numba.njit(thrice)(1)
        numba.njit(thrice)(1.5)
    numba.njit(thrice)(2)
    assert out.getvalue() == COMPILE_NOTICE + "\n"


def test_in_a_terminal_a_run_reports_records_per_sink_and_files(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "72")
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    p = ms.Pipeline("talks")
    src = p.from_iterable([{"v": float(i)} for i in range(10)])
    src.sink(ms.sinks.jsonl(tmp_path / "out.jsonl"))
    src.filter(lambda b: b["v"] > 5).sink(ms.sinks.collect(), name="big")
    p.run()
    text = err.getvalue()
    assert "talks: 10 records in" in text and "0 dead letters, 0 late records" in text
    assert re.search(r"jsonl\s+10\s+.*out\.jsonl", text) and re.search(r"big\s+4", text)
    assert all(len(line) <= 72 for line in text.splitlines())


def test_quiet_silences_even_verbose_runs(tmp_path, capsys):
    script = _script(tmp_path, """\
        p = ms.Pipeline("loud")
        p.from_iterable([{"v": 1.0}]).map_records(lambda r: 1 / 0, schema={"x": "float64"}).sink(ms.sinks.collect())
        p.run(verbose=True)
        """)
    assert main(["run", str(script), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["run", str(script)]) == 0
    assert "loud: 1 records in" in capsys.readouterr().err  # verbose=True: the report even into a pipe


def test_a_script_that_runs_no_pipeline_is_exit_2(tmp_path, capsys):
    script = _script(tmp_path, """\
        p = ms.Pipeline("forgot")
        p.from_iterable([{"v": 1.0}]).sink(ms.sinks.collect())
        """)
    assert main(["run", str(script)]) == 2
    assert "job.py ran no pipeline: it never called p.run()" in capsys.readouterr().err
    for verb in (["describe"], ["plan", "--topology", str(TOPOLOGY)]):
        assert main([*verb, str(script)]) == 2
        assert "job.py built no pipeline: it never called p.run()" in capsys.readouterr().err
