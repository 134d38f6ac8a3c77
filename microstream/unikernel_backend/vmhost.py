"""The virtual-node host inside a microVM, and the wire format between it and its host-side relay.

Inside the VM, `start(agent)` (run through the guest agent's `exec`) registers a handler for the
``rt`` byte stream and starts one thread that runs the same `HostRuntime` as a `process` host. The
runtime's channel server and clients are proxies: every data-plane message, control message and
result travels over the virtio-serial control channel (sequenced and acknowledged by `guest.Session`)
to the relay (`relay.py`), which owns the real ZeroMQ channels on the host. The guest needs no pyzmq
and no network.

Messages on ``rt`` are ``u32 meta length | JSON meta | raw buffers``. A batch travels as its column
buffers (numeric, bool, datetime, fixed-width bytes and unicode dtypes), never as a pickle, so the relay
decodes what a guest sends without running code chosen by the guest. Job specs, results and
application-level snapshots are cloudpickles that only the guest (or another host of the job) loads.

Relay -> guest: ``spec`` (settings, blob: the job), ``ctl`` (an agent message: connect, start,
snapshot, pause_to, redirect, stop), ``msg`` (a data-plane message, with a token to ack), ``credit``
(sends the relay has done), ``flushed``, ``continue`` (after a whole-VM move).
Guest -> relay: ``ready``, ``open``/``close`` (a channel to another vnode), ``send`` (batch, watermark,
end or barrier on a channel), ``ack`` (tokens processed), ``flush``, ``stats``, ``resumed``,
``aligned`` (a whole-VM move may start), ``snapshot``, ``done``, ``failed``.

Only the standard library, numpy and microstream's guest modules are imported at module level.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

STREAM = "rt"
SEND_WINDOW = 32     # sends the guest may have queued at the relay before it waits (backpressure)
ACK_EVERY = 8
_RAW_KINDS = frozenset("biufcmMSU")
_LEN = struct.Struct("<I")


# -- wire format ---------------------------------------------------------------------------------------
def encode(kind: str, header: dict[str, Any] | None = None, batch: Any = None, blob: bytes | None = None) -> bytes:
    meta: dict[str, Any] = {"k": kind, "h": header or {}}
    parts: list[bytes | memoryview] = []
    offset = 0

    def add(buf: bytes | memoryview, n: int) -> int:
        nonlocal offset
        pad = -offset % 8  # every buffer 8-aligned within the body: columns decode as aligned views
        if pad:
            parts.append(b"\0" * pad)
            offset += pad
        at = offset
        parts.append(buf)
        offset += n
        return at

    if batch is not None:
        cols = []
        for name in batch.names:
            col = np.ascontiguousarray(batch[name])
            if col.dtype.kind not in _RAW_KINDS:
                raise TypeError(f"column '{name}' ({col.dtype}) cannot leave a microVM: only numeric, bool, "
                                "datetime and fixed-width string columns travel between hosts of a VM")
            cols.append([name, col.dtype.str, add(col.view(np.uint8).data, col.nbytes), col.nbytes])
        wm = batch.wm
        wm_at = None
        if wm is not None:
            wm = np.ascontiguousarray(wm, dtype=np.int64)
            wm_at = add(wm.view(np.uint8).data, wm.nbytes)
        meta["b"] = {"rows": batch.num_rows, "cols": cols, "wm": wm_at}
    if blob is not None:
        meta["blob"] = [add(blob, len(blob)), len(blob)]
    head = json.dumps(meta, separators=(",", ":"), default=str).encode()
    start = _LEN.size + len(head)
    lead = -start % 8
    return b"".join([_LEN.pack(len(head) + lead), head, b" " * lead, *parts])


@dataclass
class Item:
    kind: str
    header: dict[str, Any]
    batch: Any = None
    blob: bytes | None = None


def decode(data: bytes | bytearray) -> Item:
    from ..core.batch import Batch

    buf = data if isinstance(data, bytearray) else bytearray(data)  # writable: numba's usual array type
    (n,) = _LEN.unpack_from(buf)
    meta = json.loads(bytes(buf[_LEN.size:_LEN.size + n]))
    body = memoryview(buf)[_LEN.size + n:]
    batch = blob = None
    b = meta.get("b")
    if b is not None:
        rows = int(b["rows"])
        cols = {}
        for name, dtype, at, nbytes in b["cols"]:
            cols[name] = _view(body, np.dtype(dtype), at, nbytes, rows)
        wm = _view(body, np.dtype(np.int64), b["wm"], rows * 8, rows) if b["wm"] is not None else None
        batch = Batch.__new__(Batch)
        batch._base, batch._mask, batch._wm, batch._cache, batch._len = cols, None, wm, {}, rows
    if meta.get("blob") is not None:
        at, nbytes = meta["blob"]
        blob = bytes(body[at:at + nbytes])
    return Item(meta["k"], meta.get("h") or {}, batch, blob)


def _view(body: memoryview, dtype: np.dtype, at: int, nbytes: int, rows: int) -> np.ndarray:
    if dtype.kind not in _RAW_KINDS or nbytes != rows * dtype.itemsize or at + nbytes > len(body):
        raise ValueError(f"malformed column buffer ({dtype}, {nbytes} bytes for {rows} rows)")
    arr = np.frombuffer(body[at:at + nbytes], dtype=dtype) if nbytes else np.empty(0, dtype)
    return arr if arr.flags.aligned else arr.copy()


# -- guest side ------------------------------------------------------------------------------------------
class _Control:
    """An agent control message as `HostRuntime.on_control` sees it."""

    def __init__(self, kind: str, header: dict[str, Any], blob: bytes | None = None) -> None:
        self.kind, self.header, self.blob = kind, header, blob


@dataclass
class GuestMessage:
    kind: str
    channel_id: str
    target: int
    seq: int
    watermark: int | None
    batch: Any = None
    barrier: int | None = None
    token: int = 0


class Wire:
    """The guest's end of the ``rt`` stream: ordered items from the relay, sends to it, send credits."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.inq: queue.Queue[bytes] = queue.Queue()
        self.buffer: collections.deque[Item] = collections.deque()  # set aside while waiting for a reply
        self.controls: list[_Control] = []
        self.outstanding = 0
        self.acks: list[int] = []
        self.flushes = 0
        self.sends_since_flush = 0
        self.blocked_seconds = 0.0
        agent.handlers[STREAM] = self.inq.put

    def send(self, kind: str, header: dict[str, Any] | None = None, batch: Any = None,
             blob: bytes | None = None) -> None:
        self.agent.send_data(STREAM, encode(kind, header, batch, blob))

    def _take(self, timeout: float | None) -> Item | None:
        """The next item that is not bookkeeping (credits and flush replies are applied here)."""
        while True:
            try:
                data = self.inq.get(timeout=timeout) if timeout is None or timeout > 0 else self.inq.get_nowait()
            except queue.Empty:
                return None
            item = decode(data)
            if item.kind == "credit":
                self.outstanding -= int(item.header["n"])
                continue
            return item

    def next(self, timeout: float | None) -> Item | None:
        if self.buffer:
            return self.buffer.popleft()
        if self.acks and not self.inq.qsize():
            self.flush_acks()  # about to wait: hand back what was processed
        item = self._take(timeout)
        if item is not None and item.kind == "flushed":
            return self.next(0)
        return item

    def wait_for(self, kind: str, check: Any = lambda item: True) -> Item:
        """Block until an item of `kind` arrives; everything else is kept, in order, for later."""
        while True:
            item = self._take(None)
            if item is None:
                continue
            if item.kind == kind and check(item):
                return item
            self.buffer.append(item)

    def acquire(self) -> None:
        """Wait for send credit from the relay (it returns credit once it has really sent)."""
        if self.outstanding < SEND_WINDOW:
            self.outstanding += 1
            return
        start = time.monotonic()
        while self.outstanding >= SEND_WINDOW:
            item = self._take(None)
            if item is not None:
                self.buffer.append(item)
        self.blocked_seconds += time.monotonic() - start
        self.outstanding += 1

    def ack(self, token: int) -> None:
        self.acks.append(token)
        if len(self.acks) >= ACK_EVERY:
            self.flush_acks()

    def flush_acks(self) -> None:
        if self.acks:
            tokens, self.acks = self.acks, []
            self.send("ack", {"tokens": tokens})

    def flush(self) -> None:
        """Every send so far has been acked by its consumer (the relay flushes its real channels)."""
        if not self.sends_since_flush:
            return
        self.flush_acks()
        self.flushes += 1
        fid = self.flushes
        self.send("flush", {"id": fid})
        self.wait_for("flushed", lambda item: item.header.get("id") == fid)
        self.sends_since_flush = 0


