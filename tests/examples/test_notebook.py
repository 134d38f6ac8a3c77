"""The air-quality notebook (examples/notebooks/air_quality.ipynb) executed as a user would: in a Jupyter kernel of
this interpreter, from the notebook's folder, with nbclient. Its hourly AQI is checked against an independent
plain-numpy computation from the same CSV, its band table against the same reference, and its plot cell must
draw a picture; a notebook that stops running or drifts fails here."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "notebooks" / "air_quality.ipynb"
DATA = ROOT / "examples" / "sensors" / "data" / "AirQualityUCI.csv.gz"
HOUR = 3600 * 10**9
KERNEL = "microstream-test"

# The reference's own copy of the EPA tables (40 CFR 58 App. G) and unit conversions.
CO_PPM = [0.0, 4.4, 9.4, 12.4, 15.4, 30.4, 50.4]
NO2_PPB = [0.0, 53.0, 100.0, 360.0, 649.0, 1249.0, 2049.0]
AQI = [0.0, 50.0, 100.0, 150.0, 200.0, 300.0, 500.0]
BANDS = ["good", "moderate", "unhealthy for sensitive groups", "unhealthy", "very unhealthy", "hazardous"]

# Run after the notebook's cells, in its kernel: what the test compares (not saved into the notebook).
PROBE = """
import json as _json
_b = out.batch()
print(_json.dumps({"start": _b["window_start"].tolist(), "aqi": _b["aqi"].tolist(),
                   "pollutants": _b["pollutants"].tolist(), "bands": {k: int(v) for k, v in hours_per_band.items()}}))
"""


def _reference() -> tuple[dict[int, float], dict[int, int]]:
    """Hour start (ns UTC) -> AQI and -> number of sub-indices, from the CSV by plain numpy."""
    times, co, no2 = [], [], []
    with gzip.open(DATA, "rt") as f:
        reader = csv.DictReader(f, delimiter=";")
        for row in reader:
            if not row["Date"]:
                continue  # the file ends with empty ;;;; lines
            local = datetime.strptime(f"{row['Date']} {row['Time']}", "%d/%m/%Y %H.%M.%S")
            times.append(int(np.datetime64(local, "ns").astype(np.int64)) - HOUR)  # CET -> UTC
            co.append(float(row["CO(GT)"].replace(",", ".")))
            no2.append(float(row["NO2(GT)"].replace(",", ".")))
    t = np.array(times)
    co_v, no2_v = np.array(co), np.array(no2)
    aqi: dict[int, float] = {}
    count: dict[int, int] = {}

    def put(hour: int, value: float) -> None:
        aqi[hour] = max(aqi.get(hour, -1.0), value)
        count[hour] = count.get(hour, 0) + 1

    measured = co_v != -200
    for end in range(int(t.min()) // HOUR * HOUR + HOUR, int(t.max()) + 9 * HOUR, HOUR):
        inside = measured & (t >= end - 8 * HOUR) & (t < end)
        if inside.sum() >= 6:  # an 8-hour mean needs 6 measured hours; its result belongs to its last hour
            put(end - HOUR, float(np.interp(co_v[inside].mean() * 24.45 / 28.01, CO_PPM, AQI)))
    for ts, v in zip(t, no2_v, strict=True):
        if v != -200:
            put(int(ts) // HOUR * HOUR, float(np.interp(v * 24.45 / 46.0055, NO2_PPB, AQI)))
    return aqi, count


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec for this interpreter (the venv's python), found through JUPYTER_PATH: no install needed."""
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "microstream (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return KERNEL


def test_the_air_quality_notebook_runs_and_its_index_matches_a_numpy_reference(kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbclient.NotebookClient(nb, kernel_name=kernel, timeout=240,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    probe = json.loads("".join(o["text"] for o in nb.cells[-1].outputs if o.get("name") == "stdout"))
    aqi, count = _reference()
    hours = sorted(aqi)
    assert probe["start"] == hours
    np.testing.assert_allclose(probe["aqi"], [aqi[h] for h in hours], rtol=1e-9)
    assert probe["pollutants"] == [count[h] for h in hours]
    assert 2 in probe["pollutants"] and 1 in probe["pollutants"]  # hours with both sub-indices and with one

    bands = np.searchsorted(AQI[1:-1], np.ceil([aqi[h] for h in hours]), side="left")
    expected = {name: int((bands == i).sum()) for i, name in enumerate(BANDS)}
    assert probe["bands"] == expected
    assert expected["moderate"] > 0 and expected["unhealthy for sensitive groups"] > 0  # the plot shows bands

    texts = ["".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
             for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(f"{len(hours):,} hours with an index" in t for t in texts)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the bands plot
