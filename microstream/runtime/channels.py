"""Data channels: batches from producer tasks to one consumer host over ZeroMQ TCP.

One `ChannelServer` per consumer host binds a ROUTER socket; every upstream task instance opens a
`ChannelClient` (a DEALER) to it. The channel provides

* **zero-copy columns.** A batch travels as one multipart message: a small header frame, then one frame
  per column buffer (and one for the per-record watermark array). Frames are sent with ``copy=False``
  and received with ``copy=False``; the consumer's columns are ``np.frombuffer`` views of the ZeroMQ
  frames, so no byte is copied on either side for large columns. (pyzmq copies frames below
  ``zmq.COPY_THRESHOLD`` on send; a received frame whose address is not aligned for its dtype, which
  only happens to small frames that libzmq packs into its shared receive buffer, is copied once and
  counted in ``stats["copied_frames"]``; received frames are malloc'd by libzmq, and a server keeps
  freed ones mapped for the next messages: see `_keep_receive_buffers`.) Numeric, bool, datetime,
  fixed-width bytes (``S``) and unicode (``U``) columns travel as raw buffers (a text column whose rows
  all hold one value as that value, and a watermark array that is an int64 column plus a constant, as an
  in-order source's is, as no frame at all: bytes CURVE need not encrypt); ``object`` columns (and
  anything else) are pickled into one frame, which leaves the fast path. Received columns are aligned,
  C-contiguous and writable (views of frames the consumer owns), i.e. the same numba array types as
  local batches, so kernels compiled for the local runtime are reused rather than specialised for
  read-only or unaligned arrays.
* **credit-based backpressure.** The server grants each producer a window up front (in reply to the
  producer's hello) and returns one credit per `ChannelServer.ack`. A producer out of credits blocks
  in `send_batch` until credit arrives (that wait is `ChannelClient.blocked_seconds`). *Every*
  data-plane message (batch, watermark, end, barrier) consumes one credit and must be acked, which
  keeps a single ordered sequence per channel. The window counts messages and bytes: a producer may
  always have ``credits`` messages unacked, and more (up to ``max(credits, MAX_WINDOW_MESSAGES)``)
  while the bytes it has unacked stay under its byte window: what the consumer processes in
  ``window_seconds`` (0.1 s), measured from its acks, at most ``window_bytes`` (4 MB), and sent with
  every credit frame (the idea of Flink's buffer debloating). Large batches are held to ``credits``
  (about ``credits x batch size`` of the consumer's memory), small ones still fill the credit round
  trip (with messages alone, 32 KB batches and 8 credits ran at about half raw PUSH/PULL's rate:
  bench/channels.py), and a slow consumer's queue, which a checkpoint's or a move's barrier waits
  behind, stays at about 0.1 s of its work or ``credits`` messages. The consumer's memory per producer
  stays bounded by the larger of ``credits`` messages and ``window_bytes`` plus one message. Acked
  credits go back in groups (a quarter of the window, in messages or in bytes, whichever comes first;
  and at once when a control message is acked), which saves wake-ups on both sides. A `recv` about to wait hands
  back what is pending first: at once if it was asked not to wait (``timeout=0``) or a producer may be out of
  credits, else after at most ``CREDIT_GRACE_MS`` (1 ms) without a message, so that a consumer keeping up with a
  faster producer still returns credits in groups rather than one per message (each credit frame wakes the producer
  and both processes' I/O threads, CPU that raw PUSH/PULL never spends).
* **sequence numbers, and links that heal.** Each channel numbers its messages 0, 1, 2, ... (control
  messages included). The consumer delivers them in order, exactly once: a duplicate is dropped, and a
  message after a gap (what was in flight on a TCP connection that died) is dropped and the producer is
  told where to resume. Credit frames carry the consumer's cumulative position (acked through seq *a*,
  received through seq *r*), so a lost credit frame costs nothing. The producer keeps every message until
  it is acked (at most its window, so memory stays bounded) and replays from *r* + 1 when told; while it
  waits for credit it re-sends its hello every `RESYNC_EVERY` seconds, which the consumer answers with its
  position. ZMTP heartbeats and TCP keepalive make a dead connection fail (and reconnect) instead of
  hanging. No reconnect, however late, loses, duplicates or deadlocks a channel. `ChannelServer.stats`
  keeps the last seq, gaps, duplicates and resend requests per channel.
* **CURVE authentication.** With ``keys`` the server is a CURVE server whose ZAP handler accepts only
  the ``trusted`` producer public keys (replaceable at run time with `ChannelServer.set_trusted`;
  the new set applies to new connections). A producer with any other key, or a plaintext producer,
  fails the handshake: the server never sees a frame from it. With ``keys=None`` the channel is
  plaintext; the runtime only allows that behind an explicit ``--insecure`` flag.

Contexts and the ZAP authenticator: libzmq allows one ZAP handler per context. A `ChannelServer`
without a ``context`` argument creates (and terminates on close) its own context. Servers that are
given a context share one `zmq.auth.thread.ThreadAuthenticator` per context (reference-counted by
this module): each server registers a callback under its own ZAP domain, so several CURVE servers can
live in one context with different trusted sets. Do not start another authenticator on a context
you pass in. Clients need no authenticator and default to ``zmq.Context.instance()``.

Sockets are not thread-safe: use a server or a client from one thread at a time.

Wire format (all little-endian). Producer -> consumer, one multipart message::

    frame 0   fixed header  _HEADER (magic b"MC", version, kind, flags, ncols, target, seq,
                            watermark, barrier, rows, meta length) + meta: compact JSON
                            {"c": channel id, "s": [[name, dtype str, encoding], ...], "w": [column, offset]}
                            (encoding "r" = raw buffer of rows x itemsize bytes, "p" = pickle, "c" = one
                            item, every row's value: a text column whose rows are all the same, as a window's
                            `pane` mostly is; "w", when present: the wm array is that int64 column + offset, as
                            an in-order source's is, and travels as no frame)
    frame 1.. one per column, in schema order
    last      the int64 wm array, when flags has _F_WM and the meta has no "w"

Consumer -> producer: one frame, _CREDIT (magic, version, kind, count, acked through, received through,
credits, window bytes): kind _K_GRANT for the window (the reply to a hello, and a request to resume after a
gap; count = the most messages unacked at once), _K_CREDIT for credits returned by acks (count = how many).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..core.batch import Batch
from ..core.errors import MicrostreamError

__all__ = ["ChannelClient", "ChannelError", "ChannelServer", "CurveKeys", "Message", "generate_keys"]

log = logging.getLogger(__name__)

_MAGIC = b"MC"
_VERSION = 4  # 3: constant text columns ("c") and a wm derived from a column ("w"); 4: windows in bytes
# magic, version, kind, flags, ncols, target, seq, watermark, barrier, rows, meta length
_HEADER = struct.Struct("<2sBBHHIqqqQI")
_CREDIT = struct.Struct("<2sBBIqqIQ")

_K_HELLO, _K_BATCH, _K_WATERMARK, _K_END, _K_BARRIER, _K_CHECKPOINT = 0, 1, 2, 3, 4, 5
_K_GRANT, _K_CREDIT = 16, 17  # consumer -> producer: the initial window; credits returned by acks
_KIND_NAMES = {_K_BATCH: "batch", _K_WATERMARK: "watermark", _K_END: "end", _K_BARRIER: "barrier",
               _K_CHECKPOINT: "checkpoint"}
_F_WATERMARK, _F_BARRIER, _F_WM = 1, 2, 4
_RAW_KINDS = frozenset("biufcmMSU")  # dtypes whose buffer is self-describing given dtype.str
_META_CACHE_MAX = 256
_INT64 = np.dtype(np.int64)
_SNDMORE = int(zmq.SNDMORE)
_I64_MIN, _I64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_ABORT_CHECK_MS = 500  # how often a blocked producer asks whether it should stop waiting
RESYNC_EVERY = 1.0     # seconds a blocked producer waits before asking the consumer where it is
ACK_SHARE = 4  # acked credits go back in groups of a quarter of the window (messages or bytes)
WINDOW_BYTES = 4 << 20  # a producer may have this many bytes unacked (beyond `credits` messages, which it always may)
# ... or what its consumer processes in this many seconds, if less (measured from its acks every `RATE_EVERY`
# seconds): in-flight data is what a barrier (a checkpoint, a move) waits behind, so a slow consumer keeps only
# `credits` messages queued, and a fast one gets the whole window to cover the credit round trip
WINDOW_SECONDS = 0.1
RATE_EVERY = 0.05
# ... in at most this many messages (or `credits`, if more): enough to cover the credit round trip with 32 KB
# batches, and few enough that backpressure still reaches a source of small batches within seconds (a sensor's
# store-and-forward log fills while its link is cut, instead of a thousand readings queueing in memory)
MAX_WINDOW_MESSAGES = 64
CREDIT_GRACE_MS = 1  # ms a consumer about to wait holds pending credits, for the next message to join them
MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD = 16 << 20, 32 << 20  # see _keep_receive_buffers
MAX_MESSAGE_BYTES = 256 << 20  # a frame larger than this is refused before it is read (pre-authentication too)
HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS = 1000, 5000  # ZMTP PING every second; no answer in 5 s: the connection is dead


@functools.cache
def _keep_receive_buffers() -> None:
    """Keep freed receive buffers mapped for the next messages (glibc only; once per process).

    libzmq mallocs every large frame it receives, in its I/O thread's arena, and the consumer frees it once the
    batch is processed. glibc's dynamic thresholds then trim the arena's top as soon as 2x the largest freed
    chunk (about two column frames) lies free there, so with a credit window the next message is received into
    pages the kernel must fault in and clear again, 4 KB at a time (raw PUSH/PULL, whose consumer lags further
    behind, frees below live buffers and faults less). Fixed
    thresholds above a window's size keep those pages: frames up to ``MALLOC_MMAP_THRESHOLD`` come from the
    arena, and up to ``MALLOC_TRIM_THRESHOLD`` of free memory stays mapped at its top.
    ``MICROSTREAM_MALLOC_TUNE=0`` leaves malloc alone.
    """
    if os.environ.get("MICROSTREAM_MALLOC_TUNE", "1") == "0":
        return
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)


def _ms_left(deadline: float | None) -> int:
    """Milliseconds until `deadline` for zmq_poll, rounded up (-1: no deadline, wait for ever; 0: it has passed)."""
    if deadline is None:
        return -1
    left = deadline - time.monotonic()
    return 0 if left <= 0 else max(1, int(left * 1000 + 0.999))


class ChannelError(MicrostreamError):
    """A channel was misconfigured or received a malformed message."""


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE keypair, z85-encoded as returned by ``zmq.curve_keypair()``."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", _key_bytes(self.public))
        object.__setattr__(self, "secret", _key_bytes(self.secret))


def generate_keys() -> CurveKeys:
    """A fresh CURVE keypair."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(public, secret)