class ProxyServer:
    """`HostRuntime`'s channel server: data-plane messages the relay received for this vnode."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.messages = 0

    def recv(self, timeout: float | None = None, wake: Any = None) -> GuestMessage | None:
        item = self.wire.next(timeout)
        if item is None:
            return None
        if item.kind != "msg":  # a control message ends the wait, as the control socket does in a process host
            self.wire.controls.append(_Control(item.header.get("kind", item.kind), item.header.get("header", {}),
                                               item.blob))
            return None
        h = item.header
        self.messages += 1
        return GuestMessage(h["kind"], h["channel_id"], int(h["target"]), int(h["seq"]), h.get("watermark"),
                            item.batch, h.get("barrier"), int(h["token"]))

    def ack(self, message: GuestMessage) -> None:
        self.wire.ack(message.token)

    @property
    def stats(self) -> dict[str, Any]:
        return {"messages": self.messages, "via": "microvm relay"}


class ProxyClient:
    """`HostRuntime`'s channel to another vnode: the relay holds the real ZeroMQ client."""

    def __init__(self, wire: Wire, channel_id: str, peer: Any) -> None:
        self.wire, self.channel_id, self.peer = wire, channel_id, peer
        self.sent_messages = 0
        self.sent_bytes = 0
        self.closed = False
        wire.send("open", {"cid": channel_id, "peer": peer})

    @property
    def blocked_seconds(self) -> float:
        return self.wire.blocked_seconds

    def _send(self, method: str, batch: Any = None, **fields: Any) -> bool:
        self.wire.acquire()
        self.wire.send("send", {"cid": self.channel_id, "m": method, **fields}, batch)
        self.wire.sends_since_flush += 1
        self.sent_messages += 1
        if batch is not None:
            self.sent_bytes += sum(batch[n].nbytes for n in batch.names)
        return True

    def send_batch(self, batch: Any, target: int = 0, watermark: int | None = None, timeout: float | None = None):
        return self._send("batch", batch.compact(), target=target, watermark=watermark)

    def send_watermark(self, watermark: int, target: int = 0, timeout: float | None = None) -> bool:
        return self._send("watermark", target=target, watermark=watermark)

    def send_end(self, target: int = 0, timeout: float | None = None) -> bool:
        return self._send("end", target=target)

    def send_barrier(self, barrier_id: int, target: int = 0, timeout: float | None = None) -> bool:
        return self._send("barrier", target=target, barrier=barrier_id)

    def send_checkpoint(self, checkpoint_id: int, target: int = 0, timeout: float | None = None) -> bool:
        return self._send("checkpoint", target=target, barrier=checkpoint_id)

    def flush(self, timeout: float | None = None) -> bool:
        self.wire.flush()
        return True

    def reopen(self) -> None:
        """After a whole-VM move: the relay on the new machine opens the real channel again."""
        if not self.closed:
            self.wire.send("open", {"cid": self.channel_id, "peer": self.peer})

    def close(self, linger: float = 1.0) -> None:
        if not self.closed:
            self.closed = True
            self.wire.send("close", {"cid": self.channel_id})


