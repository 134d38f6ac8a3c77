"""What the coordinator knows about a job, and about the move of one of its virtual nodes in flight.

Plain records with their state machines (`states.py`); `jobs.py` and `moves.py` hold the logic that changes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .states import JobState, MoveMode, MoveState

if TYPE_CHECKING:
    from ..graph.logical import LogicalGraph
    from ..graph.physical import PhysicalPlan
    from ..placement.policy import Policy
    from ..runtime.checkpoint_chunks import Manifest


@dataclass
class Job:
    id: str
    name: str
    graph: LogicalGraph
    plan: PhysicalPlan
    placement: dict[str, str]                      # vnode -> agent name
    watchers: set[bytes] = field(default_factory=set)  # clients waiting for `job_done` (submit, watch)
    state: JobState = JobState.DEPLOYING
    reason: str = ""
    endpoints: dict[str, dict] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    blob: bytes = b""                              # the hosts' spec: graph, plan, credits (pickled once)
    move: Move | None = None                       # at most one virtual node moves at a time
    barriers: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # finished moves
    pins: dict[str, str] = field(default_factory=dict)          # vnode -> node its sensor is attached to
    traffic: dict[tuple[str, str], float] = field(default_factory=dict)   # (vnode, vnode) -> bytes/s measured
    sent: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # last (bytes, time) seen
    policy: Policy | None = None
    predicted: dict[str, float] = field(default_factory=dict)  # link "a–b" -> bytes/s, from the placement engine
    placement_quality: dict[str, Any] = field(default_factory=dict)   # the engine's cost, proven bound and gap
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # vnode -> last state and stats once done
    epoch: int = 0                                 # deployments so far - 1: a recovery starts a new one (fencing)
    checkpoint_every: float | None = 10.0          # seconds between checkpoints (None: none)
    max_restarts: int = 3                          # recoveries before a fault fails the job
    restarts: int = 0
    checkpoint: Checkpoint | None = None           # the last completed one
    pending: Checkpoint | None = None              # the one being taken
    next_checkpoint: float = 0.0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)   # completed ones (figures), newest last
    recoveries: list[dict[str, Any]] = field(default_factory=list)    # what went wrong, from where it went on
    waiting: list[Any] = field(default_factory=list)  # requests held until the checkpoint being taken is done
    adopt_until: float | None = None               # restored by a restarted coordinator: its hosts must report by
    moving: str | None = None                      # restored while this vnode was moving: it cannot be adopted
    deploying_since: float | None = None           # hosts were asked to start (clock) and not all are ready

    def advance(self, to: JobState) -> None:
        """Go to state `to`; IllegalTransition if a job in this state cannot."""
        self.state = self.state.to(to)


@dataclass
class Checkpoint:
    """A consistent cut of a running job: every virtual node's snapshot at one barrier."""

    id: int
    started: float
    snapshots: dict[str, bytes] = field(default_factory=dict)   # vnode -> its snapshot (full: pickled or chunked)
    completed: float | None = None
    manifests: dict[str, Manifest] = field(default_factory=dict)  # vnode -> its chunks' keys (chunked snapshots)
    sent: int = 0                                               # bytes the hosts sent for it (changes only)

    @property
    def bytes(self) -> int:
        return sum(len(b) for b in self.snapshots.values())


@dataclass
class Move:
    """One virtual node on the move."""

    vnode: str
    mode: MoveMode
    source: str | None             # agent it leaves (None for a restore)
    target: str | None             # agent it goes to (None for a save)
    barrier: int
    client: bytes | None           # who asked (None: the re-placement policy)
    started: float
    reason: str = "requested"
    state: MoveState = field(init=False)
    snapshot: bytes | None = None
    endpoint: dict | None = None   # the replacement's channel server
    paused_at: float = 0.0
    paused_wall: float = 0.0
    snapshot_at: float = 0.0
    whole: bool = False            # tier 2: a microVM moved whole by QEMU's migration stream
    incoming: str | None = None    # where the new host's QEMU waits for that stream
    vm_figures: dict | None = None
    direct: bool = False           # the state goes from the old host to the new one directly (runtime/statexfer.py)
    precopy: dict | None = None    # the old host's pre-copy figures (rounds, bytes), once the new host has them
    transfer: dict | None = None   # the direct transfer's figures at the barrier (state bytes, final delta bytes)

    def __post_init__(self) -> None:
        self.state = self.mode.steps[0]

    def advance(self, to: MoveState) -> None:
        """Go to state `to`; IllegalTransition if a move of this mode in this state cannot."""
        self.state = self.state.to(to, self.mode)
