"""Operator-level dirty tracking (operators/kernels/dirty.py) as a move's state transfer uses it: real keyed
operators process random batches between transfer rounds (pre-copy rounds of the live arrays, then the final
one), and the state the receiver ends with is the operator's own, byte for byte; an instance restored from it goes
on exactly as the original does (property-based: random keys, new keys that grow the arrays, watermarks that fire
windows of every key)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from microstream.operators.base import OperatorContext
from microstream.operators.stateful_map import StatefulMap
from microstream.operators.window import WindowAggregate
from microstream.runtime import statexfer as sx

SCHEMA = ms.Pipeline("s").from_iterable([{"t": 0, "k": 1, "v": 1.0}], time="t", time_unit="ns").key_by("k").schema


@numba.njit
def _history(state, t, x):
    """16 floats per key (128-byte rows: two chunks), a few written per record."""
    i = int(state[0]) % 15 + 1
    state[i] = x
    state[0] += 1
    return state[i]


SPECS = {
    "stateful_map": lambda: StatefulMap(_history, "v", out="o", state_size=16),
    "tumbling": lambda: WindowAggregate(ms.tumbling("2s"), {"n": ms.agg.count(), "m": ms.agg.mean("v"),
                                                            "hi": ms.agg.max("v")}),
    "sliding": lambda: WindowAggregate(ms.sliding("2s", "1s"), {"s": ms.agg.sum("v")}, lateness=500_000_000),
    "session": lambda: WindowAggregate(ms.session("700ms"), {"n": ms.agg.count(), "lo": ms.agg.min("v")}),
}


def _instance(spec: Any, state: dict | None = None) -> Any:
    op = spec.instantiate()
    op.open(OperatorContext("op", [SCHEMA], spec.output_schemas([SCHEMA], "op"), []))
    if state is not None:
        op.restore(state)
    return op


def _batch(rng: np.random.Generator, t0: int, n: int, keys: int) -> tuple[ms.Batch, int]:
    t = t0 + np.sort(rng.integers(0, 400_000_000, n)).astype(np.int64)
    batch = ms.Batch({"t": t, "k": rng.integers(0, keys, n).astype(np.int64), "v": rng.standard_normal(n)},
                     t - 300_000_000)
    return batch, int(t[-1]) if n else t0


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return bool(a == b)


def _rows(emitted: list) -> list:
    return [(port, {c: batch[c].tolist() for c in batch.names}) for port, batch in emitted]


# a round: batches processed before it (records, distinct keys: more keys than before grow the arrays), then a
# pre-copy round of the live arrays or not
rounds = st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 1500)), max_size=3),
                            st.booleans()), min_size=1, max_size=5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SPECS)), rounds=rounds, seed=st.integers(0, 2**32 - 1))
def test_a_keyed_operators_state_arrives_whole_after_batches_between_tracked_rounds(kind, rounds, seed):
    rng = np.random.default_rng(seed)
    spec = SPECS[kind]()
    op = _instance(spec)
    t = 0
    first, t = _batch(rng, t, 3000, 1200)  # enough keys that the state travels out of band (and is tracked)
    op.process(0, first)
    base, have = None, []
    for batches, precopy in [([], True), *rounds]:
        for n, keys in batches:
            batch, t = _batch(rng, t, n, keys)
            op.process(0, batch)
            op.on_watermark(t - 300_000_000)
        if precopy:
            made = sx.live_delta(base, sx.pack(op.live_snapshot(), op.dirty_trackers()))
            assert made is not None
            delta, base = made
            have = sx.apply(have, sx.decode([bytes(memoryview(f)) for f in sx.encode("x", 0, False, delta)])[1])
    packed = sx.pack(op.snapshot(), op.dirty_trackers())
    assert any(track is not None for track in packed.tracks)
    delta, base = sx.diff(base, packed)
    have = sx.apply(have, sx.decode([bytes(memoryview(f)) for f in sx.encode("x", 0, True, delta)])[1])
    moved = _instance(spec, sx.unpack(delta.skeleton, have))
    assert _same(moved.snapshot(), op.snapshot())
    batch, t = _batch(rng, t, 500, 1500)
    assert _rows(moved.process(0, batch)) == _rows(op.process(0, batch))
    assert _rows(moved.close()) == _rows(op.close())


def test_a_final_round_after_tracked_rounds_reads_only_the_keys_written():
    """A stateful map's 100,000 keys of 128 bytes (12.8 MB): after the first round, a batch that writes 50 keys
    makes a final round of those keys' chunks, not of the state."""
    spec = SPECS["stateful_map"]()
    op = _instance(spec)
    keys = np.arange(100_000, dtype=np.int64)
    op.process(0, ms.Batch({"t": np.zeros(len(keys), np.int64), "k": keys, "v": np.ones(len(keys))}))
    delta, base = sx.diff(None, sx.pack(op.live_snapshot(), op.dirty_trackers()))
    assert delta.nbytes > 100_000 * 128
    few = keys[::2000]
    op.process(0, ms.Batch({"t": np.ones(len(few), np.int64), "k": few, "v": np.full(len(few), 2.0)}))
    delta, _ = sx.diff(base, sx.pack(op.snapshot(), op.dirty_trackers()))
    state_part = [p for p in delta.parts if p.data.nbytes and p.chunks is not None]
    assert state_part and sum(p.chunks.size for p in state_part) <= 2 * len(few)
    assert delta.nbytes < 64 * 1024
