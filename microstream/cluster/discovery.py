"""Find the coordinator on the LAN by UDP multicast beacon (as Glasgow Micro Stream found its streams).

The coordinator runs a `Beacon` that multicasts a small JSON datagram every `interval` seconds::

    {"service": "microstream", "v": 1, "cluster": "default",
     "endpoint": "tcp://0.0.0.0:7070", "public_key": "<z85 CURVE key or null>"}

Agents and clients call `discover()`, which returns the first beacon of their cluster. An endpoint
bound to `0.0.0.0` / `*` is rewritten to the address the datagram came from.

Security: a beacon only *advertises*; anyone on the LAN can send one. Discovery never decides
whom to trust. Pass `trust_key` (the coordinator public key you were given) so beacons carrying
another key are ignored; the CURVE handshake then pins that key (`security.curve_client`). Without
`trust_key`, using the advertised key is trust-on-first-use and only fits trusted networks.

Interfaces: `interface=None` lets the kernel choose (route to 224.0.0.0/4, else the default
route). On a machine with several networks pass the address of the one to use, e.g.
`interface="192.168.1.20"`; tests use `interface="127.0.0.1"`, which works without any route.
`multicast_problem()` checks that multicast works and says what to fix if not.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from microstream.core.errors import MicrostreamError

log = logging.getLogger("microstream.discovery")

SERVICE = "microstream"
VERSION = 1
DEFAULT_GROUP = "239.192.77.17"
DEFAULT_PORT = 47017
DEFAULT_CLUSTER = "default"
MAX_DATAGRAM = 2048
_WILDCARD_HOSTS = {"0.0.0.0", "*", "", "::", "[::]"}
_ENDPOINT_RE = re.compile(r"^(?P<scheme>[a-z]+)://(?P<host>.*):(?P<port>\d+)$")


class DiscoveryError(MicrostreamError):
    """Multicast cannot be used on this machine/interface; the message says what to fix."""


@dataclass(frozen=True)
class Discovered:
    """A coordinator found by its beacon."""

    endpoint: str
    public_key: bytes | None
    source_address: str


# -- datagrams --------------------------------------------------------------------------------------------


def beacon_payload(endpoint: str, public_key: bytes | str | None, cluster: str = DEFAULT_CLUSTER) -> bytes:
    """The JSON datagram a Beacon sends."""
    key = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
    body = {"service": SERVICE, "v": VERSION, "cluster": cluster, "endpoint": endpoint, "public_key": key}
    return json.dumps(body, separators=(",", ":")).encode()


def _as_key(key: bytes | str | None) -> bytes | None:
    return key.encode("ascii") if isinstance(key, str) else key


def resolve_endpoint(endpoint: str, source_address: str) -> str:
    """Replace a wildcard host (`0.0.0.0`, `*`) in `endpoint` with the beacon's source address."""
    m = _ENDPOINT_RE.match(endpoint)
    if m is None or m["host"] not in _WILDCARD_HOSTS:
        return endpoint
    return f"{m['scheme']}://{source_address}:{m['port']}"


def parse_beacon(data: bytes, source_address: str, cluster: str = DEFAULT_CLUSTER,
                 trust_key: bytes | str | None = None) -> Discovered | None:
    """The Discovered coordinator a datagram announces, or None if it is malformed, from another
    cluster/service/version, or (with `trust_key`) carries a different public key."""
    try:
        body: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("service") != SERVICE or body.get("v") != VERSION:
        return None
    endpoint, key = body.get("endpoint"), body.get("public_key")
    if body.get("cluster") != cluster or not isinstance(endpoint, str) or not _ENDPOINT_RE.match(endpoint):
        return None
    if key is not None and (not isinstance(key, str) or len(key) != 40):
        return None
    public_key = _as_key(key)
    if trust_key is not None and public_key != _as_key(trust_key):
        return None
    return Discovered(resolve_endpoint(endpoint, source_address), public_key, source_address)


# -- sockets ---------------------------------------------------------------------------------------------


