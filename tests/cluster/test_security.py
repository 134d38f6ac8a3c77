"""CURVE keys, trust lists and the ZAP authenticator, with real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from microstream.cluster import security as sec
from microstream.cluster.security import Authenticator, KeyFileError, KeyPair, KeyStore

TIMEOUT_MS = 400  # how long an untrusted client waits for the reply that never comes


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def server_pair() -> KeyPair:
    return sec.generate("coordinator")


@pytest.fixture
def auth(ctx: zmq.Context) -> Iterator[Authenticator]:
    authenticator = Authenticator(ctx, log_interval=60.0)  # starts at once
    assert authenticator.is_running
    yield authenticator
    authenticator.stop()


@pytest.fixture
def server(ctx: zmq.Context, server_pair: KeyPair, auth: Authenticator) -> Iterator[tuple[zmq.Socket, str]]:
    sock = ctx.socket(zmq.REP)
    sec.curve_server(sock, server_pair, authenticator=auth)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def _client(ctx: zmq.Context, pair: KeyPair, server_public: bytes, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.REQ)
    sec.curve_client(sock, pair, server_public)
    sock.connect(address)
    return sock


def _round_trip(server: zmq.Socket, client: zmq.Socket) -> tuple[bytes, str] | None:
    """Client asks, server answers; returns (reply, server-side User-Id) or None if the server hears nothing."""
    client.send(b"ping")
    if not server.poll(TIMEOUT_MS):
        return None
    frame = server.recv(copy=False)
    user = frame.get("User-Id")
    server.send(b"pong")
    assert client.poll(2000), "server answered but the client got nothing"
    return client.recv(), user


# -- authentication over real sockets -----------------------------------------------------------------------


def test_trusted_client_gets_reply_and_is_named(ctx, server, server_pair, auth):
    sock, address = server
    pair = sec.generate("pi-07")
    auth.allow(pair.public, "pi-07")
    client = _client(ctx, pair, server_pair.public, address)
    assert _round_trip(sock, client) == (b"pong", "pi-07")
    assert auth.rejected_count == 0
    assert auth.last_rejection is None
    client.close(linger=0)


def test_untrusted_client_gets_nothing_and_rejection_is_recorded(ctx, server, server_pair, auth, caplog):
    sock, address = server
    stranger = sec.generate("stranger")
    with caplog.at_level(logging.WARNING, logger="microstream.security"):
        client = _client(ctx, stranger, server_pair.public, address)
        assert _round_trip(sock, client) is None
    client.close(linger=0)
    assert auth.rejected_count >= 1
    rejection = auth.last_rejection
    assert rejection is not None
    assert rejection.fingerprint == stranger.fingerprint
    assert rejection.public_key == stranger.public
    assert rejection.address == "127.0.0.1"
    assert f"rejected connection from untrusted key {stranger.fingerprint}" in caplog.text


def test_revoke_and_allow_apply_to_new_connections(ctx, server, server_pair, auth):
    sock, address = server
    pair = sec.generate("laptop")
    auth.allow(pair)
    first = _client(ctx, pair, server_pair.public, address)
    assert _round_trip(sock, first) is not None
    first.close(linger=0)

    assert auth.revoke(pair.public) is True
    assert pair.public not in auth.trusted
    second = _client(ctx, pair, server_pair.public, address)
    assert _round_trip(sock, second) is None
    assert auth.last_rejection is not None and auth.last_rejection.fingerprint == pair.fingerprint
    second.close(linger=0)

    auth.allow(pair)
    third = _client(ctx, pair, server_pair.public, address)
    assert _round_trip(sock, third) == (b"pong", "laptop")
    third.close(linger=0)


def test_rejections_are_logged_once_per_interval(ctx, auth, caplog):
    key = sec.generate("x").public
    with caplog.at_level(logging.WARNING, logger="microstream.security"):
        for _ in range(5):
            assert auth.callback("*", key) is False
    assert auth.rejected_count == 5
    assert caplog.text.count("rejected connection") == 1


def test_rejections_go_to_a_log_callable(ctx):
    lines: list[str] = []
    auth = Authenticator(ctx, {}, log=lines.append, autostart=False)
    key = sec.generate("x").public
    auth.callback("*", key)
    assert lines == [f"rejected connection from untrusted key {sec.fingerprint(key)}; if it should be allowed, "
                     "run `microstream keys trust ITS_KEY_FILE --role ROLE` and restart/reload"]


def test_handshake_watch_explains_failures(ctx, server, server_pair, auth):
    _, address = server
    trusted, stranger = sec.generate("trusted"), sec.generate("stranger")
    auth.allow(trusted)
    cases = [(trusted, server_pair.public, sec.HANDSHAKE_OK),
             (stranger, server_pair.public, sec.HANDSHAKE_NOT_TRUSTED),
             (trusted, sec.generate("impostor").public, sec.HANDSHAKE_SERVER_KEY)]
    for pair, server_key, expected in cases:
        sock = ctx.socket(zmq.DEALER)
        sec.curve_client(sock, pair, server_key)
        with sec.HandshakeWatch(sock) as watch:
            sock.connect(address)
            assert watch.wait(2.0) == expected, (pair.name, expected)
        sock.close(linger=0)
    message = sec.explain_handshake(sec.HANDSHAKE_NOT_TRUSTED, address, stranger)
    assert "microstream keys trust stranger.key" in message and stranger.fingerprint in message


def test_handshake_watch_no_answer(ctx):
    with socket.socket() as probe:  # closed at once (a zmq socket closes in its I/O thread, later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on this port any more
    pair = sec.generate("c")
    sock = ctx.socket(zmq.DEALER)
    sec.curve_client(sock, pair, sec.generate("s").public)
    with sec.HandshakeWatch(sock) as watch:
        sock.connect(f"tcp://127.0.0.1:{port}")
        result = watch.wait(0.3)
    sock.close(linger=0)
    assert result == sec.HANDSHAKE_NO_ANSWER
    text = sec.explain_handshake(result, "tcp://pi:5555", pair)
    assert text.startswith("no answer from coordinator at tcp://pi:5555: wrong server key or our key is not trusted")
    assert "microstream keys trust" in text


def test_curve_server_refuses_stopped_authenticator_and_public_only_keys(ctx, server_pair):
    auth = Authenticator(ctx, autostart=False)
    sock = ctx.socket(zmq.REP)
    with pytest.raises(RuntimeError, match="start the Authenticator"):
        sec.curve_server(sock, server_pair, authenticator=auth)
    with pytest.raises(ValueError, match="no secret"):
        sec.curve_server(sock, server_pair.public_only())
    with pytest.raises(ValueError, match="z85"):
        sec.curve_client(sock, sec.generate("c"), b"short")
    sock.close(linger=0)


def test_authenticator_rejects_malformed_keys_and_replaces_sets(ctx):
    auth = Authenticator(ctx, [sec.generate("a").public], autostart=False)
    with pytest.raises(ValueError):
        auth.allow(b"not-a-key")
    b = sec.generate("b")
    auth.replace({b.public: "b"})
    assert auth.trusted == {b.public: "b"}
    assert auth.name_of(b.public.decode()) == "b"


def test_insecure_warning_text():
    text = sec.insecure_warning("coordinator")
    assert text.startswith("WARNING: plaintext ZeroMQ")
    assert "coordinator" in text and "anyone who can reach this port can submit code" in text


# -- key files -----------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_permissions(tmp_path):
    pair = sec.generate("agent-1")
    public_path, secret_path = sec.save(pair, tmp_path)
    assert (public_path.name, secret_path.name) == ("agent-1.key", "agent-1.key_secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert b"secret-key" not in public_path.read_bytes()
    assert sec.load(secret_path) == pair
    assert sec.load(public_path) == pair.public_only()
    assert len(pair.fingerprint) == 8 and pair.fingerprint == sec.load(public_path).fingerprint
    assert pair.secret.decode() not in repr(pair)
    # pyzmq reads our files too
    assert zmq.auth.load_certificate(secret_path) == (pair.public, pair.secret)
    with pytest.raises(KeyFileError, match="already exists"):
        sec.save(pair, tmp_path)


def test_load_accepts_zmq_auth_certificates(tmp_path):
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "legacy")
    expected_public, expected_secret = zmq.auth.load_certificate(secret_file)
    pair = sec.load(secret_file)
    assert pair == KeyPair("legacy", expected_public, expected_secret)
    assert sec.load(public_file) == KeyPair("legacy", expected_public, None)
    other = sec.save(sec.generate("other"), tmp_path)[0]
    assert sec.load_public_keys(tmp_path) == {expected_public: "legacy", sec.load(other).public: "other"}
    assert sec.load_public_keys([public_file]) == {expected_public: "legacy"}


@pytest.mark.parametrize("content, problem", [
    (b"", "no public-key line"),
    (b"\x00\xff garbage \x01", "no public-key line"),
    (b'curve\n    public-key = "tooshort"\n', "malformed public key"),
])
def test_corrupt_public_files_name_file_and_fix(tmp_path, content, problem):
    path = tmp_path / "pi-3.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        sec.load(path)
    text = str(info.value)
    assert str(path) in text and problem in text and "fix:" in text


def test_corrupt_secret_files(tmp_path):
    pair, other = sec.generate("me"), sec.generate("other")
    path = tmp_path / "me.key_secret"
    path.write_text(f'curve\n    public-key = "{pair.public.decode()}"\n    secret-key = "{other.secret.decode()}"\n')
    with pytest.raises(KeyFileError, match="does not belong"):
        sec.load(path)
    path.write_text(f'curve\n    public-key = "{pair.public.decode()}"\n    secret-key = "{"#" * 39}"\n')
    with pytest.raises(KeyFileError, match="malformed secret key"):
        sec.load(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(KeyFileError, match=r"does not exist[\s\S]*microstream keys create me"):
        sec.load(tmp_path / "me.key_secret")
    (tmp_path / "dir.key").mkdir()
    with pytest.raises(KeyFileError, match="cannot be read"):
        sec.load(tmp_path / "dir.key")


def test_world_readable_secret_is_warned_about(tmp_path, caplog):
    _, secret_path = sec.save(sec.generate("open"), tmp_path)
    secret_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="microstream.security"):
        sec.load(secret_path)
    assert "chmod 600" in caplog.text


def test_bad_key_names_are_refused():
    for bad in ("", "../x", "a b", "-x"):
        with pytest.raises(ValueError, match="bad key name"):
            sec.generate(bad)


# -- key store and CLI -------------------------------------------------------------------------------------


def test_key_store_layout(tmp_path):
    coordinator = KeyStore(tmp_path / "coord")
    pair = coordinator.create("coordinator")
    assert coordinator.pair("coordinator") == pair
    assert stat.S_IMODE(coordinator.root.stat().st_mode) == 0o700
    assert coordinator.trusted() == {}

    agent_store = KeyStore(tmp_path / "agent")
    agent = agent_store.create("pi-1")
    trusted = coordinator.trust(agent_store.root / "pi-1.key_secret")  # only the public half is copied
    assert trusted == agent.public_only()
    assert b"secret-key" not in (coordinator.trusted_dir / "pi-1.key").read_bytes()
    assert coordinator.trusted() == {agent.public: "pi-1"}
    assert coordinator.public("coordinator") == pair.public  # our own public key
    assert coordinator.public("pi-1") == agent.public  # a trusted one
    with pytest.raises(KeyFileError, match="microstream keys trust nobody.key"):
        coordinator.public("nobody")
    assert coordinator.untrust("pi-1") is True and coordinator.trusted() == {}
    with pytest.raises(KeyFileError, match="microstream keys create nobody"):
        coordinator.pair("nobody")


def test_default_root_follows_microstream_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROSTREAM_HOME", str(tmp_path))
    assert KeyStore().root == tmp_path / "keys"
    monkeypatch.delenv("MICROSTREAM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sec.default_key_dir() == tmp_path / "home" / ".microstream" / "keys"


def test_keys_cli_create_trust_list(tmp_path, capsys):
    coord, agent = str(tmp_path / "coord"), str(tmp_path / "agent")
    assert sec.keys_main(["create", "coordinator", "--dir", coord]) == 0
    err = capsys.readouterr().err
    assert "created key 'coordinator'" in err and "microstream keys trust coordinator.key" in err

    assert sec.keys_main(["create", "coordinator", "--dir", coord]) == 2
    assert "already exists" in capsys.readouterr().err

    assert sec.keys_main(["create", "pi-1", "--dir", agent]) == 0
    capsys.readouterr()
    assert sec.keys_main(["trust", f"{agent}/pi-1.key", "--dir", coord]) == 0
    fp = KeyStore(agent).pair("pi-1").fingerprint
    assert f"trusted 'pi-1' as client (fingerprint {fp})" in capsys.readouterr().err

    assert sec.keys_main(["list", "--dir", coord]) == 0
    out = capsys.readouterr().out
    assert "coordinator" in out and "pi-1" in out and fp in out


def test_keys_cli_errors_and_help(tmp_path, capsys):
    assert sec.keys_main(["--help"]) == 0
    assert "create" in capsys.readouterr().out
    assert sec.keys_main([]) == 2
    assert sec.keys_main(["frobnicate"]) == 2
    capsys.readouterr()
    missing = tmp_path / "nobody.key"
    assert sec.keys_main(["trust", str(missing), "--dir", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert sec.keys_main(["create", "../evil", "--dir", str(tmp_path)]) == 2
    assert "bad key name" in capsys.readouterr().err
    assert sec.keys_main(["list", "--dir", str(tmp_path / "empty")]) == 0
    assert "none" in capsys.readouterr().out


def test_load_public_keys_from_missing_dir_is_an_error(tmp_path: Path):
    with pytest.raises(KeyFileError):
        sec.load_public_keys(tmp_path / "nope")
