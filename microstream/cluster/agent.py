"""The agent: one per physical node. Registers with the coordinator, starts and stops the hosts of
virtual nodes, relays their progress, and exposes the node's Prometheus metrics.

Talks to the coordinator over a CURVE-authenticated DEALER socket (it accepts only the coordinator's
key), and to its hosts over a local IPC socket in a private directory.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..runtime.backends import HostBackend, HostHandle, ProcessBackend
from ..runtime.protocol import ControlMessage, msg
from ..unikernel_backend.backend import MicroVMBackend
from .security import curve_client

HEARTBEAT_EVERY = 1.0

BACKENDS: dict[str, type[HostBackend]] = {"process": ProcessBackend, "microvm": MicroVMBackend}


def available_backends() -> dict[str, HostBackend]:
    """The backends this machine can run, by name (agents advertise them to the coordinator).
    `MICROSTREAM_BACKENDS=process,...` limits an agent to those (e.g. a node that should run no VMs)."""
    allowed = {b.strip() for b in os.environ.get("MICROSTREAM_BACKENDS", "").split(",") if b.strip()}
    found = {}
    for name, cls in BACKENDS.items():
        if allowed and name not in allowed:
            continue
        backend = cls()
        if backend.available():
            found[name] = backend
    return found


def capabilities() -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cores": os.cpu_count() or 1, "memory": mem, "arch": platform.machine(),
            "backends": sorted(available_backends()), "python": platform.python_version()}


@dataclass
class _Host:
    job: str
    vnode: str
    handle: HostHandle
    spec: bytes
    identity: bytes | None = None
    stats: dict = field(default_factory=dict)
    state: str = "starting"
    started: float = field(default_factory=time.monotonic)
    restoring: bool = False
    incoming: bool = False  # a microVM host that receives a whole VM (tier-2 migration)


class Agent:
    def __init__(self, name: str, coordinator: str, keys: Any = None, coordinator_public: bytes | None = None,
                 labels: dict[str, str] | None = None, data_host: str = "127.0.0.1", metrics_port: int | None = 0,
                 workdir: Path | None = None, log=print) -> None:
        self.name = name
        self.coordinator = coordinator
        self.keys = keys
        self.coordinator_public = coordinator_public
        self.labels = dict(labels or {})
        self.data_host = data_host
        self.log = log
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"microstream-agent-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # the IPC socket lives here: only this user may talk to hosts
        self.hosts: dict[tuple[str, str], _Host] = {}
        self.ended: dict[str, dict] = {}  # "job/vnode" -> last state and stats of hosts that have exited
        self.trusted_data_keys: list[str] = []
        self.metrics_port = metrics_port
        self.metrics = None
        self.backends = available_backends()
        self._stop = False

    # -- sockets ----------------------------------------------------------------------------------
    def _open(self) -> None:
        self.ctx = zmq.Context()
        self.up = self.ctx.socket(zmq.DEALER)
        self.up.linger = 500
        if self.keys is not None:
            curve_client(self.up, self.keys, self.coordinator_public)
        self.up.connect(self.coordinator)
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control_endpoint = f"ipc://{self.workdir}/hosts.sock"
        self.control.bind(self.control_endpoint)
        self._start_metrics()

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        try:
            from .metrics import Metrics, serve

            self.metrics = Metrics()
            self._metrics_server, self.metrics_port = serve(self.metrics, host="0.0.0.0", port=self.metrics_port)
        except ImportError:  # pragma: no cover - metrics module always present in a full install
            self.metrics = None

    def _send_up(self, message: ControlMessage) -> None:
        self.up.send_multipart(message.frames())

    # -- life cycle -------------------------------------------------------------------------------
    def register(self, timeout: float = 10.0) -> bool:
        self._send_up(msg("register", name=self.name, labels=self.labels, data_host=self.data_host,
                          metrics_port=self.metrics_port, public_key=self.keys.public.decode() if self.keys else None,
                          **capabilities()))
        if not self.up.poll(int(timeout * 1000)):
            self.log(f"agent {self.name}: no answer from the coordinator at {self.coordinator} within {timeout:.0f} s: "
                     "is it running, is its public key right, and is this agent's key trusted there "
                     "(`microstream keys trust`)?")
            return False
        reply = ControlMessage.parse(self.up.recv_multipart())
        if reply.kind != "registered":
            self.log(f"agent {self.name}: registration refused: {reply.header.get('error', reply.kind)}")
            return False
        self.trusted_data_keys = reply.header.get("data_keys", [])
        self.log(f"agent {self.name}: registered with {self.coordinator}"
                 f"{f', metrics on :{self.metrics_port}' if self.metrics_port else ''}")
        return True

    def run(self) -> int:
        self._open()
        try:
            if not self.register():
                return 1
            next_beat = 0.0
            poller = zmq.Poller()
            poller.register(self.up, zmq.POLLIN)
            poller.register(self.control, zmq.POLLIN)
            while not self._stop:
                poller.poll(200)
                # relay everything waiting on both sides before the periodic work: moves are latency-bound
                while self.up.poll(0) or self.control.poll(0):
                    if self.up.poll(0):
                        self._on_coordinator(ControlMessage.parse(self.up.recv_multipart()))
                    if self.control.poll(0):
                        frames = self.control.recv_multipart()
                        self._on_host(frames[0], ControlMessage.parse(frames[1:]))
                self._check_hosts()
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
            return 0
        finally:
            self.shutdown()

    def stop(self) -> None:
        self._stop = True

    def shutdown(self) -> None:
        for host in list(self.hosts.values()):
            self._kill(host)
        for sock in ("up", "control"):
            if hasattr(self, sock):
                getattr(self, sock).close(linger=0)
        if hasattr(self, "ctx"):
            self.ctx.term()
        if getattr(self, "_metrics_server", None) is not None:
            with contextlib.suppress(Exception):
                self._metrics_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- coordinator -> agent -------------------------------------------------------------------------
    def _on_coordinator(self, m: ControlMessage) -> None:
        h = m.header
        if m.kind == "deploy":
            self.trusted_data_keys = h.get("data_keys", self.trusted_data_keys)
            self._start_host(h["job"], h["vnode"], m.blob, restoring=bool(h.get("restoring")),
                             backend=h.get("backend", "process"), incoming=bool(h.get("incoming")))
        elif m.kind in ("connect", "start", "snapshot", "pause_to", "redirect"):
            only = h.get("only")  # a message for one virtual node (a migration), else for the whole job
            for host in self._hosts_of(h["job"]):
                if host.identity is not None and (only is None or host.vnode == only):
                    self.control.send_multipart([host.identity, *ControlMessage(m.kind, h, m.blob).frames()])
        elif m.kind == "stop":
            for host in self._hosts_of(h["job"]):
                if h.get("only") in (None, host.vnode):
                    self._stop_host(host)
        elif m.kind == "shutdown":
            self._stop = True

    def _hosts_of(self, job: str) -> list[_Host]:
        return [host for (j, _), host in self.hosts.items() if j == job]

    def _start_host(self, job: str, vnode: str, spec: bytes | None, restoring: bool = False,
                    backend: str = "process", incoming: bool = False) -> None:
        chosen = self.backends.get(backend)
        if chosen is None:
            have = sorted(self.backends)
            self._send_up(msg("vnode_failed", job=job, vnode=vnode,
                              error=f"agent {self.name} has no '{backend}' host backend (it has {have})"))
            return
        handle = chosen.start(job, vnode, self.control_endpoint, self.workdir / f"{job}-{vnode}.log")
        self.hosts[(job, vnode)] = _Host(job, vnode, handle, spec or b"", restoring=restoring, incoming=incoming)
        self.log(f"agent {self.name}: started {job}/{vnode} on the {backend} backend (pid {handle.pid})")

    def _stop_host(self, host: _Host) -> None:
        if host.identity is not None:
            self.control.send_multipart([host.identity, *ControlMessage("stop", {}).frames()])
        host.state = "stopping"
        host.started = time.monotonic()

    def _kill(self, host: _Host) -> None:
        host.handle.stop(grace=2.0)

    # -- host -> agent ----------------------------------------------------------------------------------
    def _on_host(self, identity: bytes, m: ControlMessage) -> None:
        h = m.header
        host = self.hosts.get((h.get("job"), h.get("vnode")))
        if host is None:
            return
        if m.kind == "hello":
            host.identity = identity
            settings = {**self._host_settings(), "restoring": host.restoring, "incoming": host.incoming}
            self.control.send_multipart([identity, *ControlMessage("spec", settings, host.spec).frames()])
        elif m.kind == "ready":
            host.state = "ready"
            self._send_up(msg("vnode_ready", job=host.job, vnode=host.vnode, endpoint=h["endpoint"],
                              public_key=self.keys.public.decode() if self.keys else None,
                              incoming=h.get("incoming")))
        elif m.kind == "stats":
            host.state = "running"
            host.stats = h["stats"]
            self._record_metrics(host)
        elif m.kind == "done":
            host.state = "done"
            host.stats = h.get("stats", host.stats)  # final counts, even for jobs shorter than a report
            self._record_metrics(host)
            self._send_up(ControlMessage("vnode_done", {"job": host.job, "vnode": host.vnode, "stats": host.stats},
                                         m.blob))
        elif m.kind == "resumed":
            self._send_up(msg("vnode_resumed", job=host.job, vnode=host.vnode, at=h["at"]))
        elif m.kind == "snapshot":
            host.state = "migrated"
            self._send_up(ControlMessage("vnode_snapshot", {"job": host.job, "vnode": host.vnode,
                                                            "whole": h.get("whole")}, m.blob))
        elif m.kind == "failed":
            host.state = "failed"
            self._send_up(msg("vnode_failed", job=host.job, vnode=host.vnode, error=h.get("error", "?")))

    def _host_settings(self) -> dict[str, Any]:
        """What a host needs from its agent besides the job (which the agent never unpickles)."""
        return {"bind_host": self.data_host, "trusted": self.trusted_data_keys,
                "public": self.keys.public.decode() if self.keys else None,
                "secret": self.keys.secret.decode() if self.keys else None}

    def _check_hosts(self) -> None:
        for key, host in list(self.hosts.items()):
            code = host.handle.poll()
            if code is None:
                if host.state == "stopping" and time.monotonic() - host.started > 3:
                    self._kill(host)
                continue
            if host.state not in ("done", "failed", "stopping", "migrated"):
                self._send_up(msg("vnode_failed", job=host.job, vnode=host.vnode,
                                  error=f"host process exited with code {code}; see {self.workdir}"))
                host.state = "failed"
            self.ended[f"{host.job}/{host.vnode}"] = {"state": host.state if host.state != "stopping" else "stopped",
                                                      "pid": host.handle.pid, "stats": host.stats}
            while len(self.ended) > 200:
                self.ended.pop(next(iter(self.ended)))
            del self.hosts[key]

    def _heartbeat(self) -> None:
        vnodes = dict(self.ended)
        vnodes.update({f"{h.job}/{h.vnode}": {"state": h.state, "pid": h.handle.pid, "stats": h.stats}
                       for h in self.hosts.values()})
        self._send_up(msg("heartbeat", name=self.name, vnodes=vnodes))

    def _record_metrics(self, host: _Host) -> None:
        if self.metrics is None:
            return
        try:
            from .metrics import process_usage

            self.metrics.update_from_host_stats(host.job, host.stats, node=self.name)
            cpu, rss = process_usage(host.handle.pid)
            self.metrics.update_host(self.name, f"{host.job}/{host.vnode}", cpu, rss)
        except Exception as exc:  # noqa: BLE001 - metrics must never take the agent down
            self.log(f"agent {self.name}: metrics update failed: {exc}")
