"""microstream on arm64, under emulation (qemu-user-static, a debootstrapped Debian arm64 root; tests/arm64/lane.py):
the core tests pass there as they do here, and after `microstream warmup` the examples compile nothing and give the
results they give here."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microstream.warmup import GROUPS
from tests.arm64 import lane

pytestmark = [pytest.mark.arm64, pytest.mark.slow]

# The core tests run on arm64: those of the code where the CPU architecture can show (byte-level parsing, float
# formatting and parsing, the window, join, state and alert kernels), without a cluster, QEMU or an MQTT broker. Under
# TCG they run 10-20x slower than here and every kernel the cache lacks compiles for minutes, so the subset leaves
# out what would take hours and is not about the architecture: the window property tests that compile hundreds of
# specialisations (test_window_panes, test_window_apply, test_quantiles and the three heaviest of test_windows: the
# window kernels also run on arm64 in the examples, compared with x86 above), processing-time windows (wall-clock
# behaviour, meaningless under emulation), duration options (argument checking) and test_sysdeps (the host's apt).
CORE = ["tests/core/test_batch.py", "tests/formats", "tests/operators/test_stateless.py",
        "tests/operators/test_stateful_map.py", "tests/operators/test_join.py", "tests/operators/test_alert.py",
        "tests/operators/test_windows.py"]
CORE_DESELECT = ["test_filtered_records_still_move_the_watermark", "test_many_keys_many_open_windows",
                 "test_count_only_aggregate"]
EXAMPLES = {"rooms": ["rooms.jsonl", "stuffy.csv", "dead_letters.jsonl"],
            "water_flow": ["water_hourly.csv", "water_anomalies.csv"]}


@pytest.fixture(scope="module")
def root():
    reason = lane.unavailable()
    if reason:
        pytest.skip(reason)
    with lane.lane() as chroot:
        yield chroot


def _failed(output: str) -> set[str]:
    return set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M))


def _records(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _same(a: object, b: object) -> bool:
    """Equal, numbers to 1e-9 relative (aarch64 code may fuse multiply-adds, rounding the last bit differently)."""
    try:
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return a == b
    return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.timeout(5400)  # a cold warmup compiles for many minutes under emulation
def test_after_warmup_the_examples_compile_nothing_and_match_x86(root, tmp_path):
    root.clear_numba_cache()
    load = list(os.getloadavg())  # recorded with the figures: the seconds depend on the machine's load
    warm = root.run(["microstream", "warmup", "--json"], timeout=5000)
    assert warm.returncode == 0, warm.stderr[-3000:]
    groups = json.loads(warm.stdout)
    assert [g["group"] for g in groups] == list(GROUPS)  # every group, in order (the root runs these sources)
    assert sum(g["compiled"] for g in groups) > 0  # it did compile: the cache was cold
    figures = {"load_average": {"start": load, "warmup_end": list(os.getloadavg())},
               "warmup": lane.warmup_figures(warm), "after_warmup": {}}
    lane.save_figures(root.source, figures, complete=False)  # kept for the record if what follows fails
    for example, outputs in EXAMPLES.items():
        script = f"examples/sensors/{example}.py"
        there = root.root / "tmp" / example  # the root's own /tmp: a fresh directory, no output of an earlier run
        shutil.rmtree(there, ignore_errors=True)
        there.mkdir(parents=True)
        run = root.run(["python", "/src/tests/arm64/run_counted.py", f"/src/{script}"], cwd=f"/tmp/{example}",
                       timeout=1800)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.last_json()["compiled"] == [], f"{example} compiled after warmup: {run.last_json()['compiled']}"
        figures["after_warmup"][example] = lane.counted_figures(run)  # type: ignore[index]
        here = tmp_path / example
        here.mkdir()
        native = subprocess.run([sys.executable, str(lane.CHECKOUT / script)], cwd=here, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "nc")})
        assert native.returncode == 0, native.stderr[-3000:]
        for name in outputs:
            arm = _records(there / "out" / name)
            x86 = _records(here / "out" / name)
            assert len(arm) == len(x86)
            assert x86 or name != outputs[0]  # the main output is not empty
            for ra, rx in zip(arm, x86, strict=True):
                assert ra.keys() == rx.keys()
                assert all(_same(ra[k], rx[k]) for k in ra), (name, ra, rx)
    lane.save_figures(root.source, figures, complete=True)  # bench/arm64.py records these rather than repeating them


@pytest.mark.timeout(5400)  # the subset takes tens of minutes under emulation
def test_core_tests_pass_on_arm64_as_they_do_here(root):
    # a numba cache of its own, empty (entries of an earlier install are stale anyway): the outcome depends on
    # nothing the other test did, and the two can run at the same time (`-k`), the warmup's counts unaffected
    cache = f"{lane.NUMBA_CACHE}-core"
    shutil.rmtree(root.root / cache.lstrip("/"), ignore_errors=True)
    done = root.run(["python", "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=",
                     "-o", "timeout=1500", "-k", " and ".join(f"not {t}" for t in CORE_DESELECT), *CORE],
                    cwd="/src", timeout=5000, NUMBA_CACHE_DIR=cache)
    failed = _failed(done.stdout)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout
    if failed:  # a test failing on x86 too is work in progress elsewhere, not an arm64 difference
        here = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o",
                               "addopts=", *sorted(failed)], cwd=lane.CHECKOUT, capture_output=True, text=True,
                              timeout=1500)
        assert failed <= _failed(here.stdout), f"fail on arm64 only: {sorted(failed - _failed(here.stdout))}\n" \
                                               f"{done.stdout[-4000:]}"
