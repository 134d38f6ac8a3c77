"""The user guide's examples are doctests, and the example scripts on real data run end to end."""

from __future__ import annotations

import doctest
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_guide_doctests(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # the guide's paths are relative to the repository root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the guide's tempfile.mkdtemp() lands here
    result = doctest.testfile("docs/guide.md", module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 100
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in docs/guide.md failed (see above)"


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli", "run", str(ROOT / "examples" / "sensors" / name)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def data_lines(path: Path) -> list[str]:
    assert path.exists(), f"{path} was not written"
    return path.read_text().splitlines()


@pytest.mark.parametrize("name, outputs", [
    ("air_quality/recording.py", ["air_8h_means.csv", "co_alerts.csv", "air_daily_max.csv"]),
    ("water_flow.py", ["water_hourly.csv", "water_anomalies.csv"]),
])
def test_example_script_runs_from_any_directory(tmp_path, name, outputs):
    r = run_example(name, tmp_path)
    assert r.returncode == 0, r.stderr
    for out in outputs:
        lines = data_lines(tmp_path / "out" / out)
        assert len(lines) > 1, f"{out} has no records"
