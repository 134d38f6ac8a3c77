"""A client of the coordinator: submit a pipeline, ask for status, stop a job, move a virtual node, drain a node,
wait for a job's end (attach), shut the cluster down.

Every request has a deadline, its send included: a coordinator that refuses our key (the handshake fails
and the socket has no connection to send on) makes a ClusterError, not a hang; and as the refusal is seen on the
socket's monitor (ZeroMQ's handshake events), at once, saying so, rather than after the deadline as no answer.

Waiting for a job's end survives a coordinator restart: while it waits, the client asks the coordinator about the
job every few seconds (`watch`); when no answer comes, it reconnects and asks again until the coordinator is
back (a restarted one, with its state directory, knows the job), within the wait's own deadline if it has one."""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
    JobLogsReply,
    JobOutput,
    LogsRequest,
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
from .security import HANDSHAKE_NOT_TRUSTED, HANDSHAKE_OK, HandshakeWatch, curve_client
from .states import JobState

if TYPE_CHECKING:
    from ..runtime.results import RunResult


M = TypeVar("M", bound=Message)

WATCH_EVERY = 5.0   # seconds of silence while waiting for a job's end before the client asks about it again

Output = Callable[[str, str], None]   # (stream, line): what a job's virtual nodes printed, prefixed [vnode@agent]


def print_output(stream: str, line: str) -> None:
    """Show a job's printed line here: stdout lines on stdout, stderr lines (logging, warnings) on stderr."""
    print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)


def output_lines(vnode: str, agent: str, lines: list[list[str]], dropped: int = 0) -> list[tuple[str, str]]:
    """(stream, text) to show for lines a virtual node printed, each prefixed with where it ran; lines its host did
    not forward are counted in a last line.

    >>> for stream, line in output_lines("vn1", "node2", [["stdout", "42 readings"]], dropped=3):
    ...     print(stream, line)
    stdout [vn1@node2] 42 readings
    stderr [vn1@node2] ... 3 lines not forwarded (a host forwards at most 100 a second and keeps 1000 waiting); \
all are in its log file on node2
    """
    from ..runtime.output import KEEP, RATE

    out = [(stream, f"[{vnode}@{agent}] {text}") for stream, text in lines]
    if dropped:
        lines_ = f"{dropped} line{'s' if dropped != 1 else ''}"
        out.append(("stderr", f"[{vnode}@{agent}] ... {lines_} not forwarded (a host forwards at most {RATE:g} a "
                              f"second and keeps {KEEP} waiting); all are in its log file on {agent}"))
    return out


class ClusterError(MicrostreamError):
    """The coordinator could not be reached, refused a request, or a job failed."""


@dataclass
class ClusterAddress:
    endpoint: str
    keys: Any = None                      # this client's KeyPair (None: --insecure)
    coordinator_public: bytes | None = None


