"""`len(batch)` is the number of rows, as for a table; the mapping's views still count columns."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import microstream as ms
from microstream.core.batch import Batch


def test_len_is_rows_and_follows_filters():
    b = Batch({"k": np.arange(5), "v": np.linspace(0, 1, 5), "s": np.array(list("abcde"))})
    assert len(b) == 5 == b.num_rows and b.names == ["k", "v", "s"]
    kept = b.filter(b["k"] % 2 == 0)
    assert len(kept) == 3 and bool(kept) and not b.filter(np.zeros(5, bool))
    assert len(Batch({"v": np.empty(0)})) == 0


def test_it_is_still_a_mapping_of_columns():
    b = Batch({"k": np.arange(1000), "v": np.ones(1000)}).filter(np.arange(1000) < 10)
    assert len(b.keys()) == len(b.items()) == len(b.values()) == 2
    assert list(b) == list(b.keys()) == ["k", "v"] and "v" in b and "w" not in b
    d = dict(b)
    assert list(d) == ["k", "v"] and len(d["v"]) == 10
    assert {**b}.keys() == d.keys() and [len(v) for v in b.values()] == [10, 10]


def test_user_functions_see_rows():
    p = ms.Pipeline("rows")
    out = ms.sinks.collect()
    sizes: list[int] = []
    src = p.from_iterable([{"v": float(i)} for i in range(7)], batch_size=3)
    src.map(lambda b: {"n": np.full(len(b), len(b))}).sink(out)
    src.sink(ms.sinks.callback(lambda b: sizes.append(len(b))))
    p.run()
    assert out.batch()["n"].tolist() == [3, 3, 3, 3, 3, 3, 1] and sizes == [3, 3, 1]


def _mixed(n: int = 2000, seed: int = 1) -> Batch:
    rng = np.random.default_rng(seed)
    panes = np.array(["on_time", "late_update", "final"])[rng.integers(0, 3, n)]
    return Batch({"k": rng.integers(0, 50, n), "pane": panes, "v": rng.random(n)}, np.arange(n, dtype=np.int64) * 7)


def test_split_gives_each_part_its_records_in_order_compacted_as_filter_and_compact_would():
    rng = np.random.default_rng(2)
    for batch in (_mixed(), _mixed().filter(rng.random(2000) < 0.6), Batch({"x": np.arange(10)})):
        for n in (1, 2, 3, 300):
            which = rng.integers(0, n, batch.num_rows)
            parts = batch.split(which, n)
            assert len(parts) == n
            for i, part in enumerate(parts):
                expected = batch.filter(which == i).compact()
                assert part.mask is None and part.num_rows == expected.num_rows
                for name in batch.names:
                    assert part[name].dtype == expected[name].dtype and np.array_equal(part[name], expected[name])
                    assert part[name].flags.c_contiguous
                assert (part.wm is None and expected.wm is None) or np.array_equal(part.wm, expected.wm)
    with pytest.raises(ValueError, match="one part number per record"):
        _mixed().split(np.zeros(3, dtype=np.int64), 2)


def test_a_pickled_batch_is_its_selected_records_with_few_distinct_texts_as_codes():
    batch = _mixed().filter(np.arange(2000) % 3 != 0)
    raw = pickle.dumps(({n: batch[n] for n in batch.names}, batch.wm))
    data = pickle.dumps(batch)
    back = pickle.loads(data)
    assert back.mask is None and back.num_rows == batch.num_rows and back.names == batch.names
    for name in batch.names:
        assert back[name].dtype == batch[name].dtype and np.array_equal(back[name], batch[name])
    assert np.array_equal(back.wm, batch.wm)
    # 'pane' (U11: 44 bytes a row) travels as one byte a row
    assert len(data) < len(raw) - 40 * batch.num_rows
    many = Batch({"name": np.array([f"sensor-{i}" for i in range(1000)])})  # many distinct values: as they are
    assert np.array_equal(pickle.loads(pickle.dumps(many))["name"], many["name"])
    assert pickle.loads(pickle.dumps(Batch({}, np.arange(4)))).num_rows == 4
