"""The console's HTTP API on a real coordinator (in this process, its loop in a thread, feeding the console):
the token is required and checked, it listens on loopback unless told, the status is the coordinator's, the
event stream pushes new ones, and the address file lives exactly as long as the console."""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstream.cluster.coordinator import Coordinator
from microstream.console import Console, ConsoleError, add_options, is_loopback, print_url, start_for


@pytest.fixture
def running() -> Iterator[tuple[Coordinator, Console]]:
    coord = Coordinator("tcp://127.0.0.1:0", metrics_port=None, policy=None, log=lambda _: None)
    coord.open()
    console = Console(every=0.2)
    console.start()
    coord.console = console
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    yield coord, console
    coord.stop()
    loop.join(10)
    assert not loop.is_alive()


def get(console: Console, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_without_the_token_everything_is_refused(running):
    _, console = running
    for path in ("/", "/api/status", "/api/events", "/static/console.js", "/api/jobs/x/dag.svg"):
        code, _, body = get(console, path)
        assert code == 401, path
        assert b"microstream console" in body  # says how to get in
    assert get(console, "/api/status", {"Authorization": "Bearer " + "x" * len(console.token)})[0] == 401
    assert get(console, "/?token=wrong")[0] == 401
    assert get(console, "/api/status", {"Cookie": "microstream_console=wrong"})[0] == 401


def test_the_token_opens_the_page_and_the_status_is_the_coordinators(running):
    coord, console = running
    code, headers, _ = get(console, f"/?token={console.token}")
    assert code == 303 and headers["location"] == "/"      # the token leaves the address bar for a cookie
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    code, headers, page = get(console, "/", {"Cookie": cookie})
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert b'src="/static/console.js"' in page and b"http" not in page.split(b"<body>")[1]  # no CDN
    for asset in ("console.js", "console.css"):
        assert get(console, f"/static/{asset}", {"Cookie": cookie})[0] == 200
    assert get(console, "/static/../server.py", {"Cookie": cookie})[0] == 404
    code, headers, body = get(console, "/api/status", {"Authorization": f"Bearer {console.token}"})
    assert code == 200 and headers["content-type"] == "application/json"
    status = json.loads(body)
    assert set(coord.status()) <= set(status)          # the same structure as `microstream status --json`
    assert status["agents"] == {} and status["jobs"] == {}
    assert get(console, "/api/jobs/nope/dag.svg", {"Cookie": cookie})[0] == 404


def test_the_event_stream_pushes_each_new_status(running):
    _, console = running
    with socket.create_connection(("127.0.0.1", console.port), timeout=10) as sock:
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {console.token}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + 20
        while data.count(b"event: status") < 2 and time.monotonic() < deadline:
            data += sock.recv(65536)
    head, _, stream = data.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0] and b"text/event-stream" in head
    events = [json.loads(chunk.split(b"data: ", 1)[1]) for chunk in stream.split(b"\n\n") if b"data: " in chunk]
    assert len(events) >= 2
    assert events[1]["console_time"] > events[0]["console_time"]  # built again by the coordinator's loop
    assert "agents" in events[0]


def test_loopback_by_default_and_elsewhere_only_when_asked():
    console = Console()
    assert console.bind == "127.0.0.1"
    with pytest.raises(ConsoleError, match="--console-bind"):
        Console("0.0.0.0")
    assert Console("0.0.0.0", allow_remote=True).bind == "0.0.0.0"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    parser = argparse.ArgumentParser()
    add_options(parser)
    assert parser.parse_args([]).console_bind == "127.0.0.1"   # what `microstream coordinator` does by default


def test_the_address_file_lives_as_long_as_the_console(tmp_path: Path, capsys):
    coord = Coordinator("tcp://127.0.0.1:0", metrics_port=None, policy=None, log=lambda _: None)
    parser = argparse.ArgumentParser()
    add_options(parser)
    console = start_for(coord, tmp_path, parser.parse_args([]))
    assert console is not None and coord.console is console
    path = tmp_path / "console.json"
    assert path.stat().st_mode & 0o077 == 0              # the token is for the home's owner only
    assert print_url(tmp_path) == 0
    url = capsys.readouterr().out.strip()
    assert url == console.url and console.token in url
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert refused.value.code == 401
    coord.close()                                        # the coordinator stops its console
    assert not path.exists()
    assert print_url(tmp_path) == 1
    assert "no web console recorded" in capsys.readouterr().err
    assert start_for(coord, tmp_path, parser.parse_args(["--no-console"])) is None
