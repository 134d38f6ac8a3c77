"""The MQTT sink (`ms.sinks.mqtt("aq/{station}/aqi")`) publishes one JSON object per record on a topic filled from
the record's columns, waiting at the end (and before a snapshot) until the broker acknowledged every QoS 1
message.

Paho sessions and delivery guarantees are described in `microstream.sources.mqtt`.
"""

from __future__ import annotations

import json
import logging
import string
import threading
import time
from typing import Any

import numpy as np

from ..connectors.mqtt import new_client, parse_broker
from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..operators.base import Emit
from .base import Sink

log = logging.getLogger(__name__)


# -- the sink ---------------------------------------------------------------------------------------------

class MqttSink(Sink):
    """Publish each record as a JSON object on a topic filled from its columns (`"aq/{station}/aqi"`)."""

    kind = "mqtt"

    def __init__(self, topic: str, broker: str = "mqtt://127.0.0.1:1883", qos: int = 1, format: str = "json",  # noqa: A002
                 retain: bool = False, client_id: str | None = None, username: str | None = None,
                 password: str | None = None, iso_time: bool = False, timeout: float = 30.0) -> None:
        if format != "json":
            raise PipelineError("mqtt", f"unknown format {format!r}", "use format='json'")
        if qos not in (0, 1):
            raise PipelineError("mqtt", f"qos must be 0 or 1, got {qos!r}")
        if "+" in topic or "#" in topic:
            raise PipelineError("mqtt", f"cannot publish to {topic!r}: wildcards are for subscriptions",
                                "fill levels from columns instead, e.g. 'aq/{station}/aqi'")
        try:
            self.template_fields = [f for _, f, _, _ in string.Formatter().parse(topic) if f is not None]
        except ValueError as exc:
            raise PipelineError("mqtt", f"bad topic template {topic!r}: {exc}", "e.g. 'aq/{station}/aqi'") from exc
        if any(not f for f in self.template_fields):
            raise PipelineError("mqtt", f"topic template {topic!r} has an unnamed field {{}}",
                                "name the column, e.g. 'aq/{station}/aqi'")
        self.topic, self.qos, self.retain, self.iso_time, self.timeout = topic, int(qos), retain, iso_time, timeout
        self.broker = broker
        self.host, self.port, self.tls = parse_broker(broker, "mqtt")
        self.client_id, self.username, self.password = client_id, username, password

    def describe(self) -> str:
        return f"{self.topic} @ {self.host}:{self.port} (qos {self.qos})"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        from ..core.errors import suggest

        for f in self.template_fields:
            col = f.split(".")[0].split("[")[0]
            if col not in inputs[0]:
                close = suggest(col, inputs[0].names)
                raise PipelineError(name, f"topic template {self.topic!r} names column '{col}', which the stream "
                                          f"lacks; its columns are {inputs[0].names}",
                                    f"did you mean '{close}'?" if close else "name one of its columns in the template")
        return {}

    def open(self, ctx) -> None:
        super().open(ctx)
        self._names = ctx.input_schemas[0].names
        self._pending: list[Any] = []
        self._closing = False
        self._client: Any = None
        if not ctx.extra.get("restoring"):  # a restored sink connects once the old one has let go (same client id)
            self._connect()

    def _connect(self) -> None:
        connected = threading.Event()
        client = new_client(self.client_id or "", True, False, self.username, self.password, self.tls)
        client.max_inflight_messages_set(100)
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        client.on_disconnect = lambda c, u, f, rc, p: log.warning(
            "mqtt sink %s: connection to %s:%d lost (%s); reconnecting", self.name, self.host, self.port, rc) \
            if not self._closing else None
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not connected.wait(10):
            log.warning("mqtt sink %s: not connected to %s:%d yet; publishing once connected", self.name,
                        self.host, self.port)

    def restore(self, state: dict[str, Any]) -> None:
        if self._client is None:
            self._connect()

    def write(self, batch: Batch) -> None:
        if self._client is None:
            self._connect()
        cols = self._iso(batch) if self.iso_time else batch.to_dict()
        lists = {}
        for c in self._names:
            col = cols[c]
            if col.dtype.kind == "f" and not np.isfinite(col).all():
                obj = col.astype(object)
                obj[~np.isfinite(col)] = None
                lists[c] = obj.tolist()
            else:
                lists[c] = col.tolist()
        n = batch.num_rows
        if self.template_fields:
            fills = zip(*(lists[f.split(".")[0].split("[")[0]] for f in self.template_fields), strict=True)
            keys = [f.split(".")[0].split("[")[0] for f in self.template_fields]
            topics = [self.topic.format_map(dict(zip(keys, vals, strict=True))) for vals in fills]
        else:
            topics = [self.topic] * n
        names = self._names
        publish = self._client.publish
        for topic, row in zip(topics, zip(*(lists[c] for c in names), strict=True), strict=True):
            info = publish(topic, json.dumps(dict(zip(names, row, strict=True))), self.qos, self.retain)
            if self.qos:
                self._pending.append(info)
        if len(self._pending) > 4096:
            self._pending = [i for i in self._pending if not i.is_published()]

    def flush(self) -> None:
        """Wait until the broker has acknowledged everything published (QoS 1)."""
        deadline = time.monotonic() + self.timeout
        for info in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_published(info, left):
                raise TimeoutError(f"mqtt sink {self.name}: the broker at {self.host}:{self.port} did not "
                                   f"acknowledge {sum(not i.is_published() for i in self._pending)} messages "
                                   f"within {self.timeout:g} s")
        self._pending = []

    def close(self) -> Emit:
        if self._client is None:
            return []
        try:
            self.flush()
        finally:
            self._closing = True
            self._client.disable_logger()
            self._client.disconnect()
            self._client.loop_stop()
        return []

    def snapshot(self) -> dict[str, Any]:
        self.flush()  # what was written before the barrier is at the broker before the state moves
        return {}


def _wait_published(info: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not info.is_published():
        if time.monotonic() > deadline:
            return False
        try:
            info.wait_for_publish(min(1.0, max(0.0, deadline - time.monotonic())))
        except (RuntimeError, ValueError):  # not yet sent (queued while disconnected)
            time.sleep(0.05)
    return True
