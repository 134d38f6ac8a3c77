"""Data channels over real ZeroMQ TCP sockets on 127.0.0.1 (and real spawned producer processes)."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections import deque

import numpy as np
import pytest
import zmq

from microstream.core.batch import Batch
from microstream.runtime.channels import (
    ChannelClient,
    ChannelError,
    ChannelServer,
    CurveKeys,
    Message,
    _Encoder,
    generate_keys,
)

SPAWN = multiprocessing.get_context("spawn")


# -- helpers (module level so spawned processes can import them) --------------------------------------

def make_batch(i: int, n: int = 50) -> Batch:
    rng = np.random.default_rng(i)
    return Batch({
        "id": np.arange(i * n, (i + 1) * n, dtype=np.int64),
        "value": rng.normal(size=n),
        "ok": rng.random(n) > 0.5,
        "sensor": np.array([f"s{(i * n + k) % 7}" + "x" * (k % 3) for k in range(n)]),
    }, wm=np.arange(i * n, (i + 1) * n, dtype=np.int64) * 1000)


def produce_round_trip(endpoint: str, channel_id: str, n: int, keys: tuple | None, server_public: bytes | None,
                       out) -> None:
    client = ChannelClient(endpoint, channel_id, keys=CurveKeys(*keys) if keys else None,
                           server_public=server_public)
    try:
        for i in range(n):
            assert client.send_batch(make_batch(i), target=i % 2, timeout=20)
            if i == 1:
                assert client.send_watermark(123_456, target=1, timeout=20)
                assert client.send_barrier(7, timeout=20)
        assert client.send_end(timeout=20)
        out.put((client.sent_messages, client.sent_bytes))
    finally:
        client.close()


def produce_big(endpoint: str, n: int, mb: int, out) -> None:
    client = ChannelClient(endpoint, "big[0]")
    rows = mb * (1 << 20) // 8
    try:
        for i in range(n):
            assert client.send_batch(Batch({"x": np.full(rows, float(i))}), timeout=30)
        assert client.send_end(timeout=30)
        out.put(client.blocked_seconds)
    finally:
        client.close()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def drain(server: ChannelServer, until_end: int = 1, timeout: float = 8.0, ack: bool = True) -> list[Message]:
    """Receive (and ack) until `until_end` end messages arrived."""
    out, ends, deadline = [], 0, time.monotonic() + timeout
    while ends < until_end:
        msg = server.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert msg is not None, f"timed out after {len(out)} messages"
        out.append(msg)
        ends += msg.kind == "end"
        if ack:
            server.ack(msg)
    return out


def assert_batches_equal(got: Batch, want: Batch) -> None:
    assert got.names == want.names
    for name in want.names:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name])
    if want.wm is None:
        assert got.wm is None
    else:
        assert got.wm.dtype == np.int64
        np.testing.assert_array_equal(got.wm, want.wm)


def serve_in_thread(server: ChannelServer, stop: threading.Event) -> threading.Thread:
    """Keep calling recv so that hellos get their credits (for tests whose consumer receives nothing)."""
    def loop() -> None:
        while not stop.is_set():
            msg = server.recv(timeout=0.05)
            if msg is not None:
                server.ack(msg)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.fixture
def server():
    s = ChannelServer(credits=4, window_bytes=0)  # a window of 4 messages, whatever their size
    yield s
    s.close()


# -- round trip ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_round_trip_from_spawned_producer(curve: bool) -> None:
    n = 6
    server_keys, client_keys = (generate_keys(), generate_keys()) if curve else (None, None)
    server = ChannelServer(keys=server_keys, trusted=[client_keys.public] if curve else None, credits=3)
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=produce_round_trip, args=(
        server.endpoint, "parse[2]", n, (client_keys.public, client_keys.secret) if curve else None,
        server_keys.public if curve else None, out))
    proc.start()
    try:
        msgs = drain(server, timeout=9)
        sent_messages, sent_bytes = out.get(timeout=5)
        proc.join(5)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join()
        stats = server.stats
        server.close()
    kinds = [m.kind for m in msgs]
    assert kinds == ["batch", "batch", "watermark", "barrier"] + ["batch"] * (n - 2) + ["end"]
    assert [m.seq for m in msgs] == list(range(n + 3))
    assert {m.channel_id for m in msgs} == {"parse[2]"}
    batches = [m for m in msgs if m.kind == "batch"]
    for i, m in enumerate(batches):
        assert_batches_equal(m.batch, make_batch(i))
        assert m.target == i % 2
        assert m.watermark == int(make_batch(i).wm[-1])  # defaults to the batch's end watermark
    assert msgs[2].watermark == 123_456 and msgs[2].target == 1
    assert msgs[3].barrier == 7
    assert stats["messages"] == sent_messages == n + 3
    assert stats["bytes"] == sent_bytes
    p = stats["producers"]["parse[2]"]
    assert p["last_seq"] == n + 2 and p["gaps"] == 0 and p["duplicates"] == 0 and p["ended"]
    assert p["outstanding"] == 0 and p["max_outstanding"] <= 3


def test_dtypes_masks_and_edge_cases(server: ChannelServer) -> None:
    client = ChannelClient(server.endpoint, "edge[0]")
    try:
        assert server.recv(timeout=0.2) is None  # processes the hello: credits granted
        base = make_batch(3, n=40)
        filtered = base.filter(base["ok"])
        odd = Batch({"t": np.arange(5).astype("datetime64[ms]"), "b": np.array([b"ab", b"c", b"", b"d", b"ee"]),
                     "u8": np.arange(5, dtype=np.uint8), "f4": np.arange(5, dtype=np.float32),
                     "strided": np.arange(10, dtype=np.int32)[::2]})
        empty = Batch({"id": np.empty(0, np.int64), "s": np.empty(0, "<U3")}, wm=np.empty(0, np.int64))
        wm_only = Batch({}, wm=np.array([5, 6, 7], dtype=np.int64))
        for b in (filtered, odd, empty, wm_only):
            assert client.send_batch(b, timeout=5)
        got = []
        for _ in range(4):
            msg = server.recv(timeout=5)
            got.append(msg.batch)
            server.ack(msg)
        assert_batches_equal(got[0], filtered.compact())
        assert got[0].mask is None and got[0].num_rows == filtered.num_rows
        assert_batches_equal(got[1], odd)
        assert_batches_equal(got[2], empty)
        assert got[3].num_rows == 3 and got[3].names == []
        np.testing.assert_array_equal(got[3].wm, [5, 6, 7])
        for b in got:  # aligned, contiguous, writable: the numba types of local batches
            for name in b.names:
                flags = b[name].flags
                assert flags.aligned and flags.c_contiguous and flags.writeable
    finally:
        client.close(0)


def test_a_constant_text_column_and_a_wm_that_is_a_column_plus_a_constant_travel_as_almost_nothing(
        server: ChannelServer) -> None:
    """A window's `pane` column (U11, 44 bytes a row) is mostly one value, and an in-order source's per-record
    watermarks are its time column less the delay: both arrive as they were sent, from a frame of one item and
    from no frame at all."""
    client = ChannelClient(server.endpoint, "enc[0]")
    try:
        assert server.recv(timeout=0.2) is None
        n = 1000
        t = np.arange(n, dtype=np.int64) * 1_000_000
        same = Batch({"time": t, "pane": np.full(n, "late_update"), "b": np.full(n, b"xy"), "v": np.ones(n)},
                     wm=t - 5_000)
        mixed = Batch({"time": t, "pane": np.array(["on_time", "final"])[np.arange(n) % 2]}, wm=t[::-1].copy())
        lowest = np.full(n, np.iinfo(np.int64).min)  # no watermark yet: its difference to the times is no int64
        early = Batch({"time": np.full(n, 10**18)}, wm=lowest)
        assert client.send_batch(same, timeout=5) and client.send_batch(mixed, timeout=5)
        assert client.send_batch(early, timeout=5)
        first, second, third = server.recv(timeout=5), server.recv(timeout=5), server.recv(timeout=5)
        assert_batches_equal(first.batch, same)
        assert_batches_equal(second.batch, mixed)
        assert_batches_equal(third.batch, early)
        server.ack(third)
        for b in (first.batch, second.batch):
            for name in b.names:
                assert b[name].flags.aligned and b[name].flags.c_contiguous and b[name].flags.writeable
        # time + v + one pane + one b, and no wm frame; the other: time + every pane + the wm
        assert first.nbytes < 2 * n * 8 + 200 < n * (8 + 8 + 44 + 2 + 8)
        assert second.nbytes > n * (8 + 28 + 8)
        server.ack(first)
        server.ack(second)
    finally:
        client.close(0)


def test_object_columns_are_pickled_only_where_allowed() -> None:
    obj = np.empty(3, dtype=object)
    obj[:] = [{"a": 1}, None, (2, 3)]
    batch = Batch({"o": obj, "i": np.arange(3)})
    for allow in (False, True):
        with ChannelServer(allow_pickle=allow) as server, ChannelClient(server.endpoint, "obj[0]") as client:
            assert server.recv(timeout=0.2) is None
            assert client.send_batch(batch, timeout=5)
            assert client.send_end(timeout=5)
            msg = server.recv(timeout=5)
            if allow:
                assert msg.kind == "batch" and msg.batch["o"].tolist() == obj.tolist()
                server.ack(msg)
                msg = server.recv(timeout=5)
            else:  # plaintext server refuses pickles by default: dropped, counted, credit returned
                assert server.stats["malformed"] == 1
            assert msg.kind == "end" and msg.seq == 1
            server.ack(msg)


def test_receive_is_zero_copy(server: ChannelServer) -> None:
    client = ChannelClient(server.endpoint, "zc[0]")
    try:
        assert server.recv(timeout=0.2) is None
        big = np.arange(1 << 17, dtype=np.float64)  # 1 MB
        wm = big.astype(np.int64)[::-1].copy()  # no column plus a constant: it travels as a frame of its own
        assert client.send_batch(Batch({"x": big, "y": big.astype(np.int64)}, wm=wm), timeout=5)
        msg = server.recv(timeout=5)
        for arr in (msg.batch["x"], msg.batch["y"], msg.batch.wm):
            # a view of the received zmq frame's buffer: nothing was copied
            assert isinstance(arr.base, memoryview) and isinstance(arr.base.obj, zmq.Frame)
            assert arr.base.nbytes == arr.nbytes
        np.testing.assert_array_equal(msg.batch["x"], big)
        assert server.stats["copied_frames"] == 0
        server.ack(msg)
    finally:
        client.close(0)


# -- backpressure -------------------------------------------------------------------------------------

def test_backpressure_bounds_unacked_messages() -> None:
    credits, n, mb = 4, 200, 1
    server = ChannelServer(credits=credits, window_bytes=0)
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=produce_big, args=(server.endpoint, n, mb, out))
    rss0 = rss_mb()
    proc.start()
    held: deque[Message] = deque()
    max_held, max_outstanding, peak_rss, got = 0, 0, rss0, 0
    try:
        deadline = time.monotonic() + 9
        ended = False
        while not (ended and not held):
            assert time.monotonic() < deadline, f"timed out after {got} messages"
            # greedy: take everything the producer managed to send, holding it unacked ...
            msg = server.recv(timeout=0.003 if held else 5)
            if msg is not None:
                held.append(msg)
                got += 1
                ended |= msg.kind == "end"
                max_held = max(max_held, len(held))
                max_outstanding = max(max_outstanding, server.stats["outstanding"])
                continue
            # ... then be slow: "process" and ack the oldest one
            time.sleep(0.002)
            server.ack(held.popleft())
            peak_rss = max(peak_rss, rss_mb())
        blocked = out.get(timeout=5)
        proc.join(5)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join()
        stats = server.stats
        server.close()
    assert got == n + 1
    assert max_held <= credits and max_outstanding <= credits
    p = stats["producers"]["big[0]"]
    assert p["max_outstanding"] == credits  # the window was used, never exceeded
    assert p["violations"] == 0 and p["gaps"] == 0 and p["last_seq"] == n
    assert blocked > 0.1, f"the producer should have waited for credits (blocked {blocked:.3f} s)"
    # 200 MB went through; the consumer only ever held ~credits x 1 MB of it
    assert peak_rss - rss0 < 48, f"consumer RSS grew by {peak_rss - rss0:.0f} MB"


def test_send_times_out_without_credit(server: ChannelServer) -> None:
    client = ChannelClient(server.endpoint, "slow[0]")
    try:
        assert server.recv(timeout=0.2) is None
        for _ in range(4):
            assert client.send_watermark(1, timeout=1)
        t0 = time.monotonic()
        assert client.send_batch(make_batch(0), timeout=0.2) is False  # out of credits: nothing sent
        assert 0.15 < time.monotonic() - t0 < 1.0
        assert client.blocked_seconds >= 0.15 and client.seq == 4 and client.sent_messages == 4
        msgs = [server.recv(timeout=1) for _ in range(4)]
        assert server.recv(timeout=0.1) is None
        server.ack(msgs[0])
        server.ack(msgs[0])  # idempotent
        assert server.stats["outstanding"] == 3
        assert client.send_batch(make_batch(0), timeout=2)
        msg = server.recv(timeout=2)
        assert msg.kind == "batch" and msg.seq == 4
        assert client.send_end(timeout=0.1) is False
    finally:
        client.close(0)


def wait_for(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_credits_return_in_groups_and_close_waits_for_acks() -> None:
    with ChannelServer(credits=8, window_bytes=0) as server:  # credits go back in groups of 8 // 4 = 2
        client = ChannelClient(server.endpoint, "grp[0]")
        try:
            assert server.recv(timeout=0.2) is None
            for i in range(8):
                assert client.send_batch(make_batch(i), timeout=2)
            msgs = [server.recv(timeout=2) for _ in range(8)]
            assert client.unacked == 8 and client.credits == 0
            server.ack(msgs[0])  # held back: half a group
            time.sleep(0.05)
            assert client.credits == 0 and server.stats["outstanding"] == 7
            server.ack(msgs[1])  # a full group goes back
            assert wait_for(lambda: client.credits == 2)
            server.ack(msgs[2])
            server.flush_credits()
            assert wait_for(lambda: client.credits == 3) and client.unacked == 5
            for m in msgs[3:]:
                server.ack(m)  # four go back in two groups, one is held back ...
            assert wait_for(lambda: client.credits == 7)
            assert client.send_end(timeout=1)  # ... and goes back before recv waits, or with a control ack

            closer = threading.Thread(target=client.close, kwargs={"linger": 3})
            t0 = time.monotonic()
            closer.start()
            time.sleep(0.2)
            assert closer.is_alive()  # close() waits for the consumer to ack what was sent
            end = server.recv(timeout=1)
            assert end.kind == "end" and end.seq == 8
            server.ack(end)
            closer.join(2)
            assert not closer.is_alive() and time.monotonic() - t0 < 2
            assert server.stats["outstanding"] == 0
        finally:
            client.close(0)


def test_a_waiting_consumer_hands_back_a_lone_credit() -> None:
    """Credits are held back for the next message's, but never stranded by a consumer that waits."""
    with ChannelServer(credits=8, window_bytes=0) as server:
        client = ChannelClient(server.endpoint, "lone[0]")
        try:
            assert server.recv(timeout=0.2) is None
            assert client.send_batch(make_batch(0), timeout=2)
            server.ack(server.recv(timeout=2))  # half a group: held back for now
            assert server.recv(timeout=0.2) is None  # ... and handed back once this wait begins
            assert wait_for(lambda: client.credits == 8 and client.unacked == 0)

            got: list[Message] = []
            waiter = threading.Thread(target=lambda: got.append(server.recv(timeout=None)))
            assert client.send_batch(make_batch(1), timeout=2)
            server.ack(server.recv(timeout=2))
            waiter.start()  # waits with no deadline: the held credit still goes back
            assert client.flush(timeout=5) and client.credits == 8
            assert client.send_end(timeout=2)
            waiter.join(5)
            assert not waiter.is_alive() and got[0].kind == "end"
            server.ack(got[0])
        finally:
            client.close(0)


