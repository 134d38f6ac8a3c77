"""The agent: one per physical node. Registers with the coordinator, starts and stops the hosts of
virtual nodes, relays their progress, and exposes the node's Prometheus metrics.

Talks to the coordinator over a CURVE-authenticated DEALER socket (it accepts only the coordinator's
key), and to its hosts over a local IPC socket in a private directory. Every send on either has a
deadline: a coordinator that refuses this agent's key, or a host that is gone, costs a log line (or a
failed registration), never a hung agent.
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
from typing import TYPE_CHECKING, Any

import zmq

from ..runtime.backends import HostBackend, HostHandle, ProcessBackend
from ..runtime.protocol import (
    FROM_HOST,
    CheckpointRequest,
    Connect,
    ControlSendError,
    HostCheckpointed,
    HostDone,
    HostFailed,
    HostHello,
    HostReady,
    HostReport,
    HostResumed,
    HostSnapshot,
    HostStats,
    Message,
    PauseTo,
    ProtocolError,
    Redirect,
    SnapshotRequest,
    Spec,
    Start,
    StopHost,
    control_socket,
    send,
)
from ..unikernel_backend.backend import MicroVMBackend
from .messages import (
    TO_AGENT,
    Deploy,
    Error,
    Heartbeat,
    Register,
    Registered,
    Shutdown,
    StopJob,
    VnodeCheckpointed,
    VnodeDone,
    VnodeFailed,
    VnodeReady,
    VnodeResumed,
    VnodeSnapshot,
)
from .security import HandshakeWatch, curve_client, explain_handshake
from .states import VnodeState

if TYPE_CHECKING:
    from .metrics import Metrics

HEARTBEAT_EVERY = 1.0
SEND_TIMEOUT = 2.0  # the agent's loop relays for every host: one stuck peer must not hold it long

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
    state: VnodeState = VnodeState.STARTING
    started: float = field(default_factory=time.monotonic)
    restoring: bool = False
    incoming: bool = False  # a microVM host that receives a whole VM (tier-2 migration)
    epoch: int = 0          # the job's deployment it belongs to: what it reports carries it (fencing)


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
        self.metrics: Metrics | None = None
        self.backends = available_backends()
        self._stop = False
        self._watch: HandshakeWatch | None = None
        self._errors_seen: set[str] = set()

    # -- sockets ----------------------------------------------------------------------------------
    def _open(self) -> None:
        self.ctx = zmq.Context()
        self.up = control_socket(self.ctx, zmq.DEALER, send_timeout=SEND_TIMEOUT)
        if self.keys is not None:
            if self.coordinator_public is None:
                raise ValueError(f"agent {self.name}: with keys, it needs the coordinator's public key too")
            curve_client(self.up, self.keys, self.coordinator_public)
            self._watch = HandshakeWatch(self.up)  # to say why, if the coordinator refuses us
        self.up.connect(self.coordinator)
        self.control = control_socket(self.ctx, zmq.ROUTER, send_timeout=SEND_TIMEOUT)
        self.control_endpoint = f"ipc://{self.workdir}/hosts.sock"
        self.control.bind(self.control_endpoint)
        self._start_metrics()

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        try:
            from .metrics import Metrics, serve

            metrics = self.metrics = Metrics()
            self._metrics_server, self.metrics_port = serve(metrics, host="0.0.0.0", port=self.metrics_port)
        except ImportError:  # pragma: no cover - metrics module always present in a full install
            self.metrics = None

    def _send_up(self, message: Message) -> bool:
        """Send to the coordinator, or log why not (it will count this agent lost if that goes on)."""
        try:
            send(self.up, message, to=f"the coordinator at {self.coordinator}")
            return True
        except ControlSendError as exc:
            self.log(f"agent {self.name}: {exc}")
            return False

    def _to_host(self, host: _Host, message: Message) -> None:
        if host.identity is None:
            return
        try:
            send(self.control, message, to=f"host {host.job}/{host.vnode}", identity=host.identity)
        except ControlSendError as exc:
            if not isinstance(message, StopHost):  # a host that is gone already needs no stop
                self.log(f"agent {self.name}: {exc}")

    # -- life cycle -------------------------------------------------------------------------------
    def register(self, timeout: float = 10.0) -> bool:
        """Register with the coordinator; False (and a log line saying why) if that fails within `timeout` s."""
        deadline = time.monotonic() + timeout
        message = Register(name=self.name, labels=self.labels, data_host=self.data_host,
                           metrics_port=self.metrics_port, public_key=self.keys.public.decode() if self.keys else None,
                           **capabilities())
        self.up.sndtimeo = int(timeout * 1000)
        try:
            send(self.up, message, to=f"the coordinator at {self.coordinator}")
            answered = self.up.poll(max(0, int((deadline - time.monotonic()) * 1000)))
        except ControlSendError:
            answered = False
        finally:
            self.up.sndtimeo = int(SEND_TIMEOUT * 1000)
        if not answered:
            self.log(f"agent {self.name}: cannot register: {self._why_no_answer(timeout)}")
            self._close_watch()
            return False
        self._close_watch()
        try:
            reply = TO_AGENT.decode(self.up.recv_multipart())
        except ProtocolError as exc:
            self.log(f"agent {self.name}: registration failed: {exc}")
            return False
        if not isinstance(reply, Registered):
            self.log(f"agent {self.name}: registration refused: {getattr(reply, 'error', reply.KIND)}")
            return False
        self.trusted_data_keys = reply.data_keys
        self.log(f"agent {self.name}: registered with {self.coordinator}"
                 f"{f', metrics on :{self.metrics_port}' if self.metrics_port else ''}")
        return True

    def _why_no_answer(self, timeout: float) -> str:
        if self._watch is not None:
            why = explain_handshake(self._watch.wait(0.2), self.coordinator, self.keys)
            if why:
                return why
        return (f"no answer from the coordinator at {self.coordinator} within {timeout:.0f} s: is it running, is "
                "its public key right, and is this agent's key trusted there (`microstream keys trust`)?")

    def _close_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

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
                        self._receive(self.up.recv_multipart())
                    if self.control.poll(0):
                        frames = self.control.recv_multipart()
                        self._receive(frames[1:], host=frames[0])
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
        self._close_watch()
        for sock in ("up", "control"):
            if hasattr(self, sock):
                getattr(self, sock).close(linger=0)
        if hasattr(self, "ctx"):
            self.ctx.term()
        if getattr(self, "_metrics_server", None) is not None:
            with contextlib.suppress(Exception):
                self._metrics_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _receive(self, frames: list[bytes], host: bytes | None = None) -> None:
        """Decode and handle one message from the coordinator, or (with `host`, its identity) from a host; a
        message that cannot be understood is logged and dropped."""
        try:
            if host is None:
                self._on_coordinator(TO_AGENT.decode(frames))
            else:
                self._on_host(host, FROM_HOST.decode(frames))
        except ProtocolError as exc:
            self.log(f"agent {self.name}: dropped a message from {'a host' if host else 'the coordinator'}: {exc}")

    # -- coordinator -> agent -------------------------------------------------------------------------
    def _on_coordinator(self, m: Message) -> None:
        if isinstance(m, Deploy):
            self.trusted_data_keys = m.data_keys
            self._start_host(m.job, m.vnode, m.blob, restoring=bool(m.restoring), backend=m.backend,
                             incoming=bool(m.incoming), epoch=m.epoch)
        elif isinstance(m, Connect | Start | SnapshotRequest | PauseTo | Redirect | CheckpointRequest):
            only = getattr(m, "only", None)  # a message for one virtual node (a migration), else for the whole job
            for host in self._hosts_of(m.job):
                if only is None or host.vnode == only:
                    self._to_host(host, m)
        elif isinstance(m, StopJob):
            for host in self._hosts_of(m.job):
                if m.only in (None, host.vnode) and (m.before is None or host.epoch < m.before):
                    self._stop_host(host)
        elif isinstance(m, Shutdown):
            self._stop = True
        elif isinstance(m, Error) and m.error not in self._errors_seen:  # once each: heartbeats repeat them
            self._errors_seen.add(m.error)
            self.log(f"agent {self.name}: the coordinator says: {m.error}")

    def _hosts_of(self, job: str) -> list[_Host]:
        return [host for (j, _), host in self.hosts.items() if j == job]

    def _start_host(self, job: str, vnode: str, spec: bytes | None, restoring: bool = False,
                    backend: str = "process", incoming: bool = False, epoch: int = 0) -> None:
        chosen = self.backends.get(backend)
        if chosen is None:
            have = sorted(self.backends)
            self._send_up(VnodeFailed(job=job, vnode=vnode, epoch=epoch,
                                      error=f"agent {self.name} has no '{backend}' host backend (it has {have})"))
            return
        old = self.hosts.get((job, vnode))
        if old is not None:  # an earlier deployment's host (a recovery replaced it; a move came back): end it first
            self._to_host(old, StopHost())
            self._kill(old)
            self.log(f"agent {self.name}: ended the epoch-{old.epoch} host of {job}/{vnode} before its replacement")
        handle = chosen.start(job, vnode, self.control_endpoint, self.workdir / f"{job}-{vnode}.log")
        self.hosts[(job, vnode)] = _Host(job, vnode, handle, spec or b"", restoring=restoring, incoming=incoming,
                                         epoch=epoch)
        self.log(f"agent {self.name}: started {job}/{vnode} on the {backend} backend (pid {handle.pid})")

    def _stop_host(self, host: _Host) -> None:
        self._to_host(host, StopHost())
        host.state = VnodeState.STOPPING
        host.started = time.monotonic()

    def _kill(self, host: _Host) -> None:
        host.handle.stop(grace=2.0)

    # -- host -> agent ----------------------------------------------------------------------------------
    def _on_host(self, identity: bytes, m: Message) -> None:
        host = self.hosts.get((m.job, m.vnode)) if isinstance(m, HostReport) else None
        if host is None:
            return
        if isinstance(m, HostHello):
            host.identity = identity
            self._to_host(host, self._spec(host))
        elif isinstance(m, HostReady):
            host.state = VnodeState.READY
            self._send_up(VnodeReady(job=host.job, vnode=host.vnode, endpoint=m.endpoint,
                                     public_key=self.keys.public.decode() if self.keys else None,
                                     incoming=m.incoming, epoch=host.epoch))
        elif isinstance(m, HostStats):
            host.state = VnodeState.RUNNING
            host.stats = m.stats
            self._record_metrics(host)
        elif isinstance(m, HostDone):
            host.state = VnodeState.DONE
            host.stats = m.stats if m.stats is not None else host.stats  # final counts, even for short jobs
            self._record_metrics(host)
            self._send_up(VnodeDone(job=host.job, vnode=host.vnode, stats=host.stats, blob=m.blob, epoch=host.epoch))
        elif isinstance(m, HostResumed):
            self._send_up(VnodeResumed(job=host.job, vnode=host.vnode, at=m.at, epoch=host.epoch))
        elif isinstance(m, HostSnapshot):
            host.state = VnodeState.MIGRATED
            self._send_up(VnodeSnapshot(job=host.job, vnode=host.vnode, whole=m.whole, blob=m.blob, epoch=host.epoch))
        elif isinstance(m, HostCheckpointed):
            self._send_up(VnodeCheckpointed(job=host.job, vnode=host.vnode, checkpoint=m.checkpoint, blob=m.blob,
                                            epoch=host.epoch))
        elif isinstance(m, HostFailed):
            host.state = VnodeState.FAILED
            self._send_up(VnodeFailed(job=host.job, vnode=host.vnode, error=m.error, operator=m.operator,
                                      cause=m.cause, epoch=host.epoch))

    def _spec(self, host: _Host) -> Spec:
        """What a host needs from its agent besides the job (which the agent never unpickles)."""
        return Spec(bind_host=self.data_host, blob=host.spec, trusted=self.trusted_data_keys,
                    public=self.keys.public.decode() if self.keys else None,
                    secret=self.keys.secret.decode() if self.keys else None,
                    restoring=host.restoring, incoming=host.incoming)

    def _check_hosts(self) -> None:
        for key, host in list(self.hosts.items()):
            code = host.handle.poll()
            if code is None:
                if host.state is VnodeState.STOPPING and time.monotonic() - host.started > 3:
                    self._kill(host)
                continue
            if not host.state.over and host.state is not VnodeState.STOPPING:
                self._send_up(VnodeFailed(job=host.job, vnode=host.vnode, epoch=host.epoch,
                                          error=f"host process exited with code {code}; see {self.workdir}"))
                host.state = VnodeState.FAILED
            state = VnodeState.STOPPED if host.state is VnodeState.STOPPING else host.state
            self.ended[f"{host.job}/{host.vnode}"] = {"state": state, "pid": host.handle.pid, "stats": host.stats}
            while len(self.ended) > 200:
                self.ended.pop(next(iter(self.ended)))
            del self.hosts[key]

    def _heartbeat(self) -> None:
        vnodes = dict(self.ended)
        vnodes.update({f"{h.job}/{h.vnode}": {"state": h.state, "pid": h.handle.pid, "stats": h.stats,
                                              "epoch": h.epoch}
                       for h in self.hosts.values()})
        self._send_up(Heartbeat(name=self.name, vnodes=vnodes))

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
