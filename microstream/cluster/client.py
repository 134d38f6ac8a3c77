"""A client of the coordinator: submit a pipeline, ask for status, stop a job, move a virtual node.

Every request has a deadline, its send included: a coordinator that refuses our key (the handshake fails
and the socket has no connection to send on) makes a ClusterError, not a hang."""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle
import zmq

from ..core.errors import MicrostreamError, OperatorError
from ..runtime.protocol import ControlSendError, Message, ProtocolError, control_socket, send
from ..runtime.results import merge_results
from .messages import (
    TO_CLIENT,
    Accepted,
    Error,
    JobDone,
    MigrateRequest,
    Moved,
    Rejected,
    RestoreRequest,
    SaveRequest,
    StatusReply,
    StatusRequest,
    Stopped,
    StopRequest,
    Submit,
)
from .security import curve_client
from .states import JobState

if TYPE_CHECKING:
    from ..runtime.results import RunResult


M = TypeVar("M", bound=Message)


class ClusterError(MicrostreamError):
    """The coordinator could not be reached, refused a request, or a job failed."""


@dataclass
class ClusterAddress:
    endpoint: str
    keys: Any = None                      # this client's KeyPair (None: --insecure)
    coordinator_public: bytes | None = None


class Client:
    def __init__(self, address: ClusterAddress, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.ctx = zmq.Context()
        self.sock = control_socket(self.ctx, zmq.DEALER, send_timeout=timeout, linger=0)
        if address.keys is not None:
            if address.coordinator_public is None:
                raise ClusterError("with a client key, the coordinator's public key is needed too")
            curve_client(self.sock, address.keys, address.coordinator_public)
        self.sock.connect(address.endpoint)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: Message, expect: type[M], timeout: float | None = None) -> M:
        """Send `message` and wait for its answer, which must be an `expect` (an `error` or `rejected` answer,
        a send that cannot go out and a missing answer all raise ClusterError)."""
        try:
            send(self.sock, message, to=f"the coordinator at {self.address.endpoint}")
        except ControlSendError as exc:
            raise ClusterError(f"{exc} (do you have its public key, and is your key trusted there? "
                               "`microstream keys trust`)") from exc
        return self.receive(expect, timeout if timeout is not None else self.timeout)

    def receive(self, expect: type[M], timeout: float | None) -> M:
        if not self.sock.poll(None if timeout is None else int(timeout * 1000)):
            raise ClusterError(
                f"no answer from the coordinator at {self.address.endpoint} within {timeout:.0f} s: is it running, "
                "do you have its public key, and is your key trusted there (`microstream keys trust`)?")
        try:
            reply = TO_CLIENT.decode(self.sock.recv_multipart())
        except ProtocolError as exc:
            raise ClusterError(f"the coordinator at {self.address.endpoint} answered something else: {exc}") from exc
        if isinstance(reply, Error | Rejected):
            raise ClusterError(reply.error)
        if not isinstance(reply, expect):
            raise ClusterError(f"expected '{expect.KIND}' from the coordinator, got '{reply.KIND}'")
        return reply

    # -- requests ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.request(StatusRequest(), StatusReply).status

    def stop(self, job: str) -> dict[str, Any]:
        return self.request(StopRequest(job=job), Stopped).header()

    def migrate(self, job: str, vnode: str, to: str, timeout: float = 120.0, whole: bool = False) -> dict[str, Any]:
        """Move a running virtual node to agent `to`; returns downtime and state size once it runs there.
        `whole` (microvm vnodes only): move the VM itself, live, with QEMU's migration stream (tier 2)."""
        return self.request(MigrateRequest(job=job, vnode=vnode, to=to, whole=whole), Moved, timeout=timeout).record

    def save(self, job: str, vnode: str, timeout: float = 120.0) -> tuple[dict[str, Any], bytes]:
        """Stop a virtual node at a barrier and return its snapshot (upstream holds its records meanwhile)."""
        reply = self.request(SaveRequest(job=job, vnode=vnode), Moved, timeout=timeout)
        return reply.record, reply.blob or b""

    def restore(self, job: str, vnode: str, snapshot: bytes, to: str | None = None,
                timeout: float = 120.0) -> dict[str, Any]:
        """Resume a saved virtual node from its snapshot (on agent `to`, or where it ran before)."""
        return self.request(RestoreRequest(job=job, vnode=vnode, to=to, blob=snapshot), Moved, timeout=timeout).record

    def submit(self, pipeline: Any, wait: bool = True, progress=None) -> tuple[str, RunResult | None]:
        """Submit a built pipeline. With `wait`, block until it ends and return its merged result; the
        pipeline's `collect` sinks are filled with what the cluster collected."""
        pipeline.build()
        started = time.perf_counter()
        reply = self.request(Submit(blob=cloudpickle.dumps(pipeline.graph), wait=wait), Accepted)
        job = reply.job
        if progress:
            progress(f"job {job} submitted: " + ", ".join(f"{v} on {a}" for v, a in reply.placement.items()))
        if not wait:
            return job, None
        done = self.receive(JobDone, None)
        if done.state != JobState.FINISHED:
            raise _job_error(job, done)
        results = cloudpickle.loads(done.blob) if done.blob else []
        results = [cloudpickle.loads(r) if isinstance(r, bytes) else r for r in results]
        return job, merge_results(pipeline.graph, results, time.perf_counter() - started)


class RemoteError(Exception):
    """An exception raised on a cluster host whose type this process cannot rebuild; its text is the original's."""


def _job_error(job: str, done: JobDone) -> MicrostreamError:
    """Why a waited-for job did not finish: the `OperatorError` a local run raises when a user function failed
    (rebuilt from the host's report), else a ClusterError with the coordinator's reason."""
    if done.operator:
        return OperatorError(done.operator, _remote_exception(done.cause or done.reason or "?"))
    return ClusterError(f"job {job} {done.state}: {done.reason or ''}")


def _remote_exception(text: str) -> BaseException:
    """`ValueError: bad` as a ValueError('bad') when the type is a builtin one, else a RemoteError."""
    name, sep, message = text.partition(": ")
    cls = getattr(builtins, name, None) if sep else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a builtin that takes other arguments
            pass
    return RemoteError(text)
