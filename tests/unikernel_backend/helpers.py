"""Shared by the microVM tests: they run against real QEMU, and skip loudly only where it cannot be installed."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.unikernel_backend.image import ensure_host_tools


def require_qemu(what: str) -> None:
    """Install QEMU and the image tools (apt-get as root), or skip the calling test module, saying so loudly."""
    try:
        ensure_host_tools()
    except Exception as exc:  # noqa: BLE001 - any reason QEMU is unavailable
        reason = f"{what} SKIPPED: QEMU / image tools cannot be installed here: {exc}"
        warnings.warn(reason, stacklevel=2)
        print(f"\n{'!' * 100}\n{reason}\n{'!' * 100}")
        pytest.skip(reason, allow_module_level=True)


def vm_cluster(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """An embedded 2-agent cluster (auto-placement off) whose agents work in a private TMPDIR; yields its home."""
    root = tmp_path_factory.mktemp(name)
    private_tmp = tmp_path_factory.mktemp("vmtmp")  # the agents' work directories, away from other jobs
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(private_tmp)
    try:
        cluster.up(2, root, progress=lambda _: None, coordinator_args=["--no-auto-place"])
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
    yield root
    cluster.down(root, progress=lambda _: None)
