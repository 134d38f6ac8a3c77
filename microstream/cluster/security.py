"""CURVE key management for the cluster runtime.

Every ZeroMQ socket that leaves the machine is encrypted and authenticated with CURVE:

* the coordinator has a keypair and accepts only client/agent keys it was told to trust
  (`KeyStore.trusted()`, enforced by an `Authenticator` on the coordinator's zmq.Context);
* agents and clients have keypairs and connect with `curve_client(...)`, which pins the
  coordinator's public key, so they talk only to the real coordinator.

Key files use the ZeroMQ certificate format written by `zmq.auth.create_certificates`:
`NAME.key` holds the public key only (safe to hand out), `NAME.key_secret` holds both keys and is
mode 0600. Files written by pyzmq/czmq load as they are.

Conventional layout (`KeyStore`)::

    $MICROSTREAM_HOME/keys  (or ~/.microstream/keys)
        NAME.key            our public key(s)
        NAME.key_secret     our keypair(s), mode 0600
        trusted/OTHER.key   public keys a coordinator accepts (clients and agents)

Important: a CURVE server socket on a context *without* a running ZAP handler accepts every
client that knows the server's public key. Start an `Authenticator` on the context before the
server socket accepts connections (`curve_server(..., authenticator=auth)` checks this).

The client side of a rejected handshake sees no reply. Clients should connect with a timeout and,
when it expires, report `no_answer_message(address)`; `HandshakeWatch` tells the two usual causes
apart (our key not trusted / wrong server key) from the socket's monitor events.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from microstream.core.errors import MicrostreamError

log = logging.getLogger("microstream.security")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
TRUSTED_DIR = "trusted"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_Z85_KEY_LEN = 40


# -- keys and key files ---------------------------------------------------------------------------------


class KeyFileError(MicrostreamError):
    """A key file is missing, unreadable or corrupt; the message names the file and the fix."""

    def __init__(self, path: Path | str, problem: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        text = f"key file {self.path}: {problem}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


def fingerprint(public_key: bytes | str) -> str:
    """Short, log-friendly id of a public key: first 8 hex chars of sha256 of its z85 text."""
    return hashlib.sha256(_as_key(public_key)).hexdigest()[:8]


@dataclass(frozen=True)
class KeyPair:
    """A named CURVE keypair; keys are z85 bytes as returned by `zmq.curve_keypair()`.

    `secret` is None for a public key loaded from a `NAME.key` file (e.g. a trusted peer).
    """

    name: str
    public: bytes
    secret: bytes | None

    @property
    def fingerprint(self) -> str:
        """First 8 hex chars of the sha256 of the public key, for log and error messages."""
        return fingerprint(self.public)

    def public_only(self) -> KeyPair:
        """The same key without its secret half."""
        return KeyPair(self.name, self.public, None)

    def __repr__(self) -> str:  # never print a secret key by accident
        secret = "<secret>" if self.secret else None
        return f"KeyPair(name={self.name!r}, fingerprint={self.fingerprint!r}, secret={secret})"


def generate(name: str) -> KeyPair:
    """A fresh CURVE keypair called `name`."""
    check_name(name)
    public, secret = zmq.curve_keypair()
    return KeyPair(name, public, secret)


def check_name(name: str) -> str:
    """Return `name` if it is a usable key name (letters, digits, `_ . @ -`), else raise ValueError."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"bad key name {name!r}: use letters, digits, '_', '.', '@' or '-' "
                         "(it becomes a file name), e.g. 'coordinator' or 'pi-07'")
    return name


def _as_key(key: bytes | str) -> bytes:
    return key.encode("ascii") if isinstance(key, str) else bytes(key)


def _valid_z85_key(key: bytes) -> bool:
    if len(key) != _Z85_KEY_LEN:
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # noqa: BLE001 - any decoding failure means "not a key"
        return False


