"""Shared test helpers: where the real datasets are, and small result utilities."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "sensors" / "data"


def dataset(relative: str) -> Path:
    """A file of ../shared/data, falling back to the copy bundled with the examples; skip if neither."""
    for root in (SHARED_DATA, EXAMPLE_DATA):
        path = root / relative
        if path.exists():
            return path
        alt = root / Path(relative).name
        if alt.exists():
            return alt
    pytest.skip(f"dataset {relative} not available")


def sorted_records(records: list[dict]) -> list[tuple]:
    return sorted(tuple(sorted(r.items())) for r in records)
