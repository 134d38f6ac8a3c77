"""The host loop's transport side (`runtime/host.py`): what it sends on the channels between virtual nodes.

The hosts are the real `HostRuntime`s, stepped in turn, with channels as in-memory queues (tests/runtime/
test_checkpoints.py's); the ZeroMQ channels and processes are exercised by the cluster tests."""

from __future__ import annotations

import collections

from microstream.graph.physical import build_plan
from microstream.runtime.results import merge_results
from tests.runtime.test_checkpoints import deploy, job, rows, step_all


def _local_rows() -> list[tuple]:
    p, out = job()
    p.run(verbose=False)
    return rows(out)


def test_a_watermark_right_after_a_batch_travels_in_the_batch_s_header_with_the_same_output():
    """Each batch a source's virtual node sends is followed at once by the watermark it raised: one message (one
    credit, one wake-up downstream), not two; the windows' output is the local run's."""
    expected = _local_rows()
    p, out = job()
    plan = build_plan(p.graph)
    hosts, servers = deploy(p, plan)
    seen: dict[str, collections.Counter] = {vn: collections.Counter() for vn in servers}
    carried: list[tuple[int, int]] = []
    for vn, server in servers.items():
        def recv(timeout=None, wake=None, server=server, vn=vn, take=servers[vn].recv):
            msg = take(timeout, wake)
            if msg is not None:
                seen[vn][msg.kind] += 1
                if msg.kind == "batch" and msg.batch.wm is not None and msg.batch.num_rows:
                    carried.append((msg.watermark, int(msg.batch.wm.max())))
            return msg
        server.recv = recv  # type: ignore[method-assign]
    step_all(hosts)
    result = merge_results(p.graph, [h.result() for h in hosts.values()], 0.0)
    assert rows(out) == expected and len(expected) > 50
    assert result.cpu_seconds is not None and result.cpu_seconds > 0  # each host's CPU, summed
    source_vn = next(vn for vn, v in plan.vnodes.items() if "synthetic" in v.tasks)
    windows = [vn for vn, v in plan.vnodes.items() if any(t.startswith("window_aggregate") for t in v.tasks)]
    assert source_vn not in windows and len(windows) == 3
    for vn in windows:  # what the source's vnode sent: batches that carry the watermark, and its end
        assert seen[vn]["batch"] >= 10 and seen[vn]["watermark"] == 0 and seen[vn]["end"] == 1
    # each batch carries the watermark after it, which the source raised past the batch's own records'
    assert carried and all(wm is not None and wm >= last for wm, last in carried)
