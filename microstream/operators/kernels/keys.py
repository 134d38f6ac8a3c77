"""Key interning: map key values (ints or strings) to dense slot numbers for numba state arrays.

Per-key state lives in arrays indexed by slot. Small non-negative integer keys (sensor ids) go
through a direct lookup table; other integers through a numba typed dict; strings are interned
per *distinct* value in a batch (np.unique), never per record.

The typed dict (and the kernel that uses it) is loaded only once a key outside the table's range turns up:
sensor ids never need it, and each kernel loaded from numba's cache is a few ms of a fresh process's first job.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.typed import Dict

_TABLE_LIMIT = 1 << 20  # keys below this use a direct table (8 MB at most)


@numba.njit(cache=True)
def _int_dict():  # pragma: no cover - compiled
    """An empty int64 -> int64 typed dict. Made in a cached kernel: `Dict.empty` called from Python compiles its
    constructor afresh in every process (0.17-2 s, most of a short run's fixed cost); this loads from the cache."""
    return Dict.empty(key_type=types.int64, value_type=types.int64)


NEEDS_DICT = -2  # _intern_ints' answer, with no dict, at a key outside the table's range: make one and resume


@numba.njit(cache=True)
def _intern_ints(start, keys, mask, has_mask, table, limit, other, key_of_slot, n_slots, slots_out):
    """Assign slots to keys in first-seen order. Returns (next record, slots so far, key needing a
    bigger table or NEEDS_DICT or -1). `other` is the typed dict for keys outside [0, limit), or None until one
    is needed: numba prunes the dict's branch from that specialisation, and a process with small keys only
    loads that one from the cache."""
    for i in range(start, len(keys)):
        if has_mask and not mask[i]:
            slots_out[i] = -1
            continue
        k = keys[i]
        if 0 <= k < len(table):
            s = table[k]
            if s < 0:
                s = n_slots
                table[k] = s
                key_of_slot[s] = k
                n_slots += 1
        elif 0 <= k < limit:
            return i, n_slots, k
        elif other is None:
            return i, n_slots, NEEDS_DICT
        else:
            s = other.get(k, -1)
            if s < 0:
                s = n_slots
                other[k] = s
                key_of_slot[s] = k
                n_slots += 1
        slots_out[i] = s
    return len(keys), n_slots, -1


class KeyIndex:
    """Dense slots for the keys of one keyed operator; `keys_of(slots)` maps back."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.is_int = self.dtype.kind in "iub"
        self.n_slots = 0
        if self.is_int:
            self._table = np.full(1024, -1, dtype=np.int64)
            self._other: Any = None  # the typed dict for keys outside [0, _TABLE_LIMIT), made when one turns up
            self._key_of_slot = np.empty(1024, dtype=np.int64)
        else:
            self._str_slots: dict[object, int] = {}
            self._str_keys: list[object] = []

    def slots(self, keys: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Slot of every key (-1 where `mask` is false)."""
        if self.is_int:
            return self._int_slots(keys.astype(np.int64, copy=False), mask)
        return self._obj_slots(keys, mask)

    def _int_slots(self, keys: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64)
        need = self.n_slots + len(keys)
        if need > len(self._key_of_slot):
            grown = np.empty(max(need, 2 * len(self._key_of_slot)), dtype=np.int64)
            grown[: self.n_slots] = self._key_of_slot[: self.n_slots]
            self._key_of_slot = grown
        out = np.empty(len(keys), dtype=np.int64)
        has_mask = mask is not None
        m = mask if has_mask else np.empty(0, dtype=np.bool_)
        i = 0
        while i < len(keys):
            i, self.n_slots, big = _intern_ints(i, keys, m, has_mask, self._table, _TABLE_LIMIT, self._other,
                                                self._key_of_slot, self.n_slots, out)
            if big == NEEDS_DICT:
                self._other = _int_dict()
            elif big >= 0:
                grown = np.full(max(big + 1, 2 * len(self._table)), -1, dtype=np.int64)
                grown[: len(self._table)] = self._table
                self._table = grown
        return out

    def _obj_slots(self, keys: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        out = np.full(len(keys), -1, dtype=np.int64)
        sel = keys if mask is None else keys[mask]
        if len(sel) == 0:
            return out
        uniq, inverse = np.unique(sel, return_inverse=True)
        uniq_slots = np.empty(len(uniq), dtype=np.int64)
        for j, value in enumerate(uniq.tolist()):  # once per distinct key in the batch
            slot = self._str_slots.get(value)
            if slot is None:
                slot = self.n_slots
                self._str_slots[value] = slot
                self._str_keys.append(value)
                self.n_slots += 1
            uniq_slots[j] = slot
        if mask is None:
            out[:] = uniq_slots[inverse]
        else:
            out[mask] = uniq_slots[inverse]
        return out

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        if self.is_int:
            return self._key_of_slot[slots].astype(self.dtype)
        return np.asarray(self._str_keys, dtype=self.dtype if self.dtype.kind == "U" else object)[slots] \
            if len(slots) else np.empty(0, dtype=self.dtype)

    # -- state snapshot (for save/restore and migration) -----------------------------------------
    def snapshot(self) -> dict:
        if self.is_int:
            return {"kind": "int", "keys": self._key_of_slot[: self.n_slots].copy()}
        return {"kind": "obj", "keys": list(self._str_keys)}

    def restore(self, state: dict) -> None:
        self.n_slots = 0
        if self.is_int:
            self._table = np.full(1024, -1, dtype=np.int64)
            self._other = None
            self._key_of_slot = np.empty(1024, dtype=np.int64)
            self._int_slots(np.asarray(state["keys"], dtype=np.int64), None)
        else:
            self._str_slots, self._str_keys = {}, []
            for k in state["keys"]:
                self._str_slots[k] = len(self._str_keys)
                self._str_keys.append(k)
            self.n_slots = len(self._str_keys)


@numba.njit(cache=True)
def _mix64(x, out):
    """splitmix64 finaliser: a well-spread uint64 from each int64, identical in every process."""
    for i in range(len(x)):
        z = np.uint64(x[i]) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _fnv_codepoints(cp, out):
    """FNV-1a over each row of UTF-32 code points (trailing zeros are padding)."""
    for i in range(cp.shape[0]):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(cp.shape[1]):
            c = cp[i, j]
            if c == 0:
                break
            h = (h ^ np.uint64(c)) * np.uint64(0x100000001B3)
        out[i] = h


def stable_hash(keys: np.ndarray) -> np.ndarray:
    """A uint64 hash of every key that is the same on every host (Python's hash() is salted per process)."""
    keys = np.asarray(keys)
    out = np.empty(len(keys), dtype=np.uint64)
    if keys.dtype.kind in "iub":
        _mix64(keys.astype(np.int64, copy=False), out)
    elif keys.dtype.kind == "U":
        width = max(keys.dtype.itemsize // 4, 1)
        cp = np.ascontiguousarray(keys).view(np.uint32).reshape(len(keys), width) if len(keys) else \
            np.empty((0, 1), np.uint32)
        _fnv_codepoints(cp, out)
    else:
        _fnv_codepoints(np.asarray(keys, dtype=str).view(np.uint32).reshape(len(keys), -1), out)
    return out
