"""Chunked checkpoint snapshots (runtime/checkpoint_chunks.py): a host sends only the chunks that changed since a
base, the coordinator joins them with the base into exactly the blob a full snapshot would have been, and a blob
put together from stored chunks is checked chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest

from microstream.runtime.checkpoint_chunks import (
    CHUNK,
    ChunkError,
    Encoder,
    assemble,
    base_of,
    decode,
    is_chunked,
    manifest_of,
    pieces,
    resolve,
)


def _state(rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"tasks": {"t0": {"op": {"keys": np.arange(rows, dtype=np.int64), "state": rng.random((rows, 16))}}},
            "small": [1, "two", 3.0], "counts": (5, 6)}


def _equal(a: dict, b: dict) -> bool:
    oa, ob = a["tasks"]["t0"]["op"], b["tasks"]["t0"]["op"]
    return (np.array_equal(oa["keys"], ob["keys"]) and np.array_equal(oa["state"], ob["state"])
            and a["small"] == b["small"] and a["counts"] == b["counts"])


def test_a_delta_joined_with_its_base_is_byte_for_byte_the_full_snapshot():
    state = _state(20_000)  # 2.5 MB of state, 160 chunks
    host = Encoder()
    first = host.encode(state, checkpoint=1, base=None)
    assert is_chunked(first) and base_of(first) is None
    full, manifest = resolve(first, first)
    state["tasks"]["t0"]["op"]["state"][[3, 9_000, 19_999]] += 1.0  # three keys change: three chunks
    state["small"].append("four")                                      # and the skeleton
    second = host.encode(state, checkpoint=2, base=1)
    assert base_of(second) == 1
    assert len(second) < 4 * CHUNK + 2_000 < len(first) // 30
    joined, joined_manifest = resolve(second, full, manifest)
    assert joined == Encoder().encode(state, checkpoint=2, base=None)  # what a full snapshot is
    assert _equal(decode(joined), state)
    assert joined_manifest == manifest_of(joined)  # unchanged chunks kept the base's keys, rightly
    assert sum(a != b for a, b in zip(manifest.chunks[1], joined_manifest.chunks[1], strict=True)) == 3


def test_a_grown_buffer_sends_its_new_chunks_and_the_changed_last_one():
    state = _state(10_000)
    host = Encoder()
    base, _ = resolve(host.encode(state, 1, None), b"")
    op = state["tasks"]["t0"]["op"]
    op["keys"] = np.arange(12_000, dtype=np.int64)                        # keys appended
    op["state"] = np.concatenate([op["state"], np.zeros((2_000, 16))])
    delta = host.encode(state, 2, base=1)
    joined, _ = resolve(delta, base)
    assert _equal(decode(joined), state)
    assert len(delta) < len(base) // 2


def test_without_the_named_base_the_encoder_sends_everything():
    state = _state(5_000)
    host = Encoder()
    host.encode(state, 1, None)
    blob = host.encode(state, 2, base=7)  # a base this host never sent (a new host process, a restore)
    assert base_of(blob) is None and _equal(decode(blob), state)
    host.done(2)
    assert base_of(host.encode(state, 3, base=1)) is None  # forgotten once a later one completed


def test_a_delta_cannot_be_restored_or_joined_with_the_wrong_base():
    host = Encoder()
    small = host.encode(_state(100), 1, None)
    state = _state(5_000)
    host.encode(state, 2, None)
    state["tasks"]["t0"]["op"]["state"][0, 0] = -1.0
    delta = host.encode(state, 3, base=2)
    with pytest.raises(ChunkError, match="without its base"):
        decode(delta)
    with pytest.raises(ChunkError, match="its base lacks"):
        resolve(delta, small)
    with pytest.raises(ChunkError, match="not a chunked"):
        resolve(delta, b"\x80\x05 a pickle")


def test_reassembly_from_stored_chunks_checks_every_chunk():
    blob = Encoder().encode(_state(8_000), 1, None)
    manifest = manifest_of(blob)
    stored = {key: bytes(data) for key, data in pieces(blob, manifest)}
    assert assemble(manifest, stored.get) == blob
    assert len(stored) == 1 + sum(len(keys) for keys in manifest.chunks)
    victim = manifest.chunks[-1][2]
    damaged = dict(stored)
    damaged[victim] = b"\0" + damaged[victim][1:]
    with pytest.raises(ChunkError, match=f"checkpoint 1 of j: chunk {victim} is damaged"):
        assemble(manifest, damaged.get, "checkpoint 1 of j")
    del damaged[victim]
    with pytest.raises(ChunkError, match=f"chunk {victim} is missing"):
        assemble(manifest, damaged.get)


def test_a_host_restored_from_a_checkpoint_sends_only_what_changed_since_it():
    state = _state(20_000)
    base, _ = resolve(Encoder().encode(state, 7, None), b"")  # what the coordinator holds and restores from
    restored = Encoder()
    restored.adopt(base)  # a new host process, after a recovery
    again = decode(base)
    again["tasks"]["t0"]["op"]["state"][100] = 0.0
    delta = restored.encode(again, 8, base=7)
    assert base_of(delta) == 7 and len(delta) < len(base) // 30
    assert _equal(decode(resolve(delta, base)[0]), again)
