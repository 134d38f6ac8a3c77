"""What a client raises when a waited-for job does not finish: the failing operator's OperatorError, as a local
run raises it, rebuilt from the host's report; otherwise a ClusterError with the coordinator's reason."""

from __future__ import annotations

import contextlib

from microstream.cluster.client import ClusterError, RemoteError, _job_error
from microstream.cluster.messages import JobDone
from microstream.core.errors import OperatorError


def test_a_failed_user_function_is_an_operator_error():
    error = _job_error("j", JobDone(job="j", state="failed", reason="virtual node vn1 failed: ...",
                                    operator="calibrated", cause="ValueError: sensor 7 is not calibrated"))
    assert isinstance(error, OperatorError) and error.operator == "calibrated"
    assert isinstance(error.cause, ValueError) and str(error) == (
        "operator 'calibrated' failed: ValueError: sensor 7 is not calibrated")


def test_an_exception_type_this_process_cannot_rebuild_keeps_its_text():
    error = _job_error("j", JobDone(job="j", state="failed", operator="parse", cause="mylib.BadRow: row 3"))
    assert isinstance(error.cause, RemoteError) and "mylib.BadRow: row 3" in str(error)


def test_other_ends_are_cluster_errors():
    error = _job_error("j", JobDone(job="j", state="failed", reason="agent node2 lost (no heartbeat for 3.1 s)"))
    assert isinstance(error, ClusterError) and str(error) == "job j failed: agent node2 lost (no heartbeat for 3.1 s)"


def test_attaching_to_a_job_asks_the_coordinator_at_once():
    """`Client.wait` on a job this client did not submit (`status JOB --wait`, `follow`) asks about it at once and
    returns its end; it once sent nothing until its time-out (60 s) had passed, then reconnected and asked."""
    import threading

    from microstream.cluster.messages import TO_COORDINATOR, Watch
    from microstream.cluster.states import JobState

    done: dict = {}
    with _coordinator_and_client() as (coordinator, client):
        waiter = threading.Thread(target=lambda: done.update(end=client.wait("j1", timeout=600)), daemon=True)
        waiter.start()
        assert coordinator.poll(30_000), "the client asked nothing"  # well within its 600 s time-out
        identity, *frames = coordinator.recv_multipart()
        assert TO_COORDINATOR.decode(frames) == Watch(job="j1")
        coordinator.send_multipart([identity, *JobDone(job="j1", state=JobState.FINISHED).encode()])
        waiter.join(30)
    assert done["end"].state == JobState.FINISHED


@contextlib.contextmanager
def _coordinator_and_client():
    """A ROUTER socket that answers as the test says, in the coordinator's place, and a client of it."""
    import zmq

    from microstream.cluster.client import Client, ClusterAddress

    ctx = zmq.Context()
    coordinator = ctx.socket(zmq.ROUTER)
    try:
        port = coordinator.bind_to_random_port("tcp://127.0.0.1")
        with Client(ClusterAddress(f"tcp://127.0.0.1:{port}"), timeout=600) as client:
            yield coordinator, client
    finally:
        coordinator.close(linger=0)
        ctx.term()


def test_a_late_answer_to_an_earlier_wait_does_not_fail_the_next_request():
    """A `watch` the client sent as its job ended is answered with the job's end a second time; that answer arrives
    after the first, and the next request (a second submit, in bench/cluster.py) once failed on it: "expected
    'accepted' from the coordinator, got 'job_done'"."""
    import threading

    from microstream.cluster.messages import TO_COORDINATOR, JobOutput, StatusReply, StatusRequest, Watching
    from microstream.cluster.states import JobState

    got: dict = {}
    with _coordinator_and_client() as (coordinator, client):
        asker = threading.Thread(target=lambda: got.update(status=client.status()), daemon=True)
        asker.start()
        assert coordinator.poll(30_000), "the client asked nothing"
        identity, *frames = coordinator.recv_multipart()
        assert isinstance(TO_COORDINATOR.decode(frames), StatusRequest)
        for late in (JobDone(job="j0", state=JobState.FINISHED, blob=b"x" * 100),
                     Watching(job="j0", state=JobState.RUNNING),
                     JobOutput(job="j0", vnode="vn0", agent="a1", lines=[])):
            coordinator.send_multipart([identity, *late.encode()])
        coordinator.send_multipart([identity, *StatusReply(status={"agents": {}, "jobs": {}}).encode()])
        asker.join(30)
    assert got["status"] == {"agents": {}, "jobs": {}}
