"""Checkpoint replicas on the agents: a coordinator whose disk is lost does not lose its jobs.

When a checkpoint of a job completes, the coordinator packs what it needs to resume the job from it (the job's
record: name, epoch, restarts, placement, settings; its spec; the checkpoint's snapshots) into one **replica**,
signs it (HMAC-SHA256 with a key derived from the coordinator's secret key: a restarted coordinator with the same
keys checks it; an agent cannot forge one) and sends it to `copies` agents (default 1), chosen off the
coordinator's own node and, where the topology or the agents' labels give sites, outside its site. It goes over the
control channel after the checkpoint is complete (pickled and signed on a thread of its own, then sent in parts of
at most `CHUNK` bytes, a few per pass of the coordinator's loop): never on the checkpoint's path, nor holding the
loop up. Each agent writes it atomically (a part file, fsync, rename)
into its **replica directory**, which its work directory's clean-up never touches, keeps the newest `keep` per job,
acknowledges it (`replica_stored`: the coordinator records who holds which checkpoint, shown per checkpoint in
`status --json`) and deletes a job's replicas when the job ends (`replica_drop`).

A coordinator started without its state (a new Pi, an empty `--state-dir`) learns the replicas from the agents'
registrations. A job it does not know, whose replicas an agent reports, is restored: `SETTLE` seconds after the
first registration (so that the other agents have registered too), it fetches the newest complete replica of the
job, checks its signature and restores the job from it as a restart with the state directory does
(`jobs.JobLifecycle.restore_replica`): adopting, in the newest epoch its hosts report; it runs on where it ran if
they all do, else recovers from the replica's checkpoint (a new epoch, every virtual node from its snapshots).
Until then the hosts of jobs it does not know are left running (the holder may register after their agent).

Incremental copies: a checkpoint whose snapshots are chunked (`runtime/checkpoint_chunks.py`) travels as its signed
record with a manifest per snapshot (the content key of each chunk) and, after it, only the chunks the holder does
not have yet (those of the last replica it acknowledged: it keeps them while it keeps that replica). The holder
keeps each job's chunks once, in a SQLite file beside its replicas (`chunks.db`: one transaction, one fsync per
replica), with each replica's list of keys; retention deletes the chunks no kept replica refers to. A replica
fetched back carries all of its chunks, each checked against its key when the coordinator puts the snapshots
together: a chunk an agent damaged or lacks makes the replica unusable (`ReplicaError`), never wrong state.

No sockets here: the coordinator hands in messages and a `send(identity, message)`; `ReplicaShelf` is the agent's
side, on its disk.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import os
import pickle
import re
import shutil
import socket
import sqlite3
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.checkpoint_chunks import ChunkError, Manifest, assemble, is_chunked, is_manifest, manifest_of, pieces
from .messages import ReplicaDrop, ReplicaFetch, ReplicaPart, ReplicaStored
from .store import StoredCheckpoint, StoredJob, info_of

if TYPE_CHECKING:
    from .jobs import JobLifecycle, Send
    from .model import Checkpoint, Job
    from .registry import AgentInfo, AgentRegistry

CHUNK = 1 << 20          # bytes per part: far below any message limit, and a pass of the loop stays short
PARTS_PER_TICK = 8       # parts sent per pass of the coordinator's loop (all transfers together)
KEEP = 2                 # replicas an agent keeps per job (the newest)
SETTLE = 2.0             # seconds after the first registration before a coordinator without state picks replicas
WAIT_FOR_AGENTS = 30.0   # seconds a client asking for an unknown job waits for the first agent (its replicas)
FETCH_TIMEOUT = 60.0     # seconds a replica's transfer up may take before another holder is asked
MAGIC = b"MSREPL01"
CHUNKED = b"MSREPL02"    # a replica whose snapshots are manifests, followed by (some of) their chunks
_LEN = struct.Struct("<I")
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")


class ReplicaError(Exception):
    """A replica that cannot be used: damaged, or not signed by this coordinator's key."""


# -- the replica itself ---------------------------------------------------------------------------------------------
def seal_key(secret: bytes | None) -> bytes:
    """The replicas' signing key: derived from the coordinator's secret key (empty without keys: then the check only
    catches damage)."""
    return hashlib.sha256(b"microstream checkpoint replica\0" + (secret or b"")).digest()


