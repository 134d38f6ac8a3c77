"""Moves of one virtual node, barrier-aligned: `migrate` (to another agent), `save` (to a file) and
`restore` (from one), requested by a client or proposed by the re-placement policy.

    migrate: preparing (the replacement host starts) -> aligning (barrier cut upstream; the vnode aligns,
             snapshots, stops) -> resuming (the replacement restores and starts; upstream re-pointed) -> done
    save:    aligning -> done (the job is suspended; the client gets the snapshot)
    restore: preparing -> resuming -> done

Any step may be called off (no progress within `timeout`, or the virtual node finished first). Once resuming,
the old host has handed its state over and stopped: a migration that cannot finish then (its old host lost before
its state's final round reached the new host, the new host failed, no progress) is called off *and* the job recovers
from its last checkpoint (`lost`). The states and their transitions are `states.MoveState`. A move asked for while
a checkpoint is being taken waits for it (`checkpoints.py`, beside this module). No sockets here: the coordinator
hands in decoded messages and a `send`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..placement.policy import Proposal
from ..runtime.protocol import Connect, PauseTo, Redirect, SnapshotRequest, Start
from .config import ConfigError
from .jobs import DEPLOY_TIMEOUT, JobLifecycle, Send
from .messages import (
    Deploy,
    Error,
    MigrateRequest,
    Moved,
    RestoreRequest,
    SaveRequest,
    StopJob,
    VnodeFailed,
    VnodePrecopied,
    VnodeReady,
    VnodeResumed,
    VnodeSnapshot,
)
from .model import Job, Move
from .placing import Placer
from .registry import AgentRegistry
from .states import JobState, MoveMode, MoveState

MOVE_TIMEOUT = 60.0
# how a migration's state travels: "direct" (pre-copied from the old host to the new one while the vnode runs, then
# only what changed at the barrier; the default) or "coordinator" (the whole snapshot through the coordinator at
# the barrier; bench/migration.py measures both). MicroVM virtual nodes always take the coordinator's path (their
# hosts report no state endpoint).
STATE_TRANSFER_ENV = "MICROSTREAM_STATE_TRANSFER"
STATE_TRANSFERS = ("direct", "coordinator")
# seconds a move waits for its old host's pre-copy before it cuts anyway (a host stuck in an operator, a link too slow
# for the state): the barrier then carries what the new host does not have yet, and the move's record says so
PRECOPY_TIMEOUT_ENV = "MICROSTREAM_PRECOPY_TIMEOUT"
PRECOPY_TIMEOUT = 10.0


def state_transfer() -> str:
    """How migrations move state, from MICROSTREAM_STATE_TRANSFER (a ConfigError naming the choices otherwise)."""
    path = os.environ.get(STATE_TRANSFER_ENV, "direct") or "direct"
    if path not in STATE_TRANSFERS:
        raise ConfigError(f"{STATE_TRANSFER_ENV}={path!r}: expected one of {', '.join(STATE_TRANSFERS)} "
                          "(direct, the default, unless it is unset)")
    return path


def precopy_timeout() -> float:
    raw = os.environ.get(PRECOPY_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else PRECOPY_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{PRECOPY_TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0 (default "
                          f"{PRECOPY_TIMEOUT:g})")
    return value


class Moves:
    def __init__(self, lifecycle: JobLifecycle, registry: AgentRegistry, send: Send, placer: Placer,
                 log: Callable[[str], None] = print, timeout: float = MOVE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.lifecycle = lifecycle
        self.registry = registry
        self.send = send
        self.placer = placer
        self.log = log
        self.timeout = timeout
        self.clock = clock
        self.wall = wall
        self.metrics: Any = None
        self.called_off: dict[str, str] = {}   # "job/vnode" -> why its last move was called off (drains read it)
        self.direct = state_transfer() == "direct"
        self.precopy_timeout = precopy_timeout()

    # -- requests ---------------------------------------------------------------------------------------------
    def _after_checkpoint(self, job_id: str, request: Callable[[], None]) -> bool:
        """A checkpoint of the job is being taken: hold the request until it is done (True)."""
        job = self.lifecycle.get(job_id)
        if job is None or job.pending is None:
            return False
        job.waiting.append(request)
        return True

    def migrate(self, identity: bytes, m: MigrateRequest) -> None:
        if self._after_checkpoint(m.job, lambda: self.migrate(identity, m)):
            return
        if m.whole:
            job = self.lifecycle.get(m.job)
            vn = job.plan.vnodes.get(m.vnode) if job is not None else None
            if vn is not None and vn.backend != "microvm":
                self.send(identity, Error(error=f"{vn.id} runs in a {vn.backend} host: only a microvm virtual node "
                                                "can move whole (leave out --whole-vm)"))
                return
        begun = self._begin(identity, m.job, m.vnode, MoveMode.MIGRATE, m.to)
        if begun:
            begun[1].whole = m.whole
            self._deploy_new_host(*begun)

    def save(self, identity: bytes, m: SaveRequest) -> None:
        if self._after_checkpoint(m.job, lambda: self.save(identity, m)):
            return
        begun = self._begin(identity, m.job, m.vnode, MoveMode.SAVE, None)
        if begun:
            self._cut(*begun)

    def restore(self, identity: bytes, m: RestoreRequest) -> None:
        if self._after_checkpoint(m.job, lambda: self.restore(identity, m)):
            return
        begun = self._begin(identity, m.job, m.vnode, MoveMode.RESTORE, m.to)
        if begun:
            job, move = begun
            if job.state is not JobState.SUSPENDED or job.placement.get(move.vnode) is not None:
                job.move = None
                self.send(identity, Error(error=f"{move.vnode} of job {job.id} is not saved; save it first"))
                return
            move.snapshot = m.blob
            self._deploy_new_host(job, move)

    def auto_migrate(self, job: Job, proposal: Proposal) -> None:
        """A move the re-placement policy proposed."""
        self.log(f"coordinator: re-placing {job.id}/{proposal.vnode} {proposal.source} -> {proposal.target}: "
                 f"{proposal.reason} (measured bytes/s crossing machines to and from it: {proposal.before:,.0f} -> "
                 f"{proposal.after:,.0f})")
        self.start(job, proposal.vnode, proposal.source, proposal.target, proposal.reason)

    def start(self, job: Job, vnode: str, source: str, target: str, reason: str) -> None:
        """A migration the coordinator decided on itself (the re-placement policy, a drain): no client waits."""
        job.barriers += 1
        job.move = Move(vnode, MoveMode.MIGRATE, source, target, job.barriers, None, started=self.clock(),
                        reason=reason)
        self.called_off.pop(f"{job.id}/{vnode}", None)
        self.placer.moved(job, vnode)
        self.lifecycle.persist(job)  # a coordinator restarted mid-move cannot adopt the job: it recovers it
        self._deploy_new_host(job, job.move)

    def _begin(self, identity: bytes, job_id: str, vnode: str, mode: MoveMode,
               target: str | None) -> tuple[Job, Move] | None:
        job = self.lifecycle.get(job_id)
        problem = None
        if job is None:
            ended = self.lifecycle.ended(job_id)
            problem = f"job {job_id} is {ended.state}" if ended else f"no job '{job_id}' (see `microstream status`)"
        elif job.state not in (JobState.RUNNING, JobState.SUSPENDED):
            problem = f"job {job.id} is {job.state}"
        elif vnode not in job.plan.vnodes:
            problem = f"job {job.id} has no virtual node '{vnode}'; it has {sorted(job.plan.vnodes)}"
        elif job.move is not None:
            problem = f"{job.move.vnode} of job {job.id} is already moving; try again when it is done"
        elif vnode in job.results:
            problem = f"{vnode} of job {job.id} has finished; there is nothing left to move"
        if problem or job is None:
            self.send(identity, Error(error=problem or "?"))
            return None
        source = job.placement.get(vnode) if mode is not MoveMode.RESTORE else None
        if mode is MoveMode.RESTORE and target is None:
            target = job.placement.get(vnode)
        if mode is not MoveMode.SAVE:
            if self.registry.live(target) is None:
                self.send(identity, Error(error=f"no agent '{target}' is up (agents: {self.registry.names_up()})"))
                return None
            if target == source:
                self.send(identity, Error(error=f"{vnode} already runs on {target}"))
                return None
        job.barriers += 1
        job.move = Move(vnode, mode, source, target, job.barriers, identity, started=self.clock())
        self.lifecycle.persist(job)
        return job, job.move

    # -- the steps --------------------------------------------------------------------------------------------
    def _deploy_new_host(self, job: Job, move: Move) -> None:
        """Preparing: the replacement host starts on the target agent and reports its endpoint (vnode_ready)."""
        self.send(self.registry.agents[move.target or ""].identity,
                  Deploy(job=job.id, vnode=move.vnode, blob=job.blob, data_keys=self.registry.data_keys(),
                         backend=job.plan.vnodes[move.vnode].backend, restoring=True, incoming=move.whole,
                         epoch=job.epoch))

    def vnode_ready(self, identity: bytes, m: VnodeReady) -> bool:
        """The replacement host of a move is up; False if this ready is not about a move (a deployment's)."""
        job = self.lifecycle.get(m.job)
        move = job.move if job is not None else None
        if (job is None or move is None or move.state is not MoveState.PREPARING or m.vnode != move.vnode
                or self.registry.name_of(identity) != move.target or m.epoch != job.epoch):
            return False
        move.endpoint = m.peer()
        move.incoming = m.incoming
        if move.mode is MoveMode.MIGRATE and not move.whole:  # upstream connects to it now, not in the downtime
            for agent in self.lifecycle.agents_of(job):
                self.send(agent.identity, Redirect(job=job.id, vnode=move.vnode, peer=move.endpoint, prepare=True))
        if move.mode is MoveMode.MIGRATE and self.direct and not move.whole and m.state_endpoint:
            # pre-copy: the old host sends its state to the new one while it runs on; the cut waits for it
            move.direct = True
            move.precopy = {"asked_at": self.clock()}
            self.send(self.registry.agents[move.source or ""].identity,
                      SnapshotRequest(job=job.id, vnode=move.vnode, only=move.vnode, barrier=move.barrier,
                                      to=move.endpoint, precopy=True))
        elif move.mode is MoveMode.MIGRATE:
            move.advance(MoveState.ALIGNING)
            self._cut(job, move)
        else:  # restore: the state is already here
            self._resume(job, move)
        return True

    def vnode_precopied(self, m: VnodePrecopied) -> None:
        """The new host has the vnode's state as of moments ago: cut now; only what changes since then travels
        at the barrier."""
        job = self.lifecycle.get(m.job)
        move = job.move if job is not None else None
        if (job is None or move is None or move.vnode != m.vnode or move.state is not MoveState.PREPARING
                or not move.direct or m.epoch != job.epoch):
            return
        move.precopy = {**m.figures, "precopy_s": self.clock() - move.started}
        if m.figures.get("failed"):
            self.log(f"coordinator: the pre-copy of {job.id}/{move.vnode} failed ({m.figures['failed']}): "
                     "its state goes at the barrier")
        move.advance(MoveState.ALIGNING)
        self._cut(job, move)

    def _cut(self, job: Job, move: Move) -> None:
        """Aligning: upstream tasks mark the cut on their channels into the vnode and hold what follows; the
        vnode aligns on it, snapshots and stops."""
        move.paused_at = self.clock()
        move.paused_wall = self.wall()
        for agent in self.lifecycle.agents_of(job):
            self.send(agent.identity, PauseTo(job=job.id, vnode=move.vnode, barrier=move.barrier))
        whole = {"uri": move.incoming} if move.whole else None
        self.send(self.registry.agents[move.source or ""].identity,
                  SnapshotRequest(job=job.id, vnode=move.vnode, only=move.vnode, barrier=move.barrier, whole=whole,
                                  to=move.endpoint if move.direct else None))

    def vnode_snapshot(self, m: VnodeSnapshot) -> None:
        job = self.lifecycle.get(m.job)
        move = job.move if job is not None else None
        if (job is None or move is None or move.vnode != m.vnode or move.state is not MoveState.ALIGNING
                or m.epoch != job.epoch):
            return
        move.snapshot = m.blob  # with a direct transfer, the new host's ticket (a few hundred bytes)
        move.snapshot_at = self.clock()
        move.vm_figures = m.whole
        move.transfer = m.transfer
        if move.mode is MoveMode.SAVE:
            job.placement.pop(move.vnode, None)
            job.endpoints.pop(move.vnode, None)
            job.advance(JobState.SUSPENDED)
            self._finish(job, move, {"saved_bytes": len(m.blob or b"")}, blob=m.blob)
        else:
            self._resume(job, move)

    def _resume(self, job: Job, move: Move) -> None:
        """Resuming: the new host restores the snapshot and starts; upstream channels are re-pointed at it and
        release what they held. Done when the new host has taken in its first input: a record or, on a quiet
        stream, a watermark (vnode_resumed)."""
        move.advance(MoveState.RESUMING)
        target = self.registry.agents[move.target or ""]
        job.endpoints[move.vnode] = move.endpoint or {}
        job.placement[move.vnode] = target.name
        self.send(target.identity, Connect(job=job.id, endpoints=job.endpoints, only=move.vnode))
        self.send(target.identity, Start(job=job.id, only=move.vnode, blob=move.snapshot))
        for agent in self.lifecycle.agents_of(job):
            self.send(agent.identity, Redirect(job=job.id, vnode=move.vnode, peer=move.endpoint))
        if job.state is JobState.SUSPENDED:
            job.advance(JobState.RUNNING)

    def vnode_resumed(self, m: VnodeResumed) -> None:
        job = self.lifecycle.get(m.job)
        move = job.move if job is not None else None
        if (job is None or move is None or move.state is not MoveState.RESUMING or move.vnode != m.vnode
                or m.epoch != job.epoch):
            return
        downtime = float(m.at) - move.paused_wall if move.paused_wall else None
        if m.transfer and move.transfer is not None:  # the new host's view of the final round (it may have
            # followed the ticket: only the new host knows its size then)
            move.transfer = {**move.transfer, "final_wait_s": m.transfer.get("waited_s"),
                             "final_bytes": move.transfer.get("final_bytes", m.transfer.get("final_bytes"))}
        align = move.snapshot_at - move.paused_at if move.paused_at and move.snapshot_at else None
        figures: dict[str, Any] = {"downtime_s": downtime, **self._state_figures(move),
                                   "align_and_snapshot_s": align}
        if m.transfer and m.transfer.get("restored_at") is not None:  # the new host's part, after the state came:
            # its restore, then the wait for the first record (redirected upstream channels), on its own clock
            figures["restore_s"] = m.transfer.get("restore_s")
            figures["first_record_s"] = max(0.0, float(m.at) - float(m.transfer["restored_at"]))
        if m.quiet:  # nothing came in after the restore: the downtime ended as the new host started
            figures["quiet"] = True
        if move.whole:  # the state moved in QEMU's stream; the snapshot was the control channel's position
            figures.update(tier=2, vm=move.vm_figures, state_bytes=(move.vm_figures or {}).get("ram_bytes"))
        self._finish(job, move, figures)

    def vnode_done(self, job: Job, vnode: str) -> None:
        """`vnode` ran to its end: a move of it that resumed is done, one that had not is called off."""
        move = job.move
        if move is None or move.vnode != vnode:
            return
        if move.state is MoveState.RESUMING:  # it moved, and had nothing left to process
            self._finish(job, move, {"downtime_s": None, **self._state_figures(move)})
        elif move.mode is not MoveMode.RESTORE:
            self._call_off(job, move, "the virtual node finished before it could move")

    @staticmethod
    def _state_figures(move: Move) -> dict[str, Any]:
        """How big the state was and how it travelled: `relayed_bytes` is what went through the coordinator."""
        relayed = len(move.snapshot or b"")
        if not move.direct:
            return {"state_bytes": relayed, "relayed_bytes": relayed, "transfer": "coordinator"}
        transfer, precopy = move.transfer or {}, move.precopy or {}
        # a pre-copy that did not finish (timed out, failed) is said in `precopy_fallback`; a final round that
        # could not go direct (its connection, no transfer on that host) sent the snapshot through the coordinator
        fallback = precopy.get("fallback") or precopy.get("failed")
        if transfer.get("path") == "coordinator":
            return {"state_bytes": relayed, "relayed_bytes": relayed, "transfer": "coordinator",
                    "precopy_fallback": fallback, "direct_fallback": transfer.get("fallback")}
        return {"state_bytes": transfer.get("state_bytes", 0), "relayed_bytes": relayed, "transfer": "direct",
                "final_bytes": transfer.get("final_bytes"), "final_s": transfer.get("final_s"),
                "precopy_rounds": precopy.get("rounds"), "precopy_bytes": precopy.get("sent_bytes"),
                "precopy_s": precopy.get("precopy_s"), "precopy_fallback": fallback,
                "stop_and_copy": bool(transfer.get("stop_and_copy")), "final_wait_s": transfer.get("final_wait_s"),
                "ticket_first": bool(transfer.get("ticket_first"))}

    def _finish(self, job: Job, move: Move, figures: dict[str, Any], blob: bytes | None = None) -> None:
        move.advance(MoveState.DONE)
        record = {"vnode": move.vnode, "mode": move.mode.value, "from": move.source, "to": move.target,
                  "total_s": self.clock() - move.started, "reason": move.reason, "at": self.wall(), **figures}
        if move.vnode in job.pins and move.target and move.reason == "requested":
            job.pins[move.vnode] = move.target  # a pinned source moved by hand: its sensor is there now
        self.placer.moved(job, move.vnode)
        job.history.append(record)
        job.move = None
        self.lifecycle.persist(job)
        self.log(f"coordinator: {move.mode} of {job.id}/{move.vnode} done: {record}")
        if self.metrics is not None:
            self.metrics.migrations.labels(job.id, move.mode, move.reason.split(":")[0]).inc()
            if figures.get("downtime_s") is not None:
                self.metrics.migration_downtime.observe(figures["downtime_s"])
            self.metrics.migration_state_bytes.inc(figures.get("state_bytes", figures.get("saved_bytes", 0)))
        if move.client is not None:
            self.send(move.client, Moved(record=record, blob=blob))

    # -- moves that make no progress --------------------------------------------------------------------------
    def check(self) -> None:
        """A move that makes no progress (a host that never answers) is called off rather than left hanging."""
        now = self.clock()
        for job in self.lifecycle:
            move = job.move
            if move is None or move.mode is MoveMode.SAVE:
                continue
            asked = (move.precopy or {}).get("asked_at")
            if move.state is MoveState.PREPARING and asked is not None and now - asked > self.precopy_timeout:
                # the old host has not pre-copied in time (stuck in an operator, a slow link): cut now, and the
                # barrier carries what the new host lacks (a move never waits for its vnode to finish)
                move.precopy = {"fallback": f"no pre-copy within {self.precopy_timeout:g} s: stop-and-copy at the "
                                            "barrier"}
                self.log(f"coordinator: {move.mode} of {job.id}/{move.vnode}: {move.precopy['fallback']}")
                move.advance(MoveState.ALIGNING)
                self._cut(job, move)
                continue
            if move.state is MoveState.PREPARING:  # the job runs on meanwhile: a new VM gets a deployment's time
                backend = job.plan.vnodes[move.vnode].backend
                limit = self.timeout if backend == "process" else max(self.timeout, DEPLOY_TIMEOUT[backend])
                if now - move.started > limit:
                    self._call_off(job, move, f"the new host did not start within {limit:.0f} s")
            elif now - (move.paused_at or move.started) > self.timeout:
                if move.state is MoveState.RESUMING and move.mode is MoveMode.MIGRATE:
                    # the old host has handed its state over and stopped: there is no host to call the move back to
                    self.lost(job, move, f"the new host did not resume within {self.timeout:.0f} s")
                else:
                    self._call_off(job, move, f"no progress in {self.timeout:.0f} s")

    # -- faults in the middle of a move -------------------------------------------------------------------------
    def host_failed(self, agent: str | None, m: VnodeFailed) -> bool:
        """A host of a move in flight failed (True: handled here, the job recovers saying so). Its old host after it
        handed the snapshot over (`m.moved`: killed -9, or its state's final round could not be sent): if the state
        went directly and the new host has not resumed, that state may never arrive. Its new host before it resumed
        (its state did not arrive in time, it crashed): the old one has stopped. Either way the virtual node runs
        nowhere, and the job recovers from its last checkpoint (the new host, if it still waits, is stopped with
        the old epoch). A user function that failed is not handled here: the job fails, as it would anyway."""
        job = self.lifecycle.get(m.job)
        move = job.move if job is not None else None
        if (job is None or move is None or move.vnode != m.vnode or m.epoch != job.epoch
                or move.mode is not MoveMode.MIGRATE or move.state is not MoveState.RESUMING):
            return False  # an old host of a move that is done had nothing left to give: nothing was lost
        if m.moved and agent == move.source and self._state_in_flight(move):
            self.lost(job, move, f"its old host on {agent} ended before the final round of its state reached the new "
                                 f"host ({m.error})")
            return True
        if not m.moved and agent == move.target and m.operator is None:
            self.lost(job, move, f"its new host on {agent} failed before it resumed ({m.error})")
            return True
        return False

    def agent_lost(self, agent: Any) -> None:
        """An agent lost (frozen, cut off, gone) that was the old host's of a move whose state was still on its way
        to the new host: the job recovers (the placement already names the new host, so the job's own agent-lost
        check would not see it)."""
        for job in self.lifecycle:
            move = job.move
            if (job.state.active and move is not None and move.source == agent.name and move.mode is MoveMode.MIGRATE
                    and move.state is MoveState.RESUMING and self._state_in_flight(move)):
                self.lost(job, move, f"the agent of its old host, {agent.name}, was lost ({agent.down_reason}) before "
                                     "the new host had its state")

    @staticmethod
    def _state_in_flight(move: Move) -> bool:
        """The state went from the old host to the new one directly (not whole, in the snapshot, through here)."""
        return move.direct and (move.transfer or {}).get("path") != "coordinator"

    def lost(self, job: Job, move: Move, why: str) -> None:
        """A move that cannot go on nor be called off (its old host has stopped): it is called off and the job
        recovers from its last checkpoint, through the same recovery as any lost host (`jobs.JobLifecycle.recover`:
        a new epoch, every virtual node from its snapshot, the sources replaying from there)."""
        self.called_off[f"{job.id}/{move.vnode}"] = why
        self.log(f"coordinator: {move.mode} of {job.id}/{move.vnode} ({move.source} -> {move.target}) called off: "
                 f"{why}; the job recovers from its last checkpoint")
        record = {"vnode": move.vnode, "mode": move.mode.value, "from": move.source, "to": move.target,
                  "state": move.state.value, "transfer": "direct" if self._state_in_flight(move) else "coordinator",
                  "called_off": why}
        move.advance(MoveState.CALLED_OFF)
        self.lifecycle.recover(job, f"{move.vnode} was lost moving {move.source} -> {move.target}: {why}", move=record)

    def _call_off(self, job: Job, move: Move, reason: str) -> None:
        move.advance(MoveState.CALLED_OFF)
        self.called_off[f"{job.id}/{move.vnode}"] = reason
        self.log(f"coordinator: {move.mode} of {job.id}/{move.vnode} called off: {reason}")
        target = self.registry.get(move.target)
        if target is not None and move.mode is MoveMode.MIGRATE:
            self.send(target.identity, StopJob(job=job.id, only=move.vnode))
        for agent in self.lifecycle.agents_of(job):
            self.send(agent.identity, Redirect(job=job.id, vnode=move.vnode, peer=None))
        job.move = None
        self.lifecycle.persist(job)
        if move.client is not None:
            self.send(move.client, Error(error=f"{move.mode} of {move.vnode} called off: {reason}"))
