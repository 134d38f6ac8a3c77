"""VM virtual nodes started from a saved, warmed template (`unikernel_backend/template.py`) under real QEMU (TCG
here): the template is built once for the module (or found in the cache) and reused by every VM below; two VMs
restored from it share its RAM file's pages; VM vnodes on an embedded cluster start from it and give a local run's
output, also across a whole-VM move (tier 2) and a move by snapshot (tier 1) into a new VM from the template; a
template whose saved state is bad makes the vnode boot cold, says why in its status, and the output is unchanged.
At most two VMs at once.

Skipped, loudly, only where QEMU and the image tools cannot be installed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import microstream as ms
from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client
from microstream.unikernel_backend import template as templates
from microstream.unikernel_backend.image import build_image
from microstream.unikernel_backend.relay import MEMORY_MB
from tests.unikernel_backend.helpers import require_qemu, vm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", autouse=True)
def _qemu() -> None:
    require_qemu("MICROVM TEMPLATE TESTS")


@pytest.fixture(scope="module")
def image():
    return build_image(progress=lambda _: None)


@pytest.fixture(scope="module")
def template(image):
    """The agents' template (the same key as the relays compute): built here once, or found in the cache."""
    return templates.template_for(image, MEMORY_MB, log=lambda _: None)


def pipeline(name: str, count: int, speed: float | None, two: bool = False) -> ms.Pipeline:
    p = ms.Pipeline(name)
    src = p.synthetic(count=count, sensors=20, rate=4000, jitter=0.2, max_delay=0.1, seed=7, speed=speed,
                      batch_size=400)
    win = src.key_by("sensor").window(ms.tumbling(seconds=1), lateness=0.05).aggregate(
        n=ms.agg.count(), mean=ms.agg.mean("value"), sd=ms.agg.std("value")).with_backend("microvm")
    win.sink(ms.sinks.collect())
    if two:  # a second VM vnode, on another branch
        src.filter(lambda b: b["value"] > 0).key_by("sensor").window(ms.tumbling(seconds=2)).aggregate(
            n=ms.agg.count(), top=ms.agg.max("value")).with_backend("microvm").sink(ms.sinks.collect())
    return p


def rows(p: ms.Pipeline) -> list[list[str]]:
    out = []
    for node in p.graph.nodes.values():
        if type(node.op).__name__ == "Collect":
            out.append(sorted(json.dumps(r, sort_keys=True, default=str)
                              for batch in node.op.batches() for r in batch.to_records()))
    return out


def local_rows(name: str, count: int, two: bool = False) -> list[list[str]]:
    p = pipeline(name, count, None, two)
    p.run()
    return rows(p)


def vm_vnodes(status: dict) -> dict[str, dict]:
    return {vn: info for vn, info in status["vnodes"].items()
            if any(task.startswith("window_aggregate") for task in info["tasks"])}


def job_named(c: Client, name: str) -> tuple[str, dict]:
    return next((j, s) for j, s in c.status()["jobs"].items() if s["name"] == name)


def wait_running(c: Client, name: str, timeout: float = 600) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [(j, s) for j, s in c.status()["jobs"].items() if s["name"] == name]
        if found and found[0][1]["state"] in ("running", "finished", "failed"):
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"{name} not running within {timeout} s")


def test_two_vms_restored_from_the_template_answer_warm_and_share_its_pages(image, template):
    vms = [templates.template_vm(image, template, name=f"t{i}") for i in range(2)]
    try:
        for vm in vms:
            templates.restore_template(vm, template)
        for vm in vms:  # numba was loaded before the template was saved: nothing left to warm
            assert vm.channel.exec("_vmhost._WARMED[0] > 0 and _vmhost.warm() == _vmhost._WARMED[0]") is True
            assert abs(vm.channel.exec("__import__('time').time()") - time.time()) < 30  # the clock was set
        memory = [vm.memory() for vm in vms]
        # both map the template's RAM file privately: pages neither has written are counted half to each
        assert all(m["pss"] < m["rss"] - 10 for m in memory), memory
    finally:
        for vm in vms:
            vm.cleanup()


