"""The numba kernels are compiled once: a second process loads them from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # two fresh processes, each compiling the kernels from a cold cache

SCRIPT = textwrap.dedent("""
    import json
    import microstream as ms
    from microstream.operators.kernels import windows as K, keys

    p = ms.Pipeline("cache")
    out = ms.sinks.collect()
    p.synthetic(count=5000, sensors=10).filter(lambda b: b["value"] > 0).key_by("sensor").window(
        ms.tumbling(seconds=1)).aggregate(n=ms.agg.count(), m=ms.agg.mean("value")).sink(out)
    p.run()
    kernels = [K.ring_kernel(True, False, False), keys._intern_ints]
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    print(json.dumps({"misses": misses, "hits": hits, "windows": len(out)}))
""")


def _run(cache_dir) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                         timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_run_does_not_recompile(tmp_path):
    first = _run(tmp_path)
    second = _run(tmp_path)
    assert first["misses"] > 0  # a cold cache compiles
    assert second["misses"] == 0 and second["hits"] >= 2
    assert first["windows"] == second["windows"] > 0
