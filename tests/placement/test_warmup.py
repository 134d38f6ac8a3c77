"""A coordinator compiles the placement annealer in the background, when a placement first wants it: on a fresh
install (an empty numba cache) a placement does not wait the 20-30 s that compiling takes, it searches without
annealing until the kernel is ready. Run in a fresh process with its own, empty numba cache, as a new coordinator
on a new machine would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = """
import json, time
import numpy as np
from microstream.placement import anneal
from microstream.placement.solvers import improve
from microstream.placement.synthetic import random_problem

anneal.compile_in_background()
assert not anneal.ready()
problem = random_problem(np.random.default_rng(7), 40, 10, pin_fraction=0.2)
found = improve(problem, time_limit=0.3).assign
ready_after_search = anneal.ready()
allowed = bool(problem.allowed[np.arange(problem.n_vnodes), found].all())
deadline = time.monotonic() + 240
while not anneal.ready() and time.monotonic() < deadline:
    time.sleep(0.1)  # polling a thread we started, with a deadline
ready = anneal.ready()
again = improve(problem, time_limit=0.3).assign
print(json.dumps({"ready_after_search": ready_after_search, "allowed": allowed, "ready": ready,
                  "again_allowed": bool(problem.allowed[np.arange(problem.n_vnodes), again].all())}))
"""


def test_a_search_does_not_wait_for_the_annealer_compiling_in_the_background(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=280)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["allowed"]                   # a valid placement, found while the kernel compiled
    assert not out["ready_after_search"]    # ... without waiting for it (compiling takes seconds, the search 0.3 s)
    assert out["ready"]                     # the kernel became ready on its thread
    assert out["again_allowed"]             # and a search with it anneals to a valid placement
