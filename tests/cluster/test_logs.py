"""What a submitted job prints reaches its submitter: `print` and logging in a user function and `ms.sinks.print()`
run in virtual-node hosts on the agents, and `microstream submit` shows their lines (prefixed [vnode@agent]) as the
job runs; `microstream logs JOB [VNODE]` shows them after the fact. A host that prints more than it may forward says
how many lines it dropped."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]

PRINTS = """
import logging
import microstream as ms

def noisy(b):
    for v in b["v"]:
        print(f"saw {int(v)}")
    logging.getLogger("job").warning("batch of %d", len(b["v"]))
    return {"w": b["v"] * 2}

p = ms.Pipeline("talks")
p.from_iterable([{"v": float(i)} for i in range(6)], batch_size=3).map(noisy, name="noisy").sink(
    ms.sinks.print(prefix="out: "))
p.run()
"""

FLOODS = """
import microstream as ms

def flood(b):
    for i in range(5000):
        print(f"line {i}")
    return {"v": b["v"]}

p = ms.Pipeline("floods")
p.from_iterable([{"v": 1.0}]).map(flood).sink(ms.sinks.collect())
p.run()
"""


def cli(*args: str, home: Path, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_cli(*args, "--home", str(home), cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs") / "home"
    cluster.up(2, root, progress=lambda _: None)
    yield root
    cluster.down(root, progress=lambda _: None)


def submit(home: Path, script: str, cwd: Path = ROOT) -> tuple[str, subprocess.CompletedProcess]:
    path = home.parent / "job.py"
    path.write_text(textwrap.dedent(script))
    r = cli("submit", str(path), home=home, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job = re.search(r"^(\w+-[0-9a-f]{6})$", r.stdout, re.M)  # the id (a map's function also runs once here, at build)
    assert job, r.stdout[-2000:]
    return job.group(1), r


PREFIX = r"\[(vn\d+)@(node\d+)\] "


@pytest.mark.slow
def test_submit_shows_what_the_job_prints_and_logs_shows_it_after(home):
    job, r = submit(home, PRINTS)
    saw = re.findall(PREFIX + r"saw (\d)$", r.stdout, re.M)
    assert sorted(int(n) for _, _, n in saw) == list(range(6))            # every print of the map function
    rows = re.findall(PREFIX + r"out: w=(\d+)$", r.stdout, re.M)    # the print sink's rows (w = 2 v)
    assert sorted(int(w) for _, _, w in rows) == [2 * i for i in range(6)]
    assert len(re.findall(PREFIX + r"batch of 3$", r.stderr, re.M)) == 2   # logging goes to stderr, as locally

    after = cli("logs", job, home=home)
    assert after.returncode == 0, after.stderr
    assert sorted(re.findall(PREFIX + r"saw \d$", after.stdout, re.M)) == sorted(
        re.findall(PREFIX + r"saw \d$", r.stdout, re.M))
    assert len(re.findall(PREFIX + r"out: ", after.stdout, re.M)) == 6
    assert "batch of 3" in after.stderr

    vnode = saw[0][0]  # one virtual node's lines only
    only = cli("logs", job, vnode, home=home)
    assert only.returncode == 0 and only.stdout.strip()
    assert {v for v, _ in re.findall(r"^\[(vn\d+)@(node\d+)\]", only.stdout, re.M)} == {vnode}

    followed = cli("logs", job, "--follow", home=home)  # an ended job: what it printed, and how it ended
    assert followed.returncode == 0 and len(re.findall(PREFIX + r"saw \d$", followed.stdout, re.M)) == 6
    assert f"{job}: finished" in followed.stderr

    unknown = cli("logs", "nosuchjob", home=home)
    assert unknown.returncode != 0 and "no job 'nosuchjob'" in unknown.stderr


@pytest.mark.slow
def test_a_host_that_prints_too_much_says_how_many_lines_it_dropped(home):
    job, r = submit(home, FLOODS)
    shown = [int(t[2]) for t in re.findall(PREFIX + r"line (\d+)$", r.stdout, re.M)]
    dropped = [int(n) for n in re.findall(r"\.\.\. (\d+) lines not forwarded", r.stderr)]
    assert shown and dropped, r.stderr[-2000:]
    assert len(shown) + sum(dropped) == 5000   # every line either shown or counted
    assert len(shown) < 5000
    after = cli("logs", job, home=home)
    assert f"{sum(dropped)} lines not forwarded by its host" in after.stderr


RELATIVE = """
import microstream as ms
p = ms.Pipeline("relative")
p.read_csv("data.csv", time="t").map(lambda b: {"w": b["v"] * 10}).sink(ms.sinks.csv("out/x.csv"))
p.run()
"""

GONE = """
import os
import microstream as ms
p = ms.Pipeline("gone")
p.read_csv("data.csv", time="t").sink(ms.sinks.collect())
p.build()
os.rename("data.csv", "moved.csv")  # checked here, then not where the job runs (as on another machine)
p.run()
"""


def _data(work: Path) -> None:
    work.mkdir(exist_ok=True)
    (work / "data.csv").write_text("t,v\n2024-05-01T10:00:00,1\n2024-05-01T10:00:01,2\n")


@pytest.mark.slow
def test_relative_paths_are_taken_from_where_you_submit_with_a_note(home, tmp_path):
    work = tmp_path / "work"  # not the agents' working directory
    _data(work)
    job, r = submit(home, RELATIVE, cwd=work)
    rows = (work / "out" / "x.csv").read_text().splitlines()[1:]  # written where the submitter is, not elsewhere
    assert [row.split(",")[-1] for row in rows] == ["10", "20"] and rows[0].startswith("2024-05-01T10:00:00")
    assert f"note: read_csv reads data.csv as {work / 'data.csv'} on the node that runs it" in r.stderr
    assert f"note: csv writes out/x.csv as {work / 'out' / 'x.csv'} on the node that runs it" in r.stderr
    assert "copy the file, use a shared directory" in r.stderr


@pytest.mark.slow
def test_a_file_that_is_not_where_the_job_runs_fails_it_with_the_reason(home, tmp_path):
    work = tmp_path / "work"
    _data(work)
    path = home.parent / "gone.py"
    path.write_text(textwrap.dedent(GONE))
    r = cli("submit", str(path), home=home, cwd=work)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{work / 'data.csv'} is not on " in r.stderr and "where 'read_csv' runs" in r.stderr
    assert "copy it there at that path" in r.stderr
