"""Poison payloads on a real mosquitto: deep nesting, a 50 MB message, invalid UTF-8, NaN literals and BOMs.
Each is a dead letter with its reason (or read, where a rule says so), the job finishes with every good row, and
with QoS 1 nothing comes back on the next run: no crash loop on redelivery."""

from __future__ import annotations

import json
import math

import pytest

import microstream as ms
from tests.connectors.conftest import prime, publish

T0 = 1_700_000_000
S = 1_000_000_000
BIG = 50 << 20


def _run(p, stream):
    out, dead = ms.sinks.collect(), ms.sinks.collect()
    stream.sink(out)
    p.dead_letters().sink(dead)
    p.run(verbose=False)
    return out, dead.records()


def _json(t: int, v) -> bytes:
    return b'{"time": %d, "v": %s}' % (T0 + t, v if isinstance(v, bytes) else json.dumps(v).encode())


def test_poison_json_messages_are_dead_letters_and_the_job_finishes(broker):
    prime(broker, "poison-json", "p/+")
    messages = [
        ("p/a", _json(0, 1.0)),
        ("p/a", _json(1, b"[" * 3000 + b"]" * 3000)),                  # 3,000 deep
        ("p/b", _json(2, b"1" * BIG)),                                  # 50 MB
        ("p/b", b'{"time": %d, "v": 3.0, "s": "caf\xe9"}' % (T0 + 3)),  # latin-1, not UTF-8
        ("p/c", _json(4, b"NaN")),                                      # Python's json writes it: read as NaN
        ("p/c", b"\xef\xbb\xbf" + _json(5, 5.0)),                       # a BOM: skipped
        ("p/c", _json(6, b"Infinity")),
        ("p/a", _json(7, 7.0)),
    ]
    publish(broker, messages)
    p = ms.Pipeline("poison-json")
    s = p.read_mqtt("p/+", broker.url, schema={"v": "float"}, topic_columns=("k",), client_id="poison-json",
                    limit=len(messages))
    out, dead = _run(p, s)
    b = out.batch()
    assert b["time"].tolist() == [(T0 + t) * S for t in (0, 4, 5, 6, 7)]
    assert b["v"][0] == 1.0 and math.isnan(b["v"][1]) and b["v"].tolist()[2:] == [5.0, math.inf, 7.0]
    assert [(d["position"], d["reason"]) for d in dead] == [
        ("p/a#2", "nesting deeper than max_depth (64)"),
        ("p/b#3", f"message of {len(messages[2][1]):,} bytes is larger than max_message_bytes ({1 << 20:,})"),
        ("p/b#4", "not valid UTF-8: byte 0xe9 at character 41")]
    assert len(dead[1]["row"]) < 1100 and dead[1]["row"].endswith(f"({len(messages[2][1]):,} bytes)")

    # QoS 1: the poison was acknowledged with the rest; the next run gets only what is new
    publish(broker, [("p/a", _json(8, 8.0))])
    p = ms.Pipeline("poison-json")
    out, dead = _run(p, p.read_mqtt("p/+", broker.url, schema={"v": "float"}, client_id="poison-json", limit=1))
    assert out.batch()["v"].tolist() == [8.0] and dead == []


def test_poison_senml_messages_no_recursion_error(broker):
    prime(broker, "poison-senml", "d")
    deep = b'[{"n": "deep", "v": ' + b"[" * 3000 + b"]" * 3000 + b"}]"
    messages = [
        ("d", json.dumps([{"n": "a", "v": 1}])),
        ("d", deep),                                                    # RecursionError in json before
        ("d", b"[" * 100_000 + b"]" * 100_000),
        ("d", b'[{"n": "big", "vs": "' + b"x" * BIG + b'"}]'),
        ("d", b'[{"n": "caf\xe9", "v": 2}]'),
        ("d", b'[{"n": "nan", "v": NaN}]'),
        ("d", b'\xef\xbb\xbf[{"n": "bom", "v": 3}]'),
        ("d", json.dumps([{"n": "z", "v": 4}])),
    ]
    publish(broker, messages)
    p = ms.Pipeline("poison-senml")
    out, dead = _run(p, p.read_mqtt("d", broker.url, format="senml", client_id="poison-senml",
                                    limit=len(messages)))
    b = out.batch()
    assert b["name"].tolist() == ["a", "nan", "bom", "z"]
    assert b["value"][0] == 1.0 and math.isnan(b["value"][1]) and b["value"].tolist()[2:] == [3.0, 4.0]
    assert [(d["position"], d["reason"].split(":")[0]) for d in dead] == [
        ("d#2", "nesting deeper than max_depth (64)"), ("d#3", "nesting deeper than max_depth (64)"),
        ("d#4", f"message of {len(messages[3][1]):,} bytes is larger than max_message_bytes ({1 << 20:,})"),
        ("d#5", "not valid UTF-8")]

    publish(broker, [("d", json.dumps([{"n": "new", "v": 5}]))])
    p = ms.Pipeline("poison-senml")
    out, dead = _run(p, p.read_mqtt("d", broker.url, format="senml", client_id="poison-senml", limit=1))
    assert out.batch()["name"].tolist() == ["new"] and dead == []


def test_a_decoder_failure_costs_the_message_that_caused_it(broker, monkeypatch):
    from microstream.formats import parsing

    real = parsing.parse_jsonl

    def flaky(data, *args, **kwargs):
        if b"boom" in data:
            raise MemoryError("simulated decoder failure")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(parsing, "parse_jsonl", flaky)
    prime(broker, "flaky", "f")
    publish(broker, [("f", _json(0, 1.0)), ("f", b'{"time": 1, "v": 2.0, "x": "boom"}'), ("f", _json(2, 3.0))])
    p = ms.Pipeline("flaky")
    out, dead = _run(p, p.read_mqtt("f", broker.url, schema={"v": "float"}, client_id="flaky", limit=3,
                                    batch_size=3))
    assert out.batch()["v"].tolist() == [1.0, 3.0]
    assert [(d["position"], d["reason"]) for d in dead] == [
        ("f#2", "could not decode: MemoryError: simulated decoder failure")]


def test_limits_are_options(broker):
    prime(broker, "limits", "l")
    publish(broker, [("l", _json(0, b"[[1]]")), ("l", _json(1, b"12345678901234567890"))])
    p = ms.Pipeline("limits")
    out, dead = _run(p, p.read_mqtt("l", broker.url, schema={"v": "str"}, client_id="limits", limit=2,
                                    max_depth=1, max_message_bytes=40))
    assert out.records() == []
    assert [d["reason"] for d in dead] == ["nesting deeper than max_depth (1)",
                                           "message of 47 bytes is larger than max_message_bytes (40)"]
    with pytest.raises(ms.PipelineError, match="must be >= 1"):
        ms.Pipeline("x").read_mqtt("l", broker.url, schema={"v": "float"}, max_depth=0)
