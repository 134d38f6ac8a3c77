"""Air-quality monitoring: per-station pre-aggregation at the gateways, an air-quality index, band alerts.

For every station (its readings arrive over MQTT at the gateway it is attached to):

- clean the analyser's -200 "no reading" sentinels (they become NaN and are left out of the means);
- the rolling 8-hour mean of CO (an 8-hour window every hour, kept with at least 6 measured hours, the
  EU data-coverage rule) and the hourly mean of NO2: the *pre-aggregation*, which the placement engine
  puts next to the station's gateway so that only a few records per hour cross the campus network;

then, centrally:

- each pollutant's sub-index of the US EPA Air Quality Index (CO from its 8-hour mean in ppm, NO2 from
  its 1-hour mean in ppb), and the station's AQI for the hour: the higher of the two;
- its band (Good, Moderate, Unhealthy for sensitive groups, ...) and an alert each time a station's
  band changes.

`build(p, source)` wires it onto any source of readings, so that the demo can run the same operators on
MQTT feeds on a cluster and, as the reference, on the same readings in memory on the local runtime.

    python examples/sensors/air_quality/demo.py      # (what `make demo` runs)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

import microstream as ms

MIN_HOURS = 6
# EPA AQI breakpoints (40 CFR 58 App. G): concentration -> index, interpolated linearly within each band.
# The EPA truncates concentrations and leaves small gaps between bands; interpolating over a continuous
# scale is the usual streaming simplification and moves an index by at most one point.
CO_PPM = [0.0, 4.4, 9.4, 12.4, 15.4, 30.4, 50.4]
NO2_PPB = [0.0, 53.0, 100.0, 360.0, 649.0, 1249.0, 2049.0]
INDEX = [0.0, 50.0, 100.0, 150.0, 200.0, 300.0, 500.0]
BANDS = np.array(["good", "moderate", "unhealthy for sensitive groups", "unhealthy", "very unhealthy",
                  "hazardous"])
# mass concentration -> mixing ratio at 25 C and 1 atm: ppm = mg/m3 * 24.45 / molar mass
CO_MG_TO_PPM = 24.45 / 28.01
NO2_UG_TO_PPB = 24.45 / 46.0055


def missing_as_nan(column: str):
    """The analyser writes -200 for an hour it did not measure: make those NaN."""
    return lambda b: np.where(b[column] == -200.0, np.nan, b[column])


def co_index(b):
    return np.interp(b["co_8h"] * CO_MG_TO_PPM, CO_PPM, INDEX)


def no2_index(b):
    return np.interp(b["no2_1h"] * NO2_UG_TO_PPB, NO2_PPB, INDEX)


def band_of(b):
    """Band number 0..5 of an AQI value (0-50 good, 51-100 moderate, ...)."""
    return np.searchsorted(np.array(INDEX[1:-1]), np.ceil(b["aqi"]), side="left").astype(np.float64)


def band_name(b):
    return BANDS[b["band"].astype(np.int64)]


def hour_text(b):
    return b["window_start"].astype("datetime64[ns]").astype("datetime64[m]").astype(str)


def build(p: ms.Pipeline, source: Callable[[str], ms.Stream], stations, out: Path) -> dict[str, ms.Sink]:
    """The operators of the job on `source(station)` for each station; returns its in-memory sinks."""
    indices = []
    for station in stations:
        readings = (source(station)
                    .with_columns(name=f"clean_{station}", co=missing_as_nan("co"), no2=missing_as_nan("no2"))
                    .key_by("station", name=f"by_station_{station}"))
        co_8h = (readings.filter(lambda b: ~np.isnan(b["co"]), name=f"co_measured_{station}")
                 .window(ms.sliding("8h", "1h"))
                 .aggregate(co_8h=ms.agg.mean("co"), hours=ms.agg.count(), name=f"co_8h_{station}")
                 .filter(lambda b: b["hours"] >= MIN_HOURS, name=f"co_enough_hours_{station}")
                 .with_columns(aqi=co_index, name=f"co_index_{station}")
                 .select("station", "window_time", "aqi", name=f"co_aqi_{station}"))
        no2_1h = (readings.filter(lambda b: ~np.isnan(b["no2"]), name=f"no2_measured_{station}")
                  .window(ms.tumbling(hours=1))
                  .aggregate(no2_1h=ms.agg.mean("no2"), name=f"no2_1h_{station}")
                  .with_columns(aqi=no2_index, name=f"no2_index_{station}")
                  .select("station", "window_time", "aqi", name=f"no2_aqi_{station}"))
        indices += [co_8h, no2_1h]

    hourly = (p.union(*indices, name="sub_indices").key_by("station")
              .window(ms.tumbling(hours=1))
              .aggregate(aqi=ms.agg.max("aqi"), pollutants=ms.agg.count(), name="station_aqi")
              .with_columns(band=band_of, name="band")
              .stateful_map(ms.state.delta, "band", out="band_change", name="band_change"))
    report = hourly.with_columns(hour=hour_text, band_name=band_name, name="report").select(
        "station", "hour", "aqi", "pollutants", "band", "band_name", name="aqi_columns")
    alerts = (hourly.filter(lambda b: ~np.isnan(b["band_change"]) & (b["band_change"] != 0), name="band_crossed")
              .with_columns(hour=hour_text, band_name=band_name, name="alert_text")
              .select("station", "hour", "aqi", "band", "band_name", "band_change", name="alert_columns"))

    sinks = {"aqi": ms.sinks.collect(), "alerts": ms.sinks.collect()}
    report.sink(ms.sinks.csv(out / "aqi_hourly.csv"), name="aqi_csv")
    report.sink(sinks["aqi"], name="aqi_mem")
    alerts.sink(ms.sinks.csv(out / "aqi_alerts.csv"), name="alerts_csv")
    alerts.sink(sinks["alerts"], name="alerts_mem")
    p.dead_letters().sink(ms.sinks.jsonl(out / "aq_dead_letters.jsonl"), name="dead_jsonl")
    return sinks
