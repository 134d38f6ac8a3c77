"""The host side of a `microvm` virtual node: a relay process between the agent and the VM.

    python -m microstream.unikernel_backend.relay --control ipc:///tmp/agent.sock --job J --vnode vn0

To its agent the relay looks exactly like a `process` host (`runtime/host_main.py`): it says hello,
takes the spec, reports ready with a data endpoint, and then stats, resumed, snapshot, done or failed.
It boots the VM (`vm.MicroVM`) and runs the virtual node's `HostRuntime` inside it (`vmhost.py`). The
relay terminates the ZeroMQ data channels here: batches for the vnode arrive on the relay's
`ChannelServer` and go to the guest over virtio-serial; the guest's sends come back and leave on real
`ChannelClient`s. Credits are only returned upstream once the guest has processed a message, and the
guest may have at most `vmhost.SEND_WINDOW` sends queued here, so backpressure reaches through the VM.

Whole-VM moves (tier 2): a relay started with ``incoming`` launches QEMU waiting for a migration stream
and reports the address with its ready. The source relay, asked for a ``whole`` snapshot, lets the guest
align on the barrier (nothing is in flight then), migrates the VM live over TCP with QEMU's own
migration stream, and hands the control channel's sequence state over as its snapshot; the new relay
loads it, reconnects to the new QEMU, and tells the guest to go on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import zmq

from ..runtime.protocol import ControlMessage
from .vmhost import STREAM, decode, encode

MEMORY_MB = int(os.environ.get("MICROSTREAM_VM_MEMORY_MB", "384"))
# booting and loading numba: minutes under software emulation on a busy machine (the coordinator gives a
# microVM deployment 600 s and stops the relay if it gives up first)
BOOT_TIMEOUT = 600.0


def _portable_spec(blob: bytes) -> bytes:
    """The job spec, re-pickled so that functions from modules the guest lacks (a test module, an
    application package) travel by value. Modules imported while loading the spec are those modules."""
    import cloudpickle

    before = set(sys.modules)
    spec = cloudpickle.loads(blob)
    in_guest = {"microstream", "numpy", "numba", "llvmlite", "cloudpickle", *getattr(sys, "stdlib_module_names", ())}
    tops = sorted({name.split(".")[0] for name in set(sys.modules) - before} - in_guest)
    registered = []
    for top in tops:
        module = sys.modules.get(top)
        if module is not None:
            with contextlib.suppress(Exception):
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
    if not registered:
        return blob
    try:
        return cloudpickle.dumps(spec)
    finally:
        for module in registered:
            with contextlib.suppress(Exception):
                cloudpickle.unregister_pickle_by_value(module)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Relay:
    def __init__(self, control: str, job: str, vnode: str) -> None:
        self.job, self.vnode = job, vnode
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 2000
        self.sock.connect(control)
        self.server: Any = None
        self.vm: Any = None
        self.keys: Any = None
        self.tokens: dict[int, Any] = {}
        self.next_token = 1
        self.clients: dict[str, Any] = {}
        self.held: list[ControlMessage] = []  # agent messages for a guest not running here yet (incoming)
        self.incoming: str | None = None
        self.whole: dict | None = None        # the pending whole-VM move (the snapshot request)
        self.finished = False
        self.code = 0
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"microvm-{job}-{vnode}-"))
        self.start_info: dict[str, Any] = {}  # how the VM started (template or cold, and why), for the stats

    # -- agent side -----------------------------------------------------------------------------------
    def to_agent(self, kind: str, blob: bytes | None = None, **header: Any) -> None:
        self.sock.send_multipart(ControlMessage(kind, {"job": self.job, "vnode": self.vnode, **header}, blob).frames())

    def expect(self, kind: str, timeout: float = 120.0) -> ControlMessage:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"no '{kind}' from the agent within {timeout:.0f} s")
            m = ControlMessage.parse(self.sock.recv_multipart())
            if m.kind == kind:
                return m
            if m.kind == "stop":
                raise InterruptedError("stopped by the agent")
            self.held.append(m)

    def to_guest(self, kind: str, header: dict | None = None, batch: Any = None, blob: bytes | None = None) -> None:
        self.vm.channel.send_data(STREAM, encode(kind, header, batch, blob))

    def forward(self, m: ControlMessage) -> None:
        if m.kind == "stop":
            self.to_guest("ctl", {"kind": "stop", "header": m.header})
            self.finished = True
            return
        if self.incoming is not None:  # the guest is still on its way here
            if m.kind == "start":
                self.arrive(m.blob)
            elif m.kind != "connect":
                self.held.append(m)
            return
        if m.kind == "snapshot" and m.header.get("whole"):
            self.whole = dict(m.header)
        self.to_guest("ctl", {"kind": m.kind, "header": m.header}, blob=m.blob)

    # -- set up ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        from ..runtime.channels import ChannelServer, CurveKeys
        from .image import build_image, cached_image
        from .vm import MicroVM

        self.to_agent("hello", pid=os.getpid())
        try:
            spec = self.expect("spec")
            settings = spec.header
            secret = settings.get("secret")
            self.keys = CurveKeys(settings["public"].encode(), secret.encode()) if secret else None
            trusted = [k.encode() for k in settings.get("trusted") or []] or None
            spec_obj = spec.payload()
            assert spec.blob is not None  # payload() has just read it
            # credits in messages alone: every message received goes on into the guest at once, so the window is
            # what bounds the guest's queue (a byte window would let up to 64 small batches a producer pile up there)
            self.server = ChannelServer(bind=f"tcp://{settings['bind_host']}:*", keys=self.keys, trusted=trusted,
                                        credits=spec_obj.get("credits", 8), window_bytes=0)
            # the image this agent advertised (files only); apt is asked only when there is none (a build)
            image = cached_image() or build_image(progress=lambda line: print(line, flush=True))
            if settings.get("incoming"):
                self.vm = self._new_vm(MicroVM(image, memory_mb=MEMORY_MB, accel="auto", **self._vm_args()))
                port = _free_port(settings["bind_host"])
                self.vm.launch(incoming=f"tcp:{settings['bind_host']}:{port}", connect_channel=False)
                self.incoming = f"tcp:{settings['bind_host']}:{port}"
                self.start_info = {"start": "incoming"}
                self.to_agent("ready", endpoint=self.server.endpoint, incoming=self.incoming)
            else:
                boot = self.start_vm(image)
                self.vm.channel.exec("import microstream.unikernel_backend.vmhost as _vmhost; _vmhost.start(agent)")
                self.to_guest("spec", {"job": self.job, "vnode": self.vnode, "epoch": settings.get("epoch", 0),
                                       "restoring": bool(settings.get("restoring"))}, blob=_portable_spec(spec.blob))
                ready = self.wait_guest("ready")
                print(f"relay {self.job}/{self.vnode}: VM up ({self.start_info['start']}) in {boot:.1f} s, numba "
                      f"preloaded in "
                      f"{ready.header.get('preload_s') or 0:.1f} s, runtime ready in "
                      f"{ready.header.get('seconds', 0):.1f} s more (accel {self.vm.accel})", flush=True)
                self.to_agent("ready", endpoint=self.server.endpoint, boot_s=boot)
            for m in self.held_messages():
                self.forward(m)
            self.loop()
            return self.code
        except InterruptedError:
            return 0
        except Exception as exc:  # noqa: BLE001 - reported to the agent, which tells the coordinator
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            with contextlib.suppress(Exception):
                detail += "\n" + self.vm.diagnostics(15)
            self.to_agent("failed", error=detail, traceback=traceback.format_exc())
            return 1
        finally:
            self.close()

    def _vm_args(self) -> dict[str, Any]:
        return {"workdir": self.workdir / "vm", "name": f"{self.job}-{self.vnode}",
                "log": lambda line: print(line, flush=True)}

    def _new_vm(self, vm: Any) -> Any:
        vm.channel.on_data = self._wake
        return vm

    def start_vm(self, image: Any) -> float:
        """Start this vnode's VM from the agent's template (restored: ~1 s, numba loaded), else boot it cold
        (the reason goes to the log and the vnode's stats; the job goes on either way). Returns seconds."""
        from . import template as templates
        from .vm import MicroVM

        log = lambda line: print(line, flush=True)  # noqa: E731
        note = "templates are off (MICROSTREAM_VM_TEMPLATE=off)"
        if templates.mode() != "off":
            vm = None
            try:
                tmpl = templates.template_for(image, MEMORY_MB, log=log)
                vm = self.vm = self._new_vm(templates.template_vm(image, tmpl, **self._vm_args()))
                seconds = templates.restore_template(vm, tmpl)
                self.start_info = {"start": "template", "template": tmpl.key, "start_s": round(seconds, 2)}
                return seconds
            except Exception as exc:  # noqa: BLE001 - any failure: boot cold instead, and say why
                note = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
                if vm is not None:
                    with contextlib.suppress(Exception):
                        log(vm.diagnostics(10))
                    vm.cleanup()
                    with contextlib.suppress(Exception):  # it failed to restore: the next vnode builds a new one
                        templates.discard(tmpl.directory, log)
        print(f"relay {self.job}/{self.vnode}: booting the VM cold: {note}", flush=True)
        self.vm = self._new_vm(MicroVM(image, memory_mb=MEMORY_MB, accel="auto", **self._vm_args()))
        seconds = self.vm.start(timeout=BOOT_TIMEOUT)
        self.start_info = {"start": "cold", "start_note": note, "start_s": round(seconds, 2)}
        return seconds

    def held_messages(self) -> list[ControlMessage]:
        held, self.held = self.held, []
        return held

    def wait_guest(self, kind: str, timeout: float = BOOT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.vm.pid is None:
                raise RuntimeError(f"the VM exited before its runtime sent '{kind}'")
            with contextlib.suppress(TimeoutError):
                item = decode(self.vm.channel.recv_data(STREAM, timeout=0.5))
                if item.kind == kind:
                    return item
                if item.kind == "failed":
                    raise RuntimeError(f"in the VM: {item.header.get('error')}\n{item.header.get('traceback', '')}")
                raise RuntimeError(f"expected '{kind}' from the VM, got '{item.kind}'")
            while self.sock.poll(0):  # only a stop can come before ready
                m = ControlMessage.parse(self.sock.recv_multipart())
                if m.kind == "stop":
                    raise InterruptedError("stopped by the agent")
                self.held.append(m)
        raise TimeoutError(f"no '{kind}' from the VM's runtime within {timeout:.0f} s")

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"!")

    # -- the relay loop ------------------------------------------------------------------------------------
    def loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.server._sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        while not self.finished:
            poller.poll(200)
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)
            while self.sock.poll(0) and not self.finished:
                self.forward(ControlMessage.parse(self.sock.recv_multipart()))
            if self.incoming is None and not self.finished:
                while True:
                    m = self.server.recv(timeout=0)
                    if m is None:
                        break
                    token, self.next_token = self.next_token, self.next_token + 1
                    self.tokens[token] = m
                    self.to_guest("msg", {"token": token, "kind": m.kind, "channel_id": m.channel_id,
                                          "target": m.target, "seq": m.seq, "watermark": m.watermark,
                                          "barrier": m.barrier}, m.batch)
                self.from_guest()
            if self.vm.pid is None and not self.finished:
                self.to_agent("failed", error=f"the VM exited unexpectedly\n{self.vm.diagnostics(15)}")
                self.code, self.finished = 1, True

    def from_guest(self) -> None:
        sent = 0
        while not self.finished:
            try:
                data = self.vm.channel.recv_data(STREAM, timeout=0)
            except TimeoutError:
                break
            item = decode(data)
            if item.kind != "send" and sent:  # credit first: it must reach the guest before a whole-VM move
                self.to_guest("credit", {"n": sent})
                sent = 0
            sent += self.on_guest(item)
        if sent and not self.finished:
            self.to_guest("credit", {"n": sent})

    def on_guest(self, item: Any) -> int:
        h, kind = item.header, item.kind
        if kind == "send":
            client = self.clients[h["cid"]]
            method = h["m"]
            if method == "batch":
                client.send_batch(item.batch, target=h["target"], watermark=h.get("watermark"))
            elif method == "watermark":
                client.send_watermark(int(h["watermark"]), target=h["target"])
            elif method == "end":
                client.send_end(target=h["target"])
            elif method == "barrier":
                client.send_barrier(int(h["barrier"]), target=h["target"])
            elif method == "checkpoint":
                client.send_checkpoint(int(h["barrier"]), target=h["target"])
            return 1
        if kind == "ack":
            for token in h["tokens"]:
                m = self.tokens.pop(int(token), None)
                if m is not None:
                    self.server.ack(m)
        elif kind == "open":
            self.open(h["cid"], h["peer"])
        elif kind == "close":
            client = self.clients.pop(h["cid"], None)
            if client is not None:
                client.close()
        elif kind == "flush":
            for client in self.clients.values():
                client.flush()
            self.to_guest("flushed", {"id": h["id"]})
        elif kind == "stats":
            stats = h["stats"]
            stats["vm"] = {"pid": self.vm.pid, "accel": self.vm.accel, "rss_mb": self.vm.rss_mb(),
                           "pss_mb": self.vm.pss_mb(), **self.start_info}
            self.to_agent("stats", stats=stats)
        elif kind == "resumed":  # stamped here: the guest's clock is its own (and TCG lets it drift)
            quiet_for = item.header.get("quiet_for")
            self.to_agent("resumed", at=time.time() - (quiet_for or 0.0), quiet=quiet_for is not None)
        elif kind == "aligned":
            self.leave()
        elif kind == "snapshot":
            self.to_agent("snapshot", item.blob)
            self.finished = True
        elif kind == "checkpointed":  # the guest goes on; the snapshot is for the coordinator
            self.to_agent("checkpointed", item.blob, checkpoint=h["checkpoint"])
        elif kind == "done":
            self.to_agent("done", item.blob, stats={**h.get("stats", {}), "vm": {"accel": self.vm.accel,
                                                                              **self.start_info}})
            self.finished = True
        elif kind == "failed":
            self.to_agent("failed", error=h.get("error", "?"), traceback=h.get("traceback", ""),
                          **{k: h[k] for k in ("operator", "cause") if k in h})
            self.code, self.finished = 1, True
        elif kind == "exited":
            self.finished = True
        return 0

    def open(self, cid: str, peer: dict) -> None:
        from ..runtime.channels import ChannelClient

        old = self.clients.pop(cid, None)
        if old is not None:
            old.close()
        server_public = peer["public_key"].encode() if self.keys and peer.get("public_key") else None
        self.clients[cid] = ChannelClient(peer["endpoint"], cid, keys=self.keys, server_public=server_public)

    # -- whole-VM moves -----------------------------------------------------------------------------------------
    def leave(self) -> None:
        """The guest is aligned on the barrier: move the VM live to the waiting QEMU, hand over the channel."""
        assert self.whole is not None, "aligned without a whole-VM move"
        self.server.flush_credits()
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        figures = self.vm.migrate_live(self.whole["whole"]["uri"])
        state = {"channel": self.vm.channel.export_state(), "figures": figures}
        self.vm.kill()
        print(f"relay {self.job}/{self.vnode}: VM migrated live: {figures}", flush=True)
        self.to_agent("snapshot", json.dumps(state).encode(), whole=figures)
        self.finished = True

    def arrive(self, blob: bytes | None) -> None:
        """The VM's memory has arrived here (or is arriving): take over its channel and let it go on."""
        state = json.loads(blob or b"{}")
        self.vm.finish_incoming(state["channel"])
        self.incoming = None
        self.to_guest("continue", {})
        for m in self.held_messages():
            self.forward(m)

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close(linger=0.5)
        if self.vm is not None:
            with contextlib.suppress(Exception):
                if self.vm.pid is not None:
                    self.vm.stop(timeout=6)
            with contextlib.suppress(Exception):
                self.vm.kill()
        if self.server is not None:
            self.server.close()
        self.sock.close(linger=2000)
        self.ctx.term()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run one virtual node inside a microVM (started by an agent)")
    ap.add_argument("--control", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--vnode", required=True)
    args = ap.parse_args(argv)
    return Relay(args.control, args.job, args.vnode).run()


if __name__ == "__main__":
    sys.exit(main())
