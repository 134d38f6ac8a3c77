"""microstream on arm64, under emulation (qemu-user-static, a debootstrapped Debian arm64 root; tests/arm64/lane.py):
the core tests pass there as they do here, and after `microstream warmup` the examples compile nothing and give the
results they give here."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.arm64 import lane

pytestmark = [pytest.mark.arm64, pytest.mark.slow]

# tests that need no cluster, QEMU or MQTT broker (test_sysdeps drives the host's apt-get: not about arm64)
CORE = ["tests/core/test_batch.py", "tests/core/test_durations.py", "tests/formats", "tests/operators"]
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
    warm = root.run(["microstream", "warmup", "--json"], timeout=5000)
    assert warm.returncode == 0, warm.stderr[-3000:]
    groups = json.loads(warm.stdout)
    assert [g["group"] for g in groups] == ["csv", "jsonl", "windows", "sessions", "joins_state"]
    assert sum(g["compiled"] for g in groups) > 0  # it did compile: the cache was cold
    for example, outputs in EXAMPLES.items():
        script = f"examples/sensors/{example}.py"
        run = root.run(["python", "/src/tests/arm64/run_counted.py", f"/src/{script}"], cwd=f"/tmp/{example}",
                       timeout=1800)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.last_json()["compiled"] == [], f"{example} compiled after warmup: {run.last_json()['compiled']}"
        here = tmp_path / example
        here.mkdir()
        native = subprocess.run([sys.executable, str(lane.CHECKOUT / script)], cwd=here, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "nc")})
        assert native.returncode == 0, native.stderr[-3000:]
        for name in outputs:
            arm = _records(root.root / "tmp" / example / "out" / name)
            x86 = _records(here / "out" / name)
            assert len(arm) == len(x86)
            assert x86 or name != outputs[0]  # the main output is not empty
            for ra, rx in zip(arm, x86, strict=True):
                assert ra.keys() == rx.keys()
                assert all(_same(ra[k], rx[k]) for k in ra), (name, ra, rx)


@pytest.mark.timeout(5400)  # the subset takes tens of minutes under emulation (after the test above warmed the cache)
def test_core_tests_pass_on_arm64_as_they_do_here(root):
    done = root.run(["python", "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=",
                     "-o", "timeout=1500", *CORE], cwd="/src", timeout=5000)
    failed = _failed(done.stdout)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout
    if failed:  # a test failing on x86 too is work in progress elsewhere, not an arm64 difference
        here = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o",
                               "addopts=", *sorted(failed)], cwd=lane.CHECKOUT, capture_output=True, text=True,
                              timeout=1500)
        assert failed <= _failed(here.stdout), f"fail on arm64 only: {sorted(failed - _failed(here.stdout))}\n" \
                                               f"{done.stdout[-4000:]}"
