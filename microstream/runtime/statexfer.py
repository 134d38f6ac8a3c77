"""Moving a virtual node's state straight from its old host to its new one, mostly while it still runs.

A migration's downtime (inputs held, from the barrier to the first record the new host processes) used to grow
with the state: the snapshot was pickled whole, sent to the coordinator, relayed to the new host and copied
into place (2.3 s at 100 MB). Here:

* **Zero-copy packing.** A snapshot is pickled with protocol 5: numpy arrays (and other buffers) of
  `INLINE_BYTES` or more travel *out of band*, as separate ZeroMQ frames sent with ``copy=False``; the pickle
  stream (the *skeleton*) holds only the structure and small values. The receiver unpickles with its frames as
  the buffers, so the restored arrays are views of what arrived (`pack`, `unpack`).
* **Pre-copy, then a short stop-and-copy.** While the virtual node keeps running, its old host sends a
  checkpoint-style snapshot (the operators go on) to the new host: round 0 in full, later rounds only what
  changed. At the move's barrier it sends only the chunks that changed since the last round it sent (`diff`),
  and the skeleton. Dirty tracking compares a 64-bit hash per `CHUNK_BYTES` chunk of each buffer (`chunk_hashes`,
  a numba loop near memory speed): no kernel has to know about it, and the old host keeps 8 bytes per chunk, not a
  second copy of the state. Chunks are a cache line (64 bytes), not a key's whole state: an update dirties one or
  two, so the rounds shrink even when every key changes every second (with 1 KB chunks, 100 MB of such state
  never converged and the final round carried all of it). A buffer whose size changed (a ring that grew) goes
  whole. The new host applies each round in place (`apply`), and restores base + delta: the same bytes as a full
  snapshot at the barrier, so the barrier protocol, and with it exactly-once, is unchanged.
* **Direct.** The transfer runs over its own CURVE-authenticated ZeroMQ connection from the old host to the new
  one (`StateSender` → `StateReceiver`, the new host's endpoint reported with its channel server's); the
  coordinator only orchestrates and relays a ticket of a few hundred bytes.

* **Operator-level dirty tracking.** Hashing the whole state is memory-bound (100 MB: 17-20 ms), and at the
  barrier the new host waited for it. A keyed operator stamps the rows (key slots) each batch wrote
  (`operators/kernels/dirty.py`, `DirtyRows`) and the host packs its state with those trackers (`pack(state,
  trackers)`): a buffer that is a tracked array (same address, whole rows) has a `Track`. A round of such a buffer
  retires the tracker's epoch first, then reads and hashes only the chunks of the rows stamped since its last round
  (`TrackedBase.since`), and sends those whose hash changed. Anything not tracked is hashed whole, as before; a
  tracked buffer whose layout changed (grown, reallocated, restored: a new `generation`) is compared whole; one
  whose size changed goes whole. The chunk hashes stay the truth about what the receiver holds, so a lost track
  only ever costs a full comparison. (A tracked round updates its base's hashes in place: a round made and not
  sent leaves its sender with no base, and the next round goes whole.)

Hash collisions: each lane of the chunk hash is a chain of xxHash64 rounds (add times an odd constant, rotate,
multiply by an odd constant), each a bijection of the word it takes in and of the lane, so a change of a single
8-byte word always changes the hash; a change of several words goes unnoticed with probability about 2**-64 per
chunk. (The rounds were xor-and-multiply until a window's cells going from EMPTY, -2**63, to 0 two at a time in one
lane were found to leave the hash unchanged: a multiply carries a top-bit difference nowhere, and two cancel.)
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numba
import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

CHUNK_BYTES = 64            # dirty-tracking granularity (a multiple of 32): a cache line
INLINE_BYTES = 64 << 10     # buffers smaller than this stay in the pickle stream
MAX_FRAME_BYTES = 1 << 30   # the receiver refuses a larger frame before reading it
_MAGIC = b"MSX1"
_U8 = np.dtype(np.uint8)

_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344), np.uint64(0xA4093822299F31D0),
          np.uint64(0x082EFA98EC4E6C89))
_S0, _S1, _S2, _S3 = _SEEDS
_R31, _R33, _R29 = np.uint64(31), np.uint64(33), np.uint64(29)


@numba.njit(inline="always")
def _round(acc: np.uint64, w: np.uint64) -> np.uint64:  # pragma: no cover - numba
    """One word into a lane (xxHash64's round): add the word times an odd constant, rotate, multiply by an odd
    constant. For a fixed lane each step is a bijection of the word, and for a fixed word one of the lane; the
    rotation carries a difference in the high bits down (a multiply alone only carries bits upwards, so two
    words that differ only in their top bit, as a window cell going from EMPTY to 0 does, cancelled out)."""
    acc = acc + w * _P2
    acc = (acc << _R31) | (acc >> _R33)
    return acc * _P1


@numba.njit(inline="always")
def _mix(h0: np.uint64, h1: np.uint64, h2: np.uint64, h3: np.uint64) -> np.uint64:  # pragma: no cover - numba
    """The four lanes into one hash, each by a round (a bijection of the lane it takes in), then an xor-shift:
    a change to one lane always changes the result."""
    h = _round(_round(_round(_round(_S0, h0), h1), h2), h3)
    return h ^ (h >> _R29)


@numba.njit(inline="always")
def _chunk_hash(u8: np.ndarray, u64: np.ndarray, at: int, length: int, wpc: int) -> np.uint64:  # pragma: no cover
    """The hash of bytes [at, at + length) of u8 (u64: its whole 8-byte words; `at` a multiple of 8): a whole chunk
    (`wpc` words, a multiple of 4) in four independent lanes (the multiplies overlap), a short one word by word
    and then byte by byte."""
    h0, h1, h2, h3 = _S0, _S1, _S2, _S3
    w = at // 8
    if length == wpc * 8:
        for k in range(w, w + wpc, 4):
            h0 = _round(h0, u64[k])
            h1 = _round(h1, u64[k + 1])
            h2 = _round(h2, u64[k + 2])
            h3 = _round(h3, u64[k + 3])
    else:
        words = length // 8
        for k in range(w, w + words):
            h0 = _round(h0, u64[k])
        for i in range(at + words * 8, at + length):  # bytes after the last whole word
            h1 = _round(h1, np.uint64(u8[i]))
    return _mix(h0, h1, h2, h3)


@numba.njit(cache=True, nogil=True)
def _hash_chunks(u8: np.ndarray, u64: np.ndarray, chunk: int, out: np.ndarray) -> None:  # pragma: no cover - numba
    """out[c] = a 64-bit hash of bytes [c*chunk, (c+1)*chunk) of u8 (u64: its whole 8-byte words; the last chunk
    may be short)."""
    n = u8.shape[0]
    for c in range(out.shape[0]):
        out[c] = _chunk_hash(u8, u64, c * chunk, min(chunk, n - c * chunk), chunk // 8)


@numba.njit(cache=True, nogil=True)
def _row_chunks(rows: np.ndarray, row_bytes: int, chunk: int, nchunks: int,
                out: np.ndarray) -> int:  # pragma: no cover - numba
    """The chunks (ascending, each once) that rows `rows` (ascending) of `row_bytes` bytes each cover, into `out`;
    returns how many."""
    n = 0
    nxt = 0  # the first chunk not listed yet
    for j in range(rows.shape[0]):
        r = rows[j]
        a = max(r * row_bytes // chunk, nxt)
        b = min(((r + 1) * row_bytes - 1) // chunk, nchunks - 1)
        for c in range(a, b + 1):
            out[n] = c
            n += 1
        nxt = max(nxt, b + 1)
    return n


def row_chunks(rows: np.ndarray, row_bytes: int, nchunks: int, chunk: int = CHUNK_BYTES) -> np.ndarray:
    """The chunks of a buffer of `nchunks` chunks that its rows `rows` (ascending) cover."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.empty(min(nchunks, rows.shape[0] * (row_bytes // chunk + 2)), dtype=np.int64)
    return out[:_row_chunks(rows, row_bytes, chunk, nchunks, out)]


def chunk_hashes(buf: Any, chunk: int = CHUNK_BYTES) -> np.ndarray:
    """One uint64 hash per `chunk` bytes of a contiguous buffer (the last chunk may be short)."""
    u8 = as_bytes(buf)
    n = u8.shape[0]
    out = np.empty((n + chunk - 1) // chunk, dtype=np.uint64)
    whole = n // 8 * 8
    if u8.ctypes.data % 8 == 0:
        u64 = u8[:whole].view(np.uint64)
    else:  # an unaligned buffer (rare: a frame libzmq packed): hash an aligned copy
        u8 = u8.copy()
        u64 = u8[:whole].view(np.uint64)
    _hash_chunks(u8, u64, chunk, out)
    return out


def as_bytes(buf: Any) -> np.ndarray:
    """A flat uint8 view of a contiguous buffer (no copy)."""
    if isinstance(buf, np.ndarray) and buf.dtype == _U8 and buf.ndim == 1:
        return buf
    mv = buf.raw() if isinstance(buf, pickle.PickleBuffer) else memoryview(buf)
    return np.frombuffer(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv, dtype=_U8)


# -- packing -----------------------------------------------------------------------------------------------------

@dataclass
class Packed:
    """A state as a pickle stream and its out-of-band buffers (flat uint8 views of the state's own memory)."""

    skeleton: bytes
    buffers: list[np.ndarray]
    tracks: list[Track | None] = field(default_factory=list)  # per buffer (none: no buffer is tracked)

    @property
    def nbytes(self) -> int:
        return len(self.skeleton) + sum(b.nbytes for b in self.buffers)

    def track(self, index: int) -> Track | None:
        return self.tracks[index] if index < len(self.tracks) else None


@dataclass(frozen=True)
class Track:
    """A packed buffer that is (a prefix of whole rows of) an array a `DirtyRows` tracker covers, as of `pack`."""

    rows: Any            # the operator's DirtyRows
    generation: int      # its layout when packed
    row_bytes: int


@dataclass(frozen=True)
class TrackedBase:
    """What the receiver has of a tracked buffer: its chunk hashes (then its size), as for any buffer, and since
    which epoch of `rows` written rows have not been read (under layout `generation`)."""

    hashes: np.ndarray
    rows: Any
    generation: int
    since: int


Entry = np.ndarray | TrackedBase  # per buffer of a base: its hashes, or those and where its tracking stands


def _hashes_of(entry: Entry | None) -> np.ndarray | None:
    return entry.hashes if isinstance(entry, TrackedBase) else entry


def pack(state: Any, trackers: Iterable[Any] = ()) -> Packed:
    """Pickle `state` with its large contiguous buffers out of band (views: nothing is copied). `trackers`: the
    operators' `DirtyRows`; a buffer that is whole rows of an array one of them tracks gets its `Track`."""
    buffers: list[np.ndarray] = []
    tracks: list[Track | None] = []
    where = {arr.ctypes.data: (rows, rows.generation, row_bytes, arr.nbytes)
             for rows in trackers for arr, row_bytes in rows.arrays}

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < INLINE_BYTES:
            return True  # small: in the stream
        buf = np.frombuffer(raw, dtype=_U8)
        buffers.append(buf)
        hit = where.get(buf.ctypes.data) if where else None
        tracks.append(Track(hit[0], hit[1], hit[2]) if hit is not None and buf.nbytes <= hit[3]
                      and buf.nbytes % hit[2] == 0 else None)
        return False

    skeleton = cloudpickle.dumps(state, protocol=5, buffer_callback=out_of_band)
    return Packed(skeleton, buffers, tracks if any(t is not None for t in tracks) else [])


def unpack(skeleton: bytes, buffers: Iterable[Any]) -> Any:
    """The state again; its arrays are views of `buffers` (writable if they are)."""
    return pickle.loads(skeleton, buffers=list(buffers))


# -- deltas --------------------------------------------------------------------------------------------------------

@dataclass
class Part:
    """What one buffer of the new state needs: `chunks` None = the whole buffer is `data`; else `data` holds the
    listed chunks (CHUNK_BYTES each, the last one possibly short), in order."""

    index: int
    chunks: np.ndarray | None
    data: np.ndarray


@dataclass
class Delta:
    skeleton: bytes
    sizes: list[int]                      # every buffer's size in the new state
    parts: list[Part] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.skeleton) + sum(p.data.nbytes + (0 if p.chunks is None else p.chunks.nbytes)
                                        for p in self.parts)


def diff(base: list[Entry] | None, packed: Packed,
         hashes: list[np.ndarray] | None = None) -> tuple[Delta, list[Entry]]:
    """What turns a receiver's copy of an earlier state (known here only by what the last call returned, `base`;
    None: the receiver has nothing) into `packed`. Returns the delta and the next round's base: per buffer its
    chunk hashes and, last, its size (a buffer that grew or shrank within its last chunk has as many chunks as
    before, and the receiver's copy has the old size: it goes whole), with where its tracking stands if it is
    tracked (then only the chunks of rows written since are read). `hashes`: the chunk hashes, if computed."""
    made = _rounds(base, packed, lambda i, buf, old: _hashed_part(i, buf, old, None if hashes is None else hashes[i]))
    assert made is not None  # a stopped state's comparison is never given up
    return made


Compare = Callable[[int, np.ndarray, np.ndarray | None], tuple[Part | None, np.ndarray] | None]


def _rounds(base: list[Entry] | None, packed: Packed, compare: Compare) -> tuple[Delta, list[Entry]] | None:
    """One round of every buffer: a tracked buffer's written rows, else `compare(index, buffer, the receiver's
    hashes or None)` (None: given up, and so is the round, leaving `base` as it was)."""
    delta = Delta(packed.skeleton, [int(b.nbytes) for b in packed.buffers])
    out: list[Entry] = []
    updates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, buf in enumerate(packed.buffers):
        entry = base[i] if base is not None and i < len(base) else None
        track, taken, old, rows = _start(entry, packed.track(i), int(buf.nbytes))
        if rows is not None:
            assert old is not None and track is not None
            part, h, update = _tracked_part(i, buf, old, rows, track.row_bytes)
            if update is not None:
                updates.append((old, *update))
        else:
            made = compare(i, buf, old)
            if made is None:
                return None
            part, h = made
        if part is not None:
            delta.parts.append(part)
        out.append(_entry(h, track, taken))
    for old, chunks, values in updates:  # only now: a round given up above leaves the base as it was
        old[chunks] = values
    return delta, out


def _nchunks(size: int) -> int:
    return (size + CHUNK_BYTES - 1) // CHUNK_BYTES


def _start(entry: Entry | None, track: Track | None,
           size: int) -> tuple[Track | None, tuple[int, np.ndarray] | None, np.ndarray | None, np.ndarray | None]:
    """A buffer's round begins: its tracker's epoch is retired (before anything is read). Returns the track, what
    `take` gave (None: untracked, or its layout changed since `pack`), the receiver's hashes if its copy has this
    size (else None: the buffer goes whole), and the rows written since the last round if only those need reading
    (None: compare the whole buffer)."""
    taken = track.rows.take(track.generation) if track is not None else None
    if taken is None:
        track = None
    old = _hashes_of(entry)
    if old is not None and (old.shape[0] != _nchunks(size) + 1 or old[-1] != size):
        old = None
    if (taken is None or old is None or not isinstance(entry, TrackedBase) or track is None
            or entry.rows is not track.rows or entry.generation != track.generation):
        return track, taken, old, None
    stamps = taken[1]
    n = size // track.row_bytes
    if n > stamps.shape[0]:
        return track, taken, old, None
    return track, taken, old, np.flatnonzero(stamps[:n] >= entry.since)


def _entry(hashes: np.ndarray, track: Track | None, taken: tuple[int, np.ndarray] | None) -> Entry:
    if track is None or taken is None:
        return hashes
    return TrackedBase(hashes, track.rows, track.generation, taken[0] + 1)


def _hashed_part(i: int, buf: np.ndarray, old: np.ndarray | None,
                 hashes: np.ndarray | None) -> tuple[Part | None, np.ndarray]:
    """A stopped buffer compared whole: the changed chunks, or the whole buffer (no receiver copy of this size, or
    mostly changed)."""
    h = np.append(hashes if hashes is not None else chunk_hashes(buf), np.uint64(buf.nbytes))
    if old is None:
        return Part(i, None, buf), h
    dirty = np.flatnonzero(old[:-1] != h[:-1])
    if dirty.size == 0:
        return None, h
    if dirty.size * 2 > h.size - 1:  # mostly changed: the whole buffer, without a gather
        return Part(i, None, buf), h
    return Part(i, dirty.astype(np.int64), _gather(buf, dirty)), h


def _tracked_part(i: int, buf: np.ndarray, old: np.ndarray, rows: np.ndarray, row_bytes: int
                  ) -> tuple[Part | None, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Only the chunks of `rows` are read: each copied, hashed (the copy's hash: what the receiver will hold), and
    kept if its hash changed, in one pass. Returns the part, the hashes (`old`, to be updated in place with the
    returned (chunks, hashes) once the whole round is made)."""
    candidates = row_chunks(rows, row_bytes, old.shape[0] - 1)
    if candidates.size == 0:
        return None, old, None
    if buf.ctypes.data % 8:  # not a numpy array's own memory (never so for a tracked one): as an aligned copy
        buf = buf.copy()
    out = np.empty(candidates.size * CHUNK_BYTES, dtype=_U8)  # pages of chunks not kept are never touched
    chunks = np.empty(candidates.size, dtype=np.int64)
    hashes = np.empty(candidates.size, dtype=np.uint64)
    kept, nbytes = _changed_chunks(buf, buf[:buf.nbytes // 8 * 8].view(np.uint64), candidates, old,
                                   CHUNK_BYTES // 8, out, out.view(np.uint64), chunks, hashes)
    if kept == 0:
        return None, old, None
    return Part(i, chunks[:kept], out[:nbytes]), old, (chunks[:kept], hashes[:kept])


@numba.njit(cache=True, nogil=True)
def _changed_chunks(u8: np.ndarray, u64: np.ndarray, candidates: np.ndarray, old: np.ndarray, wpc: int,
                    out8: np.ndarray, out64: np.ndarray, chunks: np.ndarray,
                    hashes: np.ndarray) -> tuple[int, int]:  # pragma: no cover - numba
    """Copy each candidate chunk of `u8` (`u64`: its whole words) to the end of `out8` (`out64`: the same memory),
    hash the copy as `chunk_hashes` would, and keep it (the next goes after it) only if its hash differs from
    `old`'s; the kept chunks and their hashes into `chunks` and `hashes`. Returns (chunks kept, bytes kept)."""
    n = u8.shape[0]
    chunk = wpc * 8
    kept = 0
    at = 0
    for j in range(candidates.shape[0]):
        c = candidates[j]
        length = min(chunk, n - c * chunk)  # the last chunk may be short
        if length == chunk:
            w, aw = c * wpc, at // 8
            for q in range(wpc):
                out64[aw + q] = u64[w + q]
        else:
            for b in range(length):
                out8[at + b] = u8[c * chunk + b]
        h = _chunk_hash(out8, out64, at, length, wpc)
        if h != old[c]:
            chunks[kept] = c
            hashes[kept] = h
            kept += 1
            at += length
    return kept, at


def _gather(buf: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    n = buf.nbytes
    full = n // CHUNK_BYTES
    grid = buf[:full * CHUNK_BYTES].reshape(full, CHUNK_BYTES)
    inside = chunks[chunks < full]
    data = grid[inside].reshape(-1)
    if inside.size < chunks.size:  # the short last chunk
        data = np.concatenate([data, buf[full * CHUNK_BYTES:]])
    return data


def apply(buffers: list[np.ndarray], delta: Delta) -> list[np.ndarray]:
    """The new state's buffers: `buffers` (the receiver's copy of the base, changed in place where sizes agree)
    with `delta` applied."""
    out: list[np.ndarray] = []
    parts = {p.index: p for p in delta.parts}
    for i, size in enumerate(delta.sizes):
        part = parts.get(i)
        have = buffers[i] if i < len(buffers) else None
        if part is not None and part.chunks is None:
            if part.data.nbytes != size:
                raise ValueError(f"state transfer: buffer {i} has {part.data.nbytes} bytes, expected {size}")
            out.append(part.data)
            continue
        if have is None or have.nbytes != size:
            raise ValueError(f"state transfer: buffer {i} of {size} bytes changed in part but the receiver has "
                             f"{'none' if have is None else have.nbytes} bytes of it")
        if part is not None:
            _scatter(have, part.chunks, part.data)  # type: ignore[arg-type]
        out.append(have)
    return out


def _scatter(buf: np.ndarray, chunks: np.ndarray, data: np.ndarray) -> None:
    n = buf.nbytes
    full = n // CHUNK_BYTES
    inside = chunks[chunks < full]
    if data.nbytes != inside.size * CHUNK_BYTES + (n - full * CHUNK_BYTES if inside.size < chunks.size else 0):
        raise ValueError("state transfer: a delta's data does not match its chunk list")
    grid = buf[:full * CHUNK_BYTES].reshape(full, CHUNK_BYTES)
    grid[inside] = data[:inside.size * CHUNK_BYTES].reshape(-1, CHUNK_BYTES)
    if inside.size < chunks.size:
        buf[full * CHUNK_BYTES:] = data[inside.size * CHUNK_BYTES:]


def warm() -> None:
    """Compile (or load from numba's cache) the kernels a move runs: chunk hashes, a tracked buffer's rows, the
    changed chunks of a live round, and the operators' dirty-row stamps. The fork server's template calls it, so
    that a fresh install's first move does not compile them on the old host inside its barrier, where the move's
    downtime would include the compilation (`microstream warmup --group moves` runs it too)."""
    from ..operators.kernels.dirty import DirtyRows

    rows, width = 2048, 8                        # 128 KB: above INLINE_BYTES, so it travels as a buffer
    state = np.zeros((rows, width))
    extra = np.zeros(INLINE_BYTES // 8 + 7)      # an untracked buffer with a short last chunk
    tracker = DirtyRows()
    tracker.track(rows, state)

    def packed() -> Packed:
        return pack({"state": state, "extra": extra}, [tracker])

    delta, base = diff(None, packed())
    have = apply([], delta)
    state[7] = 1.0
    tracker.mark(np.array([7, -1], dtype=np.int64))
    extra[3] = 1.0
    live = live_delta(base, packed())
    if live is not None:
        delta, base = live
        have = apply(have, delta)
    state[9] = 2.0
    tracker.mark(np.array([9], dtype=np.int64))
    delta, _ = diff(base, packed())
    apply(have, delta)


# -- the wire --------------------------------------------------------------------------------------------------------

def encode(transfer: str, round_: int, final: bool, delta: Delta) -> list[Any]:
    """Frames of one round: a header, the skeleton, then per part its chunk list (or nothing) and its data."""
    meta = {"transfer": transfer, "round": round_, "final": final, "sizes": delta.sizes,
            "parts": [[p.index, p.chunks is not None] for p in delta.parts]}
    frames: list[Any] = [_MAGIC + cloudpickle.dumps(meta), delta.skeleton]
    for p in delta.parts:
        if p.chunks is not None:
            frames.append(p.chunks)
        frames.append(p.data)
    return frames


def decode(frames: list[Any]) -> tuple[dict[str, Any], Delta]:
    head = bytes(frames[0])
    if not head.startswith(_MAGIC):
        raise ValueError("not a state-transfer message")
    meta = pickle.loads(head[len(_MAGIC):])
    delta = Delta(bytes(frames[1]), [int(s) for s in meta["sizes"]])
    at = 2
    for index, chunked in meta["parts"]:
        chunks = None
        if chunked:
            chunks = np.frombuffer(_buffer(frames[at]), dtype=np.int64)
            at += 1
        delta.parts.append(Part(int(index), chunks, _owned(_buffer(frames[at]))))
        at += 1
    if at != len(frames):
        raise ValueError(f"state transfer: {len(frames)} frames, expected {at}")
    return meta, delta


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)


def _owned(mv: memoryview) -> np.ndarray:
    """A writable, 8-byte aligned uint8 array of a received frame (its own memory: a copy only when it is not)."""
    arr = np.frombuffer(mv, dtype=_U8)
    if mv.readonly or arr.ctypes.data % 8:
        arr = arr.copy()
    return arr


# -- the two ends ----------------------------------------------------------------------------------------------------

SEND_TIMEOUT = 30.0  # seconds a round may wait for the connection to the new host
STOP_POLL = 0.2      # seconds between a waiting new host's looks at its control link (a stop ends the wait)


@dataclass(frozen=True)
class Keys:
    """CURVE keys of a transfer's end (z85 bytes); None on an insecure cluster."""

    public: bytes
    secret: bytes


class StateSender:
    """The old host's end: rounds of one transfer to one new host, each acknowledged."""

    def __init__(self, endpoint: str, transfer: str, keys: Keys | None = None, server_public: bytes | None = None,
                 context: zmq.Context | None = None, send_timeout: float = SEND_TIMEOUT) -> None:
        self.transfer = transfer
        self.ctx = context or zmq.Context.instance()
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 0
        # queue only to a connection whose handshake has completed, and never wait for one forever: a new host that
        # refuses this agent's key (or is gone) is an error here, not a host blocked in send
        sock.immediate = 1
        sock.sndtimeo = int(send_timeout * 1000)
        self.send_timeout = send_timeout
        if keys is not None and server_public is not None:
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_serverkey = server_public
        sock.connect(endpoint)
        self.sock: zmq.Socket | None = sock
        self.hashes: list[Entry] | None = None   # what the receiver has (after the last round sent)
        self.rounds = 0
        self.acked = -1
        self.sent_bytes = 0
        self.last_bytes = 0

    def send(self, packed: Packed, final: bool = False, hashes: list[np.ndarray] | None = None,
             timeout: float | None = None) -> int:
        """Send what changed since the last round (everything, the first time); returns its bytes."""
        delta, hashes_after = diff(self.hashes, packed, hashes)
        return self.send_delta(delta, hashes_after, final, timeout)

    def send_delta(self, delta: Delta, hashes_after: list[Entry], final: bool = False,
                   timeout: float | None = None) -> int:
        """Send a round made by `diff` or `live_delta` against `self.hashes`; `timeout`: seconds it may wait for the
        connection (default `send_timeout`)."""
        if self.sock is None:
            raise RuntimeError("the state sender is closed")
        wait = self.send_timeout if timeout is None else timeout
        self.sock.sndtimeo = int(wait * 1000)
        try:
            self.sock.send_multipart(encode(self.transfer, self.rounds, final, delta), copy=False)
        except zmq.Again:
            self.hashes = None  # a tracked round updated the base in place: it no longer says what the receiver has
            raise RuntimeError(f"could not hand the state to the new host within {wait:g} s: "
                               "no connection to it (its agent does not trust this agent's key, or it is gone)"
                               ) from None
        except BaseException:
            self.hashes = None
            raise
        self.hashes = hashes_after
        self.rounds += 1
        self.last_bytes = delta.nbytes
        self.sent_bytes += delta.nbytes
        return delta.nbytes

    @property
    def pending(self) -> bool:
        """A round is on its way that the receiver has not acknowledged yet."""
        self.poll()
        return self.acked < self.rounds - 1

    def poll(self, timeout_ms: int = 0) -> None:
        sock = self.sock
        while sock is not None and sock.poll(timeout_ms):
            frames = sock.recv_multipart()
            if len(frames) == 2 and frames[0] == b"ack":
                self.acked = max(self.acked, int(frames[1]))
            elif len(frames) == 2 and frames[0] == b"error":
                raise RuntimeError(f"the new host refused the state: {frames[1].decode(errors='replace')}")
            timeout_ms = 0

    def wait(self, timeout: float) -> bool:
        """Wait until every round sent is acknowledged; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(max(1, min(200, int(left * 1000))))
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class StateReceiver:
    """The new host's end: a CURVE server (accepting only `trusted` keys) that applies each round as it arrives,
    on its own thread, so that round 0 lands while the host waits for its start."""

    def __init__(self, bind: str, keys: Keys | None = None, trusted: Iterable[bytes] = ()) -> None:
        self.ctx = zmq.Context()
        self.auth: ThreadAuthenticator | None = None
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = MAX_FRAME_BYTES
        try:
            if keys is not None:
                self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger(__name__ + ".auth"))
                self.auth.start()
                allowed = frozenset(trusted)
                self.auth.configure_curve_callback(domain="microstream-state",
                                                   credentials_provider=_Allow(allowed))
                sock.zap_domain = b"microstream-state"
                sock.curve_server = True
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
            sock.bind(bind)
        except BaseException:
            sock.close(linger=0)
            self._term()
            raise
        self.endpoint: str = sock.last_endpoint.decode()  # type: ignore[union-attr]
        self.sock = sock
        self._lock = threading.Condition()
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._final: dict[str, tuple[bytes, list[np.ndarray], dict[str, Any]]] = {}
        self.error: str | None = None
        self.received_bytes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="state-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        finally:  # here, so that `close` need not wait for this thread
            self.sock.close(linger=0)
            self._term()

    def _serve(self) -> None:
        sock = self.sock
        while not self._stop:
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart(copy=False)
            peer, body = frames[0].bytes, frames[1:]
            try:
                meta, delta = decode(body)
                transfer = str(meta["transfer"])
                buffers = apply(self._buffers.get(transfer, []), delta)
                nbytes = sum(len(_buffer(f)) for f in body)
            except Exception as exc:  # noqa: BLE001 - told to the sender (its host fails the move), kept for wait()
                with self._lock:
                    self.error = f"{type(exc).__name__}: {exc}"
                    self._lock.notify_all()
                with contextlib.suppress(zmq.ZMQError):
                    sock.send_multipart([peer, b"error", self.error.encode()])
                continue
            with self._lock:
                self.received_bytes += nbytes
                self._buffers[transfer] = buffers
                if meta["final"]:
                    figures = {"rounds": int(meta["round"]) + 1, "final_bytes": nbytes,
                               "received_bytes": self.received_bytes}
                    self._final[transfer] = (delta.skeleton, buffers, figures)
                    self._lock.notify_all()
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart([peer, b"ack", str(meta["round"]).encode()])

    def wait(self, transfer: str, timeout: float,
             should_stop: Callable[[], bool] | None = None) -> tuple[Any, dict[str, Any]]:
        """The state of `transfer` once its final round has arrived (a TimeoutError after `timeout` seconds; an
        InterruptedError as soon as `should_stop`, asked every `STOP_POLL` seconds, says so)."""
        deadline = time.monotonic() + timeout

        def arrived() -> bool:
            return transfer in self._final or self.error is not None

        with self._lock:
            while not arrived():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the state of {transfer} did not arrive from the old host within {timeout:g} s")
                if self._lock.wait_for(arrived, min(left, STOP_POLL)):
                    break
                if should_stop is not None:
                    self._lock.release()  # asked without the lock: the receiving thread goes on meanwhile
                    try:
                        stop = should_stop()
                    finally:
                        self._lock.acquire()
                    if stop:
                        raise InterruptedError(f"stopped while waiting for the state of {transfer}")
            if transfer not in self._final:
                raise RuntimeError(f"the state of {transfer} could not be applied: {self.error}")
            skeleton, buffers, figures = self._final.pop(transfer)
            self._buffers.pop(transfer, None)
        return unpack(skeleton, buffers), figures

    def close(self, wait: bool = True) -> None:
        """Stop receiving; the thread closes the socket within 0.1 s (`wait`: return once it has; a new host about
        to start does not wait, its move's downtime would include it)."""
        self._stop = True
        if wait:
            self._thread.join(timeout=2)

    def _term(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.term()


class _Allow:
    """ZAP credentials provider: exactly the trusted data keys."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class Transfers:
    """How a host makes the two ends of a direct transfer: its bind address, its keys (the agent's, as for its data
    channels; None on an insecure cluster) and the keys it trusts (every agent's)."""

    def __init__(self, bind_host: str, keys: Any = None, trusted: Iterable[bytes] = ()) -> None:
        self.bind_host = bind_host
        self.keys = Keys(keys.public, keys.secret) if keys is not None else None
        self.trusted = list(trusted)

    def receiver(self) -> StateReceiver:
        return StateReceiver(f"tcp://{self.bind_host}:*", self.keys, self.trusted)

    def sender(self, peer: dict[str, Any], transfer: str) -> StateSender:
        """To the new host `peer` (its `state_endpoint` and `public_key`, as it reported them)."""
        public = peer.get("public_key")
        server_public = public.encode() if self.keys is not None and public else None
        return StateSender(peer["state_endpoint"], transfer, self.keys, server_public)


# -- pre-copy while the virtual node runs --------------------------------------------------------------------------

PIECE_BYTES = 8 << 20  # a pre-copy hashes this much at a time, then looks whether it was told to stop
# pre-copy rounds go on while each is well smaller than the one before (state that changes everywhere faster than
# the link carries it never converges) and larger than PRECOPY_SMALL bytes, PRECOPY_ROUNDS at most; then the host
# reports that the move may cut, and rounds go on (each only what changed) until the cut stops them
PRECOPY_ROUNDS = 8
PRECOPY_SMALL = 256 << 10
PRECOPY_SHRINK = 0.7
_IDLE_ROUND = 0.02  # seconds between rounds that found nothing changed


def _hashes(buf: np.ndarray, stop: Callable[[], bool] | None) -> np.ndarray | None:
    """`chunk_hashes(buf)`, a piece at a time (pieces are whole chunks, so the hashes are the same); None if `stop()`
    turned true meanwhile."""
    if stop is None or buf.nbytes <= PIECE_BYTES:
        return chunk_hashes(buf)
    step = PIECE_BYTES // CHUNK_BYTES * CHUNK_BYTES
    out = []
    for start in range(0, buf.nbytes, step):
        if stop():
            return None
        out.append(chunk_hashes(buf[start:start + step]))
    return np.concatenate(out)


def live_delta(base: list[Entry] | None, packed: Packed,
               stop: Callable[[], bool] | None = None) -> tuple[Delta, list[Entry]] | None:
    """`diff` for buffers that change while it reads them (a running vnode's own arrays, read on another thread).
    It finds the changed chunks by hashing the live buffer (a torn read may miss a change, which a later round or
    the final one sends), then copies them and keeps the hashes *of the copy*: what the receiver holds is always
    what the returned hashes say, so `diff` at the barrier, on the stopped vnode's state, sends every chunk that
    differs. A tracked buffer's rows written since its last round are read the same way, and only those. None if
    `stop()` turned true first (nothing counts as sent)."""
    return _rounds(base, packed, lambda i, buf, old: _live_hashed_part(i, buf, old, stop))


def _live_hashed_part(i: int, buf: np.ndarray, old: np.ndarray | None,
                      stop: Callable[[], bool] | None) -> tuple[Part | None, np.ndarray] | None:
    size = int(buf.nbytes)
    dirty = None
    if old is not None:
        live = _hashes(buf, stop)
        if live is None:
            return None
        dirty = np.flatnonzero(old[:-1] != live)
        if dirty.size * 2 > old.shape[0] - 1:
            dirty = None  # mostly changed: the whole buffer, without a gather
    if dirty is None:
        copy = buf.copy()
        whole = _hashes(copy, stop)
        if whole is None:
            return None
        return Part(i, None, copy), np.append(whole, np.uint64(size))
    assert old is not None
    if dirty.size == 0:
        return None, old
    data = _gather(buf, dirty)  # a copy: its chunks hash as they would in place
    after = old.copy()
    after[dirty] = chunk_hashes(data)
    return Part(i, dirty.astype(np.int64), data), after


class Precopy:
    """A move's pre-copy on a thread of its own, so that it progresses while the host's loop is busy or blocked on a
    full channel (backpressure): the thread owns `sender` until `stop`. The host offers a view of its live state
    (`offer`: a `pack` of `TaskRunner.snapshot(live=True)`, taken between batches) whenever `wants` one; the thread
    sends rounds of it (`live_delta`), each once the last is acknowledged, reusing the last view when no fresh one
    comes. `converged` (figures) once rounds stop shrinking; `error` if the transfer failed (the move then goes
    through the coordinator)."""

    def __init__(self, sender: StateSender, rounds: int = PRECOPY_ROUNDS, small: int = PRECOPY_SMALL,
                 shrink: float = PRECOPY_SHRINK, fresh_wait: float = 0.1) -> None:
        self.sender = sender
        self.rounds, self.small, self.shrink, self.fresh_wait = rounds, small, shrink, fresh_wait
        self.wants = True                     # the next round would like a fresh view
        self.converged: dict[str, Any] | None = None
        self.error: str | None = None
        self.state_bytes = 0
        self.started = time.monotonic()
        self._offered: Packed | None = None
        self._stop = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="state-precopy", daemon=True)
        self._thread.start()

    def offer(self, packed: Packed) -> None:
        with self._cv:
            self._offered, self.wants = packed, False
            self._cv.notify_all()

    def stop(self, wait: bool = True) -> None:
        """No more rounds (the move cuts, or is called off); with `wait`, return once the thread has let go of the
        sender (a round being computed is dropped, one being sent is sent)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if wait:
            self._thread.join()

    def _stopped(self) -> bool:
        return self._stop

    def _next_view(self, view: Packed | None, idle: bool) -> Packed | None:
        """A fresh view if one comes soon (the first: wait for it), else the last one."""
        with self._cv:
            self._cv.wait_for(lambda: self._stop or self._offered is not None,
                              None if view is None else (_IDLE_ROUND if idle else self.fresh_wait))
            if self._offered is not None:
                view, self._offered = self._offered, None
        return view

    def _run(self) -> None:
        sender, view, before, idle = self.sender, None, 0, False
        try:
            while not self._stop:
                view = self._next_view(view, idle)
                if self._stop or view is None:
                    return
                self.state_bytes = view.nbytes
                made = live_delta(sender.hashes, view, self._stopped)
                if made is None:
                    return
                delta, hashes = made
                self.wants = True
                idle = not delta.parts and sender.rounds > 0
                if idle:
                    continue
                sender.send_delta(delta, hashes)
                while sender.pending and not self._stop:
                    sender.poll(10)
                if self.converged is None:
                    shrinking = sender.rounds < 2 or sender.last_bytes < self.shrink * before
                    if not (sender.rounds < self.rounds and sender.last_bytes > self.small and shrinking):
                        self.converged = {"rounds": sender.rounds, "sent_bytes": sender.sent_bytes,
                                          "last_bytes": sender.last_bytes, "state_bytes": self.state_bytes,
                                          "seconds": time.monotonic() - self.started}
                    before = sender.last_bytes
        except Exception as exc:  # noqa: BLE001 - the host reports it and moves the state through the coordinator
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("pre-copy of %s failed: %s", sender.transfer, self.error)
