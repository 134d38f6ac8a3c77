"""Prometheus metrics for the coordinator, agents and hosts.

Hosts count records, batches and CPU time themselves and send *absolute totals* as plain dicts
over ZeroMQ; the coordinator/agent feeds them into a `Metrics` object, which the Prometheus
server scrapes over HTTP (`serve`). See docs/prometheus.md for what each metric means.

Design choice: `Metrics` is a custom Collector on its own `CollectorRegistry` (never the global
one, so several components can live in one process). It stores the latest totals per *source*
(the host/subtask that reported them) and builds the exposition at scrape time:

* counters (`*_total`) are the sum over sources. Each source's total is reset-aware: if a source
  reports less than before (its host process restarted), the old total is kept as an offset, so
  the exposed counter never goes down;
* gauges are summed over sources (queue depth) or take the worst source (watermark lag);
* watermark lag is computed at scrape time as wall clock minus the reported watermark, so a stalled
  job shows a growing lag even when its host stops reporting.

Series live until `forget_job` / `forget_node` is called (the coordinator does that when it
drops a job from its history), so cardinality stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

MIN_TIME = -(2**63)
MAX_TIME = 2**63 - 1
NS_PER_S = 1e9


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # "counter" | "gauge" | "watermark"
    labels: tuple[str, ...]
    help: str
    combine: Callable[[list[float]], float] = sum


_OP = ("job", "operator")
_CH = ("job", "channel")
_HOST = ("node", "vnode")
SPECS: dict[str, _Spec] = {s.name: s for s in [
    _Spec("microstream_records_in_total", "counter", _OP, "Records received by an operator."),
    _Spec("microstream_records_out_total", "counter", _OP, "Records emitted by an operator."),
    _Spec("microstream_batches_in_total", "counter", _OP, "Batches received by an operator."),
    _Spec("microstream_batches_out_total", "counter", _OP, "Batches emitted by an operator."),
    _Spec("microstream_dead_letters_total", "counter", _OP, "Records an operator sent to the dead-letter queue."),
    _Spec("microstream_channel_queue_depth", "gauge", _CH, "Batches waiting in a channel between operators."),
    _Spec("microstream_backpressure_seconds_total", "counter", _CH,
          "Seconds senders spent blocked because a channel was full."),
    _Spec("microstream_channel_stalled_seconds", "gauge", _CH,
          "Seconds a channel has had messages in flight and none delivered (0 while it moves or is idle).", max),
    _Spec("microstream_watermark_lag_seconds", "watermark", _OP,
          "Wall clock minus the operator's event-time watermark (worst subtask)."),
    _Spec("microstream_host_cpu_seconds_total", "counter", _HOST, "CPU seconds used by a vnode's host processes."),
    _Spec("microstream_host_memory_bytes", "gauge", _HOST, "Resident memory of a vnode's host processes."),
    _Spec("microstream_node_up", "gauge", ("node",), "1 if the agent on a node is connected, else 0."),
    _Spec("microstream_jobs", "gauge", ("state",), "Jobs known to the coordinator, by state."),
]}


class _Total:
    """A reported absolute total that survives resets of its source (value never decreases)."""

    __slots__ = ("base", "last")

    def __init__(self) -> None:
        self.base = 0.0
        self.last = 0.0

    def set(self, value: float) -> None:
        if value < self.last:  # the source restarted from zero
            self.base += self.last
        self.last = value

    @property
    def value(self) -> float:
        return self.base + self.last


# metric name -> label values -> source -> value (_Total for counters, float otherwise)
_Store = dict[str, dict[tuple[str, ...], dict[str, Any]]]


class Metrics:
    """All microstream metrics of one component, on a private CollectorRegistry.

    Update methods take absolute values (totals since the reporting process started), keyed by an
    optional `source` (e.g. "vnode-3/task-7") so several subtasks of one operator add up.
    Every reporting process must use its own `source`: two processes reporting under one source
    look like counter resets to the reset-aware totals and inflate them.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._store: _Store = {name: {} for name in SPECS}
        self.registry.register(self)
        self._movement_metrics()

    def _movement_metrics(self) -> None:
        """Migrations and link traffic: plain prometheus_client objects on the same private registry."""
        from prometheus_client import Counter, Gauge, Histogram

        self.migrations = Counter("microstream_migrations", "Virtual nodes moved, saved or restored.",
                                  ["job", "mode", "reason"], registry=self.registry)
        self.migration_downtime = Histogram(
            "microstream_migration_downtime_seconds",
            "Time a virtual node's inputs were held during a move (barrier to redirect).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=self.registry)
        self.migration_state_bytes = Counter("microstream_migration_state_bytes",
                                             "Operator state bytes shipped by moves.", registry=self.registry)
        self.checkpoints = Counter("microstream_checkpoints", "Checkpoints completed.", ["job"],
                                   registry=self.registry)
        self.checkpoint_bytes = Gauge("microstream_checkpoint_bytes", "Size of the job's last checkpoint.", ["job"],
                                      registry=self.registry)
        self.checkpoint_seconds = Histogram(
            "microstream_checkpoint_seconds", "Time from a checkpoint's barrier to its last snapshot.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=self.registry)
        self.recoveries = Counter("microstream_recoveries", "Jobs restarted from a checkpoint after a fault.",
                                  ["job"], registry=self.registry)
        self.link_traffic = Gauge("microstream_link_traffic_bytes_per_second",
                                  "Bytes/s between two physical nodes, measured or predicted by placement.",
                                  ["job", "from_node", "to_node", "kind"], registry=self.registry)

    # -- updates ----------------------------------------------------------------------------------------
    def _set(self, name: str, labels: tuple[Any, ...], value: float | None, source: str = "") -> None:
        if value is None:
            return
        key = tuple(str(v) for v in labels)
        with self._lock:
            sources = self._store[name].setdefault(key, {})
            if SPECS[name].kind == "counter":
                sources.setdefault(source, _Total()).set(float(value))
            else:
                sources[source] = float(value)

    def update_operator(self, job: str, operator: str, records_in: int | None = None,
                        records_out: int | None = None, batches_in: int | None = None,
                        batches_out: int | None = None, *, dead_letters: int | None = None,
                        watermark: int | None = None, source: str = "") -> None:
        """Absolute record/batch totals of one operator (subtask `source`); None leaves a value as is.

        `watermark` is the operator's output watermark in int64 ns since the epoch (MIN/MAX ignored).
        """
        labels = (job, operator)
        self._set("microstream_records_in_total", labels, records_in, source)
        self._set("microstream_records_out_total", labels, records_out, source)
        self._set("microstream_batches_in_total", labels, batches_in, source)
        self._set("microstream_batches_out_total", labels, batches_out, source)
        self._set("microstream_dead_letters_total", labels, dead_letters, source)
        if watermark is not None:
            self.update_watermark(job, operator, watermark, source=source)

    def update_watermark(self, job: str, operator: str, watermark_ns: int, *, source: str = "") -> None:
        """Latest watermark (int64 ns); lag is wall clock minus it, computed when scraped.

        An end-of-stream watermark (MAX) removes the series of that source: a finished operator has no lag.
        """
        if watermark_ns == MAX_TIME:
            self._drop_source("microstream_watermark_lag_seconds", (job, operator), source)
        elif watermark_ns != MIN_TIME:
            self._set("microstream_watermark_lag_seconds", (job, operator), watermark_ns, source)

    def update_watermark_lag(self, job: str, operator: str, lag_seconds: float, *, source: str = "") -> None:
        """Like update_watermark, for reporters that send the lag instead of the watermark."""
        self.update_watermark(job, operator, int((self.clock() - lag_seconds) * NS_PER_S), source=source)

    def set_watermark_lag(self, job: str, operator: str, lag_seconds: float, *, source: str = "") -> None:
        """Alias of update_watermark_lag."""
        self.update_watermark_lag(job, operator, lag_seconds, source=source)

    def update_dead_letters(self, job: str, operator: str, total: int, *, source: str = "") -> None:
        self._set("microstream_dead_letters_total", (job, operator), total, source)

    def update_channel(self, job: str, channel: str, queue_depth: int | None = None,
                       backpressure_seconds: float | None = None, *, source: str = "") -> None:
        """A channel's current queue depth and total seconds its senders were blocked."""
        self._set("microstream_channel_queue_depth", (job, channel), queue_depth, source)
        self._set("microstream_backpressure_seconds_total", (job, channel), backpressure_seconds, source)

    def set_channel_stalled(self, job: str, channel: str, seconds: float, *, source: str = "") -> None:
        """Seconds without progress on a channel that has messages in flight (0: moving, or nothing to send)."""
        self._set("microstream_channel_stalled_seconds", (job, channel), seconds, source)

    def set_backpressure(self, job: str, channel: str, seconds: float, *, source: str = "") -> None:
        """Total seconds the senders of `channel` were blocked (alias of update_channel(backpressure_seconds=))."""
        self.update_channel(job, channel, backpressure_seconds=seconds, source=source)

    def set_host_usage(self, node: str, vnode: str, cpu_seconds: float, memory_bytes: int) -> None:
        """Alias of update_host."""
        self.update_host(node, vnode, cpu_seconds, memory_bytes)

    def update_host(self, node: str, vnode: str, cpu_seconds: float | None = None,
                    memory_bytes: int | None = None) -> None:
        """CPU seconds used (total) and resident memory now of the host processes of `vnode`."""
        self._set("microstream_host_cpu_seconds_total", (node, vnode), cpu_seconds)
        self._set("microstream_host_memory_bytes", (node, vnode), memory_bytes)

    def set_node_up(self, node: str, up: bool) -> None:
        self._set("microstream_node_up", (node,), 1.0 if up else 0.0)

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        """Number of jobs per state; states missing from `counts` drop to 0."""
        with self._lock:
            series = self._store["microstream_jobs"]
            for key in series:
                series[key] = {"": 0.0}
            for state, n in counts.items():
                series[(str(state),)] = {"": float(n)}

    def update_from_host_stats(self, job: str, stats: Mapping[str, Any], node: str = "") -> None:
        """Feed one `HostRuntime.stats()` snapshot (as sent over ZeroMQ) for `job` on `node`."""
        vnode = str(stats.get("vnode", ""))
        for task_id, op in (stats.get("operators") or {}).items():
            self.update_operator(job, op.get("operator", str(task_id)), op.get("records_in"), op.get("records_out"),
                                 op.get("batches_in"), op.get("batches_out"), dead_letters=op.get("dead_letters"),
                                 watermark=op.get("watermark"), source=f"{vnode}/{task_id}")
        for name, ch in (stats.get("channels") or {}).items():
            self.update_channel(job, name, ch.get("queue_depth"), ch.get("blocked_seconds"), source=vnode)
            if ch.get("stalled_seconds") is not None:
                self.set_channel_stalled(job, name, ch["stalled_seconds"], source=vnode)
        dead = stats.get("dead_letters")
        if isinstance(dead, Mapping):
            for operator, total in dead.items():
                self.update_dead_letters(job, operator, total, source=vnode)
        elif dead is not None:  # a per-host total, not attributed to an operator
            self.update_dead_letters(job, "", dead, source=vnode)
        if node and ("cpu_seconds" in stats or "memory_bytes" in stats):
            self.update_host(node, vnode, stats.get("cpu_seconds"), stats.get("memory_bytes"))

    # -- forgetting --------------------------------------------------------------------------------------
    def _drop_source(self, name: str, labels: tuple[str, ...], source: str) -> None:
        with self._lock:
            sources = self._store[name].get(labels)
            if sources is not None:
                sources.pop(source, None)
                if not sources:
                    del self._store[name][labels]

    def forget_job(self, job: str) -> None:
        """Drop every series of `job` (call when the coordinator forgets the job), the movement and checkpoint
        families' included."""
        self._forget("job", job)
        for family in (self.migrations, self.checkpoints, self.checkpoint_bytes, self.recoveries, self.link_traffic):
            _remove_series(family, "job", job)
        with self._lock:  # its hosts' series: vnode "job/vnode"
            for name, spec in SPECS.items():
                if "vnode" in spec.labels:
                    i = spec.labels.index("vnode")
                    self._store[name] = {k: v for k, v in self._store[name].items() if not k[i].startswith(f"{job}/")}

    def forget_node(self, node: str) -> None:
        """Drop every series of `node` (call when a node is removed from the cluster)."""
        self._forget("node", node)

    def _forget(self, label: str, value: str) -> None:
        with self._lock:
            for name, spec in SPECS.items():
                if label in spec.labels:
                    i = spec.labels.index(label)
                    self._store[name] = {k: v for k, v in self._store[name].items() if k[i] != value}

    # -- Collector protocol ---------------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return [_family(spec) for spec in SPECS.values()]

    def collect(self) -> Iterator[Metric]:
        now_ns = self.clock() * NS_PER_S
        families = []
        with self._lock:
            for name, spec in SPECS.items():
                family = _family(spec)
                for labels, sources in sorted(self._store[name].items()):
                    if sources:
                        family.add_metric(list(labels), _combine(spec, sources, now_ns))
                families.append(family)
        yield from families

    def exposition(self) -> bytes:
        """The text exposition, as a scrape would return it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _remove_series(family: Any, label: str, value: str) -> None:
    """Remove every series of a labelled prometheus_client metric whose `label` is `value` (its label sets as
    `collect()` shows them, in the order the metric declares its labels)."""
    found = {tuple(sample.labels.items()) for metric in family.collect() for sample in metric.samples
             if sample.labels.get(label) == value}
    for labels in found:
        with contextlib.suppress(KeyError):
            family.remove(*(v for _, v in labels))


def _family(spec: _Spec) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _combine(spec: _Spec, sources: dict[str, Any], now_ns: float) -> float:
    if spec.kind == "counter":
        return sum(t.value for t in sources.values())
    if spec.kind == "watermark":  # the slowest subtask: smallest watermark
        return (now_ns - min(sources.values())) / NS_PER_S
    return spec.combine(list(sources.values()))


# -- HTTP server --------------------------------------------------------------------------------------------

REQUEST_TIMEOUT = 10.0   # seconds a connection has to send its request, and a worker to send the answer
MAX_PENDING = 64         # connections waiting for their request; a new one beyond closes the oldest
WORKERS = 2              # threads that build and send answers (scrapes are quick; Prometheus sends one at a time)
MAX_QUEUED = 16          # complete requests waiting for a worker; beyond, 503 at once
MAX_REQUEST_BYTES = 16 << 10
_ACCEPT_AT_ONCE = 64


class MetricsServer:
    """A running /metrics HTTP endpoint; `stop()` closes it.

    One thread reads requests with a selector (a connection that sends nothing costs a file descriptor, never a
    thread, and is closed after `request_timeout` s; with more than `max_pending` waiting, the oldest is closed),
    and a pool of `workers` threads answers complete ones. So however many connections are opened, the server uses
    1 + `workers` threads and bounded memory, and a scraper that sends its request gets an answer.
    """

    def __init__(self, app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, *,
                 workers: int = WORKERS, request_timeout: float = REQUEST_TIMEOUT, max_pending: int = MAX_PENDING,
                 max_queued: int = MAX_QUEUED) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.max_pending = max_pending
        self.max_queued = max_queued
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve Prometheus metrics on {host}:{port}: {exc.strerror or exc}; "
                                     "choose another metrics port (0: any free port)") from exc
        self._listener.setblocking(False)
        self.host: str = host
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}  # in the order accepted: (deadline, bytes)
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="microstream-metrics-worker")
        self._stopping = False
        self.closed_idle = 0       # connections closed for sending no complete request in time, or evicted
        self.thread = threading.Thread(target=self._loop, name="microstream-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    shutdown = stop

    # -- the selector thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(timeout=min(1.0, self.request_timeout)):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        assert isinstance(sock, socket.socket)
                        self._read(sock)
                self._expire(time.monotonic())
        finally:
            for sock in list(self._pending):
                self._close(sock)
            self._selector.close()
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_AT_ONCE):
            try:
                conn, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: the oldest waiting connections make room
                self._evict(max(1, len(self._pending) // 4))
                return
            conn.setblocking(False)
            if len(self._pending) >= self.max_pending:
                self._evict(1)
            self._pending[conn] = (time.monotonic() + self.request_timeout, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        entry = self._pending.get(conn)
        if entry is None:
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        buffer = entry[1]
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_REQUEST_BYTES:
                self._close(conn)
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        with self._queued_lock:
            busy = self._queued >= self.max_queued
            if not busy:
                self._queued += 1
        if busy:
            _respond(conn, "503 Service Unavailable", [("Retry-After", "1")], b"busy\n", self.request_timeout)
            return
        try:
            self._pool.submit(self._answer, conn, bytes(buffer[:end]))
        except RuntimeError:  # shutting down
            conn.close()

    def _expire(self, now: float) -> None:
        for conn, (deadline, _) in list(self._pending.items()):
            if deadline > now:
                break  # in the order accepted, so in the order of their deadlines
            self.closed_idle += 1
            self._close(conn)

    def _evict(self, n: int) -> None:
        for conn in list(self._pending)[:n]:
            self.closed_idle += 1
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    # -- a worker ------------------------------------------------------------------------------------------------
    def _answer(self, conn: socket.socket, head: bytes) -> None:
        try:
            status, headers, body = self._call_app(head)
            _respond(conn, status, headers, body, self.request_timeout)
        finally:
            with self._queued_lock:
                self._queued -= 1

    def _call_app(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", [], b"bad request\n"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD")], b"GET /metrics\n"
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                                   "SERVER_NAME": self.host, "SERVER_PORT": str(self.port),
                                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http"}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer["status"], answer["headers"] = status, headers

        try:
            chunks = self.app(environ, start_response)
            body = b"".join(chunks)
        except Exception as exc:  # noqa: BLE001 - a broken collector must not take the server down
            return "500 Internal Server Error", [], f"error collecting metrics: {type(exc).__name__}\n".encode()
        return answer.get("status", "500 Internal Server Error"), answer.get("headers", []), \
            b"" if method == "HEAD" else body


def _respond(conn: socket.socket, status: str, headers: list[tuple[str, str]], body: bytes, timeout: float) -> None:
    """Send one HTTP/1.1 answer and close the connection (one request per connection: nothing to keep idle)."""
    head = [f"HTTP/1.1 {status}"]
    head += [f"{name}: {value}" for name, value in headers if name.lower() not in ("content-length", "connection")]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    try:
        conn.settimeout(timeout)
        conn.sendall("\r\n".join(head).encode("latin-1") + body)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def serve(metrics: Metrics, host: str = "127.0.0.1", port: int = 0, **options: Any) -> tuple[MetricsServer, int]:
    """Serve `metrics` over HTTP on host:port (0 picks a free port); returns (server, actual port).

    Loopback by default: bind to "0.0.0.0" (or the LAN address) for a Prometheus server on another machine to
    scrape it. `options`: `workers`, `request_timeout`, `max_pending`, `max_queued` (see MetricsServer).
    """
    server = MetricsServer(make_wsgi_app(metrics.registry), host, port, **options)
    return server, server.port


def stop(server: MetricsServer) -> None:
    """Stop a server started by `serve`."""
    server.stop()


# -- process usage from /proc -------------------------------------------------------------------------------


def process_usage(pid: int, include_children: bool = False) -> tuple[float, int]:
    """(CPU seconds used, resident memory in bytes) of process `pid`, read from /proc (Linux).

    `include_children` adds the CPU time of children that have exited and been waited for.
    Raises ProcessLookupError if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(f"no process {pid}") from None
    fields = data[data.rindex(b")") + 2:].split()  # the command name may contain spaces and ')'
    # fields[0] is field 3 (state) of proc(5): utime=14, stime=15, cutime=16, cstime=17, rss=24
    ticks = int(fields[11]) + int(fields[12])
    if include_children:
        ticks += int(fields[13]) + int(fields[14])
    rss_pages = int(fields[21])
    return ticks / os.sysconf("SC_CLK_TCK"), rss_pages * os.sysconf("SC_PAGE_SIZE")
