"""Chaos on an embedded 3-agent cluster of real processes: while a job with keyed windows and two file sinks (the
raw records and the windows) runs, the source's agent is killed with -9 and started again, or a seeded random
sequence of 2-3 faults strikes at random times (kill -9 a window host, kill -9 an agent and start it again,
SIGSTOP an agent past the loss limit then SIGCONT, kill -9 the coordinator and start it again). Every time the
files hold exactly what the fault-free local run writes (each raw record once, the windows identical), the job
ends finished with every agent up, and afterwards no process of the cluster's (found by a scan of /proc for its
sessions) and no agent work directory outlives the cluster. The same with an MQTT source (QoS 1, a real
mosquitto) while a publisher publishes through the faults. A failure names the seed: rerun one with
MICROSTREAM_CHAOS_SEED=N."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from tests.cluster.test_cluster import cli
from tests.cluster.test_recovery import _alive
from tests.connectors.conftest import broker, mosquitto_binary  # noqa: F401 - fixtures
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENT_TIMEOUT = 4.0
JOB = """
import microstream as ms
p = ms.Pipeline("chaos", checkpoint_every="1s", restarts=8)
src = p.synthetic(count=30_000, sensors=20, rate=2000, jitter=0.05, max_delay=0.2, seed=12, speed={speed},
                  batch_size=200)
src.sink(ms.sinks.jsonl("{out}/raw.jsonl"))
src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value"), hi=ms.agg.max("value")).with_parallelism(2).sink(
    ms.sinks.jsonl("{out}/windows.jsonl"))
p.run()
"""
FAULTS = ("kill a window host", "kill an agent", "freeze an agent", "kill the coordinator")


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines()) if path.exists() else []


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("local")
    script = out / "local.py"
    script.write_text(textwrap.dedent(JOB.format(speed=None, out=out)))
    assert cli("run", str(script)).returncode == 0
    return {name: _lines(out / name) for name in ("raw.jsonl", "windows.jsonl")}


def _sessions() -> dict[int, tuple[int, int]]:
    """Every process on the machine: pid -> (parent pid, session id), from /proc (a zombie counts as gone)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                procs[int(entry)] = (int(fields[1]), int(fields[3]))
    return procs


