"""A client of the coordinator: submit a pipeline, ask for status, stop a job, move a virtual node, drain a node,
wait for a job's end (attach), shut the cluster down.

Every request has a deadline, its send included: a coordinator that refuses our key (the handshake fails
and the socket has no connection to send on) makes a ClusterError, not a hang.

Waiting for a job's end survives a coordinator restart: while it waits, the client asks the coordinator about the
job every few seconds (`watch`); when no answer comes, it reconnects and asks again until the coordinator is
back (a restarted one, with its state directory, knows the job), within the wait's own deadline if it has one."""

from __future__ import annotations

import builtins
import contextlib
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
    DrainRequest,
    DrainStatus,
    Error,
    JobDone,
    MigrateRequest,
    Moved,
    Rejected,
    RestoreRequest,
    SaveRequest,
    ShutDown,
    ShutdownRequest,
    StatusReply,
    StatusRequest,
    Stopped,
    StopRequest,
    Submit,
    Watch,
    Watching,
)
from .security import curve_client
from .states import JobState

if TYPE_CHECKING:
    from ..runtime.results import RunResult


M = TypeVar("M", bound=Message)

WATCH_EVERY = 5.0   # seconds of silence while waiting for a job's end before the client asks about it again


class ClusterError(MicrostreamError):
    """The coordinator could not be reached, refused a request, or a job failed."""


@dataclass
class ClusterAddress:
    endpoint: str
    keys: Any = None                      # this client's KeyPair (None: --insecure)
    coordinator_public: bytes | None = None


class Client:
    sock: zmq.Socket

    def __init__(self, address: ClusterAddress, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.ctx = zmq.Context()
        if address.keys is not None and address.coordinator_public is None:
            raise ClusterError("with a client key, the coordinator's public key is needed too")
        self._connect()

    def _connect(self) -> None:
        """A (fresh) socket to the coordinator: answers meant for the old one are not read by mistake."""
        if hasattr(self, "sock"):
            self.sock.close(linger=0)
        self.sock = control_socket(self.ctx, zmq.DEALER, send_timeout=self.timeout, linger=0)
        if self.address.keys is not None and self.address.coordinator_public is not None:
            curve_client(self.sock, self.address.keys, self.address.coordinator_public)
        self.sock.connect(self.address.endpoint)

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
    def status(self, job: str | None = None) -> dict[str, Any]:
        """The cluster's status (agents, jobs); with `job`, only that job (an ended one too)."""
        return self.request(StatusRequest(job=job), StatusReply).status

    def shutdown(self) -> dict[str, Any]:
        """Shut the cluster down: every job stopped, every agent told to exit, the coordinator exits."""
        return self.request(ShutdownRequest(), ShutDown).header()

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

    def drain(self, node: str, action: str = "drain") -> dict[str, Any]:
        """Drain agent `node` (its virtual nodes move off, one at a time; nothing new is placed there), `undrain` it
        (back in service) or ask how its drain goes (`status`): the drain's state, moved, left, stuck, waiting."""
        return self.request(DrainRequest(node=node, action=action), DrainStatus).drain

    def submit(self, pipeline: Any, wait: bool = True, progress=None, timeout: float | None = None,
               accepted=None) -> tuple[str, RunResult | None]:
        """Submit a built pipeline. With `wait`, block until it ends (at most `timeout` s, if given) and return its
        merged result; the pipeline's `collect` sinks are filled with what the cluster collected. `accepted` is
        called with the job's id as soon as the coordinator has it (to re-attach with, should this wait end)."""
        pipeline.build()
        started = time.perf_counter()
        reply = self.request(Submit(blob=cloudpickle.dumps(pipeline.graph), wait=wait), Accepted)
        job = reply.job
        if accepted:
            accepted(job)
        if progress:
            progress(f"job {job} submitted: " + ", ".join(f"{v} on {a}" for v, a in reply.placement.items()))
        if not wait:
            return job, None
        done = self.wait(job, timeout=timeout, progress=progress, watching=True)
        if done.state != JobState.FINISHED:
            raise _job_error(job, done)
        return job, merge_results(pipeline.graph, results_of(done), time.perf_counter() - started)

    def attach(self, job: str, timeout: float | None = None, progress=None) -> JobDone:
        """Wait for the end of a job submitted earlier (by anyone): its `job_done` (at once if it has ended)."""
        return self.wait(job, timeout=timeout, progress=progress, watching=False)

    def wait(self, job: str, timeout: float | None = None, progress=None, watching: bool = False) -> JobDone:
        """Wait for `job`'s end, asking the coordinator about it after every `WATCH_EVERY` s of silence; if it
        does not answer, reconnect and ask again (a restarted coordinator knows the job from its state
        directory). `watching`: the coordinator already knows this client waits (it submitted with `wait`).
        A ClusterError if `timeout` s pass first (the job goes on), or if the coordinator does not know the job."""
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        asked: float | None = None if watching else now - WATCH_EVERY   # when the last `watch` went out
        heard = now
        lost: float | None = None
        state = None
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ClusterError(f"job {job} has not ended within {timeout:g} s (it goes on: "
                                   f"`microstream status {job}`, or wait again with `microstream status {job} --wait`)")
            if asked is not None and now - asked > self.timeout:  # no answer: the coordinator is gone or restarting
                if lost is None:
                    lost = now
                    if progress:
                        progress(f"no answer from the coordinator at {self.address.endpoint}: waiting for it to "
                                 f"come back, then re-attaching to job {job}")
                self._connect()
                asked = None
            if asked is None and (now - heard >= WATCH_EVERY or lost is not None):
                with contextlib.suppress(ControlSendError):  # not connected (yet): counts as no answer
                    send(self.sock, Watch(job=job), to=f"the coordinator at {self.address.endpoint}")
                asked = now
            wait_ms = 200 if deadline is None else max(0, min(200, int((deadline - now) * 1000)))
            if not self.sock.poll(wait_ms):
                continue
            try:
                reply = TO_CLIENT.decode(self.sock.recv_multipart())
            except ProtocolError:
                continue
            heard, asked = time.monotonic(), None
            if lost is not None:
                if progress:
                    progress(f"re-attached to job {job} after {heard - lost:.1f} s")
                lost = None
            if isinstance(reply, JobDone) and reply.job == job:
                return reply
            if isinstance(reply, Error | Rejected):
                unknown = reply.error.startswith(f"no job '{job}'")
                raise ClusterError(reply.error + (f" (the coordinator at {self.address.endpoint} may have restarted "
                                                  "without its state directory)" if unknown else ""))
            if isinstance(reply, Watching) and reply.state != state:
                state = reply.state
                if progress and reply.reason:
                    progress(f"job {job} is {reply.state}: {reply.reason}")


def results_of(done: JobDone) -> list[dict[str, Any]]:
    """The virtual nodes' results a finished job's `job_done` carries."""
    results = cloudpickle.loads(done.blob) if done.blob else []
    return [cloudpickle.loads(r) if isinstance(r, bytes) else r for r in results]


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
