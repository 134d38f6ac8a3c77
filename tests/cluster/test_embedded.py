"""The embedded cluster's record of its processes (cluster.json): a pid is recorded with its start time, so that
`cluster down` never signals a process that merely has the pid now (pids go round: 32,768 of them)."""

from __future__ import annotations

import json
import subprocess

from microstream.cluster import embedded as cluster


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def _record(root, proc: subprocess.Popen, started: str | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cluster.state_file(root).write_text(json.dumps({"coordinator": "tcp://127.0.0.1:9", "pids": [proc.pid],
                                                    "started": [started], "nodes": 0, "logs": str(root)}))


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def test_down_leaves_alone_a_process_that_has_a_recorded_pid_but_started_later(tmp_path):
    other = _sleeper()  # stands for whatever got the pid after the cluster's process ended
    try:
        _record(tmp_path, other, started=str(int(_start_time(other.pid)) - 1))
        assert cluster.down(tmp_path, progress=lambda _: None) == 0
        assert other.poll() is None  # not signalled
        assert cluster.read_state(tmp_path) is None
    finally:
        other.kill()
        other.wait()


def test_down_stops_the_recorded_process(tmp_path):
    ours = _sleeper()
    try:
        _record(tmp_path, ours, started=_start_time(ours.pid))
        assert cluster.down(tmp_path, progress=lambda _: None) == 0
        assert ours.wait(timeout=10) is not None
    finally:
        ours.kill()
        ours.wait()