def _workdir(pid: int) -> Path:
    """The work directory of a running agent: where the Unix socket it listens on for its hosts is (/proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and fields[7].endswith("/hosts.sock"):
                return Path(fields[7]).parent
    raise AssertionError(f"agent {pid} listens on no hosts.sock")


class Chaos:
    """One embedded cluster, one job on it, the faults, and the bookkeeping to check what is left afterwards."""

    def __init__(self, home: Path, out: Path, source: str = "synthetic") -> None:
        self.home = home
        self.source = source  # the source's task name (its prefix)
        self.out = out
        state = cluster.up(3, home, progress=lambda _: None, coordinator_args=["--agent-timeout", str(AGENT_TIMEOUT)])
        self.sessions = set(state["pids"])  # every coordinator and agent pid ever: each leads its own session
        self.workdirs = {pid: _workdir(pid) for pid in state["pids"][1:]}  # every agent's ever
        self.hosts: set[int] = set()        # every host pid status ever showed
        self.frozen: int | None = None
        self.job = ""
        self.log: list[str] = []

    def agents(self) -> dict[str, int]:
        state = cluster.read_state(self.home) or {}
        return {f"node{i}": pid for i, pid in enumerate(state["pids"][1:], start=1)}

    def status(self) -> dict:
        with Client(cluster.address(self.home), timeout=10) as client:  # fresh: the coordinator may be new
            job = client.status()["jobs"][self.job]
        self.hosts.update(v["pid"] for v in job["vnodes"].values() if v.get("pid"))
        return job

    def wait(self, what: str, condition: Callable[[dict], bool], timeout: float = 60) -> dict:
        return wait_for(lambda: s if condition(s := self.status()) else None, timeout, what, interval=0.1)

    def submit(self, job: str | None = None) -> None:
        script = self.out / "job.py"  # by default 15 s of real-time readings
        script.write_text(textwrap.dedent(job or JOB.format(speed=1.0, out=self.out)))
        r = cli("submit", "--detach", str(script), "--home", str(self.home))
        assert r.returncode == 0, r.stderr
        self.job = r.stdout.strip().splitlines()[-1]

    def running(self, checkpoints: int = 1) -> dict:
        """Wait for the job to run in its current epoch with `checkpoints` new ones since the last fault."""
        before = getattr(self, "_ckpt", 0)
        status = self.wait("the job to run and checkpoint", lambda s: s["state"] in ("running", "finished") and (
            s["state"] == "finished" or max([c["id"] for c in s["checkpoints"]] or [0]) >= before + checkpoints))
        self._ckpt = max([c["id"] for c in status["checkpoints"]] or [0])
        return status

    def vnode(self, status: dict, task: str) -> dict:
        return next(v for v in status["vnodes"].values() if any(t.startswith(task) for t in v["tasks"]))

    def agents_up(self) -> None:
        def up() -> bool:
            with Client(cluster.address(self.home), timeout=10) as client:
                return sum(a["up"] for a in client.status()["agents"].values()) == 3
        wait_for(up, 60, "every agent up")

    def restart_agent(self, name: str) -> None:
        state = cluster.restart_agent(self.home, name, progress=lambda _: None)
        self.sessions.update(state["pids"])
        self.workdirs.update({pid: _workdir(pid) for pid in state["pids"][1:] if pid not in self.workdirs})

    def fault(self, kind: str, rng: random.Random) -> None:
        status = self.running()
        time.sleep(rng.uniform(0.0, 1.5))  # at a random time in the job, not right on a checkpoint
        # status is as new as the agents' last heartbeats (1 s): a host just started may not be in it yet
        status = self.wait("every host of this epoch in status",
                           lambda s: s["state"] != "running" or all(v.get("pid") for v in s["vnodes"].values()))
        if status["state"] != "running":
            self.log.append(f"{kind}: skipped, the job is {status['state']}")
            return
        restarts = status["restarts"]
        window = self.vnode(status, "window")
        victim = rng.choice([window["agent"], self.vnode(status, self.source)["agent"]])
        self.log.append(f"{kind} ({victim if 'agent' in kind else ''}) at epoch {status['epoch']}")
        if kind == "kill a window host":
            os.kill(window["pid"], signal.SIGKILL)
        elif kind == "kill an agent":
            os.kill(self.agents()[victim], signal.SIGKILL)  # its hosts must not outlive it
        elif kind == "freeze an agent":
            self.frozen = self.agents()[victim]
            os.kill(self.frozen, signal.SIGSTOP)
        else:
            state = cluster.read_state(self.home) or {}
            os.kill(state["pids"][0], signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 2.0))  # away for a while; hosts carry on
            state = cluster.restart_coordinator(self.home, progress=lambda _: None, wait_for_agents=False)
            self.sessions.add(state["pids"][0])
            self.agents_up()
            return
        self.wait("a recovery", lambda s: s["restarts"] > restarts or s["state"] in ("finished", "failed"))
        self.wait("the job to run again", lambda s: s["state"] != "recovering")
        if kind == "kill an agent":
            self.restart_agent(victim)  # it comes back and finds what it left behind
        if self.frozen is not None:
            os.kill(self.frozen, signal.SIGCONT)  # it comes back: its hosts of the old epoch are stopped
            self.frozen = None
        self.agents_up()

    def finish(self, expected: dict[str, list[str]]) -> dict:
        final = self.wait("the job to end", lambda s: s["state"] in ("finished", "failed"), 150)
        assert final["state"] == "finished", final["reason"]
        for name, lines in expected.items():  # exactly once: nothing lost, nothing twice
            got = _lines(self.out / name)
            assert got == lines, f"{name}: {len(got)} lines, {len(set(got))} distinct, expected {len(lines)}"
        assert len(expected["windows.jsonl"]) > 20 and len(expected["raw.jsonl"]) >= 10_000
        self.agents_up()  # status tells the truth: finished, every agent up
        wait_for(lambda: not [pid for pid in self.hosts if _alive(pid)], 20, "the job's hosts to end")
        self.no_orphans()
        return final

    def no_orphans(self) -> None:
        """Every process in the cluster's sessions belongs to a live agent or coordinator (its descendant)."""
        def orphans() -> list[int]:
            procs = _sessions()
            mine = {pid: ps for pid, ps in procs.items() if ps[1] in self.sessions}
            bad = []
            for pid, (_, sid) in mine.items():
                if sid not in procs:  # its agent or coordinator is dead
                    bad.append(pid)
                    continue
                up, seen = pid, 0
                while up != sid and up in mine and seen < 20:  # a live one's process tree reaches its leader
                    up, seen = mine[up][0], seen + 1
                if up != sid:
                    bad.append(pid)
            return bad
        wait_for(lambda: not orphans(), 20, f"no orphaned process in the sessions {sorted(self.sessions)}")

    def down(self) -> None:
        if self.frozen is not None:
            os.kill(self.frozen, signal.SIGCONT)
        cluster.down(self.home, progress=lambda _: None)
        leftover = [pid for pid, (_, sid) in _sessions().items() if sid in self.sessions]
        assert not leftover, f"processes left after cluster down: {leftover}"
        dirs = [d for d in self.workdirs.values() if d.exists()]
        assert not dirs, f"agent work directories left: {dirs}"


