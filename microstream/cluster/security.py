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
        trusted/OTHER.role  what that key may do: agent, client or read-only (see ROLES); a trusted key
                            without a role file may do everything, as before roles existed

Roles (least privilege): the ZAP handler tags every accepted connection with its key's name ("User-Id"),
role ("X-Role") and public key ("X-Key") as ZeroMQ message properties (`peer_of(frame)`), and the
coordinator checks the role on every control message before handling it (`RoleGuard`): an agent key
cannot submit code, a client key cannot register as an agent, a read-only key can only ask for status.

Important: a CURVE server socket on a context *without* a running ZAP handler accepts every
client that knows the server's public key. Start an `Authenticator` on the context before the
server socket accepts connections (`curve_server(..., authenticator=auth)` checks this).

The client side of a rejected handshake gets no reply to what it sends. `HandshakeWatch` tells the two
usual causes apart (our key not trusted / wrong server key) from the socket's monitor events: `Client` says
that the coordinator refused its key as soon as it sees it (`seen()`), the agent when it cannot register
(`wait()`). Otherwise, when a request's deadline expires, clients report `no_answer_message(address)`.
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
ROLE_SUFFIX = ".role"
MAX_MESSAGE_BYTES = 256 << 20  # a control socket's largest message (a pickled job, a checkpoint): refused beyond
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


# -- roles ------------------------------------------------------------------------------------------------

AGENT = "agent"
CLIENT = "client"
READ_ONLY = "read-only"
UNRESTRICTED = "unrestricted"   # a trusted key without a role file: everything, as before roles existed
REVOKED = "revoked"             # a key revoked while its connection is open: refused everything from then on
ROLES = (AGENT, CLIENT, READ_ONLY)

# what each role may send to the coordinator, by message kind (cluster/messages.py); a kind in no list is
# refused to every role but UNRESTRICTED (a test checks that every kind the coordinator knows is in one)
PERMISSIONS: dict[str, frozenset[str]] = {
    AGENT: frozenset({"register", "heartbeat", "vnode_ready", "vnode_done", "vnode_snapshot", "vnode_resumed",
                      "vnode_failed", "vnode_checkpointed", "vnode_output", "vnode_precopied", "replica_part",
                      "replica_stored"}),
    CLIENT: frozenset({"submit", "status", "watch", "stop", "migrate", "save", "restore", "shutdown", "drain",
                       "logs"}),
    READ_ONLY: frozenset({"status"}),
}
_ROLE_DOES = {AGENT: "agents register, send heartbeats and report their hosts",
              CLIENT: "clients submit, watch, stop, move, save and restore jobs, ask for status and shut down",
              READ_ONLY: "read-only keys only ask for status",
              REVOKED: "its key was revoked on the coordinator; `microstream keys trust` it again to let it back"}


def check_role(role: str) -> str:
    """Return `role` if it is one of ROLES, else raise ValueError naming them."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def allowed(role: str, kind: str) -> bool:
    """May a connection with `role` send a message of `kind` to the coordinator?"""
    return role == UNRESTRICTED or kind in PERMISSIONS.get(role, ())


ROLE_PROPERTY = "X-Role"   # message properties the ZAP handler sets on every accepted connection
KEY_PROPERTY = "X-Key"


@dataclass(frozen=True)
class Peer:
    """Who sent a message, as this process's ZAP handler authenticated it: key name, role and public key (z85)."""

    name: str
    role: str
    key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def peer_of(frame: zmq.Frame) -> Peer | None:
    """The authenticated peer of a message frame received with `copy=False`; None if it carries no tags (no
    ZAP handler of ours accepted the connection: plaintext, or a server without `Authenticator`).

    The ZAP handler's properties take precedence over any the peer declares itself (ZMTP metadata), and it
    sets all three on every connection it accepts, so a peer cannot choose its own role."""
    try:
        name, role, key = (frame.get(p) for p in ("User-Id", ROLE_PROPERTY, KEY_PROPERTY))
    except zmq.ZMQError:
        return None
    if not (name and role and key):
        return None
    return Peer(str(name), str(role), str(key))


