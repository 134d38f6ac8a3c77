"""Key interning (`KeyIndex`): dense slots in first-seen order, whatever range the integer keys are in."""

from __future__ import annotations

import numpy as np

from microstream.operators.kernels.keys import _TABLE_LIMIT, KeyIndex


def _reference(batches, masks):
    """The slots a plain dict gives: first-seen order over the unmasked keys, -1 where masked."""
    seen: dict[int, int] = {}
    out = []
    for keys, mask in zip(batches, masks, strict=True):
        slots = []
        for i, k in enumerate(keys.tolist()):
            if mask is not None and not mask[i]:
                slots.append(-1)
                continue
            slots.append(seen.setdefault(k, len(seen)))
        out.append(np.array(slots, dtype=np.int64))
    return out


def _check(batches, masks=None):
    masks = masks or [None] * len(batches)
    index = KeyIndex(np.dtype(np.int64))
    got = [index.slots(k, m) for k, m in zip(batches, masks, strict=True)]
    for g, want in zip(got, _reference(batches, masks), strict=True):
        assert np.array_equal(g, want)
    for keys, slots in zip(batches, got, strict=True):
        kept = slots >= 0
        assert np.array_equal(index.keys_of(slots[kept]), keys[kept])
    return index


def test_small_keys_never_make_the_dict():
    rng = np.random.default_rng(1)
    index = _check([rng.integers(0, 1000, 5000), rng.integers(0, 5000, 5000)])  # the second grows the table
    assert index._other is None


def test_keys_outside_the_table_switch_to_the_dict_mid_batch():
    rng = np.random.default_rng(2)
    first = rng.integers(0, 100, 1000)
    mixed = rng.integers(0, 100, 1000)
    mixed[[10, 500, 700]] = [-5, _TABLE_LIMIT, 2**40]  # outside [0, limit): the dict from record 10 on
    later = np.concatenate([rng.integers(0, 3000, 500), [-5, 2**40, -7]])
    index = _check([first, mixed, later])
    assert index._other is not None


def test_masked_records_get_no_slot():
    rng = np.random.default_rng(3)
    keys = [rng.integers(-50, 50, 2000), rng.integers(0, 2000, 2000)]
    masks = [rng.random(2000) < 0.5, rng.random(2000) < 0.5]
    masks[0][keys[0] < 0] = False  # every negative key masked: still no dict needed for the first batch
    _check(keys, masks)


def test_snapshot_and_restore_keep_the_slots():
    keys = np.array([7, -3, 2**40, 7, 5, -3], dtype=np.int64)
    index = KeyIndex(np.dtype(np.int64))
    before = index.slots(keys)
    restored = KeyIndex(np.dtype(np.int64))
    restored.restore(index.snapshot())
    assert np.array_equal(restored.slots(keys), before)
    assert np.array_equal(restored.slots(np.array([9, 2**41])), [4, 5])