@pytest.fixture(scope="module")
def home(tmp_path_factory, template):
    yield from vm_cluster(tmp_path_factory, "vm-template-cluster")


def test_vm_vnodes_start_from_one_template_and_give_a_local_runs_output(home, template):
    built = template.info["built"]
    expected = local_rows("tmpl-two", 40_000, two=True)
    p = pipeline("tmpl-two", 40_000, None, two=True)
    with Client(cluster.address(home), timeout=600) as c:
        c.submit(p)
        job, status = job_named(c, "tmpl-two")
    assert status["state"] == "finished", status
    assert rows(p) == expected
    vms = vm_vnodes(status)
    assert len(vms) == 2, status["vnodes"]
    assert {info["vm"]["start"] for info in vms.values()} == {"template"}, vms
    assert {info["vm"]["template"] for info in vms.values()} == {template.key}
    assert json.loads((template.directory / "manifest.json").read_text())["built"] == built  # reused, not rebuilt


def test_a_vm_vnode_moves_whole_then_by_snapshot_into_a_vm_from_the_template_and_keeps_exactly_once_output(
        home, template):
    """Tier 2 (QEMU's live migration of a VM restored from the template into a QEMU waiting with plain RAM), then
    tier 1 (a barrier snapshot into a new VM restored from the template); the output equals a local run's."""
    expected = local_rows("tmpl-move", 160_000)
    p = pipeline("tmpl-move", 160_000, 1.0)  # ~40 s of stream: both moves land in the middle of it
    done: dict = {}
    with Client(cluster.address(home), timeout=600) as submitter, Client(cluster.address(home), timeout=300) as c:
        thread = threading.Thread(target=lambda: done.update(result=submitter.submit(p)))
        thread.start()
        job, status = wait_running(c, "tmpl-move")
        assert status["state"] == "running", status
        vn = next(iter(vm_vnodes(status)))
        time.sleep(2)
        moves = []
        for whole in (True, False):
            here = c.status()["jobs"][job]["vnodes"][vn]["agent"]
            there = "node1" if here == "node2" else "node2"
            moves.append(c.migrate(job, vn, there, timeout=240, whole=whole))
            assert c.status()["jobs"][job]["vnodes"][vn]["agent"] == there
        thread.join(600)
        assert "result" in done, "the job did not finish"
        final = c.status()["jobs"][job]
    assert final["state"] == "finished", final
    tier2, tier1 = moves
    assert tier2["tier"] == 2 and tier2["vm"]["ram_bytes"] > 1e6, tier2
    assert tier1.get("tier") is None and tier1["state_bytes"] > 0, tier1
    assert final["vnodes"][vn]["vm"]["start"] == "template", final["vnodes"][vn]  # the tier-1 move's new VM
    assert len(final["migrations"]) == 2
    assert rows(p) == expected


def test_a_template_that_does_not_restore_makes_the_vnode_boot_cold_and_say_why(home, template):
    """Last in the module: the bad template is discarded (the next VM vnode would build a new one)."""
    state = template.state
    state.write_bytes(b"not a QEMU migration stream\n" * 100)
    manifest = template.directory / "manifest.json"  # a matching checksum: only restoring it can tell
    info = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**info, "state_sha256": templates.file_sha256(state)}))
    expected = local_rows("tmpl-cold", 20_000)
    p = pipeline("tmpl-cold", 20_000, None)
    with Client(cluster.address(home), timeout=600) as c:
        c.submit(p)
        job, status = job_named(c, "tmpl-cold")
    assert status["state"] == "finished", status
    assert rows(p) == expected
    (vm,) = vm_vnodes(status).values()
    assert vm["vm"]["start"] == "cold", vm
    note = vm["vm"]["start_note"]  # why, in the restore's own words: the decompressor's, which stopped QEMU at once
    assert "restoring" in note and str(state) in note and "zstd" in note, vm
    assert not Path(template.directory).exists()  # discarded: a later VM vnode builds a good one