class RoleGuard:
    """Checks every control message's kind against its sender's role; refusals are logged once per key."""

    def __init__(self, log: Callable[[str], None] | None = None, component: str = "coordinator") -> None:
        self._log = log
        self.component = component
        self.refused = 0
        self._logged: set[str] = set()   # keys (z85) refused before: bounded by the trusted set

    def refusal(self, peer: Peer | None, kind: str) -> str | None:
        """None if `peer` may send `kind`, else the error to answer with (and a log line, the first time)."""
        if peer is not None and allowed(peer.role, kind):
            return None
        self.refused += 1
        if peer is None:
            error = (f"refused '{kind}': the connection carries no authenticated key and role (it was not "
                     "accepted by this coordinator's authenticator)")
            who = ""
        else:
            need = [r for r in ROLES if kind in PERMISSIONS[r]]
            fix = (f"it needs a key with role {' or '.join(need)} (on the coordinator: `microstream keys trust "
                   f"KEYFILE --role {need[0]}`)") if need else "no role may send it"
            error = (f"key '{peer.name}' (fingerprint {peer.fingerprint}) has role {peer.role} and may not send "
                     f"'{kind}' ({_ROLE_DOES.get(peer.role, 'unknown role')}); {fix}")
            who = peer.key
        if who not in self._logged:
            self._logged.add(who)
            text = f"{self.component}: {error}; further refusals of this key are not logged"
            if self._log is not None:
                self._log(text)
            else:
                log.warning("%s", text)
        return error


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

    def role_file(self, name: str) -> Path:
        return self.trusted_dir / f"{check_name(name)}{ROLE_SUFFIX}"

    def trust(self, public_key_file: Path | str, name: str | None = None, role: str | None = None) -> KeyPair:
        """Copy the public half of a key file into `trusted/` (replacing a key of the same name), with `role`
        (one of ROLES) in `trusted/NAME.role`; without `role`, a role the name had already stays."""
        pair = load(public_key_file).public_only()
        if name is not None:
            pair = KeyPair(check_name(name), pair.public, None)
        if role is not None:
            check_role(role)
        self._ensure_root()
        self.trusted_dir.mkdir(exist_ok=True, mode=0o700)
        if role is not None:  # the role first: a running coordinator's reloader looks at the key files
            _write_file(self.role_file(pair.name), role + "\n", 0o644)
        save_public(pair, self.trusted_file(pair.name))
        return pair

    def trust_pair(self, pair: KeyPair, role: str | None = None) -> KeyPair:
        """Trust a public key given as a KeyPair (`trust` with the key itself rather than its file)."""
        pair = KeyPair(check_name(pair.name), pair.public, None)
        if role is not None:
            check_role(role)
        self._ensure_root()
        self.trusted_dir.mkdir(exist_ok=True, mode=0o700)
        if role is not None:  # the role first: the key's file is what makes the reloader look
            _write_file(self.role_file(pair.name), role + "\n", 0o644)
        save_public(pair, self.trusted_file(pair.name))
        return pair

    def untrust(self, name: str) -> bool:
        """Remove a trusted key (and its role) by name; True if there was one."""
        path = self.trusted_file(name)
        existed = path.exists()
        path.unlink(missing_ok=True)
        self.role_file(name).unlink(missing_ok=True)
        return existed

    def role(self, name: str) -> str:
        """The role of trusted key `name`: its role file's, or UNRESTRICTED without one."""
        path = self.role_file(name)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return UNRESTRICTED
        except OSError as exc:
            raise KeyFileError(path, f"cannot be read ({exc.strerror or exc})", "check its owner and permissions") \
                from None
        if text not in ROLES:
            raise KeyFileError(path, f"holds an unknown role {text[:40]!r}",
                               f"write one of {', '.join(ROLES)} into it, or run `microstream keys trust "
                               f"{name}{PUBLIC_SUFFIX} --role ROLE`")
        return text

    def roles(self) -> dict[bytes, str]:
        """Public key -> role of every trusted key (UNRESTRICTED for those without a role file): the role file
        beside each `trusted/NAME.key` file."""
        if not self.trusted_dir.is_dir():
            return {}
        return {load(path).public: self.role(_name_from_path(path))
                for path in sorted(self.trusted_dir.glob(f"*{PUBLIC_SUFFIX}"))}

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
        deadline = time.monotonic() + timeout
        while self._monitor is not None and (left := deadline - time.monotonic()) > 0:
            if not self._monitor.poll(int(left * 1000) + 1):
                break
            return _handshake_outcome(self._monitor)
        return HANDSHAKE_NO_ANSWER

    @property
    def monitor(self) -> zmq.Socket | None:
        """The monitor socket, to poll alongside the watched one: readable when a handshake has ended."""
        return self._monitor

    def seen(self) -> str | None:
        """Without waiting: how the last handshake that ended since the previous look ended (HANDSHAKE_OK,
        HANDSHAKE_NOT_TRUSTED or HANDSHAKE_SERVER_KEY), None if none did. libzmq (4.3) does not retry a connection
        the server's authenticator refused (a key trusted since needs a new socket), but retries one whose
        handshake failed otherwise (a wrong server key: seen again after every retry)."""
        outcome = None
        while self._monitor is not None and self._monitor.poll(0):
            outcome = _handshake_outcome(self._monitor)
        return outcome

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def __enter__(self) -> HandshakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handshake_outcome(monitor: zmq.Socket) -> str:
    """The next monitor event read as a handshake's outcome (HANDSHAKE_OK, _NOT_TRUSTED or _SERVER_KEY)."""
    from zmq.utils.monitor import recv_monitor_message

    event = recv_monitor_message(monitor)["event"]
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return HANDSHAKE_OK
    return HANDSHAKE_NOT_TRUSTED if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else HANDSHAKE_SERVER_KEY


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
                "if it should be allowed, run `microstream keys trust ITS_KEY_FILE --role ROLE` (applied live)")


