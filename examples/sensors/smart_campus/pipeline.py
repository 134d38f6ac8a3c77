"""Smart campus: comfort and occupancy of 16 rooms on 7 floors of 3 buildings, from real office sensors.

The UCI Occupancy Detection recording (one office, 2-18 February 2015, a reading about every minute:
temperature, humidity, light, CO2 and the ground-truth `Occupancy`) is replayed as 16 rooms: room r
replays the recording rotated by r whole days, so that every room has real readings at the right hour
of the day but is busy on different days (how exactly: README.md next to this file). Each building's
gateway replays its own rooms (`at="node1"`.. on a cluster).

In microstream operators:

- per room, per record: an occupancy estimate from a small per-key model: lights on (hysteresis,
  on above 400 lux, off below 300 lux) while the air shows people (CO2 above 500 ppm, or CO2 rising
  by more than 1 ppm/min, smoothed), compared with the ground truth;
- per room and 10-minute tumbling window: mean temperature, humidity and CO2, the EN 16798-1 comfort
  category (I-IV) of each and overall, and whether the room was occupied (estimated and true);
- per floor and per building, the same 10-minute windows rolled up: rooms, rooms occupied, rooms
  comfortable (category I or II).

At the end it prints the estimate's accuracy, precision and recall against the ground truth per room
and overall, and writes everything to out/smart_campus/.

    microstream run examples/sensors/smart_campus/pipeline.py
    microstream submit examples/sensors/smart_campus/pipeline.py     # on a cluster of >= 3 nodes
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numba
import numpy as np

import microstream as ms

DATA = Path(__file__).resolve().parent.parent / "data"
OUT = Path("out") / "smart_campus"
FILES = ("datatest.txt", "datatraining.txt", "datatest2.txt")  # in time order: 2-4, 4-10, 11-18 Feb 2015

# building -> (gateway node, {floor: number of rooms}); rooms are "LIB-1.01": building-floor.room
BUILDINGS = {"LIB": ("node1", {1: 3, 2: 3}), "ENG": ("node2", {1: 2, 2: 2, 3: 2}), "ADM": ("node3", {1: 2, 2: 2})}
ROOMS = [f"{b}-{f}.{i:02d}" for b, (_, floors) in BUILDINGS.items() for f, n in floors.items() for i in range(1, n + 1)]

DAY = ms.duration(days=1)
START = int(np.datetime64("2015-02-02T00:00", "ns").astype(np.int64))  # midnight before the first reading
PERIOD_DAYS = 17  # the recording lies within 2015-02-02 00:00 .. 2015-02-19 00:00
DAYS = 7          # every room replays one week: START .. START + 7 days

# occupancy model (per room)
LIGHT_ON, LIGHT_OFF = 400.0, 300.0  # lux: lights switch "on" above 400 and "off" again below 300
CO2_OCCUPIED = 500.0                # ppm: well above outdoor air (~400 ppm) means people breathe in the room
CO2_RISING = 1.0                    # ppm/min of smoothed CO2 trend
TREND_ALPHA = 0.2                   # EWMA weight of the CO2 trend (about 5 readings)

# EN 16798-1:2019 Annex B default design criteria (categories I, II, III; outside III is IV), offices,
# heating season: operative temperature (sedentary, ~1.0 clo), relative humidity, and CO2 above outdoor
# (550, 800, 1350 ppm) with outdoor air taken as 400 ppm.
TEMP_BANDS = [(21.0, 23.0), (20.0, 24.0), (19.0, 25.0)]
RH_BANDS = [(30.0, 50.0), (25.0, 60.0), (20.0, 70.0)]
CO2_OUTDOOR = 400.0
CO2_LIMITS = [550.0, 800.0, 1350.0]
CATEGORY_NAMES = np.array(["-", "I", "II", "III", "IV"])


# -- the replay --------------------------------------------------------------------------------------------

def read_recording(data: Path = DATA) -> dict[str, np.ndarray]:
    """The three UCI files as one recording in time order (date -> int64 ns UTC)."""
    rows = []
    for name in FILES:
        with open(data / name, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows += [r[-7:] for r in reader]  # the header has no name for the row number of datatest2.txt
    cols = dict(zip(header[-7:], zip(*rows, strict=True), strict=True))
    out = {"recorded": np.array([d.replace(" ", "T") for d in cols["date"]], "datetime64[ns]").astype(np.int64)}
    for c in ("Temperature", "Humidity", "Light", "CO2"):
        out[c] = np.array(cols[c], dtype=np.float64)
    out["Occupancy"] = np.array(cols["Occupancy"], dtype=np.int64)
    return out


def replay_room(rec: dict[str, np.ndarray], shift_days: int, room: str) -> dict[str, np.ndarray]:
    """Room `room`: the recording rotated by `shift_days` whole days (modulo 17), first 7 days."""
    t = rec["recorded"]
    sim = START + (t - START - shift_days * DAY) % (PERIOD_DAYS * DAY)
    keep = np.flatnonzero(sim < START + DAYS * DAY)
    keep = keep[np.argsort(sim[keep], kind="stable")]
    out = {"time": sim[keep], "room": np.full(len(keep), room)}
    out.update({k: v[keep] for k, v in rec.items()})
    return out


def building_replay(building: str) -> dict[str, np.ndarray]:
    """All rooms of one building merged in time order (what its gateway replays)."""
    rec = read_recording()
    parts = [replay_room(rec, ROOMS.index(r), r) for r in ROOMS if r.startswith(building + "-")]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["time"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


class Replay(ms.Source):
    """A building gateway replaying its rooms (an `ms.Source` of our own): it reads the files where it runs,
    when opened, and says where it is so that checkpoints and moves can resume it."""

    kind = "replay"
    schema = {"time": "int64", "room": "str", "recorded": "int64", "Temperature": "float64",
              "Humidity": "float64", "Light": "float64", "CO2": "float64", "Occupancy": "int64"}

    def __init__(self, building: str) -> None:
        super().__init__(time="time")
        self.building = building

    def describe(self) -> str:
        n = sum(r.startswith(self.building + "-") for r in ROOMS)
        return f"{n} rooms of {self.building}, {DAYS} days each"

    def open(self, ctx) -> None:
        super().open(ctx)
        self.columns = building_replay(self.building)
        self.offset = 0

    def read(self):
        n = len(self.columns["time"])
        if self.offset >= n:
            return None  # the end of the replay
        lo, hi = self.offset, min(n, self.offset + self.batch_size)
        self.offset = hi
        return [("out", ms.Batch({k: v[lo:hi] for k, v in self.columns.items()}))]

    def reader_state(self) -> int:
        return self.offset

    def restore_reader(self, state: int) -> None:
        self.offset = state


# -- per-room state ------------------------------------------------------------------------------------

@numba.njit
def lights(state, t, x):
    """Hysteresis on light: 1 after a reading above LIGHT_ON until one below LIGHT_OFF."""
    if x > LIGHT_ON:
        state[0] = 1.0
    elif x < LIGHT_OFF:
        state[0] = 0.0
    return state[0]


def category(value, bands):
    """EN 16798-1 category 1..4 (I..IV) of values against nested (low, high) bands."""
    cat = np.full(len(value), 4.0)
    for i, (lo, hi) in reversed(list(enumerate(bands))):
        cat[(value >= lo) & (value <= hi)] = i + 1.0
    return cat


def co2_category(co2):
    return np.searchsorted(np.array(CO2_LIMITS), co2 - CO2_OUTDOOR, side="left").astype(np.float64) + 1.0


# -- the pipeline --------------------------------------------------------------------------------------

p = ms.Pipeline("smart_campus")
gateways = [p.add_source(Replay(b), name=f"gateway_{b}", at=node) for b, (node, _) in BUILDINGS.items()]
readings = p.union(*gateways).filter(
    lambda b: (b["CO2"] > 0) & (b["CO2"] < 5000) & (b["Light"] >= 0) & (b["Humidity"] > 0) & (b["Humidity"] <= 100),
    name="plausible")

estimated = (
    readings.key_by("room", name="by_room")
    .stateful_map(lights, "Light", out="lights", state_size=1, name="lights")
    .stateful_map(ms.state.rate, "CO2", out="co2_rate", name="co2_rate")  # ppm/s since the room's previous reading
    .with_columns(co2_rate=lambda b: np.nan_to_num(b["co2_rate"] * 60.0), name="ppm_per_min")
    .stateful_map(ms.state.ewma(TREND_ALPHA), "co2_rate", out="co2_trend", name="co2_trend")
    .with_columns(
        name="occupancy_estimate",
        est=lambda b: ((b["lights"] > 0) & ((b["CO2"] > CO2_OCCUPIED) | (b["co2_trend"] > CO2_RISING))) * 1.0)
    .with_columns(
        name="confusion",
        tp=lambda b: ((b["est"] > 0) & (b["Occupancy"] > 0)) * 1.0,
        fp=lambda b: ((b["est"] > 0) & (b["Occupancy"] == 0)) * 1.0,
        fn=lambda b: ((b["est"] == 0) & (b["Occupancy"] > 0)) * 1.0,
        tn=lambda b: ((b["est"] == 0) & (b["Occupancy"] == 0)) * 1.0)
)

rooms = (
    estimated.window(ms.tumbling(minutes=10))
    .aggregate(name="per_room", n=ms.agg.count(), temp=ms.agg.mean("Temperature"), rh=ms.agg.mean("Humidity"),
               co2=ms.agg.mean("CO2"), co2_max=ms.agg.max("CO2"), light=ms.agg.mean("Light"),
               occupied=ms.agg.mean("est"), occupied_true=ms.agg.mean("Occupancy"),
               tp=ms.agg.sum("tp"), fp=ms.agg.sum("fp"), fn=ms.agg.sum("fn"), tn=ms.agg.sum("tn"))
    .with_parallelism(3)  # on a cluster: room windows in three tasks; the floor rollup waits for all three
    .with_columns(name="room_comfort",
                  temp_cat=lambda b: category(b["temp"], TEMP_BANDS),
                  rh_cat=lambda b: category(b["rh"], RH_BANDS),
                  co2_cat=lambda b: co2_category(b["co2"]),
                  floor=lambda b: np.char.partition(b["room"].astype(str), ".")[:, 0],
                  occ=lambda b: (b["occupied"] >= 0.5) * 1.0,
                  occ_true=lambda b: (b["occupied_true"] >= 0.5) * 1.0)
    .with_columns(name="room_category",
                  category=lambda b: np.maximum(np.maximum(b["temp_cat"], b["rh_cat"]), b["co2_cat"]),
                  comfortable=lambda b: (np.maximum(np.maximum(b["temp_cat"], b["rh_cat"]), b["co2_cat"]) <= 2) * 1.0)
)
floors = (
    rooms.key_by("floor", name="by_floor").window(ms.tumbling(minutes=10))
    .aggregate(name="per_floor", rooms=ms.agg.count(), occupied=ms.agg.sum("occ"), occupied_true=ms.agg.sum("occ_true"),
               comfortable=ms.agg.sum("comfortable"), co2=ms.agg.mean("co2"), worst=ms.agg.max("category"))
    .with_columns(building=lambda b: np.char.partition(b["floor"].astype(str), "-")[:, 0], name="floor_building")
)
buildings = (
    floors.key_by("building", name="by_building").window(ms.tumbling(minutes=10))
    .aggregate(name="per_building", floors=ms.agg.count(), rooms=ms.agg.sum("rooms"), occupied=ms.agg.sum("occupied"),
               occupied_true=ms.agg.sum("occupied_true"), comfortable=ms.agg.sum("comfortable"),
               worst=ms.agg.max("worst"))
)
room_out, floor_out, building_out = ms.sinks.collect(), ms.sinks.collect(), ms.sinks.collect()
rooms.sink(room_out, name="room_windows")
floors.sink(floor_out, name="floor_windows")
buildings.sink(building_out, name="building_windows")
p.dead_letters().sink(ms.sinks.jsonl(OUT / "dead_letters.jsonl"))


# -- the report ----------------------------------------------------------------------------------------

def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    n = tp + fp + fn + tn
    return {"minutes": int(n), "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
            "accuracy": (tp + tn) / n if n else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan")}


def accuracy(windows: list[dict]) -> dict[str, dict[str, float]]:
    """Per room and overall accuracy, precision and recall of the per-minute estimate."""
    totals: dict[str, np.ndarray] = {}
    for w in windows:
        totals.setdefault(w["room"], np.zeros(4))
        totals[w["room"]] += [w["tp"], w["fp"], w["fn"], w["tn"]]
    per_room = {room: scores(*totals[room]) for room in sorted(totals)}
    return {"overall": scores(*sum(totals.values())), "rooms": per_room}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}) + "\n")


def report(result: ms.RunResult | None = None) -> dict:
    acc = accuracy(room_out.records())
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "rooms.jsonl", room_out.records())
    write_jsonl(OUT / "floors.jsonl", floor_out.records())
    write_jsonl(OUT / "buildings.jsonl", building_out.records())
    (OUT / "accuracy.json").write_text(json.dumps(acc, indent=2) + "\n")
    print(f"{'room':<10}{'minutes':>8}{'accuracy':>10}{'precision':>10}{'recall':>8}")
    for name, s in [*acc["rooms"].items(), ("overall", acc["overall"])]:
        print(f"{name:<10}{s['minutes']:>8}{s['accuracy']:>10.3f}{s['precision']:>10.3f}{s['recall']:>8.3f}")
    busiest = max(building_out.records(), key=lambda r: r["occupied"], default=None)
    if busiest:
        when = np.datetime64(int(busiest["window_start"]), "ns").astype("datetime64[m]")
        print(f"busiest building window: {busiest['building']} at {when}, "
              f"{busiest['occupied']:.0f} of {busiest['rooms']:.0f} rooms occupied")
    print(f"wrote {OUT}/rooms.jsonl ({len(room_out):,} room windows), floors.jsonl ({len(floor_out):,}), "
          f"buildings.jsonl ({len(building_out):,}), accuracy.json")
    return acc


if __name__ == "__main__":
    report(p.run())