class Client:
    sock: zmq.Socket
    _watch: HandshakeWatch | None = None   # with a key: how the socket's CURVE handshakes end
    _refused = False                       # the last handshake that ended: the coordinator refused our key

    def __init__(self, address: ClusterAddress, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        if address.keys is not None and address.coordinator_public is None:
            raise ClusterError("with a client key, the coordinator's public key is needed too")
        self.ctx = zmq.Context()
        try:
            self._connect()
        except BaseException:  # Ctrl-C mid-connect too: a context left with an open socket hangs the exit
            self.ctx.destroy(linger=0)
            raise

    def _connect(self) -> None:
        """A (fresh) socket to the coordinator: answers meant for the old one are not read by mistake."""
        if hasattr(self, "sock"):
            self._close_socket()
        self.sock = control_socket(self.ctx, zmq.DEALER, send_timeout=self.timeout, linger=0)
        self._refused = False
        if self.address.keys is not None and self.address.coordinator_public is not None:
            curve_client(self.sock, self.address.keys, self.address.coordinator_public)
            self._watch = HandshakeWatch(self.sock)  # before connect(): its first handshake is seen too
        self.sock.connect(self.address.endpoint)

    def _close_socket(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.sock.close(linger=0)

    def close(self) -> None:
        """Close the socket and the context at once: never waits on anything unsent (a Ctrl-C ends a command
        promptly whatever it was doing)."""
        self._close_socket()
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: Message, expect: type[M], timeout: float | None = None) -> M:
        """Send `message` and wait for its answer, which must be an `expect` (an `error` or `rejected` answer,
        a send that cannot go out and a missing answer all raise ClusterError; a coordinator that refuses our
        key, as soon as that is seen)."""
        self._check_handshake()  # refused before: the send would wait for a connection that never comes
        try:
            send(self.sock, message, to=f"the coordinator at {self.address.endpoint}")
        except ControlSendError as exc:
            self._check_handshake()
            raise ClusterError(f"{exc} (do you have its public key, and is your key trusted there? "
                               "`microstream keys trust`)") from exc
        return self.receive(expect, timeout if timeout is not None else self.timeout)

    def receive(self, expect: type[M], timeout: float | None) -> M:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._poll(left):
                raise ClusterError(
                    f"no answer from the coordinator at {self.address.endpoint} within {timeout:.0f} s: is it "
                    "running, do you have its public key, and is your key trusted there (`microstream keys trust`)?")
            try:
                reply = TO_CLIENT.decode(self.sock.recv_multipart())
            except ProtocolError as exc:
                raise ClusterError(
                    f"the coordinator at {self.address.endpoint} answered something else: {exc}") from exc
            if isinstance(reply, Error | Rejected):
                raise ClusterError(reply.error)
            if isinstance(reply, expect):
                return reply
            # what answers an earlier wait, late: a `watch` that crossed its job's end is answered with the job's
            # end a second time (and its output may trail it): it belongs to no request
            if not isinstance(reply, JobDone | Watching | JobOutput):
                raise ClusterError(f"expected '{expect.KIND}' from the coordinator, got '{reply.KIND}'")

    def _poll(self, timeout_ms: int | None) -> bool:
        """Whether a message from the coordinator comes within `timeout_ms` (None: no limit); a ClusterError as
        soon as the coordinator is seen refusing our key."""
        monitor = self._watch.monitor if self._watch is not None else None
        if monitor is None:
            return bool(self.sock.poll(timeout_ms))
        self._check_handshake()
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(left))
            if self.sock in ready:
                return True
            if monitor not in ready:
                return False
            self._check_handshake()  # a handshake ended: go on waiting, unless it was refused

    def _check_handshake(self) -> None:
        """Raise the ClusterError that says so if the last CURVE handshake that ended was refused by the
        coordinator's authenticator (our key is not trusted there, or was revoked). libzmq does not retry such a
        connection: this client stays refused; a new one (a new socket) may be accepted once the key is trusted."""
        seen = self._watch.seen() if self._watch is not None else None
        if seen in (HANDSHAKE_OK, HANDSHAKE_NOT_TRUSTED):
            self._refused = seen == HANDSHAKE_NOT_TRUSTED
        if self._refused:
            keys = self.address.keys
            raise ClusterError(
                f"the coordinator refused this key (not trusted): '{keys.name}' (fingerprint {keys.fingerprint}) "
                f"is not trusted by the coordinator at {self.address.endpoint}; on its machine, trust it with "
                f"`microstream keys trust {keys.name}.key --role client` (a running coordinator applies it at "
                "once), or use a trusted key (--key)")

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
               accepted=None, output: Output | None = print_output) -> tuple[str, RunResult | None]:
        """Submit a built pipeline. With `wait`, block until it ends (at most `timeout` s, if given) and return its
        merged result; the pipeline's `collect` sinks are filled with what the cluster collected. `accepted` is
        called with the job's id as soon as the coordinator has it (to re-attach with, should this wait end).
        While it waits, what the job's virtual nodes print (`print`, `ms.sinks.print()`, logging) is passed to
        `output` as (stream, line), each line prefixed `[vnode@agent]` (default: printed here; None: ignored).
        A job that cannot be sent (a function that captured a lock, a socket, ...) is a PipelineError naming its
        operator, before anything is sent."""
        pipeline.build()
        graph, notes = resolve_paths(pipeline.graph, Path.cwd())  # the agents open the files, elsewhere
        for note in notes:
            if progress:
                progress(note)
            else:
                print_output("stderr", note)
        try:
            blob = cloudpickle.dumps(graph)
        except (TypeError, AttributeError, pickle.PicklingError) as exc:  # what pickling a job raises
            problem = graph.shipping_problem()  # names the operator, what it captured, and the fix
            if problem is None:
                raise
            raise problem from exc
        started = time.perf_counter()
        reply = self.request(Submit(blob=blob, wait=wait), Accepted)
        job = reply.job
        if accepted:
            accepted(job)
        if progress:
            progress(f"job {job} submitted: " + ", ".join(f"{v} on {a}" for v, a in reply.placement.items()))
        if not wait:
            return job, None
        done = self.wait(job, timeout=timeout, progress=progress, watching=True, output=output)
        if done.state != JobState.FINISHED:
            raise _job_error(job, done)
        return job, merge_results(pipeline.graph, results_of(done), time.perf_counter() - started)

    def attach(self, job: str, timeout: float | None = None, progress=None) -> JobDone:
        """Wait for the end of a job submitted earlier (by anyone): its `job_done` (at once if it has ended)."""
        return self.wait(job, timeout=timeout, progress=progress, watching=False)

    def logs(self, job: str) -> JobLogsReply:
        """What `job`'s virtual nodes printed: the last lines the coordinator keeps ([vnode, agent, stream, text]
        each), how many it received and how many each host dropped."""
        return self.request(LogsRequest(job=job), JobLogsReply)

    def follow(self, job: str, output: Output = print_output, vnode: str | None = None,
               timeout: float | None = None) -> JobDone:
        """Show what `job` printed so far, then each new line as it comes (`vnode`: only that virtual node's),
        until the job ends; its `job_done`."""
        for stream, line in kept_lines(self.request(LogsRequest(job=job, follow=True), JobLogsReply), vnode):
            output(stream, line)

        def only(stream: str, line: str) -> None:
            if vnode is None or line.startswith(f"[{vnode}@"):
                output(stream, line)

        return self.wait(job, timeout=timeout, output=only)

    def wait(self, job: str, timeout: float | None = None, progress=None, watching: bool = False,
             output: Output | None = None) -> JobDone:
        """Wait for `job`'s end, asking the coordinator about it after every `WATCH_EVERY` s of silence; if it
        does not answer, reconnect and ask again (a restarted coordinator knows the job from its state
        directory). `watching`: the coordinator already knows this client waits (it submitted with `wait`).
        `output` gets what the job prints meanwhile, as (stream, line).
        A ClusterError if `timeout` s pass first (the job goes on), or if the coordinator does not know the job."""
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        asked: float | None = None                    # when the last `watch` went out, unanswered
        heard = now if watching else now - WATCH_EVERY  # not watching yet: ask at once
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
            if not self._poll(wait_ms):
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
            if isinstance(reply, JobOutput) and reply.job == job:
                for stream, line in output_lines(reply.vnode, reply.agent, reply.lines, reply.dropped):
                    if output is not None:
                        output(stream, line)
            if isinstance(reply, Error | Rejected):
                unknown = reply.error.startswith(f"no job '{job}'")
                raise ClusterError(reply.error + (f" (the coordinator at {self.address.endpoint} may have restarted "
                                                  "without its state directory)" if unknown else ""))
            if isinstance(reply, Watching) and reply.state != state:
                state = reply.state
                if progress and reply.reason:
                    progress(f"job {job} is {reply.state}: {reply.reason}")