def test_kill_the_source_agent_then_restart_it(expected, tmp_path):
    chaos = Chaos(tmp_path / "home", tmp_path)
    try:
        chaos.submit()
        status = chaos.running(checkpoints=2)
        source = chaos.vnode(status, "synthetic")["agent"]
        killed = chaos.agents()[source]
        os.kill(killed, signal.SIGKILL)
        status = chaos.wait("a recovery", lambda s: s["recoveries"])
        assert status["recoveries"][0]["checkpoint"] is not None, status["recoveries"]
        assert source in status["recoveries"][0]["reason"], status["recoveries"]
        chaos.wait("the job to run again", lambda s: s["state"] != "recovering")
        chaos.restart_agent(source)
        # the restarted agent removed the work directory its killed predecessor left
        wait_for(lambda: not chaos.workdirs[killed].exists(), 10, f"the killed agent {source}'s work directory")
        final = chaos.finish(expected)
        assert final["restarts"] >= 1
    finally:
        chaos.down()


# seeds 5, 7 and 13 draw all four kinds of fault, three each
SEEDS = [int(os.environ["MICROSTREAM_CHAOS_SEED"])] if os.environ.get("MICROSTREAM_CHAOS_SEED") else [5, 7, 13]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeded_random_combination_of_faults(seed, expected, tmp_path):
    chaos = Chaos(tmp_path / "home", tmp_path)
    try:
        _strike(chaos, seed, expected, chaos.submit)
    finally:
        chaos.down()


def _strike(chaos: Chaos, seed: int, expected: dict[str, list[str]], start: Callable[[], None]) -> None:
    """Start the job, then the seed's 2-3 faults at random times, then check the end; a failure names the seed."""
    rng = random.Random(seed)
    plan = [rng.choice(FAULTS) for _ in range(rng.choice((2, 3)))]
    try:
        start()
        for kind in plan:
            chaos.fault(kind, rng)
        final = chaos.finish(expected)
        print(f"seed {seed}: {chaos.log}; {final['restarts']} recoveries")
    except BaseException as exc:
        raise AssertionError(f"seed {seed} (MICROSTREAM_CHAOS_SEED={seed}), faults {plan}: what happened "
                             f"{chaos.log}: {exc}") from exc