class _ZapHandler(ThreadAuthenticator):
    """pyzmq's ZAP thread, telling its owner the peer address, naming users by key name and tagging every
    accepted connection with the key's role and public key (ZAP metadata, see `peer_of`)."""

    def __init__(self, context: zmq.Context, owner: Authenticator) -> None:
        super().__init__(context, log=logging.getLogger("microstream.security.zap"))
        self._owner = owner
        self._metadata = b""

    def handle_zap_message(self, msg: list[bytes]) -> Any:  # sync or async depending on pyzmq version
        self._owner._peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        self._metadata = b""
        return super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        name, role = self._owner.identify(key)
        self._metadata = _zap_metadata({ROLE_PROPERTY: role, KEY_PROPERTY: key.decode("ascii")})
        return name or key.decode("ascii")

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200" or not self._metadata:
            super()._send_zap_reply(request_id, status_code, status_text, user_id)
            return
        user = user_id.encode("utf-8", "replace") if isinstance(user_id, str) else user_id
        self.zap_socket.send_multipart([b"1.0", request_id, status_code, status_text, user, self._metadata])
        self._metadata = b""


def _zap_metadata(properties: Mapping[str, str]) -> bytes:
    """ZMTP metadata encoding (RFC 23/37): a name length byte, the name, a 4-byte value length, the value."""
    out = bytearray()
    for name, value in properties.items():
        raw = value.encode("utf-8")
        out += bytes([len(name)]) + name.encode("ascii") + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class Authenticator:
    """ZAP handler for one zmq.Context: accept CURVE clients whose public key is trusted.

    It starts at once (unless `autostart=False`): an Authenticator that exists but is not running would
    let every client in. The trusted set can change while running (`allow`, `revoke`, `replace`); changes apply to new
    handshakes, established connections stay up. Accepted messages carry the key's name as the frame property
    "User-Id", its role (`roles`, default UNRESTRICTED) as "X-Role" and the public key as "X-Key" (`peer_of(frame)`
    on a `copy=False` receive).

    Refused handshakes are counted and the last one is kept (`last_rejection`). They are reported through `log` (a
    print-like callable; default: a warning on the `microstream.security` logger) with a *global* limit, since
    clients retry and anyone can make up keys: at most `log_burst` keys are named per `log_interval` seconds (a key
    at most once), then one line says the rest are counted, and a summary line follows when the interval ends (or
    at `stop()`). A flood of handshakes with random keys costs a few lines a minute, and memory stays bounded.
    """

    def __init__(self, context: zmq.Context, trusted: Mapping[bytes, str] | Iterable[bytes] | None = None,
                 *, roles: Mapping[bytes, str] | None = None, log: Callable[[str], None] | None = None,
                 log_interval: float = 60.0, log_burst: int = 5, autostart: bool = True) -> None:
        self.context = context
        self.log_interval = log_interval
        self.log_burst = log_burst
        self._log = log
        self._lock = threading.Lock()
        self._trusted: dict[bytes, str] = {}
        self._roles: dict[bytes, str] = {}
        self.replace(trusted or {}, roles)
        self._zap: _ZapHandler | None = None
        self._peer_address = ""
        self._rejected_count = 0
        self._last_rejection: Rejection | None = None
        self._window: _LogWindow | None = None
        self._timer: threading.Timer | None = None
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
        self.flush_log()

    @property
    def is_running(self) -> bool:
        return self._zap is not None and self._zap.is_alive()

    def __enter__(self) -> Authenticator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # trusted set
    def allow(self, key: bytes | str | KeyPair, name: str | None = None, role: str | None = None) -> None:
        """Trust a public key (z85) from now on, with `role` (one of ROLES; default UNRESTRICTED)."""
        if isinstance(key, KeyPair):
            name = name or key.name
            key = key.public
        public = _as_key(key)
        if not _valid_z85_key(public):
            raise ValueError("not a 40-character z85 CURVE public key")
        if role is not None:
            check_role(role)
        with self._lock:
            self._trusted[public] = name or fingerprint(public)
            self._roles[public] = role or UNRESTRICTED

    def revoke(self, key: bytes | str | KeyPair) -> bool:
        """Stop trusting a key for new connections; True if it was trusted."""
        key = key.public if isinstance(key, KeyPair) else _as_key(key)
        with self._lock:
            self._roles.pop(key, None)
            return self._trusted.pop(key, None) is not None

    def replace(self, trusted: Mapping[bytes, str] | Iterable[bytes], roles: Mapping[bytes, str] | None = None
                ) -> None:
        """Replace the whole trusted set, e.g. with `KeyStore.trusted()` and `KeyStore.roles()` after a reload;
        keys missing from `roles` are UNRESTRICTED."""
        items = trusted.items() if isinstance(trusted, Mapping) else ((k, None) for k in trusted)
        new = {_as_key(k): (n or fingerprint(k)) for k, n in items}
        given = {_as_key(k): r for k, r in (roles or {}).items()}
        for role in given.values():
            if role != UNRESTRICTED:
                check_role(role)
        with self._lock:
            self._trusted = new
            self._roles = {k: given.get(k, UNRESTRICTED) for k in new}

    @property
    def trusted(self) -> dict[bytes, str]:
        """A copy of the trusted set: public key -> name."""
        with self._lock:
            return dict(self._trusted)

    def name_of(self, key: bytes | str) -> str | None:
        with self._lock:
            return self._trusted.get(_as_key(key))

    def role_of(self, key: bytes | str) -> str | None:
        """The role of a trusted key; None if it is not trusted."""
        with self._lock:
            return self._roles.get(_as_key(key))

    def current(self, peer: Peer) -> Peer:
        """`peer` with its key's role as it is now (a connection's tags are fixed at its handshake, trust changes
        apply to it all the same): REVOKED if the key is no longer trusted."""
        role = self.role_of(peer.key)
        role = REVOKED if role is None else role
        return peer if role == peer.role else Peer(peer.name, role, peer.key)

    def identify(self, key: bytes | str) -> tuple[str | None, str]:
        """(name, role) of a key, in one look-up (the ZAP thread tags a connection with both)."""
        key = _as_key(key)
        with self._lock:
            return self._trusted.get(key), self._roles.get(key, UNRESTRICTED)

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
        lines: list[str] = []
        with self._lock:
            if key in self._trusted:
                return True
            rejection = Rejection(key, fingerprint(key), self._peer_address, time.time())
            self._rejected_count += 1
            self._last_rejection = rejection
            now = time.monotonic()
            window = self._window
            if window is not None and now - window.start >= self.log_interval:
                lines += window.summary(now)
                window = None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if window is None:
                window = self._window = _LogWindow(now)
            lines += window.add(rejection, self.log_burst, self.log_interval)
            if window.suppressed == 1 and self._timer is None:  # the summary is due at the end of the interval
                self._timer = threading.Timer(max(0.0, window.start + self.log_interval - now), self.flush_log)
                self._timer.daemon = True
                self._timer.start()
        self._emit(lines)
        return False

    def flush_log(self) -> None:
        """Log the summary of the handshakes counted but not logged, and start a new interval (the timer calls
        it when the interval ends, `stop()` calls it too)."""
        with self._lock:
            window, self._window = self._window, None
            timer, self._timer = self._timer, None
            lines = window.summary(time.monotonic()) if window is not None else []
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        for text in lines:
            if self._log is not None:
                self._log(text)
            else:
                log.warning("%s", text)


