"""Shared by the microVM tests: they run against real QEMU, and skip loudly only where it cannot be installed."""

from __future__ import annotations

import warnings

import pytest

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
