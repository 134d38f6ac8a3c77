"""The task runner: the one place where batches, watermarks, end-of-stream, barriers and dead letters move
between the tasks of a virtual node.

A `TaskRunner` runs the tasks of one virtual node of a physical plan. It instantiates each task's operator
from the graph's spec, wires the plan's edges (an edge whose consumer is in this virtual node is a direct call;
any other goes to the `outbox`, a transport the host provides), and exposes what a host loop needs: poll the
sources, deliver what arrived from other virtual nodes, fire processing-time ticks, align on a barrier and
take a snapshot, report statistics and the result.

The local runtime is a runner over a plan whose tasks all sit in one virtual node (no outbox at all); a
process host and a microVM host run the same runner with ZeroMQ channels behind the outbox. So local and
cluster runs agree by construction.

Watermarks: a task's input watermark is the minimum over every producer task feeding that input; a batch from
one of several producers carries that producer's per-record watermarks, held back to the slowest other
producer. An input is finished when each of its producers has ended.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from ..core.batch import Batch
from ..core.errors import MicrostreamError, OperatorError
from ..core.time import MAX_TIME, MIN_TIME
from ..graph.logical import LogicalGraph
from ..graph.physical import FORWARD, HASH, PhysicalPlan, Task
from ..operators.base import DEAD, LATE, OUT, Emit, Operator, OperatorContext
from ..operators.kernels.keys import stable_hash
from .results import KEEP_DEAD_LETTERS

if TYPE_CHECKING:
    from .sourcelog import LogPump

_R = TypeVar("_R")

RECENT_DEAD_LETTERS = 20  # the newest dead letters in each heartbeat (the console shows them)
# The watermark a producer sends when it has gone idle (a source that read nothing for its `idle_after`): its
# consumers leave it out of their minimum until it sends anything else (Flink's watermark idleness).
IDLE = MAX_TIME - 1


class Outbox(Protocol):
    """Where a runner sends what leaves its virtual node: `method` is send_batch, send_watermark, send_end or
    send_barrier, sent on the channel from `task_id` to virtual node `vnode`."""

    def __call__(self, task_id: str, vnode: str, method: str, *args: Any, **kwargs: Any) -> None: ...


def _no_outbox(task_id: str, vnode: str, method: str, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError(f"task {task_id} sends to virtual node {vnode}, but this runner has no transport")


def target_ids(graph: LogicalGraph, plan: PhysicalPlan) -> dict[tuple[str, int], int]:
    """A small integer for every (task, input) pair of the plan, identical on every host: the address a
    channel message carries. Derived from the plan, so an operator may have any number of inputs."""
    pairs: set[tuple[str, int]] = set()
    for task in plan.tasks.values():
        n_inputs = max(len(graph.nodes[task.node_id].inputs), 1)  # the dead-letter hub has one, fed by edges
        pairs.update((task.id, idx) for idx in range(n_inputs))
    return {pair: i for i, pair in enumerate(sorted(pairs))}


@dataclass
class Target:
    """One consumer subtask of an edge: a task of this runner (`local`) or of another virtual node."""

    task_id: str
    input: int
    address: int            # the target id a channel message carries
    vnode: str
    local: RunningTask | None


@dataclass
class Route:
    """An edge leaving a task's port, with the consumer subtasks it feeds."""

    partition: str
    key: str | None
    targets: list[Target]
    next_rr: int = 0

    @property
    def remote(self) -> bool:
        """Every consumer subtask is in another virtual node (what goes to it is compacted and sent)."""
        return all(target.local is None for target in self.targets)


