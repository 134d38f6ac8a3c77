"""The task runner: one implementation of moving batches, watermarks, end-of-stream and dead letters, used by the
local runtime (every task in one virtual node) and by cluster hosts (tasks spread over virtual nodes, channels
between them). These tests drive it through the public API and, for the cross-vnode protocol, directly with an
in-memory transport instead of ZeroMQ."""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

import microstream as ms
from microstream.core.errors import PipelineError
from microstream.graph.physical import build_plan
from microstream.runtime.tasks import TaskRunner
from tests.helpers import dataset


def _rows(out) -> list[tuple]:
    return sorted(tuple(r.values()) for r in out.records())


# -- a pipeline runs twice with identical results, whatever its source ---------------------------------------
def _arrays(p):
    return p.from_arrays({"sensor": np.arange(300) % 7, "time": np.arange(300) * 10**8, "v": np.arange(300) * 0.5},
                         time="time", batch_size=50)


def _records():
    return [{"sensor": i % 5, "time": i * 10**8, "v": float(i)} for i in range(200)]


def _device_file() -> Path:
    """A file like /sys/class/thermal/thermal_zone0/temp: one number in milli-degrees."""
    path = Path(tempfile.mkdtemp()) / "temp"
    path.write_text("42500\n")
    return path


SOURCES = {
    "from_arrays": _arrays,
    "from_iterable(list)": lambda p: p.from_iterable(_records(), time="time", batch_size=32),
    "from_iterable(function)": lambda p: p.from_iterable(lambda: iter(_records()), time="time", batch_size=32),
    "synthetic": lambda p: p.synthetic(count=2_000, sensors=5, rate=1000, seed=3),
    "poll": lambda p: p.poll(lambda: {"v": 1.5}, every=0.001, limit=20).with_columns(
        sensor=lambda b: np.zeros(len(b["v"]), dtype=np.int64)),
    "read_csv": lambda p: p.read_csv(dataset("uci-occupancy/datatest.txt"), time="date", tags={"sensor": 1}),
    "poll_file": lambda p: p.poll_file(_device_file(), every=0.001, column="temp", scale=0.001, limit=10)
    .with_columns(sensor=lambda b: np.zeros(len(b["temp"]), dtype=np.int64)),
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_pipeline_runs_twice_with_identical_results(kind):
    p = ms.Pipeline(f"twice-{kind}")
    out = ms.sinks.collect()
    SOURCES[kind](p).sink(out)
    first = p.run(verbose=False)
    rows = out.records()
    second = p.run(verbose=False)
    assert first.records_in == second.records_in and sum(first.records_in.values()) > 0
    if kind in ("poll", "poll_file"):  # readings are stamped with the clock: the same count, not the same times
        assert len(out.records()) == len(rows) == {"poll": 20, "poll_file": 10}[kind]
    else:
        assert out.records() == rows
    assert "collect" in p.describe()  # and it can still be described after running


def test_files_run_twice_with_identical_results(tmp_path):
    path = tmp_path / "readings.jsonl"
    path.write_text("".join(json.dumps({"t": i, "room": f"r{i % 3}", "co2": 400 + i}) + "\n"
                            for i in range(100)))
    p = ms.Pipeline("jsonl-twice")
    out = ms.sinks.collect()
    p.read_jsonl(path, time="t", time_unit="s").key_by("room").window(ms.tumbling(seconds=10)).aggregate(
        n=ms.agg.count(), co2=ms.agg.mean("co2")).sink(out)
    p.run(verbose=False)
    rows = out.records()
    p.run(verbose=False)
    assert out.records() == rows and len(rows) == 30


def test_a_generator_can_be_read_by_one_run_only_and_the_second_says_so():
    p = ms.Pipeline("gen")
    out = ms.sinks.collect()
    p.from_iterable(({"v": float(i)} for i in range(10)), name="readings").sink(out)
    assert p.run(verbose=False).records_in == {"readings": 10}
    with pytest.raises(PipelineError, match="(?s)one-shot iterator.*lambda"):
        p.run(verbose=False)


# -- specs are frozen: state lives in the run's instances ---------------------------------------------------
def test_operator_specs_are_frozen_once_in_a_pipeline():
    p = ms.Pipeline("frozen")
    out = ms.sinks.collect()
    p.from_iterable([{"v": 1.0}]).sink(out)
    with pytest.raises(AttributeError, match="frozen"):
        p.graph.by_name("from_iterable").op.batch_size = 3
    with pytest.raises(PipelineError, match="already part of a pipeline"):
        p.from_iterable([{"v": 2.0}]).sink(out)


# -- the same partitioning locally as on a cluster ---------------------------------------------------------------
def _windows(parallelism: int) -> list[tuple]:
    p = ms.Pipeline("par")
    out = ms.sinks.collect()
    _arrays(p).key_by("sensor").window(ms.tumbling(seconds=3)).aggregate(
        n=ms.agg.count(), s=ms.agg.sum("v")).with_parallelism(parallelism).sink(out)
    p.run(verbose=False)
    return _rows(out)


def test_parallel_operators_run_as_parallel_tasks_locally_with_the_same_results():
    assert _windows(3) == _windows(1) and len(_windows(1)) > 10


def test_a_union_of_twelve_streams():
    p = ms.Pipeline("twelve")
    streams = [p.from_arrays({"i": np.full(100, i), "time": np.arange(100) * 10**6}, time="time", batch_size=16)
               for i in range(12)]
    out = ms.sinks.collect()
    streams[0].union(*streams[1:]).sink(out)
    p.run(verbose=False)
    assert collections.Counter(r["i"] for r in out.records()) == {i: 100 for i in range(12)}


# -- dead letters: counted once, where they are produced -------------------------------------------------------
def test_dead_letters_are_counted_once_whether_or_not_the_stream_is_sunk():
    def job(sink_dead: bool) -> ms.RunResult:
        p = ms.Pipeline("dead")
        p.from_iterable([{"raw": "1"}, {"raw": "x"}, {"raw": "y"}]).map_records(
            lambda r: {"v": float(r["raw"])}).sink(ms.sinks.collect())
        if sink_dead:
            p.dead_letters().sink(ms.sinks.collect())
        return p.run(verbose=False)

    sunk, unsunk = job(True), job(False)
    assert sunk.dead_letter_count == unsunk.dead_letter_count == 2
    assert [d["row"] for d in sunk.dead_letters] == [d["row"] for d in unsunk.dead_letters]
    assert sunk.records_in == unsunk.records_in == {"from_iterable": 3}


# -- the cross-vnode protocol, with an in-memory transport ---------------------------------------------------------
class InMemory:
    """Channels between runners as queues: what a host's ZeroMQ clients and server do, minus the network."""

    def __init__(self) -> None:
        self.runners: dict[str, TaskRunner] = {}
        self.queue: collections.deque = collections.deque()

    def outbox(self, task_id: str, vnode: str, method: str, *args, target: int = 0, watermark=None):
        kind = method.removeprefix("send_")
        if kind == "watermark":
            watermark = args[0]
        batch = args[0] if kind == "batch" else None
        self.queue.append((vnode, target, task_id, kind, batch, watermark))

    def pump(self) -> None:
        while self.queue:
            vnode, target, producer, kind, batch, wm = self.queue.popleft()
            self.runners[vnode].deliver(target, producer, kind, batch, wm)
        for runner in self.runners.values():
            runner.close_finished_inputs()


def test_runners_connected_by_any_transport_agree_with_the_local_run():
    def job():
        p = ms.Pipeline("split")
        out = ms.sinks.collect()
        src = p.synthetic(count=5_000, sensors=8, rate=1000, jitter=0.2, max_delay=0.5, seed=4)
        src.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
            n=ms.agg.count(), m=ms.agg.mean("value")).with_parallelism(2).sink(out)
        return p, out

    p, out = job()
    p.run(verbose=False)
    local = _rows(out)

    p, out = job()
    p.build()
    plan = build_plan(p.graph)
    assert len(plan.vnodes) >= 3
    net = InMemory()
    for vn in plan.vnodes:
        net.runners[vn] = TaskRunner(p.graph, plan, vn, outbox=net.outbox)
    while not all(r.finished for r in net.runners.values()):
        for runner in net.runners.values():
            runner.poll_sources(0)
        net.pump()
    from microstream.runtime.results import merge_results

    result = merge_results(p.graph, [r.result() for r in net.runners.values()], 0.0)
    assert _rows(out) == local and result.records_in == {"synthetic": 5_000}


