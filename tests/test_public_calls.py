"""Every public source and operator: options are keyword-only, and an unknown (misspelt) keyword is a PipelineError
that names the caller's line and the option meant; `microstream run` exits 2 for it."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import microstream as ms
from microstream.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "examples" / "sensors" / "data" / "datatraining.txt"
THIS = Path(__file__).name

# (what is called, as script text over `p`, `s` (a keyed stream with event time), `w` (a windowed stream);
#  the option meant)
SETUP = ("p = ms.Pipeline('calls')\n"
         "s = p.from_iterable([{'k': 1, 't': 0, 'v': 1.0}], time='t').key_by('k')\n"
         "w = s.window(ms.tumbling('1s'))\n")
SOURCES = {
    "from_iterable": ("p.from_iterable([{'v': 1.0}], tme='t')", "time"),
    "from_arrays": ("p.from_arrays({'v': np.ones(2)}, batchsize=2)", "batch_size"),
    "from_pandas": ("p.from_pandas(None, tz='UTC')", None),  # the DataFrame's own zone is used: no such option
    "poll": ("p.poll(lambda: {'v': 1.0}, evry=1.0)", "every"),
    "poll_file": (f"p.poll_file({str(CSV)!r}, every=1.0, colum='v')", "column"),
    "read_csv": (f"p.read_csv({str(CSV)!r}, timestamp='date')", "time"),
    "read_jsonl": (f"p.read_jsonl({str(CSV)!r}, time='t', time_units='s')", "time_unit"),
    "read_mqtt": ("p.read_mqtt('a/+', schema={'v': 'float'}, topic_column=('room',))", "topic_columns"),
    "synthetic": ("p.synthetic(sensor=4)", "sensors"),
    "add_source": ("p.add_source(ms.sinks.collect(), nam='x')", "name"),
    "union": ("p.union(s, s, nme='both')", "name"),
    "dead_letters": None,  # takes nothing
}
OPERATORS = {
    "map": ("s.map(lambda b: {'v': b['v']}, nme='m')", "name"),
    "with_columns": ("s.with_columns(lambda b: b['v'])", None),  # a column needs its name: positional refused
    "select": ("s.select('v', nmae='sel')", "name"),
    "filter": ("s.filter(lambda b: b['v'] > 0, nme='f')", "name"),
    "flat_map": ("s.flat_map(lambda b: (np.arange(len(b['v'])), {'v': b['v']}), nme='fm')", "name"),
    "map_records": ("s.map_records(lambda r: r, schem={'v': 'float64'})", "schema"),
    "split": ("s.split(lambda b: b['v'] > 0, nn=2, name='sp')", "n"),
    "split_on": ("s.split_on('k', [1], nme='so')", "name"),
    "union": ("s.union(s, nme='u')", "name"),
    "key_by": ("s.key_by('k', nme='kb')", "name"),
    "stateful_map": ("s.stateful_map(ms.state.delta, 'v', outt='d')", "out"),
    "alert": ("s.alert('v', abve=1.0)", "above"),
    "window": ("s.window(ms.tumbling('1s'), latenes='1s')", "lateness"),
    "join": ("s.join(s, ms.tumbling('1s'), latness='1s')", "lateness"),
    "side": None,  # one positional argument, the port
    "sink": ("s.sink(ms.sinks.collect(), nme='out')", "name"),
    "with_parallelism": None,
    "with_backend": None,
    "apply": ("s.apply(ms.sinks.collect(), nme='x')", "name"),
    "aggregate": ("w.aggregate(nme='x', n=ms.agg.count())", "name"),
    "tumbling": ("ms.tumbling(minuts=10)", "minutes"),
    "sliding": ("ms.sliding('1h', evry='5min')", "every"),
    "session": ("ms.session(mintues=5)", "minutes"),
    "agg.var": ("ms.agg.var('v', dof=0)", "ddof"),
    "agg.reduce": ("ms.agg.reduce('v', lambda a, x: a + x, init_value=0.0)", "init"),
    "Pipeline": ("ms.Pipeline('x', backnd='microvm')", "backend"),
    "run": ("p.run(verbos=True)", "verbose"),
}
CASES = {**{f"source {k}": v for k, v in SOURCES.items() if v},
         **{f"operator {k}": v for k, v in OPERATORS.items() if v}}


def test_every_public_source_and_operator_has_a_case():
    sources = {n for n, f in vars(ms.Pipeline).items() if not n.startswith("_") and callable(f)
               and "Stream" in str(inspect.signature(f).return_annotation)}
    operators = {n for n, f in vars(ms.Stream).items() if not n.startswith("_") and callable(f)}
    assert sources <= set(SOURCES), f"add a case for {sources - set(SOURCES)}"
    assert operators <= set(OPERATORS), f"add a case for {operators - set(OPERATORS)}"


def _call(code: str) -> None:
    exec(compile(SETUP + code, THIS, "exec"), {"ms": ms, "np": np})  # the "user's line" is line 4 of THIS


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unknown_keyword_is_a_pipeline_error_with_the_option_meant_and_the_line(case):
    code, meant = CASES[case]
    with pytest.raises(ms.PipelineError) as exc:
        _call(code)
    text = str(exc.value)
    if meant is not None:
        assert f"did you mean {meant}=?" in text, text
    assert f"(at {THIS}:4)" in text, text


@pytest.mark.parametrize("code, fix", [
    (f"p.read_csv({str(CSV)!r}, 'date')", "read_csv(..., time='date')"),
    ("p.from_iterable([{'v': 1}], None, 5.0)", "time=None, time_unit=5.0"),
    ("s.window(ms.tumbling('1s'), '1s')", "window(..., lateness='1s')"),
    ("s.sink(ms.sinks.collect(), 'out')", "sink(..., name='out')"),
    ("ms.agg.var('v', 0)", "ms.agg.var(..., ddof=0)"),
    ("p.poll(lambda: 1.0)", "poll(..., every=...)"),
])
def test_options_by_position_or_missing_are_named_in_the_fix(code, fix):
    with pytest.raises(ms.PipelineError) as exc:
        _call(code)
    assert fix in str(exc.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_microstream_run_exits_2_naming_the_scripts_line(case, tmp_path, capsys):
    code, meant = CASES[case]
    script = tmp_path / "job.py"
    script.write_text("import numpy as np\nimport microstream as ms\n" + SETUP + code + "\np.run()\n")
    assert main(["run", str(script)]) == 2
    err = capsys.readouterr().err
    assert "job.py:6: PipelineError" in err, err
    if meant is not None:
        assert f"did you mean {meant}=?" in err


def test_in_a_real_process_too(tmp_path):
    script = tmp_path / "rooms.py"
    script.write_text(textwrap.dedent(f"""\
        import microstream as ms
        p = ms.Pipeline("rooms")
        rooms = p.read_csv({str(CSV)!r}, timestamp="date")
        p.run()
        """))
    r = subprocess.run([sys.executable, "-m", "microstream.cli", "run", str(script)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "rooms.py:3: PipelineError: read_csv() has no option 'timestamp'; did you mean time=?" in r.stderr
    assert "CsvSource" not in r.stderr
