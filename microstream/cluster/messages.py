"""The coordinator's control messages: clients and agents to the coordinator, and its answers.

The kinds it shares with hosts (connect, start, snapshot, pause_to, redirect), which an agent relays to
its hosts as they are, live with the host link in `runtime/protocol.py`. The wire format is the same:
[kind, JSON header, optional blob].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..runtime.protocol import (
    CheckpointDone,
    CheckpointRequest,
    Connect,
    Message,
    PauseTo,
    Redirect,
    SnapshotRequest,
    Start,
    Vocabulary,
)

# -- client -> coordinator ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit(Message):
    """A job: the blob is the cloudpickled logical graph. With `wait`, the client also gets `job_done`."""

    KIND: ClassVar[str] = "submit"
    blob: bytes
    wait: bool = True
    credits: int = 8


@dataclass(frozen=True)
class StatusRequest(Message):
    """The cluster's status; with `job`, that job's only (an ended one included, from the coordinator's store)."""

    KIND: ClassVar[str] = "status"
    job: str | None = None


@dataclass(frozen=True)
class StopRequest(Message):
    KIND: ClassVar[str] = "stop"
    job: str


@dataclass(frozen=True)
class Watch(Message):
    """Attach to a job: the coordinator answers `watching` (and `job_done` when it ends) or, if it has ended,
    `job_done` at once. A client that lost its coordinator sends it again to the new one."""

    KIND: ClassVar[str] = "watch"
    job: str


@dataclass(frozen=True)
class ShutdownRequest(Message):
    """Shut the cluster down: every job is stopped, every agent told to exit, then the coordinator exits."""

    KIND: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class MigrateRequest(Message):
    """Move `vnode` to agent `to` (`whole`: a microVM moves whole, with QEMU's migration stream)."""

    KIND: ClassVar[str] = "migrate"
    job: str
    vnode: str
    to: str
    whole: bool = False


@dataclass(frozen=True)
class SaveRequest(Message):
    KIND: ClassVar[str] = "save"
    job: str
    vnode: str


@dataclass(frozen=True)
class RestoreRequest(Message):
    """Resume a saved `vnode` from the snapshot in the blob, on agent `to` (default: where it ran)."""

    KIND: ClassVar[str] = "restore"
    job: str
    vnode: str
    blob: bytes | None = None
    to: str | None = None


@dataclass(frozen=True)
class DrainRequest(Message):
    """Maintenance of agent `node` (`drain.py`): `drain` cordons it (nothing new is placed there) and moves its
    virtual nodes off, one at a time; `undrain` returns it to service; `status` asks how the drain goes."""

    KIND: ClassVar[str] = "drain"
    node: str
    action: str = "drain"


@dataclass(frozen=True)
class LogsRequest(Message):
    """What a job's virtual nodes printed (the coordinator keeps the last lines of recent jobs); with `follow`, the
    client is also sent each new line (`job_output`) and `job_done` at the end."""

    KIND: ClassVar[str] = "logs"
    job: str
    follow: bool = False


# -- agent -> coordinator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Register(Message):
    KIND: ClassVar[str] = "register"
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    data_host: str | None = None
    metrics_port: int | None = None
    public_key: str | None = None       # the agent's data-plane key, which hosts of other agents must trust
    cores: int | None = None
    memory: int | None = None
    arch: str | None = None
    backends: list[str] | None = None
    python: str | None = None
    # the hosts it runs, "job/vnode" -> {state, pid, epoch, endpoint, public_key}: a restarted coordinator
    # adopts them, and stops those of jobs it has ended or replaced
    vnodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the checkpoint replicas it keeps (`replicas.py`), [{job, checkpoint, bytes}]: a coordinator that lost its
    # state directory restores the jobs from them
    replicas: list[dict[str, Any]] = field(default_factory=list)

    def capabilities(self) -> dict[str, Any]:
        return {"cores": self.cores, "memory": self.memory, "arch": self.arch, "backends": self.backends,
                "python": self.python}


@dataclass(frozen=True)
class Heartbeat(Message):
    """Every second: the agent's hosts, "job/vnode" -> {state, pid, epoch, stats}. The coordinator acknowledges
    `seq`: what the agent sent before it has been handled. A host's `stats` (`HostRuntime.stats`) carry `reports`
    (its count of reports: an unchanged one is stale) and, per outgoing channel, its progress (`ChannelClient.stats`:
    acked_through, unacked, unacked_bytes, stalled_seconds, waiting_seconds, blocked_seconds, peer_silent_seconds),
    from which the coordinator says whether the job moves (`health.py`)."""

    KIND: ClassVar[str] = "heartbeat"
    name: str
    vnodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int | None = None


@dataclass(frozen=True)
class VnodeReady(Message):
    KIND: ClassVar[str] = "vnode_ready"
    job: str
    vnode: str
    endpoint: str
    public_key: str | None = None
    incoming: str | None = None          # where a host waiting for a whole microVM listens for QEMU's stream
    epoch: int = 0                       # the deployment of the job this host belongs to (fencing)
    state_endpoint: str | None = None    # where a move's old host may send the state directly (statexfer.py)

    def peer(self) -> dict[str, Any]:
        """How other hosts reach this one's channel server (and its state receiver, if it has one)."""
        peer = {"endpoint": self.endpoint, "public_key": self.public_key}
        if self.state_endpoint:
            peer["state_endpoint"] = self.state_endpoint
        return peer


@dataclass(frozen=True)
class VnodeDone(Message):
    """The blob is the host's pickled result, passed on to the client untouched."""

    KIND: ClassVar[str] = "vnode_done"
    job: str
    vnode: str
    blob: bytes | None = None
    stats: dict[str, Any] | None = None
    epoch: int = 0


@dataclass(frozen=True)
class VnodeSnapshot(Message):
    KIND: ClassVar[str] = "vnode_snapshot"
    job: str
    vnode: str
    blob: bytes | None = None
    whole: dict[str, Any] | None = None   # a whole-VM move's figures (RAM moved, QEMU's downtime)
    epoch: int = 0
    transfer: dict[str, Any] | None = None  # the state went to the new host directly: the blob is its ticket


@dataclass(frozen=True)
class VnodePrecopied(Message):
    """A moving vnode's new host has its state as of moments ago (pre-copy, `runtime/statexfer.py`): cut now."""

    KIND: ClassVar[str] = "vnode_precopied"
    job: str
    vnode: str
    figures: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0


@dataclass(frozen=True)
class VnodeCheckpointed(Message):
    """A virtual node's part of checkpoint `checkpoint`: the blob is its snapshot (the host goes on)."""

    KIND: ClassVar[str] = "vnode_checkpointed"
    job: str
    vnode: str
    checkpoint: int
    blob: bytes
    epoch: int = 0


@dataclass(frozen=True)
class VnodeResumed(Message):
    KIND: ClassVar[str] = "vnode_resumed"
    job: str
    vnode: str
    at: float
    epoch: int = 0
    transfer: dict[str, Any] | None = None  # a state sent directly: its final round as the new host received it
    quiet: bool = False  # nothing came in after the restore: `at` is the restore's time


@dataclass(frozen=True)
class VnodeFailed(Message):
    KIND: ClassVar[str] = "vnode_failed"
    job: str
    vnode: str
    error: str = "?"
    operator: str | None = None
    cause: str | None = None
    epoch: int = 0
    # the host had handed its snapshot over for a move already (it failed, or exited killed, after that): the job
    # lost nothing unless that move's state was still on its way to the new host (`moves.Moves.host_failed`)
    moved: bool | None = None


@dataclass(frozen=True)
class VnodeOutput(Message):
    """Lines a host's user code printed, [stream, text] each, and how many it dropped (`runtime/output.py`)."""

    KIND: ClassVar[str] = "vnode_output"
    job: str
    vnode: str
    lines: list[list[str]] = field(default_factory=list)
    dropped: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class ReplicaPart(Message):
    """Part `part` of `parts` of a checkpoint's replica (`replicas.py`): to an agent that keeps it (`keep`: how
    many of the job's newest it keeps), or from one to a coordinator that restores the job from it."""

    KIND: ClassVar[str] = "replica_part"
    job: str
    checkpoint: int
    part: int
    parts: int
    blob: bytes
    keep: int = 2


@dataclass(frozen=True)
class ReplicaStored(Message):
    """The agent has the replica of checkpoint `checkpoint` of `job` on its disk (`bytes` long), or could not
    write it (`error`)."""

    KIND: ClassVar[str] = "replica_stored"
    job: str
    checkpoint: int
    bytes: int = 0
    error: str | None = None


# -- coordinator -> agent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered(Message):
    """The public keys of the live agents' data planes, which this agent's hosts are to trust, and how long the
    coordinator waits for a heartbeat before it counts the agent lost (its hosts' leases are shorter)."""

    KIND: ClassVar[str] = "registered"
    data_keys: list[str] = field(default_factory=list)
    agent_timeout: float | None = None


@dataclass(frozen=True)
class HeartbeatAck(Message):
    """Heartbeat `seq` and everything the agent sent before it have been handled (and the coordinator is there)."""

    KIND: ClassVar[str] = "ack"
    seq: int | None = None


@dataclass(frozen=True)
class RegisterFirst(Message):
    """The coordinator does not know this agent (it restarted, or counted the agent lost): register again."""

    KIND: ClassVar[str] = "register_first"
    reason: str = "unknown agent"


@dataclass(frozen=True)
class Deploy(Message):
    """Start a host for `vnode`; the blob is the job spec (graph, plan, credits) for the host, pickled."""

    KIND: ClassVar[str] = "deploy"
    job: str
    vnode: str
    blob: bytes
    data_keys: list[str] = field(default_factory=list)
    backend: str = "process"
    restoring: bool | None = None        # it will start from a snapshot (a move)
    incoming: bool | None = None         # it will receive a whole microVM
    epoch: int = 0                       # which deployment of the job (a recovery starts a new one)


@dataclass(frozen=True)
class ReplicaFetch(Message):
    """Send the replica of checkpoint `checkpoint` of `job` up (a coordinator restores the job from it)."""

    KIND: ClassVar[str] = "replica_fetch"
    job: str
    checkpoint: int


@dataclass(frozen=True)
class ReplicaDrop(Message):
    """The job has ended: delete its replicas."""

    KIND: ClassVar[str] = "replica_drop"
    job: str


@dataclass(frozen=True)
class StopJob(Message):
    """Stop the hosts of `job` (`only`: of that one virtual node; `before`: only hosts of deployments older than
    that epoch, which a recovery has replaced)."""

    KIND: ClassVar[str] = "stop"
    job: str
    only: str | None = None
    before: int | None = None


@dataclass(frozen=True)
class Shutdown(Message):
    KIND: ClassVar[str] = "shutdown"


# -- coordinator -> client (and `error` to agents) --------------------------------------------------------


@dataclass(frozen=True)
class Error(Message):
    KIND: ClassVar[str] = "error"
    error: str


@dataclass(frozen=True)
class Rejected(Message):
    """A submitted job the coordinator cannot run (it does not load, or nothing can place it)."""

    KIND: ClassVar[str] = "rejected"
    error: str


@dataclass(frozen=True)
class Accepted(Message):
    KIND: ClassVar[str] = "accepted"
    job: str
    placement: dict[str, str]


@dataclass(frozen=True)
class StatusReply(Message):
    """The cluster's status: {"agents": ..., "jobs": ..., "metrics_port": ...} (see Coordinator.status)."""

    KIND: ClassVar[str] = "status"
    RECORD: ClassVar[str | None] = "status"
    status: dict[str, Any]


@dataclass(frozen=True)
class Watching(Message):
    """The job is still going (in `state`); `job_done` follows when it ends."""

    KIND: ClassVar[str] = "watching"
    job: str
    state: str
    reason: str | None = None


@dataclass(frozen=True)
class ShutDown(Message):
    """The cluster shuts down: these jobs were stopped, these agents told to exit."""

    KIND: ClassVar[str] = "shut_down"
    jobs: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stopped(Message):
    KIND: ClassVar[str] = "stopped"
    job: str
    state: str


@dataclass(frozen=True)
class Moved(Message):
    """A move is done: the record (vnode, mode, from, to, total_s, reason and the mode's figures); a save's
    blob is the snapshot."""

    KIND: ClassVar[str] = "moved"
    RECORD: ClassVar[str | None] = "record"
    record: dict[str, Any]
    blob: bytes | None = None


@dataclass(frozen=True)
class DrainStatus(Message):
    """Where a drain stands: node, state (draining, drained, stuck, undrained), moved, left, stuck, waiting."""

    KIND: ClassVar[str] = "drain_status"
    RECORD: ClassVar[str | None] = "drain"
    drain: dict[str, Any]


@dataclass(frozen=True)
class JobDone(Message):
    """A waited-for job ended; when it finished, the blob is the pickled list of the hosts' result blobs."""

    KIND: ClassVar[str] = "job_done"
    job: str
    state: str
    reason: str | None = None
    operator: str | None = None
    cause: str | None = None
    blob: bytes | None = None


@dataclass(frozen=True)
class JobOutput(Message):
    """New lines printed by `vnode` of a job this client waits for or follows (`VnodeOutput`, passed on)."""

    KIND: ClassVar[str] = "job_output"
    job: str
    vnode: str
    agent: str
    lines: list[list[str]] = field(default_factory=list)
    dropped: int = 0


@dataclass(frozen=True)
class JobLogsReply(Message):
    """The last lines a job printed, [vnode, agent, stream, text] each; `received`: lines received in all,
    `dropped`: per virtual node, lines its host did not forward."""

    KIND: ClassVar[str] = "job_logs"
    job: str
    lines: list[list[str]] = field(default_factory=list)
    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


TO_COORDINATOR = Vocabulary("to the coordinator", Submit, StatusRequest, StopRequest, Watch, ShutdownRequest,
                            MigrateRequest, SaveRequest, RestoreRequest, DrainRequest, Register, Heartbeat, VnodeReady,
                            VnodeDone, VnodeSnapshot, VnodeResumed, VnodeFailed, VnodeCheckpointed, LogsRequest,
                            VnodeOutput, VnodePrecopied, ReplicaPart, ReplicaStored)
TO_AGENT = Vocabulary("from the coordinator to an agent", Registered, HeartbeatAck, RegisterFirst, Deploy, Connect,
                      Start, SnapshotRequest, PauseTo, Redirect, CheckpointRequest, CheckpointDone, StopJob, Shutdown,
                      Error, ReplicaPart, ReplicaFetch, ReplicaDrop)
TO_CLIENT = Vocabulary("from the coordinator to a client", Accepted, StatusReply, Stopped, Watching, ShutDown, Moved,
                       DrainStatus, JobDone, Error, Rejected, JobOutput, JobLogsReply)
# what only a registered agent sends: from a socket the coordinator does not know, it is refused (register first)
FROM_AGENTS = (Heartbeat, VnodeReady, VnodeDone, VnodeSnapshot, VnodeResumed, VnodeFailed, VnodeCheckpointed,
               VnodeOutput, VnodePrecopied, ReplicaPart, ReplicaStored)
