"""Where the cluster is, and an embedded cluster on this machine (`microstream cluster up`).

A cluster "home" directory (default `$MICROSTREAM_HOME` or `~/.microstream`) holds the keys, the coordinator's
state directory (`state/`: its jobs and checkpoints in SQLite, so that a restarted coordinator carries on) and,
for an embedded cluster, `cluster.json`: the coordinator's endpoint, how it was started and the processes started.
`submit`, `status` and `stop` read it when no `--coordinator` is given.

`cluster up` when only the coordinator has died starts it again on the same port: the agents re-register and
their jobs go on. `cluster down` asks the coordinator to shut the cluster down (every job stopped, every agent
exits), then signals whatever is left. `restart_agent` stops one agent with SIGTERM and starts it again (a step of
a rolling upgrade, docs/maintenance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..core import procs
from .client import Client, ClusterAddress, ClusterError


def home(path: str | Path | None = None) -> Path:
    root = Path(path or os.environ.get("MICROSTREAM_HOME") or Path.home() / ".microstream")
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_file(root: Path) -> Path:
    return root / "cluster.json"


def state_dir(root: Path) -> Path:
    """Where the coordinator of the cluster in `root` keeps its state (jobs, checkpoints)."""
    return root / "state"


def read_state(root: Path) -> dict[str, Any] | None:
    path = state_file(root)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def address(root: Path, coordinator: str | None = None, insecure: bool = False,
            key_name: str = "client") -> ClusterAddress:
    """The coordinator to talk to: an explicit endpoint, or the embedded cluster recorded in `root`."""
    from .security import KeyStore

    state = read_state(root)
    endpoint = coordinator or (state or {}).get("coordinator")
    if endpoint is None:
        raise ClusterError(f"no cluster: none recorded in {state_file(root)} and no --coordinator given; "
                           "start one with `microstream cluster up --nodes 3`")
    insecure = insecure or bool((state or {}).get("insecure")) and coordinator is None
    if insecure:
        return ClusterAddress(endpoint)
    store = KeyStore(root / "keys")
    try:
        keys = store.pair(key_name)
        server = coordinator_public(store.root)
    except Exception as exc:
        raise ClusterError(f"cannot load keys from {store.root}: {exc}") from exc
    return ClusterAddress(endpoint, keys, server)


def coordinator_public(keydir: Path) -> bytes:
    """The coordinator's public key from a key directory: `coordinator.key`, or `trusted/coordinator.key`."""
    from .security import KeyFileError, load

    for path in (keydir / "coordinator.key", keydir / "trusted" / "coordinator.key"):
        if path.exists():
            return load(path).public
    raise KeyFileError(keydir / "coordinator.key", "does not exist",
                       "copy the coordinator's public key file here (or pass --coordinator-key FILE)")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "microstream.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def up(nodes: int, root: Path, port: int = 0, insecure: bool = False, progress=print,
       timeout: float = 60.0, coordinator_args: list[str] | None = None) -> dict[str, Any]:
    """Start a coordinator and `nodes` agents as processes on this machine; wait until all registered."""
    from .security import KeyStore

    existing = read_state(root)
    if existing and _alive(_processes(existing)):
        if not _alive(_processes(existing)[:1]) and existing.get("coordinator_args"):
            return restart_coordinator(root, progress=progress, timeout=timeout)
        raise ClusterError(f"a cluster is already running (pids {existing['pids']}); "
                           "stop it with `microstream cluster down`")
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    keydir = root / "keys"
    store = KeyStore(keydir)
    names = ["coordinator", "client", *[f"node{i}" for i in range(1, nodes + 1)]]
    if not insecure:
        for name in names:
            if not (keydir / f"{name}.key_secret").exists():
                store.create(name)
            if name != "coordinator":  # with its role (also for a key directory from before roles)
                store.trust(keydir / f"{name}.key", role="client" if name == "client" else "agent")
    sec = ["--insecure"] if insecure else ["--keys", str(keydir)]
    port_file = root / "coordinator.port"
    port_file.unlink(missing_ok=True)
    args = ["coordinator", "--port-file", str(port_file), "--metrics-port", "0", "--state-dir", str(state_dir(root)),
            "--home", str(root), *sec, *(coordinator_args or [])]  # --home: where its console's address goes
    coord = _spawn([*args, "--bind", f"tcp://127.0.0.1:{port}"], logs / "coordinator.log")
    endpoint = _wait_for_port(port_file, coord, timeout)
    pids = [coord.pid]
    for i in range(1, nodes + 1):
        agent = _spawn(_agent_args(endpoint, f"node{i}", insecure, keydir), logs / f"node{i}.log")
        pids.append(agent.pid)
    state = {"coordinator": endpoint, "pids": pids, "started": [procs.start_time(pid) for pid in pids],
             "insecure": insecure, "nodes": nodes, "logs": str(logs), "coordinator_args": args}
    state_file(root).write_text(json.dumps(state, indent=2))
    _wait_for_agents(address(root), nodes, timeout)
    progress(f"cluster up: coordinator {endpoint}, {nodes} agent{'s' if nodes != 1 else ''} (logs in {logs})")
    return state


