"""`microstream warmup`: one process per group fills numba's cache; a later process compiles nothing of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # fresh processes compiling from a cold cache

SCRIPT = textwrap.dedent("""
    import json
    import microstream as ms
    from microstream.warmup import compiles

    with compiles() as done:
        p = ms.Pipeline("after")
        out = ms.sinks.collect()
        src = p.synthetic(count=2000, sensors=8, batch_size=300)
        src.key_by("sensor").stateful_map(ms.state.delta, "value", out="d", state_size=2).sink(out)
        negative = src.with_columns(device=lambda b: b["sensor"] - 4)  # keys interned through the typed dict
        negative.key_by("device").stateful_map(ms.state.delta, "value", out="d", state_size=2).sink(
            ms.sinks.collect())
        p.run()
    print(json.dumps({"compiled": done, "records": len(out)}))
""")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli.main", "warmup", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def test_warmup_fills_the_cache_and_says_what_it_did(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    # the placement group: its kernels compile in ~15 s here, the JSON parser's in ~80 s (a group is a group)
    first = _cli("--group", "placement", "--json", env=env)
    assert first.returncode == 0, first.stderr
    (group,) = json.loads(first.stdout)
    assert group["group"] == "placement" and group["compiled"] > 0 and group["peak_rss_mb"] > 50
    assert "[1/1] placement:" in first.stderr and "kernels compiled" in first.stderr  # progress goes to stderr
    again = json.loads(_cli("--group", "placement", "--json", env=env).stdout)
    assert again[0]["compiled"] == 0  # all loaded from the cache


def test_after_warmup_a_built_in_state_step_compiles_nothing(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    cold_env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cold")}  # its own: it fills the cache it uses
    cold = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], env=cold_env, capture_output=True, text=True,
                                     timeout=600, check=True).stdout.splitlines()[-1])
    assert cold["compiled"]  # a cold cache compiles the step's loop
    assert _cli("--group", "joins_state", env=env).returncode == 0
    warm = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                                     timeout=600, check=True).stdout.splitlines()[-1])
    assert warm["compiled"] == [] and warm["records"] == cold["records"] == 2000


MOVE = textwrap.dedent("""
    import json
    import numpy as np
    from microstream.operators.kernels.dirty import DirtyRows
    from microstream.runtime import statexfer as sx
    from microstream.warmup import compiles

    with compiles() as done:  # a move's rounds on a state of other shapes and types than the warm-up's
        counts, sums = np.zeros((5000, 3), dtype=np.int64), np.zeros((5000, 3))
        rows = DirtyRows()
        rows.track(5000, counts, sums)
        delta, base = sx.diff(None, sx.pack({"w": {"n": counts, "s": sums}}, [rows]))
        have = sx.apply([], delta)
        for k in (11, 4000):
            counts[k] += 1
            sums[k] += 2.5
            rows.mark(np.array([k], dtype=np.int64))
            made = sx.live_delta(base, sx.pack({"w": {"n": counts, "s": sums}}, [rows]))
            delta, base = made
            have = sx.apply(have, delta)
        delta, _ = sx.diff(base, sx.pack({"w": {"n": counts, "s": sums}}, [rows]))
        got = sx.unpack(delta.skeleton, sx.apply(have, delta))["w"]
    print(json.dumps({"compiled": done, "same": bool((got["n"] == counts).all() and (got["s"] == sums).all())}))
""")


def test_after_warmup_a_move_compiles_nothing(tmp_path):
    """The fork server's template runs the same warm-up (`statexfer.warm`), so a first move does not compile
    inside its barrier."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def move(cache: str) -> dict:
        run_env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / cache)}
        return json.loads(subprocess.run([sys.executable, "-c", MOVE], env=run_env, capture_output=True, text=True,
                                         timeout=600, check=True).stdout.splitlines()[-1])

    cold = move("cold")  # its own cache: it fills the cache it uses
    assert cold["compiled"] and cold["same"]
    assert _cli("--group", "moves", env=env).returncode == 0
    warm = move("numba")
    assert warm["compiled"] == [] and warm["same"]


def test_an_unknown_group_is_a_usage_error():
    done = _cli("--group", "nope", env=dict(os.environ))
    assert done.returncode == 2 and "invalid choice" in done.stderr