def _name_from_path(path: Path) -> str:
    name = path.name
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _certificate_text(pair: KeyPair, with_secret: bool) -> str:
    """A ZeroMQ certificate, the format `zmq.auth.create_certificates` writes."""
    now = datetime.now().isoformat(timespec="seconds")
    if with_secret:
        banner = ("#   ****  Generated on {0} by microstream  ****\n"
                  "#   ZeroMQ CURVE **Secret** Certificate\n"
                  "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")
    else:
        banner = ("#   ****  Generated on {0} by microstream  ****\n"
                  "#   ZeroMQ CURVE Public Certificate\n"
                  "#   Give this file to the operator of the coordinator: microstream keys trust FILE\n\n")
    lines = [banner.format(now), "metadata\n", f"    name = \"{pair.name}\"\n", "curve\n",
             f"    public-key = \"{pair.public.decode('ascii')}\"\n"]
    if with_secret:
        assert pair.secret is not None
        lines.append(f"    secret-key = \"{pair.secret.decode('ascii')}\"\n")
    return "".join(lines)


def _write_file(path: Path, text: str, mode: int) -> None:
    """Write atomically; the file never exists with wider permissions than `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(pair: KeyPair, directory: Path | str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `NAME.key` (public, 0644) and `NAME.key_secret` (both keys, 0600) into `directory`."""
    if pair.secret is None:
        raise ValueError(f"key '{pair.name}' has no secret half; use save_public() for public keys")
    directory = Path(directory)
    public_path = directory / f"{pair.name}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{pair.name}{SECRET_SUFFIX}"
    if not overwrite:
        for p in (public_path, secret_path):
            if p.exists():
                raise KeyFileError(p, "already exists", "choose another name, or delete the old key files "
                                                        "(peers that trust the old key must then trust the new one)")
    _write_file(secret_path, _certificate_text(pair, with_secret=True), 0o600)
    _write_file(public_path, _certificate_text(pair, with_secret=False), 0o644)
    return public_path, secret_path


def save_public(pair: KeyPair, path: Path | str) -> Path:
    """Write only the public half of `pair` to `path` (a certificate without the secret key)."""
    path = Path(path)
    _write_file(path, _certificate_text(pair, with_secret=False), 0o644)
    return path


