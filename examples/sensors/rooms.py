"""Smart campus: per-room comfort from office sensors (UCI Occupancy Detection data).

Three recordings are replayed as three rooms. For every room and 10 minutes: mean CO2, temperature
range and how much of the time the room was occupied; an alert stream for stuffy air (CO2 over
1000 ppm); malformed rows are kept in a dead-letter file.

    microstream run examples/sensors/rooms.py          # on this machine
    microstream submit examples/sensors/rooms.py       # on a cluster (e.g. `microstream cluster up`)
"""

from pathlib import Path

import microstream as ms

DATA = Path(__file__).parent / "data"
OUT = Path("out")

p = ms.Pipeline("rooms")
rooms = [
    p.read_csv(DATA / file, time="date", tags={"room": room}, usecols=["date", "Temperature", "CO2", "Occupancy"])
    for room, file in (("A", "datatraining.txt"), ("B", "datatest.txt"), ("C", "datatest2.txt"))
]
readings = p.union(*rooms).filter(lambda b: (b["CO2"] > 0) & (b["CO2"] < 5000), name="plausible_co2")

comfort = (
    readings.key_by("room")
    .window(ms.tumbling(minutes=10), lateness="1min")
    .aggregate(
        co2=ms.agg.mean("CO2"),
        t_min=ms.agg.min("Temperature"),
        t_max=ms.agg.max("Temperature"),
        occupied=ms.agg.mean("Occupancy"),
        n=ms.agg.count(),
    )
    .with_parallelism(3)  # on a cluster: three window tasks, hash-partitioned by room
)
comfort.sink(ms.sinks.jsonl(OUT / "rooms.jsonl"))

stuffy = comfort.filter(lambda b: b["co2"] > 1000, name="stuffy_air")
stuffy.sink(ms.sinks.csv(OUT / "stuffy.csv"))
p.dead_letters().sink(ms.sinks.jsonl(OUT / "dead_letters.jsonl"))

if __name__ == "__main__":
    result = p.run()
    print(f"wrote {OUT / 'rooms.jsonl'} ({result.records_out['jsonl']:,} windows) and "
          f"{OUT / 'stuffy.csv'} ({result.records_out['csv']:,} stuffy windows)")
