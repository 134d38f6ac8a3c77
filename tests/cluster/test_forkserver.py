"""Fork-server hosts on an embedded cluster of real processes: every agent keeps a warm, single-threaded template
and forks virtual-node hosts from it; the hosts are the agent's children (re-parented to it), give the same
results as a local run, and outlive a template killed with -9 (which is started again). (A host killed with -9
is recovered from as before: tests/cluster/test_recovery.py runs on forked hosts.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import microstream as ms
from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TEMPLATE = "microstream.runtime.forkserver"


def _pipeline(seconds: float, out: Path) -> ms.Pipeline:
    """A keyed window job (two virtual nodes or more) that streams for about `seconds`, into file `out`."""
    p = ms.Pipeline("forked", checkpoint_every=None)
    (p.synthetic(count=int(2000 * seconds), sensors=10, rate=2000, seed=3, speed=1.0, batch_size=200)
     .key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), hi=ms.agg.max("value"))
     .with_parallelism(2).sink(ms.sinks.jsonl(str(out))))
    return p


def _rows(out: Path) -> list[str]:
    return sorted(out.read_text().splitlines())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def _children(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z" and int(stat[1]) == parent:
                pids.append(int(entry))
    return pids


def _templates(agent: int, hosts: list[int]) -> list[int]:
    """The agent's children running the template's command line that are not hosts (forked hosts run it too)."""
    return [pid for pid in _children(agent) if TEMPLATE in _cmdline(pid) and pid not in hosts]


def _host_pids(client: Client, job: str, vnodes: int) -> list[int] | None:
    """The pids of `job`'s hosts, once every one of its `vnodes` has one (and has started)."""
    found = [v.get("pid") for v in client.status(job)["jobs"][job]["vnodes"].values()
             if v.get("state") in ("starting", "ready", "running")]
    return found if len(found) == vnodes and all(found) else None


@pytest.fixture
def one_agent(tmp_path):
    home = tmp_path / "home"
    os.environ["MICROSTREAM_BACKENDS"] = "process"
    try:
        state = cluster.up(1, home, progress=lambda _: None)
    finally:
        os.environ.pop("MICROSTREAM_BACKENDS")
    yield home, state["pids"][1]
    cluster.down(home, progress=lambda _: None)


def _running_job(client: Client, seconds: float, out: Path) -> tuple[str, list[int]]:
    job, _ = client.submit(_pipeline(seconds, out), wait=False)
    vnodes = len(client.status(job)["jobs"][job]["vnodes"])
    return job, wait_for(lambda: _host_pids(client, job, vnodes), 60, f"the hosts of {job} running")


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _forked_when_warm(client: Client, agent: int, tmp: Path) -> None:
    """Short jobs until one runs on forked hosts only (the template may still be warming up for the first)."""
    def attempt() -> bool:
        job, hosts = _running_job(client, 3.0, tmp / f"warm-{time.monotonic_ns()}.jsonl")
        forked = all(TEMPLATE in _cmdline(pid) for pid in hosts) and bool(_templates(agent, hosts))
        assert client.wait(job, timeout=60).state == "finished"
        return forked
    wait_for(attempt, 120, "a job whose hosts are all forked from the template", interval=0.5)


def test_hosts_are_forked_from_a_single_threaded_template_and_give_the_local_result(one_agent, tmp_path):
    home, agent = one_agent
    _pipeline(3.0, tmp_path / "local.jsonl").run()
    with Client(cluster.address(home), timeout=60) as client:
        _forked_when_warm(client, agent, tmp_path)
        job, hosts = _running_job(client, 3.0, tmp_path / "cluster.jsonl")
        for pid in hosts:
            assert TEMPLATE in _cmdline(pid)      # forked from the template: it runs the template's command line
            assert int(_stat(pid)[1]) == agent    # ...and is the agent's child, as a spawned host is
        [template] = _templates(agent, hosts)
        assert len(os.listdir(f"/proc/{template}/task")) == 1  # a fork keeps only the calling thread
        assert client.wait(job, timeout=120).state == "finished"
    assert _rows(tmp_path / "cluster.jsonl") == _rows(tmp_path / "local.jsonl")
    assert len(_rows(tmp_path / "local.jsonl")) > 10


def test_a_template_killed_takes_no_host_with_it_and_is_started_again(one_agent, tmp_path):
    home, agent = one_agent
    _pipeline(4.0, tmp_path / "local.jsonl").run()
    with Client(cluster.address(home), timeout=60) as client:
        _forked_when_warm(client, agent, tmp_path)
        job, hosts = _running_job(client, 4.0, tmp_path / "cluster.jsonl")
        [template] = _templates(agent, hosts)
        os.kill(template, signal.SIGKILL)
        assert client.wait(job, timeout=120).state == "finished"
        assert _rows(tmp_path / "cluster.jsonl") == _rows(tmp_path / "local.jsonl")
        # the next jobs run (spawned while a new template warms up, then forked from it)
        _forked_when_warm(client, agent, tmp_path)
        assert template not in _templates(agent, [])