@dataclass(eq=False)
class RunningTask:
    """A task as it runs: its operator instance and its bookkeeping."""

    task: Task
    name: str
    op: Operator
    ctx: OperatorContext
    polled: bool                                     # a source the runner polls
    is_sink: bool
    out_wm: int = MIN_TIME
    routes: dict[str, list[Route]] = field(default_factory=dict)
    producers: dict[int, dict[str, int]] = field(default_factory=dict)  # input -> {producer task: watermark}
    ended: set[tuple[int, str]] = field(default_factory=set)             # (input, producer) that ended
    idle_in: set[tuple[int, str]] = field(default_factory=set)           # (input, producer) that went idle
    idle: bool = False          # this task told its consumers it is idle (a quiet source, or all inputs idle)
    active_at: int = MIN_TIME   # a source: when it last emitted a record (its idleness clock)
    finished: bool = False
    records_in: int = 0
    records_out: int = 0        # rows emitted on the main output
    batches_in: int = 0
    batches_out: int = 0
    first_input_at: float | None = None  # wall time of the first batch in, in this process (after a restore: flowing)
    first_output_at: float | None = None  # a source: wall time it started reading the first batch it emitted
    last_input_at: float | None = None   # wall time of the last batch in (a sink: the data path's end)


class TaskRunner:
    def __init__(self, graph: LogicalGraph, plan: PhysicalPlan, vnode_id: str,
                 clock: Callable[[], int] = time.time_ns, outbox: Outbox = _no_outbox,
                 restoring: bool = False, tick_every: float = 0.1, transactional: bool = False,
                 epoch: int = 0, job: str = "", source_log: Path | None = None) -> None:
        self.graph, self.plan, self.vnode_id = graph, plan, vnode_id
        self.clock = clock
        self.outbox = outbox
        self.restoring = restoring
        self.transactional = transactional  # checkpoints commit output: sinks publish on `commit`
        self.epoch = epoch                  # the job's deployment: a sink of an older one must not publish
        self.job = job
        self.tick_every = int(tick_every * 1e9)
        self.next_tick = MIN_TIME
        self.address_of = target_ids(graph, plan)
        self.task_of_address = {v: k for k, v in self.address_of.items()}
        self.dead_count = 0
        self.late_count = 0          # records windows refused as late (every .late port)
        self.dead_samples: list[dict[str, Any]] = []
        # the newest few, in every heartbeat (the web console's dead-letter browser); rows cut short
        self.dead_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DEAD_LETTERS)
        self.barrier: int | None = None                          # a move's barrier being aligned on, if any
        self.barriers_seen: dict[tuple[str, int, str], int] = {}  # (task, input, producer) -> last barrier
        self.checkpoint: int | None = None                       # the checkpoint being aligned on, if any
        self.checkpoints_seen: dict[tuple[str, int, str], int] = {}  # (task, input, producer) -> last one
        self.last_checkpoint = -1                                # the last checkpoint this runner took
        self.on_resumed: Callable[..., None] | None = None  # once: the first input after a restore
        self.tasks: dict[str, RunningTask] = {}
        self.source_log = source_log      # where sources that cannot rewind log what they read (None: they do not)
        self.pumps: list[LogPump] = []    # their reading sides, started at the first poll (after any restore)
        self._instantiate()
        self._wire()
        self.sources = [t for t in self.tasks.values() if t.polled]
        self.ticking = [t for t in self.tasks.values() if t.op.wants_ticks]

    # -- set-up ---------------------------------------------------------------------------------------------
    def _instantiate(self) -> None:
        graph = self.graph
        for task_id in self.plan.vnodes[self.vnode_id].tasks:
            task = self.plan.tasks[task_id]
            node = graph.nodes[task.node_id]
            schemas = [graph.nodes[s].out_schemas[p] for s, p in node.inputs]
            ctx = OperatorContext(node.name, schemas, node.out_schemas, [], self.clock,
                                  {"subtask": task.index, "parallelism": task.parallelism,
                                   "restoring": self.restoring, "transactional": self.transactional,
                                   "epoch": self.epoch, "job": self.job})
            op = node.op.instantiate()
            try:
                op.open(ctx)
            except MicrostreamError:
                raise
            except Exception as exc:
                raise OperatorError(node.name, exc) from exc
            ctx.input_watermarks[:] = [MIN_TIME] * max(len(node.inputs), 1)
            if self.source_log is not None and getattr(node.op, "cannot_rewind", False):
                from .sourcelog import log_directory, logged_source  # sensors only: a local log

                op, pump = logged_source(op, ctx, log_directory(self.source_log, self.job, task_id),  # type: ignore[arg-type]
                                         self.transactional)
                self.pumps.append(pump)
            self.tasks[task_id] = RunningTask(task, node.name, op, ctx, op.polled, node.is_sink)

    def _wire(self) -> None:
        plan = self.plan
        for edge in plan.edges:
            dst_tasks = plan.tasks_of(edge.dst_node)
            for s in plan.tasks_of(edge.src_node):
                consumers = [d for d in dst_tasks if edge.partition != FORWARD or d.index == s.index]
                if s.id in self.tasks:
                    targets = [Target(d.id, edge.dst_input, self.address_of[(d.id, edge.dst_input)],
                                      plan.vnode_of(d.id), self.tasks.get(d.id)) for d in consumers]
                    self.tasks[s.id].routes.setdefault(edge.src_port, []).append(
                        Route(edge.partition, edge.key, targets))
                for d in consumers:
                    if d.id in self.tasks:
                        self.tasks[d.id].producers.setdefault(edge.dst_input, {})[s.id] = MIN_TIME

    # -- what a host loop calls -----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.tasks.values())

    def poll_sources(self, now: int) -> tuple[bool, int | None]:
        """Poll every source that is due. Returns (whether any was polled, the earliest time one is due)."""
        busy, due_next = False, None
        for pump in self.pumps:  # logged sources read at their own pace, whatever happens below
            pump.start()
        if self.barrier is not None or self.checkpoint is not None:  # sources hold still while a snapshot aligns
            return False, None
        for t in self.sources:
            if t.finished:
                continue
            src: Any = t.op
            due = src.next_due(now)
            if due is not None and due > now:
                due_next = due if due_next is None else min(due_next, due)
                due_next = self._idle_check(t, src, now, due_next)
                continue
            busy = True
            reading = time.time()
            emitted = self._call(t, src.poll, now)
            if emitted:
                self._resumed()
            if any(p == OUT and b.num_rows for p, b in emitted):
                if t.first_output_at is None:
                    t.first_output_at = reading
                t.active_at = now
                t.idle = False  # its consumers count it again as its records reach them
            self._emit(t, emitted)
            due_next = self._idle_check(t, src, now, due_next)
            if src.time is not None or src.finished:
                self._advance(t, MAX_TIME if src.finished else src.end_watermark())
            if src.finished:
                self.finish(t)
        return busy, due_next

    def _idle_check(self, t: RunningTask, src: Any, now: int, due_next: int | None) -> int | None:
        """A source with `idle_after` that has emitted nothing for that long goes idle: its consumers stop
        waiting for its watermark. Returns `due_next`, brought forward to when it would go idle."""
        after = getattr(src, "idle_after", None)
        if after is None or t.idle or src.finished:
            return due_next
        if t.active_at == MIN_TIME:
            t.active_at = now
        if now - t.active_at >= after:
            self._go_idle(t)
            return due_next
        when = t.active_at + after
        return when if due_next is None else min(due_next, when)

    def stop_sources(self) -> None:
        """Stop the reading sides of logged sources (a run ended, failed or was stopped)."""
        for pump in self.pumps:
            pump.stop()

    def run_sources(self, now: int, max_wait_ns: int) -> int:
        """Poll the sources that are due and fire processing-time ticks; returns how long (ns) nothing is due,
        at most `max_wait_ns` (0 when a source was read). Every host loop, local or not, waits that long."""
        busy, due = self.poll_sources(now)
        next_tick = self.tick(now)
        if busy:
            return 0
        return max(0, min([max_wait_ns, *(w - now for w in (due, next_tick) if w is not None)]))

    def remote_targets(self) -> Iterator[tuple[str, Target]]:
        """(local task id, target) of every edge leaving this virtual node."""
        for t in self.tasks.values():
            for routes in t.routes.values():
                for route in routes:
                    for target in route.targets:
                        if target.local is None:
                            yield t.task.id, target

    def tick(self, now: int) -> int | None:
        """Processing-time ticks for the operators that want them; returns when the next one is due."""
        if not self.ticking:
            return None
        if now >= self.next_tick:
            for t in self.ticking:
                if not t.finished:
                    self._emit(t, self._call(t, t.op.on_tick, now))
            self.next_tick = now + self.tick_every
        return self.next_tick

    def deliver(self, address: int, producer: str, kind: str, batch: Batch | None = None,
                watermark: int | None = None, barrier: int | None = None) -> None:
        """Something that arrived from another virtual node for one of this runner's task inputs: a batch
        (with the producer's watermark), a watermark, the producer's end of stream, or a barrier."""
        pair = self.task_of_address.get(address)
        if pair is None or pair[0] not in self.tasks:
            raise LookupError(f"no task input {address} in virtual node {self.vnode_id}")
        task_id, idx = pair
        t = self.tasks[task_id]
        if kind == "barrier":  # may arrive before the snapshot request itself: remember it
            self.barriers_seen[(task_id, idx, producer)] = int(barrier if barrier is not None else -1)
            return
        if kind == "checkpoint":  # the first checkpoint barrier to arrive starts the alignment here
            self.checkpoints_seen[(task_id, idx, producer)] = int(barrier if barrier is not None else -1)
            self.start_checkpoint(int(barrier if barrier is not None else -1))
            return
        if kind == "watermark" or (kind == "batch" and batch is not None):
            # input flows through this host: a move to it is done (a quiet stream's watermark ticks count too,
            # or the coordinator would take an idle vnode's finished move for a stalled one and recover the job)
            self._resumed()
        if kind == "batch" and batch is not None:
            self._rejoin(t, idx, producer)
            self._push(t, idx, producer, batch)
        if kind == "end":
            self._producer_ended(t, idx, producer)
        elif watermark is not None:
            self._producer_wm(t, idx, producer, watermark)

    def close_finished_inputs(self) -> None:
        """Close every task whose producers have all ended (and, through it, its consumers)."""
        for t in self.tasks.values():
            if t.finished or t.polled:
                continue
            expected = {(i, p) for i, ps in t.producers.items() for p in ps}
            if expected and expected <= t.ended:
                self.finish(t)

    def finish(self, t: RunningTask) -> None:
        """End of stream for a task: its watermark goes to +inf, it closes, its consumers hear it ended."""
        if t.finished:
            return
        self._advance(t, MAX_TIME)
        self._emit(t, self._call(t, t.op.close))
        t.finished = True
        for routes in t.routes.values():
            for route in routes:
                for target in route.targets:
                    if target.local is not None:
                        self._producer_ended(target.local, target.input, t.task.id)
                    else:
                        self.outbox(t.task.id, target.vnode, "send_end", target=target.address)
        self.close_finished_inputs()

    # -- moving data ------------------------------------------------------------------------------------------
    def _call(self, t: RunningTask, fn: Callable[..., _R], *args: Any) -> _R:
        try:
            return fn(*args)
        except MicrostreamError:
            raise
        except Exception as exc:
            raise OperatorError(t.name, exc) from exc

    def _push(self, t: RunningTask, idx: int, producer: str, batch: Batch) -> None:
        held = self._held_back(t, idx, producer, batch)
        t.last_input_at = time.time()
        if t.first_input_at is None:
            t.first_input_at = t.last_input_at
        t.records_in += batch.num_rows
        t.batches_in += 1
        self._emit(t, self._call(t, t.op.process, idx, held))

    def _emit(self, t: RunningTask, emitted: Emit) -> None:
        for port, batch in emitted:
            if batch.num_rows == 0:
                continue
            if port == DEAD:
                self._count_dead(batch)
            elif port == LATE:
                self.late_count += batch.num_rows
            if port == OUT:
                t.records_out += batch.num_rows
            t.batches_out += 1
            for route in t.routes.get(port, ()):
                self._route(t, route, batch)

    def _route(self, t: RunningTask, route: Route, batch: Batch) -> None:
        targets = route.targets
        if len(targets) == 1:
            self._to(t, targets[0], batch)
        elif route.partition == HASH:
            assert route.key is not None  # a hash-partitioned edge is partitioned by the stream's key
            which = (stable_hash(batch[route.key]) % np.uint64(len(targets))).astype(np.int64)
            if route.remote:  # every part leaves this process: gather each column once, not once per part
                for target, part in zip(targets, batch.split(which, len(targets)), strict=True):
                    if part.num_rows:
                        self._to(t, target, part)
                return
            for i, target in enumerate(targets):
                part = batch.filter(which == i)
                if part.num_rows:
                    self._to(t, target, part)
        else:  # rebalance: round robin, batch by batch
            target = targets[route.next_rr % len(targets)]
            route.next_rr += 1
            self._to(t, target, batch)

    def _to(self, t: RunningTask, target: Target, batch: Batch) -> None:
        if target.local is not None:
            self._rejoin(target.local, target.input, t.task.id)
            self._push(target.local, target.input, t.task.id, batch)
        else:
            wm = t.out_wm if t.out_wm != MIN_TIME else None
            self.outbox(t.task.id, target.vnode, "send_batch", batch.compact(), target=target.address, watermark=wm)

    @staticmethod
    def _held_back(t: RunningTask, idx: int, producer: str, batch: Batch) -> Batch:
        """A batch from one of several producers of an input (parallel upstream tasks) carries that producer's
        watermarks; hold them back to the slowest other producer, as `union` does across inputs, so that a
        window downstream does not fire before the other producers' records for it have arrived."""
        wms = t.producers.get(idx, {})
        if batch.base_wm is None or len(wms) < 2:
            return batch
        others = min((wm for p, wm in wms.items() if p != producer and (idx, p) not in t.idle_in), default=MAX_TIME)
        held = np.minimum(batch.base_wm, others)
        if np.array_equal(held, batch.base_wm):
            return batch
        return Batch({n: batch.base(n) for n in batch.names}, held, batch.mask)

    def _producer_ended(self, t: RunningTask, idx: int, producer: str) -> None:
        t.ended.add((idx, producer))
        self._producer_wm(t, idx, producer, MAX_TIME)

    def _producer_wm(self, t: RunningTask, idx: int, producer: str, wm: int) -> None:
        wms = t.producers.setdefault(idx, {})
        if wm == IDLE:  # the producer went idle: leave it out of the minimum until it sends anything else
            if (idx, producer) not in t.idle_in and (idx, producer) not in t.ended:
                t.idle_in.add((idx, producer))
                self._input_changed(t, idx)
            return
        rejoined = (idx, producer) in t.idle_in
        if rejoined:
            t.idle_in.discard((idx, producer))
        if wm <= wms.get(producer, MIN_TIME):
            if rejoined:
                self._input_changed(t, idx)
            return
        wms[producer] = wm
        self._input_changed(t, idx)

    def _rejoin(self, t: RunningTask, idx: int, producer: str) -> None:
        """A record from an idle producer: it counts again (its records may now be late downstream)."""
        if (idx, producer) in t.idle_in:
            t.idle_in.discard((idx, producer))
            self._input_changed(t, idx)

    def _input_changed(self, t: RunningTask, idx: int) -> None:
        """An input's producers moved (a watermark, one going idle or coming back): recompute its watermark
        (IDLE when all its producers are idle) and the task's, fire what it allows, and tell the consumers."""
        wms = t.producers.get(idx, {})
        live = [wm for p, wm in wms.items() if (idx, p) not in t.idle_in]
        low_in = min(live) if live else IDLE
        inputs = t.ctx.input_watermarks
        if idx < len(inputs) and (low_in > inputs[idx] or IDLE in (low_in, inputs[idx])):
            inputs[idx] = low_in  # an idle input is IDLE (it holds nothing back); back from idle it may be lower
        if t.polled:
            return
        if all(w == IDLE for w in inputs):
            self._go_idle(t)
            return
        if t.idle:
            self._wake(t)
        low = min(w for w in inputs if w != IDLE)
        if low > t.out_wm:
            self._emit(t, self._call(t, t.op.on_watermark, low))
            self._advance(t, low)

    def _go_idle(self, t: RunningTask) -> None:
        """Tell every consumer this task is idle: IDLE on each edge, local or not (dead letters have no time)."""
        if t.idle or t.finished:
            return
        t.idle = True
        self._to_consumers(t, IDLE)

    def _wake(self, t: RunningTask) -> None:
        """Back from idle: the consumers count this task again, from its current watermark."""
        t.idle = False
        self._to_consumers(t, t.out_wm)

    def _to_consumers(self, t: RunningTask, wm: int) -> None:
        for port, routes in t.routes.items():
            if port == DEAD:
                continue
            for route in routes:
                for target in route.targets:
                    if target.local is not None:
                        self._producer_wm(target.local, target.input, t.task.id, wm)
                    else:
                        self.outbox(t.task.id, target.vnode, "send_watermark", wm, target=target.address)

    def _advance(self, t: RunningTask, wm: int) -> None:
        """Raise a task's output watermark and tell its consumers."""
        if wm <= t.out_wm:
            return
        t.out_wm = wm
        for port, routes in t.routes.items():
            for route in routes:
                for target in route.targets:
                    if target.local is not None:
                        self._producer_wm(target.local, target.input, t.task.id, wm)
                    elif wm != MAX_TIME and port != DEAD:
                        # MAX_TIME travels with the end-of-stream message; dead letters have no event time
                        self.outbox(t.task.id, target.vnode, "send_watermark", wm, target=target.address)

    def _count_dead(self, batch: Batch) -> None:
        self.dead_count += batch.num_rows
        room = KEEP_DEAD_LETTERS - len(self.dead_samples)
        if room > 0:
            self.dead_samples.extend(batch.take(np.arange(min(room, batch.num_rows))).to_records())
        last = batch.take(np.arange(max(0, batch.num_rows - RECENT_DEAD_LETTERS), batch.num_rows)).to_records()
        self.dead_recent.extend({**r, "row": str(r.get("row", ""))[:200], "at": time.time()} for r in last)

    def _resumed(self) -> None:
        if self.on_resumed is not None:
            callback, self.on_resumed = self.on_resumed, None
            callback()

    # -- barriers ----------------------------------------------------------------------------------------------
    def expected_barriers(self) -> set[tuple[str, int, str]]:
        """(task, input, producer) of every channel from another virtual node that has not ended."""
        return {(t.task.id, idx, producer) for t in self.tasks.values() for idx, ps in t.producers.items()
                for producer in ps if producer not in self.tasks and (idx, producer) not in t.ended}

    def start_checkpoint(self, checkpoint: int) -> None:
        """Align on `checkpoint` (asked by the coordinator, or a barrier arrived on an input)."""
        if self.checkpoint is None and checkpoint > self.last_checkpoint:
            self.checkpoint = checkpoint

    def holds(self, address: int, producer: str) -> bool:
        """Whether what arrives from `producer` for `address` must wait: its checkpoint barrier has come and
        the others have not (processing it now would put records after the barrier into the checkpoint)."""
        if self.checkpoint is None:
            return False
        pair = self.task_of_address.get(address)
        return pair is not None and self.checkpoints_seen.get((*pair, producer), -1) >= self.checkpoint

    def checkpoint_aligned(self) -> bool:
        """The checkpoint barrier has arrived from every producer in another virtual node that has not ended."""
        if self.checkpoint is None:
            return False
        return all(self.checkpoints_seen.get(ch, -1) >= self.checkpoint for ch in self.expected_barriers())

    def prepare_commit(self, checkpoint: int) -> None:
        """Checkpoint `checkpoint` is being taken here: each operator notes what it would publish for it."""
        for t in self.tasks.values():
            t.op.prepare_commit(checkpoint)

    def commit(self, checkpoint: int) -> None:
        """Checkpoint `checkpoint` is complete everywhere: operators publish what it covers (two-phase commit)."""
        for t in self.tasks.values():
            self._call(t, t.op.commit, checkpoint)

    def aligned(self) -> bool:
        """The barrier being aligned on has arrived from every producer in another virtual node."""
        if self.barrier is None:
            return False
        return all(self.barriers_seen.get(ch, -1) >= self.barrier for ch in self.expected_barriers())

    def snapshot(self, checkpoint: bool = False, live: bool = False) -> dict[str, Any]:
        """Every task's state. A move's snapshot is the instance's last act; a checkpoint's must leave it running
        as it was (`Operator.checkpoint_snapshot`); a `live` one too, but may hold the operators' own arrays, read
        later while they change (a move's pre-copy: `Operator.live_snapshot`)."""
        if not checkpoint and not live:  # a move: logged sources stop reading, what they read travels in the snapshot
            self.stop_sources()
        tasks = {}
        for t in self.tasks.values():
            op = t.op.live_snapshot() if live else t.op.checkpoint_snapshot() if checkpoint else t.op.snapshot()
            tasks[t.task.id] = {
                "op": op, "out_wm": t.out_wm, "producers": {i: dict(p) for i, p in t.producers.items()},
                "ended": sorted(t.ended), "idle_in": sorted(t.idle_in),
                "input_wms": list(t.ctx.input_watermarks), "finished": t.finished,
                "counts": (t.records_in, t.records_out, t.batches_in, t.batches_out)}
        return {"vnode": self.vnode_id, "barrier": self.barrier, "checkpoint": self.checkpoint, "tasks": tasks,
                "dead": self.dead_count, "late": self.late_count, "dead_samples": self.dead_samples}

    def dirty_trackers(self) -> list[Any]:
        """Every operator's record of the rows it wrote (`Operator.dirty_trackers`), for `statexfer.pack`."""
        return [rows for t in self.tasks.values() for rows in t.op.dirty_trackers()]

    def restore(self, state: dict[str, Any]) -> None:
        for task_id, s in state["tasks"].items():
            t = self.tasks[task_id]
            t.op.restore(s["op"])
            t.out_wm, t.finished = s["out_wm"], s["finished"]
            t.producers = {int(k): dict(v) for k, v in s["producers"].items()}
            t.ended = {(int(i), p) for i, p in s["ended"]}
            t.idle_in = {(int(i), p) for i, p in s.get("idle_in", ())}
            t.ctx.input_watermarks[:] = s["input_wms"]
            t.records_in, t.records_out, t.batches_in, t.batches_out = s["counts"]
        self.dead_count = state.get("dead", 0)
        self.late_count = state.get("late", 0)
        self.dead_samples = list(state.get("dead_samples", []))
        if state.get("checkpoint") is not None:
            self.last_checkpoint = int(state["checkpoint"])

    # -- reporting ---------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = self.clock()
        ops = {}
        for t in self.tasks.values():
            lag = (now - t.out_wm) / 1e9 if t.out_wm not in (MIN_TIME, MAX_TIME) else None
            ops[t.task.id] = {"operator": t.name, "records_in": t.records_in, "records_out": t.records_out,
                              "batches_in": t.batches_in, "batches_out": t.batches_out, "watermark": t.out_wm,
                              "watermark_lag_s": lag, "finished": t.finished, "idle": t.idle,
                              "first_input_at": t.first_input_at}
            if hasattr(t.op, "log_stats"):  # a logged source: what its local log holds and has dropped
                ops[t.task.id]["source_log"] = t.op.log_stats()
        return {"vnode": self.vnode_id, "operators": ops, "dead_letters": self.dead_count,
                "dead_recent": list(self.dead_recent)}

    def result(self) -> dict[str, Any]:
        """What this virtual node's part of the run produced (merged across virtual nodes by `merge_results`)."""
        collected: dict[str, list[Any]] = {}
        records_in: dict[str, int] = {}
        records_out: dict[str, int] = {}
        counters: dict[str, int] = {}
        for t in self.tasks.values():
            for name, n in t.op.counters().items():
                counters[name] = counters.get(name, 0) + n
            results = t.op.results()
            if results is not None:
                collected.setdefault(t.name, []).extend(results)
            if t.polled:
                records_in[t.name] = records_in.get(t.name, 0) + t.records_out
            if t.is_sink:
                records_out[t.name] = records_out.get(t.name, 0) + t.records_in
        starts = [t.first_output_at for t in self.tasks.values() if t.polled and t.first_output_at is not None]
        ends = [t.last_input_at for t in self.tasks.values() if t.is_sink and t.last_input_at is not None]
        return {"vnode": self.vnode_id, "collected": collected, "records_in": records_in,
                "records_out": records_out, "dead_letter_count": self.dead_count, "late_count": self.late_count,
                "counters": counters, "dead_letters": self.dead_samples, "stats": self.stats(),
                "flow": [min(starts, default=None), max(ends, default=None)]}
