"""Direct state transfer (runtime/statexfer.py): a base plus the deltas of later rounds is the full snapshot, byte
for byte, whatever changed in between (property-based); the rounds travel over a real CURVE socket pair."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microstream.operators.kernels.dirty import DirtyRows
from microstream.runtime import statexfer as sx

CH = sx.CHUNK_BYTES


def _state(arrays: list[np.ndarray], extra: object) -> dict:
    return {"tasks": {f"t{i}": {"op": {"state": a, "n": i}} for i, a in enumerate(arrays)}, "extra": extra}


def _equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys() or a["extra"] != b["extra"]:
        return False
    return all(np.array_equal(a["tasks"][k]["op"]["state"], b["tasks"][k]["op"]["state"])
               and a["tasks"][k]["op"]["state"].dtype == b["tasks"][k]["op"]["state"].dtype for k in a["tasks"])


def _wire(delta: sx.Delta) -> sx.Delta:
    """Through the frame encoding, as bytes (what a socket hands over)."""
    frames = sx.encode("x", 0, False, delta)
    return sx.decode([bytes(memoryview(f)) for f in frames])[1]


# an edit: (array, start fraction, length, value) writes, a resize, or nothing
edits = st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1), st.integers(1, 3 * CH), st.integers(-5, 5)),
                 max_size=6)
sizes = st.lists(st.integers(0, 6 * CH // 8 + 3), min_size=1, max_size=3)  # float64 counts: chunk edges and tails


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes, rounds=st.lists(st.tuples(edits, st.booleans(), st.integers(0, 300)), min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_base_plus_deltas_is_the_full_snapshot(sizes, rounds, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(n) for n in sizes]
    extra: object = [1, "a"]
    sent_hashes = None
    have: list[np.ndarray] = []
    for round_edits, resize, grow in [([], False, 0), *rounds]:
        for which, start, length, value in round_edits:
            a = arrays[which % len(arrays)]
            if a.size:
                i = int(start * (a.size - 1))
                a[i:i + length // 8 + 1] = value
        if resize:  # a ring that doubled: the buffer's size changes
            arrays[0] = np.concatenate([arrays[0], rng.standard_normal(grow)])
        extra = [extra, len(have)]
        state = _state(arrays, extra)
        packed = sx.pack(state)
        delta, sent_hashes = sx.diff(sent_hashes, packed)
        have = sx.apply(have, _wire(delta))
        restored = sx.unpack(delta.skeleton, have)
        assert _equal(restored, state)
        full = sx.pack(state)  # the full snapshot's bytes, buffer by buffer
        assert [bytes(b) for b in have] == [bytes(b) for b in full.buffers]


def test_only_changed_chunks_travel():
    size = max(256 * CH, 2 * sx.INLINE_BYTES)  # out of band: buffers under INLINE_BYTES travel in the skeleton
    state = {"op": {"state": np.zeros(size // 8)}}
    first, hashes = sx.diff(None, sx.pack(state))
    assert first.nbytes >= size
    state["op"]["state"][[5, 40 * CH // 8, 40 * CH // 8 + 1]] = 1.0  # two chunks
    delta, _ = sx.diff(hashes, sx.pack(state))
    assert [p.chunks.tolist() for p in delta.parts if p.chunks is not None] == [[0, 40]]
    assert delta.nbytes < 3 * CH + 1024


def test_a_single_word_change_always_changes_its_chunk_hash():
    buf = np.random.default_rng(1).integers(0, 2**63, size=4 * CH // 8, dtype=np.uint64)
    base = sx.chunk_hashes(buf)
    for i in range(0, buf.size, 37):
        changed = buf.copy()
        changed[i] ^= np.uint64(1) << np.uint64(i % 64)
        h = sx.chunk_hashes(changed)
        assert (h != base).tolist() == [c == i * 8 // CH for c in range(base.size)]


def test_words_that_differ_only_in_their_top_bit_do_not_cancel_out():
    """Window cells going from EMPTY (-2**63) to 0, two in one lane of a chunk: with xor-and-multiply lanes the two
    top-bit flips cancelled and the chunk's hash did not change (a move then lost those windows)."""
    empty = np.full(CH // 8 * 4, np.iinfo(np.int64).min, dtype=np.int64)
    base = sx.chunk_hashes(empty)
    for first in range(CH // 8):
        for second in range(first + 1, CH // 8):
            changed = empty.copy()
            changed[[first, second]] = 0
            assert sx.chunk_hashes(changed)[0] != base[0], (first, second)
    flips = empty.copy()
    flips[: CH // 8] = 0  # every word of the chunk, every lane's top bit twice
    assert sx.chunk_hashes(flips)[0] != base[0]


def test_a_delta_that_does_not_fit_is_refused():
    state = {"s": np.zeros(max(CH, sx.INLINE_BYTES))}
    first, hashes = sx.diff(None, sx.pack(state))
    state["s"][0] = 1
    delta, _ = sx.diff(hashes, sx.pack(state))
    with pytest.raises(ValueError, match="has none"):
        sx.apply([], delta)


def test_rounds_over_curve_reach_the_receiver_and_untrusted_keys_do_not():
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    other_pub, other_sec = zmq.curve_keypair()
    receiver = sx.StateReceiver("tcp://127.0.0.1:*", sx.Keys(server_pub, server_sec), trusted=[client_pub])
    try:
        state = {"op": {"state": np.arange(100_000, dtype=np.float64), "k": "v"}}
        intruder = sx.StateSender(receiver.endpoint, "j/vn0/1", sx.Keys(other_pub, other_sec), server_pub,
                                  send_timeout=1.0)
        with pytest.raises(RuntimeError, match="could not hand the state to the new host within 1 s"):
            intruder.send(sx.pack({"op": {"state": np.ones(100_000)}}), final=True)  # the handshake fails
        assert intruder.hashes is None  # nothing counts as sent
        intruder.close()
        assert receiver.received_bytes == 0
        sender = sx.StateSender(receiver.endpoint, "j/vn0/1", sx.Keys(client_pub, client_sec), server_pub)
        sender.send(sx.pack(state))
        assert sender.wait(10.0)
        state["op"]["state"][7] = -1
        final_bytes = sender.send(sx.pack(state), final=True)
        assert final_bytes < 2 * CH + 1024
        got, figures = receiver.wait("j/vn0/1", timeout=10.0)
        assert np.array_equal(got["op"]["state"], state["op"]["state"]) and got["op"]["k"] == "v"
        assert got["op"]["state"].flags.writeable
        assert figures["rounds"] == 2
        sender.close()
    finally:
        receiver.close()


def test_a_buffer_that_grows_or_shrinks_within_its_last_chunk_goes_whole():
    """Sizes 146,020 then 145,940 bytes: as many chunks as before, so the chunk hashes alone could not tell (a move
    of a vnode reading a CSV once failed with "buffer 0 of 145940 bytes changed in part but the receiver has
    146020 bytes of it")."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, size=146_020, dtype=np.uint8)
    base, have = None, []
    for size in (146_020, 145_940, 145_950, 145_950):
        state = {"b": data[:size].copy()}
        delta, base = sx.diff(base, sx.pack(state))
        have = sx.apply(have, _wire(delta))
        assert bytes(sx.unpack(delta.skeleton, have)["b"]) == bytes(state["b"])
    assert delta.parts == []  # the same size and bytes as the round before: nothing to send


def _precopy(sender: sx.StateSender, view, rounds: int) -> None:
    """Pre-copy rounds on the thread of a `Precopy` (converging only when rounds stop shrinking) until `rounds` were
    sent, offering a fresh `view()` whenever it wants one; then stop it."""
    precopy = sx.Precopy(sender, small=1)
    try:
        deadline = time.monotonic() + 60
        while sender.rounds < rounds:
            assert time.monotonic() < deadline and precopy.error is None, (sender.rounds, precopy.error)
            if precopy.wants:
                precopy.offer(view())
            time.sleep(0.005)  # how often the "host" looks, as a host does between batches: not a synchronisation
    finally:
        precopy.stop()
    assert precopy.error is None


def test_precopy_of_a_state_that_changes_while_it_is_read_ends_exact_after_the_final_round():
    """Rounds on the pre-copy thread read the arrays while another thread writes them (torn reads), including
    chunks that change and change back; after the writer stops, the final round (`diff` of the stopped state) leaves
    the receiver with exactly the state, byte for byte."""
    import threading

    rng = np.random.default_rng(5)
    big = rng.standard_normal(3_000_000 // 8)      # ~3 MB: several pieces when hashed in pieces
    small = rng.standard_normal(300 * CH // 8 + 5)  # a short last chunk
    original = big.copy()
    state = {"tasks": {"a": {"op": {"state": big}}, "b": {"op": {"state": small, "n": 3}}}}
    stop = threading.Event()

    def writer() -> None:
        r = np.random.default_rng(6)
        while not stop.is_set():
            i = int(r.integers(0, big.size - 200))
            big[i:i + 200] = r.standard_normal(200)
            if r.random() < 0.3:  # back to what an earlier round may have hashed
                big[i:i + 200] = original[i:i + 200]
            small[int(r.integers(0, small.size))] += 1.0

    receiver = sx.StateReceiver("tcp://127.0.0.1:*")
    sender = sx.StateSender(receiver.endpoint, "j/vn1/4")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _precopy(sender, lambda: sx.pack(state), rounds=4)
    finally:
        stop.set()
        thread.join()
    final = sender.send(sx.pack(state), final=True)
    got, figures = receiver.wait("j/vn1/4", timeout=30)
    try:
        assert np.array_equal(got["tasks"]["a"]["op"]["state"], big)
        assert np.array_equal(got["tasks"]["b"]["op"]["state"], small) and got["tasks"]["b"]["op"]["n"] == 3
        assert figures["rounds"] == sender.rounds and final < big.nbytes  # only what changed since the last round
    finally:
        sender.close()
        receiver.close()


def test_live_delta_sends_copies_and_their_hashes():
    buf = np.arange(max(100 * CH, 2 * sx.INLINE_BYTES) // 8, dtype=np.float64)
    packed = sx.pack({"s": buf})
    made = sx.live_delta(None, packed)
    assert made is not None
    delta, hashes = made
    assert delta.parts[0].chunks is None and not np.shares_memory(delta.parts[0].data, buf)
    buf[3 * CH // 8] = -1.0
    made = sx.live_delta(hashes, packed)
    assert made is not None
    delta, after = made
    assert delta.parts[0].chunks.tolist() == [3]
    buf[3 * CH // 8] = 7.0  # changed after the copy: the hashes are the copy's, so the next diff sends it again
    redo, _ = sx.diff(after, sx.pack({"s": buf}))
    assert [p.chunks.tolist() for p in redo.parts] == [[3]]


def test_a_new_host_waiting_for_a_state_that_will_not_come_stops_when_told_and_still_receives_after_asking():
    """The old host of a move was lost after its ticket went: the new host's wait ends when it is told to stop (its
    move was called off, the job recovers elsewhere), not after DIRECT_TRANSFER_TIMEOUT; while it is asked, the
    receiving thread goes on (a final round that arrives in time is taken), and the wait itself still times out."""
    receiver = sx.StateReceiver("tcp://127.0.0.1:*")
    try:
        asked = []

        def stop_after_three() -> bool:
            asked.append(time.monotonic())
            return len(asked) >= 3

        with pytest.raises(InterruptedError, match="stopped while waiting for the state of j/vn0/9"):
            receiver.wait("j/vn0/9", timeout=600, should_stop=stop_after_three)
        assert len(asked) == 3
        with pytest.raises(TimeoutError, match="did not arrive from the old host within 0.3 s"):
            receiver.wait("j/vn0/9", timeout=0.3, should_stop=lambda: False)
        sender = sx.StateSender(receiver.endpoint, "j/vn0/9")
        state = {"op": {"state": np.arange(1000, dtype=np.float64)}}
        sent = []

        def send_once_asked() -> bool:  # the final round arrives while the waiting host looks at its control link
            if not sent:
                sent.append(sender.send(sx.pack(state), final=True))
            return False

        got, _ = receiver.wait("j/vn0/9", timeout=60, should_stop=send_once_asked)
        assert np.array_equal(got["op"]["state"], state["op"]["state"])
        sender.close()
    finally:
        receiver.close()


# -- operator-level dirty tracking (operators/kernels/dirty.py) ----------------------------------------------------

def _tracked_state(rows: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, DirtyRows]:
    state = rng.standard_normal((rows, width))
    tracker = DirtyRows()
    tracker.track(rows, state)
    return state, tracker


# a round: rows written (and marked) before it, whether the state grows (a new array: a new layout) first, and
# whether this round is the final one's kind (`diff`) or a pre-copy's (`live_delta`)
tracked_rounds = st.lists(st.tuples(st.lists(st.integers(0, 10_000), max_size=40), st.booleans(), st.booleans()),
                          min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.sampled_from([1, 3, 8, 20, 128]), rows=st.integers(1, 3000), rounds=tracked_rounds,
       seed=st.integers(0, 2**32 - 1))
def test_rows_written_between_tracked_rounds_arrive(width, rows, rounds, seed):
    """Random rows written (and marked, as an operator marks them) between rounds, rows of every width around a
    chunk (8 to 1,024 bytes), layouts that change (the state grows into a new array): after every round, diff or
    live, the receiver's state is the sender's, byte for byte, and no untracked buffer is needed for that."""
    rng = np.random.default_rng(seed)
    state, tracker = _tracked_state(rows, width, rng)
    extra = rng.standard_normal(sx.INLINE_BYTES // 8 + 7)  # an untracked buffer beside it, hashed as before
    base, have = None, []
    for written, grow, final in [([], False, True), *rounds]:
        if grow:
            grown = rng.standard_normal((len(state) + int(rng.integers(1, 50)), width))
            grown[: len(state)] = state
            state = grown
            tracker.track(len(state), state)
        slots = np.asarray([w % len(state) for w in written], dtype=np.int64)
        state[slots] = rng.standard_normal((len(slots), width))
        tracker.mark(slots)
        extra[int(rng.integers(0, extra.size))] += 1.0
        packed = sx.pack({"op": {"state": state}, "extra": extra}, [tracker])
        if state.nbytes >= sx.INLINE_BYTES:
            assert packed.track(0) is not None
        made = sx.diff(base, packed) if final else sx.live_delta(base, packed)
        assert made is not None
        delta, base = made
        have = sx.apply(have, _wire(delta))
        got = sx.unpack(delta.skeleton, have)
        assert np.array_equal(got["op"]["state"], state) and np.array_equal(got["extra"], extra)


def test_a_tracked_round_reads_only_the_rows_written_since_the_last():
    """What makes the final round short: after the first round, only the chunks of marked rows are read. A write
    the operator did not mark is not seen (which is why every writer marks after writing), a marked one is, and a
    marked row whose bytes did not change sends nothing."""
    rng = np.random.default_rng(1)
    state, tracker = _tracked_state(2_000, 16, rng)  # 128-byte rows: two chunks each
    delta, base = sx.diff(None, sx.pack({"s": state}, [tracker]))
    assert delta.parts[0].chunks is None  # the first round: whole
    state[7, 0] = 1.0
    state[9, 15] = 2.0
    tracker.mark(np.array([7, -1], dtype=np.int64))  # row 9 written but not marked
    state[11] = state[11]                            # marked, unchanged
    tracker.mark(np.array([11], dtype=np.int64))
    delta, base = sx.diff(base, sx.pack({"s": state}, [tracker]))
    assert [p.chunks.tolist() for p in delta.parts] == [[14]]  # row 7's first chunk only
    delta, base = sx.diff(base, sx.pack({"s": state}, [tracker]))
    assert delta.parts == []  # nothing marked since
    tracker.track(len(state), state)  # a new layout: compared whole, so row 9 is found again
    delta, _ = sx.diff(base, sx.pack({"s": state}, [tracker]))
    assert [p.chunks.tolist() for p in delta.parts] == [[19]]


def test_tracked_precopy_of_rows_written_while_they_are_read_ends_exact():
    """A writer thread writes random rows and marks them after writing, as an operator does, while pre-copy rounds
    read them on their own thread (tracked rounds: only the rows marked since); after it stops, the final round
    leaves the receiver with exactly the state."""
    import threading

    rng = np.random.default_rng(8)
    state, tracker = _tracked_state(20_000, 128, rng)  # 20 MB of 1 KB rows
    stop = threading.Event()

    def writer() -> None:
        r = np.random.default_rng(9)
        while not stop.is_set():
            slots = r.integers(0, len(state), 200)
            state[slots, r.integers(0, 128)] = r.standard_normal(200)
            tracker.mark(slots)

    receiver = sx.StateReceiver("tcp://127.0.0.1:*")
    sender = sx.StateSender(receiver.endpoint, "j/vn1/9")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _precopy(sender, lambda: sx.pack({"op": {"state": state}}, [tracker]), rounds=5)
    finally:
        stop.set()
        thread.join()
    final = sender.send(sx.pack({"op": {"state": state}}, [tracker]), final=True)
    got, _ = receiver.wait("j/vn1/9", timeout=30)
    try:
        assert np.array_equal(got["op"]["state"], state)
        assert final < state.nbytes  # only the rows written since the last round (here: a great many)
    finally:
        sender.close()
        receiver.close()
