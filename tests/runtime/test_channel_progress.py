"""What a channel says about its progress (`ChannelClient.stats`, `ChannelServer.stats`): what is in flight, how
long nothing has been delivered, how long the sender has been out of credits, when the peer was last heard. A real
server and client on loopback; the consumer stops acking, then goes on."""

from __future__ import annotations

import numpy as np

from microstream.core.batch import Batch
from microstream.runtime.channels import ChannelClient, ChannelServer
from tests.helpers import wait_for


def _batch(i: int) -> Batch:
    return Batch({"id": np.full(1000, i), "v": np.arange(1000.0)})


def test_a_consumer_that_stops_acking_shows_as_a_stall_and_clears_when_it_acks():
    with ChannelServer(credits=2, window_bytes=0) as server, ChannelClient(server.endpoint, "src[0]>vn2") as client:
        fresh = client.stats
        assert fresh["unacked"] == 0 and fresh["stalled_seconds"] == 0.0 and fresh["peer_silent_seconds"] is None
        wait_for(lambda: server.recv(timeout=0.05) is None and client.credits == 2, 10, "the consumer's grant")
        assert client.send_batch(_batch(0), timeout=10)
        taken = []
        taken.append(wait_for(lambda: server.recv(timeout=0.05), 10, "the first batch"))
        assert client.send_batch(_batch(1), timeout=10)
        taken.append(wait_for(lambda: server.recv(timeout=0.05), 10, "the second batch"))
        # two messages in flight, none acked: the channel is stuck, the sender is out of credits
        stuck = wait_for(lambda: (s := client.stats)["stalled_seconds"] >= 0.3 and s, 10, "a growing stall")
        assert stuck["unacked"] == 2 and stuck["unacked_bytes"] == client.sent_bytes and stuck["acked_through"] == -1
        assert stuck["peer_silent_seconds"] is not None  # the grant came: the consumer was heard once
        waits: list[float] = []
        client.on_wait = lambda: waits.append(client.stats["waiting_seconds"])
        assert not client.send_batch(_batch(2), timeout=0.6)  # out of credits: the wait is seen while it lasts
        assert waits and max(waits) > 0 and client.stats["waiting_seconds"] == 0.0
        assert client.stats["blocked_seconds"] >= max(waits)
        producer = server.stats["producers"]["src[0]>vn2"]
        assert producer["outstanding"] == 2 and producer["silent_seconds"] >= 0
        for m in taken:
            server.ack(m)
        server.flush_credits()
        moving = wait_for(lambda: (s := client.stats)["unacked"] == 0 and s, 10, "the acks")
        assert moving["stalled_seconds"] == 0.0 and moving["unacked_bytes"] == 0 and moving["acked_through"] == 1
