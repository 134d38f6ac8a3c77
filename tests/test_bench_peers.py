"""bench/peers.py: the peers' window logic (streamz; Bytewax with 1 and 2 workers) gives exactly microstream's
aggregates on a small input whose windows cut the stream mid-way (first and last windows partial).

Slow: it builds the peers' virtualenv (pip from PyPI) unless it is cached; skipped, saying why, if it cannot be
built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def peer_python() -> Path:
    import peers

    python, info = peers.peers_venv(log=lambda line: print(line, file=sys.stderr))
    if python is None:
        pytest.skip(f"PEERS VENV COULD NOT BE BUILT, streamz/Bytewax not checked: {info['error']}")
    return python


def test_peers_windows_equal_microstream(peer_python: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--check", "--records", "23000", "--repeat", "1", "--no-cluster",
         "--start", str(1_700_000_003_500_000_000)],
        capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sums = report["checksums"]
    assert set(sums) >= {"ms_from_arrays", "ms_from_iterable", "streamz", "bytewax_1", "bytewax_2", "python_loop"}
    assert all(v == sums["ms_from_arrays"] for v in sums.values()), sums
    # 23 s of event time from t = ...3.5 s: windows [0, 10) partial, 4 full, [40, 50) partial (1000 sensors each)
    assert report["windows"]["bytewax_2"] == 3000
    assert all(n == [0] for n in report["late"].values())


def test_peer_flows_see_window_boundaries(peer_python: Path, tmp_path: Path) -> None:
    """The peers put a record exactly on a boundary into the window it opens, as microstream does, and keep a
    sensor's two windows apart; their sums are the exact sequential ones."""
    import numpy as np
    from canonical import _canon, identical, run_python

    import microstream as ms

    t = np.array([9_999_999_999, 10_000_000_000, 10_000_000_001, 19_999_999_999, 20_000_000_000], np.int64) + 10**18
    cols = {"sensor": np.array([1, 1, 2, 1, 2], np.int64), "time": t, "value": np.array([0.1, 0.2, 0.3, 0.7, -0.5])}
    np.savez(tmp_path / "in.npz", **cols)
    expected = run_python(cols)
    p = ms.Pipeline("boundaries")
    out = ms.sinks.collect()
    (p.from_arrays(cols, time="time").key_by("sensor").window(ms.tumbling(seconds=10))
     .aggregate(n=ms.agg.count(), mean=ms.agg.mean("value"), min=ms.agg.min("value"), max=ms.agg.max("value"))
     .sink(out))
    p.run(verbose=False)
    b = out.batch()
    assert identical(_canon(b["sensor"], b["window_start"], b["n"], b["mean"], b["min"], b["max"]), expected)
    for script in ("streamz_flow.py", "bytewax_flow.py"):
        name = script.split("_")[0]
        subprocess.run([str(peer_python), str(BENCH / "peers" / script), str(tmp_path / "in.npz"),
                        str(tmp_path / name)], check=True, capture_output=True, timeout=120)
        parts = [np.load(f) for f in sorted(tmp_path.glob(f"{name}*.npz"))]
        got = {k: np.concatenate([q[k] for q in parts]) for k in parts[0].files}
        assert got["late"].sum() == 0
        assert identical(_canon(got["sensor"], got["start"], got["n"], got["mean"], got["min"], got["max"]),
                         expected), (script, got)
        assert len(got["n"]) == 4  # sensor 1: [0, 10) and [10, 20); sensor 2: [10, 20) and [20, 30)
