"""Incremental checkpoints: a virtual node's snapshot as fixed chunks, of which a host sends only those that changed.

A snapshot is packed as a move's state is (`statexfer.pack`: protocol-5 pickle, numpy buffers of 64 KB or more out
of band) and each out-of-band buffer is cut into `CHUNK` byte chunks, hashed (`statexfer.chunk_hashes`, the numba
loop a move's dirty tracking uses). The host (`Encoder`) keeps the hashes of the checkpoints it sent, 8 bytes per
chunk; for checkpoint *n* it sends, against a *base* (a checkpoint the coordinator completed and still has), the
skeleton and only the chunks whose hash differs from the base's at the same place. A buffer that grew keeps its
earlier chunks (keys are appended); one that moved or changed everywhere goes whole. The first checkpoint of a host
process has no base and is full, except after a recovery: a host restored from a checkpoint's blob hashes it
(`Encoder.adopt`), and its first checkpoint sends only what changed since the one it was restored from.

The blob is not a pickle: a magic, a JSON header and raw bytes, so that the coordinator joins a delta with its base
(`resolve`) without unpickling what a host sent. What the coordinator keeps, stores and replicates is the joined,
*full* blob (the same bytes a full snapshot would have been), plus a `Manifest`: a content key (BLAKE2b-128) per
chunk, with which the store (`cluster/store.py`) writes each distinct chunk once and reassembles a checkpoint
(`assemble`), checking every chunk against its key: a missing or damaged chunk is a `ChunkError`, never silently
wrong state. Chunks unchanged since the base keep the base's keys, so the coordinator hashes only what was sent.

    >>> import numpy as np
    >>> encoder = Encoder()
    >>> state = {"rows": np.zeros(100_000)}                       # 800 KB: out of band, 13 chunks
    >>> first = encoder.encode(state, checkpoint=1, base=None)
    >>> state["rows"][5] = 1.0                                     # one chunk changes
    >>> second = encoder.encode(state, checkpoint=2, base=1)
    >>> len(second) < len(first) // 10
    True
    >>> full, manifest = resolve(second, first, manifest_of(first))
    >>> float(decode(full)["rows"][5]), manifest.nbytes == len(full)
    (1.0, True)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

CHUNK = 16 << 10          # bytes per chunk: a few keys' state in a keyed operator; small enough that few keys
#                           changing touch few chunks, large enough that a 100 MB state is 6,400 chunks
KEEP_SENT = 4             # checkpoints whose hashes a host keeps (a base is the last completed one, or the one before)
MAGIC = b"MSCK\x01"
_MANIFEST_MAGIC = b"MSCM\x01"
_LEN = struct.Struct("<I")


class ChunkError(ValueError):
    """A chunked checkpoint that cannot be put together: a delta without its base, a missing or damaged chunk."""


def base_of(blob: bytes) -> int | None:
    """The checkpoint a chunked blob is a delta against (None: it is full)."""
    base = _header(blob)[0].get("base")
    return None if base is None else int(base)


def is_chunked(blob: bytes | memoryview) -> bool:
    """Whether `blob` is a chunked snapshot (else a pickled one, as moves and older hosts send)."""
    return bytes(blob[:len(MAGIC)]) == MAGIC


# -- the blob: magic, header length, JSON header, skeleton, then the buffers' bytes (all, or only new chunks) --------
def _header(blob: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """The header and where the payload starts."""
    if not is_chunked(blob) or len(blob) < len(MAGIC) + _LEN.size:
        raise ChunkError("not a chunked checkpoint snapshot")
    (n,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(bytes(blob[start:start + n]))
    except ValueError as exc:
        raise ChunkError(f"a chunked snapshot's header is damaged: {exc}") from None
    return header, start + n


def _blob(header: dict[str, Any], pieces: list[Any]) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *pieces])


def _n_chunks(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


def _spans(header: dict[str, Any], payload: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Of a full blob: (start, end) of the skeleton and of each buffer."""
    at = payload + int(header["skeleton"])
    spans = []
    for size in header["sizes"]:
        spans.append((at, at + int(size)))
        at += int(size)
    return (payload, payload + int(header["skeleton"])), spans


