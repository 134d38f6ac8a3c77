"""Columnar batches: the only way records travel through microstream.

A `Batch` is a set of equal-length 1-D numpy arrays, one per column, plus the per-record watermark
(`wm`, int64 ns) that was in force when each record left its source. Carrying the watermark per
record (rather than per batch) makes every lateness decision independent of how records were cut
into batches.

A filter does not copy: it narrows the batch's selection mask, and columns are compacted only
when someone reads them. Numba kernels read the uncompacted base arrays plus the mask instead.

A batch is a mapping from column name to array, but `len(batch)` is its number of *rows* (as for a table or a
DataFrame), so a batch with no rows is false; `batch.names` (or `len(batch.keys())`) counts the columns.

>>> b = Batch({"room": np.array(["a", "b", "c"]), "co2": np.array([400.0, 900.0, 1250.0])})
>>> len(b), b.names, len(b.keys()), bool(b.filter(b["co2"] > 2000))
(3, ['room', 'co2'], 2, False)
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any

import numpy as np

from .errors import suggest


class Batch(Mapping[str, np.ndarray]):
    """Named columns of equal length, an optional selection mask, and per-record watermarks."""

    __slots__ = ("_base", "_mask", "_wm", "_cache", "_len")

    def __init__(self, columns: Mapping[str, np.ndarray], wm: np.ndarray | None = None,
                 mask: np.ndarray | None = None) -> None:
        base = {name: np.asarray(col) for name, col in columns.items()}
        n = len(next(iter(base.values()))) if base else (len(wm) if wm is not None else 0)
        for name, col in base.items():
            if col.ndim != 1 or len(col) != n:
                raise ValueError(f"column '{name}' has shape {col.shape}; every column must be 1-D of length {n}")
        if mask is not None and (mask.dtype != np.bool_ or len(mask) != n):
            raise ValueError("mask must be a boolean array as long as the columns")
        if wm is not None and len(wm) != n:
            raise ValueError("wm must be as long as the columns")
        self._base = base
        self._mask = mask
        self._wm = wm
        self._cache: dict[str, np.ndarray] = {}
        self._len = n if mask is None else int(np.count_nonzero(mask))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its selected records (no mask, no cache), a text column with few distinct values as those
        values and one small code per record: a window's `pane` column is 44 bytes a row as U11, 1 byte so. What
        a cluster's `collect` sinks gather travels to the client pickled, through the agent and the coordinator."""
        return _unpickle_batch, ({n: _packed(self[n]) for n in self._base}, self.wm, self._len)

    # -- Mapping protocol: what user functions see ---------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        col = self._cache.get(name)
        if col is not None:
            return col
        try:
            base = self._base[name]
        except KeyError:
            close = suggest(str(name), list(self._base))
            hint = f"; did you mean '{close}'?" if close else ""
            raise KeyError(f"no column '{name}' in batch with columns {list(self._base)}{hint}") from None
        col = base if self._mask is None else base[self._mask]
        self._cache[name] = col
        return col

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        """The number of rows (selected records), not of columns: see `names` for those."""
        return self._len

    # the views count columns, as views of a mapping do (their len would otherwise be the rows')
    def keys(self) -> KeysView[str]:
        return _Columns(self)

    def items(self) -> ItemsView[str, np.ndarray]:
        return _ColumnItems(self)

    def values(self) -> ValuesView[np.ndarray]:
        return _ColumnValues(self)

    def __contains__(self, name: object) -> bool:
        return name in self._base

    def __repr__(self) -> str:
        return f"Batch({self.num_rows} rows: {', '.join(self._base)})"

    @property
    def num_rows(self) -> int:
        return self._len

    @property
    def names(self) -> list[str]:
        return list(self._base)

    @property
    def wm(self) -> np.ndarray | None:
        """Per-record watermark of the selected records (int64 ns), or None without event time."""
        if self._wm is None or self._mask is None:
            return self._wm
        return self._wm[self._mask]

    # -- the uncompacted view, for kernels -------------------------------------------------------
    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    def base(self, name: str) -> np.ndarray:
        return self._base[name]

    @property
    def base_wm(self) -> np.ndarray | None:
        return self._wm

    @property
    def base_rows(self) -> int:
        return len(self._wm) if self._wm is not None else (
            len(next(iter(self._base.values()))) if self._base else 0)

    def end_watermark(self) -> int | None:
        """The watermark after the whole batch (including records a filter removed)."""
        if self._wm is None or len(self._wm) == 0:
            return None
        return int(self._wm[-1])

    # -- transformations -------------------------------------------------------------------------
    def filter(self, keep: np.ndarray) -> Batch:
        """Keep the records where `keep` is true, without copying any column."""
        keep = np.asarray(keep)
        if keep.dtype != np.bool_ or keep.shape != (self._len,):
            raise ValueError(f"a filter must return a boolean array of length {self._len}, "
                             f"got {keep.dtype} {keep.shape}")
        if self._mask is None:
            mask = keep
        else:
            mask = np.zeros_like(self._mask)
            mask[self._mask] = keep
        out = Batch.__new__(Batch)
        out._base, out._mask, out._wm, out._cache = self._base, mask, self._wm, {}
        out._len = int(np.count_nonzero(mask))
        return out

    def compact(self) -> Batch:
        """The same records with no selection mask (columns copied once)."""
        if self._mask is None:
            return self
        return Batch({n: self[n] for n in self._base}, self.wm)

    def split(self, which: np.ndarray, n: int) -> list[Batch]:
        """The selected records cut into `n` batches by `which` (one int in [0, n) per selected record), each in
        the records' order and without a mask: every column (and the wm) is gathered once, grouped by part, and
        each part is a contiguous slice of it. The same records as ``[self.filter(which == i).compact() for i]``
        at a fraction of the copies, for batches that leave the process."""
        which = np.asarray(which)
        if which.shape != (self._len,):
            raise ValueError(f"split needs one part number per record ({self._len}), got shape {which.shape}")
        # a stable radix sort on small ints groups the records by part and keeps their order within each
        small = np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.intp
        order = np.argsort(which.astype(small, copy=False), kind="stable")
        index = order if self._mask is None else np.flatnonzero(self._mask)[order]
        cols = {name: col.take(index) for name, col in self._base.items()}
        wm = None if self._wm is None else self._wm.take(index)
        bounds = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(which, minlength=n)[:n], out=bounds[1:])
        parts = []
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            part = Batch.__new__(Batch)
            part._base, part._mask, part._cache, part._len = {k: c[lo:hi] for k, c in cols.items()}, None, {}, hi - lo
            part._wm = None if wm is None else wm[lo:hi]
            parts.append(part)
        return parts

    def take(self, index: np.ndarray) -> Batch:
        cols = {n: self[n][index] for n in self._base}
        wm = self.wm
        return Batch(cols, None if wm is None else wm[index])

    def select(self, names: Iterable[str]) -> Batch:
        return Batch({n: self[n] for n in names}, self.wm)

    def with_columns(self, columns: Mapping[str, Any]) -> Batch:
        cols = {n: self[n] for n in self._base}
        for name, col in columns.items():
            cols[name] = _as_column(col, self._len, name)
        return Batch(cols, self.wm)

    def replace_columns(self, columns: Mapping[str, Any]) -> Batch:
        return Batch({n: _as_column(c, self._len, n) for n, c in columns.items()}, self.wm)

    def with_wm(self, wm: np.ndarray | None) -> Batch:
        return Batch({n: self[n] for n in self._base}, wm)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {n: self[n] for n in self._base}

    def to_records(self) -> list[dict[str, Any]]:
        cols = {n: self[n].tolist() for n in self._base}
        return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            raise ValueError("nothing to concatenate")
        if len(batches) == 1:
            return batches[0]
        names = batches[0].names
        cols = {n: np.concatenate([b[n] for b in batches]) for n in names}
        wms = [b.wm for b in batches if b.wm is not None]
        wm = np.concatenate(wms) if len(wms) == len(batches) else None
        return Batch(cols, wm)

    @staticmethod
    def from_records(records: Iterable[Mapping[str, Any]], dtypes: Mapping[str, Any] | None = None) -> Batch:
        rows = list(records)
        if not rows:
            return Batch({n: np.empty(0, dtype=d) for n, d in (dtypes or {}).items()})
        names = list(rows[0])
        cols = {}
        for n in names:
            values = [r[n] for r in rows]
            dtype = (dtypes or {}).get(n)
            cols[n] = np.asarray(values, dtype=dtype) if dtype is not None else _infer_array(values)
        return Batch(cols)


