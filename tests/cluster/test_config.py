"""Configuration files for agents and coordinators, key bundles, and trust changes applied to a running
authenticator (no processes: the command-line parsing is called in-process)."""

from __future__ import annotations

import time

import pytest
import zmq

from microstream.cli.main import _parse, build_parser, main
from microstream.cluster import config
from microstream.cluster.security import (
    REVOKED,
    Authenticator,
    KeyStore,
    Peer,
    TrustReloader,
    read_bundle,
    unbundle,
    write_bundle,
)
from tests.helpers import wait_for

AGENT_TOML = """
name = "pi07"
coordinator = "tcp://10.0.0.2:7077"
labels = { site = "library", floor = 2 }
keys = "keys"
coordinator_key = "keys/coordinator.key"
data_host = "10.0.0.17"
metrics_bind = "0.0.0.0"
metrics_port = 9464
work_dir = "/var/lib/microstream/agent"
memory_limit = "300M"
"""


def test_an_agent_config_is_read_checked_and_overridden_by_flags(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML)
    settings = config.load(path, config.AGENT)
    assert settings["keys"] == str(tmp_path / "keys")          # relative to the file
    assert settings["labels"] == {"site": "library", "floor": "2"}
    assert settings["memory_limit"] == 300 << 20
    args = _parse(build_parser(), ["agent", "--config", str(path), "--metrics-port", "0", "--label", "room=r1"])
    assert args.name == "pi07" and args.coordinator == "tcp://10.0.0.2:7077" and args.data_host == "10.0.0.17"
    assert args.metrics_port == 0                              # the flag wins
    assert args.metrics_bind == "0.0.0.0" and args.memory_limit == 300 << 20
    assert dict(x.split("=") for x in args.label) == {"site": "library", "floor": "2", "room": "r1"}
    assert str(args.work_dir) == "/var/lib/microstream/agent"


def test_a_coordinator_config_maps_onto_its_options(tmp_path):
    path = tmp_path / "coordinator.toml"
    path.write_text('bind = "tcp://0.0.0.0:7077"\nbeacon = true\nstate_dir = "/var/lib/microstream/state"\n'
                    'checkpoint_dir = "ckpt"\nauto_place = false\nagent_timeout = 20\n')
    args = _parse(build_parser(), ["coordinator", "--config", str(path), "--bind", "tcp://127.0.0.1:7078"])
    assert args.bind == "tcp://127.0.0.1:7078" and args.beacon and args.no_auto_place
    assert args.agent_timeout == 20.0 and str(args.checkpoint_dir) == str(tmp_path / "ckpt")


