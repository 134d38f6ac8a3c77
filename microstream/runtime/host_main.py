"""Entry point of a `process` host: one virtual node in its own subprocess, driven by its agent.

    python -m microstream.runtime.host_main --control ipc:///tmp/agent.sock --job J --vnode vn0

Life cycle: hello -> (spec) -> bind a channel server -> ready(endpoint) -> (connect) -> (start)
-> run, sending stats every second -> done(result) or failed(error). A `stop` ends it at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import zmq

from .protocol import ControlMessage, msg


def _send(sock: zmq.Socket, message: ControlMessage) -> None:
    sock.send_multipart(message.frames())


_LATER = ("pause_to", "redirect", "snapshot")  # about other virtual nodes' moves: handled once running


def _expect(sock: zmq.Socket, kind: str, later: list[ControlMessage], timeout_ms: int = 120_000) -> ControlMessage:
    while True:
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no '{kind}' from the agent within {timeout_ms / 1000:.0f} s")
        m = ControlMessage.parse(sock.recv_multipart())
        if m.kind == kind:
            return m
        if m.kind == "stop":
            raise InterruptedError("stopped by the agent")
        if m.kind not in _LATER:
            raise RuntimeError(f"expected '{kind}' from the agent, got '{m.kind}'")
        later.append(m)


def serve(control: str, job: str, vnode: str) -> int:
    from .channels import ChannelClient, ChannelServer, CurveKeys
    from .host import HostRuntime

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 2000
    sock.connect(control)
    _send(sock, msg("hello", job=job, vnode=vnode, pid=os.getpid()))
    try:
        later: list[ControlMessage] = []
        message = _expect(sock, "spec", later)
        spec, settings = message.payload(), message.header
        secret = settings.get("secret")
        keys = CurveKeys(settings["public"].encode(), secret.encode()) if secret else None
        trusted = [k.encode() for k in settings.get("trusted") or []] or None
        server = ChannelServer(bind=f"tcp://{settings['bind_host']}:*", keys=keys, trusted=trusted,
                               credits=spec.get("credits", 8))
        runtime = HostRuntime(spec["graph"], spec["plan"], vnode, server, lambda ep, cid: None,
                              restoring=bool(settings.get("restoring")))
        _send(sock, msg("ready", job=job, vnode=vnode, endpoint=server.endpoint))
        peers = _expect(sock, "connect", later).header["endpoints"]

        def client(peer: dict, channel_id: str) -> ChannelClient:
            server_public = peer["public_key"].encode() if keys and peer.get("public_key") else None
            return ChannelClient(peer["endpoint"], channel_id, keys=keys, server_public=server_public)

        runtime.client_factory = client
        runtime.connect(peers)
        start = _expect(sock, "start", later)
        if start.blob is not None:  # a saved or migrated virtual node resumes from its snapshot
            runtime.restore(start.payload())
            runtime.on_resumed = lambda: _send(sock, msg("resumed", job=job, vnode=vnode, at=time.time()))
        stopped = False

        def control() -> list[ControlMessage]:
            nonlocal stopped
            messages, later[:] = list(later), []
            while sock.poll(0):
                m = ControlMessage.parse(sock.recv_multipart())
                if m.kind == "stop":
                    stopped = True
                else:
                    messages.append(m)
            return messages

        result = runtime.run(report=lambda s: _send(sock, msg("stats", job=job, vnode=vnode, stats=s)),
                             should_stop=lambda: stopped, control=control, control_socket=sock)
        if "snapshot" in result:
            _send(sock, msg("snapshot", result["snapshot"], job=job, vnode=vnode))
        else:
            _send(sock, msg("done", result, job=job, vnode=vnode, stats=result["stats"]))
        server.close()
        return 0
    except InterruptedError:
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the agent, which tells the coordinator
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _send(sock, msg("failed", job=job, vnode=vnode, error=detail, traceback=traceback.format_exc()))
        return 1
    finally:
        sock.close(linger=2000)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run one virtual node (started by an agent)")
    ap.add_argument("--control", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--vnode", required=True)
    args = ap.parse_args(argv)
    return serve(args.control, args.job, args.vnode)


if __name__ == "__main__":
    sys.exit(main())
