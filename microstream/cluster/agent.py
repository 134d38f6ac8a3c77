"""The agent: one per physical node. Registers with the coordinator, starts and stops the hosts of
virtual nodes, relays their progress, and exposes the node's Prometheus metrics.

Talks to the coordinator over a CURVE-authenticated DEALER socket (it accepts only the coordinator's
key), and to its hosts over a local IPC socket in a private directory. Every send on either has a
deadline: a coordinator that refuses this agent's key, or a host that is gone, costs a log line (or a
failed registration), never a hung agent.

An agent never exits because the coordinator went away: its hosts run on. When the coordinator says it does not
know this agent (it restarted) or has been silent for `coordinator_timeout` seconds (its heartbeats go
unacknowledged), the agent registers again, on a fresh socket, with capped exponential backoff, reporting the
hosts it runs (job, virtual node, epoch, endpoint) so that the coordinator can adopt them. What it sent up that
the coordinator has not acknowledged yet (a host done, failed, ready...) is kept and sent again once registered.

It also keeps checkpoint replicas for the coordinator (`replicas.ReplicaShelf`, in `replica_dir`, outside the work
directory: they outlive the agent) and reports them when it registers: a coordinator that lost its state directory
restores its jobs from them.
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

from ..core import procs
from ..runtime.backends import HostBackend, HostHandle, ProcessBackend
from ..runtime.lease import EXIT_LEASE_EXPIRED, AgentLease
from ..runtime.protocol import (
    FROM_HOST,
    CheckpointDone,
    CheckpointRequest,
    Connect,
    ControlSendError,
    HostCheckpointed,
    HostDone,
    HostFailed,
    HostHello,
    HostOutput,
    HostPrecopied,
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
    HeartbeatAck,
    Register,
    Registered,
    RegisterFirst,
    ReplicaDrop,
    ReplicaFetch,
    ReplicaPart,
    Shutdown,
    StopJob,
    VnodeCheckpointed,
    VnodeDone,
    VnodeFailed,
    VnodeOutput,
    VnodePrecopied,
    VnodeReady,
    VnodeResumed,
    VnodeSnapshot,
)
from .replicas import ReplicaShelf
from .security import MAX_MESSAGE_BYTES, HandshakeWatch, curve_client, explain_handshake
from .states import VnodeState

if TYPE_CHECKING:
    from .metrics import Metrics

HEARTBEAT_EVERY = 1.0
DRAIN_FOR = 0.2  # s of relaying messages before the loop's periodic work has its turn
SEND_TIMEOUT = 2.0  # the agent's loop relays for every host: one stuck peer must not hold it long
COORDINATOR_TIMEOUT = 10.0  # seconds without a word from the coordinator (heartbeats unacknowledged): register again
BACKOFF = (0.5, 5.0)        # seconds between registration attempts: the first, and the cap (doubling in between)
OUTBOX = 1000               # messages kept until the coordinator has acknowledged them
KEEP_JOB_METRICS = 20       # jobs whose hosts have all ended that keep their metric series (a last scrape)
LAST_WORDS = 3.0            # s an exited host's last messages (done, its snapshot, its error) may trail its exit

BACKENDS: dict[str, type[HostBackend]] = {"process": ProcessBackend, "microvm": MicroVMBackend}


LEASE_MARGIN = 0.5  # seconds by which a host's lease is shorter than the coordinator's loss limit


def host_lease(agent_timeout: float) -> float:
    """How long a host runs on while its agent does not renew its lease. The agent renews it as it sends each
    heartbeat, so both count from one moment: the host stops `LEASE_MARGIN` before the coordinator counts the agent
    lost, and well before the replacements it then starts are running. (Only if the agent is stopped, stalled in
    the kernel or gone: a slow agent's hosts run on. runtime/lease.py.)"""
    return max(agent_timeout - LEASE_MARGIN, agent_timeout / 2)


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
    endpoint: str | None = None  # its channel server (a restarted coordinator re-learns it)
    backend: str = "process"
    exited: float | None = None  # when its exit was first seen while its last words had not arrived

    @property
    def unfinished(self) -> bool:
        """It has neither reported an end (done, its snapshot, its failure) nor been told to stop."""
        return not self.state.over and self.state is not VnodeState.STOPPING


class Agent:
    up: zmq.Socket          # to the coordinator (replaced by a fresh one to register again)

    def __init__(self, name: str, coordinator: str, keys: Any = None, coordinator_public: bytes | None = None,
                 labels: dict[str, str] | None = None, data_host: str = "127.0.0.1", metrics_port: int | None = 0,
                 workdir: Path | None = None, log=print, coordinator_timeout: float = COORDINATOR_TIMEOUT,
                 metrics_bind: str = "127.0.0.1", max_message: int = MAX_MESSAGE_BYTES,
                 memory_limit: int | None = None, replica_dir: Path | None = None) -> None:
        self.name = name
        self.memory_limit = memory_limit  # bytes this agent (with its hosts) offers placement at most
        self.metrics_bind = metrics_bind
        self.max_message = max_message
        self.coordinator = coordinator
        self.keys = keys
        self.coordinator_public = coordinator_public
        self.labels = dict(labels or {})
        self.data_host = data_host
        self.log = log
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"microstream-agent-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # the IPC socket lives here: only this user may talk to hosts
        _claim_workdir(self.workdir, name, coordinator, log)
        # checkpoint replicas: beside the work directory (which goes when the agent stops), never inside it
        self.replicas = ReplicaShelf(replica_dir or self.workdir.parent / f"microstream-replicas-{name}", log)
        self.hosts: dict[tuple[str, str], _Host] = {}
        self._deploys: list[Deploy] = []  # received in this pass of the loop, started together at its end
        self.ended: dict[str, dict] = {}  # "job/vnode" -> last state and stats of hosts that have exited
        self._ended_jobs: dict[str, None] = {}  # jobs with no host left here, oldest first (their metrics go later)
        self.trusted_data_keys: list[str] = []
        self.metrics_port = metrics_port
        self.metrics: Metrics | None = None
        self.backends = available_backends()
        self._stop = False
        self._why_stop = "asked to stop"
        self._watch: HandshakeWatch | None = None
        self._errors_seen: set[str] = set()
        self._caps: dict[str, Any] | None = None
        self.coordinator_timeout = coordinator_timeout
        self.registered = False
        self.registrations = 0                       # successful ones (the first and every re-registration)
        self._heard = 0.0                            # when the coordinator last said anything
        self._beats = 0                              # heartbeats sent (their `seq`)
        self._outbox: list[tuple[int, Message]] = []  # (heartbeats sent before it, message) until acknowledged
        self._backoff = BACKOFF[0]
        self._next_attempt = 0.0
        self._lost_at: float | None = None           # when this agent found the coordinator gone
        self.agent_timeout: float | None = None      # the coordinator's loss limit (from its `registered`)
        self.lease = AgentLease.create(self.workdir / "lease")  # renewed with each heartbeat

    # -- sockets ----------------------------------------------------------------------------------
    def _open(self) -> None:
        self.ctx = zmq.Context()
        self._connect_up()
        if self.keys is not None:
            self._watch = HandshakeWatch(self.up)  # to say why, if the coordinator refuses us
        self.control = control_socket(self.ctx, zmq.ROUTER, send_timeout=SEND_TIMEOUT)
        self.control.maxmsgsize = self.max_message  # hosts send snapshots; nothing larger is read
        self.control_endpoint = f"ipc://{self.workdir}/hosts.sock"
        self.control.bind(self.control_endpoint)
        self._start_metrics()

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        try:
            from .metrics import Metrics, serve

            metrics = self.metrics = Metrics()
            self._metrics_server, self.metrics_port = serve(metrics, host=self.metrics_bind,
                                                                port=self.metrics_port)
        except ImportError:  # pragma: no cover - metrics module always present in a full install
            self.metrics = None

    def _connect_up(self) -> None:
        """A fresh socket to the coordinator: whatever the old one still held is dropped (what matters is in the
        outbox), and the coordinator sees a new peer, which must register."""
        if hasattr(self, "up"):
            self.up.close(linger=0)
        self.up = control_socket(self.ctx, zmq.DEALER, send_timeout=SEND_TIMEOUT)
        if self.keys is not None:
            if self.coordinator_public is None:
                raise ValueError(f"agent {self.name}: with keys, it needs the coordinator's public key too")
            curve_client(self.up, self.keys, self.coordinator_public)
        self.up.connect(self.coordinator)

    def _send_up(self, message: Message) -> bool:
        """Send to the coordinator, or log why not (it will count this agent lost if that goes on). Everything
        but heartbeats stays in the outbox until a later heartbeat is acknowledged, and is sent again after a
        re-registration: a host that finished while the coordinator was away still delivers its result."""
        if not isinstance(message, Heartbeat | VnodeOutput):  # printed lines are best effort: not kept
            self._outbox.append((self._beats, message))
            del self._outbox[:-OUTBOX]
        if not self.registered:
            return False
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
    def _registration(self) -> Register:
        if self._caps is None:
            self._caps = capabilities()
            if self.memory_limit:
                self._caps["memory"] = min(self._caps["memory"] or self.memory_limit, self.memory_limit)
        return Register(name=self.name, labels=self.labels, data_host=self.data_host, metrics_port=self.metrics_port,
                        public_key=self.keys.public.decode() if self.keys else None, vnodes=self._report(),
                        replicas=self.replicas.listing(), **self._caps)

    def register(self, timeout: float = 10.0) -> bool:
        """Register with the coordinator; False (and a log line saying why) if that fails within `timeout` s."""
        deadline = time.monotonic() + timeout
        message = self._registration()
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
        self._registered(reply)
        return True

    def _registered(self, reply: Registered) -> None:
        self.trusted_data_keys = reply.data_keys
        self.agent_timeout = reply.agent_timeout or self.agent_timeout
        self.registered = True
        self.registrations += 1
        self._heard = time.monotonic()
        self._backoff = BACKOFF[0]
        if self._lost_at is None or self.registrations == 1:
            late = f" after {time.monotonic() - self._lost_at:.1f} s" if self._lost_at is not None else ""
            self.log(f"agent {self.name}: registered with {self.coordinator}{late}"
                     f"{f', metrics on {self.metrics_bind}:{self.metrics_port}' if self.metrics_port else ''}")
            self._lost_at = None
        else:
            self.log(f"agent {self.name}: registered again with {self.coordinator} after "
                     f"{time.monotonic() - self._lost_at:.1f} s, with {len(self.hosts)} hosts running; sending again "
                     f"{len(self._outbox)} reports it had not acknowledged")
            self._lost_at = None
        for _, message in self._outbox:  # what it may not have seen (the coordinator ignores what it has)
            self._send_again(message)

    def _send_again(self, message: Message) -> None:
        try:
            send(self.up, message, to=f"the coordinator at {self.coordinator}")
        except ControlSendError as exc:
            self.log(f"agent {self.name}: {exc}")

    def _keep_registered(self) -> None:
        """Register again when the coordinator has been silent too long, with capped exponential backoff between
        attempts (each on a fresh socket; the answer arrives in the loop like any message)."""
        now = time.monotonic()
        if self.registered:
            if now - self._heard > self.coordinator_timeout:
                self._lost(f"no word from the coordinator for {now - self._heard:.0f} s")
            return
        if now < self._next_attempt:
            return
        self._connect_up()
        self._send_again(self._registration())
        self._next_attempt = now + self._backoff
        if self._backoff < BACKOFF[1] <= self._backoff * 2 and self._lost_at is not None:
            self.log(f"agent {self.name}: still no answer from the coordinator at {self.coordinator} after "
                     f"{now - self._lost_at:.0f} s; trying every {BACKOFF[1]:g} s (its hosts run on)")
        self._backoff = min(self._backoff * 2, BACKOFF[1])

    def _lost(self, why: str) -> None:
        self.registered = False
        self._lost_at = time.monotonic()
        self._next_attempt = 0.0
        self.log(f"agent {self.name}: {why}: registering again ({len(self.hosts)} hosts run on)")

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
        """Serve until stopped (SIGTERM, or the coordinator's `shutdown`): never because the coordinator is gone."""
        self._open()
        for backend in self.backends.values():
            backend.prepare(self.workdir, lambda line: self.log(f"agent {self.name}: {line}"))
        try:
            if not self.register():
                self._lost_at = time.monotonic()
                self._next_attempt = self._lost_at + self._backoff
            next_beat = 0.0
            poller = zmq.Poller()
            poller.register(self.control, zmq.POLLIN)
            polled = None
            while not self._stop:
                if polled is not self.up:  # a fresh socket since (a re-registration)
                    if polled is not None:
                        poller.unregister(polled)
                    poller.register(self.up, zmq.POLLIN)
                    polled = self.up
                poller.poll(200)
                # relay what is waiting on both sides before the periodic work (moves are latency-bound), for at
                # most DRAIN_FOR s: a steady stream of messages must not hold back host checks and heartbeats
                drain_until = time.monotonic() + DRAIN_FOR
                while (self.up.poll(0) or self.control.poll(0)) and time.monotonic() < drain_until:
                    if self.up.poll(0):
                        self._receive(self.up.recv_multipart())
                    if self.control.poll(0):
                        self._receive_from_host()
                    # a message can take seconds to handle (an old host's grace to stop, a burst of forks on a
                    # loaded node): the lease and the heartbeat go on meanwhile, or a busy agent looks like a frozen
                    # one (a heartbeat waits for deployments received to have started: it lists the hosts)
                    if not self._deploys:
                        next_beat = self._beat(next_beat)
                self._start_deployed()
                self._check_hosts()
                for stored in self.replicas.finished():  # made whole on the shelf's thread
                    self._send_up(stored)
                self._keep_registered()
                next_beat = self._beat(next_beat)
            return 0
        finally:
            self.log(f"agent {self.name}: exiting ({self._why_stop}); stopping its {len(self.hosts)} hosts")
            self.shutdown()

    def _beat(self, next_beat: float) -> float:
        """Renew the lease, and send a heartbeat when one is due; returns when the next one is."""
        if not self.registered:
            self.lease.renew()  # nobody counts this agent lost now: its hosts run on
        elif time.monotonic() >= next_beat:
            self.lease.renew()  # with each heartbeat: the lease and the loss limit count from one moment
            self._heartbeat()
            return time.monotonic() + HEARTBEAT_EVERY
        return next_beat

    def stop(self, why: str = "stopped by a signal or asked to") -> None:
        self._why_stop = why
        self._stop = True

    def shutdown(self) -> None:
        for host in list(self.hosts.values()):
            self._kill(host)
        for backend in self.backends.values():
            backend.close()
        self._close_watch()
        for sock in ("up", "control"):
            if hasattr(self, sock):
                getattr(self, sock).close(linger=0)
        if hasattr(self, "ctx"):
            self.ctx.term()
        if getattr(self, "_metrics_server", None) is not None:
            with contextlib.suppress(Exception):
                self._metrics_server.stop()
        self.replicas.close()
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
        self._heard = time.monotonic()
        if self._deploys and not isinstance(m, Deploy):
            self._start_deployed()  # whatever comes next (a stop, a move) finds the hosts deployed before it
        if isinstance(m, Registered):
            if not self.registered:
                self._registered(m)
            else:
                self.trusted_data_keys = m.data_keys
                self.agent_timeout = m.agent_timeout or self.agent_timeout
        elif isinstance(m, RegisterFirst):
            if self.registered:  # while a registration is on its way, earlier heartbeats' answers are no news
                self._lost(f"the coordinator does not know this agent ({m.reason}; it restarted?)")
        elif isinstance(m, HeartbeatAck):
            if m.seq is not None:  # what was sent before that heartbeat has been handled
                self._outbox = [(before, message) for before, message in self._outbox if before >= m.seq]
        elif isinstance(m, Deploy):  # started with the rest of its burst (`_start_deployed`)
            self.trusted_data_keys = m.data_keys
            self._deploys.append(m)
        elif isinstance(m, Connect | Start | SnapshotRequest | PauseTo | Redirect | CheckpointRequest
                        | CheckpointDone):
            only = getattr(m, "only", None)  # a message for one virtual node (a migration), else for the whole job
            for host in self._hosts_of(m.job):
                if only is None or host.vnode == only:
                    self._to_host(host, m)
        elif isinstance(m, StopJob):
            for host in self._hosts_of(m.job):
                if m.only in (None, host.vnode) and (m.before is None or host.epoch < m.before):
                    self._stop_host(host)
        elif isinstance(m, ReplicaPart):
            stored = self.replicas.put(m)
            if stored is not None:
                self._send_up(stored)
        elif isinstance(m, ReplicaFetch):  # straight up, not kept in the outbox: the coordinator asks again
            for part in self.replicas.parts(m.job, m.checkpoint):
                self._send_again(part)
        elif isinstance(m, ReplicaDrop):
            self.replicas.drop(m.job)
        elif isinstance(m, Shutdown):
            self.stop("the coordinator shut the cluster down (`microstream cluster down`)")
        elif isinstance(m, Error) and m.error not in self._errors_seen:  # once each: heartbeats repeat them
            self._errors_seen.add(m.error)
            self.log(f"agent {self.name}: the coordinator says: {m.error}")

    def _hosts_of(self, job: str) -> list[_Host]:
        return [host for (j, _), host in self.hosts.items() if j == job]

    def _start_deployed(self) -> None:
        """Start the hosts of the deployments received so far, each backend's together (a process backend asks
        its template for all of them at once)."""
        latest = {(m.job, m.vnode): m for m in self._deploys}  # deployed twice in one burst: the last one counts
        self._deploys = []
        starting: dict[str, list[Deploy]] = {}
        for m in latest.values():
            if self._ready_to_start(m):
                starting.setdefault(m.backend, []).append(m)
        for backend, deploys in starting.items():
            handles = self.backends[backend].start_many(
                [(m.job, m.vnode, self.control_endpoint, self.workdir / f"{m.job}-{m.vnode}.log") for m in deploys])
            for m, handle in zip(deploys, handles, strict=True):
                self.hosts[(m.job, m.vnode)] = _Host(m.job, m.vnode, handle, m.blob or b"",
                                                     restoring=bool(m.restoring), incoming=bool(m.incoming),
                                                     epoch=m.epoch, backend=backend)
                self.log(f"agent {self.name}: started {m.job}/{m.vnode} on the {backend} backend (pid {handle.pid})")

    def _ready_to_start(self, m: Deploy) -> bool:
        """This agent has the backend `m` asks for (else the coordinator hears why not), and an earlier host of
        the same virtual node has ended."""
        if m.backend not in self.backends:
            have = sorted(self.backends)
            self._send_up(VnodeFailed(job=m.job, vnode=m.vnode, epoch=m.epoch,
                                      error=f"agent {self.name} has no '{m.backend}' host backend (it has {have})"))
            return False
        old = self.hosts.get((m.job, m.vnode))
        if old is not None:  # an earlier deployment's host (a recovery replaced it; a move came back): end it first
            self._to_host(old, StopHost())
            self._kill(old)
            self.log(f"agent {self.name}: ended the epoch-{old.epoch} host of {m.job}/{m.vnode} before its "
                     "replacement")
        self._ended_jobs.pop(m.job, None)  # back here (a recovery, a move): its series live on
        return True

    def _stop_host(self, host: _Host) -> None:
        if host.state is VnodeState.STOPPING:
            return  # asked again (each heartbeat that still shows it): the first ask's deadline stands
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
            host.endpoint = m.endpoint
            self._send_up(VnodeReady(job=host.job, vnode=host.vnode, endpoint=m.endpoint,
                                     public_key=self.keys.public.decode() if self.keys else None,
                                     incoming=m.incoming, epoch=host.epoch, state_endpoint=m.state_endpoint))
        elif isinstance(m, HostStats):
            host.state = VnodeState.RUNNING
            host.stats = m.stats
            self._record_metrics(host)
        elif isinstance(m, HostDone):
            host.state = VnodeState.DONE
            host.stats = m.stats if m.stats is not None else host.stats  # final counts, even for short jobs
            self._record_metrics(host)
            self._send_up(VnodeDone(job=host.job, vnode=host.vnode, stats=host.stats, blob=m.blob, epoch=host.epoch))
        elif isinstance(m, HostOutput):
            self._send_up(VnodeOutput(job=host.job, vnode=host.vnode, lines=m.lines, dropped=m.dropped,
                                      epoch=host.epoch))
        elif isinstance(m, HostResumed):
            self._send_up(VnodeResumed(job=host.job, vnode=host.vnode, at=m.at, epoch=host.epoch,
                                       transfer=m.transfer, quiet=m.quiet))
        elif isinstance(m, HostSnapshot):
            host.state = VnodeState.MIGRATED
            self._send_up(VnodeSnapshot(job=host.job, vnode=host.vnode, whole=m.whole, blob=m.blob, epoch=host.epoch,
                                        transfer=m.transfer))
        elif isinstance(m, HostPrecopied):
            self._send_up(VnodePrecopied(job=host.job, vnode=host.vnode, figures=m.figures, epoch=host.epoch))
        elif isinstance(m, HostCheckpointed):
            self._send_up(VnodeCheckpointed(job=host.job, vnode=host.vnode, checkpoint=m.checkpoint, blob=m.blob,
                                            epoch=host.epoch))
        elif isinstance(m, HostFailed):
            moved = host.state is VnodeState.MIGRATED or None  # after its snapshot: its move's state may be lost
            host.state = VnodeState.FAILED
            self._send_up(VnodeFailed(job=host.job, vnode=host.vnode, error=m.error, operator=m.operator,
                                      cause=m.cause, epoch=host.epoch, moved=moved))

    def _drain_hosts(self, most: int = 10_000) -> None:
        """Handle the hosts' messages waiting now (a host that has exited sent its last ones before it did; the loop
        relays for a bounded time, so they can still be queued when its exit is seen)."""
        for _ in range(most):
            if not self.control.poll(0):
                return
            self._receive_from_host()

    def _receive_from_host(self) -> None:
        frames = self.control.recv_multipart()
        self._receive(frames[1:], host=frames[0])

    def _spec(self, host: _Host) -> Spec:
        """What a host needs from its agent besides the job (which the agent never unpickles). A process host gets
        a lease (a microVM's relay does not: its guest is not this machine's process)."""
        lease = host_lease(self.agent_timeout) if host.backend == "process" and self.agent_timeout else None
        return Spec(bind_host=self.data_host, blob=host.spec, trusted=self.trusted_data_keys,
                    public=self.keys.public.decode() if self.keys else None,
                    secret=self.keys.secret.decode() if self.keys else None,
                    restoring=host.restoring, incoming=host.incoming, epoch=host.epoch,
                    lease=lease, lease_file=str(self.lease.path) if lease else None)

    def _check_hosts(self) -> None:
        for key, host in list(self.hosts.items()):
            code = host.handle.poll()
            if code is None:
                if host.state is VnodeState.STOPPING and time.monotonic() - host.started > 3:
                    self._kill(host)
                continue
            if host.unfinished:
                self._drain_hosts()  # its last words (done, a result) may still wait behind other hosts' messages
            if self._awaiting_last_words(host, code):
                continue
            if host.unfinished:
                why = ("host stopped itself: this agent had not renewed its lease (it was frozen or stuck)"
                       if code == EXIT_LEASE_EXPIRED else f"host process exited with code {code}; see {self.workdir}")
                self._send_up(VnodeFailed(job=host.job, vnode=host.vnode, epoch=host.epoch, error=why))
                host.state = VnodeState.FAILED
            elif host.state is VnodeState.MIGRATED and code != 0:  # killed after its snapshot: if that went ahead
                # of its state (a ticket; the state directly to the new host), the state may not have arrived
                self._send_up(VnodeFailed(job=host.job, vnode=host.vnode, epoch=host.epoch, moved=True,
                                          error=f"host process exited with code {code} after its snapshot"))
            state = VnodeState.STOPPED if host.state is VnodeState.STOPPING else host.state
            self.ended[f"{host.job}/{host.vnode}"] = {"state": state, "pid": host.handle.pid, "stats": host.stats,
                                                     "epoch": host.epoch}
            while len(self.ended) > 200:
                self.ended.pop(next(iter(self.ended)))
            del self.hosts[key]
            if not self._hosts_of(host.job):
                self._job_left(host.job)

    def _awaiting_last_words(self, host: _Host, code: int) -> bool:
        """Has `host` exited before what it sent last reached this agent? It sends `done` (or its snapshot, or its
        error) and exits; on a loaded node the exit can be seen before this agent's socket has the message, which
        would turn a host that finished into a failed one. Such a host is given `LAST_WORDS` s to be heard. One
        killed by a signal (a negative code) or stopped by its lease said nothing more: it fails at once."""
        if not host.unfinished or code < 0 or code == EXIT_LEASE_EXPIRED:
            return False
        now = time.monotonic()
        if host.exited is None:
            host.exited = now
        return now - host.exited < LAST_WORDS

    def _job_left(self, job: str) -> None:
        """No host of `job` is left here: its metric series stay for the next `KEEP_JOB_METRICS` jobs to leave (a
        scrape sees its final counts), then go (the agent does not grow per job)."""
        self._ended_jobs.pop(job, None)
        self._ended_jobs[job] = None
        while len(self._ended_jobs) > KEEP_JOB_METRICS:
            old = next(iter(self._ended_jobs))
            del self._ended_jobs[old]
            if self.metrics is not None:
                self.metrics.forget_job(old)

    def _report(self) -> dict[str, dict[str, Any]]:
        """Its hosts, "job/vnode" -> state, pid, epoch, stats, endpoint (and those that have exited lately)."""
        vnodes = dict(self.ended)
        public_key = self.keys.public.decode() if self.keys else None
        vnodes.update({f"{h.job}/{h.vnode}": {"state": h.state, "pid": h.handle.pid, "stats": h.stats,
                                              "epoch": h.epoch, "endpoint": h.endpoint, "public_key": public_key}
                       for h in self.hosts.values()})
        return vnodes

    def _heartbeat(self) -> None:
        self._beats += 1
        self._send_up(Heartbeat(name=self.name, vnodes=self._report(), seq=self._beats))

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


def _started(pid: int) -> str | None:
    """When process `pid` started, None if it is gone or a zombie."""
    return None if procs.state(pid) in ("Z", procs.GONE) else procs.start_time(pid)


def _claim_workdir(workdir: Path, name: str, coordinator: str, log) -> None:
    """Record this agent in its work directory, and remove the work directories that an earlier agent of the same
    name and coordinator left beside it when it died without stopping (kill -9, a crash): an agent cleans up what
    it finds from before it restarted. A directory whose agent still runs, or of another agent, is left alone."""
    import json

    me = {"pid": os.getpid(), "started": _started(os.getpid()), "name": name, "coordinator": coordinator}
    (workdir / "agent.json").write_text(json.dumps(me))
    for other in workdir.parent.iterdir():
        try:
            owner = json.loads((other / "agent.json").read_text())
        except (OSError, ValueError):
            continue  # not an agent's work directory (or not readable)
        if (other != workdir and owner.get("name") == name and owner.get("coordinator") == coordinator
                and _started(int(owner.get("pid", 0))) != owner.get("started")):
            shutil.rmtree(other, ignore_errors=True)
            log(f"agent {name}: removed {other}, the work directory of an earlier agent {name} that is gone")

