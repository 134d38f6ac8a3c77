"""CURVE keys, trust lists and the ZAP authenticator, with real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from microstream.cluster import security as sec
from microstream.cluster.security import Authenticator, KeyFileError, KeyPair, KeyStore
from tests.helpers import wait_for

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
                     "run `microstream keys trust ITS_KEY_FILE --role ROLE` (applied live)"]


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
    assert "created key 'coordinator'" in err and "give coordinator.key to the agents and clients" in err

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


# -- roles ---------------------------------------------------------------------------------------------------------


def test_trust_store_roles(tmp_path):
    store, other = KeyStore(tmp_path / "coord"), KeyStore(tmp_path / "other")
    for name in ("pi-1", "laptop", "grafana", "old"):
        other.create(name)
    store.trust(other.root / "pi-1.key", role=sec.AGENT)
    store.trust(other.root / "laptop.key", role=sec.CLIENT)
    store.trust(other.root / "grafana.key", role=sec.READ_ONLY)
    store.trust(other.root / "old.key")  # a key trusted before roles existed: no role file
    assert (store.trusted_dir / "pi-1.role").read_text() == "agent\n"
    assert not (store.trusted_dir / "old.role").exists()
    keys = {name: other.pair(name).public for name in ("pi-1", "laptop", "grafana", "old")}
    assert store.roles() == {keys["pi-1"]: "agent", keys["laptop"]: "client", keys["grafana"]: "read-only",
                             keys["old"]: sec.UNRESTRICTED}
    store.trust(other.root / "pi-1.key")  # trusted again (e.g. a renewed key) without a role: it keeps its role
    assert store.role("pi-1") == "agent"
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        store.trust(other.root / "laptop.key", role="admin")
    (store.trusted_dir / "grafana.role").write_text("root\n")
    with pytest.raises(KeyFileError, match=r"unknown role 'root'[\s\S]*--role ROLE"):
        store.roles()
    assert store.untrust("grafana") and not (store.trusted_dir / "grafana.role").exists()


def test_keys_cli_trust_with_a_role(tmp_path, capsys):
    coord, other = str(tmp_path / "coord"), tmp_path / "other"
    KeyStore(other).create("pi-1")
    KeyStore(other).create("laptop")
    assert sec.keys_main(["trust", str(other / "pi-1.key"), "--role", "agent", "--dir", coord]) == 0
    assert "trusted 'pi-1' as agent" in capsys.readouterr().err
    assert sec.keys_main(["trust", str(other / "laptop.key"), "--dir", coord]) == 0  # not a terminal: client
    err = capsys.readouterr().err
    assert "trusted 'laptop' as client" in err and "for another role: --role agent|read-only" in err
    assert sec.keys_main(["trust", str(other / "laptop.key"), "--role", "admin", "--dir", coord]) == 2
    capsys.readouterr()
    assert sec.keys_main(["list", "--dir", coord]) == 0
    out = capsys.readouterr().out
    assert "pi-1" in out and " agent" in out and " client" in out


def test_every_coordinator_message_kind_belongs_to_a_role():
    from microstream.cluster.messages import TO_COORDINATOR

    kinds = set(TO_COORDINATOR.kinds)
    agent, client, read_only = (sec.PERMISSIONS[r] for r in sec.ROLES)
    assert agent | client == kinds, "a message kind no role may send (or a role naming a kind that does not exist)"
    assert not agent & client and read_only == {"status"} <= client
    assert sec.allowed(sec.UNRESTRICTED, "submit") and not sec.allowed(sec.AGENT, "submit")
    assert not sec.allowed(sec.CLIENT, "register") and not sec.allowed("nonsense", "status")


def test_connections_are_tagged_with_name_role_and_key(ctx, server_pair, auth):
    sock = ctx.socket(zmq.ROUTER)
    sec.curve_server(sock, server_pair, authenticator=auth)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    agent, old, forger = sec.generate("pi-1"), sec.generate("old"), sec.generate("forger")
    auth.allow(agent, role=sec.AGENT)
    auth.allow(old)  # no role: unrestricted
    auth.allow(forger, role=sec.READ_ONLY)
    seen = {}
    for pair in (agent, old, forger):
        client = ctx.socket(zmq.DEALER)
        if pair is forger:  # a peer's own metadata cannot override what the ZAP handler says
            client.setsockopt(zmq.METADATA, b"X-Role:client")
        sec.curve_client(client, pair, server_pair.public)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hi")
        assert sock.poll(2000)
        frames = sock.recv_multipart(copy=False)
        seen[pair.name] = sec.peer_of(frames[1])
        client.close(linger=0)
    sock.close(linger=0)
    assert seen == {"pi-1": sec.Peer("pi-1", "agent", agent.public.decode()),
                    "old": sec.Peer("old", sec.UNRESTRICTED, old.public.decode()),
                    "forger": sec.Peer("forger", "read-only", forger.public.decode())}
    assert seen["pi-1"].fingerprint == agent.fingerprint


def test_plaintext_frames_carry_no_peer(ctx):
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    b.setsockopt(zmq.METADATA, b"X-Role:client")  # self-declared: not a ZAP handler's word
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    b.send(b"x")
    assert a.poll(2000)
    assert sec.peer_of(a.recv(copy=False)) is None
    a.close(linger=0)
    b.close(linger=0)


def test_role_guard_refuses_with_the_fix_and_logs_once_per_key():
    lines: list[str] = []
    guard = sec.RoleGuard(lines.append)
    agent = sec.Peer("pi-1", sec.AGENT, sec.generate("pi-1").public.decode())
    reader = sec.Peer("grafana", sec.READ_ONLY, sec.generate("grafana").public.decode())
    assert guard.refusal(agent, "heartbeat") is None and guard.refusal(reader, "status") is None
    error = guard.refusal(agent, "submit")
    assert error == (f"key 'pi-1' (fingerprint {agent.fingerprint}) has role agent and may not send 'submit' (agents "
                     "register, send heartbeats and report their hosts); it needs a key with role client (on the "
                     "coordinator: `microstream keys trust KEYFILE --role client`)")
    assert guard.refusal(agent, "stop") is not None and guard.refusal(agent, "submit") is not None
    assert "role agent" in guard.refusal(reader, "register")  # type: ignore[operator]
    assert "no authenticated key" in guard.refusal(None, "status")  # type: ignore[operator]
    assert guard.refused == 5
    assert len(lines) == 3 and lines[0] == f"coordinator: {error}; further refusals of this key are not logged"


# -- rejected handshakes: a global log limit ----------------------------------------------------------------------


def test_a_flood_of_random_keys_is_logged_in_a_few_lines_and_a_summary(ctx):
    lines: list[str] = []
    auth = Authenticator(ctx, {}, log=lines.append, autostart=False)
    auth._peer_address = "10.0.0.9"
    for _ in range(2000):
        assert auth.callback("*", sec.generate("x").public) is False
    assert auth.rejected_count == 2000
    assert len(lines) == 6  # 5 keys named, then one line saying the rest are counted
    assert lines[5].startswith("more handshakes from untrusted keys are being rejected: at most 5 keys are named")
    auth.stop()  # or the end of the interval: the summary
    assert len(lines) == 7
    assert lines[6].startswith("rejected 1,995 more handshakes from 1,995 untrusted keys in the last ")
    assert "(from 10.0.0.9; the last: key " in lines[6]


def test_the_summary_comes_when_the_interval_ends_and_a_new_one_starts(ctx):
    lines: list[str] = []
    auth = Authenticator(ctx, {}, log=lines.append, log_interval=0.3, log_burst=2, autostart=False)
    same = sec.generate("retrying").public
    for _ in range(4):  # a client that retries: named once, then counted
        auth.callback("*", same)
    assert len(lines) == 1
    wait_for(lambda: len(lines) == 2, 3, "the summary at the end of the interval")
    assert re.match(r"rejected 3 more handshakes from 1 untrusted keys in the last \d+ s", lines[1])
    auth.callback("*", same)  # a new interval: named again
    assert len(lines) == 3 and lines[2].startswith("rejected connection from untrusted key")
    auth.stop()
    assert len(lines) == 3  # nothing counted since: no summary


# -- no name takeover -----------------------------------------------------------------------------------------------


def test_a_live_agents_name_cannot_be_taken_with_another_key():
    from microstream.cluster.messages import Register
    from microstream.cluster.registry import AgentRegistry, NameTaken

    now = [0.0]
    lines: list[str] = []
    registry = AgentRegistry(timeout=10.0, clock=lambda: now[0], log=lines.append)
    real, other = sec.generate("node2").public.decode(), sec.generate("node3").public.decode()
    registry.register(b"id-1", Register(name="node2", cores=4), key=real)
    for _ in range(2):
        with pytest.raises(NameTaken, match=r"name 'node2' is held by a live agent .* cannot take it over"):
            registry.register(b"id-evil", Register(name="node2", cores=64), key=other)
    assert registry.get("node2").identity == b"id-1" and registry.get("node2").caps["cores"] == 4
    assert sum("refused a registration" in line for line in lines) == 1  # logged once per name and key
    registry.register(b"id-2", Register(name="node2", cores=4), key=real)  # the same key: an agent restart
    assert registry.get("node2").identity == b"id-2"
    now[0] = 11.0
    assert [a.name for a in registry.check()] == ["node2"]  # lost: its name is free again
    registry.register(b"id-3", Register(name="node2", cores=2), key=other)
    assert registry.get("node2").key == other
    # without keys (plaintext clusters) nothing changes
    registry.register(b"id-4", Register(name="plain"))
    registry.register(b"id-5", Register(name="plain"))
    assert registry.get("plain").identity == b"id-5"


# -- metrics: loopback, bounded threads, time-outs -------------------------------------------------------------------


def test_metrics_server_bounds_threads_and_times_out_idle_connections():
    import threading
    import urllib.request

    from microstream.cluster.metrics import Metrics, serve

    metrics = Metrics()
    metrics.set_node_up("n1", True)
    server, port = serve(metrics, request_timeout=0.5, max_pending=50)
    try:
        assert server.host == "127.0.0.1"
        url = f"http://127.0.0.1:{port}/metrics"
        assert b"microstream_node_up" in urllib.request.urlopen(url, timeout=5).read()
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        assert b"microstream_node_up" in urllib.request.urlopen(url, timeout=5).read()  # served all the same
        assert threading.active_count() <= before + 1
        wait_for(lambda: server.closed_idle >= 300, 5, "idle connections closed")
        assert all(s.recv(1) == b"" for s in idle)  # closed by the server
        for s in idle:
            s.close()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 405")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20_000)  # no end of headers, too long
            assert s.recv(100) == b""
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_cli_defaults_bind_to_loopback():
    from microstream.cli.main import build_parser

    coordinator = build_parser().parse_args(["coordinator"])
    assert coordinator.bind == "tcp://127.0.0.1:7077" and coordinator.metrics_bind == "127.0.0.1"
    assert coordinator.max_message == 256
    agent = build_parser().parse_args(["agent", "--name", "pi1"])
    assert agent.metrics_bind == "127.0.0.1"


def test_sockets_that_accept_peers_have_a_message_size_limit(tmp_path):
    from microstream.cluster.agent import Agent
    from microstream.cluster.coordinator import Coordinator

    coordinator = Coordinator("tcp://127.0.0.1:0", metrics_port=0, log=lambda _: None, max_message=64 << 20)
    coordinator.open()
    try:
        assert coordinator.sock.maxmsgsize == 64 << 20
        assert coordinator._metrics_server.host == "127.0.0.1"
    finally:
        coordinator.close()
    agent = Agent("pi-1", "tcp://127.0.0.1:9", metrics_port=0, workdir=tmp_path / "agent", log=lambda _: None)
    agent._open()
    try:
        assert agent.control.maxmsgsize == sec.MAX_MESSAGE_BYTES == 256 << 20
        assert agent._metrics_server.host == "127.0.0.1"
    finally:
        agent.shutdown()
