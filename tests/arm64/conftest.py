"""The arm64 lane runs only when asked for (`make test-arm64` sets MICROSTREAM_ARM64_LANE=1): it builds an
emulated root the first time (minutes) and its runs are slow under emulation."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MICROSTREAM_ARM64_LANE") == "1":
        return
    skip = pytest.mark.skip(reason="the arm64 lane: run `make test-arm64` (or set MICROSTREAM_ARM64_LANE=1)")
    for item in items:
        if "arm64" in item.keywords:
            item.add_marker(skip)
