"""The coordinator: registers agents, plans and places jobs, deploys their virtual nodes, watches
heartbeats, and answers clients (submit, status, stop).

One ROUTER socket serves agents and clients alike; with keys it is a CURVE server that accepts
only trusted public keys, so nobody else can reach the code that unpickles jobs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from ..core.errors import MicrostreamError
from ..graph.logical import LogicalGraph
from ..graph.physical import PhysicalPlan, build_plan
from ..placement.policy import Policy, PolicyParams, link_cost_uniform
from ..runtime.protocol import ControlMessage, msg

AGENT_TIMEOUT = 3.0
DEFAULT_POLICY = PolicyParams()


@dataclass
class AgentInfo:
    name: str
    identity: bytes
    caps: dict[str, Any]
    labels: dict[str, str]
    public_key: str | None
    metrics_port: int | None
    last_seen: float = field(default_factory=time.monotonic)
    up: bool = True
    vnodes: dict[str, Any] = field(default_factory=dict)
    down_reason: str = ""


@dataclass
class Migration:
    """One virtual node on the move: `migrate` (to another agent), `save` (to a file) or `restore`."""

    vnode: str
    mode: str                      # migrate | save | restore
    source: str | None             # agent it leaves (None for a restore)
    target: str | None             # agent it goes to (None for a save)
    barrier: int
    client: bytes | None
    snapshot: bytes | None = None
    endpoint: dict | None = None
    paused_at: float = 0.0
    paused_wall: float = 0.0
    started: float = field(default_factory=time.monotonic)
    reason: str = "requested"
    resuming: bool = False
    snapshot_at: float = 0.0
    whole: bool = False            # tier 2: a microVM moved whole by QEMU's migration stream
    incoming: str | None = None    # where the new host's QEMU waits for that stream
    vm_figures: dict | None = None


@dataclass
class Job:
    id: str
    name: str
    graph: LogicalGraph
    plan: PhysicalPlan
    placement: dict[str, str]                      # vnode -> agent name
    client: bytes | None
    state: str = "deploying"                       # deploying | running | finished | failed | stopped
    reason: str = ""
    endpoints: dict[str, dict] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    blob: bytes = b""
    migration: Migration | None = None
    barriers: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    pins: dict[str, str] = field(default_factory=dict)          # vnode -> node its sensor is attached to
    traffic: dict[tuple[str, str], float] = field(default_factory=dict)   # (vnode, vnode) -> bytes/s measured
    sent: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # last (bytes, time) seen
    policy: Policy | None = None
    predicted: dict[str, float] = field(default_factory=dict)  # link "a–b" -> bytes/s, from the placement engine
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # vnode -> last state and stats once done


class Coordinator:
    def __init__(self, bind: str = "tcp://127.0.0.1:7077", keys: Any = None, trusted: dict[bytes, str] | None = None,
                 metrics_port: int | None = 0, agent_timeout: float = AGENT_TIMEOUT, log=print,
                 policy: PolicyParams | None = DEFAULT_POLICY, topology: Any = None) -> None:
        self.bind = bind
        self.keys = keys
        self.trusted = dict(trusted or {})
        self.agent_timeout = agent_timeout
        self.move_timeout = 60.0
        self.policy_params = policy             # None: never move virtual nodes on its own
        self.topology = topology                # placement.Topology from a file, or None (agents only)
        self._next_policy = 0.0
        self.log = log
        self.agents: dict[str, AgentInfo] = {}
        self.jobs: dict[str, Job] = {}
        self.metrics_port = metrics_port
        self.metrics = None
        self._stop = False
        self._rr = itertools.count()

    # -- sockets ------------------------------------------------------------------------------------
    def open(self) -> str:
        self.ctx = zmq.Context()
        self.auth = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 500
        if self.keys is not None:
            from .security import Authenticator, curve_server

            self.auth = Authenticator(self.ctx, self.trusted).start()
            curve_server(self.sock, self.keys, authenticator=self.auth)  # refuses to run without the ZAP check
        self.sock.bind(self.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.metrics_port is not None:
            from .metrics import Metrics, serve

            self.metrics = Metrics()
            self._metrics_server, self.metrics_port = serve(self.metrics, host="0.0.0.0", port=self.metrics_port)
        return self.endpoint

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.up:
                self._send(agent.identity, msg("shutdown"))
        self.sock.close(linger=200)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        if getattr(self, "_metrics_server", None) is not None:
            self._metrics_server.stop()

    def _send(self, identity: bytes, message: ControlMessage) -> None:
        self.sock.send_multipart([identity, *message.frames()])

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> None:
        if not hasattr(self, "sock"):
            self.open()
        try:
            while not self._stop:
                self.sock.poll(200)
                while self.sock.poll(0):  # every waiting message before the periodic checks
                    frames = self.sock.recv_multipart()
                    try:
                        self._on_message(frames[0], ControlMessage.parse(frames[1:]))
                    except Exception as exc:  # noqa: BLE001 - one bad message must not stop the cluster
                        self.log(f"coordinator: error handling a message: {type(exc).__name__}: {exc}")
                self._check_agents()
                self._check_moves()
                self._check_policy()
                self._update_metrics()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop = True

    def _on_message(self, identity: bytes, m: ControlMessage) -> None:
        handler = getattr(self, f"_on_{m.kind}", None)
        if handler is None:
            self._send(identity, msg("error", error=f"unknown request '{m.kind}'"))
            return
        handler(identity, m)

    # -- agents -----------------------------------------------------------------------------------------
    def _on_register(self, identity: bytes, m: ControlMessage) -> None:
        h = m.header
        caps = {k: h.get(k) for k in ("cores", "memory", "arch", "backends", "python")}
        info = AgentInfo(h["name"], identity, caps, h.get("labels", {}), h.get("public_key"), h.get("metrics_port"))
        self.agents[info.name] = info
        self._send(identity, msg("registered", data_keys=self._data_keys()))
        self.log(f"coordinator: agent {info.name} registered ({caps['cores']} cores, {caps['arch']})")

    def _data_keys(self) -> list[str]:
        return [a.public_key for a in self.agents.values() if a.public_key and a.up]

    def _on_heartbeat(self, identity: bytes, m: ControlMessage) -> None:
        agent = self.agents.get(m.header["name"])
        if agent is None or agent.identity != identity:
            self._send(identity, msg("error", error="unknown agent: register first"))
            return
        now = time.monotonic()
        vnodes = m.header.get("vnodes", {})
        _add_rates(agent.vnodes, vnodes, now - agent.last_seen)
        self._measure_traffic(vnodes, now)
        agent.last_seen = now
        agent.vnodes = vnodes
        if not agent.up:
            agent.up = True
            self.log(f"coordinator: agent {agent.name} is back")

    def _measure_traffic(self, vnodes: dict[str, Any], now: float) -> None:
        """Bytes/s between virtual nodes, from the channel byte counters hosts report."""
        for key, info in vnodes.items():
            job_id, _, vnode = key.partition("/")
            job = self.jobs.get(job_id)
            if job is None or info.get("state") in ("migrated", "done", "failed"):
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

    def link_traffic(self, job: Job) -> list[dict[str, Any]]:
        """Measured bytes/s per pair of virtual nodes, with the nodes they run on."""
        rows = []
        for (src, dst), rate in sorted(job.traffic.items()):
            a, b = job.placement.get(src), job.placement.get(dst)
            rows.append({"from": src, "to": dst, "from_node": a, "to_node": b, "bytes_per_s": rate,
                         "crosses_link": a != b})
        return rows

    def _check_policy(self) -> None:
        if self.policy_params is None or time.monotonic() < self._next_policy:
            return
        self._next_policy = time.monotonic() + self.policy_params.every
        live = [a.name for a in self.agents.values() if a.up]
        for job in self.jobs.values():
            if job.state != "running" or job.migration is not None or job.policy is None:
                continue
            placement = {v: n for v, n in job.placement.items() if v not in job.results}
            sizes = {h["vnode"]: float(h.get("state_bytes", 0) or 1_000_000) for h in job.history}
            link_cost = self.topology.link_cost() if self.topology is not None else link_cost_uniform
            proposal = job.policy.evaluate(time.monotonic(), placement, job.traffic, live, job.pins, sizes,
                                           link_cost)
            if proposal is None:
                continue
            self.log(f"coordinator: re-placing {job.id}/{proposal.vnode} {proposal.source} -> {proposal.target}: "
                     f"saves {proposal.gain:,.0f} B/s of cross-node traffic ({proposal.before:,.0f} -> "
                     f"{proposal.after:,.0f})")
            job.barriers += 1
            job.migration = Migration(proposal.vnode, "migrate", proposal.source, proposal.target, job.barriers, None)
            job.migration.reason = f"auto: saves {proposal.gain:,.0f} B/s"
            job.policy.moved(proposal.vnode, time.monotonic())
            self._deploy_new_host(job, job.migration)

    def _check_agents(self) -> None:
        now = time.monotonic()
        for agent in self.agents.values():
            if agent.up and now - agent.last_seen > self.agent_timeout:
                agent.up = False
                agent.down_reason = f"no heartbeat for {now - agent.last_seen:.1f} s"
                self.log(f"coordinator: agent {agent.name} lost ({agent.down_reason})")
                for job in self.jobs.values():
                    if job.state in ("deploying", "running") and agent.name in job.placement.values():
                        self._fail(job, f"agent {agent.name} lost ({agent.down_reason})")

    # -- jobs -------------------------------------------------------------------------------------------
    def _on_submit(self, identity: bytes, m: ControlMessage) -> None:
        try:
            graph: LogicalGraph = m.payload()
            plan = build_plan(graph)
            placement, predicted, pins = self._place(plan, graph)
        except MicrostreamError as exc:
            self._send(identity, msg("rejected", error=str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a job pickled against modules this machine lacks
            self._send(identity, msg("rejected", error=f"cannot load the job: {type(exc).__name__}: {exc}"))
            return
        job_id = f"{graph.name}-{uuid.uuid4().hex[:6]}"
        job = Job(job_id, graph.name, graph, plan, placement, identity if m.header.get("wait") else None)
        self.jobs[job_id] = job
        blob = cloudpickle.dumps({"graph": graph, "plan": plan, "credits": m.header.get("credits", 8)})
        job.blob = blob
        job.predicted = predicted
        job.pins = pins
        if self.policy_params is not None:
            job.policy = Policy(self.policy_params)
        for vnode, agent_name in placement.items():
            agent = self.agents[agent_name]
            self._send(agent.identity, ControlMessage("deploy", {
                "job": job_id, "vnode": vnode, "data_keys": self._data_keys(),
                "backend": plan.vnodes[vnode].backend}, blob))
        self._send(identity, msg("accepted", job=job_id, placement=placement))
        self.log(f"coordinator: job {job_id} placed: " + ", ".join(f"{v}->{a}" for v, a in placement.items()))

    def _place(self, plan: PhysicalPlan, graph: LogicalGraph
               ) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
        """The placement engine over the live agents (and the topology file, if any): pins from `at=` and
        sensors, required backends, node capacity, traffic per link. Returns the assignment, the predicted
        bytes/s per link and the pinned vnodes (vnode -> node: the re-placement policy leaves them there)."""
        from ..placement import place_on_agents

        if not any(a.up for a in self.agents.values()):
            raise MicrostreamError("no agents are up: start one with `microstream agent` or `microstream cluster up`")
        agents = {a.name: {**a.caps, "labels": a.labels, "up": a.up} for a in self.agents.values()}
        placement = place_on_agents(plan, graph, agents, topology=self.topology)
        if not placement.feasible:
            self.log(f"coordinator: no placement fits every node's capacity; using the least overloaded one "
                     f"({'; '.join(placement.cost.reasons)})")
        problem = placement.problem
        pins = {vn: problem.nodes[int(n)] for vn, n in zip(problem.vnodes, problem.pinned, strict=True) if n >= 0}
        return dict(placement.assignment), dict(placement.cost.link_traffic), pins

    def _on_vnode_ready(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header["job"])
        mig = job.migration if job is not None else None
        if mig is not None and m.header["vnode"] == mig.vnode and self._agent_of(identity) == mig.target:
            mig.endpoint = {"endpoint": m.header["endpoint"], "public_key": m.header.get("public_key")}
            mig.incoming = m.header.get("incoming")
            if mig.mode == "migrate":
                self._cut(job, mig)
            else:  # restore: the state is already here
                self._resume(job, mig)
            return
        if job is None or job.state != "deploying":
            return
        job.endpoints[m.header["vnode"]] = {"endpoint": m.header["endpoint"], "public_key": m.header.get("public_key")}
        if len(job.endpoints) == len(job.plan.vnodes):
            for agent_name in set(job.placement.values()):
                self._send(self.agents[agent_name].identity, msg("connect", job=job.id, endpoints=job.endpoints))
            for agent_name in set(job.placement.values()):
                self._send(self.agents[agent_name].identity, msg("start", job=job.id))
            job.state = "running"

    def _on_vnode_done(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header["job"])
        if job is None:
            return
        mig = job.migration
        if mig is not None and mig.vnode == m.header["vnode"]:
            if mig.resuming:  # it moved, and had nothing left to process
                self._finish_move(job, mig, {"downtime_s": None, "state_bytes": len(mig.snapshot or b"")})
            elif mig.mode != "restore":
                self._call_off(job, mig, "the virtual node finished before it could move")
        job.results[m.header["vnode"]] = m.blob
        job.final[m.header["vnode"]] = {"state": "done", "stats": m.header.get("stats") or {}}
        if len(job.results) == len(job.plan.vnodes) and job.state == "running":
            job.state = "finished"
            job.finished = time.time()
            self.log(f"coordinator: job {job.id} finished")
            if job.client is not None:
                self._send(job.client, ControlMessage("job_done", {"job": job.id, "state": job.state},
                                                      cloudpickle.dumps(list(job.results.values()))))

    # -- migration, save and restore (barrier-aligned) --------------------------------------------------
    def _agent_of(self, identity: bytes) -> str | None:
        return next((a.name for a in self.agents.values() if a.identity == identity), None)

    def _job_agents(self, job: Job) -> list[AgentInfo]:
        return [self.agents[n] for n in sorted(set(job.placement.values())) if n in self.agents and self.agents[n].up]

    def _begin(self, identity: bytes, m: ControlMessage, mode: str) -> tuple[Job, Migration] | None:
        h = m.header
        job = self.jobs.get(h.get("job", ""))
        problem = None
        if job is None:
            problem = f"no job '{h.get('job')}' (see `microstream status`)"
        elif job.state not in ("running", "suspended"):
            problem = f"job {job.id} is {job.state}"
        elif h.get("vnode") not in job.plan.vnodes:
            problem = f"job {job.id} has no virtual node '{h.get('vnode')}'; it has {sorted(job.plan.vnodes)}"
        elif job.migration is not None:
            problem = f"{job.migration.vnode} of job {job.id} is already moving; try again when it is done"
        elif h["vnode"] in job.results:
            problem = f"{h['vnode']} of job {job.id} has finished; there is nothing left to move"
        if problem:
            self._send(identity, msg("error", error=problem))
            return None
        vnode = h["vnode"]
        source = job.placement.get(vnode) if mode != "restore" else None
        target = h.get("to")
        if mode == "restore" and target is None:
            target = job.placement.get(vnode)
        if mode != "save":
            agent = self.agents.get(target or "")
            if agent is None or not agent.up:
                live = sorted(a.name for a in self.agents.values() if a.up)
                self._send(identity, msg("error", error=f"no agent '{target}' is up (agents: {live})"))
                return None
            if target == source:
                self._send(identity, msg("error", error=f"{vnode} already runs on {target}"))
                return None
        job.barriers += 1
        mig = Migration(vnode, mode, source, target, job.barriers, identity)
        job.migration = mig
        return job, mig

    def _deploy_new_host(self, job: Job, mig: Migration) -> None:
        agent = self.agents[mig.target]
        self._send(agent.identity, ControlMessage("deploy", {
            "job": job.id, "vnode": mig.vnode, "restoring": True, "data_keys": self._data_keys(),
            "backend": job.plan.vnodes[mig.vnode].backend, "incoming": mig.whole}, job.blob))

    def _on_migrate(self, identity: bytes, m: ControlMessage) -> None:
        if m.header.get("whole"):
            job = self.jobs.get(m.header.get("job", ""))
            vn = job.plan.vnodes.get(m.header.get("vnode")) if job is not None else None
            if vn is not None and vn.backend != "microvm":
                self._send(identity, msg("error", error=f"{vn.id} runs in a {vn.backend} host: only a microvm "
                                                         "virtual node can move whole (leave out --whole-vm)"))
                return
        begun = self._begin(identity, m, "migrate")
        if begun:
            begun[1].whole = bool(m.header.get("whole"))
            self._deploy_new_host(*begun)

    def _on_save(self, identity: bytes, m: ControlMessage) -> None:
        begun = self._begin(identity, m, "save")
        if begun:
            self._cut(*begun)

    def _on_restore(self, identity: bytes, m: ControlMessage) -> None:
        begun = self._begin(identity, m, "restore")
        if begun:
            job, mig = begun
            if job.state != "suspended" or job.placement.get(mig.vnode) is not None:
                job.migration = None
                self._send(identity, msg("error", error=f"{mig.vnode} of job {job.id} is not saved; save it first"))
                return
            mig.snapshot = m.blob
            self._deploy_new_host(job, mig)

    def _cut(self, job: Job, mig: Migration) -> None:
        """Barrier: upstream tasks mark the cut on their channels into the vnode and hold what follows;
        the vnode aligns on it, snapshots and stops."""
        mig.paused_at = time.monotonic()
        mig.paused_wall = time.time()
        for agent in self._job_agents(job):
            self._send(agent.identity, msg("pause_to", job=job.id, vnode=mig.vnode, barrier=mig.barrier))
        whole = {"whole": {"uri": mig.incoming}} if mig.whole else {}
        self._send(self.agents[mig.source].identity,
                   msg("snapshot", job=job.id, vnode=mig.vnode, only=mig.vnode, barrier=mig.barrier, **whole))

    def _on_vnode_snapshot(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header["job"])
        mig = job.migration if job is not None else None
        if mig is None or mig.vnode != m.header["vnode"]:
            return
        mig.snapshot = m.blob
        mig.snapshot_at = time.monotonic()
        mig.vm_figures = m.header.get("whole")
        if mig.mode == "save":
            job.placement.pop(mig.vnode, None)
            job.endpoints.pop(mig.vnode, None)
            job.state = "suspended"
            self._finish_move(job, mig, {"saved_bytes": len(m.blob or b"")}, blob=m.blob)
        else:
            self._resume(job, mig)

    def _resume(self, job: Job, mig: Migration) -> None:
        """The new host restores the snapshot and starts; upstream channels are re-pointed at it and
        release what they held."""
        target = self.agents[mig.target]
        job.endpoints[mig.vnode] = mig.endpoint
        job.placement[mig.vnode] = mig.target
        self._send(target.identity, msg("connect", job=job.id, endpoints=job.endpoints, only=mig.vnode))
        self._send(target.identity, ControlMessage("start", {"job": job.id, "only": mig.vnode}, mig.snapshot))
        for agent in self._job_agents(job):
            self._send(agent.identity, msg("redirect", job=job.id, vnode=mig.vnode, peer=mig.endpoint))
        if job.state == "suspended":
            job.state = "running"
        mig.resuming = True  # done when the new host has processed its first record (vnode_resumed)

    def _on_vnode_resumed(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header["job"])
        mig = job.migration if job is not None else None
        if mig is None or not mig.resuming or mig.vnode != m.header["vnode"]:
            return
        downtime = float(m.header["at"]) - mig.paused_wall if mig.paused_wall else None
        align = mig.snapshot_at - mig.paused_at if mig.paused_at and mig.snapshot_at else None
        figures = {"downtime_s": downtime, "state_bytes": len(mig.snapshot or b""), "align_and_snapshot_s": align}
        if mig.whole:  # the state moved in QEMU's stream; the snapshot was the control channel's position
            figures.update(tier=2, vm=mig.vm_figures, state_bytes=(mig.vm_figures or {}).get("ram_bytes"))
        self._finish_move(job, mig, figures)

    def _finish_move(self, job: Job, mig: Migration, figures: dict[str, Any], blob: bytes | None = None) -> None:
        record = {"vnode": mig.vnode, "mode": mig.mode, "from": mig.source, "to": mig.target,
                  "total_s": time.monotonic() - mig.started, "reason": mig.reason, **figures}
        if mig.vnode in job.pins and mig.target and mig.reason == "requested":
            job.pins[mig.vnode] = mig.target  # a pinned source moved by hand: its sensor is there now
        if job.policy is not None:
            job.policy.moved(mig.vnode, time.monotonic())
        job.history.append(record)
        job.migration = None
        self.log(f"coordinator: {mig.mode} of {job.id}/{mig.vnode} done: {record}")
        if self.metrics is not None:
            self.metrics.migrations.labels(job.id, mig.mode, mig.reason.split(":")[0]).inc()
            if figures.get("downtime_s") is not None:
                self.metrics.migration_downtime.observe(figures["downtime_s"])
            self.metrics.migration_state_bytes.inc(figures.get("state_bytes", figures.get("saved_bytes", 0)))
        if mig.client is not None:
            self._send(mig.client, ControlMessage("moved", record, blob))

    def _check_moves(self) -> None:
        """A move that makes no progress (a host that never answers) is called off rather than left hanging."""
        now = time.monotonic()
        for job in self.jobs.values():
            mig = job.migration
            if mig is not None and mig.mode != "save" and now - mig.started > self.move_timeout:
                self._call_off(job, mig, f"no progress in {self.move_timeout:.0f} s")

    def _call_off(self, job: Job, mig: Migration, reason: str) -> None:
        if mig.target and mig.target in self.agents and mig.mode == "migrate":
            self._send(self.agents[mig.target].identity, msg("stop", job=job.id, only=mig.vnode))
        for agent in self._job_agents(job):
            self._send(agent.identity, msg("redirect", job=job.id, vnode=mig.vnode, peer=None))
        job.migration = None
        if mig.client is not None:
            self._send(mig.client, msg("error", error=f"{mig.mode} of {mig.vnode} called off: {reason}"))

    def _on_vnode_failed(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header["job"])
        if job is not None and job.state in ("deploying", "running"):
            self._fail(job, f"virtual node {m.header['vnode']} failed: {m.header.get('error')}")

    def _fail(self, job: Job, reason: str, state: str = "failed") -> None:
        job.state = state
        job.reason = reason
        job.finished = time.time()
        self.log(f"coordinator: job {job.id} {state}: {reason}")
        for agent_name in set(job.placement.values()):
            agent = self.agents.get(agent_name)
            if agent is not None and agent.up:
                self._send(agent.identity, msg("stop", job=job.id))
        if job.client is not None:
            self._send(job.client, msg("job_done", job=job.id, state=state, reason=reason))

    def _on_stop(self, identity: bytes, m: ControlMessage) -> None:
        job = self.jobs.get(m.header.get("job", ""))
        if job is None:
            self._send(identity, msg("error", error=f"no job '{m.header.get('job')}' (see `microstream status`)"))
            return
        if job.state in ("deploying", "running"):
            self._fail(job, "stopped by a client", state="stopped")
        self._send(identity, msg("stopped", job=job.id, state=job.state))

    def _on_status(self, identity: bytes, m: ControlMessage) -> None:
        self._send(identity, msg("status", **self.status()))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        agents = {a.name: {"up": a.up, "cores": a.caps.get("cores"), "arch": a.caps.get("arch"),
                           "backends": a.caps.get("backends"), "labels": a.labels, "metrics_port": a.metrics_port,
                           "last_seen_s": round(now - a.last_seen, 1), "reason": a.down_reason}
                  for a in self.agents.values()}
        jobs = {}
        for job in self.jobs.values():
            vnodes = {}
            for vn, agent_name in job.placement.items():
                live = self.agents[agent_name].vnodes.get(f"{job.id}/{vn}", {}) if agent_name in self.agents else {}
                if live.get("state") == "migrated":
                    live = {}
                live = job.final.get(vn, live)
                vnodes[vn] = {"agent": agent_name, "tasks": job.plan.vnodes[vn].tasks, "state": live.get("state"),
                              "operators": live.get("stats", {}).get("operators", {})}
            jobs[job.id] = {"name": job.name, "state": job.state, "reason": job.reason, "vnodes": vnodes,
                            "migrations": job.history, "traffic": self.link_traffic(job), "pins": job.pins,
                            "predicted_traffic": job.predicted}
        return {"agents": agents, "jobs": jobs, "metrics_port": self.metrics_port}

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        try:
            for agent in self.agents.values():
                self.metrics.set_node_up(agent.name, agent.up)
            states: dict[str, int] = {}
            for job in self.jobs.values():
                states[job.state] = states.get(job.state, 0) + 1
            self.metrics.set_jobs(states)
            for job in self.jobs.values():
                if job.state != "running":
                    continue
                per_link: dict[tuple[str, str], float] = {}
                for row in self.link_traffic(job):
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


def _add_rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> None:
    """Records per second into each operator since the previous heartbeat."""
    if seconds <= 0:
        return
    for key, vn in after.items():
        old_ops = before.get(key, {}).get("stats", {}).get("operators", {})
        for task, op in vn.get("stats", {}).get("operators", {}).items():
            old = old_ops.get(task)
            if old is not None and not op.get("finished"):
                op["rate"] = max(0.0, (op["records_in"] - old["records_in"]) / seconds)
