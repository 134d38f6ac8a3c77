"""The coordinator's job lifecycle: submit (plan and place), the two-phase deployment (hosts report their
endpoints, then everyone gets the full map and starts), results as virtual nodes finish, recovery (a host
failed or an agent was lost: every virtual node is placed again and restarts from the last checkpoint, in a new
epoch), failure (a user function failed, or the restarts are spent), a client's stop, measured traffic, and
each job's status.

Fencing: every deployment of a job has an epoch; what a host of an older epoch reports is ignored, and its
agent is told to stop it.

States and their transitions are `states.JobState`; a move of one virtual node is `moves.py`'s business.
No sockets here: the coordinator hands in decoded messages and a `send(identity, message)`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from ..core.errors import MicrostreamError
from ..graph.logical import LogicalGraph
from ..graph.physical import build_plan
from ..runtime.protocol import Connect, Message, Start
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
)
from .model import Job
from .placing import Placer
from .registry import AgentInfo, AgentRegistry
from .states import JobState, VnodeState

Send = Callable[[bytes, Message], None]


class JobLifecycle:
    def __init__(self, registry: AgentRegistry, send: Send, placer: Placer, log: Callable[[str], None] = print,
                 wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.send = send
        self.placer = placer
        self.log = log
        self.wall = wall
        self.jobs: dict[str, Job] = {}

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs.values())

    def get(self, job_id: str | None) -> Job | None:
        return self.jobs.get(job_id or "")

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
        job = Job(job_id, graph.name, graph, plan, placed.assignment, identity if m.wait else None,
                  submitted=self.wall(), predicted=placed.predicted, pins=placed.pins, policy=self.placer.policy(),
                  checkpoint_every=getattr(graph, "checkpoint_every", 10.0),
                  max_restarts=getattr(graph, "max_restarts", 3))
        job.blob = cloudpickle.dumps({"graph": graph, "plan": plan, "credits": m.credits})
        self.jobs[job_id] = job
        self._deploy(job)
        self.send(identity, Accepted(job=job_id, placement=placed.assignment))
        self.log(f"coordinator: job {job_id} placed: " + ", ".join(f"{v}->{a}" for v, a in placed.assignment.items()))
        return job

    def _deploy(self, job: Job) -> None:
        """Phase one: a host for every virtual node, on the agent the placement chose."""
        restoring = job.checkpoint is not None
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

    # -- the end of a job ---------------------------------------------------------------------------------------
    def vnode_done(self, job: Job, m: VnodeDone) -> None:
        if m.epoch != job.epoch or job.state is not JobState.RUNNING:
            return
        job.results[m.vnode] = m.blob
        job.final[m.vnode] = {"state": VnodeState.DONE, "stats": m.stats or {}}
        if len(job.results) == len(job.plan.vnodes) and job.state is JobState.RUNNING:
            job.advance(JobState.FINISHED)
            job.finished = self.wall()
            self.log(f"coordinator: job {job.id} finished")
            if job.client is not None:
                self.send(job.client, JobDone(job=job.id, state=job.state,
                                              blob=cloudpickle.dumps(list(job.results.values()))))

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
        for job in self.jobs.values():
            if job.state.active and agent.name in job.placement.values():
                self.recover(job, f"agent {agent.name} lost ({agent.down_reason})")

    # -- recovery -------------------------------------------------------------------------------------------------
    def recover(self, job: Job, reason: str) -> None:
        """Restart every virtual node of `job` from its last completed checkpoint (or from the start), placed
        afresh on the live agents, in a new epoch; fail the job once its restarts are spent."""
        if job.restarts >= job.max_restarts:
            self.fail(job, f"{reason} (after {job.restarts} restarts)" if job.restarts else reason)
            return
        job.restarts += 1
        job.epoch += 1
        job.advance(JobState.RECOVERING)
        job.reason = reason
        job.recoveries.append({"at": self.wall(), "reason": reason, "epoch": job.epoch,
                               "checkpoint": job.checkpoint.id if job.checkpoint else None})
        self.log(f"coordinator: job {job.id} recovering (restart {job.restarts} of {job.max_restarts}, epoch "
                 f"{job.epoch}): {reason}")
        for agent in self.registry:
            if agent.up:  # the old hosts that are still there, wherever they are
                self.send(agent.identity, StopJob(job=job.id, before=job.epoch))
        job.move, job.pending, job.waiting = None, None, []
        job.results.clear()
        job.final.clear()
        job.endpoints.clear()
        job.sent.clear()
        self.place_again(job)

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
        job.reason = job.recoveries[-1]["reason"] if job.recoveries else ""
        self._deploy(job)
        return True

    def retry(self) -> None:
        """Recovering jobs that could not be placed: try again (a node may be back)."""
        for job in self.jobs.values():
            if job.state is JobState.RECOVERING and not job.placement:
                self.place_again(job)

    def fence(self, agent: AgentInfo, vnodes: dict[str, Any]) -> None:
        """An agent reports hosts of an epoch a recovery has replaced (it was frozen or cut off): stop them."""
        for key, info in vnodes.items():
            job = self.jobs.get(key.partition("/")[0])
            epoch = info.get("epoch")
            if job is None or epoch is None or epoch >= job.epoch or VnodeState(info.get("state", "done")).over:
                continue
            self.send(agent.identity, StopJob(job=job.id, only=key.partition("/")[2], before=job.epoch))

    def stop(self, identity: bytes, m: StopRequest) -> None:
        job = self.get(m.job)
        if job is None:
            self.send(identity, Error(error=f"no job '{m.job}' (see `microstream status`)"))
            return
        if job.state.active:
            self.fail(job, "stopped by a client", state=JobState.STOPPED)
        self.send(identity, Stopped(job=job.id, state=job.state))

    def fail(self, job: Job, reason: str, state: JobState = JobState.FAILED, operator: str | None = None,
             cause: str | None = None) -> None:
        job.advance(state)
        job.reason = reason
        job.finished = self.wall()
        self.log(f"coordinator: job {job.id} {state}: {reason}")
        for agent in self.agents_of(job):
            self.send(agent.identity, StopJob(job=job.id))
        if job.client is not None:
            self.send(job.client, JobDone(job=job.id, state=state, reason=reason, operator=operator, cause=cause))

    # -- traffic and status -------------------------------------------------------------------------------------
    def measure_traffic(self, vnodes: dict[str, Any], now: float) -> None:
        """Bytes/s between virtual nodes, from the channel byte counters hosts report in heartbeats."""
        for key, info in vnodes.items():
            job_id, _, vnode = key.partition("/")
            job = self.jobs.get(job_id)
            if (job is None or info.get("state") in (VnodeState.MIGRATED, VnodeState.DONE, VnodeState.FAILED)
                    or info.get("epoch", job.epoch) != job.epoch):
                continue
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
        jobs = {}
        for job in self.jobs.values():
            vnodes = {}
            for vn, agent_name in job.placement.items():
                agent = self.registry.get(agent_name)
                live = agent.vnodes.get(f"{job.id}/{vn}", {}) if agent is not None else {}
                if live.get("state") == VnodeState.MIGRATED or live.get("epoch", job.epoch) != job.epoch:
                    live = {}  # moved away, or a host a recovery replaced: not what runs this vnode now
                live = job.final.get(vn, live)
                vnodes[vn] = {"agent": agent_name, "tasks": job.plan.vnodes[vn].tasks, "state": live.get("state"),
                              "pid": live.get("pid"), "operators": live.get("stats", {}).get("operators", {})}
            jobs[job.id] = {"name": job.name, "state": job.state, "reason": job.reason, "vnodes": vnodes,
                            "migrations": job.history, "traffic": self.link_traffic(job), "pins": job.pins,
                            "predicted_traffic": job.predicted, "epoch": job.epoch, "restarts": job.restarts,
                            "checkpoints": job.checkpoints, "recoveries": job.recoveries}
        return jobs

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        states: dict[str, int] = {}
        for job in self.jobs.values():
            states[job.state] = states.get(job.state, 0) + 1
        return states