class _LogWindow:
    """The rejected handshakes of one log interval: which keys were named, how many were only counted."""

    MAX_KEYS = 10_000  # distinct keys counted exactly; beyond, a flood of random keys is "at least" so many

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged: set[bytes] = set()
        self.suppressed = 0
        self.keys: set[bytes] = set()
        self.addresses: set[str] = set()
        self.last: Rejection | None = None

    def add(self, rejection: Rejection, burst: int, interval: float) -> list[str]:
        if rejection.public_key not in self.logged and len(self.logged) < burst:
            self.logged.add(rejection.public_key)
            return [rejection.message()]
        self.suppressed += 1
        self.last = rejection
        if len(self.keys) < self.MAX_KEYS:
            self.keys.add(rejection.public_key)
        if len(self.addresses) < 100:
            self.addresses.add(rejection.address)
        if self.suppressed == 1 and len(self.logged) >= burst:
            return [f"more handshakes from untrusted keys are being rejected: at most {burst} keys are named every "
                    f"{interval:g} s; the rest are counted and summarised"]
        return []

    def summary(self, now: float) -> list[str]:
        if not self.suppressed or self.last is None:
            return []
        keys = f"{len(self.keys):,}{'+' if len(self.keys) >= self.MAX_KEYS else ''}"
        where = ", ".join(sorted(a for a in self.addresses if a)[:5]) or "unknown addresses"
        return [f"rejected {self.suppressed:,} more handshakes from {keys} untrusted keys in the last "
                f"{now - self.start:.0f} s (from {where}{' and others' if len(self.addresses) > 5 else ''}; the "
                f"last: key {self.last.fingerprint}); if one should be allowed, run `microstream keys trust "
                "ITS_KEY_FILE --role ROLE` (a running coordinator applies it within a second)"]


