"""The task runtime of one virtual node: runs its tasks, exchanging batches with other virtual nodes
over ZeroMQ channels.

Within the virtual node, operators push batches to each other in-process (as in the local runtime).
Across virtual nodes every batch travels on a channel with the producing task's watermark; a task's
input watermark is the minimum over every upstream task feeding it, and an input is finished when
each of them has sent its end-of-stream. Keyed edges are partitioned by a hash of the key that is
the same in every process.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.batch import Batch
from ..core.errors import MicrostreamError, OperatorError
from ..core.time import MAX_TIME, MIN_TIME
from ..graph.logical import DeadLetterHub, LogicalGraph
from ..graph.physical import FORWARD, HASH, PhysicalEdge, PhysicalPlan, Task
from ..operators.base import DEAD, LATE, OUT, Emit, OperatorContext
from ..operators.kernels.keys import stable_hash
from ..sinks.memory import Collect
from ..sources.base import Source

_KEEP_DEAD = 100


def target_ids(plan: PhysicalPlan) -> dict[tuple[str, int], int]:
    """A small integer for every (task, input) pair, identical on every host."""
    ids = {}
    for i, task_id in enumerate(sorted(plan.tasks)):
        for idx in range(8):
            ids[(task_id, idx)] = i * 8 + idx
    return ids


@dataclass
class _Remote:
    """One outgoing cross-vnode edge of a local task's port."""

    edge: PhysicalEdge
    targets: list[tuple[str, int, str]]   # (dst task id, target id, dst vnode) per dst subtask, by index
    key: str | None


@dataclass
class _HTask:
    task: Task
    name: str
    op: Any
    ctx: OperatorContext
    is_source: bool
    out_wm: int = MIN_TIME
    local_out: dict[str, list[tuple[_HTask, int]]] = field(default_factory=lambda: defaultdict(list))
    remote_out: dict[str, list[_Remote]] = field(default_factory=lambda: defaultdict(list))
    producers: dict[int, dict[str, int]] = field(default_factory=dict)   # input -> {producer task: wm}
    ended: set[tuple[int, str]] = field(default_factory=set)
    finished: bool = False
    records_in: int = 0
    records_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    rr: Any = None