def _sends_until_blocked(client: ChannelClient, batch: Batch, most: int = 2000) -> int:
    """How many batches go out before the producer is out of credits (nothing acked meanwhile)."""
    for sent in range(most):
        if not client.send_batch(batch, timeout=0.2):
            return sent
    raise AssertionError(f"{most} batches went out unacked: the window does not bound them")


def _keep_pace(server: ChannelServer, client: ChannelClient, batch: Batch, seconds: float,
               ack_every: float = 0.0) -> None:
    """Send and take batches for `seconds`, the consumer acking each as it arrives (after `ack_every` seconds of
    "work"), so that it has measured its pace when this returns; everything sent is acked."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert client.send_batch(batch, timeout=5)
        msg = server.recv(timeout=5)
        assert msg is not None
        if ack_every:
            time.sleep(ack_every)  # a slow consumer's work
        server.ack(msg)
        server.flush_credits()  # as a consumer's recv does before it waits (this one sends first)
    assert client.flush(timeout=5)


def test_small_batches_fill_a_byte_window_and_no_more() -> None:
    """Beyond `credits` messages, a producer may send while its unacked bytes are under the window: small
    batches fill it (so they cover the credit round trip), and the consumer never holds more than the window
    and one message. A consumer that keeps up gets the whole window (here one that drains it in far less than
    `window_seconds`)."""
    window = 64 << 10
    batch = make_batch(0)
    with ChannelServer(credits=2, window_bytes=window, window_seconds=10.0) as server:
        client = ChannelClient(server.endpoint, "small[0]")
        try:
            assert server.recv(timeout=0.2) is None  # the grant
            _keep_pace(server, client, batch, 0.3)
            before = client.sent_messages
            sent = _sends_until_blocked(client, batch)
            size = (client.sent_bytes // client.sent_messages)
            assert sent > 2 and client.unacked_bytes >= window and client.unacked_bytes < window + size
            msgs = [server.recv(timeout=2) for _ in range(sent)]
            assert server.recv(timeout=0.1) is None and all(m is not None for m in msgs)
            producer = server.stats["producers"]["small[0]"]
            assert producer["max_outstanding"] == sent and producer["violations"] == 0
            assert producer["outstanding_bytes"] < window + size
            for m in msgs[: sent // 2]:
                server.ack(m)
            server.flush_credits()
            assert wait_for(lambda: client.credits > 0)
            assert client.send_batch(batch, timeout=2)  # acks made room again
            got = server.recv(timeout=2)
            assert got is not None and got.seq == before + sent
        finally:
            client.close(0)


def test_a_slow_consumer_keeps_only_credits_queued() -> None:
    """The byte window is what the consumer drains in `window_seconds`: one that takes 50 ms a batch leaves its
    producer no more than `credits` batches queued, whatever `window_bytes` allows (a barrier behind them waits
    for a fraction of a second, not for a whole window of work)."""
    batch = make_batch(0)
    with ChannelServer(credits=3, window_bytes=4 << 20, window_seconds=0.1) as server:
        client = ChannelClient(server.endpoint, "paced[0]")
        try:
            assert server.recv(timeout=0.2) is None
            _keep_pace(server, client, batch, 0.3, ack_every=0.05)
            assert _sends_until_blocked(client, batch) == 3
        finally:
            client.close(0)


def test_large_batches_are_held_to_credits() -> None:
    """A byte window smaller than `credits` of a producer's batches: it may still have `credits` of them
    unacked, and not one more."""
    big = make_batch(1, n=20_000)  # ~0.5 MB
    with ChannelServer(credits=3, window_bytes=64 << 10) as server:
        client = ChannelClient(server.endpoint, "big[0]")
        try:
            assert server.recv(timeout=0.2) is None
            assert _sends_until_blocked(client, big) == 3
            assert [server.recv(timeout=2).seq for _ in range(3)] == [0, 1, 2]
            assert server.stats["producers"]["big[0]"]["violations"] == 0
        finally:
            client.close(0)


def test_a_message_window_caps_even_tiny_messages() -> None:
    """However small the messages, a producer has at most `max(credits, MAX_WINDOW_MESSAGES)` unacked (the
    consumer's socket buffers and sequence bookkeeping stay bounded)."""
    from microstream.runtime.channels import MAX_WINDOW_MESSAGES

    with ChannelServer(credits=2, window_bytes=1 << 30, window_seconds=10.0) as server:
        client = ChannelClient(server.endpoint, "tiny[0]")
        try:
            assert server.recv(timeout=0.2) is None
            _keep_pace(server, client, make_batch(0), 0.3)
            sent = 0
            while client.send_watermark(sent, timeout=0.2):
                sent += 1
                assert sent <= MAX_WINDOW_MESSAGES
            assert sent == MAX_WINDOW_MESSAGES
        finally:
            client.close(0)


# -- several producers, sequence numbers --------------------------------------------------------------

def test_several_producers_contiguous_seq(server: ChannelServer) -> None:
    n, producers = 30, 3
    errors: list[BaseException] = []

    def produce(k: int) -> None:
        try:
            with ChannelClient(server.endpoint, f"map[{k}]") as client:
                for i in range(n):
                    assert client.send_batch(make_batch(i, n=10), target=k, timeout=8)
                assert client.send_end(timeout=8)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    msgs = drain(server, until_end=producers)
    for t in threads:
        t.join(5)
    assert not errors
    stats = server.stats
    for k in range(producers):
        mine = [m for m in msgs if m.channel_id == f"map[{k}]"]
        assert [m.seq for m in mine] == list(range(n + 1))
        assert all(m.target == k for m in mine[:-1])
        for i, m in enumerate(mine[:-1]):
            assert_batches_equal(m.batch, make_batch(i, n=10))
        p = stats["producers"][f"map[{k}]"]
        assert p["last_seq"] == n and p["gaps"] == 0 and p["duplicates"] == 0 and p["outstanding"] == 0
        assert p["max_outstanding"] <= 4
    assert stats["messages"] == producers * (n + 1)


def test_a_gap_is_refused_and_resent_and_a_duplicate_dropped_exactly_once(server: ChannelServer) -> None:
    """What was in flight on a connection that died leaves a gap: the consumer delivers nothing after it, asks the
    producer to resume where it is (a grant with its position), and drops what it already has."""
    from microstream.runtime.channels import _CREDIT, _K_GRANT

    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.connect(server.endpoint)
        enc = _Encoder("raw[0]")
        sock.send(enc.control(0, 0, 0))  # hello
        for seq in (0, 1, 3, 4):         # 2 was lost
            sock.send(enc.control(2, 0, seq, watermark=seq))
        got = [server.recv(timeout=2) for _ in range(2)]
        assert [m.seq for m in got] == [0, 1] and server.recv(timeout=0.3) is None
        grants = []
        while sock.poll(500):
            _, _, kind, count, acked, received, _, _ = _CREDIT.unpack(sock.recv())
            if kind == _K_GRANT:
                grants.append(received)
        assert grants == [-1, 1]          # the window at hello; then "I have everything up to 1"
        for seq in (2, 3, 4, 3):          # the producer resumes from 2; a late copy of 3 arrives too
            sock.send(enc.control(2, 0, seq, watermark=seq))
        assert [server.recv(timeout=2).seq for _ in range(3)] == [2, 3, 4]
        assert server.recv(timeout=0.3) is None
        p = server.stats["producers"]["raw[0]"]
        assert p["gaps"] == 2 and p["resends"] == 1 and p["duplicates"] == 1 and p["last_seq"] == 4
    finally:
        sock.close(0)


def test_a_lost_credit_frame_costs_nothing() -> None:
    """A producer blocked on a credit that never came asks where the consumer is and goes on."""
    with ChannelServer(credits=1) as server, ChannelClient(server.endpoint, "lossy[0]") as client:
        assert server.recv(timeout=0.5) is None   # the server answers the hello with the window inside recv
        assert client.send_batch(make_batch(0), timeout=5)
        m = server.recv(timeout=2)
        prod = server._producers[m._peer]
        prod.outstanding -= 1
        prod.last_acked = m.seq           # processed, but its credit frame is "lost": never sent
        m._acked = True
        sent = threading.Thread(target=lambda: client.send_batch(make_batch(1), timeout=10))
        sent.start()                      # blocked on the lost credit: a resync within RESYNC_EVERY answers it
        got = server.recv(timeout=8)
        sent.join(10)
        assert got is not None and got.seq == 1 and client.resent_messages == 0


# -- control messages ---------------------------------------------------------------------------------

def test_control_messages_keep_order_with_batches() -> None:
    with ChannelServer(credits=2) as server, ChannelClient(server.endpoint, "ctl[0]") as client:
        done = threading.Event()

        def produce() -> None:
            client.send_batch(make_batch(0), timeout=5)
            client.send_watermark(10, timeout=5)
            client.send_batch(make_batch(1), target=1, timeout=5)
            client.send_barrier(42, timeout=5)
            client.send_watermark(20, target=1, timeout=5)
            client.send_batch(make_batch(2), timeout=5)
            client.send_end(timeout=5)
            done.set()

        t = threading.Thread(target=produce)
        t.start()
        msgs = []
        while len(msgs) < 7:
            msg = server.recv(timeout=5)
            assert msg is not None
            assert server.stats["outstanding"] <= 2  # control messages take credits too
            time.sleep(0.01)
            msgs.append(msg)
            server.ack(msg)
        t.join(5)
        assert done.is_set()
    assert [(m.kind, m.seq, m.target) for m in msgs] == [
        ("batch", 0, 0), ("watermark", 1, 0), ("batch", 2, 1), ("barrier", 3, 0), ("watermark", 4, 1),
        ("batch", 5, 0), ("end", 6, 0)]
    assert msgs[1].watermark == 10 and msgs[4].watermark == 20 and msgs[3].barrier == 42
    assert msgs[3].watermark is None and msgs[6].barrier is None
    for i, m in zip((0, 1, 2), (msgs[0], msgs[2], msgs[5]), strict=True):
        assert_batches_equal(m.batch, make_batch(i))


# -- CURVE --------------------------------------------------------------------------------------------

def _raw_curve_dealer(endpoint: str, keys: CurveKeys | None, server_public: bytes) -> zmq.Socket:
    """A misbehaving producer that ignores credits and just pushes a hello and batches."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    if keys is not None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = keys.secret, keys.public, server_public
    sock.linger = 0
    sock.connect(endpoint)
    enc = _Encoder("intruder[0]")
    # never blocking: once the server has refused its handshake the socket has no peer, and a send would wait for one
    with contextlib.suppress(zmq.Again):
        sock.send(enc.control(0, 0, 0), flags=zmq.NOBLOCK)
        for seq in range(3):
            sock.send_multipart(enc.batch(make_batch(seq), 0, seq, None), flags=zmq.NOBLOCK, copy=False)
    return sock


def test_curve_admits_only_trusted_keys() -> None:
    server_keys, good, bad = generate_keys(), generate_keys(), generate_keys()
    server = ChannelServer(keys=server_keys, trusted=[good.public])
    clients = []
    try:
        trusted = ChannelClient(server.endpoint, "good[0]", keys=good, server_public=server_keys.public)
        untrusted = ChannelClient(server.endpoint, "bad[0]", keys=bad, server_public=server_keys.public)
        plain = ChannelClient(server.endpoint, "plain[0]")
        clients += [trusted, untrusted, plain]
        raw_bad = _raw_curve_dealer(server.endpoint, bad, server_keys.public)
        raw_plain = _raw_curve_dealer(server.endpoint, None, server_keys.public)

        assert server.recv(timeout=0.3) is None  # only the trusted hello gets through
        assert trusted.send_batch(make_batch(0), timeout=3)
        msg = server.recv(timeout=3)
        assert msg.channel_id == "good[0]"
        assert_batches_equal(msg.batch, make_batch(0))
        server.ack(msg)

        stop = threading.Event()
        t = serve_in_thread(server, stop)  # keep serving while the others try
        try:
            assert untrusted.send_batch(make_batch(1), timeout=0.5) is False  # never gets credit
            assert plain.send_batch(make_batch(1), timeout=0.3) is False
        finally:
            stop.set()
            t.join(2)
        assert server.recv(timeout=0.3) is None  # nothing from the raw intruders either
        assert set(server.stats["producers"]) == {"good[0]"}
        assert server.stats["messages"] == 1
        raw_bad.close(0)
        raw_plain.close(0)

        # trusting the key at run time lets a new connection in
        server.set_trusted([good.public, bad.public])
        assert server.trusted == {good.public, bad.public}
        late = ChannelClient(server.endpoint, "late[0]", keys=bad, server_public=server_keys.public)
        clients.append(late)
        assert server.recv(timeout=0.5) is None  # its hello
        assert late.send_batch(make_batch(2), timeout=3)
        msg = server.recv(timeout=3)
        assert msg.channel_id == "late[0]"
        assert_batches_equal(msg.batch, make_batch(2))

        # and removing it keeps new connections with that key out again
        server.set_trusted([good.public])
        again = ChannelClient(server.endpoint, "again[0]", keys=bad, server_public=server_keys.public)
        clients.append(again)
        assert server.recv(timeout=0.3) is None
        assert again.send_end(timeout=0.3) is False
        assert server.recv(timeout=0.2) is None and "again[0]" not in server.stats["producers"]
    finally:
        for c in clients:
            c.close(0)
        server.close()


def test_curve_servers_share_one_context_and_authenticator() -> None:
    ctx = zmq.Context()
    k1, k2, a, b = generate_keys(), generate_keys(), generate_keys(), generate_keys()
    s1 = ChannelServer(keys=k1, trusted=[a.public], context=ctx)
    s2 = ChannelServer(keys=k2, trusted=[b.public], context=ctx)
    clients = []
    try:
        for key, srv, cid in ((a, s1, "a->1"), (b, s1, "b->1"), (a, s2, "a->2"), (b, s2, "b->2")):
            clients.append(ChannelClient(srv.endpoint, cid, keys=key, server_public=srv.public_key))
        for srv in (s1, s2):
            assert srv.recv(timeout=0.3) is None
        for c in clients:
            c.send_end(timeout=0.5)
        assert s1.recv(timeout=1).channel_id == "a->1"
        assert s2.recv(timeout=1).channel_id == "b->2"
        assert s1.recv(timeout=0.2) is None and s2.recv(timeout=0.2) is None
    finally:
        for c in clients:
            c.close(0)
        s1.close()
        s2.close()
        ctx.term()


def test_configuration_errors() -> None:
    keys = generate_keys()
    with pytest.raises(ChannelError):
        ChannelServer(credits=0)
    with pytest.raises(ChannelError):
        ChannelClient("tcp://127.0.0.1:1", "x[0]", keys=keys)  # no server key
    with pytest.raises(ChannelError):
        CurveKeys(b"short", keys.secret)
    with ChannelServer() as plain, pytest.raises(ChannelError):
        plain.set_trusted([keys.public])
    server = ChannelServer()
    server.close()
    with pytest.raises(ChannelError):
        server.recv(timeout=0)