MQTT_JOB = """
import microstream as ms
p = ms.Pipeline("chaos_mqtt", checkpoint_every="1s", restarts=8)
src = p.read_mqtt("chaos/+/readings", "{broker}", schema={{"v": "float", "i": "int"}}, topic_columns=("station",),
                  client_id="{client_id}", limit={n}, max_delay="1h", time_unit="ms", batch_size=16, name="mqtt_in")
src.select("station", "i").sink(ms.sinks.jsonl("{out}/raw.jsonl"))
src.key_by("station").window(ms.tumbling(seconds=10)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("v"), total=ms.agg.sum("i")).sink(ms.sinks.jsonl("{out}/windows.jsonl"))
p.run()
"""
T0 = 1_700_000_000
MQTT_N = 10_000


def _reading(i: int) -> dict:
    return {"time": T0 * 1000 + i * 50, "v": (i % 50) * 0.5, "i": i}  # milliseconds: exact in both runs


# Seed 13 freezes the agent of the job's one virtual node past the loss limit. It used to fail one run in three
# (394 readings twice and 394 never): the checkpoint's commit never reached the frozen host, so the messages that
# checkpoint covered stayed unacknowledged, and the broker redelivered them to the recovered source, which emitted
# them again. A checkpoint now records them (sources/mqtt.py) and the restored source skips them; and the frozen
# agent's host stops itself (runtime/lease.py) rather than run on with the same client id.
MQTT_SEEDS = SEEDS if os.environ.get("MICROSTREAM_CHAOS_SEED") else [7, 13]


@pytest.mark.parametrize("seed", MQTT_SEEDS)
def test_an_mqtt_source_through_a_seeded_combination_of_faults(seed, request, tmp_path):
    """QoS 1 with a persistent session: what the broker delivered after the last checkpoint is delivered again to
    the recovered source, so each published reading is in the file once, whatever the faults."""
    import threading

    import microstream as ms
    from tests.connectors.conftest import connect, prime

    mqtt = request.getfixturevalue("broker")  # a real mosquitto (tests/connectors/conftest.py)
    local = tmp_path / "local"
    local.mkdir()
    p = ms.Pipeline("reference")  # the same operators on the same readings, from memory, locally
    src = p.from_iterable([{**_reading(i), "time": _reading(i)["time"] * 1_000_000, "station": f"st{i % 3}"}
                           for i in range(MQTT_N)], time="time",
                          max_delay="1h")
    src.select("station", "i").sink(ms.sinks.jsonl(f"{local}/raw.jsonl"))
    src.key_by("station").window(ms.tumbling(seconds=10)).aggregate(
        n=ms.agg.count(), mean=ms.agg.mean("v"), total=ms.agg.sum("i")).sink(ms.sinks.jsonl(f"{local}/windows.jsonl"))
    p.run()
    expected = {name: _lines(local / name) for name in ("raw.jsonl", "windows.jsonl")}

    client_id = f"chaos-{seed}"
    prime(mqtt, client_id, "chaos/+/readings")  # what is published before the source subscribes waits for it
    chaos = Chaos(tmp_path / "home", tmp_path, source="mqtt_in")
    stop = threading.Event()

    def publisher() -> None:  # ~25 s of readings, through every fault
        client = connect(mqtt, f"{client_id}-publisher")
        infos = []
        for i in range(MQTT_N):
            if stop.is_set():
                break
            infos.append(client.publish(f"chaos/st{i % 3}/readings", json.dumps(_reading(i)), qos=1))
            time.sleep(1 / 400)
        for info in infos:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=publisher, daemon=True)
    def start() -> None:
        chaos.submit(MQTT_JOB.format(broker=mqtt.url, client_id=client_id, n=MQTT_N, out=tmp_path))
        chaos.wait("the job to run", lambda s: s["state"] == "running")
        thread.start()

    try:
        _strike(chaos, seed, expected, start)
    finally:
        stop.set()
        thread.join(60)
        chaos.down()