def resolve_paths(graph: Any, base: Path) -> tuple[Any, list[str]]:
    """The graph to ship, with the relative file paths of its sources and sinks made absolute against `base` (the
    submitter's working directory, where the pipeline was checked), and a note for each: a file is opened by the
    agent that runs its virtual node, on its machine, whose working directory is not the submitter's. The user's
    graph is left as it is (its specs are frozen); the shipped one has copies of the operators that changed.

    >>> import microstream as ms
    >>> p = ms.Pipeline("paths")
    >>> p.from_iterable([{"v": 1.0}]).sink(ms.sinks.csv("out/v.csv"))
    >>> shipped, notes = resolve_paths(p.build(), Path("/home/pi/project"))
    >>> print(*notes)
    note: csv writes out/v.csv as /home/pi/project/out/v.csv on the node that runs it (relative paths are taken \
from where you submit; on other machines that path must exist there: copy the file, use a shared directory, or \
pin the operator with at="NODE")
    >>> [str(n.op.path) for n in shipped.nodes.values() if n.is_sink], [str(n.op.path) for n in p.graph.nodes.values()
    ...                                                                 if n.is_sink]
    (['/home/pi/project/out/v.csv'], ['out/v.csv'])
    """
    notes, changed = [], {}
    for node_id, node in graph.nodes.items():
        path = getattr(node.op, "path", None)
        if isinstance(path, Path) and not path.is_absolute():
            op = node.op.instantiate()  # an unfrozen copy of the spec, frozen again once its path is set
            op.path = base / path
            op.freeze()
            changed[node_id] = dataclasses.replace(node, op=op)
            does = "reads" if node.is_source else "writes"
            notes.append(f"note: {node.name} {does} {path} as {op.path} on the node that runs it (relative paths "
                         "are taken from where you submit; on other machines that path must exist there: copy the "
                         'file, use a shared directory, or pin the operator with at="NODE")')
    if not changed:
        return graph, notes
    shipped = copy.copy(graph)
    shipped.nodes = {**graph.nodes, **changed}
    return shipped, notes


def kept_lines(reply: JobLogsReply, vnode: str | None = None) -> list[tuple[str, str]]:
    """(stream, line) to show for the lines the coordinator kept of a job (`vnode`: only that virtual node's)."""
    out = [(stream, f"[{where}@{agent}] {text}") for where, agent, stream, text in reply.lines
           if vnode in (None, where)]
    if reply.received > len(reply.lines) and vnode is None:
        lost = reply.received - len(reply.lines)
        out.insert(0, ("stderr", f"... {lost} earlier lines not kept by the coordinator (all are in the hosts' log "
                                 "files on their agents)"))
    out += [("stderr", f"[{where}] ... {n} line{'s' if n != 1 else ''} not forwarded by its host (all are in its "
                       "log file on its agent)") for where, n in reply.dropped.items() if vnode in (None, where)]
    return out


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