# -- the host's side -----------------------------------------------------------------------------------------------
class Encoder:
    """A host's checkpoints as chunked blobs: full the first time, against a base it sent afterwards."""

    def __init__(self) -> None:
        self.sent: dict[int, list[tuple[int, np.ndarray]]] = {}   # checkpoint -> per buffer (size, chunk hashes)
        self.last_bytes = 0                                        # the size of the last blob
        self.full_bytes = 0                                        # ... and what a full one would have been

    def encode(self, state: Any, checkpoint: int, base: int | None) -> bytes:
        """The blob of `state` for `checkpoint`: only chunks changed since `base` if this encoder sent `base`."""
        from .statexfer import chunk_hashes, pack  # pyzmq with it: a microVM guest's host (no checkpoints) lacks it

        packed = pack(state)
        hashes = [chunk_hashes(b, CHUNK) for b in packed.buffers]
        before = self.sent.get(base) if base is not None else None
        header: dict[str, Any] = {"checkpoint": checkpoint, "base": None, "chunk": CHUNK,
                                  "skeleton": len(packed.skeleton), "sizes": [int(b.nbytes) for b in packed.buffers],
                                  "new": None}
        pieces: list[Any] = [packed.skeleton]
        if before is None:
            pieces.extend(b.data for b in packed.buffers)
        else:
            header["base"], header["new"] = base, []
            for i, (buf, h) in enumerate(zip(packed.buffers, hashes, strict=True)):
                new = _changed(int(buf.nbytes), h, before[i] if i < len(before) else None)
                header["new"].append(new.tolist())
                pieces.extend(buf[c * CHUNK:(c + 1) * CHUNK].data for c in new)
        self.sent[checkpoint] = [(int(b.nbytes), h) for b, h in zip(packed.buffers, hashes, strict=True)]
        for old in sorted(self.sent)[:-KEEP_SENT]:
            del self.sent[old]
        blob = _blob(header, pieces)
        self.last_bytes, self.full_bytes = len(blob), packed.nbytes
        return blob

    def adopt(self, blob: bytes) -> None:
        """A host restored from `blob` (a recovery): its hashes, so that the next checkpoint, whose base is the one
        restored from, sends only what changed since (a blob without its checkpoint's id is ignored)."""
        from .statexfer import chunk_hashes

        header, payload = _header(blob)
        if header.get("checkpoint") is None or header.get("base") is not None:
            return
        view = memoryview(blob)
        _, spans = _spans(header, payload)
        self.sent[int(header["checkpoint"])] = [(b - a, chunk_hashes(np.frombuffer(view[a:b], dtype=np.uint8), CHUNK))
                                                for a, b in spans]

    def done(self, checkpoint: int) -> None:
        """Checkpoint `checkpoint` is complete: older ones will never be a base again."""
        for old in [c for c in self.sent if c < checkpoint]:
            del self.sent[old]


def _changed(size: int, hashes: np.ndarray, before: tuple[int, np.ndarray] | None) -> np.ndarray:
    """Chunks of a buffer of `size` bytes that differ from the base's buffer at the same index: a differing hash,
    or a chunk the base lacks or has with another length (the last one, when the buffer grew)."""
    if before is None:
        return np.arange(hashes.size)
    old_size, old = before
    same = np.zeros(hashes.size, dtype=bool)
    m = min(hashes.size, old.size)
    same[:m] = hashes[:m] == old[:m]
    if m and min(CHUNK, size - (m - 1) * CHUNK) != min(CHUNK, old_size - (m - 1) * CHUNK):
        same[m - 1] = False
    return np.flatnonzero(~same)


def decode(blob: bytes | memoryview) -> Any:
    """The state of a full chunked blob (what a restore gets); its arrays are writable copies, 8-byte aligned."""
    from .statexfer import unpack

    header, payload = _header(blob)
    if header.get("base") is not None:
        raise ChunkError(f"a delta against checkpoint {header['base']} cannot be restored without its base")
    view = memoryview(blob)
    (s0, s1), spans = _spans(header, payload)
    if spans and spans[-1][1] != len(view) or not spans and s1 != len(view):
        raise ChunkError(f"a chunked snapshot has {len(view)} bytes, its header says {spans[-1][1] if spans else s1}")
    buffers = [np.frombuffer(view[a:b], dtype=np.uint8).copy() for a, b in spans]
    return unpack(bytes(view[s0:s1]), buffers)


# -- the coordinator's side: joining a delta with its base, content keys ---------------------------------------------
def _key(data: Any) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class Manifest:
    """A full blob as content keys: its header's bytes (`head`), the skeleton's key and each buffer's chunk keys."""

    head: bytes
    skeleton: str
    chunks: list[list[str]]
    nbytes: int

    def all_keys(self) -> Iterator[str]:
        yield self.skeleton
        for keys in self.chunks:
            yield from keys

    def to_bytes(self) -> bytes:
        body = {"head": self.head.hex(), "skeleton": self.skeleton, "chunks": self.chunks, "nbytes": self.nbytes}
        return _MANIFEST_MAGIC + json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(data: bytes) -> Manifest:
        if not is_manifest(data):
            raise ChunkError("not a chunked checkpoint's manifest")
        body = json.loads(data[len(_MANIFEST_MAGIC):])
        return Manifest(bytes.fromhex(body["head"]), body["skeleton"], body["chunks"], int(body["nbytes"]))


