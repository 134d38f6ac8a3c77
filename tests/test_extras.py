"""Optional extras: the core install is numpy/numba/pyzmq/cloudpickle/prometheus-client; paho-mqtt, qemu.qmp, pandas,
scipy and highspy are extras, never imported unless used, and a feature whose extra is missing says which to install."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("paho", "qemu", "pandas", "scipy", "highspy"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_core_install_and_the_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == {"numpy", "numba", "pyzmq", "cloudpickle", "prometheus-client"}
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    assert extras["mqtt"] == {"paho-mqtt"} and extras["microvm"] == {"qemu.qmp"} and extras["pandas"] == {"pandas"}
    assert extras["placement"] == {"scipy", "highspy"}
    # what make test and make demo install
    assert {"paho-mqtt", "qemu.qmp", "pandas", "scipy", "highspy", "pytest"} <= extras["test"]
    assert "'.[test]'" in (ROOT / "Makefile").read_text()


def test_without_the_extras_pipelines_run_and_the_features_that_need_one_name_it(tmp_path):
    script = BLOCK + f"""
import microstream as ms
from microstream.core.optional import MissingDependency
from microstream.cli.main import main

p = ms.Pipeline("core"); out = ms.sinks.collect()
p.from_iterable([{{"k": 1, "t": 0, "v": 1.0}}], time="t").key_by("k").window(ms.tumbling("1s")).aggregate(
    n=ms.agg.count()).sink(out)
p.run()
assert out.records()[0]["n"] == 1
for what, call in [("mqtt", lambda: ms.Pipeline("m").read_mqtt("a/+", schema={{"v": "float"}})),
                   ("pandas", lambda: ms.Pipeline("d").from_pandas(None)),
                   ("pandas", lambda: out.to_pandas())]:
    try:
        call()
    except MissingDependency as exc:
        assert f"pip install 'microstream[{{what}}]'" in str(exc), exc
    else:
        raise AssertionError(what + " did not fail")
from microstream.unikernel_backend.backend import MicroVMBackend
assert not MicroVMBackend().available()
assert main(["run", {str(ROOT / "examples" / "sensors" / "rooms.py")!r}, "--quiet"]) == 0
# without scipy and highspy (the placement extra) the heuristic places; the exact solver names the extra
plan = ["plan", {str(ROOT / "examples" / "sensors" / "rooms.py")!r}, "--topology",
        {str(ROOT / "examples" / "topologies" / "demo3.toml")!r}]
assert main(plan) == 0
assert main(plan + ["--solver", "exact"]) == 2
assert not any(m.split(".")[0] in ("paho", "qemu", "pandas", "scipy", "highspy") for m in sys.modules)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
    assert "pip install 'microstream[placement]'" in r.stderr, r.stderr  # the exact solver's error
    assert "pipeline error" not in r.stderr, r.stderr                     # ... which is not the script's fault