class HostRuntime:
    def __init__(self, graph: LogicalGraph, plan: PhysicalPlan, vnode_id: str, server: Any,
                 client_factory: Callable[[Any, str], Any], clock: Callable[[], int] = time.time_ns,
                 restoring: bool = False) -> None:
        self.graph, self.plan, self.vnode_id = graph, plan, vnode_id
        self.restoring = restoring
        self.paused: dict[str, list[tuple[str, str, tuple, dict]]] = {}  # vnode -> sends held for it
        self.barrier: int | None = None          # the barrier this host is aligning on, if any
        self.barriers_seen: dict[tuple[str, int, str], int] = {}  # (task, input, producer) -> last barrier
        self.saved: dict | None = None           # the snapshot, once taken: the run ends with it
        self.bytes_before: dict[tuple[str, str], int] = {}  # bytes sent on channels since replaced (redirects)
        self.on_resumed: Callable[[], None] | None = None  # called once: the first record after a restore
        self.on_aligned: Callable[[], None] | None = None  # whole-host moves (a microVM): called at the cut
        self.whole = False                       # the barrier is for a whole-host move, not a snapshot
        self.server = server
        self.client_factory = client_factory
        self.clock = clock
        self.target_of = target_ids(plan)
        self.task_of_target = {v: k for k, v in self.target_of.items()}
        self.clients: dict[tuple[str, str], Any] = {}
        self.dead_count = 0
        self.late_count = 0                      # records windows refused as late (all their .late ports)
        self.dead_samples: list[dict] = []
        self._build()

    # -- wiring -------------------------------------------------------------------------------------
    def _build(self) -> None:
        plan, graph = self.plan, self.graph
        mine = plan.vnodes[self.vnode_id].tasks
        self.tasks: dict[str, _HTask] = {}
        for task_id in mine:
            task = plan.tasks[task_id]
            node = graph.nodes[task.node_id]
            schemas = [graph.nodes[s].out_schemas[p] for s, p in node.inputs]
            ctx = OperatorContext(node.name, schemas, node.out_schemas, [], self.clock,
                                  {"subtask": task.index, "parallelism": task.parallelism,
                                   "restoring": self.restoring})
            node.op.open(ctx)
            self.tasks[task_id] = _HTask(task, node.name, node.op, ctx, node.is_source)
        for edge in plan.edges:
            src_tasks = plan.tasks_of(edge.src_node)
            dst_tasks = plan.tasks_of(edge.dst_node)
            for s in src_tasks:
                targets = [d for d in dst_tasks if edge.partition != FORWARD or d.index == s.index]
                if s.id in self.tasks:
                    self._wire_out(self.tasks[s.id], edge, targets)
                for d in targets:
                    if d.id in self.tasks:
                        self.tasks[d.id].producers.setdefault(edge.dst_input, {})[s.id] = MIN_TIME
        for t in self.tasks.values():
            if isinstance(t.op, DeadLetterHub):
                t.producers.setdefault(0, {})
            n_inputs = len(self.graph.nodes[t.task.node_id].inputs)
            t.ctx.input_watermarks[:] = [MIN_TIME] * max(n_inputs, 1)

    def _wire_out(self, src: _HTask, edge: PhysicalEdge, targets: list[Task]) -> None:
        remote = []
        for d in targets:
            if d.id in self.tasks:
                src.local_out[edge.src_port].append((self.tasks[d.id], edge.dst_input))
            else:
                remote.append((d.id, self.target_of[(d.id, edge.dst_input)], self.plan.vnode_of(d.id)))
        if remote:
            src.remote_out[edge.src_port].append(_Remote(edge, remote, edge.key))

    def connect(self, endpoints: dict[str, Any]) -> None:
        """Open a channel from each local task to each virtual node it sends to (`endpoints[vnode]` is
        passed to the client factory)."""
        for t in self.tasks.values():
            for remotes in t.remote_out.values():
                for r in remotes:
                    for _, _, vn in r.targets:
                        if (t.task.id, vn) not in self.clients:
                            self.clients[(t.task.id, vn)] = self.client_factory(endpoints[vn], f"{t.task.id}>{vn}")

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, report: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
            report_every: float = 1.0, control: Callable[[], list[Any]] | None = None,
            control_socket: Any = None) -> dict:
        """Run until every task has finished (returns the result) or a snapshot was taken for a save or
        a migration (returns {"snapshot": state}). `control()` yields control messages from the agent."""
        sources = [t for t in self.tasks.values() if t.is_source and isinstance(t.op, Source)]
        for t in self.tasks.values():
            if t.is_source and not isinstance(t.op, Source):   # the dead-letter hub: fed by channels
                t.is_source = False
        next_report = time.monotonic() + report_every
        while not all(t.finished for t in self.tasks.values()) or self.paused:
            if should_stop():
                raise InterruptedError("stopped")
            for message in control() if control else ():
                self.on_control(message.kind, message.header)
            if self.saved is not None:
                return {"snapshot": self.saved}
            now = self.clock()
            busy = False
            waits = []
            for t in sources:
                if t.finished or self.barrier is not None:  # sources hold still while a snapshot aligns
                    continue
                src: Source = t.op
                due = src.next_due(now)
                if due is not None and due > now:
                    waits.append(due)
                    continue
                busy = True
                emitted = self._call(t, src.poll, now)
                if emitted:
                    self._resumed()
                self._emit(t, emitted)
                if src.time is not None or src.finished:
                    self._watermark(t, MAX_TIME if src.finished else src.end_watermark())
                if src.finished:
                    self._finish(t)
            timeout = 0.0 if busy else min(0.05, max(0.0, (min(waits) - now) / 1e9) if waits else 0.05)
            msg = self.server.recv(timeout=timeout, wake=control_socket)  # a control message ends the wait
            while msg is not None:
                self._on_message(msg)
                self.server.ack(msg)
                msg = self.server.recv(timeout=0)
            self._maybe_close_tasks()
            self._maybe_snapshot()
            if report and time.monotonic() >= next_report:
                report(self.stats())
                next_report = time.monotonic() + report_every
        for client in self.clients.values():
            client.close()
        return self.result()

    def _on_message(self, msg: Any) -> None:
        task_id, idx = self.task_of_target[msg.target]
        t = self.tasks[task_id]
        producer = msg.channel_id.split(">")[0]
        if msg.kind == "barrier":  # may arrive before the snapshot request itself: remember it
            self.barriers_seen[(task_id, idx, producer)] = int(msg.barrier)
            return
        if msg.kind == "batch" and msg.batch is not None:
            self._resumed()
            batch = self._held_back(t, idx, producer, msg.batch)
            t.records_in += batch.num_rows
            t.batches_in += 1
            self._emit(t, self._call(t, t.op.process, idx, batch) if not isinstance(t.op, DeadLetterHub)
                       else [(OUT, batch)])
        if msg.kind == "end":
            t.ended.add((idx, producer))
            self._producer_wm(t, idx, producer, MAX_TIME)
        elif msg.watermark is not None:
            self._producer_wm(t, idx, producer, msg.watermark)

    @staticmethod
    def _held_back(t: _HTask, idx: int, producer: str, batch: Batch) -> Batch:
        """A batch from one of several producers of an input (parallel upstream tasks) carries that producer's
        watermarks; hold them back to the slowest other producer, as `union` does across inputs, so that a
        window downstream does not fire before the other producers' records for it have arrived."""
        wms = t.producers.get(idx, {})
        if batch.base_wm is None or len(wms) < 2:
            return batch
        others = min(wm for p, wm in wms.items() if p != producer)
        held = np.minimum(batch.base_wm, others)
        if np.array_equal(held, batch.base_wm):
            return batch
        return Batch({n: batch.base(n) for n in batch.names}, held, batch.mask)

    def _producer_wm(self, t: _HTask, idx: int, producer: str, wm: int) -> None:
        wms = t.producers.setdefault(idx, {})
        if wm <= wms.get(producer, MIN_TIME):
            return
        wms[producer] = wm
        low_in = min(wms.values()) if wms else MIN_TIME
        if idx < len(t.ctx.input_watermarks) and low_in > t.ctx.input_watermarks[idx]:
            t.ctx.input_watermarks[idx] = low_in
        low = min(t.ctx.input_watermarks)
        if low > t.out_wm and not t.is_source:
            self._emit(t, self._call(t, t.op.on_watermark, low))
            self._watermark(t, low)

    def _maybe_close_tasks(self) -> None:
        for t in self.tasks.values():
            if t.finished or t.is_source:
                continue
            expected = {(i, p) for i, ps in t.producers.items() for p in ps}
            if expected and expected <= t.ended:
                self._finish(t)

    def _finish(self, t: _HTask) -> None:
        if t.finished:
            return
        self._watermark(t, MAX_TIME)
        self._emit(t, self._call(t, t.op.close))
        t.finished = True
        for dsts in t.local_out.values():
            for dst, idx in dsts:
                dst.ended.add((idx, t.task.id))
                self._producer_wm(dst, idx, t.task.id, MAX_TIME)
        for remotes in t.remote_out.values():
            for r in remotes:
                for _, target, vn in r.targets:
                    self._out(t.task.id, vn, "send_end", target=target)
        self._maybe_close_tasks()

    # -- moving data ----------------------------------------------------------------------------------
    def _call(self, t: _HTask, fn: Callable[..., Emit], *args: Any) -> Emit:
        try:
            return fn(*args)
        except MicrostreamError:
            raise
        except Exception as exc:
            raise OperatorError(t.name, exc) from exc

    def _emit(self, t: _HTask, emitted: Emit) -> None:
        for port, batch in emitted:
            if batch.num_rows == 0:
                continue
            if port == DEAD and not t.local_out.get(DEAD) and not t.remote_out.get(DEAD):
                self._dead(batch)
                continue
            t.records_out += batch.num_rows
            t.batches_out += 1
            if port == LATE:
                self.late_count += batch.num_rows
            for dst, idx in t.local_out.get(port, ()):
                dst.records_in += batch.num_rows
                dst.batches_in += 1
                hub = isinstance(dst.op, DeadLetterHub)
                held = batch if hub else self._held_back(dst, idx, t.task.id, batch)
                self._emit(dst, [(OUT, batch)] if hub else self._call(dst, dst.op.process, idx, held))
            for r in t.remote_out.get(port, ()):
                self._send(t, r, batch)

    def _send(self, t: _HTask, r: _Remote, batch: Batch) -> None:
        wm = t.out_wm if t.out_wm != MIN_TIME else None
        if len(r.targets) == 1:
            _, target, vn = r.targets[0]
            self._out(t.task.id, vn, "send_batch", batch.compact(), target=target, watermark=wm)
            return
        if r.edge.partition == HASH:
            which = (stable_hash(batch[r.key]) % np.uint64(len(r.targets))).astype(np.int64)
            for i, (_, target, vn) in enumerate(r.targets):
                part = batch.filter(which == i)
                if part.num_rows:
                    self._out(t.task.id, vn, "send_batch", part.compact(), target=target, watermark=wm)
            return
        if t.rr is None:
            t.rr = itertools.cycle(range(len(r.targets)))
        _, target, vn = r.targets[next(t.rr)]
        self._out(t.task.id, vn, "send_batch", batch.compact(), target=target, watermark=wm)

    def _watermark(self, t: _HTask, wm: int) -> None:
        if wm <= t.out_wm:
            return
        t.out_wm = wm
        for dsts in t.local_out.values():
            for dst, idx in dsts:
                self._producer_wm(dst, idx, t.task.id, wm)
        if wm == MAX_TIME:
            return  # the end-of-stream message carries it
        for port, remotes in t.remote_out.items():
            if port == DEAD:  # dead letters have no event time: a watermark there is only traffic
                continue
            for r in remotes:
                for _, target, vn in r.targets:
                    self._out(t.task.id, vn, "send_watermark", wm, target=target)

    def _resumed(self) -> None:
        if self.on_resumed is not None:
            callback, self.on_resumed = self.on_resumed, None
            callback()

    def _out(self, task_id: str, vnode: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Send on the channel from `task_id` to `vnode`, or hold the send while that vnode migrates."""
        held = self.paused.get(vnode)
        if held is not None:
            held.append((task_id, method, args, kwargs))
            return
        getattr(self.clients[(task_id, vnode)], method)(*args, **kwargs)

    # -- barriers: save, restore and migrate a virtual node ----------------------------------------------
    def on_control(self, kind: str, header: dict) -> None:
        if kind == "snapshot" and header.get("vnode") == self.vnode_id:
            self.barrier = int(header["barrier"])
            self.whole = bool(header.get("whole")) and self.on_aligned is not None
        elif kind == "pause_to" and header["vnode"] != self.vnode_id:
            self.pause_to(header["vnode"], int(header["barrier"]))
        elif kind == "redirect" and header["vnode"] != self.vnode_id:
            self.redirect(header["vnode"], header.get("peer"))

    def _remote_targets(self, vnode: str) -> list[tuple[str, int]]:
        """(local task, target id) of every channel from here into `vnode`."""
        out = []
        for t in self.tasks.values():
            for remotes in t.remote_out.values():
                for r in remotes:
                    out += [(t.task.id, target) for _, target, vn in r.targets if vn == vnode]
        return sorted(set(out))

    def pause_to(self, vnode: str, barrier: int) -> None:
        """Upstream side: mark the cut with a barrier on every channel into `vnode`, then hold what follows."""
        if vnode in self.paused:
            return
        for task_id, target in self._remote_targets(vnode):
            self.clients[(task_id, vnode)].send_barrier(barrier, target=target)
        self.paused[vnode] = []

    def redirect(self, vnode: str, peer: Any | None) -> None:
        """Upstream side: point the channels into `vnode` at its new host (or keep the old one if `peer` is
        None: the migration was called off) and send what was held, in order."""
        held = self.paused.pop(vnode, None)
        if held is None:
            return
        if peer is not None:
            for (task_id, vn), client in list(self.clients.items()):
                if vn == vnode:
                    self.bytes_before[(task_id, vn)] = self.bytes_before.get((task_id, vn), 0) + client.sent_bytes
                    client.close()
                    self.clients[(task_id, vn)] = self.client_factory(peer, f"{task_id}>{vn}")
        for task_id, method, args, kwargs in held:
            getattr(self.clients[(task_id, vnode)], method)(*args, **kwargs)

    def _expected_barriers(self) -> set[tuple[str, int, str]]:
        return {(t.task.id, idx, producer) for t in self.tasks.values() for idx, ps in t.producers.items()
                for producer in ps if producer not in self.tasks and (idx, producer) not in t.ended}

    def _maybe_snapshot(self) -> None:
        if self.barrier is None or self.saved is not None:
            return
        if any(self.barriers_seen.get(ch, -1) < self.barrier for ch in self._expected_barriers()):
            return
        for client in self.clients.values():  # everything sent before the cut is processed downstream first
            client.flush()
        if self.whole:  # nothing in flight either way: the host moves whole (memory included) and goes on
            self.barrier, self.whole = None, False
            self.on_aligned()
            return
        self.saved = self.snapshot()

    def snapshot(self) -> dict:
        tasks = {}
        for t in self.tasks.values():
            tasks[t.task.id] = {
                "op": t.op.snapshot(), "out_wm": t.out_wm, "producers": t.producers, "ended": sorted(t.ended),
                "input_wms": list(t.ctx.input_watermarks), "finished": t.finished,
                "counts": (t.records_in, t.records_out, t.batches_in, t.batches_out)}
        return {"vnode": self.vnode_id, "barrier": self.barrier, "tasks": tasks, "dead": self.dead_count,
                "late": self.late_count}

    def restore(self, state: dict) -> None:
        for task_id, s in state["tasks"].items():
            t = self.tasks[task_id]
            t.op.restore(s["op"])
            t.out_wm, t.finished = s["out_wm"], s["finished"]
            t.producers = {int(k): dict(v) for k, v in s["producers"].items()}
            t.ended = {(int(i), p) for i, p in s["ended"]}
            t.ctx.input_watermarks[:] = s["input_wms"]
            t.records_in, t.records_out, t.batches_in, t.batches_out = s["counts"]
        self.dead_count = state.get("dead", 0)
        self.late_count = state.get("late", 0)

    def _dead(self, batch: Batch) -> None:
        self.dead_count += batch.num_rows
        room = _KEEP_DEAD - len(self.dead_samples)
        if room > 0:
            self.dead_samples.extend(batch.to_records()[:room])

    # -- reporting --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        now = self.clock()
        ops = {}
        for t in self.tasks.values():
            lag = (now - t.out_wm) / 1e9 if t.out_wm not in (MIN_TIME, MAX_TIME) else None
            ops[t.task.id] = {"operator": t.name, "records_in": t.records_in, "records_out": t.records_out,
                              "batches_in": t.batches_in, "batches_out": t.batches_out, "watermark": t.out_wm,
                              "watermark_lag_s": lag, "finished": t.finished}
        channels = {f"{k[0]}>{k[1]}": {"blocked_seconds": getattr(c, "blocked_seconds", 0.0),
                                       "sent_messages": getattr(c, "sent_messages", 0),
                                       "sent_bytes": getattr(c, "sent_bytes", 0) + self.bytes_before.get(k, 0),
                                       "to": k[1]}
                    for k, c in self.clients.items()}
        return {"vnode": self.vnode_id, "operators": ops, "channels": channels,
                "dead_letters": self.dead_count, "server": getattr(self.server, "stats", {})}

    def result(self) -> dict:
        collected = {}
        for t in self.tasks.values():
            if isinstance(t.op, Collect):
                collected[t.name] = [b.to_dict() for b in t.op.batches()]
        records_in = {t.name: t.records_out for t in self.tasks.values() if t.is_source}
        records_out = {t.name: t.records_in for t in self.tasks.values() if self.graph.nodes[t.task.node_id].is_sink}
        return {"vnode": self.vnode_id, "collected": collected, "records_in": records_in,
                "records_out": records_out, "dead_letter_count": self.dead_count, "late_count": self.late_count,
                "dead_letters": self.dead_samples, "stats": self.stats()}
