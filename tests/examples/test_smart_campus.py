"""The smart-campus example end to end: `microstream run` on the bundled UCI files, its accuracy figures and
rollups checked against an independent plain-numpy computation from the same files, and the same script
submitted to an embedded 3-node cluster giving the same windows."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microstream.cluster import embedded as cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "sensors" / "smart_campus" / "pipeline.py"
DATA = ROOT / "examples" / "sensors" / "data"
NS_DAY = 86_400 * 10**9
NS_WINDOW = 600 * 10**9


def _layout():
    """The example's room layout and model constants (the logic below is our own)."""
    spec = importlib.util.spec_from_file_location("smart_campus_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C = _layout()


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                       cwd=cwd, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smart-campus-local")
    r = _run("run", str(SCRIPT), cwd=cwd)
    return cwd / "out" / "smart_campus", r.stdout


# -- the independent computation ------------------------------------------------------------------------

def _recording() -> dict[str, np.ndarray]:
    t, cols = [], {k: [] for k in ("Temperature", "Humidity", "Light", "CO2", "Occupancy")}
    for name in ("datatest.txt", "datatraining.txt", "datatest2.txt"):
        with open(DATA / name) as f:
            rows = list(csv.DictReader(f))
        t += [np.datetime64(r["date"]) for r in rows]
        for k in cols:
            cols[k] += [float(r[k]) for r in rows]
    out = {k: np.array(v) for k, v in cols.items()}
    out["t"] = np.array(t, dtype="datetime64[ns]").astype(np.int64)
    order = np.argsort(out["t"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _expected() -> dict[str, dict[str, np.ndarray]]:
    """Per room: the replayed readings (rotated by its index in whole days), the estimate, window flags."""
    rec = _recording()
    start = C.START
    rooms = {}
    for r, room in enumerate(C.ROOMS):
        sim = start + np.mod(rec["t"] - start - r * NS_DAY, C.PERIOD_DAYS * NS_DAY)
        keep = np.flatnonzero(sim < start + C.DAYS * NS_DAY)
        keep = keep[np.argsort(sim[keep], kind="stable")]
        t, light, co2, occ = sim[keep], rec["Light"][keep], rec["CO2"][keep], rec["Occupancy"][keep] > 0
        on, lit = 0.0, np.zeros(len(t), bool)
        trend, smooth = np.zeros(len(t)), 0.0
        for i in range(len(t)):
            if light[i] > C.LIGHT_ON:
                on = 1.0
            elif light[i] < C.LIGHT_OFF:
                on = 0.0
            lit[i] = on > 0
            per_min = 0.0 if i == 0 else (co2[i] - co2[i - 1]) / ((t[i] - t[i - 1]) / 1e9) * 60.0
            smooth = per_min if i == 0 else smooth + C.TREND_ALPHA * (per_min - smooth)
            trend[i] = smooth
        est = lit & ((co2 > C.CO2_OCCUPIED) | (trend > C.CO2_RISING))
        window = t // NS_WINDOW * NS_WINDOW
        starts, idx = np.unique(window, return_inverse=True)
        frac_est = np.bincount(idx, weights=est) / np.bincount(idx)
        frac_true = np.bincount(idx, weights=occ) / np.bincount(idx)
        temp = np.bincount(idx, weights=rec["Temperature"][keep]) / np.bincount(idx)
        rooms[room] = {"est": est, "truth": occ, "windows": starts, "occ": frac_est >= 0.5,
                       "occ_true": frac_true >= 0.5, "temp": temp}
    return rooms


@pytest.fixture(scope="module")
def expected():
    return _expected()


def _scores(est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp, fp = int(np.sum(est & truth)), int(np.sum(est & ~truth))
    fn, tn = int(np.sum(~est & truth)), int(np.sum(~est & ~truth))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": tp / (tp + fp), "recall": tp / (tp + fn)}


# -- the checks -------------------------------------------------------------------------------------------

def test_accuracy_per_room_and_overall_matches_numpy(local, expected):
    out, stdout = local
    acc = json.loads((out / "accuracy.json").read_text())
    assert sorted(acc["rooms"]) == sorted(C.ROOMS)
    for room, e in expected.items():
        want = _scores(e["est"], e["truth"])
        got = acc["rooms"][room]
        assert {k: got[k] for k in ("tp", "fp", "fn", "tn")} == {k: want[k] for k in ("tp", "fp", "fn", "tn")}, room
        for k in ("accuracy", "precision", "recall"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), (room, k)
    overall = _scores(np.concatenate([e["est"] for e in expected.values()]),
                      np.concatenate([e["truth"] for e in expected.values()]))
    for k in ("tp", "fp", "fn", "tn"):
        assert acc["overall"][k] == overall[k]
    assert acc["overall"]["accuracy"] == pytest.approx(overall["accuracy"], abs=1e-12)
    assert overall["accuracy"] > 0.95 and overall["recall"] > 0.95  # the rule is good on this data
    assert f"{overall['accuracy']:.3f}" in stdout.split("overall")[1].splitlines()[0]


def test_room_windows_and_rollups_match_numpy(local, expected):
    out, _ = local
    rooms = _jsonl(out / "rooms.jsonl")
    by_room = {(r["room"], r["window_start"]): r for r in rooms}
    assert len(by_room) == len(rooms) == sum(len(e["windows"]) for e in expected.values())
    floors: dict[tuple[str, int], list[int]] = {}
    for room, e in expected.items():
        floor = room.split(".")[0]
        for w, occ, occ_true, temp in zip(e["windows"], e["occ"], e["occ_true"], e["temp"], strict=True):
            got = by_room[(room, int(w))]
            assert got["temp"] == pytest.approx(temp, rel=1e-12)
            assert got["occ"] == float(occ) and got["occ_true"] == float(occ_true)
            assert got["floor"] == floor
            f = floors.setdefault((floor, int(w)), [0, 0, 0])
            f[0] += 1
            f[1] += int(occ)
            f[2] += int(occ_true)
    got_floors = {(r["floor"], r["window_start"]): r for r in _jsonl(out / "floors.jsonl")}
    assert set(got_floors) == set(floors)
    for k, (n, occ, occ_true) in floors.items():
        assert (got_floors[k]["rooms"], got_floors[k]["occupied"], got_floors[k]["occupied_true"]) == (n, occ, occ_true)


def test_floor_counts_sum_to_building_counts(local):
    out, _ = local
    floors, buildings = _jsonl(out / "floors.jsonl"), _jsonl(out / "buildings.jsonl")
    sums: dict[tuple[str, int], np.ndarray] = {}
    for f in floors:
        key = (f["floor"].split("-")[0], f["window_start"])
        sums.setdefault(key, np.zeros(5))
        sums[key] += [1, f["rooms"], f["occupied"], f["occupied_true"], f["comfortable"]]
    got = {(b["building"], b["window_start"]): b for b in buildings}
    assert set(got) == set(sums) and len(got) > 1000
    for key, s in sums.items():
        b = got[key]
        assert [b["floors"], b["rooms"], b["occupied"], b["occupied_true"], b["comfortable"]] == s.tolist(), key
        assert b["occupied"] <= b["rooms"] <= sum(n for n in C.BUILDINGS[key[0]][1].values())
    assert max(b["occupied"] for b in buildings) >= 3  # several rooms of a building busy at once


def test_comfort_categories_follow_en16798_bands(local):
    out, _ = local
    rooms = _jsonl(out / "rooms.jsonl")

    def cat(v, bands):
        for i, (lo, hi) in enumerate(bands, start=1):
            if lo <= v <= hi:
                return i
        return 4

    for r in rooms:
        t, h = cat(r["temp"], C.TEMP_BANDS), cat(r["rh"], C.RH_BANDS)
        above = r["co2"] - C.CO2_OUTDOOR
        c = 1 if above <= 550 else 2 if above <= 800 else 3 if above <= 1350 else 4
        assert (r["temp_cat"], r["rh_cat"], r["co2_cat"], r["category"]) == (t, h, c, max(t, h, c))
        assert r["comfortable"] == float(max(t, h, c) <= 2)
    assert {r["category"] for r in rooms} >= {2.0, 3.0, 4.0}  # the data spans several categories


@pytest.mark.slow  # a cluster of real processes
def test_submitted_to_a_cluster_gives_the_same_windows(local, tmp_path):
    out, _ = local
    home = tmp_path / "home"
    cluster.up(3, home, progress=lambda _: None)
    try:
        _run("submit", str(SCRIPT), "--home", str(home), cwd=tmp_path, timeout=180)
    finally:
        cluster.down(home, progress=lambda _: None)
    for name in ("rooms", "floors", "buildings"):
        key = "room" if name == "rooms" else name[:-1]

        def rows(path, key=key):
            return {(r[key], r["window_start"]): r for r in _jsonl(path)}

        want, got = rows(out / f"{name}.jsonl"), rows(tmp_path / "out" / "smart_campus" / f"{name}.jsonl")
        assert set(got) == set(want), name
        for k, r in want.items():  # means may differ in the last bit: records arrive in another order
            assert got[k].keys() == r.keys(), (name, k)
            for field, v in r.items():
                assert got[k][field] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (name, k, field)
    assert json.loads((tmp_path / "out" / "smart_campus" / "accuracy.json").read_text()) == \
        json.loads((out / "accuracy.json").read_text())
