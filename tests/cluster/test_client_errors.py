"""What a client says when a job cannot be sent or the coordinator refuses its key: the cause, at once, from the
public `Client` API, against real sockets (a ZeroMQ ROUTER that stands for a coordinator, or a real coordinator)."""

from __future__ import annotations

import threading

import pytest
import zmq

import microstream as ms
from microstream.cluster.client import Client, ClusterAddress


def test_submitting_a_job_whose_function_captured_a_lock_names_the_operator_before_sending():
    lock = threading.Lock()

    def guarded(r):
        with lock:
            return {"v": r["v"] * 2}

    p = ms.Pipeline("locked")
    p.from_iterable([{"v": 1.0}]).map(guarded, name="guarded").sink(ms.sinks.collect())
    ctx = zmq.Context()
    coordinator = ctx.socket(zmq.ROUTER)
    try:
        port = coordinator.bind_to_random_port("tcp://127.0.0.1")
        with Client(ClusterAddress(f"tcp://127.0.0.1:{port}"), timeout=60) as client, \
                pytest.raises(ms.PipelineError) as err:
            client.submit(p, output=None)
        assert not coordinator.poll(0), "a job that cannot be pickled was sent"
    finally:
        coordinator.close(linger=0)
        ctx.term()
    # not a bare "TypeError: cannot pickle '_thread.lock' object": the operator, its line and the fix
    assert err.value.operator == "guarded" and "cannot pickle '_thread.lock' object" in err.value.problem
    assert "test_client_errors.py" in err.value.problem and "create it inside the function" in err.value.fix
    assert isinstance(err.value.__cause__, TypeError)
