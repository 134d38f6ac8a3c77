"""Prometheus metrics: a real HTTP scrape of the exposition, parsed with prometheus_client's parser."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from microstream.cluster import metrics as m
from microstream.cluster.metrics import Metrics, process_usage, serve

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _local(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    return _samples(metrics.exposition().decode())


def _op(job: str, operator: str) -> frozenset:
    return frozenset({"job": job, "operator": operator}.items())


def test_scrape_over_http():
    metrics = Metrics(clock=Clock())
    server, port = serve(metrics, port=0)
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}/metrics"
        metrics.update_operator("j1", "parse", records_in=100, records_out=90, batches_in=4, batches_out=3,
                                dead_letters=10, watermark=int((NOW - 2.5) * 1e9))
        metrics.update_channel("j1", "parse>window", queue_depth=7, backpressure_seconds=1.25)
        metrics.update_host("pi-1", "pi-1/0", cpu_seconds=12.5, memory_bytes=50_000_000)
        metrics.set_node_up("pi-1", True)
        metrics.set_node_up("pi-2", False)
        metrics.set_jobs({"running": 2, "finished": 5})
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()  # alias of stop()
        server.stop()  # idempotent
    got = _samples(text)
    op = _op("j1", "parse")
    assert got[("microstream_records_in_total", op)] == 100
    assert got[("microstream_records_out_total", op)] == 90
    assert got[("microstream_batches_in_total", op)] == 4
    assert got[("microstream_batches_out_total", op)] == 3
    assert got[("microstream_dead_letters_total", op)] == 10
    assert got[("microstream_watermark_lag_seconds", op)] == pytest.approx(2.5, abs=1e-6)
    ch = frozenset({"job": "j1", "channel": "parse>window"}.items())
    assert got[("microstream_channel_queue_depth", ch)] == 7
    assert got[("microstream_backpressure_seconds_total", ch)] == 1.25
    host = frozenset({"node": "pi-1", "vnode": "pi-1/0"}.items())
    assert got[("microstream_host_cpu_seconds_total", host)] == 12.5
    assert got[("microstream_host_memory_bytes", host)] == 50_000_000
    assert got[("microstream_node_up", frozenset({("node", "pi-1")}))] == 1
    assert got[("microstream_node_up", frozenset({("node", "pi-2")}))] == 0
    assert got[("microstream_jobs", frozenset({("state", "running")}))] == 2
    assert "# TYPE microstream_records_in_total counter" in text
    assert "# TYPE microstream_channel_queue_depth gauge" in text
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=1)


def test_busy_port_is_a_clear_error():
    metrics = Metrics()
    server, port = serve(metrics)
    try:
        with pytest.raises(OSError, match=f"cannot serve Prometheus metrics on 127.0.0.1:{port}.*metrics port"):
            serve(metrics, port=port)
    finally:
        server.stop()


def test_counters_add_sources_and_survive_resets():
    metrics = Metrics()
    metrics.update_operator("j", "map", records_in=10, source="vn0/1")
    metrics.update_operator("j", "map", records_in=5, source="vn1/1")
    assert _local(metrics)[("microstream_records_in_total", _op("j", "map"))] == 15
    metrics.update_operator("j", "map", records_in=12, source="vn0/1")
    metrics.update_operator("j", "map", records_in=3, source="vn1/1")  # vn1's host restarted from 0
    assert _local(metrics)[("microstream_records_in_total", _op("j", "map"))] == 12 + 5 + 3
    metrics.update_operator("j", "map", records_out=1, source="vn0/1")  # None leaves records_in alone
    assert _local(metrics)[("microstream_records_in_total", _op("j", "map"))] == 20


def test_watermark_lag_is_worst_subtask_and_grows_while_stalled():
    clock = Clock()
    metrics = Metrics(clock=clock)
    metrics.update_watermark("j", "win", int((NOW - 1) * 1e9), source="a")
    metrics.update_watermark("j", "win", int((NOW - 4) * 1e9), source="b")
    key = ("microstream_watermark_lag_seconds", _op("j", "win"))
    assert _local(metrics)[key] == pytest.approx(4.0)
    clock.t += 10  # nobody reports: the lag keeps growing
    assert _local(metrics)[key] == pytest.approx(14.0)
    metrics.update_watermark("j", "win", m.MAX_TIME, source="b")  # b finished
    assert _local(metrics)[key] == pytest.approx(11.0)
    metrics.update_watermark_lag("j", "win", 0.5, source="a")
    assert _local(metrics)[key] == pytest.approx(0.5)
    metrics.update_watermark("j", "win", m.MAX_TIME, source="a")
    assert key not in _local(metrics)


def test_jobs_states_drop_to_zero_and_forget():
    metrics = Metrics()
    metrics.set_jobs({"running": 1})
    metrics.set_jobs({"finished": 1})
    got = _local(metrics)
    assert got[("microstream_jobs", frozenset({("state", "running")}))] == 0
    assert got[("microstream_jobs", frozenset({("state", "finished")}))] == 1

    metrics.update_operator("old", "a", records_in=1)
    metrics.update_operator("new", "a", records_in=2)
    metrics.update_host("pi-9", "v", cpu_seconds=1.0)
    metrics.forget_job("old")
    metrics.forget_node("pi-9")
    got = _local(metrics)
    assert ("microstream_records_in_total", _op("old", "a")) not in got
    assert got[("microstream_records_in_total", _op("new", "a"))] == 2
    assert not any(name == "microstream_host_cpu_seconds_total" for name, _ in got)


def test_update_from_host_stats_snapshot():
    metrics = Metrics(clock=Clock())
    stats = {"vnode": "pi-1/0", "dead_letters": 3, "cpu_seconds": 2.0, "memory_bytes": 1024,
             "operators": {
                 "t1": {"operator": "parse", "records_in": 8, "records_out": 6, "batches_in": 2, "batches_out": 2,
                        "watermark": int((NOW - 3) * 1e9), "watermark_lag_s": 3.0, "finished": False},
                 "t2": {"operator": "parse", "records_in": 2, "records_out": 2, "batches_in": 1, "batches_out": 1,
                        "watermark": m.MIN_TIME, "watermark_lag_s": None, "finished": False}},
             "channels": {"t1>5": {"blocked_seconds": 0.75, "sent_messages": 4}}}
    metrics.update_from_host_stats("j", stats, node="pi-1")
    got = _local(metrics)
    assert got[("microstream_records_in_total", _op("j", "parse"))] == 10
    assert got[("microstream_watermark_lag_seconds", _op("j", "parse"))] == pytest.approx(3.0)
    assert got[("microstream_dead_letters_total", _op("j", ""))] == 3
    assert got[("microstream_backpressure_seconds_total", frozenset({"job": "j", "channel": "t1>5"}.items()))] == 0.75
    assert got[("microstream_host_memory_bytes", frozenset({"node": "pi-1", "vnode": "pi-1/0"}.items()))] == 1024


def test_several_components_in_one_process():
    a, b = Metrics(), Metrics()
    a.set_node_up("x", True)
    assert ("microstream_node_up", frozenset({("node", "x")})) in _local(a)
    assert ("microstream_node_up", frozenset({("node", "x")})) not in _local(b)


def test_process_usage_reads_proc():
    cpu0, rss = process_usage(os.getpid())
    sum(i * i for i in range(300_000))  # burn a little CPU
    cpu1, _ = process_usage(os.getpid())
    assert cpu1 >= cpu0 > 0
    with open("/proc/self/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(rss - vm_rss) < 0.2 * vm_rss
    assert process_usage(os.getpid(), include_children=True)[0] >= cpu1
    with pytest.raises(ProcessLookupError):
        process_usage(2**22 + 12345)


def test_aliases_used_by_the_agent():
    metrics = Metrics(clock=Clock())
    metrics.set_watermark_lag("j", "op", 2.0, source="vn0")
    metrics.set_backpressure("j", "a>b", 0.5, source="vn0")
    metrics.set_host_usage("pi-1", "j/0", 3.0, 4096)
    got = _local(metrics)
    assert got[("microstream_watermark_lag_seconds", _op("j", "op"))] == pytest.approx(2.0)
    assert got[("microstream_backpressure_seconds_total", frozenset({"job": "j", "channel": "a>b"}.items()))] == 0.5
    assert got[("microstream_host_cpu_seconds_total", frozenset({"node": "pi-1", "vnode": "j/0"}.items()))] == 3.0
