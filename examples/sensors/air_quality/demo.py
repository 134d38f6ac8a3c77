"""The microstream demo: air-quality stations over MQTT on an embedded cluster, with a live migration.

What it does, in order (each step prints what it sees):

1. starts a real MQTT broker (mosquitto) on loopback and an embedded cluster of four agents
   (node1..node3 are gateways, node4 the city data centre; see topology.toml), whose coordinator
   places jobs with the placement engine;
2. submits the job of pipeline.py with one MQTT source per station, named like the station's sensor:
   the engine puts each station's cleaning and pre-aggregation next to its gateway, and shows where;
3. replays the UCI recording as four stations publishing over MQTT (stations.py);
4. half-way through, the hospital station's feed fails over from gateway node3 to node1: its virtual
   node (MQTT subscriber and 8-hour windows, state included) migrates there while the stream runs;
5. when the feeds end, prints the air-quality bands and alerts, a summary (records, rates, the
   migration's downtime, where each operator ran), writes out/aq_placement.svg, and checks the
   results against the same operators run on the same readings locally, without any migration.

    python examples/sensors/air_quality/demo.py [--hours N] [--rate R]     (`make demo` runs it)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cloudpickle
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pipeline as aq  # noqa: E402 - the example's own modules, next to this file
import stations  # noqa: E402

import microstream as ms  # noqa: E402
from microstream.cluster import embedded as cluster  # noqa: E402
from microstream.cluster.client import Client, ClusterError  # noqa: E402
from microstream.connectors.broker import Mosquitto, ensure_mosquitto  # noqa: E402
from microstream.graph.physical import build_plan  # noqa: E402
from microstream.placement import Topology  # noqa: E402
from microstream.placement.solvers import placement_of  # noqa: E402
from microstream.viz.placement import placement_svg  # noqa: E402

TOPOLOGY = HERE / "topology.toml"
MOVING = "hospital"   # the station whose feed fails over ...
MOVE_TO = "node1"     # ... from its gateway node3 to this one
IDLE = 3.0            # a station's source ends this long after its last message


def sensor(station: str) -> str:
    return f"aq-{station}"


def client_id(station: str) -> str:
    return f"microstream-demo-{station}"


def open_sessions(broker: str) -> None:
    """Create each source's persistent MQTT session before anything is published, as a deployment's gateways
    have: the broker then keeps every reading for the job until its subscriber connects (and while it moves)."""
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt

    url = urlparse(broker)
    for station in stations.STATIONS:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(station), clean_session=False)
        subscribed = threading.Event()
        c.on_subscribe = lambda *_, done=subscribed: done.set()
        c.connect(url.hostname, url.port)
        c.loop_start()
        c.subscribe(stations.topic(station), qos=1)
        if not subscribed.wait(10):
            raise SystemExit(f"the broker at {broker} did not confirm the subscription for {station}")
        c.disconnect()
        c.loop_stop()


def mqtt_pipeline(broker: str, out: Path) -> tuple[ms.Pipeline, dict]:
    p = ms.Pipeline("air_quality")

    def source(station: str) -> ms.Stream:
        return p.read_mqtt(stations.topic(station), broker=broker, schema=stations.SCHEMA, time="time",
                           time_unit="s", qos=1, max_delay="3h", idle_timeout=IDLE, client_id=client_id(station),
                           name=sensor(station)).with_columns(station=_constant(station), name=f"tag_{station}")

    return p, aq.build(p, source, list(stations.STATIONS), out)


def reference_pipeline(readings: dict, out: Path) -> tuple[ms.Pipeline, dict]:
    """The same operators on the same readings, from memory, on the local runtime: what the cluster must match."""
    p = ms.Pipeline("air_quality_reference")

    def source(station: str) -> ms.Stream:
        cols = {**readings[station], "time": readings[station]["time"] * 1_000_000_000}  # epoch s -> ns
        return p.from_arrays(cols, time="time", name=sensor(station)).with_columns(
            station=_constant(station), name=f"tag_{station}")

    return p, aq.build(p, source, list(stations.STATIONS), out)


def _constant(value: str):
    return lambda b: np.full(len(b["time"]), value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, default=1000, help="hours of readings per station (default 1000)")
    parser.add_argument("--rate", type=float, default=60.0, help="readings per second per station (default 60)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where results go (default ./out)")
    parser.add_argument("--home", type=Path, default=None, help="the embedded cluster's directory (default: temporary)")
    args = parser.parse_args(argv)
    try:  # before a broker and a cluster are started for nothing (the core install has no MQTT client)
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        parser.exit(2, f"{parser.prog}: the demo (MQTT stations and sources) needs the Python package "
                       "'paho.mqtt.client'; in a clone: pip install -e '.[mqtt]' (make demo installs it)\n")
    args.out.mkdir(parents=True, exist_ok=True)
    cloudpickle.register_pickle_by_value(aq)  # the cluster's hosts cannot import this folder's modules
    ensure_mosquitto()
    readings = stations.station_readings(args.hours)
    n = sum(len(r["time"]) for r in readings.values())
    print(f"replaying {n:,} hourly readings of the UCI air-quality recording as {len(readings)} stations "
          f"({args.hours} hours each, {args.rate:g} readings/s per station)")
    with tempfile.TemporaryDirectory(prefix="microstream-demo-") as tmp, Mosquitto() as broker:
        home = args.home or Path(tmp) / "cluster"
        print(f"MQTT broker: mosquitto at {broker.url}")
        cluster.up(4, home, coordinator_args=["--topology", str(TOPOLOGY)])
        try:
            return run(args, home, broker.url, readings)
        finally:
            cluster.down(home)


def run(args, home: Path, broker: str, readings: dict) -> int:
    open_sessions(broker)
    p, sinks = mqtt_pipeline(broker, args.out)
    plan = build_plan(p.build())
    outcome: dict = {}

    def submit() -> None:  # blocks until the job ends, on its own connection
        try:
            with Client(cluster.address(home), timeout=120) as c:
                outcome["job"], outcome["result"] = c.submit(p, wait=True, progress=lambda s: None)
        except Exception as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=submit, daemon=True)
    started = time.perf_counter()
    waiter.start()
    with Client(cluster.address(home), timeout=120) as client:
        job, status = _wait_running(client)
        print("\nplacement (the engine puts each station's pre-aggregation next to its gateway):")
        print(_where(status))
        why = placement_of(plan, p.graph, Topology.load(TOPOLOGY), {v: i["agent"] for v, i in status["vnodes"].items()})
        print("why:\n" + "\n".join(f"  {v:<5} {reason}" for v, reason in sorted(why.explain.items())))
        replay = stations.Replayer(broker, readings, args.rate).start()
        half = len(readings[MOVING]["time"]) // 2
        while replay.running and replay.stats[MOVING].published < half:
            time.sleep(0.1)
        vnode = next(v for v, info in status["vnodes"].items() if sensor(MOVING) in info["tasks"])
        print(f"\nstation '{MOVING}' fails over from gateway {status['vnodes'][vnode]['agent']} to {MOVE_TO} after "
              f"{replay.stats[MOVING].published} readings: migrating its virtual node {vnode} while the stream runs")
        moved = _migrate(client, job, vnode, MOVE_TO)
        print(f"  moved: downtime {_ms(moved.get('downtime_s'))}, state {moved['state_bytes']:,} bytes")
        replay.join()
        traffic = client.status()["jobs"][job]["traffic"]  # measured while the feeds still ran, for the picture
        print(f"replay done: {sum(s.published for s in replay.stats.values()):,} readings published")
        waiter.join(120)
        final = client.status()["jobs"][job]
    if "error" in outcome or replay.errors:
        print(f"demo failed: {outcome.get('error') or replay.errors}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    _report(sinks)
    _summary(final, outcome["result"], seconds)
    svg = args.out / "aq_placement.svg"
    _draw(svg, plan, p.graph, final, traffic)
    print(f"placement after the run drawn in {svg} (edges labelled with the traffic measured at the end)")
    return _check(readings, sinks, args.out)


def _ms(seconds: float | None) -> str:
    """Downtime lasts until the moved node processes a record; None: none arrived after the move (the feed had
    ended while the new host started, and the old one processed everything before the cut)."""
    return "n/a (nothing left to process after the move)" if seconds is None else f"{seconds * 1000:.0f} ms"


def _draw(path: Path, plan, graph, final: dict, traffic: list[dict]) -> None:
    """The job's operators framed by the node each ran on at the end, over the topology as it now is."""
    topology = Topology.load(TOPOLOGY)
    # the station's feed enters at its new gateway now
    topology.sensors = [replace(s, node=MOVE_TO) if s.name == sensor(MOVING) else s for s in topology.sensors]
    assignment = {v: info["agent"] for v, info in final["vnodes"].items()}
    rates = {(t["from"], t["to"]): t["bytes_per_s"] for t in traffic}
    path.write_text(placement_svg(plan, graph, topology, placement_of(plan, graph, topology, assignment, rates)),
                    encoding="utf-8")


