"""What a client says when a job cannot be sent or the coordinator refuses its key: the cause, at once, from the
public `Client` API, against real sockets (a ZeroMQ ROUTER that stands for a coordinator, or a real coordinator)."""

from __future__ import annotations

import threading

import pytest
import zmq

import microstream as ms
from microstream.cluster import security as sec
from microstream.cluster.client import Client, ClusterAddress, ClusterError
from tests.cluster import test_deadlines
from tests.helpers import run_cli

coordinator = test_deadlines.coordinator   # the fixture: a real coordinator with keys, in a thread, trusting no key


def test_submitting_a_job_whose_function_captured_a_lock_names_the_operator_before_sending():
    lock = threading.Lock()

    def guarded(r):
        with lock:
            return {"v": r["v"] * 2}

    p = ms.Pipeline("locked")
    p.from_iterable([{"v": 1.0}]).map(guarded, name="guarded").sink(ms.sinks.collect())
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)   # where the coordinator would be
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        with Client(ClusterAddress(f"tcp://127.0.0.1:{port}"), timeout=60) as client, \
                pytest.raises(ms.PipelineError) as err:
            client.submit(p, output=None)
        assert not router.poll(0), "a job that cannot be pickled was sent"
    finally:
        router.close(linger=0)
        ctx.term()
    # not a bare "TypeError: cannot pickle '_thread.lock' object": the operator, its line and the fix
    assert err.value.operator == "guarded" and "cannot pickle '_thread.lock' object" in err.value.problem
    assert "test_client_errors.py" in err.value.problem and "create it inside the function" in err.value.fix
    assert isinstance(err.value.__cause__, TypeError)


def test_a_key_the_coordinator_does_not_trust_is_said_as_such_not_as_no_answer(coordinator):
    coord, endpoint, keys = coordinator
    stranger = sec.generate("stranger")
    # a wait far beyond the per-test limit: only the refusal, seen on the socket, can end these requests
    with Client(ClusterAddress(endpoint, stranger, keys.public), timeout=3600) as client:
        for _ in range(2):  # the second request has no connection to send on: said at once too
            with pytest.raises(ClusterError) as err:
                client.status()
            assert str(err.value).startswith("the coordinator refused this key (not trusted): 'stranger' "
                                             f"(fingerprint {stranger.fingerprint})"), str(err.value)
            assert "microstream keys trust stranger.key" in str(err.value)
    assert coord.auth.rejected_count >= 1
    # trusted (live, as `keys trust` does), the same key gets its answer: the watch does not get in the way
    coord.auth.allow(stranger)
    with Client(ClusterAddress(endpoint, stranger, keys.public), timeout=3600) as client:
        assert client.status()["agents"] == {}


def test_the_cli_says_the_key_is_not_trusted_in_one_line(coordinator, tmp_path):
    _, endpoint, keys = coordinator
    _, secret = sec.save(sec.generate("laptop"), tmp_path)
    server = sec.save_public(keys, tmp_path / "coordinator.key")
    r = run_cli("status", "--coordinator", endpoint, "--key", str(secret), "--coordinator-key", str(server),
                "--home", str(tmp_path))
    assert r.returncode == 1 and not r.stdout, r.stderr
    assert r.stderr.startswith("microstream: the coordinator refused this key (not trusted): 'laptop'"), r.stderr
    assert r.stderr.count("\n") == 1 and "no answer" not in r.stderr, r.stderr
