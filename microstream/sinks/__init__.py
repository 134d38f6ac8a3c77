"""Sinks for `stream.sink(...)`: `ms.sinks.collect()`, `csv(path)`, `jsonl(path)`, `callback(fn)`, `print()`,
`mqtt(topic)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..core.batch import Batch
from .base import Sink
from .files import CsvSink, JsonlSink
from .memory import CallbackSink, Collect, PrintSink

__all__ = ["Sink", "Collect", "collect", "csv", "jsonl", "callback", "print", "mqtt"]


def collect() -> Collect:
    """Keep results in memory (tests, notebooks): `out.records()` or `out.batch()` after the run."""
    return Collect()


def csv(path: str | Path, iso_time: bool = True) -> CsvSink:
    """Write a CSV file with a header row."""
    return CsvSink(path, iso_time)


def jsonl(path: str | Path, iso_time: bool = True) -> JsonlSink:
    """Write one JSON object per line."""
    return JsonlSink(path, iso_time)


def callback(fn: Callable[[Batch], None]) -> CallbackSink:
    """Call `fn(batch)` for each batch of results."""
    return CallbackSink(fn)


def print(prefix: str = "", file: TextIO | None = None) -> PrintSink:  # noqa: A001
    """Print each record on a line."""
    return PrintSink(prefix, file)


def mqtt(topic: str, broker: str = "mqtt://127.0.0.1:1883", qos: int = 1, format: str = "json",  # noqa: A002
         retain: bool = False, **options: Any) -> Sink:
    """Publish each record as a JSON object to an MQTT topic filled from its columns, e.g. `"aq/{station}/aqi"`
    (a column the stream lacks fails when the pipeline is built). Options: `client_id`, `username`,
    `password`, `iso_time` (event times as ISO text instead of ns), `timeout` (for the final acks).
    See `microstream.sinks.mqtt_sink`."""
    from .mqtt_sink import MqttSink

    return MqttSink(topic, broker, qos, format, retain, **options)
