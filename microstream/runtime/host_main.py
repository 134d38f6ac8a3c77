"""Entry point of a `process` host: one virtual node in its own subprocess, driven by its agent.

    python -m microstream.runtime.host_main --control ipc:///tmp/agent.sock --job J --vnode vn0

hello -> (spec) -> bind a channel server, then the life cycle every host backend shares
(`host_lifecycle.serve_vnode`) over this process's control socket. A `stop` ends it at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import zmq

from .host_lifecycle import ParentWatch, Raw, failure_report, serve_vnode
from .lease import EXIT_LEASE_EXPIRED, HostLease
from .output import OutputCapture
from .protocol import ControlMessage, ControlSendError, control_socket, msg, send

_LATER = ("pause_to", "redirect", "snapshot", "checkpoint", "checkpoint_done")  # handled once running
_OUTPUT_FIRST = ("stats", "done", "failed", "snapshot")  # what the user code printed goes up before these


class SocketControl:
    """A process host's control link: a DEALER socket to its agent's IPC socket."""

    def __init__(self, sock: zmq.Socket, job: str, vnode: str, output: OutputCapture | None = None,
                 control: str = "") -> None:
        self.sock, self.job, self.vnode = sock, job, vnode
        self.control = control  # the agent's endpoint (its work directory, for an ipc:// one)
        self.output = output
        self.wake = sock
        self.later: list[ControlMessage] = []
        self._stopped = False
        self.parent = ParentWatch()
        self.lease: HostLease | None = None
        self.lease_expired = False

    def hold_lease(self, settings: dict[str, Any]) -> None:
        """From the spec on, this host runs only while its agent renews its lease (runtime/lease.py)."""
        if settings.get("lease") and settings.get("lease_file"):
            self.lease = HostLease(settings["lease_file"], float(settings["lease"]))

    @property
    def stopped(self) -> bool:
        if not self._stopped and self.parent.gone():
            self._stopped = True  # the agent is gone (kill -9, crash): nobody will read what this host sends
        if not self._stopped and self.lease is not None and self.lease.expired():
            self._stopped = self.lease_expired = True
            print(f"host {self.job}/{self.vnode}: stopping: its agent has not renewed its lease for "
                  f"{self.lease.age():.1f} s (frozen or stuck), and its work is about to run elsewhere",
                  file=sys.stderr, flush=True)
        return self._stopped

    def send(self, kind: str, payload: Any = None, **header: Any) -> None:
        """Tell the agent; a send that cannot go out within the control deadline means the agent is gone or
        stuck: the host stops rather than block forever (recovery runs its work elsewhere)."""
        if self.output is not None and kind in _OUTPUT_FIRST:
            self._forward_output()
        try:
            header = {"job": self.job, "vnode": self.vnode, **header}
            message = (ControlMessage(kind, header, payload.data) if isinstance(payload, Raw)
                       else msg(kind, payload, **header))
            send(self.sock, message, to="the agent")
        except ControlSendError:
            self._stopped = True
            if kind not in ("stats", "resumed"):
                raise

    def _forward_output(self) -> None:
        """Lines printed since the last report (once a second, and before the end), for the submitter."""
        assert self.output is not None
        lines, dropped = self.output.take()
        if lines or dropped:
            with contextlib.suppress(ControlSendError):  # best effort: the log file has every line
                send(self.sock, msg("output", job=self.job, vnode=self.vnode, lines=lines, dropped=dropped),
                     to="the agent")

    def expect(self, kind: str) -> ControlMessage:
        """The next control message of `kind`, however long it takes while the agent lives: how long a
        deployment may take is the coordinator's to decide (a microVM beside this host may take minutes to
        boot), and it stops this host if it gives up."""
        for m in self.later:
            if m.kind == kind:
                self.later.remove(m)
                return m
        while True:
            while not self.sock.poll(500):
                if self.stopped:
                    raise InterruptedError("the agent is gone")
            m = ControlMessage.parse(self.sock.recv_multipart())
            if m.kind == kind:
                return m
            if m.kind == "stop":
                raise InterruptedError("stopped by the agent")
            if m.kind not in _LATER:
                raise RuntimeError(f"expected '{kind}' from the agent, got '{m.kind}'")
            self.later.append(m)

    def poll(self) -> list[ControlMessage]:
        self._take_waiting()
        messages, self.later = self.later, []
        return messages

    def should_abort(self) -> bool:
        """For a host blocked on a channel (its consumer is gone or stuck): has it been told to stop, or is its
        agent gone? Other messages are kept for `poll`."""
        self._take_waiting()
        return self.stopped

    def _take_waiting(self) -> None:
        while self.sock.poll(0):
            m = ControlMessage.parse(self.sock.recv_multipart())
            if m.kind == "stop":
                self._stopped = True
            else:
                self.later.append(m)


def serve(control: str, job: str, vnode: str) -> int:
    ctx = zmq.Context()
    sock = control_socket(ctx, zmq.DEALER, linger=2.0)
    sock.connect(control)
    output = OutputCapture()
    link = SocketControl(sock, job, vnode, output, control)
    link.send("hello", pid=os.getpid())
    try:
        with output.installed():  # user code's print and logging: to the log file and, bounded, to the submitter
            return _serve(link, job, vnode)
    finally:
        sock.close(linger=2000)
        ctx.term()


def _serve(link: SocketControl, job: str, vnode: str) -> int:
    from .channels import ChannelClient, ChannelServer, CurveKeys
    from .statexfer import Transfers

    try:
        message = link.expect("spec")
        spec, settings = message.payload(), {**message.header, "vnode": vnode, "job": job}
        link.hold_lease(settings)
        if link.control.startswith("ipc://"):  # sensors' local logs: in the agent's work directory, beside its socket
            settings.setdefault("source_log", Path(link.control[len("ipc://"):]).parent / "log")
        secret = settings.get("secret")
        keys = CurveKeys(settings["public"].encode(), secret.encode()) if secret else None
        trusted = [k.encode() for k in settings.get("trusted") or []] or None
        server = ChannelServer(bind=f"tcp://{settings['bind_host']}:*", keys=keys, trusted=trusted,
                               credits=spec.get("credits", 8))

        def client(peer: dict, channel_id: str) -> ChannelClient:
            server_public = peer["public_key"].encode() if keys and peer.get("public_key") else None
            return ChannelClient(peer["endpoint"], channel_id, keys=keys, server_public=server_public,
                                 should_abort=link.should_abort)

        try:
            serve_vnode(link, spec, settings, server, client, ready={"endpoint": server.endpoint},
                        transfers=Transfers(settings["bind_host"], keys, trusted or ()))
        finally:
            server.close()
        return 0
    except InterruptedError:
        return EXIT_LEASE_EXPIRED if link.lease_expired else 0
    except Exception as exc:  # noqa: BLE001 - reported to the agent, which tells the coordinator
        with contextlib.suppress(ControlSendError):  # an agent that is gone hears nothing; recovery sees to it
            link.send("failed", **failure_report(exc))
        return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run one virtual node (started by an agent)")
    ap.add_argument("--control", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--vnode", required=True)
    args = ap.parse_args(argv)
    return serve(args.control, args.job, args.vnode)


if __name__ == "__main__":
    sys.exit(main())