def test_a_message_for_no_task_of_the_vnode_is_refused_not_fatal():
    p = ms.Pipeline("refuse")
    p.from_iterable([{"v": 1.0}]).sink(ms.sinks.collect())
    p.build()
    runner = TaskRunner(p.graph, build_plan(p.graph), "vn0")
    with pytest.raises(LookupError, match="no task input 60000"):
        runner.deliver(60000, "elsewhere", "batch", None)



def test_stats_say_when_each_task_took_its_first_batch_and_a_restored_runner_starts_afresh():
    """How a recovery is timed (bench/checkpoints.py): each task's stats carry the wall time of its first batch in,
    in this process; a runner restored from a snapshot carries the counts on, not that time."""
    import time

    p = ms.Pipeline("first-input")
    p.synthetic(count=2_000, sensors=4, rate=1000, seed=2).key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
        n=ms.agg.count()).with_parallelism(2).sink(ms.sinks.collect())
    p.build()
    plan = build_plan(p.graph)
    net = InMemory()
    for vn in plan.vnodes:
        net.runners[vn] = TaskRunner(p.graph, plan, vn, outbox=net.outbox)
    before = time.time()
    while not all(r.finished for r in net.runners.values()):
        for runner in net.runners.values():
            runner.poll_sources(0)
        net.pump()
    after = time.time()
    fed = 0
    for runner in net.runners.values():
        for op in runner.stats()["operators"].values():
            if op["records_in"]:
                assert before <= op["first_input_at"] <= after
                fed += 1
            else:
                assert op["first_input_at"] is None
    assert fed >= 2
    vnode, runner = next((v, r) for v, r in net.runners.items()
                         if any(op["records_in"] for op in r.stats()["operators"].values()))
    restored = TaskRunner(p.graph, plan, vnode, outbox=net.outbox)
    restored.restore(runner.snapshot())
    ops = restored.stats()["operators"].values()
    assert sum(op["records_in"] for op in ops) == sum(op["records_in"] for op in runner.stats()["operators"].values())
    assert all(op["first_input_at"] is None for op in ops)


