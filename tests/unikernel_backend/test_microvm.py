"""The microVM backend with real QEMU: build the image, boot one VM (TCG), talk to its guest agent over
virtio-serial, survive a channel reconnect, save and restore the whole VM.

One VM at a time (2 shared cores). Skipped, loudly, only where QEMU and the image tools cannot be
installed (`ensure_host_tools` installs them with apt-get as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microstream.unikernel_backend import image as image_mod
from microstream.unikernel_backend import vm as vm_mod
from microstream.unikernel_backend.channel import GuestError
from microstream.unikernel_backend.image import build_image, default_cache_dir, ensure_host_tools, find_built_image
from microstream.unikernel_backend.vm import MicroVM, VMError, probe_accel
from tests.unikernel_backend.helpers import require_qemu

# The first test pays a cold image build (debs downloaded on a fresh machine) and a TCG boot: 600 s, not 300.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def _qemu() -> None:
    """In a fixture, not at import: collecting the fast lane (`-m "not slow"`) must not install QEMU."""
    require_qemu("MICROVM TESTS")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cold build into a fresh cache (downloaded .debs are shared), then the same call again. The fresh
    cache is the default one when it has no image for this code yet (a clean CI run), so the cluster
    tests after this module find theirs built."""
    cache = default_cache_dir() if find_built_image() is None else tmp_path_factory.mktemp("images")
    messages: list[str] = []
    debs = default_cache_dir() / "debs"
    cold = build_image(cache_dir=cache, deb_cache=debs, progress=messages.append)
    cold_messages = list(messages)
    messages.clear()
    warm = build_image(cache_dir=cache, deb_cache=debs, progress=messages.append)
    return {"cold": cold, "warm": warm, "cold_messages": cold_messages, "warm_messages": messages, "cache": cache}


@pytest.fixture(scope="module")
def vm(built: dict, tmp_path_factory: pytest.TempPathFactory):
    machine = MicroVM(built["warm"], accel="tcg", workdir=tmp_path_factory.mktemp("vm"))
    machine.start(timeout=150)
    yield machine
    machine.stop()
    assert machine.pid is None


def test_image_is_built_then_found_in_the_cache(built: dict) -> None:
    cold, warm = built["cold"], built["warm"]
    assert not cold.cached and warm.cached and cold.key == warm.key
    assert any("cache hit" in m for m in built["warm_messages"])
    assert any("precompiled" in m for m in built["cold_messages"])
    sizes = warm.sizes
    assert sizes["initramfs"] < 8e6 and sizes["rootfs"] < 120e6  # numba + llvmlite: ~99 MB
    info = warm.info()
    assert info["kernel"]["format"].startswith("vmlinux") and info["pyc"] > 500
    assert {"python:numpy", "python:numba", "python:cloudpickle"} <= set(info["guest_files"])


