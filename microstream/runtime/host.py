"""A virtual node's host loop: the task runner (`tasks.py`) between data channels and control messages.

What a host adds to the runner is transport: a channel server it receives on, one channel client per
(local task, consumer virtual node), and the upstream side of moving another virtual node (hold what would go
to it at a barrier, then point its channels at its new host). The same loop runs in a `process` host and inside
a microVM, where the server and clients are proxies over the VM's virtio link.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..graph.logical import LogicalGraph
from ..graph.physical import PhysicalPlan
from .tasks import TaskRunner

if TYPE_CHECKING:  # statexfer needs pyzmq, which a microVM guest's host does without (its relay has it)
    from .statexfer import Packed, Precopy, StateSender

log = logging.getLogger(__name__)
_IDLE_WAIT = 0.05  # seconds a host waits for a message when no source is due sooner
# A restored vnode that has taken in nothing this long after its restore: its move is done all the same (a quiet
# stream, e.g. a sensor that reports on change, sends nothing to wait for; the move's downtime ends at the restore).
QUIET_RESUME_S = 3.0
# seconds a step takes messages in before it looks at its control link again: a busy vnode whose producers always
# have the next batch ready would otherwise never leave the loop (a move's pre-copy request waited for its end);
# a move's cut reaches a busy old host within this, so it is part of the downtime's worst case
_DRAIN_BUDGET = 0.02
FINAL_CONNECT_TIMEOUT = 5.0  # seconds the final round may wait for a connection no pre-copy round has proven
# tests only (tests/cluster/test_state_transfer.py): an old host whose ticket went first holds its final round this
# many seconds, so that a test can kill it in the window between the two (the fault the new host must not sit out)
HOLD_FINAL_ROUND_ENV = "MICROSTREAM_TEST_HOLD_FINAL_ROUND"


class HostRuntime:
    def __init__(self, graph: LogicalGraph, plan: PhysicalPlan, vnode_id: str, server: Any,
                 client_factory: Callable[[Any, str], Any], clock: Callable[[], int] = time.time_ns,
                 restoring: bool = False, epoch: int = 0, job: str = "", source_log: Path | None = None) -> None:
        self.vnode_id = vnode_id
        self.server = server
        self.client_factory = client_factory
        self.clock = clock
        self.runner = TaskRunner(graph, plan, vnode_id, clock, outbox=self._out, restoring=restoring,
                                 transactional=getattr(graph, "checkpoint_every", None) is not None, epoch=epoch,
                                 job=job, source_log=source_log)
        self.paused: dict[str, list[tuple[str, str, tuple, dict]]] = {}  # vnode -> sends held for it
        self.prepared: dict[str, tuple[Any, dict[str, Any]]] = {}  # vnode -> (its new host, task -> channel to it)
        self.connect_ahead = True                # open channels to a move's new host before its cut (prepare_redirect)
        self.saved: dict | None = None           # the snapshot, once taken: the run ends with it
        self.whole = False                       # the barrier is for a whole-host move, not a snapshot
        self.on_aligned: Callable[[], None] | None = None  # whole-host moves (a microVM): called at the cut
        self.clients: dict[tuple[str, str], Any] = {}
        # batches sent in the runner's current call, per channel, held until it returns: a watermark that follows one
        # for the same target travels in its header (one channel message and one credit, not two); any other send
        # first sends them all, in order
        self._pending: dict[tuple[str, str], tuple[tuple, dict]] = {}
        self.bytes_before: dict[tuple[str, str], int] = {}  # bytes sent on channels since replaced (redirects)
        self.refused = 0                         # messages for no task of this vnode (counted, logged once)
        self.held: list[Any] = []                # messages after a checkpoint barrier, until aligned (not acked)
        self.on_checkpoint: Callable[[int, dict], None] | None = None  # a checkpoint's snapshot of this vnode
        self.checkpoint_bases: dict[int, int | None] = {}  # checkpoint -> the base its request named
        self.last_done: int | None = None        # the last checkpoint this host heard was complete
        self._report: Callable[[dict], None] | None = None  # while `run` runs: where stats go, and when next
        self._report_every, self._next_report = 1.0, 0.0
        self.reports = 0                         # stats reported so far (the coordinator sees a stale report)
        # direct state transfer (statexfer.py): `transfers` makes senders (set by the host's life cycle)
        self.transfers: Any = None
        self.sender: StateSender | None = None   # to the new host of this vnode's move, once asked to pre-copy
        self.direct = False                      # the move's snapshot goes to `sender`, not to the coordinator
        self.precopy: Precopy | None = None      # the thread sending the state while the vnode runs
        self.on_precopied: Callable[[dict], None] | None = None  # pre-copy done: the move may cut
        self._precopied = False
        self.transfer_figures: dict[str, Any] = {}
        self._final: Packed | None = None       # a final round still to send, after its ticket (`_ticket_first`)
        self._resume_armed = (0.0, 0.0)          # when `on_resumed` was set (monotonic, wall): see QUIET_RESUME_S

    @property
    def on_resumed(self) -> Callable[..., None] | None:
        """Called once after a restore: with no argument at the first input; with the wall-clock time the host
        started when nothing came in for `QUIET_RESUME_S`."""
        return self.runner.on_resumed

    @on_resumed.setter
    def on_resumed(self, callback: Callable[..., None] | None) -> None:
        self.runner.on_resumed = callback
        # the quiet clock starts now, not when `run` did: a VM host that arrives whole is restored mid-run
        self._resume_armed = (time.monotonic(), time.time())

    def connect(self, endpoints: dict[str, Any]) -> None:
        """Open a channel from each local task to each virtual node it sends to (`endpoints[vnode]` is
        passed to the client factory)."""
        for task_id, target in self.runner.remote_targets():
            if (task_id, target.vnode) not in self.clients:
                self.clients[(task_id, target.vnode)] = self._client(endpoints[target.vnode],
                                                                     f"{task_id}>{target.vnode}")

    def _client(self, peer: Any, channel_id: str) -> Any:
        client = self.client_factory(peer, channel_id)
        if hasattr(client, "on_wait"):  # a send blocked on a cut link or a stuck consumer must not silence the host
            client.on_wait = self._on_wait
        return client

    def _on_wait(self) -> None:
        self._report_if_due()
        self._precopy_report()  # a pre-copy done while this host waits on a full channel: the move may cut now

    def _report_if_due(self) -> None:
        if self._report is not None and time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + self._report_every
            self.reports += 1
            self._report(self.stats())

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, report: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
            report_every: float = 1.0, control: Callable[[], Iterable[Any]] | None = None,
            control_socket: Any = None) -> dict:
        """Run until every task has finished (returns the result) or a snapshot was taken for a save or
        a migration (returns {"snapshot": state}). `control()` yields control messages from the agent."""
        self._report, self._report_every = report, report_every
        self._next_report = time.monotonic() + report_every
        try:
            while not self.done:
                if should_stop():
                    raise InterruptedError("stopped")
                for message in control() if control else ():
                    self.on_control(message.kind, message.header)
                if self.saved is not None:
                    return {"snapshot": self.saved}
                self.step(_IDLE_WAIT, control_socket)
                self._report_if_due()
                if self.on_resumed is not None and time.monotonic() - self._resume_armed[0] >= QUIET_RESUME_S:
                    self._resumed_quietly(self._resume_armed[1])
        finally:
            self._report = None
            self.runner.stop_sources()
            if self.saved is None:  # ended, stopped or failed during a move's pre-copy: no transfer follows
                self._close_transfer()
        self._flush_out()
        for client in self.clients.values():
            client.close()
        for vnode in list(self.prepared):
            self._drop_prepared(vnode)
        return self.result()

    @property
    def done(self) -> bool:
        """Every task has finished and nothing is held for a virtual node on the move."""
        return self.runner.finished and not self.paused

    def step(self, max_wait: float = _IDLE_WAIT, wake: Any = None) -> None:
        """One round: poll the sources that are due, take what has arrived (waiting up to `max_wait` seconds
        when nothing is due sooner, or until `wake` is readable), then close, checkpoint or snapshot."""
        runner = self.runner
        self._maybe_checkpoint()  # a vnode with sources only: at once, not after a wait for input it never gets
        timeout = runner.run_sources(self.clock(), int(max_wait * 1e9)) / 1e9
        self._flush_out()
        msg = self.server.recv(timeout=timeout, wake=wake)  # a control message ends the wait
        until = time.monotonic() + _DRAIN_BUDGET
        while msg is not None:
            self._receive(msg)
            msg = self.server.recv(timeout=0) if time.monotonic() < until else None
        runner.close_finished_inputs()
        self._maybe_checkpoint()
        self._flush_out()
        self._maybe_snapshot()
        self._precopy_step()

    def _receive(self, msg: Any) -> None:
        """Process and ack a message, or hold it (unacked: its producer's credits run down) while this virtual
        node aligns on a checkpoint whose barrier has already come on that channel."""
        if self.runner.holds(msg.target, msg.channel_id.split(">")[0]):
            self.held.append(msg)
            return
        self._on_message(msg)
        self._flush_out()
        self.server.ack(msg)
        if msg.kind == "checkpoint":  # the last barrier in: snapshot now, not once the inputs run dry (a busy
            self._maybe_checkpoint()  # vnode's receive loop may not, until held channels have no credit left)

    def _on_message(self, msg: Any) -> None:
        producer = msg.channel_id.split(">")[0]
        try:
            self.runner.deliver(msg.target, producer, msg.kind, msg.batch, msg.watermark, msg.barrier)
        except LookupError as exc:  # a peer's mistake must not end this host: refuse it and say so once
            self.refused += 1
            if self.refused == 1:
                log.warning("virtual node %s refused a message from %s: %s", self.vnode_id, msg.channel_id, exc)

    def _out(self, task_id: str, vnode: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Send on the channel from `task_id` to `vnode`, or hold the send while that vnode moves. A batch waits
        in `_pending` until the runner's call returns (`_flush_out`), so that the watermark its producer raises next
        for the same consumer task goes in its header: the consumer applies a batch's watermark after its records,
        as it would a watermark message right after it."""
        channel = (task_id, vnode)
        pending = self._pending.get(channel)
        if (pending is not None and method == "send_watermark" and kwargs.keys() == {"target"}
                and pending[1].get("target") == kwargs["target"]):
            self._pending[channel] = (pending[0], {**pending[1], "watermark": args[0]})
            return
        if method == "send_batch" and pending is None and vnode not in self.paused:
            self._pending[channel] = (args, kwargs)
            return
        self._flush_out()  # anything else goes after what was sent before it
        held = self.paused.get(vnode)
        if held is not None:
            held.append((task_id, method, args, kwargs))
            return
        if method == "send_batch":
            self._pending[channel] = (args, kwargs)
            return
        getattr(self.clients[channel], method)(*args, **kwargs)

    def _flush_out(self) -> None:
        """Send the batches `_out` holds, in the order they were sent."""
        while self._pending:
            channel = next(iter(self._pending))
            args, kwargs = self._pending.pop(channel)
            self.clients[channel].send_batch(*args, **kwargs)

    # -- barriers: save, restore and migrate a virtual node ----------------------------------------------
    def on_control(self, kind: str, header: dict) -> None:
        self._flush_out()  # what the runner sent goes before a barrier, a redirect or anything held for a move
        if kind == "checkpoint":
            self.checkpoint_bases[int(header["checkpoint"])] = header.get("base")
            self.runner.start_checkpoint(int(header["checkpoint"]))
        elif kind == "checkpoint_done":
            self.last_done = int(header["checkpoint"])
            self.runner.commit(int(header["checkpoint"]))
        elif kind == "snapshot" and header.get("vnode") == self.vnode_id:
            if header.get("to") and self.transfers is not None:
                transfer = f"{self.runner.job}/{self.vnode_id}/{header['barrier']}"
                if self.sender is None or self.sender.transfer != transfer:
                    self._new_sender(header["to"], transfer)
                if header.get("precopy"):  # copy the state while the vnode runs on; the cut comes later
                    self._start_precopy()
                    return
            elif header.get("precopy"):  # this host cannot send it directly: the cut may come at once
                if self.on_precopied is not None:
                    self.on_precopied({"failed": "this host cannot send its state directly"})
                return
            if header.get("to"):  # the final round goes to the new host (or, failing that, the coordinator)
                self.direct = True
                if self.precopy is not None:
                    self.precopy.stop(wait=False)  # the barrier is coming: let go of the sender
            self.runner.barrier = int(header["barrier"])
            self.whole = bool(header.get("whole")) and self.on_aligned is not None
        elif kind == "pause_to" and header["vnode"] != self.vnode_id:
            self.pause_to(header["vnode"], int(header["barrier"]))
        elif kind == "redirect" and header["vnode"] != self.vnode_id:
            if header.get("prepare"):
                self.prepare_redirect(header["vnode"], header["peer"])
            else:
                self.redirect(header["vnode"], header.get("peer"))
        elif kind == "redirect" and header.get("peer") is None and self.runner.barrier is None:
            self._close_transfer()  # this vnode's move was called off before its cut: its pre-copy ends

    def _channels_to(self, vnode: str) -> list[tuple[str, int]]:
        """(local task, target address) of every channel from here into `vnode`."""
        return sorted({(task_id, target.address) for task_id, target in self.runner.remote_targets()
                       if target.vnode == vnode})

    def pause_to(self, vnode: str, barrier: int) -> None:
        """Upstream side: mark the cut with a barrier on every channel into `vnode`, then hold what follows."""
        if vnode in self.paused:
            return
        for task_id, address in self._channels_to(vnode):
            self.clients[(task_id, vnode)].send_barrier(barrier, target=address)
        self.paused[vnode] = []

    def prepare_redirect(self, vnode: str, peer: Any) -> None:
        """Upstream side, before a move's cut: open the channels to `vnode`'s new host now (connection and CURVE
        handshake done, hello queued), so that at the redirect the held sends wait only for its credit grant."""
        self._drop_prepared(vnode)
        if not self.connect_ahead:
            return
        tasks = sorted({task_id for task_id, vn in self.clients if vn == vnode})
        self.prepared[vnode] = (peer, {t: self._client(peer, f"{t}>{vnode}") for t in tasks})

    def _drop_prepared(self, vnode: str) -> None:
        _, clients = self.prepared.pop(vnode, (None, {}))
        for client in clients.values():
            client.close(linger=0)  # nothing was sent on it

    def redirect(self, vnode: str, peer: Any | None) -> None:
        """Upstream side: point the channels into `vnode` at its new host (or keep the old one if `peer` is
        None: the move was called off) and send what was held, in order."""
        to, ready = self.prepared.pop(vnode, (None, {}))
        if to != peer:
            ready, self.prepared[vnode] = {}, (to, ready)
            self._drop_prepared(vnode)
        held = self.paused.pop(vnode, None)
        if held is None:
            for client in ready.values():
                client.close(linger=0)
            return
        if peer is not None:
            for (task_id, vn), client in list(self.clients.items()):
                if vn == vnode:
                    self.bytes_before[(task_id, vn)] = self.bytes_before.get((task_id, vn), 0) + client.sent_bytes
                    client.close()
                    self.clients[(task_id, vn)] = ready.pop(task_id, None) or self._client(peer, f"{task_id}>{vn}")
        for client in ready.values():
            client.close(linger=0)
        for task_id, method, args, kwargs in held:
            getattr(self.clients[(task_id, vnode)], method)(*args, **kwargs)

    # -- checkpoints: a consistent cut of the whole job, taken while it runs ------------------------------------
    def _maybe_checkpoint(self) -> None:
        """Aligned on a checkpoint: snapshot every task, pass the barrier on along every channel leaving this
        virtual node (before anything processed after it), hand the snapshot over, release what was held."""
        runner = self.runner
        if not runner.checkpoint_aligned():
            return
        checkpoint = runner.checkpoint
        assert checkpoint is not None
        runner.prepare_commit(checkpoint)
        state = runner.snapshot(checkpoint=True)
        for task_id, target in runner.remote_targets():
            self._out(task_id, target.vnode, "send_checkpoint", checkpoint, target=target.address)
        runner.last_checkpoint, runner.checkpoint = checkpoint, None
        if self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint, state)
        held, self.held = self.held, []
        for msg in held:
            self._receive(msg)

    def checkpoint_base(self, checkpoint: int) -> int | None:
        """What a chunked snapshot of `checkpoint` may send only the changes against (`checkpoint_chunks.py`): the
        coordinator's last completed checkpoint, as its request named it, or, when the barrier came before the
        request, the last checkpoint this host heard was complete."""
        base = self.checkpoint_bases.pop(checkpoint, self.last_done)
        for old in [c for c in self.checkpoint_bases if c < checkpoint]:
            del self.checkpoint_bases[old]
        return base

    def _maybe_snapshot(self) -> None:
        runner = self.runner
        if self.saved is not None or not runner.aligned():
            return
        for client in self.clients.values():  # everything sent before the cut is processed downstream first
            client.flush()
        if self.whole:  # nothing in flight either way: the host moves whole (memory included) and goes on
            runner.barrier, self.whole = None, False
            assert self.on_aligned is not None
            self.on_aligned()
            return
        state = runner.snapshot()
        if not self.direct:
            self.saved = state
        elif self._proven():
            self.saved = self._ticket_first(state)
        else:
            self.saved = self._final_round(state)

    def restore(self, state: dict) -> None:
        self.runner.restore(state)

    def _resumed_quietly(self, since: float) -> None:
        """Nothing came in since the restore (wall-clock `since`): tell the move it is done, as of then."""
        callback, self.on_resumed = self.on_resumed, None
        if callback is not None:
            callback(since)

    # -- direct state transfer (statexfer.py): pre-copy while running, only the delta at the barrier ---------------
    def _new_sender(self, peer: dict, transfer: str) -> None:
        self._close_transfer()
        self.sender = self.transfers.sender(peer, transfer)

    def _start_precopy(self) -> None:
        """Copy the state to the new host on a thread of its own while the vnode runs on (statexfer.Precopy): it
        progresses while this loop is busy or blocked on a full channel."""
        from .statexfer import Precopy

        assert self.sender is not None
        if self.precopy is None:
            self.precopy = Precopy(self.sender)
            self._offer_view()

    def _offer_view(self) -> None:
        """Between batches: a view of the live state for the pre-copy's next round (the operators' own arrays, no
        copies: `TaskRunner.snapshot(live=True)`)."""
        from .statexfer import pack

        assert self.precopy is not None
        self.precopy.offer(pack(self.runner.snapshot(live=True), self.runner.dirty_trackers()))

    def _precopy_step(self) -> None:
        """At the end of a step (the operators are between batches): a fresh view if the pre-copy wants one."""
        precopy = self.precopy
        if precopy is None or self.direct:
            return
        if precopy.wants and precopy.error is None:
            self._offer_view()
        self._precopy_report()

    def _precopy_report(self) -> None:
        """Tell the coordinator once the pre-copy has converged (or failed: the move then cuts at once and its state
        goes through the coordinator)."""
        precopy = self.precopy
        if precopy is None or self._precopied or self.direct or (precopy.converged is None and precopy.error is None):
            return
        self._precopied = True
        if self.on_precopied is not None:
            self.on_precopied({"failed": precopy.error} if precopy.error is not None else precopy.converged or {})

    def _proven(self) -> bool:
        """The pre-copy converged over a connection the new host has acknowledged rounds on."""
        precopy, sender = self.precopy, self.sender
        return (precopy is not None and precopy.error is None and precopy.converged is not None
                and sender is not None and sender.acked >= 0)

    def _ticket_first(self, state: dict) -> dict:
        """At the barrier, after a proven pre-copy: the ticket goes out at once and the final round follows it
        (`finish_transfer`), so that hashing the stopped state and sending what changed overlap the ticket's way
        through agent and coordinator to the new host, which waits for the final round anyway. (A final round
        that cannot even be queued on a proven connection means the new host is gone: its move fails as it would
        have had the host died a moment later.)"""
        from .statexfer import pack

        precopy, sender = self.precopy, self.sender
        assert precopy is not None and sender is not None
        precopy.stop(wait=False)  # a round it is still copying or sending: finished while the ticket travels
        self._final = pack(state, self.runner.dirty_trackers())
        self.transfer_figures = {"state_bytes": self._final.nbytes, "precopy_rounds": sender.rounds,
                                 "sent_bytes": sender.sent_bytes, "ticket_first": True}
        return {"direct_transfer": sender.transfer, **self.transfer_figures}

    def _send_final(self, packed: Packed) -> str | None:
        """After the ticket: once the pre-copy thread has let go of the sender (its last round sent), what
        changed since; why not, if it cannot be sent."""
        assert self.sender is not None
        if self.precopy is not None:
            self.precopy.stop()
            if self.precopy.error is not None:
                return self.precopy.error
        try:
            self.sender.send(packed, final=True)
        except RuntimeError as exc:
            return str(exc)
        return None

    def _final_round(self, state: dict) -> dict:
        """At the barrier: send what changed since the last pre-copy round, and the skeleton, to the new host, and
        return its ticket; if that cannot be done, the snapshot itself (it goes through the coordinator) and why."""
        from .statexfer import pack

        started = time.perf_counter()
        precopy, sender = self.precopy, self.sender
        if precopy is not None:
            precopy.stop()  # the thread lets go of the sender
        why = (precopy.error if precopy is not None else None) or (
            None if sender is not None else "this host cannot send its state directly")
        packed = final = None
        if why is None:
            assert sender is not None
            packed = pack(state, self.runner.dirty_trackers())
            try:
                # what changed since the last round; a connection no round has proven gets a short wait
                final = sender.send(packed, final=True, timeout=None if sender.acked >= 0 else FINAL_CONNECT_TIMEOUT)
            except RuntimeError as exc:
                why = str(exc)
        if why is not None or packed is None or sender is None:
            log.warning("virtual node %s: its state goes through the coordinator: %s", self.vnode_id, why)
            self.transfer_figures = {"path": "coordinator", "fallback": why}
            self._close_transfer()
            return state
        figures = {"state_bytes": packed.nbytes, "final_bytes": final, "precopy_rounds": sender.rounds - 1,
                   "sent_bytes": sender.sent_bytes, "final_s": time.perf_counter() - started}
        if precopy is None or precopy.converged is None:  # cut before the pre-copy was done (or without one)
            figures["stop_and_copy"] = True
        self.transfer_figures = figures
        return {"direct_transfer": sender.transfer, **figures}  # the new host's ticket

    def _close_transfer(self) -> None:
        if self.precopy is not None:
            self.precopy.stop()
            self.precopy = None
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        self._precopied = False

    def finish_transfer(self, timeout: float = 60.0) -> str | None:
        """After the snapshot's ticket went out: keep the connection until the new host has the final round (a
        socket closed at once may drop what it still queues). Why the new host may not have its state, if so (the
        host's life cycle reports it: the move's coordinator then recovers the job rather than let the new host
        wait for it)."""
        if self.sender is None:
            return None
        try:
            if self._final is not None:  # the ticket went first (`_ticket_first`): now what changed
                packed, self._final = self._final, None
                _hold_for_tests()
                why = self._send_final(packed)
                if why is not None:
                    return f"the final round of its state could not be sent: {why}"
            if self.direct and not self.sender.wait(timeout):
                return f"the new host did not confirm the final round of its state within {timeout:g} s"
            return None
        finally:
            self._close_transfer()

    # -- reporting --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        stats = self.runner.stats()
        stats["channels"] = {f"{k[0]}>{k[1]}": self._channel_stats(k, c) for k, c in self.clients.items()}
        stats["server"] = getattr(self.server, "stats", {})
        stats["refused_messages"] = self.refused
        stats["reports"] = self.reports
        return stats

    def _channel_stats(self, key: tuple[str, str], client: Any) -> dict[str, Any]:
        """One outgoing channel: its progress (`ChannelClient.stats`, where the client has them: a microVM's proxy
        has only the totals), its bytes across redirects, and the virtual node it goes to."""
        stats = dict(client.stats) if isinstance(getattr(client, "stats", None), dict) else {
            "blocked_seconds": getattr(client, "blocked_seconds", 0.0),
            "sent_messages": getattr(client, "sent_messages", 0), "sent_bytes": getattr(client, "sent_bytes", 0)}
        stats["sent_bytes"] += self.bytes_before.get(key, 0)
        stats["to"] = key[1]
        return stats

    def result(self) -> dict:
        result = self.runner.result()
        result["stats"] = self.stats()
        result["cpu_seconds"] = time.process_time()  # this host's process, all threads, since it started
        return result


def _hold_for_tests() -> None:
    """With MICROSTREAM_TEST_HOLD_FINAL_ROUND=seconds (tests only): wait that long between a move's ticket and its
    final round, the window in which a test kills this host."""
    hold = os.environ.get(HOLD_FINAL_ROUND_ENV)
    if hold:
        log.warning("virtual node: holding the final round of its state for %s s (%s is set: tests only)", hold,
                    HOLD_FINAL_ROUND_ENV)
        time.sleep(float(hold))
