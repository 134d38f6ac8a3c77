"""Deploying on several machines, on loopback: the README's "On several machines" recipe as written, and a
coordinator and agents started the way their systemd units start them (from config files), a key trusted while a
job runs letting a new agent join without a restart, and SIGTERM to every process leaving nothing behind."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from microstream.cli.main import main
from microstream.cluster.client import Client, ClusterAddress, ClusterError
from microstream.cluster.embedded import coordinator_public
from microstream.cluster.security import Bundle, KeyStore, write_bundle
from tests.cluster.deploy_helpers import Machines, alive, code_block, descendants, free_port
from tests.helpers import sigint_as_in_a_shell, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real processes

JOB = """
import microstream as ms
p = ms.Pipeline("rooms")
src = p.synthetic(count=20_000, sensors=10, rate=1000, seed=3{at})
src.key_by("sensor").window(ms.tumbling(seconds=2)).aggregate(n=ms.agg.count()).sink(ms.sinks.jsonl("{out}"))
p.run()
"""

LONG = """
import microstream as ms
p = ms.Pipeline("forever")
p.synthetic(count=10**9, sensors=10, rate=200, speed=1.0, at="pi1").key_by("sensor").window(
    ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.collect())
p.run()
"""


def _client(keydir: Path, name: str, endpoint: str) -> Client:
    store = KeyStore(keydir)
    return Client(ClusterAddress(endpoint, store.pair(name), coordinator_public(keydir)))


def _count(path: Path) -> int:
    return sum(json.loads(line)["n"] for line in path.read_text().splitlines())


def test_the_readme_recipe_for_several_machines_works_as_written(tmp_path):
    lines = code_block((ROOT / "README.md").read_text(), "On several machines")
    port, beacon = free_port(), free_port()
    machines = Machines(tmp_path, {r"COORDINATOR": "127.0.0.1", r":7077\b": f":{port}", r"0\.0\.0\.0": "127.0.0.1",
                                   # the beacon on loopback only, and the metrics on any free port
                                   r"--beacon$": f"--beacon --interface 127.0.0.1 --beacon-port {beacon} "
                                                 "--metrics-port 0"})
    out = tmp_path / "rooms.jsonl"
    machine = None
    ran = []
    try:
        for line in lines:
            if line.startswith("#"):
                machine = re.match(r"# on (?:the )?([\w-]+)", line).group(1)  # type: ignore[union-attr]
                for bundle in (tmp_path / "coordinator").glob(f"{machine}.bundle"):  # scp
                    shutil.copy(bundle, machines.home(machine))
                continue
            assert machine is not None and line.startswith("microstream "), line
            if line.startswith("microstream submit"):
                (machines.home(machine) / "job.py").write_text(JOB.format(at="", out=out))
                wait_for(lambda: "registered" in (tmp_path / "pi1" / "agent.log").read_text(), 60,
                         "pi1 to register")
            proc = machines.run(machine, line)
            if line.startswith("microstream coordinator"):
                wait_for(lambda: "listening" in (tmp_path / "coordinator" / "coordinator.log").read_text(), 60,
                         "the coordinator to listen")
            ran.append(line)
            del proc
        assert _count(out) == 20_000
        assert [line.split()[1] for line in ran] == ["keys", "keys", "keys", "coordinator", "keys", "agent", "keys",
                                                     "submit"]
        assert "site" in (tmp_path / "pi1" / ".microstream" / "agent.toml").read_text()
    finally:
        print(machines.tail())
        machines.close()


@pytest.mark.timeout(420)
def test_a_coordinator_and_agents_from_config_files_take_a_new_agent_live_and_stop_cleanly(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="ms-deploy-"))  # the hosts' Unix socket path must stay short
    try:
        _config_files_and_a_live_join(tmp_path, short)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _config_files_and_a_live_join(tmp_path: Path, short: Path) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    m = Machines(tmp_path)
    coord_keys = m.home("coordinator") / "keys"
    assert main(["keys", "create", "coordinator", "--dir", str(coord_keys)]) == 0
    (m.home("coordinator") / "coordinator.toml").write_text(textwrap.dedent(f"""
        bind = "{endpoint}"
        keys = "keys"
        metrics_port = 0
        memory_limit = "200M"
    """))
    prefix = {name: short / name for name in ("coordinator", "pi1", "pi2", "pi3")}
    assert main(["service", "install", "coordinator", "--config", str(m.home("coordinator") / "coordinator.toml"),
                 "--prefix", str(prefix["coordinator"]), "--no-enable"]) == 0
    unit = prefix["coordinator"] / "etc/systemd/system/microstream-coordinator.service"

    def agent(name: str):
        bundle = m.home("coordinator") / f"{name}.bundle"
        assert main(["keys", "bundle", name, "--dir", str(coord_keys), "--coordinator", endpoint, "--label",
                     f"room={name}", "-o", str(bundle)]) == 0
        keydir = prefix[name] / "etc/microstream/keys"
        assert main(["keys", "unbundle", str(bundle), "--dir", str(keydir), "--config",
                     str(m.home(name) / "agent.toml")]) == 0
        assert main(["service", "install", "agent", "--config", str(m.home(name) / "agent.toml"), "--prefix",
                     str(prefix[name]), "--no-enable"]) == 0
        return m.start_unit(name, prefix[name] / "etc/systemd/system/microstream-agent.service")

    assert main(["keys", "bundle", "laptop", "--role", "client", "--dir", str(coord_keys), "-o",
                 str(m.home("coordinator") / "laptop.bundle")]) == 0
    assert main(["keys", "unbundle", str(m.home("coordinator") / "laptop.bundle"), "--dir",
                 str(m.home("laptop") / "keys")]) == 0
    try:
        coordinator = m.start_unit("coordinator", unit)
        wait_for(lambda: "listening" in m.tail(), 60, "the coordinator to listen")
        agents = {name: agent(name) for name in ("pi1", "pi2")}
        with _client(m.home("laptop") / "keys", "laptop", endpoint) as client:
            wait_for(lambda: sum(a["up"] for a in client.status()["agents"].values()) == 2, 60, "two agents")
            long_job = m.home("laptop") / "long.py"
            long_job.write_text(LONG)
            m.run("laptop", f"microstream submit {long_job} --detach --coordinator {endpoint} --key "
                            f"{m.home('laptop')}/keys/laptop.key_secret")
            job = next(iter(client.status()["jobs"]))
            wait_for(lambda: client.status(job)["jobs"][job]["state"] == "running", 60, "the job to run")

            # a new Pi while it runs: its bundle trusts its key, the coordinator applies that live
            agents["pi3"] = agent("pi3")
            wait_for(lambda: client.status()["agents"].get("pi3", {}).get("up"), 60, "pi3 to join")
            assert coordinator.poll() is None and "trusted pi3 (agent)" in m.tail(100)
            out = tmp_path / "on-pi3.jsonl"
            script = m.home("laptop") / "on_pi3.py"
            script.write_text(JOB.format(at=', at="pi3"', out=out))
            m.run("laptop", f"MICROSTREAM_KEY={m.home('laptop')}/keys/laptop.key_secret microstream submit {script} "
                            f"--coordinator {endpoint}")
            assert _count(out) == 20_000
            assert client.status(job)["jobs"][job]["state"] == "running"   # the first job went on throughout
            client.stop(job)

        # SIGTERM to each process, as `systemctl stop` sends it: each stops in order and leaves nothing behind
        for name, proc in agents.items():
            workdir = prefix[name] / "var/lib/microstream/agent"
            code, left = m.stop(proc)
            assert code == 0 and not left, (name, code, left, m.tail())
            assert not list(workdir.iterdir()), list(workdir.iterdir())   # its per-run directory went with it
            assert "exiting" in m.logs[f"{name}: microstream-agent.service"].read_text()
        code, left = m.stop(coordinator)
        assert code == 0 and not left
        log = m.logs["coordinator: microstream-coordinator.service"].read_text()
        assert "SIGTERM received" in log and "the agents and their hosts run on" in log
    finally:
        print(m.tail())
        m.close()


def test_sigterm_to_a_coordinator_leaves_agents_running_and_they_come_back(tmp_path):
    """A graceful stop of the coordinator is not a shutdown: its agents (and their hosts) run on, say why they
    register again, and do when a coordinator is back on the same address and keys."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    m = Machines(tmp_path)
    keys = m.home("c") / "keys"
    assert main(["keys", "create", "coordinator", "--dir", str(keys)]) == 0
    assert main(["keys", "bundle", "pi1", "--dir", str(keys), "--coordinator", endpoint, "-o",
                 str(m.home("c") / "pi1.bundle")]) == 0
    assert main(["keys", "bundle", "ops", "--role", "client", "--dir", str(keys), "-o",
                 str(m.home("c") / "ops.bundle")]) == 0
    assert main(["keys", "unbundle", str(m.home("c") / "ops.bundle"), "--dir", str(m.home("ops") / "keys")]) == 0
    start = f"microstream coordinator --bind {endpoint} --keys {keys} --metrics-port 0 --no-state"
    try:
        first = m.run("c", start)
        wait_for(lambda: "listening" in m.tail(), 60, "the coordinator")
        agent = m.run("pi1", f"microstream agent --bundle {m.home('c') / 'pi1.bundle'} --coordinator-timeout 2")
        with _client(m.home("ops") / "keys", "ops", endpoint) as client:
            wait_for(lambda: client.status()["agents"].get("pi1", {}).get("up"), 60, "pi1")
        code, _ = m.stop(first)  # type: ignore[arg-type]
        assert code == 0
        time.sleep(3)
        assert agent.poll() is None                                  # type: ignore[union-attr]
        m.run("c", start)
        with _client(m.home("ops") / "keys", "ops", endpoint) as client:
            wait_for(lambda: client.status()["agents"].get("pi1", {}).get("up"), 60, "pi1 to come back")
        assert "registering again" in (m.home("pi1") / "agent.log").read_text()
        code, left = m.stop(agent)                                   # type: ignore[arg-type]
        assert code == 0 and not left
        assert alive(agent.pid) is False and not descendants(agent.pid)  # type: ignore[union-attr]
    finally:
        print(m.tail())
        m.close()


