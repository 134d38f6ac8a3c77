"""A client of the coordinator: submit a pipeline, ask for status, stop a job."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import zmq

from ..core.errors import MicrostreamError
from ..runtime.protocol import ControlMessage, msg
from .security import curve_client

if TYPE_CHECKING:
    from ..runtime.local import RunResult


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
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if address.keys is not None:
            curve_client(self.sock, address.keys, address.coordinator_public)
        self.sock.connect(address.endpoint)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: ControlMessage, timeout: float | None = None) -> ControlMessage:
        self.sock.send_multipart(message.frames())
        return self.receive(timeout if timeout is not None else self.timeout)

    def receive(self, timeout: float | None) -> ControlMessage:
        if not self.sock.poll(None if timeout is None else int(timeout * 1000)):
            raise ClusterError(
                f"no answer from the coordinator at {self.address.endpoint} within {timeout:.0f} s: is it running, "
                "do you have its public key, and is your key trusted there (`microstream keys trust`)?")
        reply = ControlMessage.parse(self.sock.recv_multipart())
        if reply.kind in ("error", "rejected"):
            raise ClusterError(reply.header.get("error", reply.kind))
        return reply

    # -- requests ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.request(msg("status")).header

    def stop(self, job: str) -> dict[str, Any]:
        return self.request(msg("stop", job=job)).header

    def migrate(self, job: str, vnode: str, to: str, timeout: float = 120.0, whole: bool = False) -> dict[str, Any]:
        """Move a running virtual node to agent `to`; returns downtime and state size once it runs there.
        `whole` (microvm vnodes only): move the VM itself, live, with QEMU's migration stream (tier 2)."""
        return self.request(msg("migrate", job=job, vnode=vnode, to=to, whole=whole), timeout=timeout).header

    def save(self, job: str, vnode: str, timeout: float = 120.0) -> tuple[dict[str, Any], bytes]:
        """Stop a virtual node at a barrier and return its snapshot (upstream holds its records meanwhile)."""
        reply = self.request(msg("save", job=job, vnode=vnode), timeout=timeout)
        return reply.header, reply.blob or b""

    def restore(self, job: str, vnode: str, snapshot: bytes, to: str | None = None,
                timeout: float = 120.0) -> dict[str, Any]:
        """Resume a saved virtual node from its snapshot (on agent `to`, or where it ran before)."""
        message = ControlMessage("restore", {"job": job, "vnode": vnode, "to": to}, snapshot)
        return self.request(message, timeout=timeout).header

    def submit(self, pipeline: Any, wait: bool = True, progress=None) -> tuple[str, RunResult | None]:
        """Submit a built pipeline. With `wait`, block until it ends and return its merged result; the
        pipeline's `collect` sinks are filled with what the cluster collected."""
        pipeline.build()
        started = time.perf_counter()
        reply = self.request(ControlMessage("submit", {"wait": wait}, cloudpickle.dumps(pipeline.graph)))
        job = reply.header["job"]
        if progress:
            progress(f"job {job} submitted: " + ", ".join(f"{v} on {a}" for v, a in reply.header["placement"].items()))
        if not wait:
            return job, None
        done = self.receive(None)
        if done.header.get("state") != "finished":
            raise ClusterError(f"job {job} {done.header.get('state')}: {done.header.get('reason', '')}")
        results = cloudpickle.loads(done.blob) if done.blob else []
        return job, merge_results(pipeline, [cloudpickle.loads(r) if isinstance(r, bytes) else r for r in results],
                                  time.perf_counter() - started)


def merge_results(pipeline: Any, results: list[dict], seconds: float) -> RunResult:
    from ..core.batch import Batch
    from ..runtime.local import RunResult
    from ..sinks.memory import Collect

    out = RunResult(pipeline.name, seconds)
    sinks = {node.name: node.op for node in pipeline.graph.nodes.values() if isinstance(node.op, Collect)}
    for sink in sinks.values():
        sink.extend([], None)
        sink._batches = []
    for r in results:
        for k, v in r["records_in"].items():
            out.records_in[k] = out.records_in.get(k, 0) + v
        for k, v in r["records_out"].items():
            out.records_out[k] = out.records_out.get(k, 0) + v
        out.dead_letter_count += r["dead_letter_count"]
        out.late_count += r.get("late_count", 0)
        out.dead_letters.extend(r["dead_letters"])
        for name, batches in r["collected"].items():
            if name in sinks:
                sinks[name].extend([Batch(b) for b in batches], None)
    return out
