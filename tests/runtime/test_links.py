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
for i in range({n}):
    assert client.send_batch(Batch({{"id": np.full(100, i), "v": np.arange(100.0)}}), timeout=120)
    time.sleep(0.02)
assert client.send_end(timeout=120)
assert client.flush(timeout=120)
print("resent", client.resent_messages, flush=True)
client.close()
"""


def test_a_cut_longer_than_tcp_retries_loses_and_duplicates_nothing(network, tmp_path):  # noqa: F811
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
                elif m.kind == "end":
                    ended.set()
                server.ack(m)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        script = tmp_path / "producer.py"
        script.write_text(textwrap.dedent(PRODUCER.format(n=N)))
        producer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script), server.endpoint],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while len(received) < N // 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(received) >= N // 4, "the producer never got going"
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
    assert received == list(range(N)), f"{len(received)} batches, first wrong at " \
        f"{next((i for i, x in enumerate(received) if x != i), None)}"
    assert during < N  # the cut really held the stream up
    print(f"\ncut held the stream at {during}/{N} batches; after the heal: gaps {stats['gaps']}, "
          f"resend requests {stats['resends']}, duplicates dropped {stats['duplicates']}, producer {out.strip()}")
