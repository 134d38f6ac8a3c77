"""Links that heal: a producer in its own network namespace streams numbered batches over a real veth link to a
consumer; the link is cut for longer than TCP's retries last (lowered inside the namespace, as a cut of a
quarter of an hour does with the defaults), then healed. The consumer gets every batch exactly once, in order,
and the producer never deadlocks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from microstream.runtime.channels import ChannelServer
from tests.cluster.test_netns import _can_make_namespaces, _ip, network  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
N = 300

pytestmark = [pytest.mark.skipif(_can_make_namespaces() is not None, reason=str(_can_make_namespaces())),
              pytest.mark.slow, pytest.mark.timeout(180)]

PRODUCER = """
import sys, time
import numpy as np
from microstream.core.batch import Batch
from microstream.runtime.channels import ChannelClient

client = ChannelClient(sys.argv[1], "sensor[0]")
most = 0
for i in range({n}):
    assert client.send_batch(Batch({{"id": np.full(100, i), "v": np.arange(100.0)}}), timeout=120)
    most = max(most, client.unacked)
    time.sleep({pause})
assert client.send_end(timeout=120)
assert client.flush(timeout=120)
print("resent", client.resent_messages, "most unacked", most, flush=True)
client.close()
"""


@pytest.mark.parametrize(("n", "pause", "work"), [
    (N, 0.02, 0.0),       # a sensor's pace: a batch every 20 ms, the window at its `credits`
    (10 * N, 0.0, 0.001),  # as fast as the consumer takes them: its byte window grows to 64 batches in flight
], ids=["paced", "window-full"])
def test_a_cut_longer_than_tcp_retries_loses_and_duplicates_nothing(network, tmp_path, n, pause, work):  # noqa: F811
    ns, _, host_end = network["ns1"]
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_retries2=3"], check=True)
    bridge_ip = network["ns2"][1].rsplit(".", 1)[0] + ".1"
    received: list[int] = []
    ended = threading.Event()
    with ChannelServer(bind=f"tcp://{bridge_ip}:*") as server:
        def consume() -> None:
            while not ended.is_set():
                m = server.recv(timeout=0.2)
                if m is None:
                    continue
                if m.kind == "batch":
                    received.append(int(m.batch["id"][0]))
                    time.sleep(work)  # the consumer's work on it
                elif m.kind == "end":
                    ended.set()
                server.ack(m)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        script = tmp_path / "producer.py"
        script.write_text(textwrap.dedent(PRODUCER.format(n=n, pause=pause)))
        producer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script), server.endpoint],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while len(received) < n // 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(received) >= n // 4, "the producer never got going"
            _ip("link", "set", host_end, "down")       # the cut: longer than TCP's (lowered) retries and
            time.sleep(12)                              # longer than the channel's heartbeat timeout
            during = len(received)
            _ip("link", "set", host_end, "up")
            out, _ = producer.communicate(timeout=120)
        finally:
            _ip("link", "set", host_end, "up", check=False)
            if producer.poll() is None:
                producer.kill()
        assert producer.returncode == 0, out
        assert ended.wait(30)
        stats = server.stats["producers"]["sensor[0]"]
    assert received == list(range(n)), f"{len(received)} batches, first wrong at " \
        f"{next((i for i, x in enumerate(received) if x != i), None)}"
    assert during < n  # the cut really held the stream up
    if work:  # the byte window was in use: more in flight than the 8 messages always allowed
        assert int(out.split("most unacked")[1]) > 8, out
    print(f"\ncut held the stream at {during}/{n} batches; after the heal: gaps {stats['gaps']}, "
          f"resend requests {stats['resends']}, duplicates dropped {stats['duplicates']}, producer {out.strip()}")