def _numba_cache() -> None:
    """Use the kernels compiled into the image (numba needs a writable cache directory: copy it to tmpfs)."""
    from .guest import NUMBA_CACHE, NUMBA_ENV

    writable = "/tmp/numba-cache"
    if os.path.isdir(NUMBA_CACHE) and not os.path.isdir(writable):
        shutil.copytree(NUMBA_CACHE, writable)
    os.environ.update({**NUMBA_ENV, "NUMBA_CACHE_DIR": writable})


def start(agent: Any) -> str:
    """Run a virtual-node host in this guest (called once, through the guest agent's exec)."""
    # before anything imports numba: it reads its cache directory and CPU name once, at import. The host thread's
    # first imports pull numba in; imported before this, a cold VM compiled every kernel under TCG instead of
    # loading the image's
    _numba_cache()
    wire = Wire(agent)
    threading.Thread(target=_serve, args=(wire,), name="vnode-host", daemon=True).start()
    return "started"


def preload() -> float:
    """Load what every keyed windowed job needs before the first record: numba's compiler and type system
    (~10 s under TCG) and the commonest window kernels from the image's cache (~5 s), by running a tiny
    job. Done while the VM starts, so neither a job's first batch nor a migration's downtime pays it."""
    start = time.monotonic()
    import microstream as ms

    for filtered in (False, True):
        p = ms.Pipeline("preload")
        src = p.synthetic(count=200, sensors=4, rate=4000, seed=1, batch_size=100)
        if filtered:
            src = src.filter(lambda b: b["value"] > -1e9)
        src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
            n=ms.agg.count(), mean=ms.agg.mean("value"), sd=ms.agg.std("value")).sink(ms.sinks.collect())
        p.run()
    return time.monotonic() - start


