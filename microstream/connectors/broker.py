"""A real MQTT broker on this machine, for tests and demos: mosquitto on loopback, on a free port.

>>> from microstream.connectors.broker import Mosquitto
>>> with Mosquitto() as broker:
...     broker.url.startswith("mqtt://127.0.0.1:")
True

`ensure_mosquitto()` installs mosquitto with apt-get when it is missing (as root), like
`ensure_host_tools` does for QEMU. The broker listens on 127.0.0.1 only, keeps its sessions on disk
(persistence on, so a restart on the same port keeps persistent sessions and their queued messages)
and allows anonymous clients: it is for this machine, not for a network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..core.sysdeps import apt_install

_PACKAGE = "mosquitto"


def mosquitto_path() -> str | None:
    """The mosquitto binary (Debian puts it in /usr/sbin, which may not be on PATH), or None."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


def ensure_mosquitto(progress: Callable[[str], None] = print, install: bool = True) -> str:
    """Return the mosquitto binary, installing the package with apt-get first if it is missing (needs root).

    Raises RuntimeError when it is missing and cannot be installed."""
    found = mosquitto_path()
    if found:
        return found
    apt_install([_PACKAGE], "the MQTT broker the MQTT tests and the demo start", progress, install)
    found = mosquitto_path()
    if not found:
        raise RuntimeError("still no mosquitto binary after installing the mosquitto package")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto broker on 127.0.0.1 with a generated configuration in a temporary directory.

    `with Mosquitto() as broker:` starts it and waits until it accepts connections; `broker.url` is
    `mqtt://127.0.0.1:PORT`. `stop()` and `start()` restart it on the same port with the same
    persistence file (sessions and queued QoS 1 messages survive), e.g. to test reconnection.
    """

    def __init__(self, port: int | None = None, timeout: float = 10.0) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.timeout = timeout
        self.binary = ensure_mosquitto()
        self._dir = Path(tempfile.mkdtemp(prefix="microstream-mosquitto-"))
        self.log_path = self._dir / "mosquitto.log"
        self.config_path = self._dir / "mosquitto.conf"
        self.config_path.write_text("\n".join([
            f"listener {self.port} {self.host}",   # loopback only
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self._dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",          # a persistent session holds what arrives while it is away
            "max_inflight_messages 1000",           # unacknowledged QoS 1 deliveries per client
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true", "",
        ]))
        if os.geteuid() == 0:  # mosquitto drops root for its own user, which must be able to write here
            try:
                shutil.chown(self._dir, "mosquitto", "mosquitto")
            except (LookupError, OSError):
                with open(self.config_path, "a") as f:
                    f.write("user root\n")
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Mosquitto:
        if self.running:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with code {self._proc.returncode}:\n{self.log()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.url} within {self.timeout:g} s:\n"
                           f"{self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop the broker (it saves its sessions first); `start()` brings it back on the same port."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Mosquitto {self.url} {'running' if self.running else 'stopped'}>"