def _sender(interface: str | None, ttl: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # agents on this machine hear it too
    if interface:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    return sock


def _receiver(group: str, port: int, interface: str | None) -> socket.socket:
    """A UDP socket bound to `port` that has joined `group` on `interface` (None: kernel's choice)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((group, port))  # Linux: receive only this group's datagrams
        except OSError:
            sock.bind(("", port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface or "0.0.0.0"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as exc:
        sock.close()
        raise DiscoveryError(_join_problem(group, port, interface, exc)) from exc
    return sock


def _join_problem(group: str, port: int, interface: str | None, exc: OSError) -> str:
    where = f"interface {interface}" if interface else "the default interface"
    return (f"cannot listen for coordinator beacons on {group}:{port} via {where}: {exc.strerror or exc}\n"
            "  fix: choose the network by its local address (interface=ADDR, e.g. 192.168.1.20), or add a multicast "
            "route, e.g. `ip route add 224.0.0.0/4 dev eth0`; or skip discovery and pass the coordinator "
            "address explicitly")


# -- beacon ----------------------------------------------------------------------------------------------


class Beacon:
    """A thread multicasting the coordinator's endpoint and public key every `interval` seconds."""

    def __init__(self, coordinator_endpoint: str, public_key: bytes | str | None, group: str = DEFAULT_GROUP,
                 port: int = DEFAULT_PORT, interval: float = 1.0, ttl: int = 1, cluster: str = DEFAULT_CLUSTER,
                 interface: str | None = None) -> None:
        if not _ENDPOINT_RE.match(coordinator_endpoint):
            raise ValueError(f"bad endpoint {coordinator_endpoint!r}: expected e.g. 'tcp://0.0.0.0:7070'")
        self.payload = beacon_payload(coordinator_endpoint, public_key, cluster)
        self.group, self.port, self.interval = group, port, interval
        self.ttl, self.interface = ttl, interface
        self.sent = 0
        self.last_error: OSError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> Beacon:
        if self._thread is None:
            self._sock = _sender(self.interface, self.ttl)
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="microstream-beacon", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Beacon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send_once(self) -> bool:
        """Send one beacon now; False (logged once per distinct error) if the network refused it."""
        sock = self._sock or _sender(self.interface, self.ttl)
        try:
            sock.sendto(self.payload, (self.group, self.port))
        except OSError as exc:
            if self.last_error is None or str(self.last_error) != str(exc):
                log.warning("cannot send discovery beacon to %s:%s: %s (will keep trying)", self.group, self.port, exc)
            self.last_error = exc
            return False
        finally:
            if sock is not self._sock:
                sock.close()
        self.last_error = None
        self.sent += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.send_once()
            self._stop.wait(self.interval)


# -- discovery -------------------------------------------------------------------------------------------


def discover(timeout: float = 5.0, cluster: str = DEFAULT_CLUSTER, group: str = DEFAULT_GROUP,
             port: int = DEFAULT_PORT, interface: str | None = None,
             trust_key: bytes | str | None = None) -> Discovered | None:
    """Wait up to `timeout` seconds for a coordinator beacon of `cluster`; None if none came.

    Malformed datagrams, other services/versions and other clusters are ignored. If `trust_key` (the
    coordinator's z85 public key) is given, beacons advertising any other key are ignored too: the
    beacon is unauthenticated, so this is what stops a rogue host from advertising itself.
    Raises DiscoveryError if this machine cannot join the multicast group at all.
    """
    deadline = time.monotonic() + timeout
    with _receiver(group, port, interface) as sock:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (source, _) = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                return None
            found = parse_beacon(data, source, cluster, trust_key)
            if found is not None:
                return found
            log.debug("ignored datagram from %s on %s:%s", source, group, port)
    return None


def multicast_problem(interface: str | None = None, group: str = DEFAULT_GROUP, timeout: float = 0.5) -> str | None:
    """None if a multicast datagram sent via `interface` comes back to this machine, else what is wrong."""
    try:
        receiver = _receiver(group, 0, interface)
    except DiscoveryError as exc:
        return str(exc)
    with receiver, _sender(interface, 1) as sender:
        probe = b"microstream-multicast-probe"
        try:
            sender.sendto(probe, (group, receiver.getsockname()[1]))
        except OSError as exc:
            return (f"cannot send multicast to {group} via {interface or 'the default interface'}: "
                    f"{exc.strerror or exc}\n  fix: pass interface=ADDR or add a route, e.g. "
                    "`ip route add 224.0.0.0/4 dev eth0` (or `dev lo` for a single machine)")
        receiver.settimeout(timeout)
        try:
            while receiver.recvfrom(MAX_DATAGRAM)[0] != probe:
                pass
        except TimeoutError:
            return (f"multicast datagrams to {group} via {interface or 'the default interface'} do not come back "
                    "(firewall dropping UDP, or multicast loopback disabled)")
    return None
