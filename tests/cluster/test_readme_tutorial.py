"""The README's five-minute tutorial, run as written: its snippet saved as rooms.py, then every command of its
steps in order (run locally, an embedded cluster, submit, status, plan, a move while a slower replay runs, the
end), each through the real `microstream` command. What the cluster writes equals the local run's output."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]  # a cluster, a local run, a 25 s replay and a move


def _blocks(section: str) -> list[list[str]]:
    """The fenced blocks of a README section (indented in its numbered steps), as lists of lines."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(section):]
    body = body[:body.index("\n## ", 1)]
    return [[line.strip() for line in block.strip("\n").splitlines()]
            for block in re.findall(r"^ *```[a-z]*\n(.*?)^ *```", body, flags=re.S | re.M)]


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)  # type: ignore[union-attr]


def test_the_five_minute_tutorial_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")  # the tutorial runs where the repository's examples are
    script = work / "rooms.py"
    script.write_text(_snippet())
    env = {**os.environ, "MICROSTREAM_HOME": str(tmp_path / "home")}

    def ms(line: str, check: bool = True) -> subprocess.CompletedProcess:
        args = shlex.split(line.split("#")[0])
        assert args[0] == "microstream", line
        done = subprocess.run([sys.executable, "-m", "microstream.cli", *args[1:]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, (line, done.stdout, done.stderr)
        return done

    steps = _blocks("## Five minutes")
    assert len(steps) == 4, steps
    run, cluster, plan, moving = steps
    try:
        [line] = run
        ms(line)
        assert (work / "out" / "rooms.svg").exists()
        local = sorted((work / "out" / "rooms.jsonl").read_text().splitlines())
        assert len(local) > 800  # six days of 10-minute windows
        (work / "out" / "rooms.jsonl").unlink()

        up, submit, status = cluster
        ms(up)
        ms(submit)  # waits for the job's end: its output is already written
        assert sorted((work / "out" / "rooms.jsonl").read_text().splitlines()) == local
        assert "node3" in ms(status).stdout

        [line] = plan
        ms(line)
        assert (work / "out" / "plan.svg").exists()

        # step 4: the same script, replayed at 20,000x real time as the step says, moved while it runs
        assert "speed=20_000" in (ROOT / "README.md").read_text()
        script.write_text(_snippet().replace('key="room")', 'key="room", speed=20_000)'))
        (work / "out" / "rooms.jsonl").unlink()
        detach, show, migrate, wait, down = moving
        job = ms(detach).stdout.strip().splitlines()[-1]
        assert "rooms" in ms(show).stdout
        vnodes = json.loads(ms("microstream status --json").stdout)["jobs"][job]["vnodes"]
        vnode = next(v for v, info in vnodes.items() if "window_aggregate" in info["tasks"])
        there = "node2" if vnodes[vnode]["agent"] != "node2" else "node3"
        moved = ms(migrate.replace("JOB", job).replace("vn0", vnode).replace("node2", there))
        assert f"{vnode}: " in moved.stdout and f"-> {there} in" in moved.stdout, moved.stdout
        ms(wait.replace("JOB", job))
        final = json.loads(ms("microstream status --json").stdout)["jobs"][job]
        assert final["state"] == "finished" and final["vnodes"][vnode]["agent"] == there
        assert sorted((work / "out" / "rooms.jsonl").read_text().splitlines()) == local
        ms(down)
    finally:
        ms("microstream cluster down", check=False)
