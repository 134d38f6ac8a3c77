"""What a client raises when a waited-for job does not finish: the failing operator's OperatorError, as a local
run raises it, rebuilt from the host's report; otherwise a ClusterError with the coordinator's reason."""

from __future__ import annotations

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