def test_a_filtered_keyed_stream_split_across_vnodes_agrees_with_the_local_run_and_says_how_long_it_flowed():
    """A hash edge whose consumers are all in other virtual nodes sends each its records gathered once
    (`Batch.split`): without a mask, in order, with their watermarks; the run's flow span lies within the run."""
    import time

    def job():
        p = ms.Pipeline("split-filtered")
        out = ms.sinks.collect()
        (p.synthetic(count=6_000, sensors=9, rate=1000, jitter=0.2, max_delay=0.5, glitch_rate=0.1, seed=5)
         .filter(lambda b: b["value"] < 500).key_by("sensor").window(ms.tumbling(seconds=1))
         .aggregate(n=ms.agg.count(), m=ms.agg.max("value")).with_parallelism(3).sink(out))
        return p, out

    p, out = job()
    before = time.time()
    local_result = p.run(verbose=False)
    assert before <= local_result.flow_start <= local_result.flow_end <= time.time()
    assert local_result.cpu_seconds is not None and local_result.cpu_seconds > 0
    local = _rows(out)

    p, out = job()
    p.build()
    plan = build_plan(p.graph)
    net = InMemory()
    sent: list = []
    outbox = net.outbox

    def capture(task_id, vnode, method, *args, **kwargs):
        if method == "send_batch":
            sent.append(args[0])
        outbox(task_id, vnode, method, *args, **kwargs)

    for vn in plan.vnodes:
        net.runners[vn] = TaskRunner(p.graph, plan, vn, outbox=capture)
    before = time.time()
    while not all(r.finished for r in net.runners.values()):
        for runner in net.runners.values():
            runner.poll_sources(0)
        net.pump()
    from microstream.runtime.results import merge_results

    result = merge_results(p.graph, [r.result() for r in net.runners.values()], 0.0)
    assert _rows(out) == local
    assert sent and all(b.mask is None and b.wm is not None for b in sent)
    assert before <= result.flow_start <= result.flow_end <= time.time() and result.flow_seconds is not None