def test_image_build_command_prints_only_json_on_stdout(built: dict) -> None:
    # a cache hit: the command line finds what the fixture built; its progress goes to stderr
    r = subprocess.run([sys.executable, "-m", "microstream.cli", "image", "build", "--cache-dir", str(built["cache"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    image = json.loads(r.stdout)
    assert image["key"] == built["warm"].key and image["cached"] is True
    assert "cache hit" in r.stderr


def test_boot_ping_and_numpy_inside(vm: MicroVM) -> None:
    assert vm.boot_seconds is not None and vm.boot_seconds > 0
    assert vm.channel.hello["python"].startswith("3.11")
    assert vm.status()["state"] == "running" and vm.status()["accel"] == "tcg"
    assert vm.channel.ping() < 10
    assert vm.channel.exec("import numpy; numpy.arange(10).sum()") == 45
    numpy = vm.channel.import_module("numpy")
    assert numpy["file"].startswith("/usr/lib/python3/dist-packages/numpy")
    with pytest.raises(GuestError, match="ZeroDivisionError"):
        vm.channel.exec("1 / 0")


def test_bytes_stream_both_ways(vm: MicroVM) -> None:
    blob = os.urandom(100_000)  # larger than a guest read (4 KiB): frames are reassembled
    vm.channel.send_data("echo", blob)
    assert vm.channel.recv_data("echo", timeout=30) == blob
    vm.channel.exec("for i in range(5): agent.send_data('out', b'x' * i)")
    assert [vm.channel.recv_data("out", timeout=30) for _ in range(5)] == [b"x" * i for i in range(5)]


def test_seq_and_ack_survive_a_host_side_reconnect(vm: MicroVM) -> None:
    channel = vm.channel
    channel.exec("import threading\n"
                 "def burst():\n"
                 "    for i in range(300): agent.send_data('burst', str(i).encode())\n"
                 "threading.Thread(target=burst).start()")
    got = [int(channel.recv_data("burst", timeout=30)) for _ in range(40)]
    resent = channel.session.counts["resent"]
    channel.detach()  # drop the connection mid-stream, both directions
    for i in range(100):  # queued while detached: only a resend can deliver these
        channel.send_data("sink", str(i).encode())
    time.sleep(0.3)
    channel.connect()
    got += [int(channel.recv_data("burst", timeout=30)) for _ in range(260)]
    assert got == list(range(300))
    assert channel.exec("[int(x) for x in agent.inbox['sink']]", timeout=60) == list(range(100))
    assert channel.session.counts["resent"] >= resent + 100


def test_save_and_restore_keep_guest_memory(vm: MicroVM, tmp_path: Path) -> None:
    vm.channel.exec("counter = 0\ndef bump():\n    global counter\n    counter += 1\n    return counter")
    assert [vm.channel.exec("bump()") for _ in range(3)] == [1, 2, 3]
    for i in range(10):  # in flight or queued in the guest at the save
        vm.channel.send_data("kept", str(i).encode())
    saved = vm.save(tmp_path / "vm.zst")
    assert saved["bytes"] > 1e6 and vm.pid is None and vm.status()["state"] == "exited"
    restored = MicroVM(vm.image, accel="tcg", workdir=tmp_path / "restored")  # a fresh host-side object
    try:
        restored.restore(tmp_path / "vm.zst")
        assert restored.status()["state"] == "running"
        assert restored.channel.exec("bump()") == 4
        assert restored.channel.exec("[int(x) for x in agent.inbox['kept']]") == list(range(10))
        restored.channel.send_data("echo", b"after restore")
        assert restored.channel.recv_data("echo", timeout=30) == b"after restore"
    finally:
        pid = restored.pid
        restored.stop()
    assert restored.pid is None and not _alive(pid)
    # a damaged file (here cut short) fails the restore at once, saying why, rather than leaving QEMU waiting
    # for the rest of the stream: its decompressor's failure stops QEMU
    whole = (tmp_path / "vm.zst").read_bytes()
    (tmp_path / "cut.zst").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "cut.zst.json").write_text((tmp_path / "vm.zst.json").read_text())
    broken = MicroVM(vm.image, accel="tcg", workdir=tmp_path / "broken")
    with pytest.raises(VMError) as failed:
        broken.restore(tmp_path / "cut.zst", timeout=600)
    first = str(failed.value).splitlines()[0]
    assert "ended in state 'exited': " in first and "premature end" in first, first  # zstd's words
    assert broken.pid is None
    vm.restore(tmp_path / "vm.zst")  # the module's VM continues too (its channel keeps its own session)
    assert vm.channel.exec("bump()") == 4


def test_a_vnode_host_started_cold_loads_the_images_kernels(vm: MicroVM) -> None:
    """A VM that boots cold (no template) starts its vnode host through `vmhost.start`: numba must be configured
    for the image's kernel cache before the host's first import pulls it in (it reads the settings once), or
    every kernel compiles under TCG instead of loading from the image. Last on the module's VM: the host it
    starts waits there for a spec."""
    vm.channel.exec("import microstream.unikernel_backend.vmhost as _vmhost; _vmhost.start(agent)")
    config = vm.channel.exec("import numba.core.config as c; [c.CACHE_DIR, c.CPU_NAME]", timeout=120)
    assert config == ["/tmp/numba-cache", "generic"], config


def test_no_qemu_left_after_stop(built: dict, tmp_path: Path) -> None:
    machine = MicroVM(built["warm"], accel="tcg", workdir=tmp_path)
    machine.launch()
    pid = machine.pid
    machine.stop(timeout=5)  # before the guest is even ready: QMP quit / kill
    assert machine.pid is None and not _alive(pid)


def test_probe_accel_falls_back_to_tcg_and_caches_the_verdict(built: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    boots = []

    def failing_start(self: MicroVM, timeout: float = 0) -> float:
        boots.append(self.accel)
        raise vm_mod.VMError("KVM emulation failure")

    monkeypatch.setattr(vm_mod.os, "access", lambda *_: True)  # as if /dev/kvm were usable
    monkeypatch.setattr(MicroVM, "start", failing_start)
    assert probe_accel(built["warm"], cache_dir=tmp_path, log=lambda _: None) == "tcg"
    assert probe_accel(built["warm"], cache_dir=tmp_path, log=lambda _: None) == "tcg"
    assert boots == ["kvm"]  # the second answer came from the cache
    assert (tmp_path / "accel.json").exists()


def test_missing_tools_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_mod.shutil, "which", lambda _cmd, **_: None)
    with pytest.raises(RuntimeError, match="qemu-system-x86"):
        ensure_host_tools(install=False)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
