"""The coordinator's job lifecycle: submit (plan and place), the two-phase deployment (hosts report their
endpoints, then everyone gets the full map and starts), results as virtual nodes finish, recovery (a host
failed or an agent was lost: every virtual node is placed again and restarts from the last checkpoint, in a new
epoch), failure (a user function failed, or the restarts are spent), a client's stop, measured traffic, and
each job's status.

Fencing: every deployment of a job has an epoch; what a host of an older epoch reports is ignored, and its
agent is told to stop it. So are hosts of a job that has ended, or that this coordinator does not know.

A coordinator that crashes: with a `store` (`store.py`, SQLite) every change that matters is written before the
coordinator goes on. A restarted coordinator `restore`s the jobs that had not ended as *adopting*: when the
agents re-register and report the job's hosts running in its epoch, it runs again where it ran; if some have not
come back within `grace` seconds, it recovers from its last persisted checkpoint. Ended jobs are kept in a
bounded `history` (the newest `keep`; older ones only in the store), as their last status: the coordinator does
not grow per finished job.

States and their transitions are `states.JobState`; a move of one virtual node is `moves.py`'s business.
No sockets here: the coordinator hands in decoded messages and a `send(identity, message)`.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from ..core.errors import MicrostreamError
from ..graph.logical import LogicalGraph
from ..graph.physical import build_plan
from ..runtime.protocol import Connect, Message, Start
from .health import JobHealth
from .messages import (
    Accepted,
    Deploy,
    Error,
    JobDone,
    Rejected,
    StopJob,
    Stopped,
    StopRequest,
    Submit,
    VnodeDone,
    VnodeFailed,
    VnodeReady,
    Watch,
    Watching,
)
from .model import Checkpoint, Job
from .placing import Placer
from .registry import AgentInfo, AgentRegistry
from .states import JobState, VnodeState
from .store import EndedJob, Store, StoredJob

Send = Callable[[bytes, Message], None]

# How long the hosts of a deployment may take to report ready before the coordinator gives up on it and starts
# again (a recovery): a process host starts in seconds; a microVM boots and loads numba, minutes under
# software emulation on a busy machine. Hosts themselves wait for as long as their agent lives.
DEPLOY_TIMEOUT = {"process": 120.0, "microvm": 600.0}

KEEP = 100             # ended jobs kept in memory (their status); older ones are only in the store
BARRIER_GAP = 100      # a restored job's barriers start this far above the last persisted one (ids only grow)


class JobLifecycle:
    def __init__(self, registry: AgentRegistry, send: Send, placer: Placer, log: Callable[[str], None] = print,
                 wall: Callable[[], float] = time.time, store: Store | None = None,
                 clock: Callable[[], float] = time.monotonic, grace: float = 10.0, keep: int = KEEP) -> None:
        self.registry = registry
        self.send = send
        self.placer = placer
        self.log = log
        self.wall = wall
        self.store = store
        self.clock = clock
        self.grace = grace
        self.keep = keep
        self.jobs: dict[str, Job] = {}                            # jobs that have not ended
        self.history: OrderedDict[str, EndedJob] = OrderedDict()  # the newest `keep` ended jobs, oldest first
        self.forget: Callable[[str], None] | None = None          # a job left the history (its metric series go)
        self.health = JobHealth(clock)                            # is each running job moving (health.py)
        self._faulty: dict[str, float] = {}                       # job -> since when it is stalled (told so)
        self.restoring: set[str] = set()         # unknown jobs an agent holds replicas of: their hosts are left be
        self.restore_watchers: dict[str, set[bytes]] = {}          # ... and the clients that wait for them
        self.may_restore: Callable[[], bool] = lambda: False       # no agent back yet to say what it holds
        self.settling: Callable[[], bool] = lambda: False          # not every agent back yet to say what it holds
        self.early_done: dict[str, list[VnodeDone]] = {}           # their hosts' results, until they are restored
        self.from_replica: dict[str, dict[str, Any]] = {}          # restored jobs -> the replica's agent, checkpoint
        self.on_end: Callable[[Job], None] | None = None          # a job ended (its replicas go)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self.jobs.values()))

    def get(self, job_id: str | None) -> Job | None:
        """A job that has not ended."""
        return self.jobs.get(job_id or "")

    def ended(self, job_id: str, result: bool = False) -> EndedJob | None:
        """A job that has ended: from the history, else from the store (with `result`: its result too)."""
        known = self.history.get(job_id)
        if known is not None and (not result or known.result is not None or self.store is None):
            return known
        if self.store is None:
            return None
        try:
            return self.store.ended(job_id, result=result)
        except sqlite3.Error as exc:
            self.log(f"coordinator: cannot read job {job_id} from the state directory: {exc}")
            return known

    # -- the store ----------------------------------------------------------------------------------------------
    def persist(self, job: Job, spec: bool = False) -> None:
        """Write the job's row (a crash must not lose what changed); a failing disk costs a log line."""
        self._write(lambda store: store.save_job(job, spec=spec), job)

    def persist_checkpoint(self, job: Job, checkpoint: Checkpoint) -> None:
        self._write(lambda store: store.save_checkpoint(job, checkpoint), job)

    def _write(self, write: Callable[[Store], None], job: Job) -> None:
        if self.store is None:
            return
        try:
            write(self.store)
        except sqlite3.Error as exc:
            self.log(f"coordinator: cannot write job {job.id} to the state directory {self.store.directory}: {exc}")

    def agents_of(self, job: Job) -> list[AgentInfo]:
        """The live agents that run a virtual node of `job`."""
        return [a for n in sorted(set(job.placement.values())) if (a := self.registry.live(n)) is not None]

    # -- submit and deploy ------------------------------------------------------------------------------------
    def submit(self, identity: bytes, m: Submit) -> Job | None:
        try:
            graph: LogicalGraph = m.payload()
            plan = build_plan(graph)
            placed = self.placer.place(plan, graph, self.registry.placement_view())
        except MicrostreamError as exc:
            self.send(identity, Rejected(error=str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. a job pickled against modules this machine lacks
            self.send(identity, Rejected(error=f"cannot load the job: {type(exc).__name__}: {exc}"))
            return None
        job_id = f"{graph.name}-{uuid.uuid4().hex[:6]}"
        job = Job(job_id, graph.name, graph, plan, placed.assignment, watchers={identity} if m.wait else set(),
                  submitted=self.wall(), predicted=placed.predicted, pins=placed.pins, policy=self.placer.policy(),
                  placement_quality=placed.quality,
                  checkpoint_every=_checkpoint_every(graph, self.log),
                  max_restarts=getattr(graph, "max_restarts", 3))
        job.blob = cloudpickle.dumps({"graph": graph, "plan": plan, "credits": m.credits})
        self.jobs[job_id] = job
        self.persist(job, spec=True)
        self._deploy(job)
        self.send(identity, Accepted(job=job_id, placement=placed.assignment))
        self.log(f"coordinator: job {job_id} placed: " + ", ".join(f"{v}->{a}" for v, a in placed.assignment.items()))
        return job

    def _deploy(self, job: Job) -> None:
        """Phase one: a host for every virtual node, on the agent the placement chose."""
        restoring = job.checkpoint is not None
        job.deploying_since = self.clock()
        for vnode, agent_name in job.placement.items():
            self.send(self.registry.agents[agent_name].identity,
                      Deploy(job=job.id, vnode=vnode, blob=job.blob, data_keys=self.registry.data_keys(),
                             backend=job.plan.vnodes[vnode].backend, restoring=restoring or None, epoch=job.epoch))

    def vnode_ready(self, job: Job, m: VnodeReady) -> None:
        """Phase one of the deployment: collect endpoints; with all of them, phase two: connect and start (a
        recovery starts every virtual node from its snapshot in the last checkpoint)."""
        if job.state not in (JobState.DEPLOYING, JobState.RECOVERING) or m.epoch != job.epoch:
            return
        job.endpoints[m.vnode] = m.peer()
        if len(job.endpoints) < len(job.plan.vnodes):
            return
        job.deploying_since = None
        agents = self.agents_of(job)
        for agent in agents:
            self.send(agent.identity, Connect(job=job.id, endpoints=job.endpoints))
        if job.checkpoint is None:
            for agent in agents:
                self.send(agent.identity, Start(job=job.id))
        else:
            for vnode, agent_name in job.placement.items():
                self.send(self.registry.agents[agent_name].identity,
                          Start(job=job.id, only=vnode, blob=job.checkpoint.snapshots[vnode]))
        if job.state is JobState.RECOVERING and job.recoveries:
            job.recoveries[-1]["restarted_s"] = self.wall() - job.recoveries[-1]["at"]
            self.log(f"coordinator: job {job.id} runs again (epoch {job.epoch}) from "
                     f"{'checkpoint ' + str(job.checkpoint.id) if job.checkpoint else 'its start'}")
        job.advance(JobState.RUNNING)
        job.reason = ""
        self.persist(job)

    # -- the end of a job ---------------------------------------------------------------------------------------
    def vnode_done(self, job: Job, m: VnodeDone) -> None:
        """A virtual node ran to its end (an adopting job's too: its agent held the report while the coordinator
        was away)."""
        if m.epoch != job.epoch or job.state not in (JobState.RUNNING, JobState.ADOPTING):
            return
        if m.vnode in job.results:
            return  # sent again after a re-registration
        job.results[m.vnode] = m.blob
        job.final[m.vnode] = {"state": VnodeState.DONE, "stats": m.stats or {}}
        if len(job.results) < len(job.plan.vnodes) or job.state is not JobState.RUNNING:
            self._write(lambda store: store.save_result(job, m.vnode), job)
        # else the job ends now, and its end writes this result with the others (not twice: a sink's result can be
        # tens of MB, and each write of it took ~0.4 s here)
        self._maybe_finished(job)

    def _maybe_finished(self, job: Job) -> None:
        if len(job.results) == len(job.plan.vnodes) and job.state is JobState.RUNNING:
            job.advance(JobState.FINISHED)
            job.finished = self.wall()
            self.log(f"coordinator: job {job.id} finished")
            self._end(job, JobDone(job=job.id, state=job.state, blob=cloudpickle.dumps(list(job.results.values()))))

    def vnode_failed(self, m: VnodeFailed) -> None:
        job = self.get(m.job)
        if job is None or not job.state.active or m.epoch != job.epoch:
            return
        reason = f"virtual node {m.vnode} failed: {m.error}"
        if m.operator is not None:  # a user function failed: it would fail again on the same records
            self.fail(job, reason, operator=m.operator, cause=m.cause)
        else:
            self.recover(job, reason)

    def agent_lost(self, agent: AgentInfo) -> None:
        for job in self:
            if job.state.active and agent.name in job.placement.values():
                self.recover(job, f"agent {agent.name} lost ({agent.down_reason})")

    # -- recovery -------------------------------------------------------------------------------------------------
    def recover(self, job: Job, reason: str, move: dict[str, Any] | None = None) -> None:
        """Restart every virtual node of `job` from its last completed checkpoint (or from the start), placed
        afresh on the live agents, in a new epoch; fail the job once its restarts are spent. `move`: the move the
        fault struck in the middle of (kept with the recovery, for status)."""
        if job.restarts >= job.max_restarts:
            self.fail(job, f"{reason} (after {job.restarts} restarts)" if job.restarts else reason)
            return
        job.restarts += 1
        job.epoch += 1
        job.advance(JobState.RECOVERING)
        job.reason = reason
        job.recoveries.append({"at": self.wall(), "reason": reason, "epoch": job.epoch,
                               "checkpoint": job.checkpoint.id if job.checkpoint else None,
                               **({"move": move} if move is not None else {})})
        self.log(f"coordinator: job {job.id} recovering (restart {job.restarts} of {job.max_restarts}, epoch "
                 f"{job.epoch}): {reason}")
        for agent in self.registry:
            if agent.up:  # the old hosts that are still there, wherever they are
                self.send(agent.identity, StopJob(job=job.id, before=job.epoch))
        if job.move is not None and job.move.client is not None:  # its client waits for a move that will not be
            self.send(job.move.client, Error(error=f"{job.move.mode} of {job.move.vnode} called off: job {job.id} "
                                                   f"is recovering ({reason})"))
        job.move, job.pending, job.adopt_until, job.moving = None, None, None, None
        self.release_waiting(job)  # requests held for a checkpoint that is gone: refused now, as recovering
        if job.results:
            self._write(lambda store: store.forget_results(job), job)
        job.results.clear()
        job.final.clear()
        job.endpoints.clear()
        job.sent.clear()
        if not self.place_again(job):
            self.persist(job)

    def place_again(self, job: Job) -> bool:
        """Place a recovering job on the live agents and deploy it; False if it cannot be placed yet (a pinned
        source's node is down, no agent has the backend): `retry` tries again."""
        try:
            placed = self.placer.place(job.plan, job.graph, self.registry.placement_view())
        except MicrostreamError as exc:
            job.reason = f"waiting to recover: {exc}"
            job.placement = {}
            return False
        job.placement = dict(placed.assignment)
        job.placement_quality = placed.quality
        job.reason = job.recoveries[-1]["reason"] if job.recoveries else ""
        self.persist(job)
        self._deploy(job)
        return True

    def retry(self) -> None:
        """Recovering jobs that could not be placed: try again (a node may be back). Adopting jobs whose hosts
        have not all come back within the grace period: recover them."""
        now = self.clock()
        for job in self:
            if job.state is JobState.RECOVERING and not job.placement:
                self.place_again(job)
            elif job.deploying_since is not None and job.state in (JobState.DEPLOYING, JobState.RECOVERING):
                self._check_deployment(job, now)
            elif job.state is JobState.ADOPTING and job.adopt_until is not None and now >= job.adopt_until:
                missing = [vn for vn in job.plan.vnodes if vn not in job.results and self._host_of(job, vn) is None]
                why = (f"a move of {job.moving} was under way" if job.moving else
                       f"{', '.join(missing)} did not come back within {self.grace:g} s")
                self.recover(job, f"the coordinator restarted and {why}")

    @staticmethod
    def release_waiting(job: Job) -> None:
        """What waited for the job's checkpoint (a move asked for meanwhile) goes ahead now."""
        waiting, job.waiting = job.waiting, []
        for resume in waiting:
            resume()

    def _check_deployment(self, job: Job, now: float) -> None:
        """Hosts that have not reported ready: say which in the job's reason; past the deadline of the slowest
        backend among them, start the deployment again (a recovery, which counts against the restarts)."""
        assert job.deploying_since is not None
        missing = [vn for vn in job.plan.vnodes if vn not in job.endpoints]
        if not missing:
            return
        waited = now - job.deploying_since
        limit = max(DEPLOY_TIMEOUT.get(job.plan.vnodes[vn].backend, DEPLOY_TIMEOUT["process"]) for vn in missing)
        where = ", ".join(f"{vn} ({job.plan.vnodes[vn].backend} on {job.placement.get(vn, '?')})" for vn in missing)
        if waited <= limit:
            job.reason = f"waiting {waited:.0f} s for {where} to start"
            return
        job.deploying_since = None
        self.recover(job, f"{where} did not start within {limit:.0f} s")

    def fence(self, agent: AgentInfo, vnodes: dict[str, Any]) -> None:
        """An agent reports hosts that must not run: of an epoch a recovery has replaced (the agent was frozen or
        cut off), of a job that has ended, or of one this coordinator does not know. Stop them."""
        for key, info in vnodes.items():
            job_id, _, vnode = key.partition("/")
            epoch = info.get("epoch")
            state = info.get("state", VnodeState.DONE)
            if epoch is None or VnodeState(state).over or state in (VnodeState.STOPPING, VnodeState.STOPPED):
                continue
            job = self.jobs.get(job_id)
            if job is None and (job_id in self.restoring or self.settling()):
                continue  # about to be restored from a replica (replicas.py), or the agent that holds one may be
            if job is None:
                ended = self.ended(job_id)
                what = f"job {job_id}, which has {ended.state}" if ended else "a job this coordinator does not know"
                self.log(f"coordinator: agent {agent.name} runs {key} of {what}: stopping it")
                self.send(agent.identity, StopJob(job=job_id, only=vnode))
            elif epoch < job.epoch:
                self.send(agent.identity, StopJob(job=job.id, only=vnode, before=job.epoch))

    def stop(self, identity: bytes, m: StopRequest) -> None:
        job = self.get(m.job)
        if job is None:
            ended = self.ended(m.job)
            if ended is None:
                self.send(identity, Error(error=f"no job '{m.job}' (see `microstream status`)"))
            else:
                self.send(identity, Stopped(job=ended.id, state=ended.state))
            return
        self.fail(job, "stopped by a client", state=JobState.STOPPED)
        self.send(identity, Stopped(job=job.id, state=job.state))

    def stop_all(self, reason: str) -> list[str]:
        """Stop every job that has not ended (the cluster shuts down); returns their ids."""
        stopped = []
        for job in self:
            self.fail(job, reason, state=JobState.STOPPED)
            stopped.append(job.id)
        return stopped

    def fail(self, job: Job, reason: str, state: JobState = JobState.FAILED, operator: str | None = None,
             cause: str | None = None) -> None:
        job.advance(state)
        job.reason = reason
        job.finished = self.wall()
        self.log(f"coordinator: job {job.id} {state}: {reason}")
        for agent in self.agents_of(job):
            self.send(agent.identity, StopJob(job=job.id))
        self._end(job, JobDone(job=job.id, state=state, reason=reason, operator=operator, cause=cause))

    def _end(self, job: Job, done: JobDone) -> None:
        """The job ended: persist its last status and result, tell whoever waits, and keep only its status (in
        the bounded history): the graph, the plan, the results and the traffic figures go."""
        status = self._status_of(job)
        end = {"operator": done.operator, "cause": done.cause}
        self._write(lambda store: store.end_job(job, status, end, done.blob), job)
        for client in job.watchers:
            self.send(client, done)
        self.jobs.pop(job.id, None)
        if self.on_end is not None:
            self.on_end(job)
        self.from_replica.pop(job.id, None)
        self.health.forget(job.id)
        self._faulty.pop(job.id, None)
        self.history[job.id] = EndedJob(job.id, str(job.state), job.reason, job.finished, status, end,
                                        result=done.blob if self.store is None else None)
        while len(self.history) > self.keep:
            old, _ = self.history.popitem(last=False)
            if self.forget is not None:
                self.forget(old)

    # -- clients that wait ----------------------------------------------------------------------------------------
    def watch(self, identity: bytes, m: Watch) -> None:
        """A client attaches to a job (again, after it lost its coordinator): `job_done` when it ends (at once if
        it has)."""
        job = self.get(m.job)
        if job is None and (m.job in self.restoring or self.may_restore()):  # a replica may be on its way
            self.restore_watchers.setdefault(m.job, set()).add(identity)
            self.send(identity, Watching(job=m.job, state=JobState.ADOPTING,
                                         reason="the coordinator restarted without its state: restoring the job "
                                                "from an agent's replica"))
            return
        if job is not None:
            job.watchers.add(identity)
            self.send(identity, Watching(job=job.id, state=job.state, reason=job.reason or None))
            return
        ended = self.ended(m.job, result=True)
        if ended is None:
            self.send(identity, Error(error=f"no job '{m.job}' (see `microstream status`)"))
            return
        reason = ended.reason or None
        if ended.state == JobState.FINISHED and ended.result is None:
            reason = "its result is no longer kept (only the newest jobs' are)"
        self.send(identity, JobDone(job=ended.id, state=ended.state, reason=reason,
                                    operator=ended.end.get("operator"), cause=ended.end.get("cause"),
                                    blob=ended.result))

    # -- a restarted coordinator ----------------------------------------------------------------------------------
    def restore(self) -> int:
        """Read back the jobs that had not ended (as adopting: their hosts are to report within `grace` seconds)
        and the newest ended ones; returns how many jobs are adopting."""
        if self.store is None:
            return 0
        for ended in self.store.history(self.keep):
            self.history[ended.id] = ended
        adopting = 0
        for stored in self.store.load():
            try:
                job = self._rebuild(stored)
            except Exception as exc:  # noqa: BLE001 - e.g. a job pickled against modules this machine lacks now
                self.log(f"coordinator: cannot restore job {stored.id}: {type(exc).__name__}: {exc}")
                continue
            self.jobs[job.id] = job
            if job.state is JobState.ADOPTING:
                adopting += 1
        if self.jobs:
            self.log(f"coordinator: restored {len(self.jobs)} jobs from {self.store.directory}; waiting up to "
                     f"{self.grace:g} s for the agents to report their hosts")
        return adopting

    def _rebuild(self, s: StoredJob) -> Job:
        spec = cloudpickle.loads(s.spec)
        info = s.info
        job = Job(s.id, s.name, spec["graph"], spec["plan"], dict(s.placement), submitted=s.submitted,
                  reason=s.reason, endpoints=dict(s.endpoints), pins=dict(info.get("pins", {})),
                  predicted=dict(info.get("predicted", {})), policy=self.placer.policy(),
                  placement_quality=dict(info.get("placement_quality", {})),
                  checkpoint_every=info.get("checkpoint_every"), max_restarts=int(info.get("max_restarts", 3)),
                  epoch=s.epoch, restarts=s.restarts, barriers=s.barriers + BARRIER_GAP,
                  checkpoints=list(info.get("checkpoints", [])), recoveries=list(info.get("recoveries", [])),
                  history=list(info.get("history", [])), moving=s.moving)
        job.blob = s.spec
        for vnode, (blob, final) in s.results.items():
            job.results[vnode] = blob
            job.final[vnode] = final
        if s.checkpoint is not None:
            job.checkpoint = Checkpoint(s.checkpoint.id, s.checkpoint.started, dict(s.checkpoint.snapshots),
                                        s.checkpoint.completed)
        if s.state == JobState.SUSPENDED:
            job.state = JobState.SUSPENDED  # nothing runs but upstream hosts holding records: nothing to adopt
        else:
            job.state = JobState.ADOPTING
            job.adopt_until = self.clock() + self.grace
            job.reason = "the coordinator restarted: waiting for the agents to report the job's hosts"
        return job

    def restore_replica(self, stored: StoredJob, holder: str) -> Job:
        """A job this coordinator did not know (it started without its state), from a checkpoint's replica on agent
        `holder` (`replicas.py`): adopting, as after a restart with the state directory, in the newest epoch its
        hosts report; adopted where it runs if they all report, else recovered from the replica's checkpoint after
        the grace period (`retry`)."""
        job = self._rebuild(stored)  # adopting, as after a restart with the state directory
        job.watchers |= self.restore_watchers.pop(job.id, set())
        # a recovery after the replica's checkpoint started a newer epoch: its hosts are the job's now
        reported = [int(info.get("epoch") or 0) for agent in self.registry for key, info in agent.vnodes.items()
                    if key.partition("/")[0] == job.id]
        job.epoch = max([job.epoch, *reported])
        checkpoint = job.checkpoint
        where = f"the replica of checkpoint {checkpoint.id if checkpoint else '?'} on agent {holder}"
        job.reason = f"the coordinator restarted without its state: restored from {where}; waiting for the agents " \
                     "to report the job's hosts"
        self.from_replica[job.id] = {"agent": holder, "checkpoint": checkpoint.id if checkpoint else None}
        self.jobs[job.id] = job
        self.persist(job, spec=True)
        if checkpoint is not None:
            self.persist_checkpoint(job, checkpoint)
        self.log(f"coordinator: job {job.id} restored from {where}")
        for m in self.early_done.pop(job.id, []):  # hosts that finished while no coordinator knew the job
            self.vnode_done(job, m)
        self.adopt()  # where it runs, if all its hosts are there; else it recovers from the checkpoint after `grace`
        return job

    def done_unknown(self, m: VnodeDone) -> None:
        """A virtual node of a job this coordinator does not know finished: kept if the job is to be restored."""
        if m.job in self.restoring:
            self.early_done.setdefault(m.job, []).append(m)

    def not_restored(self, job_id: str, why: str) -> None:
        """No replica of `job_id` could be used: clients that wait for it are told."""
        self.restoring.discard(job_id)
        self.early_done.pop(job_id, None)
        for client in self.restore_watchers.pop(job_id, set()):
            self.send(client, Error(error=f"no job '{job_id}': {why}"))

    def agent_registered(self, agent: AgentInfo) -> None:
        """An agent (re-)registered with the hosts it runs: stop those that must not run, adopt what it can."""
        self.fence(agent, agent.vnodes)
        self.adopt()

    def adopt(self) -> None:
        """Every adopting job whose hosts have all reported, running (or done) in its epoch, runs again."""
        for job in self:
            if job.state is not JobState.ADOPTING or job.moving:
                continue
            found = {}
            for vnode in job.plan.vnodes:
                if vnode in job.results:
                    continue
                host = self._host_of(job, vnode)
                if host is None or (job.id in self.from_replica and host[1].get("state") == VnodeState.DONE):
                    break  # (a restored job's host that finished without its result reaching this coordinator)
                found[vnode] = host
            else:
                self._adopted(job, found)

    def _host_of(self, job: Job, vnode: str) -> tuple[AgentInfo, dict[str, Any]] | None:
        """The live agent that runs `vnode` of `job` in its epoch, running or done, with what it reports."""
        key = f"{job.id}/{vnode}"
        for agent in self.registry:
            info = agent.vnodes.get(key) if agent.up else None
            if (info is not None and info.get("epoch") == job.epoch
                    and info.get("state") in (VnodeState.RUNNING, VnodeState.DONE)):
                return agent, info
        return None

    def _adopted(self, job: Job, found: dict[str, tuple[AgentInfo, dict[str, Any]]]) -> None:
        for vnode, (agent, info) in found.items():
            job.placement[vnode] = agent.name
            if info.get("endpoint"):  # re-learned: what a later move or recovery connects to
                job.endpoints[vnode] = {"endpoint": info["endpoint"], "public_key": info.get("public_key")}
        job.advance(JobState.RUNNING)
        job.adopt_until = None
        job.reason = ""
        self.log(f"coordinator: job {job.id} adopted: every host reported in epoch {job.epoch} ("
                 + ", ".join(f"{v}->{a}" for v, a in sorted(job.placement.items())) + ")")
        self.persist(job)
        self._maybe_finished(job)

    # -- traffic and status -------------------------------------------------------------------------------------
    def measure_traffic(self, vnodes: dict[str, Any], now: float) -> None:
        """Bytes/s between virtual nodes, from the channel byte counters hosts report in heartbeats (and what the
        channels say about their progress, for the job's health)."""
        for key, info in vnodes.items():
            job_id, _, vnode = key.partition("/")
            job = self.jobs.get(job_id)
            if (job is None or info.get("state") in (VnodeState.MIGRATED, VnodeState.DONE, VnodeState.FAILED)
                    or info.get("epoch", job.epoch) != job.epoch):
                continue
            self.health.observe(job.id, job.epoch, vnode, info.get("stats", {}), now)
            per_dst: dict[str, int] = {}
            for ch in info.get("stats", {}).get("channels", {}).values():
                if "to" in ch:
                    per_dst[ch["to"]] = per_dst.get(ch["to"], 0) + int(ch.get("sent_bytes", 0))
            for dst, total in per_dst.items():
                last = job.sent.get((vnode, dst))
                job.sent[(vnode, dst)] = (total, now)
                if last is None or total < last[0] or now <= last[1]:
                    continue  # first sight, or a new host whose counters restarted
                rate = (total - last[0]) / (now - last[1])
                old = job.traffic.get((vnode, dst))
                job.traffic[(vnode, dst)] = rate if old is None else 0.5 * old + 0.5 * rate

    @staticmethod
    def link_traffic(job: Job) -> list[dict[str, Any]]:
        """Measured bytes/s per pair of virtual nodes, with the nodes they run on."""
        rows = []
        for (src, dst), rate in sorted(job.traffic.items()):
            a, b = job.placement.get(src), job.placement.get(dst)
            rows.append({"from": src, "to": dst, "from_node": a, "to_node": b, "bytes_per_s": rate,
                         "crosses_link": a != b})
        return rows

    def status(self) -> dict[str, dict[str, Any]]:
        """Every job that has not ended, and the ended ones in the history (newest last)."""
        jobs = {job_id: ended.status for job_id, ended in self.history.items()}
        jobs.update((job.id, self._status_of(job)) for job in self)
        return jobs

    def status_of(self, job_id: str) -> dict[str, Any] | None:
        """One job's status (an ended one from the store too); None if there is no such job."""
        job = self.get(job_id)
        if job is not None:
            return self._status_of(job)
        ended = self.ended(job_id)
        return ended.status if ended is not None else None

    def _live(self, job: Job, vnode: str) -> dict[str, Any]:
        """What the host running `vnode` of `job` now reported last (empty: none does)."""
        agent = self.registry.get(job.placement.get(vnode))
        live = agent.vnodes.get(f"{job.id}/{vnode}", {}) if agent is not None else {}
        if live.get("state") == VnodeState.MIGRATED or live.get("epoch", job.epoch) != job.epoch:
            return {}  # moved away, or a host a recovery replaced: not what runs this vnode now
        return live

    def health_of(self, job: Job) -> dict[str, Any] | None:
        """Is the running `job` moving (`health.JobHealth.verdict`), from what its hosts still running reported."""
        if job.state != JobState.RUNNING:
            return None
        running = {vn: live.get("stats", {}) for vn in job.placement if vn not in job.final
                   and (live := self._live(job, vn)).get("state") == VnodeState.RUNNING}
        return self.health.verdict(job.id, job.epoch, running, job.placement)

    def health_changes(self) -> list[tuple[Job, str]]:
        """Running jobs that have just stalled (or whose hosts went silent), or moved again after that: (job, what
        to tell whoever waits for it). Backpressure alone is a slow consumer, not news."""
        news = []
        for job in self:
            verdict = self.health_of(job)
            state = verdict["state"] if verdict else None
            since = self._faulty.get(job.id)
            if state in ("stalled", "unknown") and since is None:
                self._faulty[job.id] = self.clock()
                news.append((job, f"{verdict['line']} (microstream status {job.id})" if verdict else ""))
            elif state not in ("stalled", "unknown") and since is not None:
                del self._faulty[job.id]
                if state is not None:
                    news.append((job, f"moving again after {self.clock() - since:.0f} s ({state})"))
        return news

    def _status_of(self, job: Job) -> dict[str, Any]:
        vnodes = {}
        for vn, agent_name in job.placement.items():
            live = job.final.get(vn, self._live(job, vn))
            stats = live.get("stats", {})
            vnodes[vn] = {"agent": agent_name, "tasks": job.plan.vnodes[vn].tasks, "state": live.get("state"),
                          "pid": live.get("pid"), "operators": stats.get("operators", {}),
                          "dead_letters": stats.get("dead_letters", 0), "dead_recent": stats.get("dead_recent", []),
                          "backpressure_s": sum(c.get("blocked_seconds", 0.0)
                                                for c in stats.get("channels", {}).values())}
            if "vm" in stats:  # a microvm host: how its VM started (from the template or cold, and why), its memory
                vnodes[vn]["vm"] = stats["vm"]
        return {"name": job.name, "state": job.state, "reason": job.reason, "vnodes": vnodes,
                "migrations": job.history, "traffic": self.link_traffic(job), "pins": job.pins,
                "predicted_traffic": job.predicted, "placement_quality": job.placement_quality,
                "epoch": job.epoch, "restarts": job.restarts,
                "checkpoints": job.checkpoints, "recoveries": job.recoveries, "submitted": job.submitted,
                "finished": job.finished, "dag": dag_of(job), "restored_from": self.from_replica.get(job.id),
                "health": self.health_of(job)}

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (the ended ones in the history)."""
        states: dict[str, int] = {}
        for state in [job.state for job in self] + [ended.state for ended in self.history.values()]:
            states[state] = states.get(state, 0) + 1
        return states


def _checkpoint_every(graph: LogicalGraph, log: Callable[[str], None]) -> float | None:
    """The job's checkpoint interval, or None when a source cannot say where it is (a generator given to
    `from_iterable`): recovery then restarts the job from its start."""
    nodes = list(getattr(graph, "nodes", {}).values())
    stuck = [n.name for n in nodes if n.op.polled and not getattr(n.op, "checkpointable", True)]
    if stuck and getattr(graph, "checkpoint_every", None) is not None:
        log(f"coordinator: job {graph.name} takes no checkpoints: source(s) {stuck} cannot be read again from one "
            "(pass a list, or a function returning an iterable)")
        return None
    vms = [n.name for n in nodes if getattr(n, "backend", "process") == "microvm"]
    if vms and getattr(graph, "checkpoint_every", None) is not None:  # not built for microVM hosts yet
        log(f"coordinator: job {graph.name} takes no checkpoints: {vms} run in microVMs (docs/faults.md)")
        return None
    return getattr(graph, "checkpoint_every", 10.0)


def dag_of(job: Job) -> dict[str, Any] | None:
    """The job's operators and edges as plain data (the web console draws them): each operator with its tasks,
    each edge marked `side` when it carries late records or dead letters (those, into the dead-letter hub, are
    the plan's: every operator that may refuse a record has one). None if the graph cannot be described."""
    from ..operators.base import DEAD
    from ..viz.pipeline import drawing

    try:
        nodes, edges = drawing(job.graph)
        tasks = {str(n.id): [t.id for t in job.plan.tasks_of(n.id)] for n in job.graph.topo_order()}
        dead = [{"src": str(e.src_node), "dst": str(e.dst_node), "label": "", "side": True}
                for e in job.plan.edges if e.src_port == DEAD]
    except Exception:  # noqa: BLE001 - a picture that cannot be drawn must never cost the job its status
        return None
    return {"nodes": [{"id": n.id, "name": n.label, "detail": n.detail, "kind": n.kind, "tasks": tasks[n.id]}
                      for n in nodes],
            "edges": [{"src": e.src, "dst": e.dst, "label": e.label, "side": e.style != "solid"} for e in edges]
            + dead}
