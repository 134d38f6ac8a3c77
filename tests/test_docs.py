"""The user guide's examples are doctests, the example scripts on real data run end to end, and the relative links
of the docs resolve."""

from __future__ import annotations

import doctest
import re
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


def _anchors(doc: Path) -> set[str]:
    """The #fragments GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces as '-',
    '-1', '-2' for repeats), outside code blocks."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading and not in_code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_relative_links_in_the_docs_point_at_files_and_headings_that_exist():
    docs = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "examples").rglob("*.md"))]
    broken = []
    for doc in docs:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            path, _, fragment = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such file)")
            elif fragment and target.suffix == ".md" and fragment not in _anchors(target):
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such heading in {target.name})")
    assert not broken, "\n".join(broken)


def test_the_examples_read_only_data_bundled_in_the_repository():
    # a fresh clone has no ../shared (the datasets' source while they were chosen): the examples must not need it
    uses = [f"{path.relative_to(ROOT)}: {line.strip()}"
            for path in sorted((ROOT / "examples").rglob("*")) if path.suffix in {".py", ".ipynb", ".toml"}
            for line in path.read_text().splitlines() if re.search(r"\.\./shared|/tmp/shared|/work/shared", line)]
    assert not uses, "\n".join(uses)
