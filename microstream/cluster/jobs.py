"""The coordinator's job lifecycle: submit (plan and place), the two-phase deployment (hosts report their
endpoints, then everyone gets the full map and starts), results as virtual nodes finish, failure (a host
failed, an agent was lost), a client's stop, measured traffic, and each job's status.

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
                  submitted=self.wall(), predicted=placed.predicted, pins=placed.pins, policy=self.placer.policy())
        job.blob = cloudpickle.dumps({"graph": graph, "plan": plan, "credits": m.credits})
        self.jobs[job_id] = job
        for vnode, agent_name in placed.assignment.items():
            self.send(self.registry.agents[agent_name].identity,
                      Deploy(job=job_id, vnode=vnode, blob=job.blob, data_keys=self.registry.data_keys(),
                             backend=plan.vnodes[vnode].backend))
        self.send(identity, Accepted(job=job_id, placement=placed.assignment))
        self.log(f"coordinator: job {job_id} placed: " + ", ".join(f"{v}->{a}" for v, a in placed.assignment.items()))
        return job

    def vnode_ready(self, job: Job, m: VnodeReady) -> None:
        """Phase one of the deployment: collect endpoints; with all of them, phase two: connect and start."""
        if job.state is not JobState.DEPLOYING:
            return
        job.endpoints[m.vnode] = m.peer()
        if len(job.endpoints) < len(job.plan.vnodes):
            return
        agents = self.agents_of(job)
        for agent in agents:
            self.send(agent.identity, Connect(job=job.id, endpoints=job.endpoints))
        for agent in agents:
            self.send(agent.identity, Start(job=job.id))
        job.advance(JobState.RUNNING)

    # -- the end of a job ---------------------------------------------------------------------------------------
    def vnode_done(self, job: Job, m: VnodeDone) -> None:
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
        if job is not None and job.state.active:
            self.fail(job, f"virtual node {m.vnode} failed: {m.error}", operator=m.operator, cause=m.cause)

    def agent_lost(self, agent: AgentInfo) -> None:
        for job in self.jobs.values():
            if job.state.active and agent.name in job.placement.values():
                self.fail(job, f"agent {agent.name} lost ({agent.down_reason})")

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
            if job is None or info.get("state") in (VnodeState.MIGRATED, VnodeState.DONE, VnodeState.FAILED):
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
                if live.get("state") == VnodeState.MIGRATED:
                    live = {}
                live = job.final.get(vn, live)
                vnodes[vn] = {"agent": agent_name, "tasks": job.plan.vnodes[vn].tasks, "state": live.get("state"),
                              "operators": live.get("stats", {}).get("operators", {})}
            jobs[job.id] = {"name": job.name, "state": job.state, "reason": job.reason, "vnodes": vnodes,
                            "migrations": job.history, "traffic": self.link_traffic(job), "pins": job.pins,
                            "predicted_traffic": job.predicted}
        return jobs

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        states: dict[str, int] = {}
        for job in self.jobs.values():
            states[job.state] = states.get(job.state, 0) + 1
        return states