def _parse_certificate(data: bytes) -> tuple[bytes | None, bytes | None, dict[str, str]]:
    """(public, secret, metadata) from certificate text; tolerant like `zmq.auth.load_certificate`."""
    public = secret = None
    metadata: dict[str, str] = {}
    section = ""
    for raw in data.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if b"=" not in line:
            section = line.decode("ascii", "replace")
            continue
        key, value = (part.strip(b" \t'\"") for part in line.split(b"=", 1))
        if key == b"public-key":
            public = value
        elif key == b"secret-key":
            secret = value
        elif section == "metadata":
            metadata[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return public, secret, metadata


def _create_fix(path: Path) -> str:
    name = _name_from_path(path)
    if path.name.endswith(SECRET_SUFFIX):
        return f"run `microstream keys create {name}` (or pass the right file)"
    return (f"ask the owner of '{name}' for a fresh copy of {name}{PUBLIC_SUFFIX}, "
            f"or run `microstream keys create {name}` if it is your own key")


def load(path: Path | str) -> KeyPair:
    """Load a key file: `NAME.key` gives a public-only KeyPair, `NAME.key_secret` a full one.

    Accepts files written by `save` and by `zmq.auth.create_certificates`. Raises KeyFileError,
    naming the file and the fix, if it is missing, unreadable or corrupt.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(path, "does not exist", _create_fix(path)) from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror or exc})",
                           "check the file's owner and permissions (the secret file should be 0600 "
                           "and owned by the user running microstream)") from None
    public, secret, metadata = _parse_certificate(data)
    if public is None or not _valid_z85_key(public):
        problem = "has no public-key line" if public is None else "holds a malformed public key"
        raise KeyFileError(path, f"is not a CURVE key file: {problem}", _create_fix(path))
    if secret is not None:
        _check_secret(path, public, secret)
    name = metadata.get("name") or _name_from_path(path)
    return KeyPair(name, public, secret)


def _check_secret(path: Path, public: bytes, secret: bytes) -> None:
    if not _valid_z85_key(secret):
        raise KeyFileError(path, "holds a malformed secret key (file corrupt?)", _create_fix(path))
    if zmq.curve_public(secret) != public:
        raise KeyFileError(path, "its secret key does not belong to its public key (file corrupt or edited)",
                           _create_fix(path))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("secret key file %s is readable by other users (mode %o); run: chmod 600 %s", path, mode, path)


def load_public_keys(source: Path | str | Iterable[Path | str]) -> dict[bytes, str]:
    """Public key -> name, from every `*.key` file in a directory, or from the given files."""
    if isinstance(source, str | Path):
        source = Path(source)
        if source.is_dir():
            files: Iterable[Path | str] = sorted(source.glob(f"*{PUBLIC_SUFFIX}"))
        else:
            files = [source]
    else:
        files = source
    keys: dict[bytes, str] = {}
    for f in files:
        pair = load(f)
        keys[pair.public] = pair.name
    return keys


# -- key store ----------------------------------------------------------------------------------------


def default_key_dir() -> Path:
    """`$MICROSTREAM_HOME/keys` if MICROSTREAM_HOME is set, else `~/.microstream/keys`."""
    home = os.environ.get("MICROSTREAM_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".microstream"
    return base / "keys"


class KeyStore:
    """Our keypairs and the public keys we trust, in the conventional directory layout."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_key_dir()

    @property
    def trusted_dir(self) -> Path:
        return self.root / TRUSTED_DIR

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def create(self, name: str, overwrite: bool = False) -> KeyPair:
        """Generate and save keypair `name`; refuses to replace an existing one unless `overwrite`."""
        pair = generate(name)
        self._ensure_root()
        save(pair, self.root, overwrite=overwrite)
        return pair

    def pair(self, name: str) -> KeyPair:
        """Our keypair `name` (with its secret), or KeyFileError saying how to create it."""
        path = self.root / f"{check_name(name)}{SECRET_SUFFIX}"
        if not path.exists():
            raise KeyFileError(path, "does not exist", f"run `microstream keys create {name}`"
                               + ("" if self.root == default_key_dir() else f" --dir {self.root}"))
        return load(path)

    def public(self, name: str) -> bytes:
        """Public key NAME: our own `NAME.key`, else the trusted `trusted/NAME.key` (e.g. the coordinator's)."""
        for path in (self.root / f"{check_name(name)}{PUBLIC_SUFFIX}", self.trusted_file(name)):
            if path.exists():
                return load(path).public
        dir_opt = "" if self.root == default_key_dir() else f" --dir {self.root}"
        raise KeyFileError(self.root / f"{name}{PUBLIC_SUFFIX}", f"does not exist (nor {self.trusted_file(name)})",
                           f"get {name}{PUBLIC_SUFFIX} from its owner and run `microstream keys trust "
                           f"{name}{PUBLIC_SUFFIX}{dir_opt}`")

    def pairs(self) -> list[KeyPair]:
        """All our keypairs (files `NAME.key_secret` in the root), sorted by name."""
        if not self.root.is_dir():
            return []
        return [load(p) for p in sorted(self.root.glob(f"*{SECRET_SUFFIX}"))]

    def trusted_file(self, name: str) -> Path:
        return self.trusted_dir / f"{check_name(name)}{PUBLIC_SUFFIX}"

    def trust(self, public_key_file: Path | str, name: str | None = None) -> KeyPair:
        """Copy the public half of a key file into `trusted/` (replacing a key of the same name)."""
        pair = load(public_key_file).public_only()
        if name is not None:
            pair = KeyPair(check_name(name), pair.public, None)
        self._ensure_root()
        self.trusted_dir.mkdir(exist_ok=True, mode=0o700)
        save_public(pair, self.trusted_file(pair.name))
        return pair

    def untrust(self, name: str) -> bool:
        """Remove a trusted key by name; True if there was one."""
        path = self.trusted_file(name)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def trusted(self) -> dict[bytes, str]:
        """Public key -> name of every key in `trusted/` (empty if there is none)."""
        if not self.trusted_dir.is_dir():
            return {}
        return load_public_keys(self.trusted_dir)


# -- socket helpers --------------------------------------------------------------------------------------


def curve_server(socket: zmq.Socket, pair: KeyPair, *, authenticator: Authenticator | None = None) -> None:
    """Make `socket` a CURVE server with `pair`. Call before bind().

    Without a running Authenticator on the socket's context, libzmq accepts ANY client that knows
    our public key; pass `authenticator` to have that checked here.
    """
    if pair.secret is None:
        raise ValueError(f"key '{pair.name}' has no secret half; a server needs NAME{SECRET_SUFFIX}")
    if authenticator is not None and not authenticator.is_running:
        raise RuntimeError("start the Authenticator before accepting CURVE connections: "
                           "without it every client would be accepted")
    socket.curve_secretkey = pair.secret
    socket.curve_publickey = pair.public
    socket.curve_server = True


def curve_client(socket: zmq.Socket, pair: KeyPair, server_public: bytes | str | KeyPair) -> None:
    """Make `socket` a CURVE client with `pair` that only talks to `server_public`. Call before connect()."""
    if pair.secret is None:
        raise ValueError(f"key '{pair.name}' has no secret half; a client needs NAME{SECRET_SUFFIX}")
    server_key = server_public.public if isinstance(server_public, KeyPair) else _as_key(server_public)
    if not _valid_z85_key(server_key):
        raise ValueError("server public key is not a 40-character z85 CURVE key")
    socket.curve_secretkey = pair.secret
    socket.curve_publickey = pair.public
    socket.curve_serverkey = server_key


def insecure_warning(component: str) -> str:
    """What to print when `component` runs with `--insecure` (no CURVE)."""
    return (f"WARNING: plaintext ZeroMQ: {component} runs with --insecure: anyone who can reach this port can "
            "submit code that runs on your machines, and read or forge the data in flight. Use this only on an "
            "isolated, trusted network; otherwise drop --insecure and set up keys with `microstream keys create`.")


def no_answer_message(address: str, pair: KeyPair | None = None) -> str:
    """What a client reports when its connect timeout expires (it cannot see why the handshake failed)."""
    ours = f" (our key '{pair.name}', fingerprint {pair.fingerprint})" if pair else ""
    return (f"no answer from coordinator at {address}: wrong server key or our key is not trusted{ours} "
            "(ask the operator to run `microstream keys trust`), or nothing is listening there")


# -- diagnosing failed handshakes on the client side --------------------------------------------------------

HANDSHAKE_OK = "ok"
HANDSHAKE_NOT_TRUSTED = "not-trusted"
HANDSHAKE_SERVER_KEY = "server-key"
HANDSHAKE_NO_ANSWER = "no-answer"

_WATCHED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class HandshakeWatch:
    """Watch a client socket's monitor to tell why a CURVE connection does not come up.

    Create it before `connect()`. `wait(timeout)` returns HANDSHAKE_OK, HANDSHAKE_NOT_TRUSTED (the
    server's authenticator rejected our key), HANDSHAKE_SERVER_KEY (the server could not complete
    the handshake: wrong server key, or the server runs --insecure) or HANDSHAKE_NO_ANSWER.
    """

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self._monitor: zmq.Socket | None = socket.get_monitor_socket(_WATCHED)

    def wait(self, timeout: float) -> str:
        from zmq.utils.monitor import recv_monitor_message

        deadline = time.monotonic() + timeout
        while self._monitor is not None and (left := deadline - time.monotonic()) > 0:
            if not self._monitor.poll(int(left * 1000) + 1):
                break
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return HANDSHAKE_OK
            return HANDSHAKE_NOT_TRUSTED if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else HANDSHAKE_SERVER_KEY
        return HANDSHAKE_NO_ANSWER

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def __enter__(self) -> HandshakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_handshake(result: str, address: str, pair: KeyPair | None = None) -> str | None:
    """A message for a HandshakeWatch result (None for HANDSHAKE_OK)."""
    ours = f"'{pair.name}' (fingerprint {pair.fingerprint})" if pair else "our key"
    if result == HANDSHAKE_OK:
        return None
    if result == HANDSHAKE_NOT_TRUSTED:
        return (f"coordinator at {address} rejected {ours}: it is not trusted there "
                f"(ask the operator to run `microstream keys trust {pair.name if pair else 'NAME'}.key`)")
    if result == HANDSHAKE_SERVER_KEY:
        return (f"handshake with {address} failed: wrong server public key, or the server runs --insecure "
                "(check the coordinator key you were given)")
    return no_answer_message(address, pair)


# -- server-side authentication ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """One refused CURVE handshake."""

    public_key: bytes
    fingerprint: str
    address: str
    time: float

    def message(self) -> str:
        where = f" at {self.address}" if self.address else ""
        return (f"rejected connection from untrusted key {self.fingerprint}{where}; "
                "if it should be allowed, run `microstream keys trust ITS_KEY_FILE` and restart/reload")


class _ZapHandler(ThreadAuthenticator):
    """pyzmq's ZAP thread, telling its owner the peer address and naming users by key name."""

    def __init__(self, context: zmq.Context, owner: Authenticator) -> None:
        super().__init__(context, log=logging.getLogger("microstream.security.zap"))
        self._owner = owner

    def handle_zap_message(self, msg: list[bytes]) -> Any:  # sync or async depending on pyzmq version
        self._owner._peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        return super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        return self._owner.name_of(key) or key.decode("ascii")


class Authenticator:
    """ZAP handler for one zmq.Context: accept CURVE clients whose public key is trusted.

    It starts at once (unless `autostart=False`): an Authenticator that exists but is not running would
    let every client in. The trusted set can change while running (`allow`, `revoke`, `replace`); changes apply to new
    handshakes, established connections stay up. Refused handshakes are counted, the last one is kept
    (`last_rejection`) and reported through `log` (a print-like callable; default: a warning on the
    `microstream.security` logger) the first time per key, then at most every `log_interval` seconds
    per key, since clients retry. Accepted messages carry the key's
    name as the frame property "User-Id" (`frame.get("User-Id")` on a `copy=False` receive).
    """

    def __init__(self, context: zmq.Context, trusted: Mapping[bytes, str] | Iterable[bytes] | None = None,
                 *, log: Callable[[str], None] | None = None, log_interval: float = 60.0,
                 autostart: bool = True) -> None:
        self.context = context
        self.log_interval = log_interval
        self._log = log
        self._lock = threading.Lock()
        self._trusted: dict[bytes, str] = {}
        self.replace(trusted or {})
        self._zap: _ZapHandler | None = None
        self._peer_address = ""
        self._rejected_count = 0
        self._last_rejection: Rejection | None = None
        self._last_logged: dict[bytes, tuple[float, int]] = {}
        if autostart:
            self.start()

    # lifecycle
    def start(self) -> Authenticator:
        """Install the ZAP handler on the context (idempotent); only one per context is possible."""
        if self._zap is None:
            zap = _ZapHandler(self.context, self)
            zap.start()
            zap.configure_curve_callback(domain="*", credentials_provider=self)
            self._zap = zap
        return self

    def stop(self) -> None:
        if self._zap is not None:
            self._zap.stop()
            self._zap = None

    @property
    def is_running(self) -> bool:
        return self._zap is not None and self._zap.is_alive()

    def __enter__(self) -> Authenticator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # trusted set
    def allow(self, key: bytes | str | KeyPair, name: str | None = None) -> None:
        """Trust a public key (z85) from now on."""
        if isinstance(key, KeyPair):
            name = name or key.name
            key = key.public
        public = _as_key(key)
        if not _valid_z85_key(public):
            raise ValueError("not a 40-character z85 CURVE public key")
        with self._lock:
            self._trusted[public] = name or fingerprint(public)

    def revoke(self, key: bytes | str | KeyPair) -> bool:
        """Stop trusting a key for new connections; True if it was trusted."""
        key = key.public if isinstance(key, KeyPair) else _as_key(key)
        with self._lock:
            return self._trusted.pop(key, None) is not None

    def replace(self, trusted: Mapping[bytes, str] | Iterable[bytes]) -> None:
        """Replace the whole trusted set, e.g. with `KeyStore.trusted()` after a reload."""
        items = trusted.items() if isinstance(trusted, Mapping) else ((k, None) for k in trusted)
        new = {_as_key(k): (n or fingerprint(k)) for k, n in items}
        with self._lock:
            self._trusted = new

    @property
    def trusted(self) -> dict[bytes, str]:
        """A copy of the trusted set: public key -> name."""
        with self._lock:
            return dict(self._trusted)

    def name_of(self, key: bytes | str) -> str | None:
        with self._lock:
            return self._trusted.get(_as_key(key))

    # rejections
    @property
    def rejected_count(self) -> int:
        with self._lock:
            return self._rejected_count

    @property
    def last_rejection(self) -> Rejection | None:
        with self._lock:
            return self._last_rejection

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq credentials-provider hook, called in the ZAP thread for each CURVE handshake."""
        key = _as_key(key)
        with self._lock:
            if key in self._trusted:
                return True
            rejection = Rejection(key, fingerprint(key), self._peer_address, time.time())
            self._rejected_count += 1
            self._last_rejection = rejection
            should_log, attempts = self._should_log(key, rejection.time)
        if should_log:
            text = rejection.message() + (f" ({attempts} attempts so far)" if attempts > 1 else "")
            if self._log is not None:
                self._log(text)
            else:
                log.warning("%s", text)
        return False

    def _should_log(self, key: bytes, now: float) -> tuple[bool, int]:
        if len(self._last_logged) > 10_000:  # a flood of random keys must not grow memory without bound
            self._last_logged.clear()
        last, attempts = self._last_logged.get(key, (float("-inf"), 0))
        attempts += 1
        due = now - last >= self.log_interval
        self._last_logged[key] = (now if due else last, attempts)
        return due, attempts


# -- CLI: microstream keys ... ----------------------------------------------------------------------------------


def _keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microstream keys",
        description="Manage CURVE keys. Every machine/user has a keypair; the coordinator accepts only trusted "
                    f"public keys. Default directory: {default_key_dir()} (set MICROSTREAM_HOME to move it).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = sub.add_parser("create", help="create a keypair NAME.key (public) + NAME.key_secret (0600)")
    create.add_argument("name", metavar="NAME")
    trust = sub.add_parser("trust", help="trust public key files (on the coordinator: clients and agents)")
    trust.add_argument("files", metavar="FILE", nargs="+", type=Path)
    sub.add_parser("list", help="list our keypairs and the trusted public keys")
    for p in (create, trust, sub.choices["list"]):
        p.add_argument("--dir", type=Path, default=None, help=f"key directory (default: {default_key_dir()})")
    return parser


def keys_main(argv: list[str] | None = None) -> int:
    """`microstream keys create|trust|list`; returns 0 on success, 2 on error (messages on stderr)."""
    try:
        args = _keys_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or usage error (2)
        return int(exc.code or 0)
    store = KeyStore(args.dir)
    try:
        return {"create": _cmd_create, "trust": _cmd_trust, "list": _cmd_list}[args.command](store, args)
    except (KeyFileError, ValueError, OSError) as exc:
        print(f"microstream keys: {exc}", file=sys.stderr)
        return 2


def _cmd_create(store: KeyStore, args: argparse.Namespace) -> int:
    pair = store.create(args.name)
    public = store.root / f"{pair.name}{PUBLIC_SUFFIX}"
    print(f"created key '{pair.name}' (fingerprint {pair.fingerprint})\n"
          f"  public: {public}\n  secret: {store.root / (pair.name + SECRET_SUFFIX)} (keep it private)\n"
          f"  on the coordinator machine, trust it with: microstream keys trust {public.name}", file=sys.stderr)
    return 0


def _cmd_trust(store: KeyStore, args: argparse.Namespace) -> int:
    status = 0
    for f in args.files:
        try:
            new = load(f)
            old_path = store.trusted_file(new.name)
            old = load(old_path) if old_path.exists() else None
            store.trust(f)
        except (KeyFileError, ValueError, OSError) as exc:
            print(f"microstream keys: {exc}", file=sys.stderr)
            status = 2
            continue
        note = ""
        if old is not None and old.public != new.public:
            note = f" (replaces the previous '{new.name}' key {old.fingerprint})"
        print(f"trusted '{new.name}' (fingerprint {new.fingerprint}){note}", file=sys.stderr)
    return status


def _cmd_list(store: KeyStore, args: argparse.Namespace) -> int:
    print(f"keys in {store.root}")
    pairs = store.pairs()
    print("  own keypairs:" if pairs else "  own keypairs: none (create one: microstream keys create NAME)")
    for pair in pairs:
        print(f"    {pair.name:<24} {pair.fingerprint}")
    trusted = sorted(store.trusted().items(), key=lambda kv: kv[1])
    print("  trusted public keys:" if trusted else "  trusted public keys: none")
    for key, name in trusted:
        print(f"    {name:<24} {fingerprint(key)}")
    return 0
