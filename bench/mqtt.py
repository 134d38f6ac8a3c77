"""MQTT ingest: microstream's MQTT source against a hand-written paho subscriber, on a real mosquitto.

    python bench/mqtt.py [--messages N] [--repeat R]   -> bench/results/mqtt.json

Two measurements, each side by side with its baseline in the same run:

1. **decoding** N JSON payloads of the air-quality demo's shape into columns: the source's way (the payloads
   of a poll joined and parsed in one pass by the numba JSON parser behind `read_jsonl`) against the usual
   hand-written way (`json.loads` per message, then one numpy array per field);
2. **end to end** from the broker: N messages (QoS 1) are queued for a persistent session first, then
   drained, decoded and counted per station in a 1-hour window by a `read_mqtt` pipeline, against a bare
   paho client that drains the same session with `json.loads` per message into lists (no windows at all).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, table, write_json  # noqa: E402

FIELDS = {"co": "float", "no2": "float", "temp": "float", "rh": "float"}


def payloads(n: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    t0 = 1_078_938_000
    return [json.dumps({"time": t0 + 3600 * i, "co": round(float(rng.gamma(2, 1)), 1),
                        "no2": float(rng.integers(20, 300)), "temp": round(float(rng.normal(18, 8)), 1),
                        "rh": round(float(rng.uniform(10, 90)), 1)}).encode() for i in range(n)]


def decode_batch(msgs: list[bytes]) -> dict[str, np.ndarray]:
    from microstream.formats.parsing import parse_jsonl

    result = parse_jsonl(b"\n".join(msgs), {"time": "time", **FIELDS}, time_unit="s")
    return result.columns


def decode_per_message(msgs: list[bytes]) -> dict[str, np.ndarray]:
    records = [json.loads(m) for m in msgs]
    cols = {"time": np.array([r["time"] for r in records], np.int64) * 1_000_000_000}
    for f in FIELDS:
        cols[f] = np.array([r[f] for r in records], np.float64)
    return cols


def queue_messages(broker, client_id: str, msgs: list[bytes], stations: int = 4) -> None:
    """Create the persistent session `client_id` (subscribed to aq/+/readings) and queue `msgs` for it."""
    import paho.mqtt.client as mqtt

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    ok = threading.Event()
    sub.on_subscribe = lambda *_: ok.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe("aq/+/readings", qos=1)
    ok.wait(10)
    sub.disconnect()
    sub.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(1000)
    up = threading.Event()
    pub.on_connect = lambda *_: up.set()
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    up.wait(10)
    for start in range(0, len(msgs), 5000):  # in chunks: paho refuses to queue without bound
        infos = [pub.publish(f"aq/st{i % stations}/readings", msgs[i], qos=1)
                 for i in range(start, min(start + 5000, len(msgs)))]
        for info in infos:
            info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()


def ingest_microstream(broker, client_id: str, n: int) -> int:
    import microstream as ms

    p = ms.Pipeline("mqtt_bench")
    out = ms.sinks.collect()
    (p.read_mqtt("aq/+/readings", broker.url, schema=FIELDS, time="time", time_unit="s", topic_columns=("station",),
                 client_id=client_id, limit=n, batch_size=8192, name="aq")
     .key_by("station").window(ms.tumbling(hours=1)).aggregate(n=ms.agg.count(), co=ms.agg.mean("co"))
     .sink(out))
    p.run(verbose=False)
    return int(out.batch()["n"].sum())


def ingest_paho(broker, client_id: str, n: int) -> int:
    import paho.mqtt.client as mqtt

    rows: list[dict] = []
    done = threading.Event()

    def on_message(client, userdata, message):
        record = json.loads(message.payload)
        record["station"] = message.topic.split("/")[1]
        rows.append(record)
        if len(rows) >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    done.wait(120)
    c.disconnect()
    c.loop_stop()
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.messages
    msgs = payloads(n)
    decode_batch(msgs[:100])  # compile the parser (cached on disk after the first run)
    batch_s, _, cols = best_of(lambda: decode_batch(msgs), args.repeat)
    loop_s, _, ref = best_of(lambda: decode_per_message(msgs), args.repeat)
    assert all(np.array_equal(cols[k], ref[k]) for k in ref), "the two decoders disagree"

    from microstream.connectors.broker import Mosquitto, ensure_mosquitto

    ensure_mosquitto()
    e2e = {"microstream": [], "paho": []}
    with Mosquitto() as broker:
        for r in range(args.repeat):
            for name, fn in (("microstream", ingest_microstream), ("paho", ingest_paho)):
                cid = f"bench-{name}-{r}"
                queue_messages(broker, cid, msgs)
                started = time.perf_counter()
                got = fn(broker, cid, n)
                e2e[name].append(time.perf_counter() - started)
                assert got == n, f"{name} received {got} of {n} messages"
    ms_s, paho_s = float(np.median(e2e["microstream"])), float(np.median(e2e["paho"]))

    rows = [("", "messages/s", "vs baseline"),
            ("decode: batch parser (microstream)", f"{n / batch_s:,.0f}", f"{loop_s / batch_s:.2f}x"),
            ("decode: json.loads per message", f"{n / loop_s:,.0f}", "1.00x"),
            ("broker -> windows: read_mqtt pipeline", f"{n / ms_s:,.0f}", f"{paho_s / ms_s:.2f}x"),
            ("broker -> lists: bare paho + json.loads", f"{n / paho_s:,.0f}", "1.00x")]
    print(f"{n:,} JSON messages of 5 fields (median of {args.repeat})")
    print(table(rows))
    path = write_json("mqtt", {"messages": n, "repeat": args.repeat,
                               "decode": {"batch_s": batch_s, "per_message_s": loop_s, "speedup": loop_s / batch_s},
                               "end_to_end": {"microstream_s": ms_s, "paho_s": paho_s, "ratio": paho_s / ms_s,
                                              "runs": e2e}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
