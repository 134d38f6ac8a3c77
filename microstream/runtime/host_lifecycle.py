"""A virtual node's host life cycle, written once for every host backend.

    spec -> ready -> connect(endpoints) -> start(snapshot?) -> run, with stats every second
         -> done(result) | snapshot(state) | failed(error);   stop ends it at any point

The agent (or, in a microVM, the relay) speaks to the host through a `HostControl`: a ZeroMQ socket for a
process host (`host_main.py`), the VM's virtio link for a microVM host (`unikernel_backend/vmhost.py`).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cloudpickle

from ..core.errors import OperatorError
from .checkpoint_chunks import Encoder, decode, is_chunked
from .host import HostRuntime

DIRECT_TRANSFER_TIMEOUT = 60.0  # seconds a new host waits for the final round of a state sent to it directly


class ControlItem(Protocol):
    """One control message as a host reads it (read-only: any object with these attributes)."""

    @property
    def kind(self) -> str: ...
    @property
    def header(self) -> dict[str, Any]: ...
    @property
    def blob(self) -> bytes | None: ...


@dataclass(frozen=True)
class Raw:
    """A payload that is bytes already (a chunked checkpoint): a `HostControl` sends it as the blob, not pickled."""

    data: bytes


class HostControl(Protocol):
    """The host's end of its control link."""

    wake: Any   # something the channel server's recv can also wait on (a socket), or None

    def send(self, kind: str, payload: Any = None, **header: Any) -> None:
        """Tell the agent something; `payload` is cloudpickled (a `Raw` one is sent as it is)."""

    def expect(self, kind: str) -> ControlItem:
        """Block until a message of `kind` arrives (raise InterruptedError on a stop); messages about other
        virtual nodes' moves that come first are kept for `poll`."""

    def poll(self) -> Sequence[ControlItem]:
        """Control messages waiting now, without blocking (a stop is remembered in `stopped`)."""

    @property
    def stopped(self) -> bool: ...


class ParentWatch:
    """Tells a host that its agent is gone (the host was re-parented), so that no host outlives its agent.

    Polled rather than a parent-death signal: PR_SET_PDEATHSIG fires when the *thread* that started the
    process ends, and it cannot see an agent that exited between fork and exec."""

    def __init__(self, every: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.parent = os.getppid()
        self.every = every
        self.clock = clock
        self._next = 0.0

    def gone(self) -> bool:
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.every
        return os.getppid() != self.parent


def failure_report(exc: BaseException) -> dict[str, Any]:
    """What a host tells its agent when its run fails: enough for the client to raise the same error a
    local run raises (`OperatorError` naming the operator)."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    report: dict[str, Any] = {"error": detail, "traceback": traceback.format_exc()}
    if isinstance(exc, OperatorError):
        cause = exc.__cause__
        report["operator"] = exc.operator
        report["cause"] = "".join(traceback.format_exception_only(type(cause), cause)).strip() if cause else detail
    return report


def checkpoint_sender(control: HostControl, runtime: HostRuntime, graph: Any,
                      encoder: Encoder) -> Callable[[int, dict], None]:
    """How a host hands a checkpoint's snapshot to its agent: chunked, only what changed since the base
    (`checkpoint_chunks.py`), or every chunk each time if the job asked for full checkpoints
    (`graph.incremental_checkpoints` False: the baseline of bench/checkpoints.py)."""
    incremental = bool(getattr(graph, "incremental_checkpoints", True))  # a graph pickled before it existed

    def send(checkpoint: int, state: dict) -> None:
        base = runtime.checkpoint_base(checkpoint)
        blob = encoder.encode(state, checkpoint, base if incremental else None)
        if runtime.last_done is not None:
            encoder.done(runtime.last_done)
        control.send("checkpointed", Raw(blob), checkpoint=checkpoint)

    return send


def serve_vnode(control: HostControl, spec: dict[str, Any], settings: dict[str, Any], server: Any,
                client_factory: Callable[[Any, str], Any], ready: dict[str, Any],
                prepare: Callable[[HostRuntime], None] | None = None, transfers: Any = None) -> None:
    """Run one virtual node from its spec to its end, reporting to `control`. Exceptions propagate (the
    caller reports them with `failure_report`, which also covers failures before the runtime exists).
    `transfers` (`statexfer.Transfers`): this host sends and receives a move's state directly."""
    runtime = HostRuntime(spec["graph"], spec["plan"], settings["vnode"], server, client_factory,
                          restoring=bool(settings.get("restoring")), epoch=int(settings.get("epoch") or 0),
                          job=str(settings.get("job") or ""), source_log=settings.get("source_log"))
    encoder = Encoder()
    runtime.on_checkpoint = checkpoint_sender(control, runtime, spec["graph"], encoder)
    runtime.transfers = transfers
    runtime.on_precopied = lambda figures: control.send("precopied", figures=figures)
    if prepare is not None:
        prepare(runtime)
    # a replacement host receives a move's state from the old host directly, from before its start
    receiver = transfers.receiver() if transfers is not None and settings.get("restoring") else None
    early: list[ControlItem] = []  # control messages taken while waiting for a move's state: the run gets them first

    def stop_asked() -> bool:
        early.extend(control.poll())
        return control.stopped

    try:
        control.send("ready", **ready, **({"state_endpoint": receiver.endpoint} if receiver else {}))
        runtime.connect(control.expect("connect").header["endpoints"])
        start = control.expect("start")
        if start.blob is not None:  # a saved or migrated virtual node resumes from its snapshot
            received: dict[str, Any] | None = None
            began = time.monotonic()  # the restore's part of the downtime starts (after the state arrived, if sent)
            if is_chunked(start.blob):  # a recovery: the checkpoint's snapshot, the base of the next one
                state = decode(start.blob)
                encoder.adopt(start.blob)
            else:
                state = cloudpickle.loads(start.blob)
            if "direct_transfer" in state:  # a ticket: the state itself comes from the old host
                if receiver is None:
                    raise RuntimeError("a move sent its state directly, but this host cannot receive it")
                waiting = time.monotonic()
                # a stop ends the wait: the move was called off (its old host lost), the job recovers elsewhere
                state, received = receiver.wait(state["direct_transfer"], timeout=DIRECT_TRANSFER_TIMEOUT,
                                                should_stop=stop_asked)
                received["waited_s"] = time.monotonic() - waiting  # the final round's part of the downtime
                began = time.monotonic()
            runtime.restore(state)
            # the downtime after the state is here: the restore, then the wait for the first record (from `at`)
            resume = {**(received or {}), "restore_s": time.monotonic() - began, "restored_at": time.time()}
            runtime.on_resumed = lambda quiet_since=None: control.send(
                "resumed", at=quiet_since or time.time(), transfer=resume, quiet=quiet_since is not None)
    finally:
        if receiver is not None:
            receiver.close(wait=False)  # its thread lets go within 0.1 s: not in the move's downtime

    def polled() -> list[ControlItem]:
        taken, early[:] = [*early, *control.poll()], []
        return taken

    result = runtime.run(report=lambda stats: control.send("stats", stats=stats),
                         should_stop=lambda: control.stopped, control=polled, control_socket=control.wake)
    if "snapshot" in result:
        control.send("snapshot", result["snapshot"], **({"transfer": runtime.transfer_figures}
                                                        if runtime.direct else {}))
        why = runtime.finish_transfer()
        if why is not None:  # reported (the agent knows this host's snapshot went): its move recovers the job
            raise RuntimeError(why)
    else:
        control.send("done", result, stats=result["stats"])