class _Columns(KeysView[str]):
    def __len__(self) -> int:
        return len(self._mapping._base)  # type: ignore[attr-defined]


class _ColumnItems(ItemsView[str, np.ndarray]):
    def __len__(self) -> int:
        return len(self._mapping._base)  # type: ignore[attr-defined]


class _ColumnValues(ValuesView[np.ndarray]):
    def __len__(self) -> int:
        return len(self._mapping._base)  # type: ignore[attr-defined]


_DICT_MIN_ROWS = 256  # shorter text columns are pickled as they are


def _packed(col: np.ndarray) -> Any:
    """A column as pickled: a fixed-width text column (numpy U or S) of at most 256 distinct values as
    ("dict", values, uint8 codes), any other column as it is."""
    if col.dtype.kind not in "US" or len(col) < _DICT_MIN_ROWS or col.dtype.itemsize <= 1:
        return col
    if len(np.unique(col[:_DICT_MIN_ROWS])) > 64:  # looks like many distinct values: not worth sorting them all
        return col
    values, codes = np.unique(col, return_inverse=True)
    if len(values) > 256:
        return col
    return ("dict", values, codes.astype(np.uint8))


def _unpacked(col: Any) -> np.ndarray:
    if isinstance(col, tuple):
        _, values, codes = col
        return np.asarray(values)[codes]
    return np.asarray(col)


def _unpickle_batch(columns: dict[str, Any], wm: np.ndarray | None, n: int) -> Batch:
    batch = Batch.__new__(Batch)
    batch._base, batch._mask, batch._wm, batch._cache, batch._len = (
        {name: _unpacked(col) for name, col in columns.items()}, None, wm, {}, n)
    return batch


def _infer_array(values: list[Any]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "biufU":
        return arr
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _as_column(col: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(col)
    if arr.ndim == 0:
        return np.full(n, arr)
    if arr.shape != (n,):
        raise ValueError(f"column '{name}' has shape {arr.shape}, expected ({n},)")
    return arr