def _key_bytes(key: bytes | str) -> bytes:
    key = key.encode("ascii") if isinstance(key, str) else bytes(key)
    if len(key) != 40:
        raise ChannelError(f"a CURVE key must be 40 z85 characters, got {len(key)}")
    return key


@dataclass
class Message:
    """One data-plane message as the consumer sees it. Ack it (`ChannelServer.ack`) when processed."""

    kind: str                # "batch" | "watermark" | "end" | "barrier" | "checkpoint"
    channel_id: str          # the producer's channel id (upstream task name + index)
    target: int              # which input port/task of the consumer
    seq: int                 # per-channel sequence number: 0, 1, 2, ...
    watermark: int | None    # batch: the producer's watermark after the batch; watermark: the new one
    batch: Batch | None = None    # for "batch"
    barrier: int | None = None    # for "barrier" (a move's cut) and "checkpoint" (a checkpoint's barrier)
    nbytes: int = 0               # bytes on the wire (all frames)
    _peer: bytes = field(default=b"", repr=False, compare=False)
    _acked: bool = field(default=False, repr=False, compare=False)


# -- encoding ----------------------------------------------------------------------------------------

class _Encoder:
    """Builds header frames for one channel; caches the JSON meta per schema."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        self._control_meta = json.dumps({"c": channel_id}, separators=(",", ":")).encode()
        self._meta: dict[tuple, bytes] = {}
        self._last: tuple[list[str], list[np.dtype], list[str], tuple[int, int] | None, bytes] | None = None

    def header(self, kind: int, flags: int, ncols: int, target: int, seq: int, watermark: int | None,
               barrier: int | None, rows: int, meta: bytes) -> bytes:
        if watermark is not None:
            flags |= _F_WATERMARK
        if barrier is not None:
            flags |= _F_BARRIER
        return _HEADER.pack(_MAGIC, _VERSION, kind, flags, ncols, target, seq,
                            0 if watermark is None else watermark, 0 if barrier is None else barrier,
                            rows, len(meta)) + meta

    def control(self, kind: int, target: int, seq: int, watermark: int | None = None,
                barrier: int | None = None) -> bytes:
        return self.header(kind, 0, 0, target, seq, watermark, barrier, 0, self._control_meta)

    def batch(self, batch: Batch, target: int, seq: int, watermark: int | None) -> list[Any]:
        return self.encode(batch, target, seq, watermark)[0]

    def encode(self, batch: Batch, target: int, seq: int, watermark: int | None) -> tuple[list[Any], int]:
        """The frames of a batch message and their total size in bytes."""
        if batch.mask is not None:
            batch = batch.compact()
        names = batch.names
        frames: list[Any] = [b""]
        dtypes: list[np.dtype] = []
        encodings: list[str] = []
        nbytes = 0
        for name in names:
            col = batch[name]
            dtype = col.dtype
            dtypes.append(dtype)
            kind = dtype.kind
            if kind in _RAW_KINDS:
                if not col.flags.c_contiguous:
                    col = np.ascontiguousarray(col)
                if kind in "US" and len(col) > 1 and (col == col[0]).all():  # bytes the crypto skips
                    encodings.append("c")
                    col = col[:1]
                else:
                    encodings.append("r")
                if kind in "mM":  # datetimes have no buffer interface; every other raw kind goes as it is
                    col = col.view(np.uint8)
                frames.append(col)
                nbytes += col.nbytes
            else:
                encodings.append("p")
                data = pickle.dumps(col, protocol=pickle.HIGHEST_PROTOCOL)
                frames.append(data)
                nbytes += len(data)
        flags = 0
        wm = batch.wm
        derived: tuple[int, int] | None = None
        if wm is not None:
            flags |= _F_WM
            derived = _wm_from_column(batch, names, wm)
            if derived is None:
                wm = np.ascontiguousarray(wm, dtype=np.int64)
                frames.append(wm)
                nbytes += wm.nbytes
        meta = self._meta_for(names, dtypes, encodings, derived)
        header = self.header(_K_BATCH, flags, len(names), target, seq, watermark, None, batch.num_rows, meta)
        frames[0] = header
        return frames, nbytes + len(header)

    def _meta_for(self, names: list[str], dtypes: list[np.dtype], encodings: list[str],
                  derived: tuple[int, int] | None) -> bytes:
        # a channel mostly carries one schema: compare with the last one (dtypes are mostly the same objects)
        # before building the cache key
        last = self._last
        if (last is not None and last[0] == names and last[1] == dtypes and last[2] == encodings
                and last[3] == derived):
            return last[4]
        schema = tuple((name, dtype.str, enc) for name, dtype, enc in zip(names, dtypes, encodings, strict=True))
        key = (schema, derived)
        meta = self._meta.get(key)
        if meta is None:
            spec: dict[str, Any] = {"c": self.channel_id, "s": schema}
            if derived is not None:
                spec["w"] = list(derived)
            meta = json.dumps(spec, separators=(",", ":")).encode()
            if len(self._meta) >= _META_CACHE_MAX:
                self._meta.clear()
            self._meta[key] = meta
        self._last = (names, dtypes, encodings, derived, meta)
        return meta


def _wm_from_column(batch: Batch, names: list[str], wm: np.ndarray) -> tuple[int, int] | None:
    """(column index, offset) when the per-record watermarks are an int64 column plus a constant, as those of a
    source whose records come in time order are (its time column less the bounded delay); else None."""
    if len(wm) < 2:
        return None
    for i, name in enumerate(names):
        col = batch[name]
        if col.dtype != _INT64:
            continue
        offset = int(wm[0]) - int(col[0])
        if not _I64_MIN <= offset <= _I64_MAX:  # a wm of MIN_TIME beside event times: no int64 offset
            continue
        if int(wm[-1]) - int(col[-1]) == offset and np.array_equal(wm - col, np.full(len(wm), offset)):
            return i, offset
    return None


def _frame_len(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, np.ndarray) else len(frame)


# -- consumer side -----------------------------------------------------------------------------------

@dataclass
class _Producer:
    channel_id: str
    outstanding: int = 0
    outstanding_bytes: int = 0   # of the messages received and not acked yet
    window: int = 0              # its byte window: what this consumer drained of it in `window_seconds`
    acked_bytes: int = 0         # acked since `rate_since`, for the drain rate
    pending: int = 0             # acked credits not sent back yet
    pending_bytes: int = 0       # ... and the bytes of their messages
    rate_since: float = field(default_factory=time.monotonic)
    max_outstanding: int = 0
    messages: int = 0
    bytes: int = 0
    last_seq: int = -1
    last_acked: int = -1
    gaps: int = 0
    duplicates: int = 0
    resends: int = 0          # times the producer was asked to resume after a gap
    asked_from: int = -1      # the seq a resend was last asked from (one request per gap)
    violations: int = 0   # messages beyond the granted credits (a misbehaving producer)
    ended: bool = False
    heard_at: float = field(default_factory=time.monotonic)  # its last message (hellos included), for status


class _SharedAuth:
    """One ThreadAuthenticator per context, shared by the servers in it (one ZAP domain each)."""

    _lock = threading.Lock()
    _by_context: dict[int, tuple[ThreadAuthenticator, int]] = {}

    @classmethod
    def register(cls, context: zmq.Context, domain: str, provider: Any) -> None:
        with cls._lock:
            entry = cls._by_context.get(id(context))
            if entry is None:
                auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".auth"))
                try:
                    auth.start()
                except zmq.ZMQError as e:
                    raise ChannelError(
                        "could not start a ZAP authenticator on this context (another one is already running?): "
                        f"{e}; pass no context, or one without its own authenticator") from e
                entry = (auth, 0)
            auth, users = entry
            auth.configure_curve_callback(domain=domain, credentials_provider=provider)
            cls._by_context[id(context)] = (auth, users + 1)

    @classmethod
    def unregister(cls, context: zmq.Context, domain: str) -> None:
        with cls._lock:
            entry = cls._by_context.get(id(context))
            if entry is None:
                return
            auth, users = entry
            auth.credentials_providers.pop(domain, None)
            if users <= 1:
                del cls._by_context[id(context)]
                auth.stop()
            else:
                cls._by_context[id(context)] = (auth, users - 1)


class _TrustedKeys:
    """ZAP credentials provider: accepts exactly the current trusted set (swapped atomically)."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = frozenset(_key_bytes(k) for k in keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class ChannelServer:
    """Consumer side: binds one ROUTER socket; any number of producers connect.

    The per-producer window: a producer may always have ``credits`` messages sent and not yet acked, and more while
    their bytes stay under its byte window (in at most ``max(credits, MAX_WINDOW_MESSAGES)`` messages): what this
    consumer processed of its messages in the last ``window_seconds``, measured from its acks, up to
    ``window_bytes``; ``window_bytes=0`` counts messages only. The window should cover the credit round trip: 8
    messages do for batches of ~100 KB and more, the byte window for smaller ones (see bench/channels.py); sizing it
    by the consumer's pace keeps a slow consumer's queue (what a barrier waits behind) at about ``window_seconds``
    of its work, or ``credits`` messages. ``keys`` makes the server a CURVE server that admits only ``trusted``
    client public keys. ``allow_pickle`` controls whether pickled (object) columns are accepted; by default only on
    CURVE-authenticated channels, since unpickling runs code chosen by the sender.

    The server does its work inside `recv`: a producer's hello is answered with its credits there,
    so producers block until the consumer starts receiving (which is the point). ``endpoint`` is
    the bound address (with a wildcard host, the runtime advertises its own host name instead).
    """

    def __init__(self, bind: str = "tcp://127.0.0.1:*", keys: CurveKeys | None = None,
                 trusted: Iterable[bytes] | None = None, credits: int = 8, context: zmq.Context | None = None,
                 allow_pickle: bool | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 window_bytes: int = WINDOW_BYTES, window_seconds: float = WINDOW_SECONDS) -> None:
        if credits < 1:
            raise ChannelError(f"credits must be at least 1, got {credits}")
        if window_bytes < 0:
            raise ChannelError(f"window_bytes must be at least 0, got {window_bytes}")
        self.credits = credits
        self.window_bytes = window_bytes
        self.window_seconds = window_seconds
        # the most messages a producer may have unacked: `credits`, or more while under the byte window
        self.max_window = max(credits, MAX_WINDOW_MESSAGES) if window_bytes else credits
        _keep_receive_buffers()
        self.curve = keys is not None
        self.allow_pickle = self.curve if allow_pickle is None else allow_pickle
        self._own_context = context is None
        ctx = zmq.Context() if context is None else context
        self._ctx: zmq.Context | None = ctx
        self._domain = f"microstream-channel-{os.getpid()}-{id(self):x}"
        self._trusted = _TrustedKeys(trusted or ())
        self._auth = False
        self._sock: zmq.Socket | None = None
        try:
            sock = ctx.socket(zmq.ROUTER)
            self._sock = sock
            sock.linger = 0
            sock.router_handover = 1
            sock.rcvhwm = max(1000, 4 * self.max_window)
            sock.sndhwm = max(1000, 4 * self.max_window)
            sock.maxmsgsize = max_message_bytes  # a peer (authenticated or not) cannot make us buffer more
            _keep_alive(sock)
            if keys is not None:
                # the ZAP handler must exist before the first handshake, i.e. before bind
                _SharedAuth.register(ctx, self._domain, self._trusted)
                self._auth = True
                sock.zap_domain = self._domain.encode()
                sock.curve_server = True
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
            sock.bind(bind)
            # pyzmq types socket options as int | bytes | str; LAST_ENDPOINT is bytes
            self.endpoint: str = cast(bytes, sock.last_endpoint).decode()
        except BaseException:
            self.close()
            raise
        self.public_key: bytes | None = keys.public if keys is not None else None
        self._producers: dict[bytes, _Producer] = {}
        self._schemas: dict[bytes, tuple[str, list[tuple[str, np.dtype, str]], tuple[int, int] | None]] = {}
        self.messages = 0
        self.bytes = 0
        self.malformed = 0
        self.copied_frames = 0
        self._pending: dict[bytes, _Producer] = {}   # the producers with acked credits not sent back yet
        # credits go back in groups: at least a quarter of `credits`, and a quarter of the window in messages or
        # in bytes, whichever comes first (with messages alone, the two are the same)
        self._ack_every = max(1, credits // ACK_SHARE)
        self._ack_messages = max(1, self.max_window // ACK_SHARE)

    # -- public API ----------------------------------------------------------------------------
    def recv(self, timeout: float | None = None, wake: zmq.Socket | None = None) -> Message | None:
        """The next data-plane message, or None if none arrived within ``timeout`` seconds — or as soon as
        the optional ``wake`` socket (e.g. a control socket) has something to read."""
        sock = self._require_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        items = [(sock, zmq.POLLIN)] if wake is None else [(sock, zmq.POLLIN), (wake, zmq.POLLIN)]
        while True:
            if not cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
                wait = _ms_left(deadline)
                if self._pending:
                    # about to wait: hand back the credits acked so far. When the caller is willing to wait
                    # and no producer may be out of credits, first give the next message a moment to arrive,
                    # so that its credit goes back in the same frame: a producer faster than the link then
                    # wakes once per group of credits, not once per message
                    if wait != 0 and not self._starving():
                        grace = CREDIT_GRACE_MS if wait < 0 else min(wait, CREDIT_GRACE_MS)
                        ready = zmq.zmq_poll(items, grace)
                        if len(ready) == 1 and ready[0][0] is sock:
                            continue
                    self.flush_credits()
                    if wait > 0:
                        wait = _ms_left(deadline)
                ready = zmq.zmq_poll(items, wait)
                if len(ready) > 1 or ready and ready[0][0] is not sock:  # the wake socket has something
                    return None
                if not ready:
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
            # recv_multipart, without its per-frame option lookup
            frame = sock.recv(copy=False)
            frames = [frame]
            while frame.more:
                frame = sock.recv(copy=False)
                frames.append(frame)
            try:
                msg = self._decode(frames)
            except Exception as e:  # a malformed message from an authenticated peer: drop it, keep serving
                self.malformed += 1
                log.warning("dropping malformed channel message: %s", e)
                continue
            if msg is not None:
                return msg

    def ack(self, msg: Message) -> None:
        """The message has been processed: return its credit to the producer (idempotent).

        Credits for batches go back in groups (at least a quarter of ``credits``, and a quarter of the window in
        messages or in bytes, whichever comes first), and in any case before `recv` waits for input (after at most
        ``CREDIT_GRACE_MS`` unless ``timeout=0``) or on `flush_credits`; acking a control message (watermark, end,
        barrier) sends every pending credit of that producer at once.
        """
        if msg._acked:
            return
        self._require_open()
        msg._acked = True
        peer = msg._peer
        prod = self._producers.get(peer)
        if prod is None:
            return
        prod.outstanding -= 1
        prod.outstanding_bytes -= msg.nbytes
        if msg.seq > prod.last_acked:
            prod.last_acked = msg.seq
        if self.window_bytes:
            self._measure(prod, msg.nbytes)
        prod.pending += 1
        prod.pending_bytes += msg.nbytes
        if (prod.pending >= self._ack_every
                and (prod.pending >= self._ack_messages or prod.pending_bytes >= prod.window >> 2)
                or msg.kind != "batch"):
            self._pending.pop(peer, None)
            self._return_credits(peer, prod)
        else:
            self._pending[peer] = prod

    def _measure(self, prod: _Producer, nbytes: int) -> None:
        """Size a producer's byte window to what this consumer drains in `window_seconds` (its acked bytes per
        second over the last `RATE_EVERY` seconds or more; the producer hears it with the next credit frame)."""
        prod.acked_bytes += nbytes
        now = time.monotonic()
        elapsed = now - prod.rate_since
        if elapsed >= RATE_EVERY:
            prod.window = min(self.window_bytes, int(prod.acked_bytes / elapsed * self.window_seconds))
            prod.acked_bytes, prod.rate_since = 0, now

    def _starving(self) -> bool:
        """Some producer with credits pending here may have none left (everything it may send has arrived)."""
        credits, most = self.credits, self.max_window
        for prod in self._pending.values():
            unacked = prod.outstanding + prod.pending
            if unacked >= most or (unacked >= credits and (
                    # 0.9: the producer counts its messages' frames, a little more than the bytes counted here
                    prod.outstanding_bytes + prod.pending_bytes >= 0.9 * prod.window)):
                return True
        return False

    def flush_credits(self) -> None:
        """Send every credit acked so far back to its producer now."""
        self._require_open()
        pending, self._pending = self._pending, {}
        for peer, prod in pending.items():
            self._return_credits(peer, prod)

    def _return_credits(self, peer: bytes, prod: _Producer) -> None:
        count, prod.pending, prod.pending_bytes = prod.pending, 0, 0
        self._send_credit(peer, count)

    def set_trusted(self, keys: Iterable[bytes]) -> None:
        """Replace the producer public keys allowed to connect (applies to new connections)."""
        if not self.curve:
            raise ChannelError("set_trusted() needs a CURVE server (keys=...)")
        self._trusted.keys = frozenset(_key_bytes(k) for k in keys)

    @property
    def trusted(self) -> frozenset[bytes]:
        return self._trusted.keys

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: totals, and per channel id the outstanding credits, last seq, gaps, duplicates, and seconds
        since that producer was last heard (``silent_seconds``)."""
        producers: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for p in self._producers.values():
            producers[p.channel_id] = {
                "outstanding": p.outstanding, "outstanding_bytes": p.outstanding_bytes,
                "max_outstanding": p.max_outstanding, "messages": p.messages,
                "bytes": p.bytes, "last_seq": p.last_seq, "gaps": p.gaps, "duplicates": p.duplicates,
                "resends": p.resends, "violations": p.violations, "ended": p.ended,
                "silent_seconds": now - p.heard_at}
        return {"messages": self.messages, "bytes": self.bytes, "credits": self.credits,
                "window_bytes": self.window_bytes, "max_window": self.max_window,
                "outstanding": sum(p.outstanding for p in self._producers.values()),
                "max_outstanding": max((p.max_outstanding for p in self._producers.values()), default=0),
                "malformed": self.malformed, "copied_frames": self.copied_frames, "producers": producers}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._auth and self._ctx is not None:
            _SharedAuth.unregister(self._ctx, self._domain)
            self._auth = False
        if self._own_context and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ChannelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _send_credit(self, peer: bytes, count: int, kind: int = _K_CREDIT) -> None:
        """Credit back to a producer, with where this consumer is (acked through, received through); a GRANT
        gives the whole window (the reply to a hello, or a request to resume after a gap)."""
        prod = self._producers.get(peer)
        acked, received = (prod.last_acked, prod.last_seq) if prod is not None else (-1, -1)
        window = prod.window if prod is not None else 0
        frame = _CREDIT.pack(_MAGIC, _VERSION, kind, count, acked, received, self.credits, window)
        with contextlib.suppress(zmq.Again):  # the producer is gone or full: it asks again (hello) when it must
            self._require_open().send_multipart([peer, frame], flags=zmq.NOBLOCK)

    def _require_open(self) -> zmq.Socket:
        if self._sock is None:
            raise ChannelError("the channel server is closed")
        return self._sock

    def _decode(self, frames: list[zmq.Frame]) -> Message | None:
        if len(frames) < 2:
            raise ChannelError(f"message with {len(frames)} frames")
        peer = frames[0].bytes
        head = frames[1].bytes
        try:
            (magic, version, kind, flags, ncols, target, seq, watermark, barrier, rows,
             meta_len) = _HEADER.unpack_from(head)
        except struct.error:
            raise ChannelError("short header") from None
        if magic != _MAGIC or version != _VERSION:
            raise ChannelError(f"bad magic/version {magic!r}/{version}")
        channel_id, schema, derived = self._schema(head[_HEADER.size:_HEADER.size + meta_len])
        prod = self._producers.get(peer)
        if prod is None:
            prod = self._producers[peer] = _Producer(channel_id)
            self._send_credit(peer, self.max_window, _K_GRANT)
        elif kind == _K_HELLO:  # a producer that waited too long asks where we are (a lost credit, a reconnect)
            self._send_credit(peer, self.max_window, _K_GRANT)
        prod.heard_at = time.monotonic()
        if kind == _K_HELLO:
            return None
        kind_name = _KIND_NAMES.get(kind)
        if kind_name is None:
            raise ChannelError(f"unknown message kind {kind}")
        if seq <= prod.last_seq:  # a replay of what arrived already: exactly once
            prod.duplicates += 1
            return None
        if seq > prod.last_seq + 1:  # what came before it was lost with a connection: resume from there
            prod.gaps += 1
            if prod.asked_from != prod.last_seq + 1:
                prod.asked_from = prod.last_seq + 1
                prod.resends += 1
                self._send_credit(peer, self.max_window, _K_GRANT)
            return None
        nbytes = len(head)
        batch = None
        if kind == _K_BATCH:
            try:
                batch, payload = self._batch(frames, ncols, flags, rows, schema, derived)
            except Exception:
                # the producer spent a credit on it: count it received and acked, and keep the sequence in step
                prod.last_seq = prod.last_acked = seq
                self._send_credit(peer, 1)
                raise
            nbytes += payload
        prod.last_seq = seq
        out = prod.outstanding = prod.outstanding + 1
        prod.outstanding_bytes += nbytes
        if out > prod.max_outstanding:
            prod.max_outstanding = out
        if out > self.max_window:
            prod.violations += 1
        prod.messages += 1
        prod.bytes += nbytes
        if kind == _K_END:
            prod.ended = True
        self.messages += 1
        self.bytes += nbytes
        return Message(kind_name, channel_id, target, seq, watermark if flags & _F_WATERMARK else None, batch,
                       barrier if flags & _F_BARRIER else None, nbytes, peer)

    def _schema(self, meta_bytes: bytes) -> tuple[str, list[tuple[str, np.dtype, str]], tuple[int, int] | None]:
        cached = self._schemas.get(meta_bytes)
        if cached is None:
            meta = json.loads(meta_bytes)
            schema = [(str(n), np.dtype(d), str(e)) for n, d, e in meta.get("s", ())]
            derived = None
            if meta.get("w") is not None:
                column, offset = (int(x) for x in meta["w"])
                if not 0 <= column < len(schema) or schema[column][1] != _INT64 or schema[column][2] != "r":
                    raise ChannelError(f"the wm is derived from column {column}, which is not an int64 column")
                derived = (column, offset)
            cached = (str(meta["c"]), schema, derived)
            for name, dtype, enc in schema:
                raw = enc in ("r", "c")
                if not raw and enc != "p" or raw and (dtype.kind not in _RAW_KINDS or dtype.itemsize == 0):
                    raise ChannelError(f"column '{name}': cannot decode {dtype.str} as {enc!r}")
            if len(self._schemas) >= _META_CACHE_MAX:
                self._schemas.clear()
            self._schemas[meta_bytes] = cached
        return cached

    def _batch(self, frames: list[zmq.Frame], ncols: int, flags: int, rows: int,
               schema: list[tuple[str, np.dtype, str]], derived: tuple[int, int] | None = None) -> tuple[Batch, int]:
        has_wm = flags & _F_WM
        wm_frame = has_wm and derived is None
        if ncols != len(schema) or len(frames) != 2 + ncols + (1 if wm_frame else 0):
            raise ChannelError(f"batch with {len(frames)} frames for {len(schema)} columns")
        cols = {}
        nbytes = 0
        for frame, (name, dtype, enc) in zip(frames[2:2 + ncols], schema, strict=True):
            buf = frame.buffer
            size = buf.nbytes
            nbytes += size
            if enc == "r":  # the common case, inline: a view of the frame's buffer (which keeps the frame alive)
                if size != rows * dtype.itemsize:
                    raise ChannelError(f"column frame of {size} bytes, expected {rows} x {dtype.itemsize}")
                arr = np.frombuffer(buf, dtype=dtype)
                if not arr.flags.aligned:
                    self.copied_frames += 1
                    arr = arr.copy()
                cols[name] = arr
                continue
            if enc == "c":
                cols[name] = np.full(rows, self._view(buf, dtype, 1)[0] if rows else dtype.type(), dtype=dtype)
                continue
            if not self.allow_pickle:
                raise ChannelError(f"column '{name}' is pickled, and this server does not accept pickles")
            col = pickle.loads(buf)
            if not isinstance(col, np.ndarray) or col.shape != (rows,):
                raise ChannelError(f"pickled column '{name}' is not a 1-D array of {rows} rows")
            cols[name] = col
        wm = None
        if wm_frame:
            buf = frames[-1].buffer
            nbytes += buf.nbytes
            wm = self._view(buf, _INT64, rows)
        elif has_wm and derived is not None:
            column, offset = derived
            wm = cols[schema[column][0]] + np.int64(offset)
        elif not cols and rows:
            raise ChannelError("a batch without columns must have 0 rows")
        # every column was checked to be 1-D with `rows` entries: skip Batch.__init__'s re-validation
        batch = Batch.__new__(Batch)
        batch._base, batch._mask, batch._wm, batch._cache, batch._len = cols, None, wm, {}, rows
        return batch, nbytes

    def _view(self, buf: memoryview, dtype: np.dtype, rows: int) -> np.ndarray:
        if buf.nbytes != rows * dtype.itemsize:
            raise ChannelError(f"column frame of {buf.nbytes} bytes, expected {rows} x {dtype.itemsize}")
        arr = np.frombuffer(buf, dtype=dtype)
        if not arr.flags.aligned:
            self.copied_frames += 1
            arr = arr.copy()
        return arr


# -- producer side -----------------------------------------------------------------------------------

class ChannelClient:
    """Producer side: a DEALER connected to a server; sends block while out of credits (backpressure).

    Every send (batch, watermark, end, barrier) takes one credit, so all of them may block; each
    takes a ``timeout`` (seconds, None = wait forever) and returns False if no credit arrived in time
    (nothing was sent, no sequence number was used). Arrays are sent without copying: do not modify a
    batch's columns after sending it.
    """

    def __init__(self, endpoint: str, channel_id: str, keys: CurveKeys | None = None,
                 server_public: bytes | None = None, context: zmq.Context | None = None,
                 should_abort: Callable[[], bool] | None = None) -> None:
        if (keys is None) != (server_public is None):
            raise ChannelError("a CURVE client needs both keys (its own keypair) and server_public")
        self.endpoint = endpoint
        self.channel_id = channel_id
        self.should_abort = should_abort  # asked every half second while blocked: True ends the wait (stop)
        self._enc = _Encoder(channel_id)
        ctx = zmq.Context.instance() if context is None else context
        sock = ctx.socket(zmq.DEALER)
        try:
            ident = channel_id.encode()[:200] + b"/" + os.urandom(8).hex().encode()
            sock.routing_id = ident
            sock.sndhwm = 0  # credits bound what is queued
            sock.rcvhwm = 0
            sock.linger = 1000
            _keep_alive(sock)
            if keys is not None and server_public is not None:  # both or neither (checked above)
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
                sock.curve_serverkey = _key_bytes(server_public)
            sock.connect(endpoint)
            sock.send(self._enc.control(_K_HELLO, 0, 0))
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock: zmq.Socket | None = sock
        # the consumer's grant: `_floor` messages may always be unacked, up to `_window` while their bytes are
        # under `_window_bytes` (0 before the grant: nothing may be sent)
        self._window = 0
        self._floor = 0
        self._window_bytes = 0
        self._acked_through = -1        # the consumer has processed every message up to this seq
        self._seq = 0                   # the seq of the next message
        self._replay: collections.deque[tuple[int, list[Any], int]] = collections.deque()  # sent, not acked yet
        self._last_heard = time.monotonic()
        # progress, for status: what a stalled channel looks like from here (never read by the protocol)
        self.unacked_bytes = 0          # bytes of the messages in `_replay`
        self.heard_at: float | None = None   # the last credit frame from the consumer (monotonic)
        self.moved_at = time.monotonic()     # the consumer last acked something, or the first unacked message went
        self.waiting_since: float | None = None  # out of credits since then (None: not waiting now)
        self.on_wait: Callable[[], None] | None = None  # called every half second at most while a send is blocked
        self._resent_after, self._resent_at = -2, 0.0  # the position last resent from, and when
        self.resent_messages = 0
        self.blocked_seconds = 0.0
        self.sent_messages = 0
        self.sent_bytes = 0

    @property
    def credits(self) -> int:
        """Credits currently held: how many more messages may be sent without waiting, if they are small (beyond
        the consumer's ``credits``, only while the bytes unacked stay under its window)."""
        self._drain()
        room = self._window if self.unacked_bytes < self._window_bytes else self._floor
        return max(0, room - self._outstanding)

    def _may_send(self) -> bool:
        out = self._outstanding
        return out < self._floor or (out < self._window and self.unacked_bytes < self._window_bytes)

    @property
    def unacked(self) -> int:
        """Messages sent that the consumer has not acked yet."""
        self._drain()
        return self._outstanding

    @property
    def _outstanding(self) -> int:
        return self._seq - 1 - self._acked_through

    def _wait_until(self, done, sock: zmq.Socket, timeout: float | None) -> bool:
        """Read credit frames until `done()` holds; False if `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            wait = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = max(1, int(left * 1000))
            wait = _ABORT_CHECK_MS if wait is None else min(wait, _ABORT_CHECK_MS)
            if self.on_wait is not None:  # a blocked host still reports (status shows the stall)
                self.on_wait()
                if done():  # its stats drained the credit this wait was for
                    continue
            if sock.poll(wait, zmq.POLLIN):
                self._drain()
                continue
            if self.should_abort is not None and self.should_abort():
                raise InterruptedError(f"channel {self.channel_id}: stopped while waiting for its consumer")
            if time.monotonic() - self._last_heard >= RESYNC_EVERY:  # a lost credit, or a connection that died
                with contextlib.suppress(zmq.Again):  # not connected (yet, or refused): the next round asks again
                    sock.send(self._enc.control(_K_HELLO, 0, 0), flags=zmq.NOBLOCK)
                self._last_heard = time.monotonic()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the consumer has acked every message sent; False if ``timeout`` passed first."""
        sock = self._sock
        if sock is None:
            raise ChannelError("the channel client is closed")
        self._drain()
        return self._wait_until(lambda: self._outstanding <= 0, sock, timeout)

    @property
    def seq(self) -> int:
        """The sequence number the next message will carry."""
        return self._seq

    @property
    def stats(self) -> dict[str, Any]:
        """Where this channel is, for status: totals, what the consumer has acked (``acked_through``, the last
        message delivered), what is in flight (``unacked``, ``unacked_bytes``), and how long it has been stuck:
        ``stalled_seconds`` (messages in flight and none acked for that long; 0 when nothing is in flight),
        ``waiting_seconds`` (out of credits for that long, now), ``peer_silent_seconds`` (since the consumer's
        last credit frame; None if never heard)."""
        self._drain()
        now = time.monotonic()
        waiting = 0.0 if self.waiting_since is None else now - self.waiting_since
        return {"sent_messages": self.sent_messages, "sent_bytes": self.sent_bytes,
                "blocked_seconds": self.blocked_seconds + waiting, "acked_through": self._acked_through,
                "unacked": self._outstanding, "unacked_bytes": self.unacked_bytes,
                "stalled_seconds": now - self.moved_at if self._outstanding > 0 else 0.0,
                "waiting_seconds": waiting,
                "peer_silent_seconds": None if self.heard_at is None else now - self.heard_at,
                "resent_messages": self.resent_messages}

    def send_batch(self, batch: Batch, target: int = 0, watermark: int | None = None,
                   timeout: float | None = None) -> bool:
        """Send a batch (compacted first if filtered). ``watermark`` defaults to the batch's end
        watermark (its last wm entry, masked records included), None without a wm array."""
        if watermark is None:
            watermark = batch.end_watermark()
        if not self._acquire(timeout):
            return False
        return self._send(*self._enc.encode(batch, target, self._seq, watermark))

    def send_watermark(self, watermark: int, target: int = 0, timeout: float | None = None) -> bool:
        """A watermark advance (takes a credit, so it stays ordered with batches)."""
        if not self._acquire(timeout):
            return False
        return self._send([self._enc.control(_K_WATERMARK, target, self._seq, watermark=watermark)])

    def send_end(self, target: int = 0, timeout: float | None = None) -> bool:
        """End of stream from this producer (takes a credit)."""
        if not self._acquire(timeout):
            return False
        return self._send([self._enc.control(_K_END, target, self._seq)])

    def send_barrier(self, barrier_id: int, target: int = 0, timeout: float | None = None) -> bool:
        """A move's barrier: the cut before which the consumer's state is taken (takes a credit)."""
        if not self._acquire(timeout):
            return False
        return self._send([self._enc.control(_K_BARRIER, target, self._seq, barrier=barrier_id)])

    def send_checkpoint(self, checkpoint_id: int, target: int = 0, timeout: float | None = None) -> bool:
        """A checkpoint barrier: everything before it is in the checkpoint, nothing after (takes a credit)."""
        if not self._acquire(timeout):
            return False
        return self._send([self._enc.control(_K_CHECKPOINT, target, self._seq, barrier=checkpoint_id)])

    def close(self, linger: float = 1.0) -> None:
        """Close, first waiting up to ``linger`` seconds for the consumer to ack what was sent.

        Waiting for the acks (rather than only relying on ZMQ_LINGER) matters: libzmq can drop
        messages still queued on a socket closed right after sending them, even within the linger
        period (e.g. libzmq issues #1264, #1922), and a producer process often exits right after
        ``send_end()``. With ``linger=0`` anything not yet delivered is discarded.
        """
        if self._sock is None:
            return
        start = time.monotonic()
        try:
            if linger > 0 and self._outstanding > 0:
                self.flush(linger)
        finally:
            left = max(0.0, linger - (time.monotonic() - start))
            self._sock.close(linger=int(left * 1000))
            self._sock = None

    def __enter__(self) -> ChannelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
            frame = sock.recv(zmq.NOBLOCK)
            if len(frame) == _CREDIT.size:
                magic, version, kind, count, acked, received, floor, window_bytes = _CREDIT.unpack(frame)
                if magic == _MAGIC and version == _VERSION and kind in (_K_GRANT, _K_CREDIT):
                    self._on_credit(kind, count, acked, received, floor, window_bytes)
                    continue
            log.warning("channel %s: ignoring unexpected frame of %d bytes", self.channel_id, len(frame))

    def _on_credit(self, kind: int, count: int, acked: int, received: int, floor: int, window_bytes: int) -> None:
        """The consumer's position: forget what it has processed; after a grant, resend what it never got."""
        self._last_heard = self.heard_at = time.monotonic()
        if acked > self._acked_through:
            self._acked_through = acked
            self.moved_at = self.heard_at
        replay = self._replay
        while replay and replay[0][0] <= self._acked_through:
            self.unacked_bytes -= replay.popleft()[2]
        self._window_bytes = window_bytes  # the consumer resizes it as its drain rate changes
        if kind != _K_GRANT:
            return
        self._window, self._floor = count, floor
        now = time.monotonic()
        if received == self._resent_after and now - self._resent_at < 2 * RESYNC_EVERY:
            return  # another answer to the same question (hellos queued while the link was down): resent already
        missing = [(seq, frames) for seq, frames, _ in replay if seq > received]
        if missing and self._sock is not None:
            self._resent_after, self._resent_at = received, now
            for _, frames in missing:  # in order, as first sent: the consumer takes them from `received + 1`
                self._sock.send_multipart(frames, copy=False)
            self.resent_messages += len(missing)

    def _acquire(self, timeout: float | None) -> bool:
        sock = self._sock
        if sock is None:
            raise ChannelError("the channel client is closed")
        if self._may_send():
            return True
        self._drain()
        if self._may_send():
            return True
        start = self.waiting_since = time.monotonic()
        try:
            if not self._wait_until(self._may_send, sock, timeout):
                return False
        finally:
            self.blocked_seconds += time.monotonic() - start
            self.waiting_since = None
        return True

    def _send(self, frames: list[Any], nbytes: int | None = None) -> bool:
        sock = self._sock
        if sock is None:
            raise ChannelError("the channel client is closed")
        send = sock.send  # send_multipart's loop, with int flags (its enum arithmetic costs microseconds a frame)
        for frame in frames[:-1]:
            send(frame, _SNDMORE, copy=False)
        send(frames[-1], 0, copy=False)
        if nbytes is None:
            nbytes = sum(_frame_len(f) for f in frames)
        if self._outstanding <= 0:  # nothing was in flight: the stall clock starts with this message
            self.moved_at = time.monotonic()
        self._replay.append((self._seq, frames, nbytes))
        self._seq += 1
        self.sent_messages += 1
        self.sent_bytes += nbytes
        self.unacked_bytes += nbytes
        return True


def _keep_alive(sock: zmq.Socket) -> None:
    """ZMTP heartbeats and TCP keepalive: a connection whose peer is gone fails (and a DEALER reconnects) instead
    of waiting for TCP's retransmissions to give up, which takes a quarter of an hour."""
    sock.heartbeat_ivl = HEARTBEAT_MS
    sock.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
    sock.heartbeat_ttl = HEARTBEAT_TIMEOUT_MS
    sock.tcp_keepalive = 1
    sock.tcp_keepalive_idle = 10
    sock.tcp_keepalive_intvl = 5
    sock.tcp_keepalive_cnt = 3
