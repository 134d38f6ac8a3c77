"""Water network: hourly flow per pipe and anomalous jumps, across a daylight-saving change.

`water-flow.csv` (from the `river` package) is an hourly pipe flow in l/s whose timestamps change
from +01:00 to +02:00 on 27 March 2022; read_csv turns both into UTC, so the local jump from 02:00 to
03:00 is an ordinary hour in event time. The recording also has gaps (up to 32 hours) and known
anomalies (drops to about 24 l/s).

Per pipe and hour: the mean flow and its change since the previous hour (`ms.state.delta`). An hour is
an anomaly when |delta| is more than 4 standard deviations of the hourly deltas over the previous
24 hours. The 24-hour statistics come from a sliding window (24 h every hour); the window that ends
where an hour starts is moved one hour forward (its event time + 1 h) and joined with that hour, so
each hour is compared with the 24 hours before it and never with itself.

    microstream run examples/sensors/water_flow.py

writes out/water_hourly.csv (every hour with a 24-hour history) and out/water_anomalies.csv.
"""

from pathlib import Path

import numpy as np

import microstream as ms

DATA = Path(__file__).parent / "data"
OUT = Path("out")

HOUR = ms.duration(hours=1)
SIGMAS = 4.0
MIN_DELTAS = 12  # judge an hour only when at least 12 of the previous 24 hours have a delta

p = ms.Pipeline("water_flow")
# The file holds one pipe: the tag names it, and everything below is per pipe (keyed by "pipe"), so the
# same pipeline serves a network whose files are read the same way and merged with p.union(...).
flow = p.read_csv(DATA / "water-flow.csv", time="Time", tags={"pipe": "main"}, key="pipe")

hourly = (
    flow.window(ms.tumbling(hours=1))
    .aggregate(flow=ms.agg.mean("Water flow [l/s]"), name="hourly_flow")
    .stateful_map(ms.state.delta, "flow", out="delta", name="delta")  # per pipe; NaN for its first hour
)
deltas = hourly.filter(lambda b: ~np.isnan(b["delta"]), name="has_delta")  # NaN would poison the std

past_24h = (
    deltas.window(ms.sliding("24h", "1h"))
    .aggregate(delta_std=ms.agg.std("delta"), n_deltas=ms.agg.count(), name="stats_24h")
    # the window [h - 24 h, h) describes the hour [h, h + 1 h): move its event time into that hour
    .with_columns(window_time=lambda b: b["window_time"] + HOUR, name="to_next_hour")
)

judged = (
    deltas.join(past_24h, ms.tumbling(hours=1), name="hour_vs_past_24h")  # window_start = the hour
    .filter(lambda b: b["n_deltas"] >= MIN_DELTAS, name="enough_history")
    .with_columns(anomaly=lambda b: np.abs(b["delta"]) > SIGMAS * b["delta_std"], name="flag")
    .select("pipe", "window_start", "flow", "delta", "delta_std", "n_deltas", "anomaly")
)
judged.sink(ms.sinks.csv(OUT / "water_hourly.csv"), name="hourly_csv")
anomalies = judged.filter(lambda b: b["anomaly"], name="anomalies")
anomalies.sink(ms.sinks.csv(OUT / "water_anomalies.csv"), name="anomalies_csv")
found = ms.sinks.collect()
anomalies.sink(found, name="anomalies_mem")
p.dead_letters().sink(ms.sinks.jsonl(OUT / "water_dead_letters.jsonl"), name="dead_jsonl")

if __name__ == "__main__":
    result = p.run()
    print(f"wrote {OUT / 'water_hourly.csv'} ({result.records_out['hourly_csv']:,} hours) and "
          f"{OUT / 'water_anomalies.csv'} ({result.records_out['anomalies_csv']} anomalies)")
    for r in found.records():
        hour = np.datetime64(r["window_start"], "ns").astype("datetime64[m]")
        print(f"  {hour}Z  {r['pipe']}  flow {r['flow']:7.2f} l/s  delta {r['delta']:+7.2f}  "
              f"(4 sd = {SIGMAS * r['delta_std']:.2f})")