# -- trust changes applied live ---------------------------------------------------------------------------------


class TrustReloader:
    """Keeps a running coordinator's `Authenticator` in step with its key store's `trusted/` directory: a key trusted
    (`microstream keys trust`, `keys bundle`) or revoked (`keys revoke`) there applies within `every` seconds, or at
    once after `request()` (what SIGHUP calls), with no restart. A trusted directory that cannot be read (a corrupt
    file) is logged and the previous trusted set stays."""

    def __init__(self, store: KeyStore, authenticator: Authenticator, log: Callable[[str], None] | None = None,
                 every: float = 1.0, component: str = "coordinator") -> None:
        self.store = store
        self.authenticator = authenticator
        self.every = every
        self.component = component
        self._log = log or (lambda text: log_warning(text))
        self._signature = self._current()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def _current(self) -> tuple:
        directory = self.store.trusted_dir
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir()))
        except OSError:
            return ()

    def start(self) -> TrustReloader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trust-reloader", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def request(self, why: str = "SIGHUP") -> None:
        """Reload as soon as possible (safe to call from a signal handler: it only sets an event)."""
        self._why = why
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            woken = self._wake.wait(self.every)
            if woken:  # cleared only when seen: a request() landing just after a timed-out wait is not lost
                self._wake.clear()
            if self._stopping.is_set():
                return
            signature = self._current()
            if woken or signature != self._signature:
                self._signature = signature
                self.reload(getattr(self, "_why", "SIGHUP") if woken else "the trusted keys changed")

    def reload(self, why: str = "asked") -> bool:
        """Read the trusted keys and their roles again and apply them; True if that worked."""
        try:
            trusted, roles = self.store.trusted(), self.store.roles()
        except (KeyFileError, OSError) as exc:
            self._log(f"{self.component}: the trusted keys were not reloaded ({why}), the previous ones stay: {exc}")
            return False
        before = self.authenticator.trusted
        before_roles = {k: self.authenticator.role_of(k) for k in before}
        self.authenticator.replace(trusted, roles)
        self.reloads += 1
        added = [f"{name} ({roles.get(k, UNRESTRICTED)})" for k, name in trusted.items() if k not in before]
        removed = [name for k, name in before.items() if k not in trusted]
        changed = [f"{name} ({before_roles[k]} -> {roles.get(k, UNRESTRICTED)})" for k, name in trusted.items()
                   if k in before and before_roles[k] != roles.get(k, UNRESTRICTED)]
        parts = ([f"trusted {', '.join(sorted(added))}"] if added else []) + \
                ([f"revoked {', '.join(sorted(removed))}"] if removed else []) + \
                ([f"role changed: {', '.join(sorted(changed))}"] if changed else [])
        self._log(f"{self.component}: trusted keys reloaded ({why}): {len(trusted)} keys"
                  + (f"; {'; '.join(parts)}" if parts else ", no change"))
        return True


def log_warning(text: str) -> None:
    log.warning("%s", text)


# -- key bundles: one file per machine ------------------------------------------------------------------------

BUNDLE_SUFFIX = ".bundle"


@dataclass(frozen=True)
class Bundle:
    """What one machine needs to join: its key pair, the coordinator's public key, its role and configuration."""

    node: str
    role: str
    pair: KeyPair
    coordinator_public: bytes
    config: dict[str, Any]


def write_bundle(store: KeyStore, node: str, path: Path | str, role: str = AGENT,
                 config: Mapping[str, Any] | None = None) -> Bundle:
    """Make a fresh key pair for `node`, trust its public key in `store` with `role` (a running coordinator on that
    store applies it live), and write the bundle file (mode 0600: it holds the secret key). The secret is kept
    nowhere else. `config` (an agent's configuration, see cluster/config.py) goes into the bundle."""
    from .config import check, to_toml

    check_role(role)
    try:
        coordinator = store.public("coordinator")
    except KeyFileError as exc:
        raise KeyFileError(exc.path, exc.problem, "on the coordinator machine, run `microstream keys create "
                           "coordinator` first (or pass --dir with the coordinator's key directory)") from None
    pair = generate(node)
    settings = dict(config or {})
    if role == AGENT:
        settings = {"name": node, **{k: v for k, v in settings.items() if k != "name"}}
        check(settings, AGENT, "the bundle's configuration")
    path = Path(path)
    made = datetime.now().isoformat(timespec="seconds")
    header = (f"# microstream key bundle for '{node}' (role {role}), made {made} by `microstream keys bundle`.\n"
              f"# It holds {node}'s SECRET key: copy it to {node} only, then delete this copy.\n"
              f"# On {node}: microstream keys unbundle {path.name}"
              + (f"   (or: microstream agent --bundle {path.name})\n" if role == AGENT else "\n"))
    body = (f"\n[bundle]\nformat = 1\nnode = \"{node}\"\nrole = \"{role}\"\n\n"
            f"[key]\npublic = \"{pair.public.decode()}\"\nsecret = \"{(pair.secret or b'').decode()}\"\n\n"
            f"[coordinator]\npublic = \"{coordinator.decode()}\"\n\n[config]\n{to_toml(settings)}")
    _write_file(path, header + body, 0o600)
    store.trust_pair(pair.public_only(), role=role)
    return Bundle(node, role, pair, coordinator, settings)


