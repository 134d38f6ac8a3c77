"""The console's HTTP server: the standard library's threaded HTTP server, in threads of the coordinator's
process, serving the page, its assets (shipped in the package: no CDN), the status as JSON, a stream of status
updates (server-sent events) and server-drawn SVGs of each job's DAG and placement.

Only the coordinator's loop touches its state: it calls `feed(coordinator.status)` on every tick, and the
status is built there, at most once a second and only while someone is watching. The HTTP threads read the
last status built; nothing here reaches into the coordinator.

Access needs the token generated at start (`?token=` once, then a cookie; or `Authorization: Bearer`). It
listens on loopback unless told otherwise (`allow_remote`): plain HTTP should not leave the machine by accident.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..core.errors import MicrostreamError
from .views import dag_svg, placement_svg

COOKIE = "microstream_console"
EVERY = 1.0          # seconds between status updates while someone watches
KEEPALIVE = 15.0     # seconds between comments on an idle event stream (proxies drop silent connections)
ASSETS = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}


class ConsoleError(MicrostreamError):
    """The console cannot start (an address refused, a port taken); the message names the fix."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Console:
    """The web console. `start()` listens and returns the URL (with the token); `feed(status)` is called by the
    coordinator's loop; `stop()` ends every connection."""

    def __init__(self, bind: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 allow_remote: bool = False, every: float = EVERY, log: Callable[[str], None] = print) -> None:
        if not is_loopback(bind) and not allow_remote:
            raise ConsoleError(f"the console listens on loopback only unless asked: {bind} is not a loopback "
                               "address (pass --console-bind ADDRESS explicitly to serve it on the network)")
        self.bind, self.port = bind, port
        self.token = token or secrets.token_urlsafe(24)
        self.every = every
        self.log = log
        self._cond = threading.Condition()
        self._status: dict[str, Any] | None = None
        self._body = b""           # the status as JSON, encoded once for every reader
        self._seq = 0              # bumps with every new status
        self._at = 0.0             # when the coordinator built it (monotonic)
        self._wanted = False       # a request waits for a fresh status
        self._watchers = 0         # open event streams
        self._stopping = False
        self._svgs: dict[tuple[str, str, int], bytes] = {}
        self._server: ThreadingHTTPServer | None = None
        self.state_file: Path | None = None   # where its address was recorded (removed at stop: nothing stale)

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> str:
        try:
            server = ThreadingHTTPServer((self.bind.strip("[]"), self.port), _handler(self))
        except OSError as exc:
            raise ConsoleError(f"the console cannot listen on {self.bind}:{self.port}: {exc.strerror or exc} "
                               "(pick another with --console-port, or --no-console)") from None
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25}, name="console",
                         daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind and not self.bind.startswith("[") else self.bind
        return f"http://{host}:{self.port}/?token={self.token}"

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    # -- the coordinator's side -----------------------------------------------------------------------------
    def feed(self, status: Callable[[], dict[str, Any]]) -> None:
        """Called on the coordinator's loop: build the status if someone watches and the last one is older than
        `every` seconds, or at once if a request waits for one."""
        now = time.monotonic()
        with self._cond:
            due = self._wanted or (self._watchers > 0 and now - self._at >= self.every)
        if not due:
            return
        snapshot = status()
        snapshot["console_time"] = time.time()
        body = json.dumps(snapshot, default=str).encode()
        with self._cond:
            self._status, self._body, self._at, self._wanted = snapshot, body, now, False
            self._seq += 1
            self._svgs.clear()
            self._cond.notify_all()

    # -- the HTTP threads' side ------------------------------------------------------------------------------
    def fresh(self, timeout: float = 5.0) -> tuple[int, dict[str, Any] | None, bytes]:
        """The latest status, asking the coordinator for a new one if it is older than `every`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._status is None or time.monotonic() - self._at >= self.every:
                seq = self._seq
                self._wanted = True
                while self._seq == seq and not self._stopping and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
            return self._seq, self._status, self._body

    def next_after(self, seq: int, timeout: float) -> tuple[int, bytes] | None:
        """Wait for a status newer than `seq` (None on time-out or stop)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq <= seq and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return None if self._stopping else (self._seq, self._body)

    def watching(self, delta: int) -> None:
        with self._cond:
            self._watchers += delta
            if delta > 0:
                self._wanted = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def svg(self, job: str, kind: str) -> bytes | None:
        """The job's DAG or placement drawn from the latest status (cached until the next one)."""
        seq, status, _ = self.fresh()
        key = (job, kind, seq)
        cached = self._svgs.get(key)
        if cached is not None:
            return cached
        info = (status or {}).get("jobs", {}).get(job)
        if info is None:
            return None
        text = dag_svg(job, info) if kind == "dag" else placement_svg(job, info)
        self._svgs[key] = data = text.encode()
        return data

    def allowed(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())


def _handler(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "microstream-console"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request would drown the coordinator's log

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            given = query.get("token", [None])[0]
            if url.path == "/" and given is not None:
                if not console.allowed(given):
                    return self._refuse()
                # the token once in the address, then a cookie: it does not stay in the address bar or history
                self.send_response(HTTPStatus.SEE_OTHER)
                self.send_header("Location", "/")
                self.send_header("Set-Cookie", f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not console.allowed(given or self._presented()):
                return self._refuse()
            if url.path == "/":
                return self._asset("index.html")
            if url.path.startswith("/static/"):
                return self._asset(url.path[len("/static/"):])
            if url.path == "/api/status":
                _, _, body = console.fresh()
                return self._send(HTTPStatus.OK, "application/json", body)
            if url.path == "/api/events":
                return self._events()
            parts = [unquote(p) for p in url.path.split("/")]
            if len(parts) == 5 and parts[1:3] == ["api", "jobs"] and parts[4] in ("dag.svg", "placement.svg"):
                svg = console.svg(parts[3], parts[4].removesuffix(".svg"))
                if svg is None:
                    return self._send(HTTPStatus.NOT_FOUND, "text/plain", f"no job {parts[3]}".encode())
                return self._send(HTTPStatus.OK, "image/svg+xml", svg)
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")

        def _presented(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                return auth[len("Bearer "):].strip()
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            return cookie[COOKIE].value if COOKIE in cookie else None

        def _refuse(self) -> None:
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8",
                       b"microstream console: this needs the console's token. On the coordinator's machine, "
                       b"`microstream console` prints the address with it.\n")

        def _asset(self, name: str) -> None:
            if name not in ASSETS:
                return self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            self._send(HTTPStatus.OK, ASSETS[name], body)

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            """Server-sent events: the status as each new one is built, until the client goes or we stop."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            console.watching(+1)
            try:
                seq, _, body = console.fresh()
                self._event(body)
                while not console.stopping:
                    got = console.next_after(seq, KEEPALIVE)
                    if got is None:
                        if console.stopping:
                            break
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                        continue
                    seq, body = got
                    self._event(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page was closed
            finally:
                console.watching(-1)

        def _event(self, body: bytes) -> None:
            self.wfile.write(b"event: status\ndata: " + body + b"\n\n")
            self.wfile.flush()

    return Handler
