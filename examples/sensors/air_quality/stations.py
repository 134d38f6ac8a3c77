"""The UCI air-quality recording as several monitoring stations, and a replayer that publishes them over MQTT.

The recording (one multisensor device in an Italian city, hourly, 10 March 2004 to 4 April 2005) is cut
into consecutive quarters of 13 weeks. Station k replays quarter k, shifted back by k x 13 weeks so
that all stations report over the same weeks: every value is a real reading, and each keeps its hour of
day and weekday. Readings are published as a station's gateway would forward them: JSON with the
event time in epoch seconds and the analyser's raw values, including its -200 "no reading" sentinels.

    python examples/sensors/air_quality/stations.py --broker mqtt://127.0.0.1:1883 --rate 200
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "AirQualityUCI.csv.gz"
WEEK_S = 7 * 24 * 3600
QUARTER_S = 13 * WEEK_S
CET_S = 3600  # the recording is in local time, CET (UTC+1), with no daylight-saving jumps

# station -> the gateway node its readings enter the network at (see topology.toml)
STATIONS = {"north": "node1", "harbour": "node2", "station-sq": "node3", "hospital": "node3"}
FIELDS = {"CO(GT)": "co", "NO2(GT)": "no2", "T": "temp", "RH": "rh"}
SCHEMA = {"time": "int64", "co": "float64", "no2": "float64", "temp": "float64", "rh": "float64"}


def topic(station: str) -> str:
    return f"aq/{station}/readings"


def load_recording(path: Path = DATA) -> dict[str, np.ndarray]:
    """The whole recording as columns: time (epoch s, UTC) and the raw values (with -200 sentinels)."""
    times, values = [], {name: [] for name in FIELDS.values()}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            if not row.get("Date"):
                continue  # the file ends with lines of bare ';'
            d, m, y = row["Date"].split("/")
            times.append(f"{y}-{m}-{d}T{row['Time'].replace('.', ':')}")
            for col, name in FIELDS.items():
                values[name].append(float(row[col].replace(",", ".")))
    t = np.array(times, dtype="datetime64[s]").astype(np.int64) - CET_S
    return {"time": t, **{k: np.array(v) for k, v in values.items()}}


def station_readings(hours: int | None = None, path: Path = DATA) -> dict[str, dict[str, np.ndarray]]:
    """Each station's readings (the first `hours` of them, or all): columns as in SCHEMA, plus station."""
    rec = load_recording(path)
    start = int(rec["time"][0])
    out = {}
    for k, station in enumerate(STATIONS):
        mask = (rec["time"] >= start + k * QUARTER_S) & (rec["time"] < start + (k + 1) * QUARTER_S)
        cols = {name: col[mask][:hours] for name, col in rec.items()}
        cols["time"] = cols["time"] - k * QUARTER_S
        out[station] = cols
    return out


@dataclass
class ReplayStats:
    published: int = 0
    seconds: float = 0.0


class Replayer:
    """One thread per station publishing its readings as JSON, QoS 1, at `rate` readings per second each."""

    def __init__(self, broker: str, readings: dict[str, dict[str, np.ndarray]], rate: float = 200.0) -> None:
        self.broker = urlparse(broker)
        self.readings = readings
        self.rate = rate
        self.stats = {station: ReplayStats() for station in readings}
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> Replayer:
        for station in self.readings:
            t = threading.Thread(target=self._publish, args=(station,), name=f"replay-{station}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _publish(self, station: str) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"station-{station}")
        try:
            client.connect(self.broker.hostname or "127.0.0.1", self.broker.port or 1883)
            client.loop_start()
            cols = self.readings[station]
            names = [n for n in SCHEMA if n != "time"]
            started = time.perf_counter()
            for i in range(len(cols["time"])):
                payload = {"time": int(cols["time"][i]), **{n: float(cols[n][i]) for n in names}}
                client.publish(topic(station), json.dumps(payload), qos=1).wait_for_publish(10)
                self.stats[station].published += 1
                ahead = (i + 1) / self.rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            self.stats[station].seconds = time.perf_counter() - started
        except Exception as exc:  # reported by the caller: a replayer that stops early must not go unnoticed
            self.errors.append(f"station {station}: {exc!r}")
        finally:
            client.loop_stop()
            client.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish the UCI air-quality recording as several stations.")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="the MQTT broker to publish to (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--rate", type=float, default=200.0, help="readings per second per station")
    parser.add_argument("--hours", type=int, default=None, help="replay only the first N hours of each station")
    args = parser.parse_args(argv)
    replay = Replayer(args.broker, station_readings(args.hours), args.rate).start()
    replay.join()
    for station, s in replay.stats.items():
        print(f"{station}: {s.published} readings in {s.seconds:.1f} s")
    for e in replay.errors:
        print(f"error: {e}")
    return 1 if replay.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