def read_bundle(path: Path | str) -> Bundle:
    """Read a bundle file; KeyFileError naming the file if it is not one, or is damaged."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        node, role = data["bundle"]["node"], data["bundle"]["role"]
        public, secret = data["key"]["public"].encode(), data["key"]["secret"].encode()
        coordinator = data["coordinator"]["public"].encode()
        config = dict(data.get("config", {}))
    except FileNotFoundError:
        raise KeyFileError(path, "does not exist", "make it on the coordinator machine with `microstream keys "
                           "bundle NODE` and copy it here") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror or exc})", "check its owner and permissions") \
            from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise KeyFileError(path, f"is not a microstream key bundle ({type(exc).__name__}: {exc})",
                           "make a new one with `microstream keys bundle NODE`") from None
    if not (_valid_z85_key(public) and _valid_z85_key(coordinator)):
        raise KeyFileError(path, "holds a malformed public key", "make a new one with `microstream keys bundle`")
    _check_secret(path, public, secret)
    return Bundle(check_name(node), check_role(role), KeyPair(node, public, secret), coordinator, config)


def unbundle(path: Path | str, keydir: Path | str | None = None, config_path: Path | str | None = None
             ) -> tuple[Bundle, KeyStore, Path | None]:
    """Install a bundle: the key pair and `coordinator.key` into `keydir` (default: the key directory); for an agent,
    its configuration (with the key paths) into `config_path` (default: `agent.toml` beside the key directory).
    Returns (bundle, store, the configuration file or None)."""
    from .config import check, to_toml

    bundle = read_bundle(path)
    store = KeyStore(keydir)
    store._ensure_root()
    own = store.root / f"coordinator{SECRET_SUFFIX}"
    if own.exists() and load(own).public != bundle.coordinator_public:
        raise KeyFileError(own, "belongs to another coordinator than the bundle's",
                           "unbundle into another directory (--dir)")
    save(bundle.pair, store.root, overwrite=True)
    if not own.exists():
        save_public(KeyPair("coordinator", bundle.coordinator_public, None), store.root / f"coordinator{PUBLIC_SUFFIX}")
    written = None
    if bundle.role == AGENT:
        settings = check(bundle.config, AGENT, path)
        settings.update(keys=str(store.root), key=bundle.node,
                        coordinator_key=str(store.root / f"coordinator{PUBLIC_SUFFIX}"))
        written = Path(config_path) if config_path else store.root.parent / "agent.toml"
        _write_file(written, f"# agent '{bundle.node}', from {Path(path).name} (`microstream keys unbundle`)\n"
                    + to_toml(settings), 0o644)
    return bundle, store, written


# -- CLI: microstream keys ... ----------------------------------------------------------------------------------


KEYS_EXAMPLES = {  # shown under each sub-verb's --help, as `microstream VERB --help` shows the verb's
    "create": ["microstream keys create laptop", "microstream keys create coordinator --dir /etc/microstream/keys"],
    "trust": ["microstream keys trust laptop.key --role client", "microstream keys trust pi07.key --role agent"],
    "revoke": ["microstream keys revoke laptop", "microstream keys list"],
    "bundle": ["microstream keys bundle pi07 --label site=library",
               "microstream keys bundle laptop --role client -o laptop.bundle"],
    "unbundle": ["microstream keys unbundle pi07.bundle", "microstream agent --config ~/.microstream/agent.toml"],
    "list": ["microstream keys list", "microstream keys list --dir /etc/microstream/keys"],
}


def _examples(lines: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _keys_parser() -> argparse.ArgumentParser:
    import textwrap

    parser = argparse.ArgumentParser(
        prog="microstream keys",
        description="Manage CURVE keys. Every machine/user has a keypair; the coordinator accepts only trusted "
                    f"public keys. Default directory: {default_key_dir()} (set MICROSTREAM_HOME to move it).",
        epilog=_examples(["microstream keys create laptop", "microstream keys bundle pi07",
                          "microstream keys list"]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.description = textwrap.fill(parser.description or "")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        """A sub-verb whose --help says what it does (its one-line help) and shows examples."""
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=textwrap.fill(text[:1].upper() + text[1:] + "."),
            epilog=_examples(KEYS_EXAMPLES[name]), formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    create = verb("create", "create a keypair NAME.key (public) + NAME.key_secret (0600)")
    create.add_argument("name", metavar="NAME", help="the key's name, e.g. pi1, laptop or coordinator")
    trust = verb("trust", "trust public key files (on the coordinator: clients and agents) with a role: what the key "
                          "may do")
    trust.add_argument("files", metavar="FILE", nargs="+", type=Path, help="public key files (NAME.key)")
    trust.add_argument("--role", choices=ROLES, default=None,
                       help="agent: register and report hosts; client: submit, stop, move, save, restore jobs and "
                            "status; read-only: status only (default: asked for on a terminal, else client)")
    revoke = verb("revoke", "stop trusting keys, by name (a running coordinator applies it live: their connections "
                            "are refused from then on)")
    revoke.add_argument("names", metavar="NAME", nargs="+", help="trusted keys' names (see `keys list`)")
    bundle = verb("bundle", "on the coordinator machine: one file for machine NODE with its new key pair, the "
                            "coordinator's public key and its configuration; NODE's key is trusted with --role at "
                            "once (live on a running coordinator)")
    bundle.add_argument("node", metavar="NODE", help="the machine's name: its agent's --name, or a client's key name")
    bundle.add_argument("--role", choices=ROLES, default=AGENT, help="what NODE may do (default %(default)s; "
                                                                     "client for an operator's laptop)")
    bundle.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                        help="the coordinator's address, for NODE's configuration (default: find it by beacon)")
    bundle.add_argument("--label", action="append", default=[], metavar="K=V", help="a label of NODE, e.g. "
                                                                                     "site=library")
    bundle.add_argument("--config", type=Path, metavar="FILE",
                        help="an agent configuration to start from (TOML, see docs/deploy.md): shared settings such "
                             "as metrics_bind, work_dir, memory_limit")
    bundle.add_argument("-o", "--output", type=Path, metavar="FILE", help="the bundle file (default NODE.bundle)")
    unbundle_p = verb("unbundle", "on the machine a bundle is for: install its keys (and, for an agent, its "
                                  "configuration file)")
    unbundle_p.add_argument("file", metavar="FILE", type=Path, help="the NODE.bundle file `keys bundle` wrote")
    unbundle_p.add_argument("--config", type=Path, metavar="FILE",
                            help="where an agent's configuration goes (default: agent.toml beside the key directory)")
    list_p = verb("list", "list our keypairs and the trusted public keys")
    for p in (create, trust, revoke, bundle, unbundle_p, list_p):
        p.add_argument("--dir", type=Path, default=None, metavar="DIR",
                       help=f"key directory (default: {default_key_dir()})")
    return parser


def keys_main(argv: list[str] | None = None) -> int:
    """`microstream keys create|trust|list|...`; returns 0 on success, 2 on error (messages on stderr). A closed
    stdout (`keys list | head -1`) raises BrokenPipeError, for the caller (`microstream`'s main ends quietly)."""
    parser = _keys_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # refused with the sub-verb's usage, which lists its options (argparse would show `keys`')
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help (0) or usage error (2)
        return int(exc.code or 0)
    store = KeyStore(args.dir)
    try:
        return {"create": _cmd_create, "trust": _cmd_trust, "list": _cmd_list, "revoke": _cmd_revoke,
                "bundle": _cmd_bundle, "unbundle": _cmd_unbundle}[args.command](store, args)
    except BrokenPipeError:
        raise
    except (KeyFileError, ValueError, OSError, MicrostreamError) as exc:
        print(f"microstream keys: {exc}", file=sys.stderr)
        return 2


def _cmd_create(store: KeyStore, args: argparse.Namespace) -> int:
    pair = store.create(args.name)
    public = store.root / f"{pair.name}{PUBLIC_SUFFIX}"
    print(f"created key '{pair.name}' (fingerprint {pair.fingerprint})\n"
          f"  public: {public}\n  secret: {store.root / (pair.name + SECRET_SUFFIX)} (keep it private)\n"
          + (f"  give {public.name} to the agents and clients (`microstream keys bundle NODE` does)"
             if pair.name == "coordinator" else
             f"  on the coordinator machine, trust it with: microstream keys trust {public.name}"), file=sys.stderr)
    return 0


def _ask_role(name: str) -> str:
    """The role for key `name`: asked for on a terminal (default client), else client."""
    if not sys.stdin.isatty():
        return CLIENT
    while True:
        try:
            answer = input(f"role of '{name}': agent, client or read-only? [client] ").strip() or CLIENT
        except EOFError:
            return CLIENT
        if answer in ROLES:
            return answer
        print(f"  one of {', '.join(ROLES)}", file=sys.stderr)


def _cmd_trust(store: KeyStore, args: argparse.Namespace) -> int:
    status = 0
    for f in args.files:
        try:
            new = load(f)
            old_path = store.trusted_file(new.name)
            old = load(old_path) if old_path.exists() else None
            role = args.role or _ask_role(new.name)
            store.trust(f, role=role)
        except (KeyFileError, ValueError, OSError) as exc:
            print(f"microstream keys: {exc}", file=sys.stderr)
            status = 2
            continue
        note = ""
        if old is not None and old.public != new.public:
            note = f" (replaces the previous '{new.name}' key {old.fingerprint})"
        hint = "" if args.role else f"; for another role: --role {'|'.join(r for r in ROLES if r != role)}"
        print(f"trusted '{new.name}' as {role} (fingerprint {new.fingerprint}){note}{hint}; a running coordinator "
              "using this key directory applies it within a second", file=sys.stderr)
    return status


def _cmd_revoke(store: KeyStore, args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        if store.untrust(name):
            print(f"revoked '{name}': a running coordinator on {store.root} refuses it within a second",
                  file=sys.stderr)
        else:
            print(f"microstream keys: no trusted key '{name}' in {store.trusted_dir}", file=sys.stderr)
            status = 2
    return status


def _cmd_bundle(store: KeyStore, args: argparse.Namespace) -> int:
    from .config import load as load_config

    config: dict[str, Any] = load_config(args.config, AGENT) if args.config else {}
    if args.role == AGENT:
        labels = dict(config.get("labels", {}))
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"bad --label {item!r}: write K=V, e.g. site=library")
            labels[key] = value
        if labels:
            config["labels"] = labels
        if args.coordinator:
            config["coordinator"] = args.coordinator
            config.pop("beacon", None)
        for local in ("keys", "key", "coordinator_key"):  # the bundle brings its keys; unbundle sets these
            config.pop(local, None)
    elif args.label or args.config:
        raise ValueError("--label and --config are for agents (--role agent)")
    elif args.coordinator:  # a client's bundle: where to find the coordinator, for the commands it prints
        config = {"coordinator": args.coordinator}
    path = args.output or Path(f"{check_name(args.node)}{BUNDLE_SUFFIX}")
    made = write_bundle(store, args.node, path, role=args.role, config=config)
    print(f"wrote {path} for '{made.node}' (role {made.role}, fingerprint {made.pair.fingerprint}; it holds the "
          f"secret key, mode 0600)\n  trusted '{made.node}' as {made.role} in {store.trusted_dir} (a running "
          f"coordinator using it applies this within a second)\n  copy {path} to {made.node} and run there: "
          f"microstream keys unbundle {path.name}", file=sys.stderr)
    return 0


def _cmd_unbundle(store: KeyStore, args: argparse.Namespace) -> int:
    bundle, store, config = unbundle(args.file, store.root, args.config)
    print(f"installed {bundle.node}'s key pair ({bundle.role}, fingerprint {bundle.pair.fingerprint}) and the "
          f"coordinator's public key in {store.root}", file=sys.stderr)
    if config is not None:
        print(f"  wrote {config}; start the agent with: microstream agent --config {config}\n"
              f"  or as a service: microstream service install agent --config {config}", file=sys.stderr)
    else:
        where = bundle.config.get("coordinator", "tcp://HOST:7077")
        print(f"  use it with: microstream status --coordinator {where} --key {bundle.node} (or set "
              f"MICROSTREAM_KEY={bundle.node})", file=sys.stderr)
    print(f"  you may now delete {args.file}", file=sys.stderr)
    return 0


def _cmd_list(store: KeyStore, args: argparse.Namespace) -> int:
    print(f"keys in {store.root}")
    pairs = store.pairs()
    print("  own keypairs:" if pairs else "  own keypairs: none (create one: microstream keys create NAME)")
    for pair in pairs:
        print(f"    {pair.name:<24} {pair.fingerprint}")
    trusted = sorted(store.trusted().items(), key=lambda kv: kv[1])
    roles = store.roles()
    print("  trusted public keys:" if trusted else "  trusted public keys: none")
    for key, name in trusted:
        role = roles.get(key, UNRESTRICTED)
        note = " (no role file: may do everything; set one with `keys trust --role`)" if role == UNRESTRICTED else ""
        print(f"    {name:<24} {fingerprint(key)}  {role}{note}")
    return 0
