"""Control messages between clients, the coordinator, agents and hosts.

A message is a ZeroMQ multipart: [kind, JSON header, optional blob]. Blobs carry cloudpickled
jobs and results; they are only ever unpickled after the peer has been authenticated (CURVE on
network sockets, file permissions on the agent's local IPC socket).

Each kind is a frozen dataclass (a `Message`): its fields are the header's keys, a `blob` field is the
third frame. `encode()` gives the frames, and a `Vocabulary` (the kinds one end of a link accepts)
decodes them, refusing a kind it does not know with a `ProtocolError`. The host link's kinds are here, so
hosts need nothing from `cluster/`; the coordinator's are in `cluster/messages.py`.

    >>> frames = HostReady(job="j1", vnode="vn0", endpoint="tcp://10.0.0.2:5000").encode()
    >>> frames[:2]
    [b'ready', b'{"job": "j1", "vnode": "vn0", "endpoint": "tcp://10.0.0.2:5000"}']
    >>> FROM_HOST.decode(frames)
    HostReady(job='j1', vnode='vn0', endpoint='tcp://10.0.0.2:5000', incoming=None, boot_s=None)
    >>> FROM_HOST.decode([b"reday", b"{}"])
    Traceback (most recent call last):
    ...
    microstream.runtime.protocol.ProtocolError: unknown control message 'reday' from a host to its agent; \
known kinds: checkpointed, done, failed, hello, output, precopied, ready, resumed, snapshot, stats
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import cloudpickle
import zmq

from ..core.errors import MicrostreamError

CONTROL_SEND_TIMEOUT = 5.0  # seconds a control-path send may wait before it fails with a ControlSendError


class ProtocolError(MicrostreamError, ValueError):
    """A control message that cannot be understood: malformed frames, an unknown kind, a missing field."""


class ControlSendError(MicrostreamError):
    """A control message could not be handed to its peer before the send deadline (or the peer is gone)."""


@dataclass
class ControlMessage:
    """The untyped frames of one message (what is on the wire)."""

    kind: str
    header: dict[str, Any]
    blob: bytes | None = None

    def frames(self) -> list[bytes]:
        frames = [self.kind.encode(), json.dumps(self.header, default=str).encode()]
        if self.blob is not None:
            frames.append(self.blob)
        return frames

    @staticmethod
    def parse(frames: list[bytes]) -> ControlMessage:
        if len(frames) < 2:
            raise ProtocolError(f"malformed control message with {len(frames)} frames (expected kind, header[, blob])")
        try:
            kind = bytes(frames[0]).decode()
            header = json.loads(bytes(frames[1]))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"malformed control message: {exc}") from exc
        if not isinstance(header, dict):
            raise ProtocolError(f"malformed control message '{kind}': its header is not a JSON object")
        blob = bytes(frames[2]) if len(frames) > 2 else None
        return ControlMessage(kind, header, blob)

    def payload(self) -> Any:
        if self.blob is None:
            raise ValueError(f"message '{self.kind}' carries no payload")
        return cloudpickle.loads(self.blob)


def msg(kind: str, blob_obj: Any = None, **header: Any) -> ControlMessage:
    blob = cloudpickle.dumps(blob_obj) if blob_obj is not None else None
    return ControlMessage(kind, header, blob)


# -- typed messages ------------------------------------------------------------------------------------------

M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """One kind of control message. Subclasses set `KIND` and declare the header's keys as fields; a field
    named `blob` is the third frame. Fields that are None are left out of the header (receivers read
    optional keys with `.get`). With `RECORD` set, that one dict field *is* the header (records whose keys
    are not names, e.g. a move's `from`)."""

    KIND: ClassVar[str] = ""
    RECORD: ClassVar[str | None] = None

    def header(self) -> dict[str, Any]:
        if self.RECORD is not None:
            return dict(getattr(self, self.RECORD))
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "blob" and value is not None:
                out[f.name] = value
        return out

    def to_control(self) -> ControlMessage:
        return ControlMessage(self.KIND, self.header(), getattr(self, "blob", None))

    def encode(self) -> list[bytes]:
        """The frames on the wire: [kind, JSON header, optional blob]."""
        return self.to_control().frames()

    @classmethod
    def from_control(cls: type[M], m: ControlMessage) -> M:
        if m.kind != cls.KIND:
            raise ProtocolError(f"expected a '{cls.KIND}' control message, got '{m.kind}'")
        names = [f.name for f in fields(cls)]
        if cls.RECORD is not None:
            values: dict[str, Any] = {cls.RECORD: dict(m.header)}
        else:
            values = {k: v for k, v in m.header.items() if k in names and k != "blob"}  # unknown keys: newer peers
            missing = [f.name for f in fields(cls) if f.name not in values and f.name != "blob"
                       and f.default is MISSING and f.default_factory is MISSING]
            if missing:
                raise ProtocolError(f"control message '{m.kind}' lacks {', '.join(missing)} "
                                    f"(its header has: {', '.join(sorted(m.header)) or 'nothing'})")
        if "blob" in names:
            blob_field = next(f for f in fields(cls) if f.name == "blob")
            if m.blob is None and blob_field.default is MISSING:
                raise ProtocolError(f"control message '{m.kind}' lacks its blob (the third frame)")
            values["blob"] = m.blob
        return cls(**values)

    @classmethod
    def decode(cls: type[M], frames: list[bytes]) -> M:
        """This kind from its frames (a ProtocolError for another kind or a malformed message)."""
        return cls.from_control(ControlMessage.parse(frames))

    def payload(self) -> Any:
        """The blob, unpickled (only from an authenticated peer)."""
        blob = getattr(self, "blob", None)
        if blob is None:
            raise ProtocolError(f"control message '{self.KIND}' carries no payload")
        return cloudpickle.loads(blob)


class Vocabulary:
    """The kinds one end of a link accepts; decodes frames into them and refuses any other kind."""

    def __init__(self, name: str, *kinds: type[Message]) -> None:
        self.name = name
        self.kinds: dict[str, type[Message]] = {}
        for cls in kinds:
            if not cls.KIND or cls.KIND in self.kinds:
                raise ValueError(f"{name}: kind '{cls.KIND}' of {cls.__name__} is empty or already taken")
            self.kinds[cls.KIND] = cls

    def __contains__(self, kind: str) -> bool:
        return kind in self.kinds

    def parse(self, m: ControlMessage) -> Message:
        cls = self.kinds.get(m.kind)
        if cls is None:
            raise ProtocolError(f"unknown control message '{m.kind}' {self.name}; "
                                f"known kinds: {', '.join(sorted(self.kinds))}")
        return cls.from_control(m)

    def decode(self, frames: list[bytes]) -> Message:
        return self.parse(ControlMessage.parse(frames))


# -- the host link: agent (or relay) -> host ------------------------------------------------------------------


@dataclass(frozen=True)
class Spec(Message):
    """What a host needs from its agent besides the job, which travels pickled (the agent never unpickles it)."""

    KIND: ClassVar[str] = "spec"
    bind_host: str
    blob: bytes
    trusted: list[str] = field(default_factory=list)
    public: str | None = None
    secret: str | None = field(default=None, repr=False)
    restoring: bool = False
    incoming: bool = False
    epoch: int = 0                      # which deployment of the job: output of an older one is refused
    lease: float | None = None          # seconds the host runs on while its agent's lease is not renewed
    lease_file: str | None = None       # where the agent renews it (runtime/lease.py); None: no lease


@dataclass(frozen=True)
class Connect(Message):
    """The data endpoints of every virtual node of a job (`only`: for one virtual node that moved)."""

    KIND: ClassVar[str] = "connect"
    job: str
    endpoints: dict[str, dict[str, Any]]
    only: str | None = None


@dataclass(frozen=True)
class Start(Message):
    """Start processing; with a blob, from that snapshot (a restored or migrated virtual node)."""

    KIND: ClassVar[str] = "start"
    job: str
    only: str | None = None
    blob: bytes | None = None


@dataclass(frozen=True)
class SnapshotRequest(Message):
    """`vnode` aligns on `barrier`, snapshots and stops (`whole`: the microVM moves whole, to `whole['uri']`).
    With `to` (the new host's peer, with its `state_endpoint`) the state goes there directly (`statexfer.py`);
    with `precopy` too, the vnode only starts copying it there while it runs on (no barrier yet)."""

    KIND: ClassVar[str] = "snapshot"
    job: str
    vnode: str
    barrier: int
    only: str | None = None
    whole: dict[str, Any] | None = None
    to: dict[str, Any] | None = None
    precopy: bool | None = None


@dataclass(frozen=True)
class PauseTo(Message):
    """Upstream of `vnode`: send `barrier` on every channel into it, then hold what follows."""

    KIND: ClassVar[str] = "pause_to"
    job: str
    vnode: str
    barrier: int


@dataclass(frozen=True)
class Redirect(Message):
    """Upstream of `vnode`: re-point its channels at `peer` (None: the move was called off, keep the old host)
    and release what was held. With `prepare`, before the cut: only connect to `peer` (its handshakes take tens of
    milliseconds on a loaded machine, which the move's downtime would otherwise include)."""

    KIND: ClassVar[str] = "redirect"
    job: str
    vnode: str
    peer: dict[str, Any] | None = None
    prepare: bool = False


@dataclass(frozen=True)
class CheckpointRequest(Message):
    """Take checkpoint `checkpoint`: a virtual node with sources snapshots at once and sends the barrier on;
    any other aligns on the barrier as it arrives from upstream (asking it too is harmless)."""

    KIND: ClassVar[str] = "checkpoint"
    job: str
    checkpoint: int
    base: int | None = None     # the last completed checkpoint: a chunked snapshot may send only changes against it


@dataclass(frozen=True)
class CheckpointDone(Message):
    """Checkpoint `checkpoint` is complete (every virtual node's snapshot is in): what sinks hold for it may be
    published (two-phase commit)."""

    KIND: ClassVar[str] = "checkpoint_done"
    job: str
    checkpoint: int


@dataclass(frozen=True)
class StopHost(Message):
    """End the host now."""

    KIND: ClassVar[str] = "stop"


# -- the host link: host -> agent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostReport(Message):
    """What a host says about itself: every kind from a host names its job and virtual node."""

    job: str
    vnode: str


@dataclass(frozen=True)
class HostHello(HostReport):
    KIND: ClassVar[str] = "hello"
    pid: int | None = None


@dataclass(frozen=True)
class HostReady(HostReport):
    """The host's channel server is bound (`incoming`: a microVM host waits for a whole VM there)."""

    KIND: ClassVar[str] = "ready"
    endpoint: str
    incoming: str | None = None
    boot_s: float | None = None
    state_endpoint: str | None = field(default=None, repr=False)  # where a move's state may be sent directly


@dataclass(frozen=True)
class HostStats(HostReport):
    KIND: ClassVar[str] = "stats"
    stats: dict[str, Any]


@dataclass(frozen=True)
class HostDone(HostReport):
    """The virtual node ran to its end; the blob is its pickled result."""

    KIND: ClassVar[str] = "done"
    blob: bytes
    stats: dict[str, Any] | None = None


@dataclass(frozen=True)
class HostFailed(HostReport):
    """The run failed; `operator` and `cause` name the user function at fault, when it was one."""

    KIND: ClassVar[str] = "failed"
    error: str = "?"
    traceback: str | None = None
    operator: str | None = None
    cause: str | None = None


@dataclass(frozen=True)
class HostSnapshot(HostReport):
    """The virtual node aligned on the barrier and stopped; the blob is its snapshot."""

    KIND: ClassVar[str] = "snapshot"
    blob: bytes | None = None
    whole: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None  # sent directly to the new host: the blob is its ticket; figures


@dataclass(frozen=True)
class HostPrecopied(HostReport):
    """The new host of a move has this vnode's state as of moments ago (`statexfer.py`): the move may cut."""

    KIND: ClassVar[str] = "precopied"
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostCheckpointed(HostReport):
    """The virtual node aligned on checkpoint `checkpoint`, snapshotted and went on; the blob is the snapshot."""

    KIND: ClassVar[str] = "checkpointed"
    checkpoint: int
    blob: bytes


@dataclass(frozen=True)
class HostResumed(HostReport):
    """A restored virtual node took in its first input at wall-clock time `at`; `quiet`: none came in for
    `host.QUIET_RESUME_S`, and `at` is when it was restored."""

    KIND: ClassVar[str] = "resumed"
    at: float
    transfer: dict[str, Any] | None = None  # a state sent directly: how its final round arrived (new host's view)
    quiet: bool = False


@dataclass(frozen=True)
class HostOutput(HostReport):
    """Lines the host's user code printed, [stream, text] each, and how many it dropped (`output.py`)."""

    KIND: ClassVar[str] = "output"
    lines: list[list[str]] = field(default_factory=list)
    dropped: int = 0


TO_HOST = Vocabulary("from an agent to its host", Spec, Connect, Start, SnapshotRequest, PauseTo, Redirect,
                     CheckpointRequest, CheckpointDone, StopHost)
FROM_HOST = Vocabulary("from a host to its agent", HostHello, HostReady, HostStats, HostDone, HostFailed,
                       HostSnapshot, HostResumed, HostCheckpointed, HostOutput, HostPrecopied)


# -- sending with a deadline -----------------------------------------------------------------------------------


def control_socket(ctx: zmq.Context, kind: int, send_timeout: float = CONTROL_SEND_TIMEOUT,
                   linger: float = 0.5) -> zmq.Socket:
    """A control-path socket whose sends never block longer than `send_timeout` seconds. A ROUTER also
    refuses (rather than silently drops) a message for a peer that is not connected."""
    sock = ctx.socket(kind)
    sock.sndtimeo = int(send_timeout * 1000)
    sock.linger = int(linger * 1000)
    if kind == zmq.ROUTER:
        sock.router_mandatory = 1
    return sock


def send(sock: zmq.Socket, message: Message | ControlMessage, to: str, identity: bytes | None = None) -> None:
    """Send `message` (to `identity` on a ROUTER); raise ControlSendError naming the peer and the kind if the
    socket does not take it before its send timeout, or if the peer is not connected."""
    control = message if isinstance(message, ControlMessage) else message.to_control()
    frames = control.frames()
    try:
        sock.send_multipart(frames if identity is None else [identity, *frames])
    except zmq.Again as exc:
        seconds = int(sock.getsockopt(zmq.SNDTIMEO)) / 1000
        raise ControlSendError(f"could not send '{control.kind}' to {to} within {seconds:g} s: the connection is "
                               "not up (refused, e.g. an untrusted key or a wrong server key; or nothing listens "
                               "there) or the peer stopped reading") from exc
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            raise ControlSendError(f"cannot send '{control.kind}' to {to}: it is not connected (gone, or "
                                   "reconnected under another identity)") from exc
        raise ControlSendError(f"could not send '{control.kind}' to {to}: {exc}") from exc