@pytest.mark.parametrize("body, words", [
    ('nmae = "pi07"\n', ["unknown key 'nmae'", "did you mean 'name'"]),
    ('name = "pi07"\nmetrics_port = "ninety"\n', ["'metrics_port' must be an integer"]),
    ('name = "pi07"\nmemory_limit = "lots"\n', ["'memory_limit' must be a size"]),
    ('name = "pi07"\nlabels = "site=library"\n', ["'labels' must be a table"]),
    ('name = "pi07"\ncoordinator = "tcp://h:1"\nbeacon = true\n', ["not both"]),
    ('name = "pi07\n', ["is not valid TOML"]),
    ('[agent]\nname = "pi07"\n', ["unknown table 'agent'"]),
    ('name = "pi07"\n[keys]\ndir = "/etc"\n', ["key 'keys' must be a non-empty text"]),
])
def test_a_bad_config_file_names_the_file_and_the_key_and_exits_2(tmp_path, capsys, body, words):
    path = tmp_path / "agent.toml"
    path.write_text(body)
    assert main(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    for word in words:
        assert word in err, err


def test_a_coordinator_refuses_agent_keys(tmp_path, capsys):
    path = tmp_path / "coordinator.toml"
    path.write_text('name = "pi07"\n')
    assert main(["coordinator", "--config", str(path)]) == 2
    assert "unknown key 'name'" in capsys.readouterr().err
    assert main(["coordinator", "--config", str(tmp_path / "missing.toml")]) == 2


def test_toml_written_back_reads_the_same():
    settings = {"name": "pi07", "labels": {"site": "lib rary", "x.y": "1"}, "metrics_port": 9464, "beacon": True,
                "coordinator_timeout": 2.5, "work_dir": "/var/lib/microstream/agent"}
    import tomllib

    assert tomllib.loads(config.to_toml(settings)) == settings


def test_a_bundle_carries_a_key_pair_the_coordinator_key_and_a_config_and_trusts_the_node(tmp_path):
    store = KeyStore(tmp_path / "coordinator-keys")
    coordinator = store.create("coordinator")
    bundle = write_bundle(store, "pi07", tmp_path / "pi07.bundle", config={"coordinator": "tcp://10.0.0.2:7077",
                                                                          "labels": {"site": "library"}})
    assert (tmp_path / "pi07.bundle").stat().st_mode & 0o777 == 0o600
    assert store.trusted()[bundle.pair.public] == "pi07" and store.role("pi07") == "agent"
    assert not (store.root / "pi07.key_secret").exists()   # the secret lives only in the bundle
    read = read_bundle(tmp_path / "pi07.bundle")
    assert read.pair == bundle.pair and read.coordinator_public == coordinator.public
    assert read.config == {"name": "pi07", "coordinator": "tcp://10.0.0.2:7077", "labels": {"site": "library"}}

    installed, keys, cfg_file = unbundle(tmp_path / "pi07.bundle", tmp_path / "pi" / "keys")
    assert cfg_file == tmp_path / "pi" / "agent.toml"
    settings = config.load(cfg_file, config.AGENT)
    assert settings["key"] == "pi07" and settings["keys"] == str(keys.root)
    args = _parse(build_parser(), ["agent", "--config", str(cfg_file)])
    assert args.name == "pi07" and args.coordinator == "tcp://10.0.0.2:7077"
    assert keys.pair("pi07") == bundle.pair
    assert (keys.root / "coordinator.key").exists() and not (keys.root / "coordinator.key_secret").exists()

    # `microstream agent --bundle FILE`: its configuration, with the options on top
    args = _parse(build_parser(), ["agent", "--bundle", str(tmp_path / "pi07.bundle"), "--name", "other"])
    assert args.name == "other" and args.coordinator == "tcp://10.0.0.2:7077" and args.label == ["site=library"]


def test_a_damaged_bundle_says_so(tmp_path, capsys):
    path = tmp_path / "x.bundle"
    path.write_text("[bundle]\nnode = 1\n")
    assert main(["keys", "unbundle", str(path), "--dir", str(tmp_path / "k")]) == 2
    assert "is not a microstream key bundle" in capsys.readouterr().err


def test_keys_bundle_on_the_command_line(tmp_path, capsys):
    keydir = tmp_path / "keys"
    assert main(["keys", "bundle", "pi1", "--dir", str(keydir)]) == 2   # no coordinator key yet
    assert "keys create coordinator" in capsys.readouterr().err
    assert main(["keys", "create", "coordinator", "--dir", str(keydir)]) == 0
    out = tmp_path / "pi1.bundle"
    assert main(["keys", "bundle", "pi1", "--dir", str(keydir), "--coordinator", "tcp://10.0.0.2:7077",
                 "--label", "site=library", "-o", str(out)]) == 0
    assert read_bundle(out).config["labels"] == {"site": "library"}
    assert main(["keys", "bundle", "laptop", "--role", "client", "--dir", str(keydir), "-o",
                 str(tmp_path / "laptop.bundle")]) == 0
    assert KeyStore(keydir).role("laptop") == "client"
    assert main(["keys", "revoke", "laptop", "--dir", str(keydir)]) == 0
    assert "laptop" not in KeyStore(keydir).trusted().values()
    assert main(["keys", "revoke", "laptop", "--dir", str(keydir)]) == 2


def test_the_reloader_applies_trust_and_revocation_to_a_running_authenticator(tmp_path):
    store = KeyStore(tmp_path / "keys")
    store.create("coordinator")
    ctx = zmq.Context()
    auth = Authenticator(ctx, store.trusted(), roles=store.roles())
    lines: list[str] = []
    reloader = TrustReloader(store, auth, log=lines.append, every=0.05).start()
    try:
        made = write_bundle(store, "pi21", tmp_path / "pi21.bundle")
        wait_for(lambda: auth.role_of(made.pair.public) == "agent", 5, "the new key to be trusted")
        peer = Peer("pi21", "agent", made.pair.public.decode())
        assert auth.current(peer) is peer
        store.untrust("pi21")
        wait_for(lambda: auth.role_of(made.pair.public) is None, 5, "the key to be revoked")
        assert auth.current(peer).role == REVOKED      # an open connection is refused from then on
        reloader.request("SIGHUP")
        wait_for(lambda: any("SIGHUP" in line for line in lines), 5, "a reload on request")
        assert any("trusted pi21 (agent)" in line for line in lines) and any("revoked pi21" in line for line in lines)
        (store.trusted_dir / "broken.key").write_text("not a key")   # a corrupt file: the trusted set stays
        time.sleep(0.3)
        assert any("were not reloaded" in line for line in lines)
    finally:
        reloader.stop()
        auth.stop()
        ctx.term()
