"""`len(batch)` is the number of rows, as for a table; the mapping's views still count columns."""

from __future__ import annotations

import numpy as np

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
