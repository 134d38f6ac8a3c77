"""Host end of the virtio-serial control channel to a microVM's guest agent.

QEMU exposes the guest's `virtserialport` as a unix-socket chardev (server side); `Channel` connects to
it as the client. Framing, sequence numbers and acknowledgements come from `guest.py`, which the guest
runs, so both ends share one implementation. The channel survives reconnects (to the same socket or to
the socket of a restored VM): `reconnect()` sends a `sync`, after which both ends resend whatever the
other has not acknowledged, and receivers drop duplicates — no message is lost or delivered twice.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .guest import Endpoint, FrameDecoder


class GuestError(RuntimeError):
    """A snippet or import failed inside the guest; carries the guest's traceback."""

    def __init__(self, error: str, traceback: str = "") -> None:
        super().__init__(error)
        self.guest_traceback = traceback


class ChannelClosed(ConnectionError):
    """The channel is not connected to a guest."""


class Channel(Endpoint):
    """Reliable, ordered messages with a guest agent over a virtio-serial unix socket.

    Thread-safe. One reader thread per connection delivers replies (`request`), the guest's hello
    (`wait_hello`) and data streams (`recv_data`); one writer thread (from `Endpoint`) writes.
    """

    def __init__(self, path: str | Path, window: int = 256, log: Callable[[str], None] | None = None) -> None:
        super().__init__(window)
        self.path = Path(path)
        self.log = log or (lambda _: None)
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._streams: dict[str, collections.deque[bytes]] = collections.defaultdict(collections.deque)
        self._ids = itertools.count(1)
        self.hello: dict[str, Any] | None = None
        self.hello_at: float | None = None  # time.monotonic() when the hello arrived
        self.guest_logs: list[str] = []
        self.reconnects = 0
        self.on_data: Callable[[], None] | None = None  # called (reader thread) when a data chunk arrives

    # -- connection -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, path: str | Path | None = None, timeout: float = 10.0) -> None:
        """Connect to the chardev socket (waiting for it to appear), then resynchronise with the guest."""
        if path is not None:
            self.path = Path(path)
        sock = _connect_unix(self.path, timeout)
        self.decoder = FrameDecoder()  # a new byte stream: drop any half frame of the old one
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, args=(sock,), name="microvm-channel", daemon=True)
        self._reader.start()
        self.send_control("sync", reply=True)

    def detach(self) -> None:
        """Drop the connection but keep the session: unacknowledged messages wait for `connect`."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._reader = None

    def reconnect(self, path: str | Path | None = None, timeout: float = 10.0) -> None:
        """Detach and connect again (to `path`, e.g. the socket of a restored VM)."""
        self.detach()
        self.reconnects += 1
        self.connect(path, timeout)

    def close(self) -> None:
        """Detach and end the writer thread (the channel cannot be used afterwards)."""
        self.detach()
        self.close_writer()

    # -- sending ----------------------------------------------------------------------------------
    def _raw_write(self, data: bytes) -> bool:
        sock = self._sock
        if sock is None:
            return False  # sequenced messages stay unacknowledged and are resent after `connect`
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False  # the reader notices the broken connection

    def send(self, kind: str, body: bytes = b"", timeout: float | None = 60.0, **fields: Any) -> int:
        """Send a sequenced message; kept until acknowledged, resent after a reconnect. Returns its seq."""
        return super().send(kind, body, timeout, **fields)

    def send_data(self, stream: str, data: bytes) -> int:
        """Stream bytes to the guest (`agent.handlers[stream]` or `agent.inbox[stream]` there)."""
        return self.send("data", bytes(data), stream=stream)

    # -- requests ---------------------------------------------------------------------------------
    def request(self, kind: str, body: bytes = b"", timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Send a message with a fresh id and wait for the guest's reply with that id."""
        rid = next(self._ids)
        self.send(kind, body, timeout=timeout, id=rid, **fields)
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies, timeout):
                raise TimeoutError(f"no reply to {kind!r} (id {rid}) from the guest within {timeout} s")
            return self._replies.pop(rid)

    def ping(self, timeout: float = 30.0) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter()
        self.request("ping", timeout=timeout)
        return time.perf_counter() - start

    def exec_result(self, code: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run a Python snippet in the guest; the full result record (ok, value, repr, seconds, error)."""
        return self.request("exec", code.encode(), timeout=timeout)

    def exec(self, code: str, timeout: float = 120.0) -> Any:
        """Run a Python snippet in the guest and return its final expression's value (JSON form).

        The namespace persists across calls; `agent` in it is the guest agent. Raises `GuestError`."""
        result = self.exec_result(code, timeout)
        if not result.get("ok"):
            raise GuestError(result.get("error", "unknown error"), result.get("traceback", ""))
        return result.get("value")

    def import_module(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """Import a module in the guest: its file, version and the time the import took."""
        result = self.request("import", module=name, timeout=timeout)
        if not result.get("ok"):
            raise GuestError(result.get("error", "unknown error"), result.get("traceback", ""))
        return {**result["value"], "seconds": result["seconds"]}

    def recv_data(self, stream: str, timeout: float | None = 30.0) -> bytes:
        """The next chunk the guest sent on `stream`."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._streams[stream]), timeout):
                raise TimeoutError(f"nothing on stream {stream!r} within {timeout} s")
            return self._streams[stream].popleft()

    def wait_hello(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the guest agent's hello (sent once, when it starts)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.hello is not None, timeout):
                raise TimeoutError(f"no hello from the guest agent within {timeout} s")
            return dict(self.hello or {})

    def export_state(self) -> dict[str, Any]:
        """Sequence/acknowledgement state and the guest's hello, to continue this channel elsewhere."""
        return {"session": self.session.export(), "hello": self.hello}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue a channel exported by `export_state` (before connecting to the restored guest)."""
        self.session.load(state["session"])
        self.hello = state.get("hello")

    @property
    def stats(self) -> dict[str, int]:
        return {**self.session.counts, "unacked": len(self.session.unacked), "delivered": self.session.delivered,
                "skipped_bytes": self.decoder.skipped, "reconnects": self.reconnects}

    # -- receiving --------------------------------------------------------------------------------
    def _read_loop(self, sock: socket.socket) -> None:
        sock.settimeout(0.5)
        while self._sock is sock:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                self.tick()
                continue
            except OSError:
                chunk = b""
            if not chunk:
                break
            self.on_bytes(chunk)
        if self._sock is sock:  # the other side went away (QEMU exited): wait for connect()
            self._sock = None
            with contextlib.suppress(OSError):
                sock.close()

    def _deliver(self, header: dict[str, Any], body: bytes) -> None:
        kind = header.get("kind")
        with self._cond:
            if kind == "hello":
                self.hello, self.hello_at = header, time.monotonic()
            elif kind == "data":
                self._streams[header.get("stream", "")].append(body)
                if self.on_data is not None:
                    self.on_data()
            elif kind == "log":
                self.guest_logs.append(body.decode(errors="replace"))
                self.log(f"guest: {self.guest_logs[-1]}")
            elif header.get("id") is not None:
                self._replies[header["id"]] = header
            self._cond.notify_all()


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise ChannelClosed(f"cannot connect to the guest channel at {path}: {exc}") from exc
            time.sleep(0.02)