def is_manifest(data: bytes | memoryview) -> bool:
    return bytes(data[:len(_MANIFEST_MAGIC)]) == _MANIFEST_MAGIC


def pieces(blob: bytes, manifest: Manifest) -> Iterator[tuple[str, memoryview]]:
    """(key, bytes) of every chunk of a full blob (the skeleton first), as `manifest` names them."""
    header, payload = _header(blob)
    view = memoryview(blob)
    (s0, s1), spans = _spans(header, payload)
    yield manifest.skeleton, view[s0:s1]
    for (a, b), keys in zip(spans, manifest.chunks, strict=True):
        for c, key in enumerate(keys):
            yield key, view[a + c * CHUNK:min(b, a + (c + 1) * CHUNK)]


def manifest_of(blob: bytes) -> Manifest:
    """The manifest of a full blob, every chunk hashed (a blob that came without one: restored, replicated)."""
    header, payload = _header(blob)
    if header.get("base") is not None:
        raise ChunkError("a delta has no manifest of its own: resolve it against its base first")
    view = memoryview(blob)
    (s0, s1), spans = _spans(header, payload)
    chunks = [[_key(view[a + c * CHUNK:min(b, a + (c + 1) * CHUNK)]) for c in range(_n_chunks(b - a))]
              for a, b in spans]
    return Manifest(bytes(view[:payload]), _key(view[s0:s1]), chunks, len(view))


def resolve(delta: bytes, base: bytes, base_manifest: Manifest | None = None) -> tuple[bytes, Manifest]:
    """The full blob a delta stands for (its new chunks where it has them, the base's elsewhere), and its manifest
    (unchanged chunks keep the base's keys: only the new ones are hashed). A full blob comes back as it is."""
    header, payload = _header(delta)
    if header.get("base") is None:
        return delta, manifest_of(delta)
    bheader, bpayload = _header(base)
    if bheader.get("base") is not None:
        raise ChunkError("the base of a delta must be a full snapshot")
    bmanifest = base_manifest if base_manifest is not None else manifest_of(base)
    view, bview = memoryview(delta), memoryview(base)
    _, bspans = _spans(bheader, bpayload)
    skeleton_end = payload + int(header["skeleton"])
    out: list[Any] = [view[payload:skeleton_end]]
    chunks: list[list[str]] = []
    at = skeleton_end
    for i, size in enumerate(header["sizes"]):
        new = set(header["new"][i])
        keys = []
        for c in range(_n_chunks(int(size))):
            length = min(CHUNK, int(size) - c * CHUNK)
            if c in new:
                piece = view[at:at + length]
                at += length
                key = _key(piece)
            else:
                if i >= len(bspans) or bspans[i][0] + c * CHUNK + length > bspans[i][1]:
                    raise ChunkError(f"a delta refers to chunk {c} of buffer {i}, which its base lacks")
                start = bspans[i][0] + c * CHUNK
                piece, key = bview[start:start + length], bmanifest.chunks[i][c]
            out.append(piece)
            keys.append(key)
        chunks.append(keys)
    if at != len(view):
        raise ChunkError(f"a delta has {len(view)} bytes, its header accounts for {at}")
    full_header = {**header, "base": None, "new": None}
    blob = _blob(full_header, out)
    _, full_payload = _header(blob)
    return blob, Manifest(blob[:full_payload], _key(view[payload:skeleton_end]), chunks, len(blob))


def assemble(manifest: Manifest, get: Callable[[str], bytes | None], what: str = "a checkpoint") -> bytes:
    """The full blob of `manifest`, each chunk fetched with `get(key)` and checked against its key (a `ChunkError`
    naming `what` and the chunk if one is missing or damaged)."""
    out = [manifest.head]
    for key in manifest.all_keys():
        data = get(key)
        if data is None:
            raise ChunkError(f"{what}: chunk {key} is missing from the checkpoint store")
        if _key(data) != key:
            raise ChunkError(f"{what}: chunk {key} is damaged (its bytes no longer match their hash)")
        out.append(data)
    blob = b"".join(out)
    if len(blob) != manifest.nbytes:
        raise ChunkError(f"{what}: its chunks make {len(blob)} bytes, its manifest says {manifest.nbytes}")
    return blob