def contents(job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
    """What a coordinator needs to resume `job` from `checkpoint`, as it is now (a copy: the job changes on); a
    chunked snapshot is there as its manifest (`chunk_sources` has its chunks)."""
    record = {"id": job.id, "name": job.name, "epoch": job.epoch, "restarts": job.restarts,
              "barriers": job.barriers, "submitted": job.submitted, "placement": dict(job.placement),
              "endpoints": copy.deepcopy(job.endpoints), "info": copy.deepcopy(info_of(job))}
    snapshots = {vnode: _manifest(checkpoint, vnode).to_bytes() if is_chunked(blob) else blob
                 for vnode, blob in checkpoint.snapshots.items()}
    return {"record": record, "spec": job.blob,
            "checkpoint": {"id": checkpoint.id, "epoch": job.epoch, "started": checkpoint.started,
                           "completed": checkpoint.completed, "snapshots": snapshots}}


def _manifest(checkpoint: Checkpoint, vnode: str) -> Manifest:
    if vnode not in checkpoint.manifests:
        checkpoint.manifests[vnode] = manifest_of(checkpoint.snapshots[vnode])
    return checkpoint.manifests[vnode]


def chunk_sources(checkpoint: Checkpoint) -> list[tuple[bytes, Manifest]]:
    """The chunked snapshots of `checkpoint` with their manifests (where a replica's chunks come from)."""
    return [(blob, _manifest(checkpoint, vnode)) for vnode, blob in checkpoint.snapshots.items() if is_chunked(blob)]


def build(data: dict[str, Any], sources: list[tuple[bytes, Manifest]], key: bytes,
          have: frozenset[str] = frozenset()) -> tuple[bytes, list[str]]:
    """The replica of `data` (`contents`) as it travels to a holder that has the chunks `have`: signed, with the
    chunks it lacks after it; and every chunk key it refers to. Without chunked snapshots: `seal` alone."""
    sealed = seal(data, key)
    if not sources:
        return sealed, []
    keys: list[str] = []
    seen: set[str] = set()
    sent: list[tuple[str, memoryview]] = []
    for blob, manifest in sources:
        for k, piece in pieces(blob, manifest):
            if k not in seen:
                seen.add(k)
                keys.append(k)
                if k not in have:
                    sent.append((k, piece))
    return chunked(sealed, keys, sent), keys


def chunked(sealed: bytes, keys: list[str], chunks: list[tuple[str, Any]]) -> bytes:
    """A chunked replica as it travels: an index (the keys it refers to, the chunks it carries), the signed record,
    the chunks."""
    head = json.dumps({"sealed": len(sealed), "keys": keys, "chunks": [[k, len(c)] for k, c in chunks]},
                      separators=(",", ":")).encode()
    return b"".join([CHUNKED, _LEN.pack(len(head)), head, sealed, *(c for _, c in chunks)])


def split(payload: bytes) -> tuple[list[str], bytes, dict[str, bytes]]:
    """A chunked replica's parts: the keys it refers to, the signed record, the chunks it carries."""
    try:
        (n,) = _LEN.unpack_from(payload, len(CHUNKED))
        start = len(CHUNKED) + _LEN.size
        head = json.loads(payload[start:start + n])
        at = start + n + int(head["sealed"])
        sealed = payload[start + n:at]
        chunks = {}
        for k, length in head["chunks"]:
            chunks[str(k)] = payload[at:at + int(length)]
            at += int(length)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ReplicaError(f"a damaged replica: {exc}") from None
    if at != len(payload):
        raise ReplicaError(f"a damaged replica: {len(payload)} bytes, its index accounts for {at}")
    return [str(k) for k in head["keys"]], sealed, chunks


def seal(data: dict[str, Any], key: bytes) -> bytes:
    """The replica: `contents` pickled and signed (the slow part with large snapshots: done off the loop)."""
    body = pickle.dumps(data, protocol=5)
    return MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body


def pack(job: Job, checkpoint: Checkpoint, key: bytes, have: frozenset[str] = frozenset()) -> bytes:
    """The signed replica of `checkpoint` of `job` (without the chunks in `have`)."""
    return build(contents(job, checkpoint), chunk_sources(checkpoint), key, have)[0]


def unpack(blob: bytes, key: bytes) -> StoredJob:
    """The job a replica holds (as the state directory would have it), after checking its signature (and, for a
    chunked one, every chunk against its key)."""
    if blob[:len(CHUNKED)] == CHUNKED:
        _, sealed, chunks = split(blob)
        stored = unpack(sealed, key)
        assert stored.checkpoint is not None
        c = stored.checkpoint
        try:
            for vnode, snapshot in c.snapshots.items():
                if is_manifest(snapshot):
                    c.snapshots[vnode] = assemble(Manifest.from_bytes(snapshot), chunks.get,
                                                  f"the replica of checkpoint {c.id} of {stored.id} ({vnode})")
        except ChunkError as exc:
            raise ReplicaError(str(exc)) from None
        return stored
    head = len(MAGIC) + 32
    if blob[:len(MAGIC)] != MAGIC or len(blob) <= head:
        raise ReplicaError("not a checkpoint replica")
    body = blob[head:]
    if not hmac.compare_digest(blob[len(MAGIC):head], hmac.new(key, body, hashlib.sha256).digest()):
        raise ReplicaError("its signature does not match this coordinator's key (another cluster's, or damaged)")
    data = pickle.loads(body)  # noqa: S301 - signed by this coordinator's key, checked above
    r, c = data["record"], data["checkpoint"]
    checkpoint = StoredCheckpoint(c["id"], c["epoch"], c["started"], c["completed"], dict(c["snapshots"]))
    return StoredJob(r["id"], r["name"], "running", "", r["epoch"], r["restarts"], r["barriers"], r["submitted"],
                     None, r["placement"], r["endpoints"], r["info"], data["spec"], {}, checkpoint)


# -- the coordinator's side ----------------------------------------------------------------------------------------
@dataclass
class _Transfer:
    job: str
    checkpoint: int
    agent: str
    payload: bytes
    parts: int
    completed: float          # when the checkpoint completed (the replica's time is counted from there)
    next: int = 0


@dataclass
class _Fetch:
    job: str
    checkpoint: int
    agent: str
    since: float
    parts: dict[int, bytes] = field(default_factory=dict)


class Replicas:
    def __init__(self, lifecycle: JobLifecycle, registry: AgentRegistry, send: Send, copies: int = 1,
                 node: str | None = None, topology: Any = None, secret: bytes | None = None,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic, keep: int = KEEP,
                 chunk: int = CHUNK) -> None:
        self.lifecycle = lifecycle
        self.registry = registry
        self.send = send
        self.copies = copies
        # the agent on the coordinator's own machine (its replicas would die with it): by default one named as the
        # machine is (a Pi's agent is usually named after its hostname)
        self.node = node or socket.gethostname().split(".")[0]
        self.topology = topology
        self.key = seal_key(secret)
        self.log = log
        self.clock = clock
        self.keep = keep
        self.chunk = chunk
        self.outgoing: dict[tuple[str, str], _Transfer] = {}    # (job, agent) -> what is being sent
        self.found: dict[str, dict[str, int]] = {}              # unknown job -> agent -> newest checkpoint it holds
        self.fetching: dict[str, _Fetch] = {}
        self.holders: dict[str, set[str]] = {}                  # job -> agents sent a part of its replicas
        self.first_registration: float | None = None
        self.started = clock()
        self.bytes_sent = 0
        self._warned: set[str] = set()
        self._packer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-pack")
        self._packing: list[tuple[str, int, list[str], Future[tuple[bytes, list[str]]]]] = []  # job, cp, agents
        self.held: dict[tuple[str, str], frozenset[str]] = {}     # (job, agent) -> chunk keys it has
        self._keys: dict[tuple[str, str, int], frozenset[str]] = {}  # (job, agent, checkpoint) -> keys, until acked
        lifecycle.on_end = self.job_ended
        lifecycle.may_restore = self.may_restore
        lifecycle.settling = self.settling

    # -- sending replicas --------------------------------------------------------------------------------------
    def checkpoint_completed(self, job: Job, checkpoint: Checkpoint) -> None:
        """Queue the replica of a checkpoint that has just completed (sent in `tick`, part by part)."""
        if self.copies <= 0:
            return
        targets = self.choose(job)
        if not targets:
            if job.id not in self._warned:
                self._warned.add(job.id)
                self.log(f"coordinator: no agent to keep a replica of {job.id}'s checkpoints: they live on this "
                         "coordinator's disk only")
            return
        # pickling and signing 50 MB takes ~0.5 s (more on a Pi): on a thread, so the loop serves on meanwhile; a
        # holder gets only the chunks it lacks (those of the last replica it acknowledged it has)
        data, sources = contents(job, checkpoint), chunk_sources(checkpoint)
        for agent in targets:
            have = self.held.get((job.id, agent.name), frozenset())
            future = self._packer.submit(build, data, sources, self.key, have)
            self._packing.append((job.id, checkpoint.id, [agent.name], future))

    def _packed(self) -> None:
        """Replicas sealed since: their transfers start."""
        for item in [p for p in self._packing if p[3].done()]:
            self._packing.remove(item)
            job_id, checkpoint, targets, future = item
            job = self.lifecycle.get(job_id)
            try:
                payload, keys = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: this checkpoint has no replica
                self.log(f"coordinator: cannot pack the replica of checkpoint {checkpoint} of {job_id}: {exc}")
                continue
            if job is None:
                continue
            figures = self._figures(job, checkpoint)
            if figures is not None:
                figures["replica_bytes"] = len(payload)
                figures.setdefault("replicas", [])
            parts = max(1, -(-len(payload) // self.chunk))
            for name in targets:
                self.outgoing[(job_id, name)] = _Transfer(job_id, checkpoint, name, payload, parts, self.clock())
                self._keys[(job_id, name, checkpoint)] = frozenset(keys)

    def close(self) -> None:
        self._packer.shutdown(wait=False, cancel_futures=True)

    def choose(self, job: Job) -> list[AgentInfo]:
        """Up to `copies` live agents: off the coordinator's node, outside its failure domain (the placement's
        notion, `placement.failure_domain`: a node's `domain` in the topology, a domain/switch/rack label, else its
        site) and outside its site (where these are known), those that hold the job's earlier replicas first
        (their retention applies), then by name."""
        up = [a for a in self.registry if a.up]
        home = self.registry.get(self.node) if self.node else None
        home_domain = self._domain(self.node, home.labels if home is not None else {})
        home_site = self._site(home) if home is not None else self._site_of_name(self.node)
        held = {r["agent"] for f in job.checkpoints for r in f.get("replicas", [])}

        def rank(agent: AgentInfo) -> tuple[bool, bool, bool, bool, str]:
            domain, site = self._domain(agent.name, agent.labels), self._site(agent)
            return (agent.name == self.node, home_domain is not None and domain == home_domain,
                    home_site is not None and site == home_site, agent.name not in held, agent.name)

        return sorted(up, key=rank)[:self.copies]

    def _domain(self, name: str | None, labels: Mapping[str, str]) -> str | None:
        from ..placement.topology import failure_domain  # here: an agent imports this module without numpy

        node = self._node_of_name(name)
        known = {**(getattr(node, "labels", None) or {}), **labels}
        return failure_domain(known, getattr(node, "site", "") or "", getattr(node, "domain", "") or "") or None

    def _site(self, agent: AgentInfo) -> str | None:
        for label in ("site", "switch", "domain"):
            if agent.labels.get(label):
                return agent.labels[label]
        return self._site_of_name(agent.name)

    def _node_of_name(self, name: str | None) -> Any:
        if name is None or self.topology is None:
            return None
        return next((n for n in getattr(self.topology, "nodes", []) if n.name == name), None)

    def _site_of_name(self, name: str | None) -> str | None:
        return getattr(self._node_of_name(name), "site", None) or None

    def tick(self) -> None:
        """Send a few parts of the queued replicas; restore the jobs whose replicas the agents reported."""
        self._packed()
        budget = PARTS_PER_TICK
        for key, t in list(self.outgoing.items()):
            agent = self.registry.live(t.agent)
            if agent is None:
                del self.outgoing[key]
                continue
            while budget > 0 and t.next < t.parts:
                blob = t.payload[t.next * self.chunk:(t.next + 1) * self.chunk]
                self.send(agent.identity, ReplicaPart(job=t.job, checkpoint=t.checkpoint, part=t.next, parts=t.parts,
                                                      blob=blob, keep=self.keep))
                self.bytes_sent += len(blob)
                self.holders.setdefault(t.job, set()).add(t.agent)
                t.next += 1
                budget -= 1
            if t.next >= t.parts:
                del self.outgoing[key]
            if budget <= 0:
                break
        self._restore()

    def stored(self, agent: AgentInfo, m: ReplicaStored) -> None:
        """An agent has the replica on its disk: record it with the checkpoint's figures."""
        job = self.lifecycle.get(m.job)
        if job is None:  # ended meanwhile: it goes; unknown (sent again to a coordinator without state): it stays
            if self.lifecycle.ended(m.job) is not None:
                self.send(agent.identity, ReplicaDrop(job=m.job))
            return
        keys = self._keys.pop((m.job, agent.name, m.checkpoint), None)
        for older in [k for k in self._keys if k[:2] == (m.job, agent.name) and k[2] < m.checkpoint]:
            del self._keys[older]
        if m.error:
            self.held.pop((m.job, agent.name), None)  # the next replica goes whole
            self.log(f"coordinator: agent {agent.name} could not keep the replica of checkpoint {m.checkpoint} of "
                     f"{m.job}: {m.error}")
            return
        if keys is not None:
            self.held[(m.job, agent.name)] = keys
        figures = self._figures(job, m.checkpoint)
        if figures is not None:
            holders = figures.setdefault("replicas", [])
            if agent.name not in [h["agent"] for h in holders]:
                holders.append({"agent": agent.name, "bytes": m.bytes,
                                "seconds": round(time.time() - figures.get("at", time.time()), 3)})
            self.lifecycle.persist(job)  # who holds what: a restart with the state directory shows it too

    @staticmethod
    def _figures(job: Job, checkpoint: int) -> dict[str, Any] | None:
        return next((f for f in job.checkpoints if f.get("id") == checkpoint), None)

    def job_ended(self, job: Job) -> None:
        """The job ended: the agents that hold its replicas delete them (one that is down does when it registers
        again)."""
        for key in [k for k in self.outgoing if k[0] == job.id]:
            del self.outgoing[key]
        self._packing = [p for p in self._packing if p[0] != job.id]
        for held in [k for k in self.held if k[0] == job.id]:
            del self.held[held]
        for sent in [k for k in self._keys if k[0] == job.id]:
            del self._keys[sent]
        names = self.holders.pop(job.id, set()) | {r["agent"] for f in job.checkpoints for r in f.get("replicas", [])}
        for name in sorted(names):
            agent = self.registry.live(name)
            if agent is not None:
                self.send(agent.identity, ReplicaDrop(job=job.id))

    # -- a coordinator without its state ---------------------------------------------------------------------------
    def registered(self, agent: AgentInfo, replicas: list[dict[str, Any]]) -> None:
        """An agent registered with the replicas it keeps: those of ended jobs go; those of jobs this coordinator
        does not know are candidates to restore them from (their hosts are left alone meanwhile)."""
        if self.first_registration is None:
            self.first_registration = self.clock()
        for entry in replicas:
            job_id, checkpoint = str(entry.get("job", "")), int(entry.get("checkpoint", -1))
            if self.lifecycle.get(job_id) is not None:
                continue
            if self.lifecycle.ended(job_id) is not None:
                self.send(agent.identity, ReplicaDrop(job=job_id))
                continue
            held = self.found.setdefault(job_id, {})
            held[agent.name] = max(held.get(agent.name, -1), checkpoint)
            self.lifecycle.restoring.add(job_id)

    def may_restore(self) -> bool:
        """A coordinator without jobs that no agent has registered with yet: a job it does not know may be restored
        from a replica an agent will report (a client that asks for one is kept waiting, not told "no job")."""
        return (self.first_registration is None and self.clock() - self.started < WAIT_FOR_AGENTS
                and self._fresh())

    def _fresh(self) -> bool:
        return not any(True for _ in self.lifecycle) and not self.lifecycle.history

    def _settled(self) -> bool:
        now = self.clock()
        return (self.first_registration is not None and now - self.first_registration >= SETTLE
                or now - self.started >= WAIT_FOR_AGENTS)

    def settling(self) -> bool:
        """A coordinator without jobs whose agents may not all have registered yet: the hosts of a job it does not
        know are left running meanwhile (the agent with the job's replica may register a moment later)."""
        return not self._settled() and (bool(self.found) or self._fresh())

    def _restore(self) -> None:
        if not self._settled():
            return
        now = self.clock()
        for job_id in [j for j in self.lifecycle.restore_watchers if j not in self.found]:
            if self.lifecycle.get(job_id) is None:  # no agent reported a replica of it
                self.lifecycle.not_restored(job_id, "this coordinator does not know it, and no agent holds a "
                                                    "replica of it (see `microstream status`)")
        if not self.found:
            return
        for job_id, held in list(self.found.items()):
            fetch = self.fetching.get(job_id)
            if fetch is not None:
                if now - fetch.since <= FETCH_TIMEOUT and self.registry.live(fetch.agent) is not None:
                    continue
                self.log(f"coordinator: the replica of {job_id} from agent {fetch.agent} did not arrive; asking "
                         "another holder")
                held.pop(fetch.agent, None)
                del self.fetching[job_id]
            holders = sorted(((cp, name) for name, cp in held.items() if self.registry.live(name) is not None),
                             key=lambda h: (-h[0], h[1]))
            if not holders:
                self.log(f"coordinator: no live agent holds a usable replica of {job_id}: it cannot be restored")
                del self.found[job_id]
                self.lifecycle.not_restored(job_id, "the coordinator restarted without its state, and no agent holds "
                                                    "a usable replica of it")
                continue
            checkpoint, name = holders[0]
            agent = self.registry.live(name)
            assert agent is not None
            self.fetching[job_id] = _Fetch(job_id, checkpoint, name, now)
            self.send(agent.identity, ReplicaFetch(job=job_id, checkpoint=checkpoint))
            self.log(f"coordinator: restoring job {job_id} from the replica of checkpoint {checkpoint} on agent "
                     f"{name}")

    def part(self, agent: AgentInfo, m: ReplicaPart) -> None:
        """A part of a replica this coordinator fetched; with the last one, the job is restored."""
        fetch = self.fetching.get(m.job)
        if fetch is None or fetch.agent != agent.name or fetch.checkpoint != m.checkpoint:
            return
        fetch.parts[m.part] = m.blob
        fetch.since = self.clock()
        if len(fetch.parts) < m.parts:
            return
        del self.fetching[m.job]
        blob = b"".join(fetch.parts[i] for i in range(m.parts))
        try:
            stored = unpack(blob, self.key)
        except Exception as exc:  # noqa: BLE001 - a bad replica (ReplicaError, or damaged) costs a log line
            self.log(f"coordinator: the replica of checkpoint {m.checkpoint} of {m.job} on agent {agent.name} "
                     f"cannot be used: {exc}")
            self.found.get(m.job, {}).pop(agent.name, None)
            return
        self.found.pop(m.job, None)
        self.lifecycle.restoring.discard(m.job)
        if self.lifecycle.get(m.job) is None:
            self.lifecycle.restore_replica(stored, agent.name)

    def status(self) -> dict[str, Any]:
        return {"copies": self.copies, "node": self.node, "bytes_sent": self.bytes_sent,
                "sending": len(self.outgoing), "restoring": sorted(self.found)}


# -- the agent's side ----------------------------------------------------------------------------------------------
class ReplicaShelf:
    """An agent's replicas on its disk: `DIR/JOB/checkpoint-NNNNNNNNN.replica`, written as `.part` then renamed.

        >>> import tempfile
        >>> shelf = ReplicaShelf(Path(tempfile.mkdtemp()))
        >>> shelf.put(ReplicaPart(job="j-1", checkpoint=3, part=0, parts=1, blob=b"abc", keep=2)) is None
        True
        >>> [stored.bytes for stored in shelf.finished(wait=True)]
        [3]
        >>> shelf.listing(), shelf.read("j-1", 3)
        ([{'job': 'j-1', 'checkpoint': 3, 'bytes': 3}], b'abc')
    """

    def __init__(self, directory: Path, log: Callable[[str], None] = print) -> None:
        self.directory = Path(directory)
        self.log = log
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)  # snapshots hold the job's state: this user's only
        self._writing: dict[str, tuple[int, int, Any]] = {}  # job -> checkpoint, next part, open part file
        # the fsync that makes a replica whole takes seconds for 50 MB on an SD card: on a thread, so the agent's
        # loop (its heartbeats, its hosts' lease) goes on meanwhile
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-sync")
        self._pending: list[Future[ReplicaStored]] = []
        for part in self.directory.glob("*/*.part"):  # torn by a crash mid-write
            part.unlink(missing_ok=True)

    def _root(self, job: str) -> Path:
        if not _SAFE.match(job):
            raise ValueError(f"not a job id: {job!r}")
        return self.directory / job

    def put(self, m: ReplicaPart) -> ReplicaStored | None:
        """Write a part; with the last one, have the replica made whole (fsync, rename) and the job's newest `keep`
        kept, on a thread: its acknowledgement comes from `finished`. A part out of order (a lost one) drops the
        replica. Returns an acknowledgement at once only for a replica that cannot be written (its `error`)."""
        try:
            root = self._root(m.job)
            name = f"checkpoint-{m.checkpoint:09d}"
            if m.part == 0:
                self._abandon(m.job)
                root.mkdir(exist_ok=True)
                self._writing[m.job] = (m.checkpoint, 0, open(root / f"{name}.part", "w+b"))  # noqa: SIM115
            writing = self._writing.get(m.job)
            if writing is None or writing[:2] != (m.checkpoint, m.part):
                return None
            f = writing[2]
            f.write(m.blob)
            if m.part + 1 < m.parts:
                self._writing[m.job] = (m.checkpoint, m.part + 1, f)
                return None
            del self._writing[m.job]
            self._pending.append(self._finisher.submit(self._finish, m, f, root, name))
            return None
        except (OSError, ValueError) as exc:
            self._abandon(m.job)
            return ReplicaStored(job=m.job, checkpoint=m.checkpoint, error=str(exc))

    @staticmethod
    def _finish(m: ReplicaPart, f: Any, root: Path, name: str) -> ReplicaStored:
        try:
            f.flush()
            size = f.tell()
            f.seek(0)
            if f.read(len(CHUNKED)) == CHUNKED:  # its chunks go to the job's chunk store, the record to the file
                f.seek(0)
                payload = f.read()
                f.close()
                ReplicaShelf._store_chunks(root, name, payload)
            else:
                os.fsync(f.fileno())
                f.close()
                os.replace(root / f"{name}.part", root / f"{name}.replica")
            _fsync_dir(root)
            for old in sorted(root.glob("checkpoint-*.replica"))[:-max(1, m.keep)]:
                old.unlink(missing_ok=True)
                old.with_suffix(".keys").unlink(missing_ok=True)
            ReplicaShelf._forget_chunks(root)
            return ReplicaStored(job=m.job, checkpoint=m.checkpoint, bytes=size)
        except (OSError, ReplicaError, sqlite3.Error) as exc:  # a full disk; the job ended and its directory went
            with contextlib.suppress(OSError):
                f.close()
            (root / f"{name}.part").unlink(missing_ok=True)
            return ReplicaStored(job=m.job, checkpoint=m.checkpoint, error=str(exc))

    @staticmethod
    def _chunk_db(root: Path) -> sqlite3.Connection:
        db = sqlite3.connect(root / "chunks.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        return db

    @staticmethod
    def _store_chunks(root: Path, name: str, payload: bytes) -> None:
        """A chunked replica: its new chunks into the job's chunk store (committed, on disk), then its key list and
        its signed record (each written, fsynced, renamed). A chunk it refers to that is neither here nor in the
        store (the coordinator counted on a replica this agent no longer keeps) is an error: it is sent whole."""
        keys, sealed, chunks = split(payload)
        db = ReplicaShelf._chunk_db(root)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO chunks (key, data) VALUES (?,?)", chunks.items())
            have = {k for (k,) in db.execute("SELECT key FROM chunks")}
            missing = [k for k in keys if k not in have]
            if missing:
                db.execute("ROLLBACK")
                raise ReplicaError(f"{len(missing)} chunks it refers to are not kept here (e.g. {missing[0]})")
            db.execute("COMMIT")
        finally:
            db.close()
        for suffix, data in ((".keys", json.dumps(keys).encode()), (".replica", sealed)):
            part = root / f"{name}{suffix}.part"
            with open(part, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, root / f"{name}{suffix}")
        (root / f"{name}.part").unlink(missing_ok=True)

    @staticmethod
    def _forget_chunks(root: Path) -> None:
        """Delete the chunks no kept replica refers to."""
        if not (root / "chunks.db").exists():
            return
        kept: set[str] = set()
        for keys in root.glob("checkpoint-*.keys"):
            kept.update(json.loads(keys.read_bytes()))
        db = ReplicaShelf._chunk_db(root)
        try:
            gone = [(k,) for (k,) in db.execute("SELECT key FROM chunks") if k not in kept]
            db.executemany("DELETE FROM chunks WHERE key=?", gone)
        finally:
            db.close()

    def finished(self, wait: bool = False) -> list[ReplicaStored]:
        """The acknowledgements of the replicas made whole since the last call (with `wait`: of all pending)."""
        done = [p for p in self._pending if wait or p.done()]
        if done:
            self._pending = [p for p in self._pending if p not in done]
        return [p.result() for p in done]

    def close(self) -> None:
        """Let the replica being made whole finish (the agent stops); an agent that holds none leaves no directory."""
        self._finisher.shutdown(wait=True)
        with contextlib.suppress(OSError):  # not empty: replicas of jobs still running, kept for a coordinator
            self.directory.rmdir()

    def _abandon(self, job: str) -> None:
        writing = self._writing.pop(job, None)
        if writing is not None:
            writing[2].close()
            Path(writing[2].name).unlink(missing_ok=True)

    def listing(self) -> list[dict[str, Any]]:
        """Every complete replica: job, checkpoint, bytes."""
        found = []
        for path in sorted(self.directory.glob("*/checkpoint-*.replica")):
            with contextlib.suppress(OSError, ValueError):
                found.append({"job": path.parent.name, "checkpoint": int(path.stem.split("-")[1]),
                              "bytes": path.stat().st_size})
        return found

    def read(self, job: str, checkpoint: int) -> bytes | None:
        """A stored replica as it travels (a chunked one with every chunk it refers to that is here)."""
        try:
            path = self._root(job) / f"checkpoint-{checkpoint:09d}.replica"
            sealed = path.read_bytes()
            if not path.with_suffix(".keys").exists():
                return sealed
            keys = [str(k) for k in json.loads(path.with_suffix(".keys").read_bytes())]
            db = self._chunk_db(path.parent)
            try:
                found = []
                for k in keys:  # one lacking is left out: the coordinator's check names it
                    row = db.execute("SELECT data FROM chunks WHERE key=?", (k,)).fetchone()
                    if row is not None:
                        found.append((k, bytes(row[0])))
            finally:
                db.close()
            return chunked(sealed, keys, found)
        except (OSError, ValueError, sqlite3.Error):
            return None

    def drop(self, job: str) -> None:
        with contextlib.suppress(ValueError):
            self._abandon(job)
            shutil.rmtree(self._root(job), ignore_errors=True)

    def parts(self, job: str, checkpoint: int, chunk: int = CHUNK) -> list[ReplicaPart]:
        """A stored replica as the parts that carry it up (none if it is gone)."""
        blob = self.read(job, checkpoint)
        if blob is None:
            return []
        count = max(1, -(-len(blob) // chunk))
        return [ReplicaPart(job=job, checkpoint=checkpoint, part=i, parts=count, blob=blob[i * chunk:(i + 1) * chunk])
                for i in range(count)]


def _fsync_dir(path: Path) -> None:
    """The rename is on disk once its directory is (a power cut keeps the replica or the older one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