def restart_coordinator(root: Path, progress=print, timeout: float = 60.0, wait_for_agents: bool = True,
                        ) -> dict[str, Any]:
    """Start the embedded cluster's coordinator again (it died, or was killed) on the same address, keys and state
    directory; with `wait_for_agents`, wait until the agents that are still running have registered again."""
    state = read_state(root)
    if state is None or not state.get("coordinator_args"):
        raise ClusterError(f"no cluster recorded in {state_file(root)} that could be restarted")
    deadline = time.monotonic() + 5  # one just killed may take a moment to go
    while _alive(_processes(state)[:1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(_processes(state)[:1]):
        raise ClusterError(f"the coordinator (pid {state['pids'][0]}) is running")
    port_file = root / "coordinator.port"
    port_file.unlink(missing_ok=True)
    log = Path(state["logs"]) / "coordinator.log"
    coord = _spawn([*state["coordinator_args"], "--bind", state["coordinator"]], log)
    _wait_for_port(port_file, coord, timeout)
    _record(state, 0, coord.pid)
    state_file(root).write_text(json.dumps(state, indent=2))
    if wait_for_agents:
        _wait_for_agents(address(root), sum(1 for process in _processes(state)[1:] if _alive([process])), timeout)
    progress(f"coordinator restarted on {state['coordinator']} (pid {coord.pid})")
    return state


def _agent_args(endpoint: str, name: str, insecure: bool, keydir: Path) -> list[str]:
    sec = ["--insecure"] if insecure else ["--keys", str(keydir), "--key", name]
    # checkpoint replicas in the cluster's home: they outlive the agent, and two clusters never share them
    return ["agent", "--coordinator", endpoint, "--name", name, *sec, "--replica-dir",
            str(keydir.parent / "replicas" / name)]


def restart_agent(root: Path, name: str, progress=print, timeout: float = 60.0) -> dict[str, Any]:
    """Stop agent `name` of the embedded cluster in `root` with SIGTERM (its hosts stop with it) and start it again
    as an upgrade would (a new process, the same name, keys and coordinator); wait until it has registered again."""
    state = read_state(root)
    names = [f"node{i}" for i in range(1, int((state or {}).get("nodes", 0)) + 1)]
    if state is None or name not in names:
        raise ClusterError(f"no agent '{name}' in the cluster recorded in {state_file(root)} (agents: {names})")
    index = names.index(name) + 1
    process = _processes(state)[index]
    _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive([process]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive([process]):
        raise ClusterError(f"agent {name} (pid {process[0]}) did not stop within {timeout:.0f} s of SIGTERM")
    log = Path(state["logs"]) / f"{name}.log"
    before = _registrations(log)
    agent = _spawn(_agent_args(state["coordinator"], name, bool(state.get("insecure")), root / "keys"), log)
    _record(state, index, agent.pid)
    state_file(root).write_text(json.dumps(state, indent=2))
    while _registrations(log) <= before:  # its own log says when the coordinator has answered its registration
        if agent.poll() is not None:
            raise ClusterError(f"agent {name} exited with code {agent.returncode} on restart; see {log}")
        if time.monotonic() >= deadline:
            raise ClusterError(f"agent {name} did not register again within {timeout:.0f} s; see {log}")
        time.sleep(0.05)
    progress(f"agent {name} restarted (pid {agent.pid})")
    return state


def _registrations(log: Path) -> int:
    return log.read_text(errors="replace").count(": registered with ") if log.exists() else 0


def _wait_for_port(port_file: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return port_file.read_text().strip()
        if proc.poll() is not None:
            raise ClusterError(f"the coordinator exited with code {proc.returncode}; see its log")
        time.sleep(0.05)
    raise ClusterError("the coordinator did not start in time")


def _wait_for_agents(addr: ClusterAddress, nodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with Client(addr) as client:
        while time.monotonic() < deadline:
            agents = client.status()["agents"]
            if sum(1 for a in agents.values() if a["up"]) >= nodes:
                return
            time.sleep(0.1)
    raise ClusterError(f"only some of the {nodes} agents registered within {timeout:.0f} s; see the logs")


def down(root: Path, progress=print) -> int:
    """Shut the cluster down: the coordinator stops every job and tells every agent to exit (its jobs are then
    over, not resumed by the next `cluster up`); whatever is still running after that is signalled."""
    state = read_state(root)
    if state is None:
        progress(f"no cluster recorded in {state_file(root)}")
        return 0
    processes = _processes(state)
    if _alive(processes[:1]):
        try:
            with Client(address(root), timeout=5) as client:
                client.shutdown()
            deadline = time.monotonic() + 10
            while _alive(processes) and time.monotonic() < deadline:
                time.sleep(0.05)
        except ClusterError as exc:
            progress(f"the coordinator did not shut the cluster down ({exc}); stopping its processes")
    for process in reversed(processes):
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _alive(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in processes:
        _signal(process, signal.SIGKILL)
    state_file(root).unlink(missing_ok=True)
    progress(f"cluster down ({len(processes)} processes stopped)")
    return 0


# A recorded process is its pid and its start time: pids are reused (32,768 of them go round in minutes on a busy
# machine), and a pid alone would signal whatever process has it now.
Process = tuple[int, str | None]


def _processes(state: dict[str, Any]) -> list[Process]:
    pids = state.get("pids", [])
    started = state.get("started") or [None] * len(pids)  # a state file from before start times were recorded
    return list(zip(pids, started, strict=False))


def _record(state: dict[str, Any], index: int, pid: int) -> None:
    started = state.setdefault("started", [None] * len(state["pids"]))
    state["pids"][index], started[index] = pid, procs.start_time(pid)


def _signal(process: Process, sig: int) -> None:
    """Signal the recorded process's group (its hosts too), unless its pid now belongs to another process."""
    pid, started = process
    now = procs.start_time(pid)
    if now is not None and started is not None and now != started:
        return  # it is gone, and its pid reused: its group is gone too (a pid in use as a group id is not reused)
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(processes: list[Process]) -> bool:
    """Is any of the recorded processes still running (not a zombie, and not a newer process with its pid)?"""
    for pid, started in processes:
        fields = procs.stat(pid)
        if fields and fields[0] != "Z" and (started is None or fields[19] == started):
            return True
    return False
