"""The MQTT source and sink against a real mosquitto on loopback: wildcards, QoS 0 and 1, JSON and SenML,
dead letters, the sink, and reconnecting when the broker restarts."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import microstream as ms
from tests.connectors.conftest import Subscriber, connect, prime, publish

T0 = 1_700_000_000  # epoch seconds


def _collect(stream):
    out = ms.sinks.collect()
    stream.sink(out)
    return out


def test_wildcards_put_the_station_from_the_topic_in_a_column(broker):
    topics = ["aq/+/readings", "campus/+/#"]
    prime(broker, "wild", topics)
    messages = [(f"aq/st{i % 3}/readings", {"time": T0 + i, "pm25": 10.0 + i, "ok": i % 2}) for i in range(9)]
    messages.insert(4, ("aq/st1/status", {"time": T0, "pm25": -1.0, "ok": 0}))          # not subscribed
    messages.append(("campus/lib/floor2/air", {"time": T0 + 100, "pm25": 5.5, "ok": 1}))  # '#' matches deeper
    publish(broker, messages)
    p = ms.Pipeline("wild")
    out = _collect(p.read_mqtt(topics, broker.url, schema={"pm25": "float", "ok": "int"},
                               topic_columns=("station",), client_id="wild", limit=10))
    result = p.run()
    b = out.batch()
    assert result.records_in["read_mqtt"] == 10 and result.dead_letter_count == 0
    assert b["station"].tolist() == [f"st{i % 3}" for i in range(9)] + ["lib"]
    assert b["time"].tolist() == [(T0 + i) * 10**9 for i in range(9)] + [(T0 + 100) * 10**9]
    assert b["pm25"].tolist() == [10.0 + i for i in range(9)] + [5.5]
    assert b["ok"].dtype == np.int64 and b["ok"].tolist() == [i % 2 for i in range(9)] + [1]
    assert p.graph.nodes[0].out_schemas["out"].names == ["time", "station", "pm25", "ok"]


@pytest.mark.parametrize("unit, stamp, expected", [
    ("ms", T0 * 1000 + 250, T0 * 10**9 + 250_000_000),
    ("ns", T0 * 10**9 + 7, T0 * 10**9 + 7),
    ("s", T0 + 0.5, T0 * 10**9 + 500_000_000),
    ("s", "2023-11-14T22:13:20.125Z", T0 * 10**9 + 125_000_000),
    ("s", "2023-11-14T23:13:20+01:00", T0 * 10**9),
])
def test_event_time_from_the_payload(broker, unit, stamp, expected):
    prime(broker, "times", "t/#")
    publish(broker, [("t/a", {"ts": stamp, "v": 1.0})])
    p = ms.Pipeline("times")
    out = _collect(p.read_mqtt("t/#", broker.url, schema={"v": "float"}, time="ts", time_unit=unit,
                               client_id="times", limit=1))
    p.run()
    assert out.batch()["ts"].tolist() == [expected]


def test_arrival_time_when_the_payload_has_none(broker):
    prime(broker, "arrive", "x")
    before = time.time_ns()
    publish(broker, [("x", {"v": 2.0})])
    p = ms.Pipeline("arrive")
    out = _collect(p.read_mqtt("x", broker.url, schema={"v": "float"}, time=None, client_id="arrive", limit=1))
    p.run()
    t = out.batch()["time"][0]
    assert before <= t <= time.time_ns()


def test_qos1_keeps_order_and_everything_published_while_the_job_was_away(broker):
    prime(broker, "q1", "s/+")
    n = 2000
    publish(broker, [(f"s/{i % 4}", {"time": T0 + i, "i": i}) for i in range(n)])
    p = ms.Pipeline("q1")
    out = _collect(p.read_mqtt("s/+", broker.url, schema={"i": "int"}, qos=1, client_id="q1", limit=n,
                               batch_size=256))
    p.run()
    assert out.batch()["i"].tolist() == list(range(n))


def test_qos0_is_at_most_once_and_delivers_while_connected(broker):
    """No session: only what is published while the source is subscribed arrives, once each, in order."""
    got: list[int] = []
    p = ms.Pipeline("q0")
    p.read_mqtt("q0/+", broker.url, schema={"i": "int"}, qos=0, idle_timeout=0.5).sink(
        ms.sinks.callback(lambda b: got.extend(b["i"].tolist())))
    runner = threading.Thread(target=p.run)
    runner.start()
    client = connect(broker)
    i = 0
    deadline = time.monotonic() + 20
    while len(got) < 200 and time.monotonic() < deadline:  # publish until the subscription is surely live
        client.publish(f"q0/{i % 2}", json.dumps({"time": T0 + i, "i": i}), qos=0)
        i += 1
        time.sleep(0.002)
    last = i
    client.disconnect()
    client.loop_stop()
    runner.join(20)
    assert not runner.is_alive()
    assert len(got) >= 200
    assert got == list(range(got[0], last)), "after the first message arrived, every later one must follow in order"


def test_senml_packs_resolve_base_name_time_unit_and_value(broker):
    prime(broker, "senml", "dev/+/senml")
    packs = [
        ("dev/n1/senml", [{"bn": "urn:dev:n1:", "bt": T0, "bu": "Cel", "n": "temp", "v": 21.5},
                          {"n": "temp", "t": 10, "v": 22.0},
                          {"n": "rh", "u": "%RH", "t": 10, "v": 40},
                          {"n": "door", "vb": True},
                          {"n": "label", "vs": "lab 1"}]),
        ("dev/n2/senml", [{"bn": "n2/", "bt": T0 + 0.25, "bv": 100, "n": "co2", "v": 5}]),
        ("dev/n2/senml", [{"n": "n2/abs", "t": T0 + 60, "v": -1.5}]),  # no base: bn/bt do not leak across packs
    ]
    publish(broker, packs)
    p = ms.Pipeline("senml")
    out = _collect(p.read_mqtt("dev/+/senml", broker.url, format="senml", topic_columns=("node",),
                               client_id="senml", limit=3))
    result = p.run()
    assert result.dead_letter_count == 0
    b = out.batch()
    assert b["node"].tolist() == ["n1"] * 5 + ["n2", "n2"]
    assert b["name"].tolist() == ["urn:dev:n1:temp", "urn:dev:n1:temp", "urn:dev:n1:rh", "urn:dev:n1:door",
                                  "urn:dev:n1:label", "n2/co2", "n2/abs"]
    assert b["time"].tolist() == [T0 * 10**9, (T0 + 10) * 10**9, (T0 + 10) * 10**9, T0 * 10**9, T0 * 10**9,
                                  T0 * 10**9 + 250_000_000, (T0 + 60) * 10**9]
    assert b["unit"].tolist() == ["Cel", "Cel", "%RH", "Cel", "Cel", "", ""]
    np.testing.assert_array_equal(b["value"], [21.5, 22.0, 40.0, 1.0, np.nan, 105.0, -1.5])
    assert b["text"].tolist() == ["", "", "", "", "lab 1", "", ""]


def test_senml_relative_time_is_from_arrival(broker):
    prime(broker, "rel", "r")
    before = time.time_ns()
    publish(broker, [("r", [{"n": "x", "t": -5, "v": 1}])])
    p = ms.Pipeline("rel")
    out = _collect(p.read_mqtt("r", broker.url, format="senml", client_id="rel", limit=1))
    p.run()
    t = int(out.batch()["time"][0])
    assert before - 5 * 10**9 <= t <= time.time_ns() - 5 * 10**9 + 10**6


def test_malformed_payloads_go_to_dead_letters_and_nothing_else_is_lost(broker):
    prime(broker, "dirty", "aq/+/readings")
    messages = [
        ("aq/a/readings", json.dumps({"time": T0, "pm25": 1.0})),
        ("aq/a/readings", "{not json"),                                   # bad JSON
        ("aq/b/readings", json.dumps({"time": T0 + 2})),                  # missing field
        ("aq/b/readings", json.dumps({"time": T0 + 3, "pm25": "high"})),  # wrong type
        ("aq/b/readings", json.dumps({"time": "yesterday", "pm25": 4.0})),  # bad time
        ("aq/c/readings", ""),                                            # empty payload
        ("aq/c/readings", json.dumps({"time": T0 + 6, "pm25": {"v": 1}})),  # nested, not a number
        ("aq/c/readings", json.dumps({"time": T0 + 7, "pm25": 7.0}, indent=1)),  # pretty-printed: fine
        ("aq/a/readings", json.dumps([1, 2])),                            # not an object
        ("aq/a/readings", json.dumps({"time": T0 + 9, "pm25": 9.0})),
    ]
    publish(broker, messages)
    p = ms.Pipeline("dirty")
    out = _collect(p.read_mqtt("aq/+/readings", broker.url, schema={"pm25": "float"}, topic_columns=("station",),
                               client_id="dirty", limit=len(messages)))
    dead = _collect(p.dead_letters())
    result = p.run()
    b = out.batch()
    assert b["pm25"].tolist() == [1.0, 7.0, 9.0] and b["station"].tolist() == ["a", "c", "a"]
    assert result.dead_letter_count == 7 == len(messages) - b.num_rows
    letters = dead.records()
    assert [d["position"] for d in letters] == ["aq/a/readings#2", "aq/b/readings#3", "aq/b/readings#4",
                                                "aq/b/readings#5", "aq/c/readings#6", "aq/c/readings#7",
                                                "aq/a/readings#9"]
    reasons = [d["reason"] for d in letters]
    assert "invalid JSON" in reasons[0]
    assert "missing field 'pm25'" in reasons[1]
    assert "'high'" in reasons[2] and "float" in reasons[2]
    assert "time" in reasons[3] and "yesterday" in reasons[3]
    assert reasons[4] == "empty payload"
    assert "not a scalar" in reasons[5]
    assert "not a JSON object" in reasons[6]
    assert letters[0]["row"] == "{not json" and letters[0]["operator"] == "read_mqtt"


def test_malformed_senml_goes_to_dead_letters(broker):
    prime(broker, "dirty-senml", "d")
    publish(broker, [("d", [{"n": "a", "v": 1}, {"v": 2}, {"n": "c", "v": "3"}, 7, {"n": "e"}]),
                     ("d", {"n": "not-a-pack", "v": 1}), ("d", "[{"), ("d", [{"bn": "x/", "n": "ok", "vs": "y"}])])
    p = ms.Pipeline("dirty-senml")
    out = _collect(p.read_mqtt("d", broker.url, format="senml", client_id="dirty-senml", limit=4))
    dead = _collect(p.dead_letters())
    p.run()
    assert out.batch()["name"].tolist() == ["a", "x/ok"]
    letters = [(d["position"], d["reason"]) for d in dead.records()]
    assert letters == [("d#1[1]", "record has no name (n or bn)"), ("d#1[2]", "field 'v' is not a number"),
                       ("d#1[3]", "record is not a JSON object"),
                       ("d#1[4]", "record has no value (v, vs, vb, vd or s)"),
                       ("d#2", "not a SenML pack (a JSON array of records)"),
                       ("d#3", letters[5][1])]
    assert letters[5][1].startswith("invalid JSON")


def test_build_time_errors_name_the_fix(broker):
    p = ms.Pipeline("bad")
    with pytest.raises(ms.PipelineError, match="needs schema="):
        p.read_mqtt("a/b", broker.url)
    with pytest.raises(ms.PipelineError, match="invalid topic filter"):
        p.read_mqtt("a/#/b", broker.url, schema={"v": "float"})
    with pytest.raises(ms.PipelineError, match="'\\+' wildcard"):
        p.read_mqtt("a/+/b", broker.url, schema={"v": "float"}, topic_columns=("x", "y"))
    with pytest.raises(ms.PipelineError, match="not an MQTT URL"):
        p.read_mqtt("a", "http://x", schema={"v": "float"})
    src = p.from_iterable([{"v": 1.0}])
    with pytest.raises(ms.PipelineError, match="names column 'station', which the stream lacks"):
        src.sink(ms.sinks.mqtt("aq/{station}/aqi", broker.url))


def test_sink_round_trip(broker):
    sub = Subscriber(broker, "aq/+/aqi")
    p = ms.Pipeline("pub")
    recs = [{"station": f"st{i % 2}", "t": (T0 + i) * 10**9, "aqi": float(i), "n": i} for i in range(50)]
    recs[3]["aqi"] = float("nan")
    p.from_iterable(recs, time="t").sink(ms.sinks.mqtt("aq/{station}/aqi", broker.url, qos=1))
    p.run()
    got = sub.wait(50)
    sub.close()
    assert len(got) == 50
    assert [t for t, _ in got] == [f"aq/st{i % 2}/aqi" for i in range(50)]
    payloads = [json.loads(m) for _, m in got]
    assert payloads[0] == {"station": "st0", "t": T0 * 10**9, "aqi": 0.0, "n": 0}
    assert payloads[3]["aqi"] is None  # NaN is null: the payload stays valid JSON
    assert [x["n"] for x in payloads] == list(range(50))


def test_sink_then_source_round_trip_through_the_broker(broker):
    prime(broker, "back", "rt/+")
    p = ms.Pipeline("out")
    p.from_iterable([{"k": f"s{i % 3}", "time": (T0 + i) * 10**9, "v": i * 0.5} for i in range(30)], time="time") \
        .sink(ms.sinks.mqtt("rt/{k}", broker.url))
    p.run()
    q = ms.Pipeline("back")
    out = _collect(q.read_mqtt("rt/+", broker.url, schema={"k": "str", "v": "float"}, time_unit="ns",
                               topic_columns=("level",), client_id="back", limit=30))
    q.run()
    b = out.batch()
    assert b["v"].tolist() == [i * 0.5 for i in range(30)] and b["k"].tolist() == b["level"].tolist()
    assert b["time"].tolist() == [(T0 + i) * 10**9 for i in range(30)]


@pytest.mark.slow  # stops and restarts the broker mid-stream
def test_reconnects_after_the_broker_restarts_and_loses_nothing(broker, caplog):
    """QoS 1 through a broker restart mid-stream: the source reconnects (with a log line) and, with its persistent
    session, receives every message exactly once: those published before, during and after the restart."""
    prime(broker, "restart", "r/+")
    n = 300
    got: list[int] = []
    p = ms.Pipeline("restart")

    def slow(b):  # a slow consumer: at the restart, messages are buffered in the source and in flight
        got.extend(b["i"].tolist())
        time.sleep(0.01)

    p.read_mqtt("r/+", broker.url, schema={"i": "int"}, client_id="restart", idle_timeout=1.5, batch_size=1) \
        .sink(ms.sinks.callback(slow))
    runner = threading.Thread(target=lambda: p.run())
    with caplog.at_level("WARNING", logger="microstream.sources.mqtt"):
        runner.start()
        pub = connect(broker, "restart-publisher", clean=False)
        pub.reconnect_delay_set(0.05, 0.5)
        infos = []
        for i in range(n):
            if i == n // 3:
                deadline = time.monotonic() + 10
                while not got and time.monotonic() < deadline:
                    time.sleep(0.01)
                while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
                    time.sleep(0.01)  # (not wait_for_publish: it raises for a message queued while disconnected)
                assert len(got) < n // 3, "the consumer should lag behind"
                broker.stop()        # mid-stream: the source has messages read, buffered and in flight
                time.sleep(0.3)
                broker.start()       # same port, same persistence file
                deadline = time.monotonic() + 10
                while not pub.is_connected() and time.monotonic() < deadline:  # the publisher reconnects too
                    time.sleep(0.01)
            infos.append(pub.publish(f"r/{i % 3}", json.dumps({"time": T0 + i, "i": i}), qos=1))
        deadline = time.monotonic() + 20
        while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.disconnect()
        pub.loop_stop()
        runner.join(30)
    assert not runner.is_alive()
    assert sorted(got) == list(range(n)), f"lost {sorted(set(range(n)) - set(got))[:10]}"
    assert len(got) == n, "duplicates"
    reconnected = [r.getMessage() for r in caplog.records if "reconnected" in r.getMessage()]
    assert reconnected and "session kept" in reconnected[0]
    assert any("connection to" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)


def test_a_pipeline_reading_mqtt_runs_twice_with_identical_results(broker):
    """The graph holds the source's spec; each run makes its own client (same session id, so the broker keeps
    what is published between runs)."""
    prime(broker, "twice", "tw/+")
    p = ms.Pipeline("twice")
    out = _collect(p.read_mqtt("tw/+", broker.url, schema={"i": "int"}, qos=1, client_id="twice", limit=50))
    runs = []
    for _ in range(2):
        publish(broker, [(f"tw/{i % 2}", {"time": T0 + i, "i": i}) for i in range(50)])
        p.run(verbose=False)
        runs.append(out.batch()["i"].tolist())
    assert runs[0] == runs[1] == list(range(50))