# What the guide says to run that cannot run here, and what the test does instead (a line of the guide that is
# neither a microstream command, nor one of these, fails the test: the guide and the test cannot drift apart).
NOT_RUN = {
    "pip wheel --no-deps -w dist .": "building the wheel is pip's business (it writes build/ into the clone); the "
                                     "microstream on this machine stands for the installed one",
    "sudo apt-get update && sudo apt-get install -y python3-venv": "a Pi's package lists; python3-venv is Debian's",
    "sudo python3 -m venv /opt/microstream": "the test's virtual environment stands for /opt/microstream",
    "sudo /opt/microstream/bin/pip install microstream-*.whl": "the same",
    "sudo ln -s /opt/microstream/bin/microstream /usr/local/bin/microstream": "`microstream` is on the test's PATH",
}


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block."""
    out, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                out.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return out


@pytest.mark.timeout(420)
def test_the_deploy_guide_runs_as_written(tmp_path):
    """docs/deploy.md on loopback: pi01 the coordinator, pi05 (and pi21, added live) the agents, a laptop; `sudo`
    dropped (root here), /etc and /var/lib under each machine's own directory, `service install` with `--prefix`
    and the unit's ExecStart started as systemd would, `scp` a copy, pi01.local the loopback address."""
    short = Path(tempfile.mkdtemp(prefix="ms-guide-"))  # the hosts' Unix socket path must stay short
    port, beacon = free_port(), free_port()
    m = Machines(short)
    pending: list[tuple[str, list[str]]] = []     # file blocks, written to the machine of the next shell block
    rss: dict[str, int] = {}
    agent_maps = ""
    units: dict[str, object] = {}
    ran: list[str] = []

    def place(machine: str, text: str) -> str:
        text = (text.replace("pi01.local", "127.0.0.1").replace(":7077", f":{port}").replace("0.0.0.0", "127.0.0.1")
                .replace("/etc/microstream", f"{m.home(machine)}/etc/microstream")
                .replace("/var/lib/microstream", f"{m.home(machine)}/var/lib/microstream"))
        return text.replace("beacon = true", f'beacon = true\ninterface = "127.0.0.1"\nbeacon_port = {beacon}')

    observer: list[Bundle] = []   # the test's own read-only key, to watch agents join

    def endpoint_up(name: str) -> bool:
        if not observer:
            store = KeyStore(m.home("pi01") / "etc/microstream/keys")
            observer.append(write_bundle(store, "observer", short / "observer.bundle", role="read-only"))
            wait_for(lambda: "trusted observer" in m.tail(100), 10, "the coordinator to trust the test's key")
        address = ClusterAddress(f"tcp://127.0.0.1:{port}", observer[0].pair, observer[0].coordinator_public)
        try:
            with Client(address, timeout=5) as client:
                return bool(client.status()["agents"].get(name, {}).get("up"))
        except ClusterError:
            return False

    try:
        for lang, lines in _blocks((ROOT / "docs" / "deploy.md").read_text()):
            if lang in ("toml", "python"):
                pending.append((lines[0].lstrip("# ").strip(), lines[1:]))
                continue
            if lang != "sh":
                continue
            machine = re.match(r"# on (?:the )?([\w-]+(?: Pi)?)", lines[0]).group(1)  # type: ignore[union-attr]
            for name, body in pending:
                extra = ["metrics_port = 0"] if name == "coordinator.toml" else []  # no fixed port in a test
                where = "pi05" if name.endswith(".py") else machine  # the job's sink writes on the Pi that runs it
                (m.home(machine) / name).write_text(place(where, "\n".join(body + extra) + "\n"))
            pending = []
            for line in lines[1:]:
                if line in NOT_RUN:
                    ran.append(f"(mirrored) {line}")
                    continue
                assert machine != "every Pi", f"an install line the test does not know: {line}"
                if line.startswith("scp "):
                    source, target = line.split()[1:]
                    if "*" in source:  # the wheel: see NOT_RUN
                        ran.append(f"(mirrored) {line}")
                        continue
                    shutil.copy(m.home(machine) / source, m.home(target.split(".")[0]))
                    ran.append(line)
                    continue
                assert line.startswith(("sudo microstream ", "microstream ", "for n in", "rm ")), line
                command = place(machine, line.replace("sudo ", "").replace("seq -w 2 20", "seq -w 05 07"))
                if " service install " in command:
                    command += f" --prefix {m.home(machine)} --no-enable"
                if " status --watch" in command:
                    watch = subprocess.Popen(["bash", "-c", command], cwd=m.home(machine), env=m.env(machine),
                                             preexec_fn=sigint_as_in_a_shell,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    time.sleep(4)
                    watch.send_signal(signal.SIGINT)
                    out, err = watch.communicate(timeout=30)
                    assert watch.returncode == 0 and "every 5 s" in out and "campus" in out, (out, err)
                    ran.append(line)
                    continue
                m.run(machine, command)
                ran.append(line)
                if " service install " in command:  # what `systemctl enable --now` would start
                    role = "coordinator" if "install coordinator" in command else "agent"
                    units[machine] = m.start_unit(
                        machine, m.home(machine) / "etc/systemd/system" / f"microstream-{role}.service")
                    if role == "coordinator":
                        wait_for(lambda: "listening" in m.tail(), 60, "the coordinator to listen")
                    else:
                        wait_for(lambda machine=machine: endpoint_up(machine), 60, f"{machine} to join")
                        if machine == "pi05":
                            for name, key in (("agent", "pi05"), ("coordinator", "pi01")):
                                with open(f"/proc/{units[key].pid}/status") as f:  # type: ignore[attr-defined]
                                    rss[name] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) << 10
                            with open(f"/proc/{units['pi05'].pid}/maps") as f:  # type: ignore[attr-defined]
                                agent_maps = f.read()
                if " keys revoke " in command:
                    wait_for(lambda: "revoked pi07" in m.tail(200), 10, "the revocation to apply")
                if " keys bundle ops " in command:  # applied live within a second; the guide's next step is scp
                    wait_for(lambda: "trusted ops (client)" in m.tail(200), 10, "the new client key to apply")
        print("\n".join(ran))
        print({k: f"{v / 2**20:.0f} MB" for k, v in rss.items()})
        assert all(v < 200 << 20 for v in rss.values()), rss   # docs/deploy.md's memory table
        assert rss["agent"] < 80 << 20, rss                    # an idle agent: no numba (its hosts have it)
        assert "/numba/" not in agent_maps and "/llvmlite/" not in agent_maps
        assert endpoint_up("pi05") and endpoint_up("pi21")
        assert units["pi01"].poll() is None                      # type: ignore[attr-defined]  # never restarted
        rows = m.home("pi05") / "var/lib/microstream/campus.jsonl"
        assert sum(json.loads(x)["n"] for x in rows.read_text().splitlines()) == 20_000
        for machine in ("pi05", "pi21", "pi01"):
            code, left = m.stop(units[machine])                  # type: ignore[arg-type]
            assert code == 0 and not left, (machine, code, left)
    finally:
        print(m.tail())
        m.close()
        shutil.rmtree(short, ignore_errors=True)
