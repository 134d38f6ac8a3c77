"""Polling a device file (as /sys/class/thermal/thermal_zone0/temp): a real file the test rewrites."""

from __future__ import annotations

import threading
import time

import pytest

import microstream as ms


def test_poll_file_follows_the_file_and_dead_letters_bad_readings(tmp_path):
    path = tmp_path / "temp"
    path.write_text("41000\n")
    p = ms.Pipeline("cpu")
    dead: list[dict] = []  # callbacks see records as they arrive (a collect sink is filled when the run ends)
    got: list[float] = []
    p.poll_file(path, every=0.02, column="temp", scale=0.001, limit=40).sink(
        ms.sinks.callback(lambda b: got.extend(b["temp"].tolist())))
    p.dead_letters().sink(ms.sinks.callback(lambda b: dead.extend(b.to_records())))
    values = ["41000\n", "  42500 \n", "garbage\n", "", "-1500\n", "43000"]

    def rewrite():  # a driver updating the attribute: each value stays until the source has seen it
        for v in values:
            deadline = time.monotonic() + 5
            seen = len(got) + len(dead)
            path.write_text(v)
            while len(got) + len(dead) < seen + 2 and time.monotonic() < deadline:
                time.sleep(0.005)

    writer = threading.Thread(target=rewrite)
    writer.start()
    result = p.run()
    writer.join()
    assert result.records_in["poll_file"] == len(got) and len(got) + result.dead_letter_count == 40
    readings = list(dict.fromkeys(got))  # each value is read several times; the distinct ones in order
    assert readings == [41.0, 42.5, -1.5, 43.0]
    reasons = {d["reason"] for d in dead}
    assert reasons == {"not a number: 'garbage'", "not a number: ''"}
    assert all(d["position"].startswith(f"{path}@") for d in dead)


def test_poll_file_times_are_the_read_clock(tmp_path):
    path = tmp_path / "v"
    path.write_text("1")
    p = ms.Pipeline("clock")
    out = ms.sinks.collect()
    start = time.time_ns()
    p.poll_file(path, every=0.05, limit=4).sink(out)
    p.run()
    t = out.batch()["time"]
    assert t[0] >= start and all(d >= 0.045e9 for d in (t[1:] - t[:-1]))
    assert out.batch()["value"].tolist() == [1.0] * 4


def test_poll_file_missing_file_fails_at_build_time(tmp_path):
    p = ms.Pipeline("missing")
    with pytest.raises(ms.PipelineError, match="device file not found"):
        p.poll_file(tmp_path / "thermal_zone9" / "temp", every=0.5)
