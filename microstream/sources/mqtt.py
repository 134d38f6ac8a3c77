"""The MQTT source, on paho-mqtt (the reference MQTT client: reconnects, QoS 1 flows, manual acks).

The source (`Pipeline.read_mqtt`) subscribes to topic filters (wildcards `+` and `#`). paho's network
thread only appends each message's raw (topic, payload) to a buffer; the source's `read()` decodes a
whole buffer at once into a columnar batch:

- `format="json"`: one flat JSON object per message, the fields of `schema` extracted by the numba
  JSON parser of `read_jsonl` (the payloads are joined as lines and parsed in one pass).
- `format="senml"`: SenML packs (RFC 8428, JSON): one `json.loads` of all the payloads joined as one
  JSON array, then columns built with numpy (base name/time/unit/value resolved by forward fills within
  each pack). The layout is **long**: one row per SenML record with columns `time` (bt + t; times below
  2**28 are relative to the message's arrival, as the RFC says), the topic columns, `name` (bn + n),
  `unit` (u, else bu), `value` (v + bv, else vb as 1.0/0.0, else s; NaN for text-only records) and
  `text` (vs, else vd; "" otherwise). Key by `name` and window it, or `split_on("name", ...)`, to go wide.

`topic_columns=("station",)` names the `+` levels of the subscription in order, so the station id in
`aq/+/readings` becomes a column. A payload that does not decode (bad JSON, missing field, wrong type,
bad time) goes to the dead-letter stream with the reason and its position `topic#n` (n: the source's
message number, from 1); nothing is dropped silently.

Poison messages. No payload can fail the job, and so none can crash-loop it on QoS 1 redelivery: a message
larger than `max_message_bytes` (1 MiB; it is not even kept in memory), one that is not valid UTF-8, and
one nested deeper than `max_depth` (64; nesting is counted in a compiled pass before anything recurses)
are dead letters with the reason; and if decoding a poll's messages together raises anyway, they are
decoded one by one and the one that raises becomes a dead letter with the exception. A UTF-8 BOM starting a
payload is skipped; `NaN` and `Infinity` (as Python's json writes them) are read as float NaN and infinity.

Delivery guarantees. With `qos=1` the source keeps a **persistent session** (clean_session=False) under a
fixed client id (`client_id=`, else derived from the job and the operator name) and acknowledges a message
(manual PUBACK) only after the batch holding it has been emitted downstream. When the runtime saves or
migrates the source's virtual node, the snapshot is taken between two polls: the source acknowledges what it
has emitted, waits until the broker has processed those acknowledgements (an UNSUBSCRIBE round trip: closing a
connection with unread messages resets it and could lose them), stops and disconnects; the snapshot holds the
client id and the position, not the undecoded buffer. The new host is deployed before the old one stops, so a
restored source connects only in `restore_reader`: with the same client id, and the broker redelivers every
unacknowledged message, then what was published meanwhile (queued for the session): **no loss and no
duplicates across a migration or a save/restore**. If the connection drops (broker restart, network), paho
reconnects with backoff (0.5 s doubling to 30 s, logged); buffered messages the broker will redeliver are
discarded and redeliveries of messages already emitted are acknowledged and skipped, so a broker restart
loses nothing (a message whose acknowledgement was lost in the crash and that is not recognised as a
redelivery may come twice: at least once). A re-run with the same client id continues the session, receiving
what was published while no job was running. `qos=0` is at most once: no session, no acknowledgements,
messages buffered at a migration or published while disconnected are lost. The broker must keep sessions
while their client is away and queue enough for them (mosquitto: `max_queued_messages`, 1000 by default;
`persistence true` to survive its own restarts). An MQTT source runs as one task: parallelise what follows it.

The sink is `microstream.sinks.mqtt_sink` (`ms.sinks.mqtt(...)`); what both share (broker URLs, the paho client) is
`microstream.connectors.mqtt`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from itertools import chain
from operator import methodcaller
from typing import Any

import numpy as np

from ..connectors.mqtt import new_client, parse_broker
from ..core.batch import Batch
from ..core.errors import PipelineError
from ..core.schema import Schema
from ..core.time import to_ns
from ..operators.base import DEAD, OUT, Emit, dead_letters
from .base import Source

log = logging.getLogger(__name__)

SENML_COLUMNS = {"name": "U", "unit": "U", "value": np.float64, "text": "U"}
_KINDS = {"float": "float", "float64": "float", "float32": "float", "double": "float",
          "int": "int", "int64": "int", "int32": "int", "bool": "int",
          "str": "str", "string": "str", "U": "str", "<U": "str", "object": "str"}
_DTYPE_OF = {"float": np.float64, "int": np.int64, "str": "U"}
_RAW_KEEP = 1000          # characters of a bad payload kept in its dead letter
MAX_MESSAGE_BYTES = 1 << 20
MAX_DEPTH = 64
_IDLE_WAIT = 5_000_000    # ns between polls when nothing is buffered
_RELATIVE_SENML = 2 ** 28  # SenML times below this are relative to now (RFC 8428, 4.5.3)


def check_filter(topic: str, operator: str) -> None:
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and (level != "#" or i != len(levels) - 1)):
            raise PipelineError(operator, f"invalid topic filter {topic!r}",
                                "'+' must be a whole level and '#' the whole last level, e.g. 'aq/+/readings'")


def _client_id_of(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p))[:200]


# -- the source -------------------------------------------------------------------------------------------

class MqttSource(Source):
    """Messages of MQTT topic filters decoded into columnar batches; see the module docstring and
    `Pipeline.read_mqtt`."""

    kind = "read_mqtt"
    time: str   # the column of the times: `time`, or "time" when the arrival time is stamped (time=None)

    def __init__(self, topics: str | Iterable[str], broker: str = "mqtt://127.0.0.1:1883", *,
                 format: str = "json", schema: Mapping[str, Any] | None = None,  # noqa: A002
                 time: str | None = "time", time_unit: str = "s", time_format: str = "iso",
                 utc_offset: str | int | None = None, topic_columns: Iterable[str] = (), qos: int = 1,
                 client_id: str | None = None, max_delay: Any = 0, limit: int | None = None,
                 idle_timeout: Any = None, batch_size: int = 4096, username: str | None = None,
                 password: str | None = None, job: str = "", connect_timeout: float = 10.0,
                 operator: str = "read_mqtt", max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_depth: int = MAX_DEPTH) -> None:
        super().__init__(time or "time", to_ns(max_delay, "max_delay") or 0, None, batch_size)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise PipelineError(operator, "no topic to subscribe to", "pass a topic filter such as 'aq/+/readings'")
        for t in self.topics:
            check_filter(t, operator)
        self.broker = broker
        self.host, self.port, self.tls = parse_broker(broker, operator)
        if format not in ("json", "senml"):
            raise PipelineError(operator, f"unknown format {format!r}", "use format='json' or format='senml'")
        if qos not in (0, 1):
            raise PipelineError(operator, f"qos must be 0 or 1, got {qos!r}",
                                "qos=1 (at least once, with acks: no loss across migrations) or qos=0")
        if time_unit not in ("s", "ms", "us", "ns"):
            raise PipelineError(operator, f"time_unit must be 's', 'ms', 'us' or 'ns', got {time_unit!r}")
        if limit is not None and limit < 0:
            raise PipelineError(operator, f"limit must be >= 0, got {limit}")
        if max_message_bytes < 1 or max_depth < 1:
            raise PipelineError(operator, f"max_message_bytes and max_depth must be >= 1, got {max_message_bytes} "
                                          f"and {max_depth}")
        self.max_message_bytes, self.max_depth = int(max_message_bytes), int(max_depth)
        self.format, self.qos, self.client_id, self.job = format, int(qos), client_id, job
        self.event_time = time  # None: stamp the arrival time
        self.time_unit, self.time_format, self.utc_offset = time_unit, time_format, utc_offset
        self.topic_columns = [topic_columns] if isinstance(topic_columns, str) else list(topic_columns)
        self.limit = limit
        self.idle_timeout = to_ns(idle_timeout, "idle_timeout")
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.fields = self._fields(schema, operator)

    def _fields(self, schema: Mapping[str, Any] | None, operator: str) -> dict[str, str]:
        if self.format == "senml":
            if schema:
                raise PipelineError(operator, "format='senml' has a fixed layout; schema= does not apply",
                                    f"drop schema=; the columns are time, topic columns, {', '.join(SENML_COLUMNS)}")
            return {}
        if not schema:
            raise PipelineError(operator, "read_mqtt with format='json' needs schema= (messages cannot be "
                                          "sampled while the pipeline is built)",
                                "e.g. schema={'pm25': 'float', 'status': 'str'}")
        fields = {}
        for name, kind in schema.items():
            if name == self.event_time:
                continue  # the event-time field is parsed as a time whatever its declared type
            key = kind if isinstance(kind, str) else getattr(np.dtype(kind), "name", str(kind))
            key = "str" if str(key).startswith(("<U", "U", "str")) else key
            if key not in _KINDS:
                raise PipelineError(operator, f"field {name!r} has unsupported type {kind!r}",
                                    "use 'float', 'int', 'bool' or 'str' (or float64, int64)")
            fields[name] = _KINDS[key]
        return fields

    def describe(self) -> str:
        return f"{', '.join(self.topics)} @ {self.host}:{self.port} ({self.format}, qos {self.qos})"

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        for t in self.topics:
            plus = t.split("/").count("+")
            if len(self.topic_columns) > plus:
                raise PipelineError(name, f"topic_columns {self.topic_columns} name {len(self.topic_columns)} "
                                          f"levels but {t!r} has {plus} '+' wildcard(s)",
                                    "give one name per '+' level of every topic filter, in order")
        cols: dict[str, Any] = {self.time: np.int64}
        for c in self.topic_columns:
            cols[c] = "U"
        body = SENML_COLUMNS if self.format == "senml" else {k: _DTYPE_OF[v] for k, v in self.fields.items()}
        for c, dtype in body.items():
            if c in cols:
                raise PipelineError(name, f"column {c!r} would come both from the topic or time and the payload",
                                    "rename the topic column or the time column")
            cols[c] = dtype
        return {OUT: Schema.of(cols, time=self.time)}

    # -- connection (paho's network thread runs the callbacks) -----------------------------------------------
    def open(self, ctx) -> None:
        super().open(ctx)
        if ctx.extra.get("parallelism", 1) > 1:
            raise PipelineError(ctx.name, "an MQTT source runs as one task (each task would get every message)",
                                "drop with_parallelism() on the source; parallelise the operators after it")
        self.out_schema = ctx.output_schemas[OUT]
        self._lock = threading.Lock()
        # what paho's thread received and the source has not read yet, as parallel lists (sliced, never looped)
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._mids: list[int] = []       # 0: nothing to acknowledge (QoS 0, or a session the broker lost)
        self._arrivals: list[int] = []   # ns
        self._to_ack: list[int] = []       # mids handed downstream, acknowledged at the next poll
        # in a job that takes checkpoints, a message is acknowledged only once a checkpoint that covers it is
        # complete (the broker redelivers the rest to the session a recovery resumes)
        self._transactional = bool(ctx.extra.get("transactional")) and self.qos == 1
        self._prepared: dict[int, list[int]] = {}  # checkpoint -> mids it covers, acknowledged at its commit
        self._expect: set[int] = set()     # mids the broker may redeliver although they were emitted
        self._recent: deque[int] = deque(maxlen=1024)  # the last acknowledged mids (their PUBACK may be lost)
        self._gen = 0                      # connections so far
        self._seen = 0                     # messages consumed (good and dead): the source's message number
        self._oversized = 0                # oversized payloads in the buffer (replaced by _Oversized)
        self._last_arrival: int | None = None
        self._closed = False
        self._restored = bool(ctx.extra.get("restoring"))
        self._ready = threading.Event()
        self._gone = threading.Event()
        self._id = self.client_id or _client_id_of("microstream", self.job, ctx.name,
                                                   str(ctx.extra.get("subtask", 0)))
        self._plus = [[i for i, lv in enumerate(t.split("/")) if lv == "+"] for t in self.topics]
        self._client: Any = None
        if not self._restored:  # a restored source connects in restore_reader, once the old one has let go
            self._connect()

    def _connect(self) -> None:
        client = new_client(self._id, self.qos == 0, self.qos == 1, self.username, self.password, self.tls)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda c, u, mid, codes, props: self._on_subscribe(codes)
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        if not self._ready.wait(self.connect_timeout):
            log.warning("mqtt source %s: not connected to %s:%d after %g s; retrying in the background",
                        self.name, self.host, self.port, self.connect_timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt source %s: broker %s:%d refused the connection: %s", self.name, self.host, self.port,
                        reason_code)
            return
        present = bool(flags.session_present)
        dropped = 0
        with self._lock:
            self._gen += 1
            first = self._gen == 1
            if not first and self.qos == 1:
                if present:  # the broker resends what was not acknowledged: drop our copies, expect the emitted
                    dropped = len(self._mids)
                    self._clear_buffer()
                    self._expect |= set(self._to_ack) | set(self._recent) | {
                        mid for mids in self._prepared.values() for mid in mids}
                else:
                    log.warning("mqtt source %s: the broker lost the session; messages published while "
                                "disconnected are lost", self.name)
                    self._mids = [0] * len(self._mids)
                    self._expect = set()
                self._to_ack = []
                self._recent.clear()
            if self._last_arrival is not None:
                self._last_arrival = time.time_ns()  # the idle clock restarts: nothing could arrive while away
        if not first:
            log.warning("mqtt source %s: reconnected to %s:%d (session %s; %d buffered messages left for the "
                        "broker to redeliver)", self.name, self.host, self.port, "kept" if present else "new", dropped)
        if not present or (first and not self._restored):
            client.subscribe([(t, self.qos) for t in self.topics])
        else:
            self._ready.set()

    def _clear_buffer(self) -> None:
        self._topics, self._payloads, self._mids, self._arrivals = [], [], [], []
        self._oversized = 0

    def _on_subscribe(self, codes) -> None:
        bad = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if bad:
            log.error("mqtt source %s: subscription refused: %s", self.name, ", ".join(bad))
        self._ready.set()

    def _on_message(self, client, userdata, message) -> None:
        mid = message.mid if message.qos else 0
        with self._lock:
            if mid and message.dup and mid in self._expect:  # already emitted before a reconnect
                self._expect.discard(mid)
                client.ack(mid, 1)
                return
            self._topics.append(message.topic)
            payload = message.payload
            if len(payload) > self.max_message_bytes:
                payload = _Oversized(payload)
                self._oversized += 1
            self._payloads.append(payload)
            self._mids.append(mid)
            self._arrivals.append(time.time_ns())

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._closed:
            self._gone.set()
        else:
            log.warning("mqtt source %s: connection to %s:%d lost (%s); reconnecting with backoff",
                        self.name, self.host, self.port, reason_code)

    def _ack_emitted(self, final: bool = False) -> None:
        """Acknowledge what was handed downstream (the runtime polls again only once it has been pushed on); in a
        job with checkpoints, only at a commit, or at the end (`final`)."""
        if self._transactional and not final:
            return
        if final:
            self._to_ack = [mid for mids in self._prepared.values() for mid in mids] + self._to_ack
            self._prepared = {}
        mids, self._to_ack = self._to_ack, []
        self._ack(mids)

    def _ack(self, mids: list[int]) -> None:
        if not mids:
            return
        with self._lock:
            if self._closed:
                return
            for mid in mids:
                if mid:
                    self._client.ack(mid, 1)
            self._recent.extend(mids)

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed or self._client is None:
                return
            self._closed = True
        client = self._client
        if self.qos and client.is_connected():
            # A fence: the broker handles a client's packets in order, so once it answers this UNSUBSCRIBE (of a
            # filter we never subscribed to) it has processed every acknowledgement sent before. Closing without
            # it can lose the last ones: the broker keeps sending, and closing a socket with unread data resets
            # the connection, which may discard what the broker had not read yet.
            fenced = threading.Event()
            client.on_unsubscribe = lambda *args: fenced.set()
            client.unsubscribe(f"microstream/fence/{self._id}")
            if not fenced.wait(5):
                log.warning("mqtt source %s: %s:%d did not confirm the last acknowledgements; they may come again",
                            self.name, self.host, self.port)
        client.disable_logger()  # paho logs an error for its last loop after a clean disconnect
        client.disconnect()
        if client.is_connected() and not self._gone.wait(5):  # sent (loop_stop alone may drop queued packets)
            log.warning("mqtt source %s: the disconnect from %s:%d was not confirmed", self.name, self.host, self.port)
        client.loop_stop()

    # -- the runtime calls ----------------------------------------------------------------------------------
    def poll(self, now: int) -> Emit:
        if self._client is None:  # restoring, but no state came: start a session here
            self._connect()
        self._ack_emitted()
        return super().poll(now)

    def next_due(self, now: int) -> int | None:
        if self._mids or (self._to_ack and not self._transactional) or self._done():
            return None
        return now + _IDLE_WAIT

    def _done(self) -> bool:
        if self.limit is not None and self._seen >= self.limit:
            return True
        return (self.idle_timeout is not None and self._last_arrival is not None and not self._mids
                and time.time_ns() - self._last_arrival > self.idle_timeout
                and self._client is not None and self._client.is_connected())  # idle while connected only

    def read(self) -> Emit | None:
        if self._done():
            return None
        room = self.batch_size if self.limit is None else min(self.batch_size, self.limit - self._seen)
        with self._lock:
            topics, self._topics = self._topics[:room], self._topics[room:]
            payloads, self._payloads = self._payloads[:room], self._payloads[room:]
            mids, self._mids = self._mids[:room], self._mids[room:]
            arrivals_list, self._arrivals = self._arrivals[:room], self._arrivals[room:]
            if self.qos:
                self._to_ack.extend(mids)
        if not mids:
            return []
        arrivals = np.array(arrivals_list, np.int64)
        self._last_arrival = int(arrivals[-1])
        first = self._seen + 1
        self._seen += len(mids)
        columns, rows, dead = self._decode(topics, payloads, arrivals)
        out: Emit = []
        if len(rows):
            topic_arr = np.asarray(topics)
            for c, values in self._topic_levels(topic_arr, rows).items():
                columns[c] = values
            out.append((OUT, Batch({c: columns[c] for c in self.out_schema.names})))
        if dead:
            out.append((DEAD, dead_letters(self.name, [f"{topics[i]}#{first + i}{suffix}" for i, suffix, _, _ in dead],
                                           [row for _, _, row, _ in dead], [why for _, _, _, why in dead])))
        return out

    def close(self) -> Emit:
        self._ack_emitted(final=True)
        self._shutdown()
        return []

    def reader_state(self) -> Any:
        """Called at a snapshot barrier (save or migration), between two polls: everything read so far has been
        emitted, so it is acknowledged; then this client stops and disconnects and the broker keeps the rest
        (unacknowledged or queued) for the session that `restore_reader` resumes in the new process."""
        self._ack_emitted(final=True)
        self._shutdown()
        return {"client_id": self._id, "seen": self._seen, "last_arrival": self._last_arrival}

    def checkpoint_reader_state(self) -> Any:
        """For a checkpoint: the session to resume, the message count, and the messages emitted but not yet
        acknowledged; the client goes on (nothing is acknowledged here: `commit` does that once the checkpoint is
        complete). A recovery from this checkpoint may find some of them unacknowledged still (the commit never
        reached this host: its agent froze, or it died right after): the broker redelivers them, and the restored
        source must acknowledge and skip them, since the checkpoint's output holds them already."""
        emitted = [mid for mids in self._prepared.values() for mid in mids] + self._to_ack
        return {"client_id": self._id, "seen": self._seen, "last_arrival": self._last_arrival,
                "emitted": [mid for mid in emitted if mid]}

    def prepare_commit(self, checkpoint: int) -> None:
        if self._transactional:
            self._prepared[checkpoint], self._to_ack = self._to_ack, []

    def commit(self, checkpoint: int) -> None:
        """The checkpoint is complete: what it covers will never be read again, so the broker may forget it."""
        if not self._transactional:
            return
        covered = [mid for k in sorted(k for k in self._prepared if k <= checkpoint) for mid in self._prepared.pop(k)]
        self._ack(covered)

    def restore_reader(self, state: Any) -> None:
        """In the new process: resume the saved session (same client id); the broker redelivers what the old
        client had not acknowledged, then what was published meanwhile."""
        self._seen, self._last_arrival = state["seen"], state["last_arrival"]
        self._expect = set(state.get("emitted") or ())  # covered by the checkpoint: skipped if they come again
        if self._last_arrival is not None:
            self._last_arrival = max(self._last_arrival, time.time_ns())  # the idle clock restarts here
        if self._client is not None:
            self._shutdown()
            self._closed = False
            self._ready.clear()
            self._gone.clear()
        self._id = state["client_id"]
        self._connect()

    # -- decoding: whole buffers at once ----------------------------------------------------------------------
    def _decode(self, topics: list[str], payloads: list[Any], arrivals: np.ndarray):
        """(columns, message index of each row, dead letters (index, suffix, raw, reason)) of a poll's messages.

        Oversized, non-UTF-8 and (SenML) too deeply nested payloads are set aside first; if decoding the rest
        together still raises, each message is decoded alone and one that raises is a dead letter."""
        big = self._oversized > 0
        depth = self.max_depth if self.format == "senml" else 0  # the JSON parser counts nesting itself
        payloads, early = _screen(payloads, self.max_message_bytes, depth, big)
        if big:
            with self._lock:
                self._oversized -= sum(1 for d in early.values() if d[3].startswith("message of "))
        decode = self._decode_senml if self.format == "senml" else self._decode_json
        try:
            columns, rows, dead = decode(topics, payloads, arrivals)
        except Exception:  # noqa: BLE001 - a poison message must cost itself, never the job
            columns, rows, dead = self._decode_each(decode, topics, payloads, arrivals)
        if early:
            dead = sorted([d for d in dead if d[0] not in early] + list(early.values()), key=lambda d: (d[0], d[1]))
        return columns, rows, dead

    def _decode_each(self, decode, topics: list[str], payloads: list[bytes], arrivals: np.ndarray):
        parts, rows, dead = [], [], []
        for i, payload in enumerate(payloads):
            try:
                cols, r, d = decode(topics[i:i + 1], [payload], arrivals[i:i + 1])
            except Exception as exc:  # noqa: BLE001
                dead.append((i, "", _raw(payload), f"could not decode: {type(exc).__name__}: {exc}"))
                continue
            parts.append(cols)
            rows.append(np.full(len(r), i, np.int64))
            dead += [(i, *rest) for _, *rest in d]
        parts = [p for p, r in zip(parts, rows, strict=True) if len(r)]
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else \
            {k: v for k, v in self.out_schema.empty_columns().items() if k not in self.topic_columns}
        return columns, np.concatenate(rows) if rows else np.zeros(0, np.int64), dead

    def _topic_levels(self, topics: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        if not self.topic_columns:
            return {}
        import paho.mqtt.client as mqtt

        uniq, inv = np.unique(topics[rows], return_inverse=True)  # per distinct topic, not per message
        values: dict[str, list[str]] = {c: [] for c in self.topic_columns}
        for topic in uniq.tolist():
            levels = topic.split("/")
            which = next((i for i, f in enumerate(self.topics) if mqtt.topic_matches_sub(f, topic)), 0)
            plus = self._plus[which]
            for c, pos in zip(self.topic_columns, plus, strict=False):
                values[c].append(levels[pos] if pos < len(levels) else "")
        return {c: np.asarray(v, dtype=str)[inv] for c, v in values.items()}

    def _decode_json(self, topics: list[str], payloads: list[bytes], arrivals: np.ndarray):
        from ..formats.parsing import parse_jsonl

        n = len(payloads)
        data = b"\n".join(payloads)
        if data.count(b"\n") != n - 1:  # raw newlines can only be whitespace in JSON
            data = b"\n".join(p.replace(b"\n", b" ") for p in payloads)
        kinds = dict(self.fields)
        formats = {}
        if self.event_time is not None:
            kinds = {self.event_time: "time", **kinds}
            formats[self.event_time] = self.time_format
        result = parse_jsonl(data, kinds, formats, self.utc_offset, time_unit=self.time_unit,
                             max_row_bytes=self.max_message_bytes + 3, max_depth=self.max_depth)
        rows = result.line_numbers.astype(np.int64) - 1
        columns = dict(result.columns)
        if self.event_time is None:
            columns[self.time] = arrivals[rows]
        dead = [(ln - 1, "", _raw(payloads[ln - 1]), why) for ln, _, why in result.dead]
        if len(rows) + len(dead) < n:  # blank payloads, which the line parser skips
            accounted = np.zeros(n, bool)
            accounted[rows] = True
            accounted[[i for i, *_ in dead]] = True
            dead += [(int(i), "", _raw(payloads[i]), "empty payload") for i in np.flatnonzero(~accounted)]
            dead.sort()
        return columns, rows, dead

    def _decode_senml(self, topics: list[str], payloads: list[bytes], arrivals: np.ndarray):
        n = len(payloads)
        dead: list[tuple[int, str, str, str]] = []
        try:
            packs = json.loads(b"[" + b",".join(payloads) + b"]")
            if len(packs) != n:
                raise ValueError("payloads are not one JSON value each")
        except (ValueError, RecursionError):
            packs = []
            for i, p in enumerate(payloads):  # find the bad ones (only when some are bad)
                try:
                    packs.append(json.loads(p))
                except (ValueError, RecursionError) as exc:
                    packs.append(None)
                    dead.append((i, "", _raw(p), f"invalid JSON: {exc}"))
        is_pack = _of_type(packs, list)
        for i in np.flatnonzero(~is_pack & ~_of_type(packs, type(None))).tolist():
            dead.append((int(i), "", _raw(payloads[i]), "not a SenML pack (a JSON array of records)"))
        good = np.flatnonzero(is_pack)
        good_packs = [packs[i] for i in good]
        lens = np.fromiter(map(len, good_packs), np.int64, len(good_packs))
        recs = list(chain.from_iterable(good_packs))
        m = len(recs)
        msg = np.repeat(good, lens)                               # message of each record
        start = np.repeat(np.cumsum(lens) - lens, lens)           # index of its pack's first record
        pos = np.arange(m) - start                                # its index within the pack
        is_rec = _of_type(recs, dict)
        original = recs
        if not is_rec.all():
            recs = list(recs)
            for j in np.flatnonzero(~is_rec):
                recs[j] = {}
        bad = ~is_rec
        why = np.where(bad, "record is not a JSON object", "").astype(object)

        def field(key: str, kind: str):
            values = list(map(methodcaller("get", key), recs))
            ok = _of_type(values, *{"num": (float, int), "str": (str,), "bool": (bool,)}[kind])
            wrong = ~ok & ~_of_type(values, type(None))
            if wrong.any():
                fresh = wrong & ~bad
                why[fresh] = f"field {key!r} is not a {dict(num='number', str='string', bool='boolean')[kind]}"
                bad[fresh] = True
            arr = np.array(values, dtype=object)
            if kind == "num":
                arr[~ok] = 0.0
                return ok, arr.astype(np.float64)
            arr[~ok] = "" if kind == "str" else False
            return ok, arr

        def base(key: str, kind: str, default: Any):
            ok, arr = field(key, kind)
            last = np.maximum.accumulate(np.where(ok, np.arange(m), -1)) if m else np.zeros(0, np.int64)
            inherited = last >= start
            out = np.where(inherited, arr[np.maximum(last, 0)], default)
            return out

        bn, bt, bu, bv = base("bn", "str", ""), base("bt", "num", 0.0), base("bu", "str", ""), base("bv", "num", 0.0)
        has_n, n_ = field("n", "str")
        has_t, t = field("t", "num")
        has_u, u = field("u", "str")
        has_v, v = field("v", "num")
        has_vs, vs = field("vs", "str")
        has_vb, vb = field("vb", "bool")
        has_vd, vd = field("vd", "str")
        has_s, s = field("s", "num")
        name = (bn.astype(object) + n_.astype(object)).astype(str) if m else np.zeros(0, "U1")
        fresh = ~bad & (np.char.str_len(name) == 0 if m else np.zeros(0, bool))
        why[fresh], bad[fresh] = "record has no name (n or bn)", True
        fresh = ~bad & ~(has_v | has_vs | has_vb | has_vd | has_s)
        why[fresh], bad[fresh] = "record has no value (v, vs, vb, vd or s)", True
        seconds = bt.astype(np.float64) + t
        whole = np.floor(seconds)
        ns = whole.astype(np.int64) * 1_000_000_000 + np.round((seconds - whole) * 1e9).astype(np.int64)
        relative = seconds < _RELATIVE_SENML
        times = np.where(relative, arrivals[msg] + ns, ns) if m else np.zeros(0, np.int64)
        value = np.where(has_v, v + bv.astype(np.float64), np.where(has_vb, vb.astype(np.float64),
                                                                     np.where(has_s, s, np.nan)))
        unit = np.where(has_u, u, bu).astype(str) if m else np.zeros(0, "U1")
        text = np.where(has_vs, vs, np.where(has_vd, vd, "")).astype(str) if m else np.zeros(0, "U1")
        for j in np.flatnonzero(bad):
            dead.append((int(msg[j]), f"[{int(pos[j])}]", _raw(json.dumps(original[j])), why[j]))
        keep = ~bad
        rows = msg[keep]
        columns = {self.time: times[keep], "name": name[keep], "unit": unit[keep], "value": value[keep],
                   "text": text[keep]}
        dead.sort(key=lambda d: (d[0], d[1]))
        return columns, rows, dead


def _of_type(values: list[Any], *types: type) -> np.ndarray:
    """values[i] has exactly one of `types` (bool is not an int here), without a Python loop per value."""
    allowed = frozenset(types)
    return np.fromiter(map(allowed.__contains__, map(type, values)), bool, len(values))


class _Oversized:
    """Stands for a payload larger than max_message_bytes: its size and first bytes, not the whole of it."""

    def __init__(self, payload: bytes) -> None:
        self.size, self.head = len(payload), payload[:4 * _RAW_KEEP]


def _screen(payloads: list[Any], max_bytes: int, max_depth: int,
            oversized: bool = True) -> tuple[list[bytes], dict[int, tuple]]:
    """Payloads with the oversized, the non-UTF-8 and (if max_depth) the too deeply nested ones emptied, and
    the dead letters of those, by message index. One pass over all of them; Python per message only for the
    bad ones."""
    from ..formats.parsing import find_invalid_utf8, json_depths

    dead: dict[int, tuple] = {}
    big = np.flatnonzero(_of_type(payloads, _Oversized)) if oversized else np.zeros(0, dtype=np.intp)
    if len(big):
        payloads = list(payloads)
        for i in big.tolist():
            p = payloads[i]
            dead[i] = (i, "", _raw(p.head) + f"... ({p.size:,} bytes)",
                       f"message of {p.size:,} bytes is larger than max_message_bytes ({max_bytes:,})")
            payloads[i] = b""
    data = b"\n".join(payloads)
    if not data.isascii():
        if b"\xef\xbb\xbf" in data:  # a UTF-8 BOM starting a payload: dropped
            payloads = [p.removeprefix(b"\xef\xbb\xbf") for p in payloads]
            data = b"\n".join(payloads)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            payloads = list(payloads)
            lens = np.fromiter(map(len, payloads), np.int64, len(payloads)) + 1
            starts = np.cumsum(lens) - lens
            for _, _, offset in find_invalid_utf8(data):
                i = int(np.searchsorted(starts, offset, side="right")) - 1
                if i not in dead:
                    p = payloads[i]
                    column = len(p[:offset - starts[i]].decode("utf-8", "replace")) + 1
                    dead[i] = (i, "", _raw(p), f"not valid UTF-8: byte 0x{data[offset]:02x} at character {column}")
                    payloads[i] = b""
    if max_depth:
        for i in np.flatnonzero(json_depths(payloads) > max_depth).tolist():
            dead[i] = (i, "", _raw(payloads[i]), f"nesting deeper than max_depth ({max_depth})")
            payloads[i] = b""
    return payloads, dead


def _raw(payload: bytes | str) -> str:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return text if len(text) <= _RAW_KEEP else text[:_RAW_KEEP] + "..."
