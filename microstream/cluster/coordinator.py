"""The coordinator: one ROUTER socket that serves agents and clients alike, and dispatches each message to
the part that owns it:

- `registry.AgentRegistry`: registration, heartbeats, lost agents;
- `jobs.JobLifecycle`: submit, the two-phase deployment, results, failure, stop, status;
- `moves.Moves`: barrier-aligned migrate, save and restore of one virtual node;
- `checkpoints.Checkpoints`: periodic checkpoints (barriers injected at the sources), which recovery restarts from;
- `drain.Drains`: maintenance, a node's virtual nodes moved off it one at a time, nothing new placed there;
- `placing.Placer`: the placement engine at submit, the re-placement policy every few seconds;
- `store.Store` (with a state directory): what a restarted coordinator needs back, in SQLite;
- `replicas.Replicas`: every completed checkpoint replicated to agents, and jobs restored from them by a
  coordinator that lost its state directory.

Stopping the coordinator (`stop`, SIGTERM, a crash) leaves the agents and their hosts running: a coordinator
started again on the same address, keys and state directory adopts them. Only a client's `shutdown` request (what
`microstream cluster down` sends) stops every job and tells every agent to exit.

With keys the socket is a CURVE server that accepts only trusted public keys, so nobody else can reach the
code that unpickles jobs, and every message is checked against its key's role before it is handled
(`security.RoleGuard`: an agent key cannot submit, a client key cannot register, a read-only key only asks for
status). The socket refuses frames larger than `max_message` bytes before reading them (before authentication
too). Every send has a deadline (`protocol.control_socket`): a peer that is gone or not
reading costs a log line, never a stuck coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from ..placement.anneal import compile_in_background
from ..placement.policy import PolicyParams
from ..runtime.protocol import ControlSendError, Message, ProtocolError, control_socket, send
from .checkpoints import Checkpoints
from .drain import Drains
from .joblogs import JobLogs
from .jobs import KEEP, JobLifecycle
from .messages import (
    FROM_AGENTS,
    TO_COORDINATOR,
    DrainRequest,
    Error,
    Heartbeat,
    HeartbeatAck,
    LogsRequest,
    MigrateRequest,
    Register,
    Registered,
    RegisterFirst,
    ReplicaPart,
    ReplicaStored,
    RestoreRequest,
    SaveRequest,
    ShutDown,
    Shutdown,
    ShutdownRequest,
    StatusReply,
    StatusRequest,
    StopRequest,
    Submit,
    VnodeCheckpointed,
    VnodeDone,
    VnodeFailed,
    VnodeOutput,
    VnodePrecopied,
    VnodeReady,
    VnodeResumed,
    VnodeSnapshot,
    Watch,
)
from .moves import Moves
from .placing import DEFAULT_POLICY, Placer
from .registry import AGENT_TIMEOUT, AgentRegistry, NameTaken
from .replicas import Replicas
from .security import MAX_MESSAGE_BYTES, Peer, RoleGuard, peer_of
from .states import JobState
from .store import Store

ROUTER_SEND_TIMEOUT = 1.0  # the coordinator's loop serves everyone: it never waits long for one peer


class Coordinator:
    def __init__(self, bind: str = "tcp://127.0.0.1:7077", keys: Any = None, trusted: dict[bytes, str] | None = None,
                 metrics_port: int | None = 0, agent_timeout: float = AGENT_TIMEOUT, log=print,
                 policy: PolicyParams | None = DEFAULT_POLICY, topology: Any = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 checkpoint_dir: Path | None = None, state_dir: Path | None = None,
                 adopt_grace: float | None = None, keep_jobs: int = KEEP, roles: dict[bytes, str] | None = None,
                 metrics_bind: str = "127.0.0.1", max_message: int = MAX_MESSAGE_BYTES, checkpoint_replicas: int = 1,
                 node: str | None = None) -> None:
        self.bind = bind
        self.keys = keys
        self.trusted = dict(trusted or {})
        self.roles = dict(roles or {})          # public key -> role; a trusted key missing here is unrestricted
        self.guard = RoleGuard(log)
        self._sender: Peer | None = None        # who sent the message being handled (with keys)
        self.metrics_bind = metrics_bind
        self.max_message = max_message
        self.log = log
        self.metrics_port = metrics_port
        self.metrics: Any = None
        self.console: Any = None                # the web console (microstream.console), fed status by the loop
        self._stop = False
        self.store = Store(state_dir) if state_dir is not None else None
        self.registry = AgentRegistry(agent_timeout, clock=clock, log=log)
        self.placer = Placer(topology, policy, clock=clock, log=log)
        self.lifecycle = JobLifecycle(self.registry, self._send, self.placer, log=log, wall=wall, store=self.store,
                                      clock=clock, grace=agent_timeout if adopt_grace is None else adopt_grace,
                                      keep=keep_jobs)
        self.lifecycle.forget = self._forget_job
        self.moves = Moves(self.lifecycle, self.registry, self._send, self.placer, log=log, clock=clock, wall=wall)
        self.checkpoints = Checkpoints(self.lifecycle, self._send, log=log, clock=clock, directory=checkpoint_dir)
        self.replicas = Replicas(self.lifecycle, self.registry, self._send, copies=checkpoint_replicas, node=node,
                                 topology=topology, secret=getattr(keys, "secret", None), log=log, clock=clock)
        self.checkpoints.on_complete = self.replicas.checkpoint_completed
        self.logs = JobLogs(self._send, self.registry.name_of, self.lifecycle)
        self.drains = Drains(self.lifecycle, self.registry, self.moves, self.placer, self._send, log=log, wall=wall)
        self._handlers: dict[type[Message], Callable[[bytes, Any], object]] = {
            Register: self._on_register,
            Heartbeat: self._on_heartbeat,
            Submit: self.lifecycle.submit,
            Watch: self.lifecycle.watch,
            ShutdownRequest: self._on_shutdown,
            VnodeReady: self._on_vnode_ready,
            VnodeDone: self._on_vnode_done,
            VnodeFailed: self._on_vnode_failed,
            StopRequest: self.lifecycle.stop,
            StatusRequest: self._on_status,
            MigrateRequest: self.moves.migrate,
            SaveRequest: self.moves.save,
            RestoreRequest: self.moves.restore,
            DrainRequest: self.drains.request,
            VnodeSnapshot: lambda _, m: self.moves.vnode_snapshot(m),
            VnodePrecopied: lambda _, m: self.moves.vnode_precopied(m),
            VnodeResumed: lambda _, m: self.moves.vnode_resumed(m),
            VnodeCheckpointed: lambda _, m: self.checkpoints.vnode_checkpointed(m),
            VnodeOutput: self.logs.output,
            LogsRequest: self.logs.request,
            ReplicaStored: lambda i, m: self._from_agent(i, m, self.replicas.stored),
            ReplicaPart: lambda i, m: self._from_agent(i, m, self.replicas.part),
        }
        self.lifecycle.restore()

    # -- sockets ------------------------------------------------------------------------------------------------
    def open(self) -> str:
        self.ctx = zmq.Context()
        self.auth = None
        self.sock = control_socket(self.ctx, zmq.ROUTER, send_timeout=ROUTER_SEND_TIMEOUT)
        self.sock.maxmsgsize = self.max_message  # a larger frame is refused before it is read, authenticated or not
        if self.keys is not None:
            from .security import Authenticator, curve_server

            self.auth = Authenticator(self.ctx, self.trusted, roles=self.roles).start()
            curve_server(self.sock, self.keys, authenticator=self.auth)  # refuses to run without the ZAP check
        self.sock.bind(self.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.metrics_port is not None:
            from .metrics import Metrics, serve

            self.metrics = Metrics()
            self.moves.metrics = self.metrics
            self.checkpoints.metrics = self.metrics
            self._metrics_server, self.metrics_port = serve(self.metrics, host=self.metrics_bind,
                                                                port=self.metrics_port)
        return self.endpoint

    def close(self) -> None:
        """Close the sockets and the store. The agents and their hosts go on: a coordinator started again on the
        same address, keys and state directory adopts them (`shutdown` is the way to stop them)."""
        if hasattr(self, "sock"):
            self.sock.close(linger=200)
            if self.auth is not None:
                self.auth.stop()
            self.ctx.term()
        if getattr(self, "_metrics_server", None) is not None:
            self._metrics_server.stop()
        if self.console is not None:
            self.console.stop()
        self.replicas.close()
        if self.store is not None:
            self.store.close()

    def _send(self, identity: bytes, message: Message, quiet: bool = False) -> None:
        """Send, or log why not: a peer that is gone or not reading must not stop the coordinator."""
        try:
            send(self.sock, message, to=self._peer(identity), identity=identity)
        except ControlSendError as exc:
            if not quiet:
                self.log(f"coordinator: {exc}")

    def _peer(self, identity: bytes) -> str:
        name = self.registry.name_of(identity)
        return f"agent {name}" if name else "a client"

    # -- loop -----------------------------------------------------------------------------------------------------
    def run(self) -> None:
        if not hasattr(self, "sock"):
            self.open()
        compile_in_background()  # the placement annealer: compiling it (a fresh install) must not hold up a submit
        try:
            while not self._stop:
                self.sock.poll(200)
                while self.sock.poll(0):  # every waiting message before the periodic checks
                    frames = self.sock.recv_multipart(copy=False)  # frames carry the key's name and role (ZAP)
                    peer = peer_of(frames[1]) if self.auth is not None and len(frames) > 1 else None
                    self.dispatch(frames[0].bytes, [f.bytes for f in frames[1:]], peer)
                self.tick()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop = True

    def dispatch(self, identity: bytes, frames: list[bytes], peer: Peer | None = None) -> None:
        """Decode one message and hand it to its part; a bad message is answered and logged, never fatal. With keys,
        the kind must be one `peer`'s role may send (checked before anything is decoded)."""
        if self.keys is not None:
            auth = getattr(self, "auth", None)
            if peer is not None and auth is not None:  # trust changes (keys trust/revoke) apply to open links too
                peer = auth.current(peer)
            refusal = self.guard.refusal(peer, frames[0].decode("ascii", "replace") if frames else "")
            if refusal is not None:
                self._send(identity, Error(error=refusal))
                return
        self._sender = peer
        try:
            message = TO_COORDINATOR.decode(frames)
        except ProtocolError as exc:
            self.log(f"coordinator: refused a message from {self._peer(identity)}: {exc}")
            self._send(identity, Error(error=str(exc)))
            return
        if isinstance(message, FROM_AGENTS) and self.registry.name_of(identity) is None:
            # an agent this coordinator does not know (it restarted): it registers, then sends what matters again
            self._send(identity, RegisterFirst(reason=f"unknown agent: register first (sent '{message.KIND}')"))
            return
        try:
            self._handlers[type(message)](identity, message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the cluster
            self.log(f"coordinator: error handling '{message.KIND}': {type(exc).__name__}: {exc}")

    def tick(self) -> None:
        """The periodic work: lost agents (recovery), jobs to recover (not placed yet, or not adopted within the
        grace period), stuck moves, checkpoints, drains, re-placement, metrics."""
        for agent in self.registry.check():
            self.moves.agent_lost(agent)  # first: a move whose old host was there may have lost its state with it
            self.lifecycle.agent_lost(agent)
        self.lifecycle.retry()
        self.moves.check()
        self.checkpoints.tick()
        self.replicas.tick()
        self.drains.tick()
        self._replace()
        for job, news in self.lifecycle.health_changes():  # submit and `logs --follow` say when a job stalls
            self.log(f"coordinator: job {job.id}: {news}")
            self.logs.note(job.id, news)
        self._update_metrics()
        if self.console is not None:  # status is built here, on the loop's thread, only when someone watches
            self.console.feed(self.status)

    # -- messages that concern more than one part ----------------------------------------------------------------
    def _on_register(self, identity: bytes, m: Register) -> None:
        try:
            agent = self.registry.register(identity, m, key=self._sender.key if self._sender else None)
        except NameTaken as exc:
            self._send(identity, Error(error=str(exc)))
            return
        self._send(identity, Registered(data_keys=self.registry.data_keys(), agent_timeout=self.registry.timeout))
        self.replicas.registered(agent, m.replicas)  # first: hosts of jobs to restore from a replica are left be
        self.lifecycle.agent_registered(agent)

    def _from_agent(self, identity: bytes, m: Any, handle: Callable[[Any, Any], None]) -> None:
        agent = self.registry.get(self.registry.name_of(identity))
        if agent is not None:
            handle(agent, m)

    def _on_heartbeat(self, identity: bytes, m: Heartbeat) -> None:
        agent = self.registry.heartbeat(identity, m)
        if agent is None:  # registered under another socket (it re-registered since): the newer one counts
            self._send(identity, RegisterFirst(reason="unknown agent: register first"))
            return
        self._send(identity, HeartbeatAck(seq=m.seq))
        self.lifecycle.fence(agent, m.vnodes)
        self.lifecycle.measure_traffic(m.vnodes, agent.last_seen)
        self.lifecycle.adopt()

    def _on_status(self, identity: bytes, m: StatusRequest) -> None:
        if m.job is None:
            self._send(identity, StatusReply(status=self.status()))
            return
        job = self.lifecycle.status_of(m.job)
        if job is None:
            self._send(identity, Error(error=f"no job '{m.job}' (see `microstream status`)"))
            return
        self._send(identity, StatusReply(status={**self.status(jobs=False), "jobs": {m.job: job}}))

    def _on_shutdown(self, identity: bytes, _: ShutdownRequest) -> None:
        """Shut the cluster down: stop every job, tell every agent to exit (they stop their hosts), then exit."""
        jobs = self.lifecycle.stop_all("the cluster was shut down")
        agents = [agent.name for agent in self.registry if agent.up]
        for agent in self.registry:
            if agent.up:
                self._send(agent.identity, Shutdown(), quiet=True)
        self.log(f"coordinator: shutting the cluster down ({len(jobs)} jobs stopped, {len(agents)} agents told)")
        self._send(identity, ShutDown(jobs=jobs, agents=agents))
        self._stop = True

    def _on_vnode_ready(self, identity: bytes, m: VnodeReady) -> None:
        if self.moves.vnode_ready(identity, m):
            return
        job = self.lifecycle.get(m.job)
        if job is not None:
            self.lifecycle.vnode_ready(job, m)

    def _on_vnode_done(self, identity: bytes, m: VnodeDone) -> None:
        job = self.lifecycle.get(m.job)
        if job is None:
            self.lifecycle.done_unknown(m)  # kept for a job about to be restored from a replica
        if job is not None:
            self.moves.vnode_done(job, m.vnode)
            self.checkpoints.vnode_done(job, m)
            self.lifecycle.vnode_done(job, m)

    def _on_vnode_failed(self, identity: bytes, m: VnodeFailed) -> None:
        """A host failed: a move's old or new host, in the middle of it, is the move's business first (it recovers
        the job saying so); any other recovers the job, or fails it if a user function failed."""
        if not self.moves.host_failed(self.registry.name_of(identity), m) and not m.moved:
            self.lifecycle.vnode_failed(m)

    def _replace(self) -> None:
        """Every few seconds: ask the policy about each running job that is not moving already."""
        if not self.placer.due():
            return
        agents = self.registry.placement_view()
        for job in self.lifecycle:
            if job.state is JobState.RUNNING and job.move is None and job.pending is None:
                proposal = self.placer.propose(job, agents)
                if proposal is not None:
                    self.moves.auto_migrate(job, proposal)

    # -- status and metrics ----------------------------------------------------------------------------------------
    def status(self, jobs: bool = True) -> dict[str, Any]:
        store = self.store
        state = None if store is None else {"dir": str(store.directory), "writes": store.writes,
                                            "write_ms": round(1000 * store.write_seconds / max(1, store.writes), 2),
                                            "slowest_write_ms": round(1000 * store.slowest_write, 1)}
        topology = self.placer.topology
        agents = self.registry.status()
        self.drains.status(agents)
        return {"agents": agents, "jobs": self.lifecycle.status() if jobs else {},
                "metrics_port": self.metrics_port, "state": state, "replicas": self.replicas.status(),
                "topology": None if topology is None else {
                    "nodes": [{"name": n.name, "site": n.site} for n in topology.nodes],
                    "links": [{"a": lk.a, "b": lk.b, "bandwidth": lk.bandwidth, "latency_ms": lk.latency_ms}
                              for lk in topology.all_links()]}}

    def _forget_job(self, job_id: str) -> None:
        """A job left the history: its metric series go (the coordinator does not grow per finished job)."""
        if self.metrics is not None:
            self.metrics.forget_job(job_id)

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        try:
            for agent in self.registry:
                self.metrics.set_node_up(agent.name, agent.up)
            self.metrics.set_jobs(self.lifecycle.counts())
            for job in self.lifecycle:
                if job.state is not JobState.RUNNING:
                    continue
                per_link: dict[tuple[str, str], float] = {}
                for row in self.lifecycle.link_traffic(job):
                    if row["crosses_link"] and row["from_node"] and row["to_node"]:
                        key = (row["from_node"], row["to_node"])
                        per_link[key] = per_link.get(key, 0.0) + row["bytes_per_s"]
                for (a, b), rate in per_link.items():
                    self.metrics.link_traffic.labels(job.id, a, b, "measured").set(rate)
                for link, rate in job.predicted.items():
                    a, _, b = link.partition("–")
                    self.metrics.link_traffic.labels(job.id, a, b, "predicted").set(rate)
        except Exception as exc:  # noqa: BLE001
            self.log(f"coordinator: metrics update failed: {exc}")