_WARMED: list[float] = []  # seconds the warm-up took, once done in this guest (a template VM has done it)


def warm() -> float:
    """Get this guest ready for a job: numba's cache in place and `preload` done. Once per guest: a VM restored
    from a template (`template.py`) was warmed before it was saved, so this returns at once there."""
    if not _WARMED:
        start = time.monotonic()
        _numba_cache()
        preload()
        _WARMED.append(time.monotonic() - start)
    return _WARMED[0]


def _serve(wire: Wire) -> None:
    from ..runtime.host_lifecycle import failure_report

    try:
        from_template = bool(_WARMED)
        warm_s = 0.0 if from_template else warm()
        spec_item = wire.wait_for("spec")
        _run(wire, {**spec_item.header, "preload_s": warm_s}, spec_item.blob)
    except InterruptedError:
        wire.send("exited", {})
    except BaseException as exc:  # noqa: BLE001 - reported to the relay, which tells the agent
        wire.send("failed", failure_report(exc))


class WireControl:
    """A microVM host's control link: agent messages arrive through the relay as ``ctl`` items on the wire."""

    wake = None

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def send(self, kind: str, payload: Any = None, **header: Any) -> None:
        import cloudpickle

        from ..runtime.host_lifecycle import Raw

        blob = payload.data if isinstance(payload, Raw) else cloudpickle.dumps(payload) if payload is not None else None
        self.wire.send(kind, header, blob=blob)

    def expect(self, kind: str) -> _Control:
        while True:
            item = self.wire.wait_for("ctl")
            c = _Control(item.header["kind"], item.header.get("header", {}), item.blob)
            if c.kind == kind:
                return c
            if c.kind == "stop":
                raise InterruptedError("stopped by the agent")
            self.wire.controls.append(c)  # about other vnodes' moves: handled once running

    def poll(self) -> list[_Control]:
        """Control messages waiting (without blocking); a `stop` ends the run."""
        wire = self.wire
        while True:
            item = wire.next(0)
            if item is None:
                break
            if item.kind == "msg":  # data: keep it, in order, for the next recv
                wire.buffer.append(item)
                break
            wire.controls.append(_Control(item.header.get("kind", item.kind), item.header.get("header", {}),
                                          item.blob))
        pending, wire.controls = wire.controls, []
        self._stopped = self._stopped or any(c.kind == "stop" for c in pending)
        return [c for c in pending if c.kind != "stop"]


def _run(wire: Wire, settings: dict[str, Any], blob: bytes | None) -> None:
    import cloudpickle

    from ..runtime.host_lifecycle import serve_vnode

    t0 = time.monotonic()
    spec = cloudpickle.loads(blob)
    control = WireControl(wire)
    clients: list[ProxyClient] = []

    def factory(peer: Any, cid: str) -> ProxyClient:
        client = ProxyClient(wire, cid, peer)
        clients.append(client)
        return client

    def whole_vm_moves(runtime: Any) -> None:
        def on_aligned() -> None:
            """A whole-VM move: nothing is in flight now; wait (the VM moves meanwhile) until the relay on
            the new machine says go on, then reopen this vnode's channels from there."""
            wire.flush_acks()
            wire.send("aligned", {})
            wire.wait_for("continue")
            for client in clients:
                client.reopen()
            runtime.on_resumed = lambda quiet_since=None: wire.send(  # how long ago, on the guest's own clock
                "resumed", {"quiet_for": None if quiet_since is None else time.time() - quiet_since})

        runtime.on_aligned = on_aligned
        runtime.connect_ahead = False  # the relay holds one channel per id: a second one to a move's new host
        # would replace the channel to its old host before the cut

    serve_vnode(control, spec, settings, ProxyServer(wire), factory, prepare=whole_vm_moves,
                ready={"seconds": time.monotonic() - t0, "preload_s": settings.get("preload_s")})
