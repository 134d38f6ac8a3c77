"""The microVM control channel's protocol without a VM: framing, resync, sequence numbers and acks."""

from __future__ import annotations

import random

from microstream.unikernel_backend.guest import FrameDecoder, Session, encode_frame, jsonable, run_snippet


def test_decoder_resyncs_after_garbage_and_cut_frames() -> None:
    frames = [encode_frame({"kind": "data", "seq": i, "ack": 0}, bytes([i]) * i) for i in range(1, 40)]
    stream = b"".join(f[: len(f) // 2] if i % 7 == 3 else f for i, f in enumerate(frames))  # some cut in half
    decoder, got = FrameDecoder(), []
    for i in range(0, len(stream), 5):
        got += decoder.feed(stream[i:i + 5])
    expected = [i for i in range(1, 40) if (i - 1) % 7 != 3]
    assert [h["seq"] for h, _ in got] == expected
    assert all(body == bytes([h["seq"]]) * h["seq"] for h, body in got)
    assert decoder.skipped > 0


def _link(sender: Session, receiver: Session, frames: list, rng: random.Random, loss: float) -> list[bytes]:
    """Deliver frames over a lossy link; returns the bodies the receiver accepted; acks flow back."""
    delivered = []
    for header, body in frames:
        if rng.random() < loss:
            continue
        verdict, header, body = receiver.receive(header, body)
        if verdict == "deliver":
            delivered.append(body)
    if rng.random() >= loss:
        sender.receive(*receiver.control("ack"))
    return delivered


def test_sessions_deliver_exactly_once_in_order_over_a_lossy_link_with_resyncs() -> None:
    rng = random.Random(7)
    host, guest = Session(window=1000), Session(window=1000)
    delivered: list[bytes] = []
    expected = [str(i).encode() for i in range(500)]
    for start in range(0, 500, 50):  # 10 "connections", each losing 30 % of the frames
        frames = [host.stamp({"kind": "data"}, body) for body in expected[start:start + 50]]
        delivered += _link(host, guest, frames, rng, loss=0.3)
    for _ in range(1000):  # reconnects: sync, then resend whatever is unacknowledged
        if not host.unacked:
            break
        host.receive(*guest.control("sync"))
        delivered += _link(host, guest, host.pending(), rng, loss=0.3)
    assert delivered == expected
    assert not host.unacked and guest.delivered == 500
    assert guest.counts["gaps"] > 0 and host.counts["resent"] > 0


def test_session_export_and_load_continue_the_sequence() -> None:
    a = Session()
    a.stamp({"kind": "x"}, b"one")
    a.stamp({"kind": "x"}, b"two")
    b = Session()
    b.load(a.export())
    assert b.next_seq == 3 and [body for _, body in b.pending()] == [b"one", b"two"]


def test_snippet_returns_final_expression_and_jsonable_values() -> None:
    ns: dict = {}
    assert run_snippet("import math\nmath.factorial(5)", ns) == 120
    assert run_snippet("y = 3", ns) is None and ns["y"] == 3
    assert jsonable({1, 2}) is None and jsonable([1, "a"]) == [1, "a"]