def _migrate(client: Client, job: str, vnode: str, to: str, patience: float = 30.0) -> dict:
    """Migrate, waiting for a move the coordinator is making on its own (one move per job at a time)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return client.migrate(job, vnode, to)
        except ClusterError as exc:
            if "already moving" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_running(client: Client, timeout: float = 60.0) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job, status in client.status()["jobs"].items():
            if status["state"] == "running" and all(v.get("agent") for v in status["vnodes"].values()):
                return job, status
        time.sleep(0.1)
    raise SystemExit("the job did not start within a minute: see the cluster logs")


def _where(status: dict) -> str:
    lines = []
    for vnode, info in sorted(status["vnodes"].items(), key=lambda kv: (kv[1]["agent"], kv[0])):
        ops = sorted({t.rsplit("[", 1)[0] for t in info["tasks"]})
        shown = ", ".join(ops[:4]) + (f" (+{len(ops) - 4} more)" if len(ops) > 4 else "")
        lines.append(f"  {info['agent']:<6} {vnode:<5} {shown}")
    return "\n".join(lines)


def _report(sinks: dict) -> None:
    aqi = sinks["aqi"].batch()
    alerts = sinks["alerts"].batch()
    print(f"\n{len(aqi['aqi']):,} station-hours with an air-quality index; hours per band:")
    for station in stations.STATIONS:
        mine = aqi["station"] == station
        counts = {name: int(((aqi["band_name"] == name) & mine).sum()) for name in aq.BANDS}
        shown = ", ".join(f"{name} {c}" for name, c in counts.items() if c)
        print(f"  {station:<11} peak AQI {aqi['aqi'][mine].max():5.0f}   {shown}")
    print(f"{len(alerts['band']):,} band alerts; the first ones:")
    for i in np.argsort(alerts["hour"], kind="stable")[:5]:
        direction = "up" if alerts["band_change"][i] > 0 else "down"
        print(f"  {alerts['hour'][i]}  {alerts['station'][i]:<11} {direction:>4} to {alerts['band_name'][i]} "
              f"(AQI {alerts['aqi'][i]:.0f})")


def _summary(final: dict, result, seconds: float) -> None:
    ops = {name: op for v in final["vnodes"].values() for name, op in v["operators"].items()}
    readings = sum(ops[sensor(s)]["records_out"] for s in stations.STATIONS)
    print(f"\nsummary: {readings:,} readings in, {result.records_out.get('aqi_csv', 0):,} AQI hours and "
          f"{result.records_out.get('alerts_csv', 0):,} alerts out in {seconds:.1f} s "
          f"({readings / seconds:,.0f} readings/s end to end), {result.dead_letter_count} dead letters")
    for m in final["migrations"]:
        print(f"  move of {m['vnode']}: {m['from']} -> {m['to']} ({m['reason']}): downtime {_ms(m.get('downtime_s'))} "
              f"(barrier alignment and snapshot {m.get('align_and_snapshot_s', 0) * 1000:.0f} ms), "
              f"{m.get('state_bytes', 0):,} bytes of state, {m['total_s']:.2f} s in all")
    print("where each operator ran at the end:")
    print(_where(final))


def _check(readings: dict, sinks: dict, out: Path) -> int:
    ref, ref_sinks = reference_pipeline(readings, Path(tempfile.mkdtemp(prefix="aq-reference-")))
    ref.run(verbose=False)
    same = all(sorted(map(str, sinks[k].records())) == sorted(map(str, ref_sinks[k].records())) for k in sinks)
    print(f"results identical to an unmigrated local run of the same operators: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
