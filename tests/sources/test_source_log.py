"""The local log of sources that cannot rewind (sources/log.py), and polled sensors read through it.

The log: records come back as appended, in order, across segments, after a restart (a new `SourceLog` on the
same directory) and after a torn write; truncation deletes only whole segments a position covers; the size cap
drops the oldest or refuses, and counts it. Property tests drive random sequences of those operations against a
plain list.

The sensors, in local runs (real threads, real files): a polled source keeps reading at its cadence while its
consumer is blocked, and everything read during the block arrives afterwards, in order, with the event time of
the reading; a quiet source with `idle_after` stops holding back the windows of another.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microstream as ms
from microstream.core.errors import PipelineError
from microstream.sources.log import SourceLog
from tests.helpers import wait_for

SEG = 256  # small segments, so a few records span several


def _payload(i: int, size: int) -> bytes:
    return i.to_bytes(4, "little") * max(1, size // 4)


def test_records_come_back_in_order_across_segments_and_a_restart(tmp_path):
    log = SourceLog(tmp_path, limit=64 * SEG, segment_bytes=SEG, fsync_every=0)
    records = [_payload(i, 40 + 7 * (i % 5)) for i in range(60)]
    assert [log.append(r) for r in records] == list(range(60))
    assert log.stats()["segments"] > 5
    start, got = log.read(0, 1000)
    assert start == 0 and got == records
    assert log.read(17, 5) == (17, records[17:22])
    log.close()
    again = SourceLog(tmp_path, limit=64 * SEG, segment_bytes=SEG)
    assert (again.first, again.end) == (0, 60)
    assert again.read(0, 1000)[1] == records
    assert again.append(b"next") == 60
    assert again.last() == b"next"


def test_a_torn_record_at_the_end_is_cut_off_when_the_log_opens(tmp_path):
    log = SourceLog(tmp_path, limit=64 * SEG, segment_bytes=SEG)
    for i in range(5):
        log.append(_payload(i, 32))
    log.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    with open(seg, "ab") as f:  # the process died in the middle of writing a record
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a rec")
    again = SourceLog(tmp_path, limit=64 * SEG, segment_bytes=SEG)
    assert again.end == 5
    assert again.read(0, 10)[1] == [_payload(i, 32) for i in range(5)]
    assert again.append(b"after") == 5 and again.read(5, 1)[1] == [b"after"]


def test_truncation_deletes_whole_segments_before_a_position_only(tmp_path):
    log = SourceLog(tmp_path, limit=64 * SEG, segment_bytes=SEG)
    for i in range(40):
        log.append(_payload(i, 60))
    segments = len(list(tmp_path.glob("*.seg")))
    deleted = log.truncate_before(13)
    assert deleted <= 13 and log.first == deleted and log.first <= 13
    assert len(list(tmp_path.glob("*.seg"))) < segments
    assert log.read(13, 100)[1] == [_payload(i, 60) for i in range(13, 40)]
    log.truncate_before(10_000)  # the active segment always stays
    assert len(list(tmp_path.glob("*.seg"))) == 1 and log.end == 40


def test_a_full_log_drops_the_oldest_or_refuses_and_counts_it(tmp_path):
    drop = SourceLog(tmp_path / "drop", limit=4 * SEG, segment_bytes=SEG)
    for i in range(100):
        assert drop.append(_payload(i, 60)) == i
    assert drop.size <= 4 * SEG and drop.dropped == drop.first > 0
    start, got = drop.read(0, 1000)  # a reader behind the oldest record starts at it
    assert start == drop.first and got == [_payload(i, 60) for i in range(start, 100)]
    refuse = SourceLog(tmp_path / "refuse", limit=4 * SEG, segment_bytes=SEG, on_full="refuse")
    seqs = [refuse.append(_payload(i, 60)) for i in range(100)]
    kept = [s for s in seqs if s is not None]
    assert kept == list(range(len(kept))) and refuse.refused == 100 - len(kept) > 0
    assert refuse.read(0, 1000)[1] == [_payload(i, 60) for i in range(len(kept))]
    refuse.truncate_before(refuse.end)  # a checkpoint frees room: appends are accepted again
    assert refuse.append(b"room again") == len(kept)


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(PipelineError, match="two segments"):
        SourceLog(tmp_path, limit=SEG, segment_bytes=SEG)
    p = ms.Pipeline("bad")
    with pytest.raises(PipelineError, match="log_full='refuse'"):
        p.poll(lambda: {"v": 1.0}, every=0.1, log_full="refused")
    with pytest.raises(PipelineError, match="log_limit must be a size"):
        p.poll(lambda: {"v": 1.0}, every=0.1, log_limit="lots")
    with pytest.raises(PipelineError, match="idle_after must be positive"):
        p.poll(lambda: {"v": 1.0}, every=0.1, idle_after=-1.0)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 120)),
    st.tuples(st.just("read"), st.integers(0, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("restart"), st.just(0))), max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_the_log_behaves_like_a_list_through_appends_reads_truncations_and_restarts(tmp_path_factory, ops):
    directory = tmp_path_factory.mktemp("log")
    log = SourceLog(directory, limit=1 << 20, segment_bytes=SEG)
    model: list[bytes] = []   # every record ever appended, by sequence number
    first = 0                 # the oldest the log may still have (truncation keeps whole segments)
    pos = 0                   # a reader's position
    for op, arg in ops:
        if op == "append":
            assert log.append(_payload(len(model), arg)) == len(model)
            model.append(_payload(len(model), arg))
        elif op == "read":
            start, got = log.read(pos, arg)
            assert start == max(pos, log.first)
            assert got == model[start:start + arg]
            pos = start + len(got)
        elif op == "truncate":
            log.truncate_before(arg)
            first = log.first
            assert first <= max(arg, 0) or first == len(model) or first <= len(model)
        else:
            log.close()
            log = SourceLog(directory, limit=1 << 20, segment_bytes=SEG)
        assert log.end == len(model)
        assert first <= log.first <= len(model)
        assert log.read(log.first, 10_000)[1] == model[log.first:]
    log.close()


# -- polled sensors through the log, in local runs -----------------------------------------------------------------
INTERVAL = 0.02


def _value(t_ns: int) -> float:
    """What the sensor reads at time t: a function of the reading time only."""
    return float((t_ns // 1_000_000) % 9973)


@pytest.mark.slow
def test_a_polled_sensor_keeps_its_cadence_while_its_consumer_is_blocked_and_loses_nothing():
    calls: list[int] = []                 # when the sensor was read (its own clock, after the stamp)
    blocked = threading.Event()

    def sensor():
        calls.append(time.time_ns())
        return {"v": 0.0}

    def consumer(batch):
        # the first batch of readings blocks the (single-threaded) run; not the build's test batch of zeros
        if (batch["time"] > 0).any() and not blocked.is_set():
            blocked.set()
            seen = len(calls)
            wait_for(lambda: len(calls) >= seen + 25, 30, "the sensor to be read while its consumer is blocked")
        return {"v": batch["v"], "time": batch["time"]}

    p = ms.Pipeline("cadence")
    out = ms.sinks.collect()
    p.poll(sensor, every=INTERVAL, limit=60, schema={"v": "float64"}).map(consumer).sink(out)
    result = p.run()
    times = out.batch()["time"]
    assert len(times) == 60 == len(calls) and result.records_in["poll"] == 60   # nothing lost
    assert np.all(np.diff(times) > 0)                                          # in order
    stamped = np.asarray(calls, dtype=np.int64)
    # each record's event time is its reading's: stamped just before the sensor call, after the previous one
    assert np.all(times <= stamped) and np.all(times[1:] >= stamped[:-1])
    # the cadence held during the block: readings never closer than 0.9 intervals
    assert np.diff(times).min() >= 0.9 * INTERVAL * 1e9


@pytest.mark.slow
def test_poll_file_readings_are_forwarded_with_their_reading_times(tmp_path):
    sensor = tmp_path / "temp"
    sensor.write_text("0\n")
    stop = threading.Event()

    def writer():  # the "driver": rewrites the file with a value that is a function of the time
        while not stop.is_set():
            now = time.time_ns()
            tmp = tmp_path / "temp.new"
            tmp.write_text(f"{_value(now)}\n")
            tmp.replace(sensor)
            time.sleep(0.001)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    gate = threading.Event()

    def slow(batch):
        if len(batch["v"]) and not gate.is_set():
            gate.set()
            time.sleep(0.5)  # a slow consumer: readings go on meanwhile
        return {"time": batch["time"], "v": batch["v"]}

    try:
        p = ms.Pipeline("file")
        out = ms.sinks.collect()
        p.poll_file(sensor, every=INTERVAL, column="v", limit=40).map(slow).sink(out)
        p.run()
    finally:
        stop.set()
        thread.join()
    b = out.batch()
    assert len(b["time"]) == 40
    # the file held the value of a moment at most a few ms before each reading (the writer's pace)
    written_ms = b["v"]
    read_ms = (b["time"] // 1_000_000) % 9973
    # signed, in ms: the clock is read just before the file, so a value the writer put there in between is a
    # few ms *newer* than its reading's stamp (seen with the machine loaded: -1 ms)
    lag = (read_ms - written_ms + 9973 // 2) % 9973 - 9973 // 2
    # (not the first reading: it can come while the run's start-up holds the interpreter and the writer waits)
    assert np.all(np.abs(lag[1:]) < 200), lag  # a value written long before its reading: a forwarding time


@pytest.mark.slow
def test_a_quiet_source_with_idle_after_does_not_stall_the_windows_of_another():
    """Two sensors feed keyed 1 s windows through a union; `b` falls silent after 5 readings and polls on until
    after `a` has ended. Without idleness, b's watermark holds every window of `a` back until b ends; with
    `idle_after`, a's windows fire while a's records are still coming, and b's late end changes nothing."""

    def run(idle_after):
        count = {"a": 0, "b": 0}
        emitted = {"a": 0}  # records of a that have entered the pipeline

        def reading(name, limit):
            def fn():
                count[name] += 1
                return {"sensor": name, "v": 1.0} if count[name] <= limit else None
            return fn

        def two_readings():     # a's 300 records in 150 polls: a ends well before b even when its polls lag
            return {"sensor": np.array(["a", "a"]), "v": np.ones(2)}

        def through(batch):
            emitted["a"] += len(batch["v"])
            return {"sensor": batch["sensor"], "v": batch["v"], "time": batch["time"]}

        fired: list[tuple[int, dict]] = []  # (records of a emitted when the window fired, the window)
        p = ms.Pipeline("idle")
        schema = {"sensor": "U1", "v": "float64"}
        # b polls 2.7x longer than a: a poll more than a tenth of an interval late skips its missed ticks, and on a
        # loaded machine a's polls (with the map and windows behind them) fell behind b's by more than 60 % (make test)
        a = p.poll(two_readings, every=0.02, limit=150, schema=schema).map(through)
        b = p.poll(reading("b", 5), every=0.02, limit=400, schema=schema, idle_after=idle_after)
        a.union(b).key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(n=ms.agg.count()).sink(
            ms.sinks.callback(lambda batch: fired.extend((emitted["a"], w) for w in batch.to_records())))
        p.run()
        return fired, emitted["a"]  # (the map is also tried on a few rows when the pipeline is built)

    def after_b(fired):
        """a's windows that end after b's last window starts: b's watermark alone holds those back until b ends (a
        window of a that ends before it may close early, when the run starts just before a second boundary and b's
        few readings pass it)."""
        b_last = max(w["window_start"] for _, w in fired if w["sensor"] == "b")
        return [(made, w) for made, w in fired if w["sensor"] == "a" and w["window_end"] > b_last]

    held, total = run(None)
    assert after_b(held) and all(made == total for made, _ in after_b(held)), (total, held)  # all after a ended
    fired, total = run("0.3s")
    a_windows = [(made, w) for made, w in fired if w["sensor"] == "a"]
    # a window of a that b's watermark would have held fired before all of a had been emitted
    assert min(made for made, _ in after_b(fired)) < total, (total, fired)
    # nothing of either was lost or counted twice
    assert sum(w["n"] for _, w in a_windows) == 300
    assert sum(w["n"] for _, w in fired if w["sensor"] == "b") == 5
